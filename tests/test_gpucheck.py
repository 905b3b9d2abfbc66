"""extras/gpucheck.py (`make gpu-check`, issue 37 item 4) on CPU at toy-like widths: the make
target's command line runs end to end (RL step with LoRA, then the bench), and its figures are the
arithmetic they claim: MFU = update FLOPs / (update time x the given peak), the projection = step
time x videos / GPUs / 3600, the predicted peak = `train_rl.py --dry-run`'s for the same settings
(at the tiny config, and at the full 7B shape with the command the JSON records). Its bad flags:
tests/test_bad_input_flags.py."""
import json
import os
import re
import shlex
import subprocess

import pytest
import torch

import train_rl
from extras import bench, gpucheck, toymodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`make gpu-check` with the device and size overridden (--tiny): the target's own recipe."""
    out = tmp_path_factory.mktemp("gpucheck") / "out"
    p = subprocess.run(["make", "-s", "gpu-check", "GPU_DEVICE=cpu", f"GPU_OUT={out}",
                        "GPU_ARGS=--tiny --peak-tflops 2.5"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return dict(out=out, res=json.loads((out / "gpucheck.json").read_text()), stdout=p.stdout)


@pytest.fixture(scope="module")
def tok():
    return toymodel.train_toy_tokenizer(["x"])  # its special-token ids: the configs' sizes ignore it


def test_the_make_target_writes_every_figure(run):
    res, out = run["res"], run["out"]
    assert sorted(os.listdir(out)) == ["bench.json", "gpucheck.json", "gpucheck.md"]
    assert res["command"] == f"python -m extras.gpucheck --device cpu --out {out} --tiny --peak-tflops 2.5"
    assert res["errors"] == {} and res["device_type"] == "cpu" and res["card"] == "cpu"
    rl = res["rl_step"]
    for k in ("step_s", "time_generation", "time_verification", "time_reference", "time_update",
              "rollout_tokens_per_s", "update_flops"):
        assert rl[k] > 0, k
    # --tiny: G = 4 completions of 3 forced tokens, rank-4 adapters on the 7 projections of 1 layer
    # (h 256, kv 128, I 64): 4 x (512 + 384 + 384 + 512 + 320 + 320 + 320)
    assert (rl["G"], rl["new_tokens"], rl["rollout_tokens"], rl["lora_rank"]) == (4, 3, 12, 4)
    assert rl["adapter_params"] == 4 * 2752 and rl["optimizer"] == "AdamW" and rl["grad_ckpt"]
    assert rl["rollout_tokens_per_s"] == rl["rollout_tokens"] / rl["time_generation"]
    assert rl["memory"]["measured_bytes"] is None and rl["memory"]["ratio"] is None   # CPU
    assert rl["memory"]["dry_run_command"] is None                                    # --tiny
    b = res["bench"]
    assert set(b) == {"errors", "rollout_tokens_per_s", "scoring_time_s", "scoring_memory_ratio"}
    assert min(b["rollout_tokens_per_s"].values()) > 0 and min(b["scoring_time_s"].values()) > 0
    saved = json.loads((out / "bench.json").read_text())
    assert set(saved["sections"]) == {"rollout", "scoring"}
    assert b["rollout_tokens_per_s"]["ours"] == saved["sections"]["rollout"]["ours"]["tokens_per_s"]
    assert res["bench_command"].startswith("python -m extras.bench --device cpu --model qwen7b "
                                           "--sections rollout,scoring --repeats 1 --new-tokens 3 ")
    # the markdown table is the JSON's, and the stdout ends with it
    assert (out / "gpucheck.md").read_text() == res["table"] and res["table"] in run["stdout"]
    for row in ("| rollout tokens/s |", "| update MFU |", "| peak memory predicted (GiB) |",
                "| projected RL epoch (h) |", "| bench rollout tokens/s, ours / naive |"):
        assert row in res["table"], row


def test_mfu_and_projection_are_their_formulas(run, tok):
    res = run["res"]
    rl, p = res["rl_step"], res["projection"]
    assert res["peak_flops"] == 2.5e12
    assert res["mfu_update"] == pytest.approx(rl["update_flops"] / (rl["time_update"] * 2.5e12), rel=1e-12)
    assert p["hours"] == pytest.approx(rl["step_s"] * 6448 / 4 / 3600, rel=1e-12)
    assert (p["videos"], p["gpus"], p["paper_hours"], p["card"]) == (6448, 4, 26.0, "cpu")
    assert f"| update MFU | {100 * res['mfu_update']:.1f}% |" in res["table"]
    assert f"| projected RL epoch (h) | {p['hours']:.2f} |" in res["table"]
    # the update's FLOPs: vision once, the text forward twice, the adapters 6 per parameter-token
    cfg = bench.qwen7b_config(tok, gpucheck.TINY_TEXT, gpucheck.TINY_VISION)
    N, P, T, A = rl["G"], rl["prompt_tokens"], rl["new_tokens"], rl["adapter_params"]
    L = P + T
    fwd = bench.text_flops(cfg, N * L, N * L * (L + 1) / 2, N * (T + 1))
    assert rl["update_flops"] == pytest.approx(
        bench.vision_flops(cfg, rl["n_patches"]) + 2 * fwd + 6 * A * N * L, rel=1e-12)


def test_predicted_memory_is_train_rls_dry_run(run, tok, tmp_path, capsys):
    """The tiny run's prediction = `train_rl.py --dry-run` on its config (saved as a checkpoint
    directory), device cpu; and at the full 7B shape, gpucheck's default settings give the peak of
    the dry-run command it records, on tests/fixtures/qwen2.5-vl-7b."""
    res = run["res"]
    bench.qwen7b_config(tok, gpucheck.TINY_TEXT, gpucheck.TINY_VISION).save_pretrained(tmp_path / "tiny")
    a = gpucheck.parse_args(["--tiny", "--out", str(tmp_path / "o")])
    argv = gpucheck.dry_run_argv(a, gpucheck.rl_args(a, torch.device("cpu")))
    argv[argv.index("--model") + 1] = str(tmp_path / "tiny")
    est = train_rl.main(argv + ["--device", "cpu"])
    assert est["peak"] == res["rl_step"]["memory"]["predicted_bytes"] > 0
    assert est["shapes"] == res["rl_step"]["memory"]["predicted_shapes"]
    # the GPU day's defaults: 7B, LoRA 64, G 4, 768 tokens, 16 frames of the 360x640 clip, cuda
    a = gpucheck.parse_args(["--out", str(tmp_path / "o")])
    r = gpucheck.rl_args(a, torch.device("cuda"))
    r.grad_ckpt = True                                          # scale.grad_ckpt_default, real model
    ours = gpucheck.predicted_memory(bench.qwen7b_config(tok), r, "cuda", a.clip_size)
    cmd = "python train_rl.py " + " ".join(gpucheck.dry_run_argv(a, r))
    assert cmd == ("python train_rl.py --dry-run --model tests/fixtures/qwen2.5-vl-7b --lora-rank 64 "
                   "--num-generations 4 --max-new-tokens 768 --frames 16 --min-pixels 3136 "
                   "--max-pixels 100352 --dry-run-video-hw 360,640")
    theirs = train_rl.main([os.path.join(ROOT, x) if x.startswith("tests/") else x
                            for x in shlex.split(cmd)[2:]])
    assert theirs["peak"] == ours["peak"] and theirs["shapes"]["video_tokens"] == 960
    assert 20 * 2 ** 30 < ours["peak"] < 30 * 2 ** 30           # fits one 80 GB card with room


def test_the_make_target_is_the_gpu_command():
    p = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
    assert p.stdout.split() == ["python", "-m", "extras.gpucheck", "--device", "cuda", "--out",
                                "runs/gpu-check"]


def test_the_bench_is_skipped_when_the_rl_step_used_half_the_budget(tmp_path):
    res = gpucheck.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget-s", "0.01"])
    msg = res["errors"]["bench"]
    assert re.fullmatch(r"skipped: the RL step took \d+ s, over half of --budget-s 0\.01", msg), msg
    assert "bench" not in res and sorted(os.listdir(tmp_path)) == ["gpucheck.json", "gpucheck.md"]
    assert f"| bench: failed | - | {msg} |" in res["table"]
    assert res["peak_flops"] is None and res["mfu_update"] is None      # CPU, no --peak-tflops
    assert "| update MFU | - |" in res["table"] and res["projection"]["hours"] > 0
