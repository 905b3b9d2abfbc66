"""--resume on bad input (issue 16, class "Resume"): a damaged newest checkpoint falls back to the
newest intact one with a one-line warning naming the bad file, no intact checkpoint is a one-line
error, the toy's `init` checkpoint (a kill before step 1) resumes at step 0, and what interrupted
saves leave behind (.tmp-* directories) goes at the next save, nothing else with it. Issue 36: a
save on a full disk is one line and leaves the previous checkpoint as it was; a resume is the
same run or a one-line refusal: its stage, its run-defining flags (named with both values; left
out they are the run's), its rows and videos by content.
Run: pytest tests/test_bad_input_resume.py"""
import copy
import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
import vadr
from extras import checkpoint, training

DEAD_PID = 99999999  # above any pid_max: no process has it
AGAIN = "start the run afresh without --resume (with --overwrite, to reuse the directory)"


def _fake_step(model, opt, sched, k):
    """One optimizer step with made-up gradients: weights, Adam moments and lr all change."""
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.01 * k)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def pristine(tiny_model, tmp_path_factory):
    """A run directory written as train_sft.py writes one: init (before step 1), then step-1..3
    with optimizer, scheduler and RNG state. Returns (run_dir, what was saved in each)."""
    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]  # the session's model stays as it is
    run = str(tmp_path_factory.mktemp("resume") / "run")
    opt = training.make_optimizer(model, 1e-3, 0.0)
    sched = training.linear_schedule(opt, 10, 0)
    saved = {}

    def record(name, step):
        # what resuming must give back: the weights, the optimizer state, the RNG streams' next
        # draws (drawn right after the save, so the restored streams must draw them again)
        saved[name] = dict(step=step, weights={k: v.clone() for k, v in model.state_dict().items()},
                           opt=copy.deepcopy(opt.state_dict()), rand=torch.rand(3),
                           py=random.random())

    checkpoint.save_checkpoint(run, "init", model, tok, config=dict(note="untrained toy preset"))
    record("init", 0)
    for k in (1, 2, 3):
        _fake_step(model, opt, sched, k)
        checkpoint.save_checkpoint(run, f"step-{k}", model, tok, opt, sched,
                                   dict(step=k, epoch=0, step_in_epoch=k), dict(lr=1e-3),
                                   keep_last=10)
        record(f"step-{k}", k)
    return run, saved


@pytest.fixture
def run(pristine, tmp_path):
    """A fresh copy of the pristine run directory, to damage."""
    d = tmp_path / "run"
    shutil.copytree(pristine[0], d)
    return str(d)


def _assert_resumes_state(ckpt, saved):
    """Resuming from ckpt the way the training scripts do gives back exactly what was saved."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt)
    w = model.state_dict()
    assert w.keys() == saved["weights"].keys()
    assert all(torch.equal(w[k], saved["weights"][k]) for k in w)
    opt = training.make_optimizer(model, 1e-3, 0.0)
    sched = training.linear_schedule(opt, 10, 0)
    st = checkpoint.load_training_state(ckpt, model, opt, sched)
    assert (st["step"], st["epoch"], st["step_in_epoch"]) == (saved["step"], 0, saved["step"])
    assert torch.equal(torch.rand(3), saved["rand"]) and random.random() == saved["py"]
    a, b = opt.state_dict()["state"], saved["opt"]["state"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
    assert sched.last_epoch == saved["step"]


def test_intact_run_resumes_latest_and_the_manifest_lists_every_file(pristine, capsys):
    run, saved = pristine
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-3")
    assert capsys.readouterr().err == ""
    _assert_resumes_state(os.path.join(run, "step-3"), saved["step-3"])
    d = os.path.join(run, "step-3")
    man = json.load(open(os.path.join(d, checkpoint.MANIFEST)))
    assert man["format"] == "vadr-checkpoint-v1"
    assert man["files"] == {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
                            if n != checkpoint.MANIFEST}
    assert {"training_state.pt", "model.safetensors", "config.json", "run_config.json",
            "tokenizer_config.json"} <= set(man["files"])
    assert sorted(os.listdir(run)) == ["init", "latest", "step-1", "step-2", "step-3"]  # no .tmp-*


def _truncate(path, n):
    with open(path, "r+b") as f:
        f.truncate(n)


def _garble(path):
    """Same size, other bytes: what only a format check can see."""
    n = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\xff" * n)


def _garble_pickle(path):
    """Flip bytes inside training_state.pt's pickle, in place: the zip still opens, same size."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(info.header_offset + 30 + name_len + extra_len + 5)
        f.write(b"\x00" * 20)


# (what is done to step-3 (the `latest`), the problem the warning must name: {d} = step-3's path)
DAMAGE = {
    "weights missing": (lambda d: os.remove(f"{d}/model.safetensors"),
                        "{d}/model.safetensors is missing"),
    "weights truncated": (lambda d: _truncate(f"{d}/model.safetensors", 1000),
                          "{d}/model.safetensors has 1000 bytes where {w} were written "
                          "(truncated?)"),
    "training state truncated": (lambda d: _truncate(f"{d}/training_state.pt", 100),
                                 "{d}/training_state.pt has 100 bytes where {t} were written "
                                 "(truncated?)"),
    "training state garbled": (lambda d: _garble(f"{d}/training_state.pt"),
                               "{d}/training_state.pt is not valid torch.save (truncated or "
                               "corrupted?: BadZipFile)"),
    "training state pickle garbled": (lambda d: _garble_pickle(f"{d}/training_state.pt"),
                                      "{d}/training_state.pt is not valid torch.save (truncated or "
                                      "corrupted?: BadZipFile)"),
    "training state missing": (lambda d: os.remove(f"{d}/training_state.pt"),
                               "{d}/training_state.pt is missing"),
    "weights header garbled": (lambda d: _garble(f"{d}/model.safetensors"),
                               "{d}/model.safetensors is not a safetensors file (truncated?)"),
    "config garbled": (lambda d: _garble(f"{d}/config.json"),
                       "{d}/config.json is not valid JSON (truncated or corrupted?: "
                       "UnicodeDecodeError)"),
    "manifest truncated": (lambda d: _truncate(f"{d}/{checkpoint.MANIFEST}", 10),
                           "{d}/" + checkpoint.MANIFEST + " is not a readable manifest "
                           "(truncated?)"),
    "checkpoint deleted": (lambda d: shutil.rmtree(d), "{d} does not exist"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_falls_back_to_the_newest_intact_step_with_one_warning(
        pristine, run, damage, capsys):
    d = os.path.join(run, "step-3")
    sizes = {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)}
    do, problem = DAMAGE[damage]
    do(d)
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-2")
    problem = problem.format(d=d, w=sizes["model.safetensors"], t=sizes["training_state.pt"])
    assert capsys.readouterr().err == (
        f"warning: --resume {run}: skipping a damaged checkpoint: {run}/latest names {d}, but "
        f"{problem}; resuming from {run}/step-2\n")
    _assert_resumes_state(os.path.join(run, "step-2"), pristine[1]["step-2"])


def test_latest_naming_a_missing_or_no_directory(pristine, run, capsys):
    with open(os.path.join(run, "latest"), "w") as f:
        f.write("step-9")
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-3")  # newest intact step
    assert capsys.readouterr().err == (
        f"warning: --resume {run}: skipping a damaged checkpoint: {run}/latest names {run}/step-9,"
        f" but {run}/step-9 does not exist; resuming from {run}/step-3\n")
    for junk in (b"\xff\xfe\x00", b"", b"../../elsewhere", b"/abs/step-3", b".."):
        with open(os.path.join(run, "latest"), "wb") as f:
            f.write(junk)
        assert checkpoint.latest_checkpoint(run) is None
        assert checkpoint.resolve_resume(run) == os.path.join(run, "step-3")
        assert capsys.readouterr().err == (
            f"warning: --resume {run}: {run}/latest names no checkpoint directory; ignored\n")


def test_several_damaged_give_one_line_each_and_fall_back_to_init_last(pristine, run, capsys):
    _truncate(os.path.join(run, "step-3", "model.safetensors"), 10)
    os.remove(os.path.join(run, "step-2", "config.json"))
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-1")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == (
        f"warning: --resume {run}: skipping a damaged checkpoint: {run}/step-2/config.json is "
        f"missing; resuming from {run}/step-1")
    _assert_resumes_state(os.path.join(run, "step-1"), pristine[1]["step-1"])
    shutil.rmtree(os.path.join(run, "step-1"))
    os.remove(os.path.join(run, "latest"))  # no `latest` at all: the step-N, newest first
    assert checkpoint.resolve_resume(run) == os.path.join(run, "init")
    err = capsys.readouterr().err.splitlines()
    assert [e.split("checkpoint: ")[1].split(" ")[0] for e in err] == [
        f"{run}/step-3/model.safetensors", f"{run}/step-2/config.json"]
    assert all(e.endswith(f"resuming from {run}/init (the untrained model: step 0)") for e in err)


def test_no_intact_checkpoint_is_one_error_naming_the_newest_bad_file(run, capsys):
    st = os.path.join(run, "step-3", "training_state.pt")
    size = os.path.getsize(st)
    _truncate(st, 0)
    for d in ("step-1", "step-2", "init"):
        os.remove(os.path.join(run, d, "tokenizer_config.json"))
    with pytest.raises(vadr.InputError) as e:
        checkpoint.resolve_resume(run)
    assert str(e.value) == (
        f"--resume {run}: no intact checkpoint there: {run}/latest names {run}/step-3, but {st} "
        f"has 0 bytes where {size} were written (truncated?); 3 older ones are damaged too; "
        f"{AGAIN}")
    assert capsys.readouterr().err == ""  # nothing skipped: nothing resumed


def test_nothing_to_resume_from_is_one_error(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    logs_only = tmp_path / "logs_only"  # a run killed before its first save
    logs_only.mkdir()
    (logs_only / "run_config.json").write_text("{}")
    (logs_only / "log.jsonl").write_text("")
    for d in (empty, logs_only):
        with pytest.raises(vadr.InputError) as e:
            checkpoint.resolve_resume(str(d))
        assert str(e.value) == (f"--resume {d}: no checkpoint there (no `latest` file, no step-N "
                                f"directory); {AGAIN}")
    for p, what in ((tmp_path / "nope", "no such directory"),
                    (logs_only / "log.jsonl", "is not a directory")):
        with pytest.raises(vadr.InputError) as e:
            checkpoint.resolve_resume(str(p))
        assert str(e.value) == (f"--resume {p}: {what}; pass a run directory (or one of its step-N "
                                f"checkpoints), or {AGAIN}")
    # a checkpoint named on purpose is taken as it is, or refused: no silent fallback
    d = os.path.join(run, "step-3")
    assert checkpoint.resolve_resume(d) == d
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(vadr.InputError) as e:
        checkpoint.resolve_resume(d)
    assert str(e.value) == (f"--resume {d}: {d}/model.safetensors is missing; resume from another "
                            f"checkpoint (its run directory {run} falls back to the newest intact "
                            f"one), or {AGAIN}")


def test_script_ends_in_one_line_error_and_exit_1(tiny_world, tmp_path):
    """Through train_sft.py: the error is one line, no traceback, exit code 1, nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, "train_sft.py", "--data", tiny_world["sft_train"], "--video-root",
           tiny_world["videos"], "--frames", "4", "--max-steps", "1", "--out", str(empty),
           "--resume", str(empty), "--device", "cpu", "--num-workers", "0"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: --resume {empty}: no checkpoint there (no `latest` file, no step-N directory); "
        f"{AGAIN}")
    assert "Traceback" not in p.stderr
    assert os.listdir(empty) == []


def test_checkpoint_without_manifest_is_still_read_and_checked(pristine, run, capsys):
    """Checkpoints written before manifests: the files every checkpoint has, non-empty, and the
    formats that can be checked (a safetensors file's header gives its size)."""
    for d in ("step-2", "step-3"):
        os.remove(os.path.join(run, d, checkpoint.MANIFEST))
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-3")
    w = os.path.join(run, "step-3", "model.safetensors")
    size = os.path.getsize(w)
    _truncate(w, size - 1)
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-2")
    assert capsys.readouterr().err.endswith(
        f"but {w} has {size - 1} bytes where its header needs {size} (truncated?); resuming from "
        f"{run}/step-2\n")
    os.remove(os.path.join(run, "step-2", "tokenizer_config.json"))
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-1")  # has its manifest
    assert f"{run}/step-2/tokenizer_config.json is missing" in capsys.readouterr().err
    _assert_resumes_state(os.path.join(run, "step-1"), pristine[1]["step-1"])


def test_init_only_checkpoint_resumes_at_step_0(pristine, run, capsys):
    """A kill after the toy's initial save but before step 1 leaves `latest` on init, which has no
    training position: resuming starts at step 0 with the saved weights and RNG streams."""
    for k in (1, 2, 3):
        shutil.rmtree(os.path.join(run, f"step-{k}"))
    with open(os.path.join(run, "latest"), "w") as f:
        f.write("init")
    ckpt = checkpoint.resolve_resume(run)
    assert ckpt == os.path.join(run, "init") and capsys.readouterr().err == ""
    from transformers import Qwen2_5_VLForConditionalGeneration
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt)
    saved = pristine[1]["init"]
    assert all(torch.equal(v, saved["weights"][k]) for k, v in model.state_dict().items())
    opt = training.make_optimizer(model, 1e-3, 0.0)
    sched = training.linear_schedule(opt, 10, 0)
    fresh_opt = copy.deepcopy(opt.state_dict())
    assert training.start_state(ckpt, model, opt, sched, 0, 0) == dict(step=0, epoch=0,
                                                                       step_in_epoch=0)
    assert torch.equal(torch.rand(3), saved["rand"]) and random.random() == saved["py"]
    assert opt.state_dict() == fresh_opt and sched.last_epoch == 0  # nothing to restore yet


def test_kill_before_step_1_resumes_to_the_uninterrupted_run(tiny_world, tmp_path):
    """End to end: what a SIGKILL between the init save and step 1 leaves (init, latest -> init,
    run_config.json, no log), resumed, gives the uninterrupted run's log and weights."""
    import train_sft
    args = ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"],
            "--frames", "4",
            "--lr", "1e-3", "--seed", "5", "--batch-size", "1", "--grad-accum", "1", "--max-steps",
            "1", "--device", "cpu", "--num-workers", "0"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    train_sft.main(args + ["--out", str(full)])
    killed.mkdir()
    shutil.copytree(full / "init", killed / "init")
    (killed / "latest").write_text("init")
    shutil.copy(full / "run_config.json", killed / "run_config.json")
    train_sft.main(args + ["--out", str(killed), "--resume", str(killed)])
    la = [json.loads(x) for x in open(full / "log.jsonl")]
    lb = [json.loads(x) for x in open(killed / "log.jsonl")]
    assert [r["step"] for r in lb] == [1] and [r["loss"] for r in la] == [r["loss"] for r in lb]
    from safetensors.torch import load_file
    a, b = load_file(full / "step-1" / "model.safetensors"), load_file(killed / "step-1" /
                                                                         "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_saves_are_removed_at_the_next_save_and_nothing_else(tiny_model, run,
                                                                         tmp_path):
    model, tok = tiny_model
    ours = [f".tmp-step-4-{DEAD_PID}", f".tmp-init-{DEAD_PID}", f".tmp-step-2-old-{DEAD_PID}",
            f".tmp-step-1-pruned-{DEAD_PID}"]
    for d in ours:
        os.makedirs(os.path.join(run, d, "sub"))
        open(os.path.join(run, d, "sub", "model.safetensors"), "w").write("half")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    others = {f".tmp-step-4-{os.getppid()}": "dir",   # a live process: its save may be running
              ".tmp-notes": "dir", f"tmp-step-3-{DEAD_PID}": "dir", f".tmp-ckpt-{DEAD_PID}": "dir",
              f".tmp-step-x-{DEAD_PID}": "dir", f".tmp-step-5-{DEAD_PID}": "file",
              f".tmp-step-6-{DEAD_PID}": "link"}
    for name, kind in others.items():
        p = os.path.join(run, name)
        if kind == "dir":
            os.makedirs(p)
            open(os.path.join(p, "f"), "w").write("x")
        elif kind == "file":
            open(p, "w").write("x")
        else:
            os.symlink(outside, p)
    # a save killed half-way leaves its temporary directory (here of this very process)
    half = f".tmp-step-4-{os.getpid()}"
    os.makedirs(os.path.join(run, half))
    open(os.path.join(run, half, "model.safetensors"), "w").write("half")
    checkpoint.save_checkpoint(run, "step-4", model, tok, train_state=dict(step=4, epoch=0,
                                                                           step_in_epoch=4))
    left = set(os.listdir(run))
    assert left == set(others) | {"init", "latest", "step-1", "step-2", "step-3", "step-4"}
    assert (outside / "keep.txt").read_text() == "mine"
    assert all(open(os.path.join(run, n, "f")).read() == "x" for n, k in others.items()
               if k == "dir")
    assert checkpoint.checkpoint_problem(os.path.join(run, "step-4")) is None


def test_pruning_keeps_checkpoints_newer_than_the_one_saved(tiny_model, run):
    """After a fallback resume the newer step-N are the damaged ones it skipped: a save of an
    older step prunes only up to itself, and replaces a checkpoint of its own name whole."""
    model, tok = tiny_model
    _truncate(os.path.join(run, "step-3", "model.safetensors"), 10)
    checkpoint.save_checkpoint(run, "step-2", model, tok, train_state=dict(step=2, epoch=0,
                                                                           step_in_epoch=2),
                               keep_last=1)
    assert sorted(os.listdir(run)) == ["init", "latest", "step-2", "step-3"]
    assert open(os.path.join(run, "latest")).read() == "step-2"
    assert checkpoint.checkpoint_problem(os.path.join(run, "step-2")) is None
    assert "has 10 bytes" in checkpoint.checkpoint_problem(os.path.join(run, "step-3"))


def test_load_training_state_on_bad_contents_is_one_error(tiny_model, run):
    model = tiny_model[0]
    st_path = os.path.join(run, "step-2", "training_state.pt")
    st = torch.load(st_path, weights_only=False)
    torch.save(dict(st, rng=st["rng"] * 2), st_path)  # saved by 2 ranks
    with pytest.raises(vadr.InputError) as e:
        checkpoint.load_training_state(os.path.join(run, "step-2"), model)
    assert str(e.value) == (f"{run}/step-2 was saved by 2 ranks; resuming on 1 would not continue "
                            "the same run exactly: resume with 2 ranks "
                            "(torchrun --nproc_per_node 2)")
    torch.save([1, 2], st_path)
    with pytest.raises(vadr.InputError) as e:
        checkpoint.load_training_state(os.path.join(run, "step-2"), model)
    assert str(e.value) == (f"{st_path} holds a list, not a training state; resume from a "
                            "checkpoint the training scripts wrote")
    torch.save(dict(rng=st["rng"], step="3"), st_path)
    with pytest.raises(vadr.InputError) as e:
        checkpoint.load_training_state(os.path.join(run, "step-2"), model)
    assert str(e.value) == (f"{st_path}: no step/epoch/step_in_epoch/rng in it (not written by "
                            "this project's training scripts?); resume from one of their "
                            "checkpoints")
    _garble_pickle(st_path)  # what resolve_resume's checks would have caught, read regardless
    with pytest.raises(vadr.InputError, match=r"^" + st_path.replace(".", r"\.") +
                       r" cannot be read \(\w+: corrupted\?\); move its checkpoint aside and "
                       r"--resume the run directory: it falls back to the newest intact "
                       r"checkpoint$"):
        checkpoint.load_training_state(os.path.join(run, "step-2"), model)


def test_truncate_log_drops_a_cut_last_record_and_names_a_bad_line(tmp_path):
    """The run log on resume: a last line cut short by a kill (no newline) is a step after the
    checkpoint and is dropped; a garbage line anywhere else is an error naming file:line."""
    from extras import checkpoint
    log = tmp_path / "log.jsonl"
    good = [json.dumps(dict(step=s, loss=1.0 / s)) + "\n" for s in (1, 2, 3)]
    log.write_text("".join(good) + '{"step": 4, "lo')
    checkpoint.truncate_jsonl(str(log), 2)
    assert log.read_text() == "".join(good[:2])
    log.write_text(good[0] + "not json\n" + good[1])
    before = log.read_bytes()
    with pytest.raises(vadr.InputError, match=r"log.jsonl:2: not a log record; fix or delete"):
        checkpoint.truncate_jsonl(str(log), 2)
    assert log.read_bytes() == before  # refused: the file is left as it was


def test_load_model_on_a_run_dir_without_a_checkpoint_is_one_error(tmp_path):
    from extras import lora
    (tmp_path / "latest").write_text("step-9")  # names a checkpoint that is not there
    with pytest.raises(vadr.InputError) as e:
        lora.load_merged(str(tmp_path))
    assert str(e.value) == (f"--model {tmp_path}: no intact checkpoint there: {tmp_path}/latest "
                            f"names {tmp_path}/step-9, but {tmp_path}/step-9 does not exist; pass "
                            "another checkpoint or run directory (nothing is downloaded)")
    with pytest.raises(vadr.InputError, match="neither 'toy' nor a local checkpoint directory"):
        vadr.load_model(str(tmp_path))  # one Hugging Face directory: run directories are extras'


def test_model_takes_a_run_directory_by_the_rule_resume_uses(pristine, run, capsys):
    """--model RUN_DIR (every script, through lora.load_merged) follows `latest` only to an
    intact checkpoint, as --resume does: a damaged one is skipped with one warning."""
    from extras import lora
    _truncate(os.path.join(run, "step-3", "model.safetensors"), 100)
    model, _ = lora.load_merged(run)
    w, saved = model.state_dict(), pristine[1]["step-2"]["weights"]
    assert all(torch.equal(w[k], saved[k]) for k in saved)
    assert capsys.readouterr().err == (
        f"warning: --model {run}: skipping a damaged checkpoint: {run}/latest names {run}/step-3, "
        f"but {run}/step-3/model.safetensors has 100 bytes where "
        f"{os.path.getsize(os.path.join(pristine[0], 'step-3', 'model.safetensors'))} were "
        f"written (truncated?); taking {run}/step-2\n")
    with pytest.raises(vadr.InputError) as e:  # a checkpoint named on purpose: no fallback
        lora.load_merged(os.path.join(run, "step-3"))
    assert str(e.value).startswith(f"--model {run}/step-3: {run}/step-3/model.safetensors has 100 "
                                   "bytes where ")
    assert str(e.value).endswith(f" (truncated?); pass its run directory {run} (which falls back "
                                 "to the newest intact checkpoint) or another checkpoint")


def test_resume_with_another_trainable_set_is_one_error(tiny_world, tmp_path):
    """A resume whose flags train other parameters than the checkpoint's run did (here
    --freeze-vision added) is refused in one line before anything is written; the run's own
    flags resume it, with --max-steps changed (a flag that may change)."""
    out = tmp_path / "r"
    base = [sys.executable, "train_sft.py", "--data", tiny_world["sft_train"], "--video-root",
            tiny_world["videos"], "--frames", "4", "--max-steps", "2", "--save-every", "1",
            "--batch-size", "1", "--device", "cpu", "--num-workers", "0", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(base + ["--max-steps", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    log = open(out / "log.jsonl").read()
    p = subprocess.run(base + ["--resume", str(out), "--freeze-vision"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    line = p.stderr.strip().splitlines()[-1]
    assert line == (f"error: train_sft.py: --resume {out}: --freeze-vision on is not the run's "
                    "--freeze-vision off: a resumed run keeps the flags that define it; leave "
                    "--freeze-vision out, or start a new run (another --out)")
    assert open(out / "log.jsonl").read() == log and not (out / "step-2").exists()
    p = subprocess.run(base + ["--resume", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 0 and (out / "step-2").is_dir(), p.stderr[-2000:]


# ================================================================ class: a full disk at a save

def _disk_full(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["weights", "training_state", "latest"])
def test_a_save_on_a_full_disk_is_one_error_and_the_previous_checkpoint_stays(
        tiny_model, run, monkeypatch, where):
    model, tok = tiny_model
    if where == "weights":
        monkeypatch.setattr(type(model), "save_pretrained", _disk_full)
    elif where == "training_state":
        monkeypatch.setattr(checkpoint.torch, "save", _disk_full)
    else:
        monkeypatch.setattr(checkpoint, "atomic_write", _disk_full)
    before = {n: os.path.getsize(os.path.join(run, "step-3", n))
              for n in os.listdir(os.path.join(run, "step-3"))}
    with pytest.raises(vadr.InputError) as e:
        checkpoint.save_checkpoint(run, "step-4", model, tok, config={})
    what = f"{run}/latest" if where == "latest" else f"{run}/step-4"
    assert str(e.value) == (f"{what}: could not be written (No space left on device); the "
                            f"previous checkpoint {run}/step-3 is intact: free space in {run} "
                            f"(--keep-last 1 keeps fewer) and --resume {run}")
    monkeypatch.undo()
    assert open(os.path.join(run, "latest")).read() == "step-3"
    assert not [n for n in os.listdir(run) if n.startswith(".tmp-")]
    assert os.path.isdir(os.path.join(run, "step-4")) == (where == "latest")  # complete, unnamed
    assert checkpoint.checkpoint_problem(os.path.join(run, "step-3")) is None
    assert before == {n: os.path.getsize(os.path.join(run, "step-3", n))
                      for n in os.listdir(os.path.join(run, "step-3"))}
    assert checkpoint.resolve_resume(run) == os.path.join(run, "step-3")


def test_a_save_that_loses_bytes_without_an_error_is_caught_reading_it_back(tiny_model, run,
                                                                            monkeypatch):
    model, tok = tiny_model
    real = checkpoint.write_manifest
    cut = {}

    def lose_bytes(d):  # a file system that dropped the end of a file and said nothing
        w = os.path.join(d, "model.safetensors")
        cut["n"] = os.path.getsize(w)
        _truncate(w, cut["n"] - 10)
        real(d)

    monkeypatch.setattr(checkpoint, "write_manifest", lose_bytes)
    with pytest.raises(vadr.InputError) as e:
        checkpoint.save_checkpoint(run, "step-4", model, tok, config={})
    assert str(e.value) == (
        f"{run}/step-4: could not be written (read back: {run}/.tmp-step-4-{os.getpid()}/"
        f"model.safetensors has {cut['n'] - 10} bytes where its header needs {cut['n']} "
        f"(truncated?)); the previous checkpoint {run}/step-3 is intact: free space in {run} "
        f"(--keep-last 1 keeps fewer) and --resume {run}")
    assert sorted(n for n in os.listdir(run) if n.startswith((".tmp", "step"))) == [
        "step-1", "step-2", "step-3"]


def test_a_first_save_on_a_full_disk_and_a_log_that_cannot_be_written(tiny_model, tmp_path,
                                                                       monkeypatch):
    model, tok = tiny_model
    monkeypatch.setattr(checkpoint.torch, "save", _disk_full)
    out = tmp_path / "new"
    with pytest.raises(vadr.InputError) as e:
        checkpoint.save_checkpoint(str(out), "step-1", model, tok, config={})
    assert str(e.value) == (f"{out}/step-1: could not be written (No space left on device); no "
                            f"checkpoint was written before: free space in {out} and run again")
    assert os.listdir(out) == []
    (tmp_path / "log.jsonl").mkdir()  # open(..., "a") fails as a full disk would
    with pytest.raises(vadr.InputError) as e:
        checkpoint.log_jsonl(str(tmp_path / "log.jsonl"), dict(step=1))
    assert str(e.value) == (f"{tmp_path}/log.jsonl: the log could not be written (Is a "
                            f"directory); free space there and --resume {tmp_path}")
    monkeypatch.setattr(checkpoint.json, "dump", _disk_full)  # run_config.json, at the start
    with pytest.raises(vadr.InputError) as e:
        checkpoint.start_log(str(out), {}, None)
    assert str(e.value) == (f"{out}/run_config.json: could not be written (No space left on "
                            f"device); free space in {out} and run again")


# ================================================================ class: not the same run

def _sft_argv(w, out, *extra):
    return ["--data", w["sft_train"], "--video-root", w["videos"], "--frames", "4", "--batch-size",
            "2", "--max-steps", "2", "--save-every", "1", "--keep-last", "5", "--lr", "1e-3",
            "--seed", "3", "--device", "cpu", "--num-workers", "0", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def sft_run(tiny_world, tmp_path_factory):
    """A real 2-step toy SFT run (flags far from the toy preset's), step-1 and step-2 kept."""
    import train_sft
    out = tmp_path_factory.mktemp("same_run") / "sft"
    train_sft.main(_sft_argv(tiny_world, out))
    return out


@pytest.fixture
def killed(sft_run, tmp_path):
    """The run as a kill after step 1 leaves it."""
    d = tmp_path / "killed"
    shutil.copytree(sft_run, d)
    shutil.rmtree(d / "step-2")
    (d / "latest").write_text("step-1")
    return d


def _tree(path) -> dict:
    return {os.path.relpath(os.path.join(r, f), path): open(os.path.join(r, f), "rb").read()
            for r, _, fs in os.walk(path) for f in fs}


SFT_CHANGED = [
    (["--lr", "0.002"], "--lr 0.002 is not the run's --lr 0.001"),
    (["--batch-size", "1"], "--batch-size 1 is not the run's --batch-size 2"),
    (["--seed", "0"], "--seed 0 is not the run's --seed 3"),
    (["--frames", "2"], "--frames 2 is not the run's --frames 4"),
    (["--epochs", "3"], "--epochs 3 is not the run's --epochs 18"),  # 18: the preset filled it
    (["--prompt-variant", "binary"], "--prompt-variant binary is not the run's --prompt-variant "
                                     "fine"),
    (["--skip-bad"], "--skip-bad on is not the run's --skip-bad off"),
    (["--lora-rank", "4"], "--lora-rank 4 is not the run's --lora-rank (unset)"),
    (["--model", "/elsewhere"], "--model /elsewhere is not the run's --model toy"),
]


@pytest.mark.parametrize("extra, msg", SFT_CHANGED)
def test_a_changed_run_defining_flag_is_refused_naming_both_values(tiny_world, killed, extra,
                                                                    msg):
    import train_sft
    before = _tree(killed)
    with pytest.raises(vadr.InputError) as e:
        train_sft.main(_sft_argv(tiny_world, killed, "--resume", str(killed), *extra))
    flag = msg.split()[0]
    assert str(e.value) == (f"train_sft.py: --resume {killed}: {msg}: a resumed run keeps the "
                            f"flags that define it; leave {flag} out, or start a new run (another "
                            "--out)")
    assert _tree(killed) == before


def test_flags_left_out_are_the_runs_and_those_that_may_change_do(killed, sft_run):
    """Resumed with none of its flags (the toy preset would give other lr, seed, batch, frames,
    data) and with --save-every / --keep-last / --num-workers changed: the run's very step 2."""
    import train_sft
    from conftest import saved_weights
    train_sft.main(["--resume", str(killed), "--out", str(killed), "--device", "cpu",
                    "--save-every", "7", "--keep-last", "1", "--num-workers", "0"])
    a, b = saved_weights(sft_run / "step-2"), saved_weights(killed / "step-2")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(x)["loss"] for x in open(killed / "log.jsonl")] == \
        [json.loads(x)["loss"] for x in open(sft_run / "log.jsonl")]
    cfg = checkpoint.saved_config(str(killed / "step-2"))
    assert (cfg["lr"], cfg["seed"], cfg["save_every"], cfg["keep_last"]) == (1e-3, 3, 7, 1)
    assert not (killed / "step-1").exists()  # --keep-last 1 took effect
    # the docs' table of flags that may change is the code's one list
    notes = open(os.path.join(ROOT, "docs", "engineering-notes.md"), encoding="utf-8").read()
    section = notes.split("## What `--resume` keeps and what it may change")[1].split("\n## ")[0]
    table = [ln.split("|")[1] for ln in section.splitlines() if ln.strip().startswith("| `--")]
    flags = {f.replace("-", "_") for row in table for f in re.findall(r"`--([a-z-]+)`", row)}
    assert flags == set(checkpoint.RESUME_MAY_CHANGE)


def test_the_same_rows_and_videos_elsewhere_resume_other_ones_do_not(tiny_world, killed,
                                                                     tmp_path):
    import argparse
    import data
    import train_sft
    saved = checkpoint.saved_config(str(killed / "step-1"))
    videos = tmp_path / "videos"
    shutil.copytree(tiny_world["videos"], videos)
    manifest = tmp_path / "sft.jsonl"
    lines = open(tiny_world["sft_train"], encoding="utf-8").read().splitlines(keepends=True)
    manifest.write_text("\n" + "".join(lines))  # another path and layout, the same rows
    rows = data.read_manifest(str(manifest), "sft", video_root=str(videos))
    checkpoint.check_same_data(argparse.Namespace(resume=str(killed)), saved, "sft",
                               checkpoint.data_content(rows))
    before = _tree(killed)
    manifest.write_text("".join(lines[:-1]))  # one row fewer
    with pytest.raises(vadr.InputError) as e:
        train_sft.main(_sft_argv(tiny_world, killed, "--resume", str(killed), "--data",
                                 str(manifest)))
    assert str(e.value) == (f"train_sft.py: --resume {killed}: --data {manifest} does not hold "
                            f"the rows of the run's --data {tiny_world['sft_train']}; pass the "
                            "run's, or start a new run (another --out)")
    first = data.read_manifest(tiny_world["sft_train"], "sft", video_root=str(videos))[0]
    other = next(p for p in sorted(videos.iterdir()) if str(p) != first["video_path"])
    # the rows' own paths exist, so they win over --video-root (data.py) and the file replaced is
    # the shared tiny world's: put it back afterwards, or later tests train on another world
    original = open(first["video_path"], "rb").read()
    try:
        shutil.copy(other, first["video_path"])  # a video replaced under its own name
        with pytest.raises(vadr.InputError) as e:
            train_sft.main(_sft_argv(tiny_world, killed, "--resume", str(killed), "--video-root",
                                     str(videos)))
    finally:
        open(first["video_path"], "wb").write(original)
    assert str(e.value) == (f"train_sft.py: --resume {killed}: the videos under --video-root "
                            f"{videos} are not the run's (--video-root {tiny_world['videos']}: "
                            "same rows, other files); pass the run's, or start a new run "
                            "(another --out)")
    assert _tree(killed) == before


def test_length_ranges_are_compared_by_value():
    import argparse
    args = argparse.Namespace(resume="R", data="d", video_root="v", length_ranges_from="new.jsonl")
    saved = dict(length_ranges={"Normal": [3, 9], "Abnormal": [5, 20]},
                 length_ranges_from="old.jsonl")
    same = dict(rows="r", videos="v")
    checkpoint.check_same_data(args, dict(saved, data_content=same), "rl", same,
                               {"Normal": (3, 9), "Abnormal": (5, 20)})  # tuples as computed
    with pytest.raises(vadr.InputError) as e:
        checkpoint.check_same_data(args, saved, "rl", same, {"Normal": (3, 9),
                                                             "Abnormal": (5, 21)})
    assert str(e.value) == (
        "train_rl.py: --resume R: --length-ranges-from new.jsonl gives the length ranges "
        "{'Normal': [3, 9], 'Abnormal': [5, 21]}, the run's --length-ranges-from old.jsonl gave "
        "{'Normal': [3, 9], 'Abnormal': [5, 20]}; pass the run's, or start a new run (another "
        "--out)")


def test_an_sft_run_resumed_by_train_rl_and_back_is_one_line_and_untouched(sft_run, tmp_path):
    run = tmp_path / "sft"
    shutil.copytree(sft_run, run)
    before = _tree(run)
    p = subprocess.run([sys.executable, "train_rl.py", "--resume", str(run), "--out", str(run),
                        "--device", "cpu", "--num-workers", "0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [
        f"error: train_rl.py: --resume {run}: {run}/step-2 is an SFT run's checkpoint; "
        "train_rl.py must not append RL steps to it nor overwrite its run_config.json: continue "
        f"it with train_sft.py --resume {run}, or start RL from it with --model {run} and a new "
        "--out"]
    assert _tree(run) == before
    # an RL run (its run_config.json says so) resumed by train_sft.py
    import train_sft
    ckpt = run / "step-2"
    cfg = json.load(open(ckpt / "run_config.json"))
    (ckpt / "run_config.json").write_text(json.dumps(dict(cfg, stage="rl")))
    os.remove(ckpt / checkpoint.MANIFEST)
    checkpoint.write_manifest(str(ckpt))  # an intact checkpoint, of an RL run
    before = _tree(run)
    with pytest.raises(vadr.InputError) as e:
        train_sft.main(["--resume", str(run), "--out", str(run), "--device", "cpu"])
    assert str(e.value) == (
        f"train_sft.py: --resume {run}: {ckpt} is an RL run's checkpoint; train_sft.py must not "
        f"append SFT steps to it nor overwrite its run_config.json: continue it with train_rl.py "
        f"--resume {run}, or start SFT from it with --model {run} and a new --out")
    assert _tree(run) == before
    # checkpoints written before `stage` was recorded: told apart by their flags
    assert [checkpoint.run_stage(c) for c in (dict(num_generations=4, task="p2c"),
                                              dict(task="caption"), dict(lr=1.0))] == \
        ["rl", "sft", None]


def test_a_run_stopped_by_a_full_disk_resumes_to_the_uninterrupted_run(tiny_world, sft_run,
                                                                        tmp_path, monkeypatch):
    """train_sft.py whose step-2 save finds the disk full: one line, step-1 intact; freed and
    resumed, step 2 is the uninterrupted run's."""
    import train_sft
    from conftest import saved_weights
    real = checkpoint.write_manifest

    def full_at_step_2(d):
        if os.path.basename(d).startswith(".tmp-step-2-"):
            _disk_full()
        real(d)

    monkeypatch.setattr(checkpoint, "write_manifest", full_at_step_2)
    out = tmp_path / "run"
    with pytest.raises(vadr.InputError) as e:
        train_sft.main(_sft_argv(tiny_world, out))
    assert str(e.value) == (f"{out}/step-2: could not be written (No space left on device); the "
                            f"previous checkpoint {out}/step-1 is intact: free space in {out} "
                            f"(--keep-last 1 keeps fewer) and --resume {out}")
    monkeypatch.undo()
    assert sorted(n for n in os.listdir(out) if n.startswith((".tmp", "step"))) == ["step-1"]
    train_sft.main(_sft_argv(tiny_world, out, "--resume", str(out)))
    a, b = saved_weights(sft_run / "step-2"), saved_weights(out / "step-2")
    assert all(torch.equal(a[k], b[k]) for k in a)


RL_CHANGED = [
    (["--num-generations", "4"], "--num-generations 4 is not the run's --num-generations 3"),
    (["--no-format-reward"], "--no-format-reward on is not the run's --no-format-reward off"),
    (["--no-verification-reward"], "--no-verification-reward on is not the run's "
                                   "--no-verification-reward off"),
    (["--length-mode", "authors"], "--length-mode authors is not the run's --length-mode words"),
    (["--beta", "0"], "--beta 0.0 is not the run's --beta 0.02"),
    (["--loss-type", "token"], "--loss-type token is not the run's --loss-type sequence"),
    (["--adv-std", "none"], "--adv-std none is not the run's --adv-std unbiased"),
    (["--mu", "2"], "--mu 2 is not the run's --mu 1"),
    (["--dynamic-sampling"], "--dynamic-sampling on is not the run's --dynamic-sampling off"),
    (["--preset", "paper"], "--preset paper is not the run's --preset toy"),
]


@pytest.mark.parametrize("extra, msg", RL_CHANGED)
def test_rl_reward_and_grpo_flags_define_the_run(tmp_path, extra, msg):
    """train_rl.py's flags against an RL run's record: each changed one refused naming both
    values; left out, the run's (here G = 3 and beta 0.02, not the preset's 4 and 0.04)."""
    import train_rl
    ckpt = tmp_path / "rl" / "step-1"
    ckpt.mkdir(parents=True)
    first = train_rl.parse_args(["--num-generations", "3", "--beta", "0.02", "--seed", "7"])
    (ckpt / "run_config.json").write_text(json.dumps(dict(vars(first), stage="rl")))
    resume = ["--resume", str(tmp_path / "rl")]
    args = train_rl.parse_args(resume + ["--max-steps", "9"])
    checkpoint.continue_run(args, str(ckpt), "rl")
    assert (args.num_generations, args.beta, args.seed, args.max_steps) == (3, 0.02, 7, 9)
    with pytest.raises(vadr.InputError) as e:
        checkpoint.continue_run(train_rl.parse_args(resume + extra), str(ckpt), "rl")
    # a record that does not say which preset the run had (older RL runs) refuses no --preset
    (ckpt / "run_config.json").write_text(json.dumps(dict(vars(first), preset=None)))
    checkpoint.continue_run(train_rl.parse_args(resume + ["--preset", "toy"]), str(ckpt), "rl")
    flag = msg.split()[0]
    assert str(e.value) == (f"train_rl.py: --resume {tmp_path / 'rl'}: {msg}: a resumed run keeps "
                            f"the flags that define it; leave {flag} out, or start a new run "
                            "(another --out)")
