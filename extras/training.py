"""extras/training.py -- plumbing both training scripts share: flags, presets, DDP / FSDP2
wrapping, the optimizer and schedule, the data order of an epoch, and the end of a run.

Used by train_sft.py and train_rl.py; nothing here is part of the method itself.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

from extras import checkpoint
from vadr import (AUTHORS_INFER_PIXELS, AUTHORS_TRAIN_PIXELS, DEFAULT_MAX_PIXELS,
                  DEFAULT_MIN_PIXELS, FRAME_RULES, GRID_TIMES, barrier, gather_objects, is_main, shard_for_rank, unwrap)


# Video presets (docs/paper-vs-authors.md s.5): the paper where it speaks (16 uniform frames, max
# 128*28*28), the authors' training utilities where it is silent (their pixel band; the RL trainer's
# second_per_grid_ts of 1.0). The toy's 112x112 frames keep Qwen's own band (never binding there).
VIDEO_PAPER = dict(frames=16, min_pixels=AUTHORS_TRAIN_PIXELS[0], max_pixels=AUTHORS_TRAIN_PIXELS[1],
                   frame_rule="paper", grid_time="real")
VIDEO_TOY = dict(VIDEO_PAPER, min_pixels=DEFAULT_MIN_PIXELS, max_pixels=DEFAULT_MAX_PIXELS)
# The authors' inference script (s.5): 16 frames at linspace, 28*28 .. 128*28*28, real time.
VIDEO_AUTHORS_INFERENCE = dict(VIDEO_PAPER, min_pixels=AUTHORS_INFER_PIXELS[0],
                               max_pixels=AUTHORS_INFER_PIXELS[1])


def add_video_args(ap: argparse.ArgumentParser, defaults: dict | None = None):
    """The video flags; left None (filled by a preset) unless `defaults` are given."""
    d = defaults or {}
    g = ap.add_argument_group("video input (paper App. C.3; docs/paper-vs-authors.md s.5)")
    g.add_argument("--frames", type=int, default=d.get("frames"),
                   help="frames per video (paper: 16; the cap of --frame-rule authors)")
    g.add_argument("--frame-rule", default=d.get("frame_rule"), choices=FRAME_RULES,
                   help="paper: N uniform frames (repeats if fewer remain); authors: 2 fps in [4, N],"
                        " a short trim keeps its first even number of frames")
    g.add_argument("--max-pixels", type=int, default=d.get("max_pixels"),
                   help="max pixels per frame after smart_resize (paper: 128*28*28)")
    g.add_argument("--min-pixels", type=int, default=d.get("min_pixels"),
                   help="min pixels per frame (paper preset: the authors' 128*28*28)")
    g.add_argument("--grid-time", default=d.get("grid_time"), choices=GRID_TIMES,
                   help="second_per_grid_ts: real (from the frame rate) or one (1.0, the authors' RL)")
    return g


def add_run_args(ap: argparse.ArgumentParser, default_out: str):
    g = ap.add_argument_group("run, checkpoints, distributed")
    g.add_argument("--out", default=default_out, help="run directory: checkpoints, log.jsonl, run_config.json")
    g.add_argument("--save-every", type=int, default=None, help="checkpoint every N optimizer steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=2, help="keep only the newest N step checkpoints")
    g.add_argument("--resume", default=None, help="checkpoint or run directory to continue exactly")
    g.add_argument("--overwrite", action="store_true",
                   help="--out holds an earlier run: delete its checkpoints and log and start "
                        "afresh (without it, or --resume, such an --out is refused)")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 fully_shard (under torchrun); default DDP")
    g.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order, sampling")
    g.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (saves activation memory)")
    g.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=None,
                   help="train the language model only; --no-freeze-vision trains the vision "
                        "encoder too (default: the preset's)")
    return g


def apply_preset(args, preset: dict, name: str) -> list[str]:
    """Fill every flag the user left unset (None) from a preset; returns what was filled, so the
    scripts can print it. Paper defaults apply to real models; the toy preset scales them to a
    model 5000x smaller that must learn in minutes (values and reasons in the scripts)."""
    filled = []
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
            filled.append(f"{k}={v}")
    return filled


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    """AdamW over trainable parameters; no decay on biases and norms (the usual convention)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                              dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=betas)


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup then cosine decay to 0 (the authors' RL schedule)."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def linear_schedule(optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup then linear decay to 0: the library default the authors' SFT trainer used
    (with no warmup; docs/paper-vs-authors.md s.2)."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}


def epoch_order(n_rows: int, epoch: int, seed: int, global_batch: int, rank: int, world: int) -> list[int]:
    """This rank's row indices for one epoch, in micro-batch order. The epoch's permutation is the
    same on every rank (seeded by seed and epoch); global batch s = perm[s*GB:(s+1)*GB] and rank r
    takes its items r, r+W, ... (data strided by rank). Incomplete last global batch dropped."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_rows, generator=g).tolist()  # (n_rows,)
    order = []
    for s in range(n_rows // global_batch):
        order += shard_for_rank(perm[s * global_batch:(s + 1) * global_batch], rank, world)
    return order


def finish_run(args, model, dist_info: dict, step: int):
    """Print where the last checkpoint is, check the ranks agree (DDP) and leave the process group."""
    latest = checkpoint.latest_checkpoint(args.out)
    if is_main() and latest:
        print(f"done: {step} steps, checkpoint {latest}")
    if dist_info["distributed"]:
        write_rank_checksums(model, os.path.join(args.out, "rank_checksums.json"))
    barrier()
    if dist_info["distributed"]:
        torch.distributed.destroy_process_group()


def write_rank_checksums(model, path: str):
    """Every rank's float64 sum of its parameters, gathered into one JSON on rank 0: under DDP
    all ranks must hold identical weights (a cheap check that no rank drifted). Under FSDP each
    rank holds a different shard, so the sums differ by design."""
    s = sum(float(p.detach().to_local().double().sum()) if hasattr(p, "to_local") else float(p.detach().double().sum())
            for p in unwrap(model).parameters())
    sums = gather_objects(s)
    if is_main():
        with open(path, "w") as f:
            json.dump(sums, f)


def wrap_model(model, mode: str = "none", device=None, bf16: bool = False):
    """'none', 'ddp', or 'fsdp': FSDP2 fully_shard on every decoder layer and vision block, then the
    root, so the 7B trains full-parameter on 4 x 80 GB; with bf16, fp32 master weights, bf16
    compute and fp32 gradient reduction (MixedPrecisionPolicy)."""
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device is not None and device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        for layer in model.model.language_model.layers:
            fully_shard(layer, mp_policy=mp)
        for block in model.model.visual.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


def prepare_model(model, args, dist_info: dict):
    """Freeze / checkpoint / move / wrap, in the order FSDP2 needs (optimizer after wrapping)."""
    if getattr(args, "freeze_vision", False):
        model.model.visual.requires_grad_(False)
    if getattr(args, "grad_ckpt", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.to(dist_info["device"])
    mode = ("fsdp" if args.fsdp else "ddp") if dist_info["distributed"] else "none"
    if args.fsdp and not dist_info["distributed"]:
        print("--fsdp has no effect without torchrun: running one process")
    bf16 = dist_info["device"].type == "cuda"
    return wrap_model(model, mode, dist_info["device"], bf16=bf16), mode


# ---- run setup: where the loop starts ----

def start_state(resume_dir, model, optimizer, scheduler, rank: int, seed: int | None) -> dict:
    """Where the loop starts: a resumed run's step, epoch and position in the epoch (its RNG state
    restored by checkpoint.load_training_state); a fresh run starts at 0 with torch seeded by
    seed + rank (left as it is when seed is None: train_rl.py seeds its own generators)."""
    if resume_dir:
        st = checkpoint.load_training_state(resume_dir, model, optimizer, scheduler, rank)
        return dict(step=st["step"], epoch=st["epoch"], step_in_epoch=st["step_in_epoch"])
    if seed is not None:
        torch.manual_seed(seed + rank)
    return dict(step=0, epoch=0, step_in_epoch=0)


def plan_steps(args, n_rows: int, world: int, grad_accum: int = 1) -> tuple[int, int, int]:
    """-> (global batch, steps per epoch, total steps) for args.batch_size videos per rank and
    micro-batch (grad_accum micro-batches a step), the last incomplete global batch dropped,
    capped by --max-steps."""
    global_batch = args.batch_size * grad_accum * world
    steps_per_epoch = n_rows // global_batch
    if steps_per_epoch == 0:
        raise SystemExit(f"{args.data}: {n_rows} rows are fewer than one global batch "
                         f"of {global_batch}")
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    return global_batch, steps_per_epoch, total_steps


def rl_log_fields(out: dict, G: int) -> dict:
    """grpo.rl_step's result as log fields: mean reward and its within-group std, each reward
    part's mean, the completion length, the share of groups with zero std, lr, the timings, then
    the loss stats of the mu updates averaged."""
    R, parts, mask, zero_std, stats = (out[k] for k in ("R", "parts", "mask", "zero_std", "stats"))
    mean = lambda k: float(np.mean([p[k] for p in parts]))
    out = dict(reward=float(R.numpy().mean()),
               reward_std=float(R.view(-1, G).std(1, unbiased=False).mean()),
               reward_accuracy=mean("accuracy"), reward_format=mean("format"),
               reward_verification=mean("verification"), reward_length=mean("length"),
               **({"reward_spatial": mean("spatial")} if parts and "spatial" in parts[0] else {}),
               completion_length=float(mask.sum(1).float().mean()),
               zero_std_fraction=float(zero_std.float().mean()), lr=out["lr"], **out["timings"])
    out.update({k: float(np.mean([s[k] for s in stats])) for k in stats[0]})
    return out


def rl_postfix(rec: dict) -> dict:
    """train_rl.py's progress bar: R, every reward term (Table 7), the share of groups without
    signal (A = 0) and KL."""
    return dict(R=f"{rec['reward']:.3f}", acc=f"{rec['reward_accuracy']:.2f}",
                fmt=f"{rec['reward_format']:.2f}", ver=f"{rec['reward_verification']:+.2f}",
                len=f"{rec['reward_length']:.2f}", zero_var=f"{rec['zero_std_fraction']:.2f}",
                kl=f"{rec.get('kl', 0):.4f}")


def note_cache_workers(args):
    """train_sft.py: a note on stderr when --cache-videos would cache in DataLoader workers."""
    if is_main() and args.cache_videos and args.num_workers > 0:
        print(f"note: --cache-videos with --num-workers {args.num_workers}: a worker's cache dies "
              "with its epoch; use --num-workers 0", file=sys.stderr)
