"""Bad flags and existing data (issue 16, classes "Flags" and "Existing data lost"): every flag of
train_sft.py, train_rl.py and eval.py's inference is refused with one line naming the flag, its
value and what to pass, before anything is loaded (extras/flagcheck.py); a training --out that
holds a run needs --resume or --overwrite; an eval --out that is not a predictions file is left
byte-identical. Most cases call the validator on the scripts' own parsed arguments (presets and
eval's authors' inference defaults applied: the scripts' parse_args); a few subprocesses prove the
wiring: exit code 1, one line on stderr, no traceback, nothing heavy loaded. Issue 36: --device (cpu, cuda, cuda:N, one rule for
every script) and --length-ranges-from (read through the manifest checker; the RL manifest, a
missing file or a directory is one line). Issue 37: python -m extras.gpucheck's flags and its
--out (never replaced without --overwrite). Run: pytest tests/test_bad_input_flags.py"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import eval as ev
import train_rl
import train_sft
import vadr
from extras import flagcheck, gpucheck, predictions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIX = "(Qwen2.5-VL's 16384 * 28 * 28)"
FRAMES = "a video needs at least 1 frame (2 with --frame-rule authors, which takes an even number)"
STEPS = ("at least 1 optimizer step (0 trains nothing and leaves no checkpoint); leave it out for "
         "whole epochs")
EPOCHS = "passes over the data: at least 1 (0 trains nothing and leaves no checkpoint)"
TEMP = "sampling divides the logits by it, so it must be > 0"
TOP_P = "nucleus sampling keeps a probability mass in (0, 1]"
FINITE = "must be a finite number"
KEEP = "keeps the newest N step checkpoints: N >= 1 (pass a large N to keep them all)"

SFT_BAD = [
    (["--frames", "0"], f"--frames 0: {FRAMES}"),
    (["--frames", "-3"], f"--frames -3: {FRAMES}"),
    (["--frames", "1", "--frame-rule", "authors"], f"--frames 1: {FRAMES}"),
    (["--batch-size", "0"], "--batch-size 0: videos per batch: at least 1"),
    (["--grad-accum", "0"], "--grad-accum 0: micro-batches per optimizer step: at least 1"),
    (["--min-pixels", "0"], f"--min-pixels 0: pixels per frame must be in [1, 12845056] {PIX}"),
    (["--min-pixels", "5000", "--max-pixels", "1000"],
     f"--max-pixels 1000: pixels per frame must be in [--min-pixels 5000, 12845056] {PIX}"),
    (["--max-pixels", "20000000"],  # the toy preset's min_pixels is 56 * 56
     f"--max-pixels 20000000: pixels per frame must be in [--min-pixels 3136, 12845056] {PIX}"),
    (["--lr=-1"], "--lr -1.0: the learning rate must be > 0"),
    (["--lr", "0"], "--lr 0.0: the learning rate must be > 0"),
    (["--lr", "nan"], f"--lr nan: {FINITE}"),
    (["--weight-decay=-0.1"], "--weight-decay -0.1: AdamW weight decay must be >= 0"),
    (["--weight-decay", "inf"], f"--weight-decay inf: {FINITE}"),
    (["--warmup-ratio", "1.5"], "--warmup-ratio 1.5: a share of the steps: in [0, 1]"),
    (["--warmup-ratio=-0.1"], "--warmup-ratio -0.1: a share of the steps: in [0, 1]"),
    (["--max-grad-norm", "0"],
     "--max-grad-norm 0.0: gradient clipping needs a norm > 0 (0 would zero every gradient)"),
    (["--epochs", "0"], f"--epochs 0: {EPOCHS}"),
    (["--max-steps", "0"], f"--max-steps 0: {STEPS}"),
    (["--max-steps", "-5"], f"--max-steps -5: {STEPS}"),
    (["--save-every", "0"], "--save-every 0: checkpoint every N steps: N >= 1 (the last step is "
                            "always saved; pass a large N for that alone)"),
    (["--keep-last", "0"], f"--keep-last 0: {KEEP}"),
    (["--keep-last", "-1"], f"--keep-last -1: {KEEP}"),
    (["--num-workers", "-1"],
     "--num-workers -1: DataLoader workers: 0 (decode in the main process) or more"),
    (["--seed", "-1"],
     "--seed -1: seeds are in [0, 2**32) (the scripts derive per-step seeds from it)"),
    (["--lora-rank", "0"],
     "--lora-rank 0: a LoRA rank is at least 1 (leave it out for full fine-tuning)"),
    (["--lora-alpha", "0"], "--lora-alpha 0.0: the LoRA scale alpha / R needs alpha > 0"),
    (["--lora-dropout", "1.0"], "--lora-dropout 1.0: a dropout probability in [0, 1)"),
    (["--dry-run-gpus", "0"], "--dry-run-gpus 0: the dry run plans for at least 1 GPU"),
    (["--model", "/nonexistent/m"], "--model /nonexistent/m does not exist: pass 'toy' or a local "
                                    "checkpoint or run directory (nothing is downloaded)"),
]
RL_BAD = [
    (["--num-generations", "1"],
     "--num-generations 1: GRPO needs at least 2 completions per video (Eq. 1's std)"),
    (["--num-generations", "0"],
     "--num-generations 0: GRPO needs at least 2 completions per video (Eq. 1's std)"),
    (["--temperature", "0"], f"--temperature 0.0: {TEMP}"),
    (["--temperature=-1"], f"--temperature -1.0: {TEMP}"),
    (["--temperature", "nan"], f"--temperature nan: {FINITE}"),
    (["--top-p", "0"], f"--top-p 0.0: {TOP_P}"),
    (["--top-p", "1.5"], f"--top-p 1.5: {TOP_P}"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: a completion needs at least 1 new token"),
    (["--beta=-0.04"], "--beta -0.04: the KL coefficient must be >= 0 (0 drops the KL term; a "
                       "negative one rewards drifting from pi_ref)"),
    (["--beta", "nan"], f"--beta nan: {FINITE}"),
    (["--epsilon", "0"],
     "--epsilon 0.0: the clip range [1 - eps, 1 + eps] of Eq. 3 needs 0 < eps < 1"),
    (["--epsilon", "1"],
     "--epsilon 1.0: the clip range [1 - eps, 1 + eps] of Eq. 3 needs 0 < eps < 1"),
    (["--mu", "0"], "--mu 0: policy updates per rollout: at least 1"),
    (["--plain-scoring", "--dry-run"], "--dry-run estimates the memory of extras/fastpath.py's "
                                       "scoring, not grpo's: drop --plain-scoring"),
    (["--epochs", "0"], f"--epochs 0: {EPOCHS}"),
    (["--max-steps", "0"], f"--max-steps 0: {STEPS}"),
    (["--batch-size", "0"], "--batch-size 0: videos per batch: at least 1"),
    (["--lr=-1e-6"], "--lr -1e-06: the learning rate must be > 0"),
    (["--max-grad-norm", "inf"], f"--max-grad-norm inf: {FINITE}"),
    (["--model", "/nonexistent/m"], "--model /nonexistent/m does not exist: pass an SFT checkpoint "
                                    "or run directory (nothing is downloaded)"),
]
EVAL_BAD = [
    (["--batch-size", "0"], "--batch-size 0: videos per batch: at least 1"),
    (["--limit", "0"], "--limit 0: the first N videos: N >= 1 (leave it out for all of them)"),
    (["--limit", "-1"], "--limit -1: the first N videos: N >= 1 (leave it out for all of them)"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: a completion needs at least 1 new token"),
    (["--sample", "--temperature", "0"], f"--temperature 0.0: {TEMP}"),
    (["--top-p", "0"], f"--top-p 0.0: {TOP_P}"),
    (["--top-p", "nan"], f"--top-p nan: {FINITE}"),
    (["--frames", "0"], f"--frames 0: {FRAMES}"),
    (["--num-workers", "-1"],
     "--num-workers -1: DataLoader workers: 0 (decode in the main process) or more"),
    (["--min-pixels", "0"], f"--min-pixels 0: pixels per frame must be in [1, 12845056] {PIX}"),
    (["--model", "/nonexistent/m"], "--model /nonexistent/m does not exist: pass 'toy' or a local "
                                    "checkpoint or run directory (nothing is downloaded)"),
]

# --device (issue 36): what torch takes for cpu and cuda, else one line; CUDA where there is none
NOT_A_DEVICE = "not a device this project runs on; pass cpu, cuda or cuda:N"
DEVICE_BAD = [(["--device", d], f"--device {d}: {NOT_A_DEVICE}")
              for d in ("gpu", "mps", "cuda:x", "cuda:-1", "CPU", "")]
if torch.version.cuda is None:  # the CPU-only build the tests run on
    DEVICE_BAD += [(["--device", d], f"--device {d}: no CUDA device is available (torch "
                    f"{torch.__version__} is a CPU-only build); pass --device cpu")
                   for d in ("cuda", "cuda:0")]
SFT_BAD += DEVICE_BAD
RL_BAD += DEVICE_BAD
EVAL_BAD += DEVICE_BAD


def _sft(tmp_path, *extra):
    return train_sft.parse_args(["--out", str(tmp_path / "run"), *extra])


def _rl(tmp_path, *extra):
    (tmp_path / "sft").mkdir(exist_ok=True)  # an existing --model directory (not read here)
    return train_rl.parse_args(["--model", str(tmp_path / "sft"), "--out", str(tmp_path / "run"),
                                *extra])


def _eval(tmp_path, *extra):
    return ev.parse_args(["--model", "toy", "--data", str(tmp_path / "test.jsonl"), "--out",
                          str(tmp_path / "preds.jsonl"), *extra])


def _refused(args, stage) -> str:
    with pytest.raises(vadr.InputError) as e:
        flagcheck.check_flags(args, stage)
    return str(e.value)


def _tree(path) -> dict:
    """Every file under path -> its bytes' digest (the byte-identical check)."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# ================================================================ the flag table

@pytest.mark.parametrize("extra, msg", SFT_BAD)
def test_train_sft_refuses_each_bad_flag(tmp_path, extra, msg):
    assert _refused(_sft(tmp_path, *extra), "sft") == f"train_sft.py: {msg}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, msg", RL_BAD)
def test_train_rl_refuses_each_bad_flag(tmp_path, extra, msg):
    assert _refused(_rl(tmp_path, *extra), "rl") == f"train_rl.py: {msg}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, msg", EVAL_BAD)
def test_eval_inference_refuses_each_bad_flag(tmp_path, extra, msg):
    assert _refused(_eval(tmp_path, *extra), "eval") == f"eval.py: {msg}"
    assert not (tmp_path / "preds.jsonl").exists()


def test_a_missing_model_says_what_to_do_for_that_model(tmp_path, monkeypatch):
    """Only the toy default (runs/toy/sft) is advised to be made with train_sft.py; the README's
    `--dry-run --model /ckpt/...` line without that directory names the directory, one line."""
    monkeypatch.chdir(tmp_path)
    assert _refused(train_rl.parse_args(["--out", "run"]), "rl") == (
        "train_rl.py: --model runs/toy/sft does not exist. Make the toy SFT model first with "
        "`make toy-sft` (SFT from the shipped toy-base/, about 4 minutes), or pass --model SFT_DIR")
    ckpt = "/ckpt/Qwen2.5-VL-7B-Instruct"
    argv = ["--dry-run", "--model", ckpt, "--fsdp", "--dry-run-gpus", "4"]
    why = "--dry-run reads its config.json; pass a local checkpoint directory (nothing is downloaded)"
    assert _refused(train_sft.parse_args(argv), "sft") == f"train_sft.py: --model {ckpt} does not exist: {why}"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train_rl.py")] + argv, capture_output=True,
                       text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (1, "", f"error: train_rl.py: --model {ckpt} does not exist: {why}\n")


def test_the_presets_and_the_edges_of_every_range_pass(tmp_path):
    """The defaults of every preset, and each range's own bounds, are accepted (a validator that
    refused everything would pass the tests above)."""
    for extra in ([], ["--preset", "paper"], ["--task", "caption"], ["--frames", "1"],
                  ["--frames", "2", "--frame-rule", "authors"],
                  ["--min-pixels", "784", "--max-pixels", "784"], ["--max-pixels", "12845056"],
                  ["--warmup-ratio", "0", "--weight-decay", "0"], ["--warmup-ratio", "1"],
                  ["--keep-last", "1", "--save-every", "1", "--max-steps", "1", "--epochs", "1"],
                  ["--seed", "0", "--num-workers", "0", "--lora-rank", "1", "--lora-dropout", "0"]):
        flagcheck.check_flags(_sft(tmp_path, *extra), "sft")
    for extra in ([], ["--preset", "paper"], ["--num-generations", "2"], ["--top-p", "1"],
                  ["--beta", "0"], ["--epsilon", "0.999", "--mu", "1"], ["--temperature", "1e-3"]):
        flagcheck.check_flags(_rl(tmp_path, *extra), "rl")
    for extra in ([], ["--limit", "1"], ["--sample"], ["--authors-inference"], ["--top-p", "1"]):
        flagcheck.check_flags(_eval(tmp_path, *extra), "eval")
    assert os.listdir(tmp_path) == ["sft"]  # nothing was created (the probe removed itself)


def test_scoring_modes_take_no_inference_flags(tmp_path):
    """--score / --mc / --report never generate: inference values, however bad, are not checked."""
    for mode in (["--score", "p.jsonl", "--gt", "g.jsonl"], ["--mc", "p.jsonl"],
                 ["--report", str(tmp_path)]):
        args = ev.parse_args(
            mode + ["--batch-size", "0", "--max-new-tokens", "0", "--top-p", "nan"])
        assert flagcheck.check_flags(args, "eval") is None
    # --model with --score is scoring too (main() scores first)
    args = ev.parse_args(
        ["--score", "p.jsonl", "--gt", "g.jsonl", "--model", "/nonexistent", "--limit", "0"])
    assert flagcheck.check_flags(args, "eval") is None


def test_eval_needs_data_and_out_and_a_writable_out(tmp_path):
    args = ev.parse_args(["--model", "toy"])
    assert _refused(args, "eval") == "eval.py: inference needs --model, --data and --out"
    (tmp_path / "folder").mkdir()
    assert _refused(_eval(tmp_path, "--out", str(tmp_path / "folder")), "eval") == (
        f"eval.py: --out {tmp_path / 'folder'} is a directory; pass the predictions JSONL file to "
        f"write (e.g. {tmp_path / 'folder' / 'preds.jsonl'})")
    (tmp_path / "afile").write_text("x")
    assert _refused(_eval(tmp_path, "--out", str(tmp_path / "afile" / "p.jsonl")), "eval") == (
        f"eval.py: --out {tmp_path / 'afile' / 'p.jsonl'}: {tmp_path / 'afile'} is a file, not a "
        "directory; pass another --out")
    assert _refused(_eval(tmp_path, "--out", "/proc/vadr-test/p.jsonl"), "eval").startswith(
        "eval.py: --out /proc/vadr-test/p.jsonl: cannot write in /proc (")
    gt = tmp_path / "test.jsonl"
    gt.write_text("{}\n")
    assert _refused(_eval(tmp_path, "--json", str(gt)), "eval") == (
        f"eval.py: --json {gt} is also --data {gt}, which it would replace; pass another --json")
    assert gt.read_text() == "{}\n"
    assert _refused(_eval(tmp_path, "--json", str(tmp_path)), "eval") == (
        f"eval.py: --json {tmp_path} is a directory; pass a file name")


# ================================================================ a training --out

def _fake_run(d, names=("log.jsonl", "run_config.json", "latest", "step-2/", "init/")):
    """A run directory as the scripts leave it (extras/checkpoint.py's layout), hand-made."""
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n.endswith("/"):
            (d / n).mkdir()
            (d / n / "training_state.pt").write_bytes(b"state of " + n.encode())
        else:
            (d / n).write_text(f"old {n}\n")
    return d


@pytest.mark.parametrize("marker", ["log.jsonl", "run_config.json", "latest", "step-7/", "init/",
                                    "lora-base/", ".tmp-step-3-123/"])
def test_a_fresh_run_into_a_run_directory_is_refused_untouched(tmp_path, marker):
    out = _fake_run(tmp_path / "run", [marker, "notes.txt"])
    before = _tree(out)
    name = marker.rstrip("/")
    assert _refused(_sft(tmp_path), "sft") == (
        f"train_sft.py: --out {out} already holds a run ({name}): pass --resume {out} to "
        "continue it, or --overwrite to delete it and start afresh")
    assert _tree(out) == before


def test_overwrite_deletes_the_old_run_and_nothing_else(tmp_path, capsys, monkeypatch):
    out = _fake_run(tmp_path / "run", ["log.jsonl", "run_config.json", "latest", "step-2/",
                                       "step-4/", "init/", "done", "rank_checksums.json"])
    (out / "notes.txt").write_text("mine")
    (out / "step-x").mkdir()  # not a name the scripts write
    monkeypatch.setenv("RANK", "1")  # under torchrun only rank 0 deletes
    flagcheck.check_flags(_sft(tmp_path, "--overwrite"), "sft")
    assert len(os.listdir(out)) == 10
    monkeypatch.delenv("RANK")
    flagcheck.check_flags(_sft(tmp_path, "--overwrite"), "sft")
    assert sorted(os.listdir(out)) == ["notes.txt", "step-x"]
    assert capsys.readouterr().out.splitlines() == [
        f"--overwrite: removed the old run in {out} (done, init, latest, log.jsonl, "
        "rank_checksums.json, run_config.json, step-2, step-4)"]


def test_resume_and_overwrite_and_the_run_directory(tmp_path):
    out = _fake_run(tmp_path / "run")
    other = _fake_run(tmp_path / "other")
    before = _tree(tmp_path)
    assert _refused(_sft(tmp_path, "--resume", str(out), "--overwrite"), "sft") == (
        "train_sft.py: --resume and --overwrite contradict each other: --resume continues a run, "
        "--overwrite deletes it; pass one")
    assert _refused(_rl(tmp_path, "--resume", str(other)), "rl") == (
        f"train_rl.py: --out {out} holds another run (init, latest, log.jsonl, run_config.json, "
        "...); "
        f"--resume {other} continues into its own run directory: pass --out {other}, or a new "
        "--out")
    flagcheck.check_flags(_sft(tmp_path, "--resume", str(out)), "sft")               # its own
    flagcheck.check_flags(_sft(tmp_path, "--resume", str(out / "step-2")), "sft")    # one of its
    flagcheck.check_flags(_rl(tmp_path, "--resume", str(other), "--out",             # a new --out
                              str(tmp_path / "new")), "rl")
    # --model inside the run --overwrite would delete (RL from this directory's own checkpoint)
    assert _refused(_rl(tmp_path, "--model", str(out / "step-2"), "--overwrite"), "rl") == (
        f"train_rl.py: --model {out / 'step-2'} is part of the run in --out {out}, which "
        "--overwrite would delete; pass another --out")
    assert _tree(tmp_path) == before and not (tmp_path / "new").exists()


def test_an_out_that_is_a_file_or_cannot_be_written(tmp_path):
    f = tmp_path / "afile"
    f.write_text("keep me")
    assert _refused(_sft(tmp_path, "--out", str(f)), "sft") == (
        f"train_sft.py: --out {f} is a file, not a run directory; pass another --out")
    assert _refused(_sft(tmp_path, "--out", str(f / "run")), "sft") == (
        f"train_sft.py: --out {f / 'run'}: {f} is a file, not a directory; pass another --out")
    assert _refused(_sft(tmp_path, "--out", ""), "sft") == (
        "train_sft.py: --out '': pass a run directory")
    assert _refused(_rl(tmp_path, "--out", "/proc/vadr-test/run"), "rl").startswith(
        "train_rl.py: --out /proc/vadr-test/run: cannot write in /proc (")
    assert f.read_text() == "keep me"
    # --merge and --dry-run write no run directory: an --out holding a run is not theirs to judge
    _fake_run(tmp_path / "run")
    flagcheck.check_flags(_sft(tmp_path, "--dry-run"), "sft")


# ================================================================ an eval --out

def _pred(video, output="<answer>x</answer>"):
    return json.dumps(dict(source="TOY", video=video, anomaly_type="Normal", output=output)) + "\n"


@pytest.mark.parametrize("text, line", [
    ('{"source": "TOY", "video": "a", "anomaly_type": "Fire", "think": "..."}\n', 1),  # a manifest
    ("my notes\nmore notes\n", 1),
    (_pred("a") + "[1, 2]\n" + _pred("b"), 2),
    (_pred("a") + '{"source": "TOY", "video": "b"}\n', 2),   # no output
    (_pred("a") + "\n" + "{oops\n" + _pred("c"), 3),         # a broken line that is not the last
    (_pred("a") + '"just a string"', 2),                      # a last line that parses, not a row
    ("\x00\x01binary, no newline at all", 1),                  # e.g. a video given as --out
    (_pred("a") + '{"video": "b", "sou', 2),                  # unterminated, but not our row
])
def test_an_eval_out_that_is_not_a_predictions_file_is_left_byte_identical(tmp_path, text, line):
    p = tmp_path / "preds.jsonl"
    p.write_text(text)
    want = (f"{p}:{line}: not a predictions row (a JSON object with source, video, output), so "
            "--out is not a predictions file to resume; it was left untouched: pass a new --out")
    assert _refused(_eval(tmp_path, "--out", str(p)), "eval") == want
    with pytest.raises(vadr.InputError) as e:
        predictions.done_keys(str(p))
    assert str(e.value) == want and p.read_text() == text


def test_a_predictions_file_resumes_and_a_torn_last_line_is_dropped(tmp_path):
    p = tmp_path / "preds.jsonl"
    good = _pred("a") + "\n" + _pred("b")
    p.write_text(good)
    flagcheck.check_flags(_eval(tmp_path, "--out", str(p)), "eval")
    assert predictions.done_keys(str(p)) == {("TOY", "a"), ("TOY", "b")} and p.read_text() == good
    p.write_text(good + _pred("c")[:25])                      # killed mid-write
    assert predictions.done_keys(str(p)) == {("TOY", "a"), ("TOY", "b")} and p.read_text() == good
    p.write_text(good + _pred("c").rstrip("\n"))              # a whole row, its newline lost
    assert len(predictions.done_keys(str(p))) == 3 and p.read_text() == good + _pred("c")


# ================================================================ python -m extras.gpucheck

SECTIONS = "rollout,verification,scoring,rl_step,sft"
GPUCHECK_BAD = [
    (["--num-generations", "1"], "--num-generations 1: GRPO needs at least 2 completions per "
                                 "video (Eq. 1's std)"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: a completion needs at least 1 new token"),
    (["--frames", "0"], f"--frames 0: {FRAMES}"),
    (["--max-pixels", "1000"],
     f"--max-pixels 1000: pixels per frame must be in [--min-pixels 3136, 12845056] {PIX}"),
    (["--lora-rank", "0"], "--lora-rank 0: the RL step's LoRA rank is at least 1 (default 64)"),
    (["--peak-tflops", "0"], "--peak-tflops 0.0: the card's peak bf16 TFLOP/s must be > 0 (leave "
                             "it out for a card bench.PEAK_BF16_FLOPS knows)"),
    (["--peak-tflops", "nan"], f"--peak-tflops nan: {FINITE}"),
    (["--project-videos", "0"], "--project-videos 0: the projected epoch has at least 1 video"),
    (["--project-gpus", "0"], "--project-gpus 0: the projection plans for at least 1 GPU"),
    (["--bench-repeats", "0"],
     "--bench-repeats 0: interleaved naive/ours pairs per bench section: at least 1"),
    (["--clip-frames", "0"], "--clip-frames 0: the rendered clip has at least 1 frame"),
    (["--score-tokens", "0"],
     "--score-tokens 0: completion tokens per row in the scoring accounting: at least 1"),
    (["--seed=-1"], "--seed -1: seeds are in [0, 2**32) (the scripts derive per-step seeds from it)"),
    (["--budget-s", "0"], "--budget-s 0.0: the time plan in seconds must be > 0"),
    (["--clip-size", "0", "84"], "--clip-size 0 84: a frame is at least 1 x 1 pixels"),
    (["--bench-sections", "rollout,sfx"], f"--bench-sections rollout,sfx: pass a comma-separated "
                                          f"subset of {SECTIONS}, or none"),
    (["--bench-sections", " "], f"--bench-sections  : pass a comma-separated subset of {SECTIONS}, "
                                "or none"),
] + DEVICE_BAD


def _gpucheck_refused(*argv) -> str:
    with pytest.raises(vadr.InputError) as e:
        gpucheck.check_args(gpucheck.parse_args(list(argv)))
    return str(e.value)


@pytest.mark.parametrize("extra, msg", GPUCHECK_BAD)
def test_gpucheck_refuses_each_bad_flag(tmp_path, extra, msg):
    # --tiny: on the CPU the tests run on, the full 7B shape is itself refused (next test)
    got = _gpucheck_refused("--tiny", "--out", str(tmp_path / "o"), *extra)
    assert got == f"python -m extras.gpucheck: {msg}"
    assert not (tmp_path / "o").exists()


def test_gpucheck_refuses_the_full_shape_on_a_cpu(tmp_path):
    assert _gpucheck_refused("--device", "cpu", "--out", str(tmp_path / "o")) == (
        "python -m extras.gpucheck: --device cpu with the full 7B shape would take hours and about "
        "40 GB: pass --tiny for the CPU check, or run on a GPU")


def test_gpucheck_never_replaces_its_results_unasked(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "gpucheck.md").write_text("an earlier card's table\n")
    (out / "notes.txt").write_text("mine\n")
    assert _gpucheck_refused("--tiny", "--out", str(out)) == (
        f"python -m extras.gpucheck: --out {out} already holds gpucheck.md: pass --overwrite to "
        "replace them (make gpu-check GPU_ARGS=--overwrite), or another --out")
    assert _tree(out) == {"gpucheck.md": hashlib.sha256(b"an earlier card's table\n").hexdigest(),
                          "notes.txt": hashlib.sha256(b"mine\n").hexdigest()}
    gpucheck.check_args(gpucheck.parse_args(["--tiny", "--out", str(out), "--overwrite",
                                             "--bench-sections", "none"]))  # accepted
    (tmp_path / "f").write_text("x")
    assert _gpucheck_refused("--tiny", "--out", str(tmp_path / "f")) == (
        f"python -m extras.gpucheck: --out {tmp_path / 'f'} is a file, not a folder; pass "
        "another --out")


def test_gpucheck_refuses_a_flag_before_loading_anything(tmp_path):
    p = _run(["-m", "extras.gpucheck", "--device", "cpu", "--num-generations", "1", "--out",
              str(tmp_path / "o")])
    _one_line_error(p, "python -m extras.gpucheck: --num-generations 1: GRPO needs at least 2 "
                       "completions per video (Eq. 1's std)")
    assert os.listdir(tmp_path) == []


# ================================================================ the scripts themselves

def _run(argv, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable] + argv, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(p, want):
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines() == [f"error: {want}"]


def test_scripts_check_flags_before_loading_anything(tmp_path):
    # train_sft.py without --data would make the toy world in ./data/toy first: run in tmp_path
    p = _run([os.path.join(ROOT, "train_sft.py"), "--frames", "0"], cwd=tmp_path)
    _one_line_error(p, f"train_sft.py: --frames 0: {FRAMES}")
    assert os.listdir(tmp_path) == []  # no toy world, no runs/toy/sft
    # the flag is refused before the model or the data would have failed
    p = _run(["train_rl.py", "--model", str(tmp_path / "no-model"), "--data",
              str(tmp_path / "no.jsonl"), "--num-generations", "1", "--out", str(tmp_path / "r")])
    _one_line_error(p, "train_rl.py: --num-generations 1: GRPO needs at least 2 completions per "
                       "video (Eq. 1's std)")
    p = _run(["eval.py", "--model", str(tmp_path / "no-model"), "--data",
              str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "p.jsonl"), "--sample",
              "--temperature", "0"])
    _one_line_error(p, f"eval.py: --temperature 0.0: {TEMP}")
    assert os.listdir(tmp_path) == []


def test_rerun_into_a_run_and_eval_onto_a_manifest_refused_byte_identical(tiny_world, tmp_path):
    w = tiny_world
    out = _fake_run(tmp_path / "run")
    before = _tree(out)
    p = _run(["train_sft.py", "--data", w["sft_train"], "--video-root", w["videos"], "--out",
              str(out)])
    _one_line_error(p, f"train_sft.py: --out {out} already holds a run (init, latest, log.jsonl, "
                       f"run_config.json, ...): pass --resume {out} to continue it, or --overwrite "
                       "to delete it and start afresh")
    assert _tree(out) == before
    manifest = tmp_path / "mine.jsonl"
    shutil.copy(w["sft_test"], manifest)
    data = manifest.read_bytes()
    p = _run(["eval.py", "--model", "toy", "--data", w["sft_test"], "--video-root", w["videos"],
              "--out", str(manifest), "--device", "cpu"])
    _one_line_error(p, f"{manifest}:1: not a predictions row (a JSON object with source, video, "
                       "output), so --out is not a predictions file to resume; it was left "
                       "untouched: pass a new --out")
    assert manifest.read_bytes() == data


def test_overwrite_starts_a_fresh_run_that_never_mixes_with_the_old(tiny_world, tmp_path):
    w = tiny_world
    out = _fake_run(tmp_path / "run", ["log.jsonl", "latest", "step-9/", "run_config.json"])
    train_sft.main(["--data", w["sft_train"], "--video-root", w["videos"], "--frames", "4",
                    "--max-steps", "1", "--batch-size", "2", "--grad-accum", "1", "--out",
                    str(out), "--device", "cpu", "--num-workers", "0", "--overwrite"])
    assert sorted(os.listdir(out)) == ["init", "latest", "log.jsonl", "run_config.json", "step-1"]
    assert [json.loads(x)["step"] for x in open(out / "log.jsonl")] == [1]
    assert (out / "latest").read_text().strip() == "step-1"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_resumes_a_killed_stage_and_overwrites_otherwise(tiny_world, tmp_path):
    """make toy: --resume for a stage with checkpoints and no `done` stamp, --overwrite for every
    other stage (new, stale or REDO=1), so no stage is refused and none mixes two runs."""
    run = tmp_path / "run"
    run.mkdir()
    _fake_run(run / "sft", ["latest", "step-2/", "log.jsonl"])  # killed: no done stamp

    def outs(*extra):
        p = subprocess.run(["make", "-n", "-B", "toy", f"RUN={run}", f"DATA={tiny_world['root']}",
                            *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        text = p.stdout.replace("\\\n", " ")
        return {st: text.split(f"--out {run}/{st} ")[1].split()[:2] for st in ("sft", "rl")}

    got = outs()
    assert got["rl"][0] == "--overwrite"  # rl: new
    assert got["sft"] == ["--resume", f"{run}/sft"]
    assert {st: v[0] for st, v in outs("REDO=1").items()} == dict.fromkeys(got, "--overwrite")


def test_device_rule_takes_the_gpu_named_and_one_per_rank(monkeypatch):
    """The one --device rule, on a machine made to look like it has 2 GPUs: cuda:N is that GPU
    (set as the current device, never the CPU), cuda is LOCAL_RANK's, a missing index is one
    line, and under torchrun one GPU for every rank is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    for name, local, want in (("cuda:1", 0, "cuda:1"), ("cuda", 1, "cuda:1"), ("cuda", 0, "cuda:0"),
                              (None, 0, "cuda:0"), ("cpu", 1, "cpu"), ("cpu:0", 0, "cpu")):
        assert vadr.resolve_device(name, local) == torch.device(want)
    with pytest.raises(vadr.InputError) as e:
        vadr.resolve_device("cuda:2")
    assert str(e.value) == ("--device cuda:2: this machine has 2 CUDA device(s), cuda:0 .. "
                            "cuda:1; pass one of them")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = vadr.setup_distributed("cuda:1")
    assert info["device"] == torch.device("cuda", 1) and current == [torch.device("cuda", 1)]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(vadr.InputError) as e:
        vadr.setup_distributed("cuda:0")
    assert str(e.value) == ("--device cuda:0 under torchrun: every rank would use that one GPU; "
                            "pass --device cuda (rank r takes cuda:LOCAL_RANK)")


@pytest.mark.skipif(torch.version.cuda is not None, reason="the CPU-only build's message")
def test_cuda_on_a_cpu_only_build_is_one_line_from_the_scripts(tmp_path):
    p = _run(["eval.py", "--model", "toy", "--data", str(tmp_path / "t.jsonl"), "--out",
              str(tmp_path / "p.jsonl"), "--device", "cuda"])
    _one_line_error(p, f"eval.py: --device cuda: no CUDA device is available (torch "
                       f"{torch.__version__} is a CPU-only build); pass --device cpu")
    p = _run(["train_rl.py", "--model", str(tmp_path), "--data", str(tmp_path / "t.jsonl"),
              "--out", str(tmp_path / "r"), "--device", "gpu"])
    _one_line_error(p, f"train_rl.py: --device gpu: {NOT_A_DEVICE}")
    assert os.listdir(tmp_path) == []


# ================================================================ --length-ranges-from (issue 36)

LENGTH_WHAT = ("pass the SFT manifest (Vad-Reasoning-SFT-train.jsonl), whose reasoning lengths "
               "give the ranges")


def test_length_ranges_from_a_file_that_is_not_an_sft_manifest_is_one_line(tiny_world, tmp_path):
    import data
    for path, why in ((tmp_path / "none.jsonl", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(vadr.InputError) as e:
            data.read_length_manifest(str(path))
        assert str(e.value) == f"--length-ranges-from {path} {why}; {LENGTH_WHAT}"
    with pytest.raises(vadr.InputError) as e:  # its ranges would be (0, 0): never paid
        data.read_length_manifest(tiny_world["rl"])
    assert str(e.value) == (f"--length-ranges-from {tiny_world['rl']}: its rows have no think "
                            f"text (an RL manifest?); {LENGTH_WHAT}")
    lines = open(tiny_world["sft_train"], encoding="utf-8").read().splitlines(keepends=True)
    normal = tmp_path / "normal.jsonl"
    normal.write_text("".join(x for x in lines if '"anomaly_type": "Normal"' in x))
    with pytest.raises(vadr.InputError) as e:
        data.read_length_manifest(str(normal))
    assert str(e.value) == (f"--length-ranges-from {normal}: no Abnormal row (the length reward "
                            f"needs a range for each); {LENGTH_WHAT}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(lines) + "{not json\n")
    with pytest.raises(data.ManifestError) as e:
        data.read_length_manifest(str(bad))
    assert str(e.value).splitlines() == [  # one problem: one line (data.ManifestError)
        f"{bad}:{len(lines) + 1}: bad-json: not valid JSON (Expecting property name enclosed in "
        "double quotes, column 2)"]
    assert len(data.read_length_manifest(str(bad), skip_bad=True)) == len(lines)


def test_length_ranges_from_a_manifest_with_a_bom_are_its_ranges(tiny_world, tmp_path):
    import data
    want = data.length_ranges(data.read_manifest(tiny_world["sft_train"], "sft", check_videos=False))
    assert min(lo for lo, _ in want.values()) > 0 and set(want) == {"Normal", "Abnormal"}
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + open(tiny_world["sft_train"], "rb").read())
    assert data.length_ranges(data.read_length_manifest(str(bom))) == want


def test_train_rl_refuses_the_rl_manifest_as_length_ranges_before_loading(tiny_world, tmp_path):
    (tmp_path / "m").mkdir()  # a --model directory that is never read
    p = _run(["train_rl.py", "--model", str(tmp_path / "m"), "--data", tiny_world["rl"],
              "--video-root", tiny_world["videos"], "--length-ranges-from", tiny_world["rl"],
              "--out", str(tmp_path / "r"), "--device", "cpu"])
    _one_line_error(p, f"--length-ranges-from {tiny_world['rl']}: its rows have no think text "
                       f"(an RL manifest?); {LENGTH_WHAT}")
    assert not (tmp_path / "r").exists()
