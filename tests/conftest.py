"""Shared fixtures: a tiny toy world (a few short videos) and the toy model built on its text."""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from extras import toy, toymodel  # noqa: E402
import vadr  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """8 SFT-train, 4 SFT-test, 8 RL and 8 caption videos of 16-24 frames: enough for every script."""
    d = tmp_path_factory.mktemp("tiny_world")
    paths = toy.generate_toy_world(str(d), seed=1, n_sft=8, n_test=4, n_rl=8, n_caption=8, frames=(16, 24),
                                   quiet=True)
    return dict(paths, root=str(d))


@pytest.fixture(scope="session")
def tiny_model(tiny_world):
    """The toy preset with its tokenizer trained on the tiny world's SFT and caption text (seed 0)."""
    return toymodel.load_model("toy", corpus=toy.toy_corpus(tiny_world["root"]), seed=0)


def run_script(script, args, out, nproc=1, wait=True):
    """Run train_sft.py / train_rl.py on CPU into `out`: torchrun with gloo when nproc > 1; wait=False
    returns the Popen, for the kill-and-resume tests. One process that waits runs the script's
    main(argv) in this process through vadr.run_main, as `python script ...` does, with one torch
    thread like the subprocesses (OMP_NUM_THREADS=1, so its numbers equal theirs bit for bit) and its
    stdout/stderr captured: the same run without 6 s of interpreter and import start-up."""
    argv = list(args) + ["--out", str(out), "--device", "cpu", "--num-workers", "0"]
    if nproc == 1 and wait:
        return _run_in_process(script, argv)
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] if nproc > 1 else []) \
        + [script] + argv
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _run_in_process(script, argv):
    import contextlib
    import importlib
    import io
    import types

    import torch
    mod = importlib.import_module(script[:-len(".py")])
    threads, cwd = torch.get_num_threads(), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    torch.set_num_threads(1)
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = vadr.run_main(mod.main, argv) or 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    p = types.SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def kill_when_saved(p, ckpt_dir, timeout=300):
    """SIGKILL the running process `p` as soon as the checkpoint `ckpt_dir` is complete."""
    deadline = time.time() + timeout
    while not os.path.isfile(os.path.join(ckpt_dir, "training_state.pt")):
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()


def saved_weights(path):
    """The weights of a checkpoint (or of a run directory's `latest`) as the model sees them: through
    from_pretrained, because transformers may write a checkpoint's key names in the old or the new
    Qwen2.5-VL layout (one process vs a wrapped model)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    path = str(path)
    if os.path.isfile(os.path.join(path, "latest")):
        path = os.path.join(path, open(os.path.join(path, "latest")).read().strip())
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).state_dict()
