"""extras/gpucheck.py -- one command for the first rented GPU (`make gpu-check`): how fast and how
large the real 7B shape runs on this card, and what one RL epoch would cost.

What. On one GPU, a randomly initialised model of the FULL-DEPTH Qwen2.5-VL-7B shape (extras/
bench.py's qwen7b_config / random_model: built on the meta device, materialised in bf16; no weights
needed), in two parts, each written to OUT/gpucheck.json and OUT/gpucheck.md as soon as it ends:

  1. ONE AVA-GRPO step (grpo.rl_step) as train_rl.py runs it for `--lora-rank 64`: LoRA adapters on
     the bf16 base (extras/lora.py; pi_ref = the policy with its adapters off, no second copy),
     the vision guard, gradient checkpointing (on for a real model), AdamW, extras/rollout.
     step_hooks with extras/fastpath.py's scorer, the paper preset's flags (cli.RL_PAPER, the ones
     bench.rl_step_args writes out). Settings: 16 frames of at most 128*28*28 pixels (a rendered
     360x640 clip -> 224x420 frames -> 960 video tokens; pixel band 56*56 .. 128*28*28, so the
     trimmed videos of Algorithm 1 get the same size), G = 4, completions forced to 768 tokens
     (ignore_eos, as bench: a random model stops at random places), the verification pass forced
     to 768 as well (its label stop is off with ignore_eos: an upper bound). A warm-up step of 4
     tokens runs first (kernels, AdamW's states), then the timed step.
  2. The benchmark, in this process: extras/bench.py's main with the sections rollout and scoring,
     one interleaved pair each, at the same settings (its full-parameter model and frozen copy:
     naive vs ours), its JSON kept as OUT/bench.json and its command line in the JSON's
     bench_command.

Figures (the table's rows; the JSON has each with its inputs):
  * rollout tokens/s: G x T completion tokens / the step's generation time (and bench's);
  * scoring time: the step's reference pass (no grad); update time: the policy's scoring
    forward + backward, clipping and AdamW;
  * update MFU = update FLOPs / (update time x the card's peak bf16 FLOP/s) (bench.peak_flops:
    H100/H200/A100 known; --peak-tflops overrides). Model FLOPs, counted with bench's counters:
    the vision tower forward once (frozen), the language model's forward over G rows of prompt +
    completion (logits for T + 1 positions) twice (forward, and backward to the inputs only: the
    frozen weights get no gradient), the adapters' 3 x 2 FLOPs per parameter per token; the
    recomputation of gradient checkpointing is not counted;
  * peak memory: torch.cuda.max_memory_allocated over the timed step, against scale.
    estimate_memory for a LoRA RL step on one GPU at these shapes (what `train_rl.py --dry-run`
    prints for the command in the JSON's memory.dry_run_command);
  * projected hours of one RL epoch: the timed step's wall time per video (1 video per step)
    x 6448 videos / 4 GPUs / 3600, i.e. 4 cards like this one, each running its own videos with
    LoRA, communication not counted; measured on the card named in the table. The paper: 26 hours
    on 4 A100s, full fine-tuning.

Budget: the whole `make gpu-check` must end within 8 minutes on one H100 (estimates, not
measured: no GPU has run this yet). Start, imports, the clip: ~30 s. Part 1: model ~15 s,
warm-up ~10 s, the timed step ~100 s (two sampling passes of 768 decode steps at ~50 ms each,
reference ~2 s, update ~5 s). Part 2: model + frozen copy ~20 s, rollout (4-token warm-ups, naive
and ours at 768) ~90 s, scoring (warm-ups + one pair) ~20 s. About 4.8 minutes; at twice the
decode estimate about 7.6. Should part 1 take over half of --budget-s (480 s), the bench is skipped
and the table says so. A part that runs out of memory is reported, and the other kept. On a CPU
only --tiny runs (the full shape would take hours).

Commands (from the repository root):
    make gpu-check                                    # = python -m extras.gpucheck --device cuda
    python -m extras.gpucheck --device cuda --out runs/gpu-check [--peak-tflops 989]
    python -m extras.gpucheck --device cpu --tiny --peak-tflops 1   # toy widths: tests/test_gpucheck.py
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch

import grpo
import rewards
import vadr
from extras import bench, fastpath, flagcheck, lora, rollout, scale, scoring, toymodel, training

SCRIPT = flagcheck.SCRIPTS["gpucheck"]
PAPER_RL_HOURS, PAPER_GPUS = 26.0, 4        # the paper's RL epoch: 26 hours on 4 A100s
OUT_FILES = ("gpucheck.json", "gpucheck.md", "bench.json")
# The paper's shapes (unset flags), and --tiny: toy-like widths that run on a CPU in seconds
# (tests/test_gpucheck.py); the depth, head_dim 128, mRoPE sections and 152,064 vocabulary of
# bench.qwen7b_config are kept where these do not override them.
PAPER = dict(num_generations=4, max_new_tokens=768, frames=16, lora_rank=64,
             clip_size=list(bench.VIDEO_SIZE), clip_frames=bench.VIDEO_FRAMES, score_tokens=768)
TINY = dict(PAPER, max_new_tokens=3, frames=4, lora_rank=4, clip_size=[56, 84], clip_frames=20,
            score_tokens=8)
TINY_TEXT = dict(num_hidden_layers=1, hidden_size=256, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=64, vocab_size=2048)
TINY_VISION = dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=32, out_hidden_size=256,
                   fullatt_block_indexes=[1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=SCRIPT, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if available)")
    ap.add_argument("--out", default="runs/gpu-check",
                    help="folder for gpucheck.json, gpucheck.md and bench.json (default runs/gpu-check)")
    ap.add_argument("--overwrite", action="store_true", help="replace those files if --out has them")
    ap.add_argument("--tiny", action="store_true",
                    help="toy-like widths and sizes for a CPU test (unset flags: extras/gpucheck.py TINY)")
    ap.add_argument("-G", "--num-generations", type=int, default=None, help="completions per video (paper: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="tokens per completion, forced (paper: 768)")
    ap.add_argument("--frames", type=int, default=None, help="frames sampled per video (paper: 16)")
    ap.add_argument("--min-pixels", type=int, default=vadr.DEFAULT_MIN_PIXELS,
                    help="min pixels per frame (default 56*56)")
    ap.add_argument("--max-pixels", type=int, default=vadr.DEFAULT_MAX_PIXELS,
                    help="max pixels per frame (paper: 128*28*28)")
    ap.add_argument("--lora-rank", type=int, default=None, help="LoRA rank of the RL step (default 64)")
    ap.add_argument("--clip-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="rendered clip's frame size (default 360 640 -> 960 video tokens)")
    ap.add_argument("--clip-frames", type=int, default=None, help="frames in the rendered clip (default 64)")
    ap.add_argument("--score-tokens", type=int, default=None,
                    help="bench's scoring-memory accounting: completion tokens per row (paper: 768)")
    ap.add_argument("--bench-sections", default="rollout,scoring",
                    help=f"bench sections to run after the RL step (of {','.join(bench.SECTIONS)}; "
                         "'none' skips the bench)")
    ap.add_argument("--bench-repeats", type=int, default=1, help="bench's interleaved pairs per section")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak bf16 TFLOP/s of the card for MFU (default: known for H100/H200/A100)")
    ap.add_argument("--project-videos", type=int, default=6448,
                    help="videos in the RL epoch the projection is for (paper: 6448)")
    ap.add_argument("--project-gpus", type=int, default=4, help="GPUs the projection assumes (paper: 4)")
    ap.add_argument("--budget-s", type=float, default=480,
                    help="wall-clock plan in seconds (8 minutes): the bench is skipped, and says so, "
                         "when the RL step has used more than half of it")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model, the clip and the sampling")
    a = ap.parse_args(argv)
    for k, v in (TINY if a.tiny else PAPER).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def check_args(a):
    """Every flag and --out, before anything heavy (vadr.InputError, one line)."""
    if a.lora_rank < 1:  # flagcheck's rule would say "leave it out for full fine-tuning"
        raise vadr.InputError(f"{SCRIPT}: --lora-rank {a.lora_rank}: the RL step's LoRA rank is at "
                              "least 1 (default 64)")
    flagcheck.check_flags(a, "gpucheck")
    if vadr.resolve_device(a.device).type == "cpu" and not a.tiny:
        raise vadr.InputError(f"{SCRIPT}: --device cpu with the full 7B shape would take hours and "
                              "about 40 GB: pass --tiny for the CPU check, or run on a GPU")
    if min(a.clip_size) < 1:
        raise vadr.InputError(f"{SCRIPT}: --clip-size {a.clip_size[0]} {a.clip_size[1]}: a frame "
                              "is at least 1 x 1 pixels")
    names = [s.strip() for s in a.bench_sections.split(",") if s.strip()]
    if names == ["none"]:
        names = []
    bad = [s for s in names if s not in bench.SECTIONS]
    if bad or (not names and a.bench_sections.strip() != "none"):
        raise vadr.InputError(f"{SCRIPT}: --bench-sections {a.bench_sections}: pass a comma-"
                              f"separated subset of {','.join(bench.SECTIONS)}, or none")
    a.bench_list = names
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise vadr.InputError(f"{SCRIPT}: --out {a.out} is a file, not a folder; pass another --out")
    scoring.check_writable(a.out, "--out", SCRIPT, is_dir=True)
    found = [n for n in OUT_FILES if os.path.exists(os.path.join(a.out, n))]
    if found and not a.overwrite:
        raise vadr.InputError(f"{SCRIPT}: --out {a.out} already holds {', '.join(found)}: pass "
                              "--overwrite to replace them (make gpu-check GPU_ARGS=--overwrite), "
                              "or another --out")


# ---- part 1: one AVA-GRPO step of the 7B shape with LoRA on one GPU -----------------------------

def rl_args(a, device) -> argparse.Namespace:
    """train_rl.py's flags for `--lora-rank R` at these settings: bench.rl_step_args (the paper
    preset and train_rl.py's defaults) + the LoRA and video flags. grad_ckpt is set by the caller
    (scale.grad_ckpt_default, as scale.load_policy does)."""
    r = bench.rl_step_args(a.out)
    r.num_generations, r.max_new_tokens, r.frames, r.seed = (a.num_generations, a.max_new_tokens,
                                                             a.frames, a.seed)
    r.min_pixels, r.max_pixels = a.min_pixels, a.max_pixels
    r.lora_rank, r.lora_alpha, r.lora_dropout = a.lora_rank, None, 0.0
    r.lora_targets, r.lora_base_dtype, r.lora_train_embeddings = ",".join(lora.LORA_TARGETS), "auto", False
    r.fsdp, r.grad_ckpt, r.no_grad_ckpt, r.device = False, False, False, str(device)
    return r


def dry_run_argv(a, r) -> list[str]:
    """The `train_rl.py --dry-run` flags whose estimate predicted_memory computes (for the full
    7B shape: tests/fixtures/qwen2.5-vl-7b holds its config.json)."""
    return ["--dry-run", "--model", "tests/fixtures/qwen2.5-vl-7b", "--lora-rank", str(r.lora_rank),
            "--num-generations", str(r.num_generations), "--max-new-tokens", str(r.max_new_tokens),
            "--frames", str(r.frames), "--min-pixels", str(r.min_pixels), "--max-pixels",
            str(r.max_pixels), "--dry-run-video-hw", f"{a.clip_size[0]},{a.clip_size[1]}"]


def predicted_memory(config, r, device_type: str, frame_hw) -> dict:
    """scale.estimate_memory for this LoRA RL step on one GPU (as train_rl.py --dry-run)."""
    return scale.estimate_memory(config, r, "rl", world=1, device_type=device_type,
                                 frame_hw=tuple(frame_hw))


def update_flops(config, n_patches: int, P: int, N: int, T: int, adapter_params: int) -> float:
    """Model FLOPs of the LoRA update over N rows of a P-token prompt + T completion tokens (the
    docstring's count; bench's text_flops / vision_flops)."""
    L = P + T
    fwd = bench.text_flops(config, N * L, N * L * (L + 1) / 2, N * (T + 1))
    return bench.vision_flops(config, n_patches) + 2 * fwd + 3 * 2 * adapter_params * N * L


def _synced(score, device):
    """The scorer, followed by a device sync: rl_step's timers read the host clock, so without it
    the reference pass's queued kernels would be timed as part of the update."""
    def run(*args, **kw):
        out = score(*args, **kw)
        bench._sync(device)
        return out
    return run


def run_rl_step(a, dev, clip: dict, tok) -> dict:
    r = rl_args(a, dev)
    cfg = bench.qwen7b_config(tok, TINY_TEXT if a.tiny else None, TINY_VISION if a.tiny else None)
    t0 = time.perf_counter()
    model = bench.random_model(cfg, tok, dev, lora.base_dtype(r, dev.type), a.seed)
    # what scale.load_policy, lora.make_reference_model and training.prepare_model do for it
    lora.apply_lora(model, r.lora_rank, r.lora_alpha, r.lora_dropout, r.lora_targets.split(","),
                    seed=r.seed)
    scale.install_vision_guard(model)
    r.grad_ckpt = scale.grad_ckpt_default(r, model.config)
    info = dict(device=dev, distributed=False, rank=0, world_size=1)
    ref = lora.make_reference_model(model, r, resume=False, dist_info=info)      # None: adapters off
    model, mode = training.prepare_model(model, r, info)
    opt = training.make_optimizer(model, r.lr, r.weight_decay)
    sched = training.cosine_schedule(opt, 2, 0)
    prompt = vadr.build_prompt(r.prompt_variant)
    video = vadr.encode_video(clip["path"], **vadr.video_args(r))             # as data.RLDataset
    batch = dict(bench.prompt_batch(tok, [video], prompt, dev),
                 rows=[dict(video_path=clip["path"], solution="Abnormal")])
    run = grpo.RLState(model, ref, tok, opt, sched, dict(rewards.DEFAULT_LENGTH_RANGES), prompt)
    score = _synced(fastpath.completion_logprobs, dev)
    hooks = dataclasses.replace(rollout.step_hooks(r, tok, mode, score), ignore_eos=True)
    setup_s = time.perf_counter() - t0
    T = r.max_new_tokens
    r.max_new_tokens = min(4, T)                                                  # the warm-up
    grpo.rl_step(run, batch, r, 0, hooks)
    r.max_new_tokens = T
    bench._sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    out = grpo.rl_step(run, batch, r, 1, hooks)
    bench._sync(dev)
    step_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    t = out["timings"]
    grid = video["video_grid_thw"][0].tolist()
    n_patches, P, G = math.prod(grid), int(batch["input_ids"].shape[1]), r.num_generations
    adapters = sum(p.numel() for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B")))
    tokens = int(out["mask"].sum())
    est = predicted_memory(cfg, r, dev.type, a.clip_size)
    res = dict(setup_s=setup_s, step_s=step_s, videos=1, G=G, new_tokens=T, prompt_tokens=P,
               video_tokens=vadr.video_token_count(video["video_grid_thw"]), n_patches=n_patches,
               frame_hw=[grid[1] * 14, grid[2] * 14], grad_ckpt=r.grad_ckpt, lora_rank=r.lora_rank,
               adapter_params=adapters, params=sum(p.numel() for p in model.parameters()) - adapters,
               optimizer=type(opt).__name__, rollout_tokens=tokens,
               rollout_tokens_per_s=tokens / t["time_generation"],
               **{k: t[k] for k in ("time_generation", "time_verification", "time_reference",
                                    "time_update")},
               update_flops=update_flops(cfg, n_patches, P, G, T, adapters), loss=out["stats"][0]["loss"])
    res["memory"] = dict(measured_bytes=peak, predicted_bytes=est["peak"],
                         ratio=peak / est["peak"] if peak is not None else None,
                         predicted_phase=est["peak_phase"],
                         predicted_parts={k: est[k] for k in ("weights", "gradients", "optimizer",
                                                              "reference", "kv_cache",
                                                              "compute_copies", "activations")},
                         predicted_shapes=est["shapes"],
                         # --tiny's config is no checkpoint's: the same estimate, no such command
                         dry_run_command=None if a.tiny else "python train_rl.py " + " ".join(dry_run_argv(a, r)))
    del model, run, opt, sched, hooks, batch
    return res


# ---- part 2: the benchmark ----------------------------------------------------------------------

def bench_argv(a, dev) -> list[str]:
    argv = ["--device", str(dev), "--model", "qwen7b", "--sections", ",".join(a.bench_list),
            "--repeats", str(a.bench_repeats), "--new-tokens", str(a.max_new_tokens),
            "-G", str(a.num_generations), "--frames", str(a.frames), "--max-pixels", str(a.max_pixels),
            "--clip-size", str(a.clip_size[0]), str(a.clip_size[1]), "--clip-frames", str(a.clip_frames),
            "--score-tokens", str(a.score_tokens), "--seed", str(a.seed),
            "--json", os.path.join(a.out, "bench.json")]
    if a.peak_tflops:
        argv += ["--peak-tflops", repr(a.peak_tflops)]
    if a.tiny:
        argv += ["--qwen7b-text", json.dumps(TINY_TEXT), "--qwen7b-vision", json.dumps(TINY_VISION)]
    return argv


def bench_summary(b: dict) -> dict:
    """The bench's figures this table shows (ours and naive), from bench.main's result."""
    s, out = b["sections"], dict(errors=b.get("errors", {}))
    if "rollout" in s:
        out["rollout_tokens_per_s"] = {k: s["rollout"][k]["tokens_per_s"] for k in ("ours", "naive")}
    if "scoring" in s:
        out["scoring_time_s"] = {k: s["scoring"][k]["time"] for k in ("ours", "naive")}
        out["scoring_memory_ratio"] = s["scoring"]["memory_ratio_policy"]
    return out


# ---- the figures and the table ------------------------------------------------------------------

def figures(res: dict, a) -> dict:
    """MFU of the update and the epoch projection, from part 1's measurements."""
    rl, pf = res["rl_step"], res["peak_flops"]
    per_video = rl["step_s"] / rl["videos"]
    return dict(
        mfu_update=rl["update_flops"] / (rl["time_update"] * pf) if pf else None,
        projection=dict(per_video_s=per_video, videos=a.project_videos, gpus=a.project_gpus,
                        hours=per_video * a.project_videos / a.project_gpus / 3600,
                        paper_hours=PAPER_RL_HOURS, target_hours=PAPER_RL_HOURS / 3,
                        card=res["card"],
                        formula=f"step time per video x {a.project_videos} / {a.project_gpus} GPUs "
                                "/ 3600 (each GPU as this one, its own videos, no communication)"))


def table(res: dict) -> str:
    g = lambda b: "-" if b is None else f"{b / 2 ** 30:.2f}"
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"
    rl, m, p = res.get("rl_step"), None, res.get("projection")
    rows = [("card", res["card"], res["device"])]
    if rl:
        m = rl["memory"]
        rows += [
            ("RL step (1 video, LoRA rank %d, %s)" % (rl["lora_rank"], rl["optimizer"]),
             f"{rl['step_s']:.1f} s", f"G={rl['G']} x {rl['new_tokens']} tokens forced, "
             f"{rl['video_tokens']} video + {rl['prompt_tokens'] - rl['video_tokens']} text prompt tokens"),
            ("rollout tokens/s", f(rl["rollout_tokens_per_s"], 1),
             f"{rl['rollout_tokens']} tokens / generation {rl['time_generation']:.2f} s"),
            ("verification time", f"{rl['time_verification']:.2f} s", "G trimmed videos, forced length"),
            ("scoring time (reference pass)", f"{rl['time_reference']:.2f} s", "no grad, adapters off"),
            ("update time", f"{rl['time_update']:.2f} s", "policy scoring fwd+bwd, clip, AdamW"),
            ("update MFU", "-" if res["mfu_update"] is None else f"{100 * res['mfu_update']:.1f}%",
             f"{rl['update_flops']:.3g} FLOPs / (update time x {f(res['peak_flops'] and res['peak_flops'] / 1e12, 0)} "
             "TFLOP/s peak bf16)"),
            ("peak memory measured (GiB)", g(m["measured_bytes"]),
             "torch.cuda.max_memory_allocated over the step" if m["measured_bytes"] is not None
             else "not measured on CPU"),
            ("peak memory predicted (GiB)", g(m["predicted_bytes"]),
             f"scale.estimate_memory ({m['predicted_phase']} phase), as "
             + (f"`{m['dry_run_command']}`" if m["dry_run_command"] else "for the --tiny config")),
            ("measured / predicted", f(m["ratio"]), ""),
            ("projected RL epoch (h)", f(p["hours"]),
             f"{p['per_video_s']:.1f} s/video x {p['videos']} / {p['gpus']} GPUs / 3600, measured on "
             f"{p['card']}; paper: {p['paper_hours']:.0f} h on 4 A100 (target <= {p['target_hours']:.2f} h)"),
        ]
    b = res.get("bench")
    if b:
        if "rollout_tokens_per_s" in b:
            r = b["rollout_tokens_per_s"]
            rows.append(("bench rollout tokens/s, ours / naive", f"{r['ours']:.1f} / {r['naive']:.1f}",
                         "full-parameter model, grpo.sample_group vs HF generate"))
        if "scoring_time_s" in b:
            r = b["scoring_time_s"]
            rows.append(("bench scoring time ref+policy, ours / naive (s)", f"{r['ours']:.2f} / {r['naive']:.2f}",
                         f"policy scoring memory ratio {b['scoring_memory_ratio']:.3f}"))
    for part, err in res.get("errors", {}).items():
        rows.append((f"{part}: failed", "-", err))
    lines = [f"# gpu-check: {res['card']}", "", "| figure | value | how |", "| --- | --- | --- |"]
    lines += [f"| {x} | {y} | {z} |" for x, y, z in rows]
    return "\n".join(lines) + "\n"


def write(res: dict, out: str):
    res["table"] = table(res)
    with open(os.path.join(out, "gpucheck.json"), "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    with open(os.path.join(out, "gpucheck.md"), "w") as fh:
        fh.write(res["table"])


def main(argv=None) -> dict:
    a = parse_args(argv)
    check_args(a)
    dev = vadr.resolve_device(a.device)
    t_start = time.perf_counter()
    os.makedirs(a.out, exist_ok=True)
    for name in OUT_FILES:  # --overwrite: a stale file of an earlier run never stands beside these
        if os.path.exists(os.path.join(a.out, name)):
            os.remove(os.path.join(a.out, name))
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    res = dict(device=str(dev), device_type=dev.type, card=card, torch=torch.__version__,
               command=" ".join([SCRIPT] + (argv if argv is not None else sys.argv[1:])),
               settings={k: getattr(a, k) for k in ("tiny", "num_generations", "max_new_tokens",
                                                     "frames", "min_pixels", "max_pixels", "lora_rank",
                                                     "clip_size", "clip_frames", "seed")},
               peak_flops=bench.peak_flops(dev, a.peak_tflops), errors={})
    tmp = tempfile.mkdtemp(prefix="vadr_gpucheck_")
    try:
        clip = bench.make_clip(tmp, a.seed, tuple(a.clip_size), a.clip_frames)
        tok = toymodel.train_toy_tokenizer([clip["target"]])
        tok.padding_side = "left"
        try:
            res["rl_step"] = run_rl_step(a, dev, clip, tok)
            res.update(figures(res, a))
        except torch.cuda.OutOfMemoryError as e:          # reported; the bench still runs
            res["errors"]["rl_step"] = f"out of memory: {str(e)[:200]}"
        print(f"[gpucheck] RL step done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr,
              flush=True)
        res["total_s"] = time.perf_counter() - t_start
        write(res, a.out)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        half = a.budget_s / 2  # the bench's two models and sampling passes cost about part 1's
        if a.bench_list and res["total_s"] > half:
            res["errors"]["bench"] = (f"skipped: the RL step took {res['total_s']:.0f} s, over half "
                                      f"of --budget-s {a.budget_s:g}")
        elif a.bench_list:
            argv_b = bench_argv(a, dev)
            res["bench_command"] = "python -m extras.bench " + " ".join(argv_b)
            try:
                res["bench"] = bench_summary(bench.main(argv_b))
                res["errors"].update({f"bench {k}": v for k, v in res["bench"]["errors"].items()})
            except torch.cuda.OutOfMemoryError as e:      # its model did not fit: part 1 stands
                res["errors"]["bench"] = f"out of memory: {str(e)[:200]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["total_s"] = time.perf_counter() - t_start
    write(res, a.out)
    print(res["table"])
    print(f"[gpucheck] {a.out}/gpucheck.json, gpucheck.md in {res['total_s']:.0f} s", file=sys.stderr)
    return res


if __name__ == "__main__":
    vadr.run_main(main)
