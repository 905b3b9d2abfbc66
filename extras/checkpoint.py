"""extras/checkpoint.py -- checkpoints that resume a run exactly, and the JSONL training log.

Not part of the method (the paper says nothing about checkpoints); what makes a run killed at
any moment continue as if it had never stopped. A checkpoint is a Hugging Face directory
(config.json, model*.safetensors, tokenizer files, generation_config.json) that from_pretrained
and AutoTokenizer load as they are, plus

  * training_state.pt: optimizer, scheduler, step and data position, every rank's RNG streams,
    the resolved config;
  * run_config.json: the same config, readable.

It is written into a temporary directory and renamed into place, so a crash mid-save never
leaves half a checkpoint; the run directory's `latest` file names the newest complete one.
A LoRA run writes its adapters instead of the full weights (extras/lora.py save_lora_checkpoint,
through write_checkpoint below); the training scripts choose which writer they use.

Exercised by:
    python train_sft.py --save-every 50 --keep-last 2 --out runs/toy/sft
    python train_sft.py --resume runs/toy/sft        # a run directory (its `latest`) or a step-N
    python train_rl.py --resume runs/toy/rl
    pytest tests/test_sft.py -k resume; pytest tests/test_rl.py -k resume
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch

from vadr import (barrier, gather_objects, is_main, latest_checkpoint, unwrap,
                  world_size)


# ---- RNG streams ---------------------------------------------------------------------------------

def rng_state() -> dict:
    st = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---- writing -------------------------------------------------------------------------------------

def save_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None, scheduler=None,
                    train_state: dict | None = None, config: dict | None = None,
                    max_shard_size: str = "5GB", keep_last: int | None = None) -> str | None:
    """Write out_dir/name with the model's FULL weights, atomically. Collective under
    torch.distributed (call on every rank); only rank 0 writes. Returns the final path on rank 0."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in our logs
    sd = full_state_dict(model)        # collective under FSDP

    def write_weights(tmp):
        unwrap(model).save_pretrained(tmp, state_dict=sd, safe_serialization=True,
                                      max_shard_size=max_shard_size)

    return write_checkpoint(out_dir, name, write_weights, model, tokenizer, optimizer, scheduler,
                            train_state, config, keep_last)


def write_checkpoint(out_dir: str, name: str, write_weights, model, tokenizer, optimizer,
                     scheduler, train_state, config, keep_last) -> str | None:
    """What every checkpoint shares, whatever its weights: gather the optimizer state and every
    rank's RNG streams (collectives), then on rank 0 write the weights (write_weights(tmp_dir)),
    tokenizer, training_state.pt and run_config.json into a temporary directory, rename it into
    place, point `latest` at it and prune old step-N directories."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opt_sd = None
    if optimizer is not None:
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        opt_sd = get_optimizer_state_dict(unwrap(model), optimizer, options=opts)
    rngs = gather_objects(rng_state())  # one per rank: each rank resumes its own streams
    final = os.path.join(out_dir, name)
    if is_main():
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_weights(tmp)
        tokenizer.save_pretrained(tmp)
        state = dict(train_state or {}, rng=rngs, config=config or {}, optimizer=opt_sd,
                     scheduler=scheduler.state_dict() if scheduler else None)
        torch.save(state, os.path.join(tmp, "training_state.pt"))
        with open(os.path.join(tmp, "run_config.json"), "w") as f:
            json.dump(config or {}, f, indent=1, default=str)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one file system
        atomic_write(os.path.join(out_dir, "latest"), name)
        if keep_last:
            _prune_checkpoints(out_dir, keep_last, protect=name)
    barrier()
    return final if is_main() else None


def atomic_write(path: str, text: str):
    """Replace a small text file in one step: a reader sees the old text or the new, never half."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _step_dirs(run_dir: str) -> list[str]:
    """The step-N subdirectories of run_dir, oldest first."""
    steps = [d for d in os.listdir(run_dir) if re.fullmatch(r"step-\d+", d)]
    return sorted(steps, key=lambda d: int(d.split("-")[1]))


def _prune_checkpoints(out_dir: str, keep_last: int, protect: str):
    for d in _step_dirs(out_dir)[:-keep_last]:
        if d != protect:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)


def save_if_due(args, *, save, step: int, total_steps: int, epoch: int, step_in_epoch: int,
                steps_per_epoch: int, model, tokenizer, optimizer, scheduler,
                config: dict) -> bool:
    """After optimizer step `step` (which used batch `step_in_epoch` of `epoch`): checkpoint every
    --save-every steps and at the last step, with `save` (save_checkpoint, or
    lora.save_lora_checkpoint for a LoRA run: the script's choice), into --out as step-N, keeping
    the --keep-last newest. The checkpoint records where the data order resumes: the next batch
    of this epoch, or the start of the next. Returns True at the last step."""
    last = step >= total_steps
    if last or (args.save_every and step % args.save_every == 0):
        if step_in_epoch + 1 < steps_per_epoch:
            nxt = dict(epoch=epoch, step_in_epoch=step_in_epoch + 1)
        else:
            nxt = dict(epoch=epoch + 1, step_in_epoch=0)
        save(args.out, f"step-{step}", model, tokenizer, optimizer, scheduler,
             dict(step=step, **nxt), config, keep_last=args.keep_last)
    return last


def save_run_config(out_dir: str, config: dict):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "run_config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)


# ---- resuming ------------------------------------------------------------------------------------

def resolve_resume(path: str) -> str:
    """--resume accepts a checkpoint directory or a run directory (then its `latest`)."""
    if os.path.isfile(os.path.join(path, "training_state.pt")):
        return path
    latest = latest_checkpoint(path)
    if latest:
        return latest
    # no `latest` (e.g. deleted by an interrupted make): the newest complete step-N checkpoint
    complete = [d for d in (_step_dirs(path) if os.path.isdir(path) else [])
                if os.path.isfile(os.path.join(path, d, "training_state.pt"))]
    if complete:
        return os.path.join(path, complete[-1])
    raise FileNotFoundError(f"--resume {path}: no training_state.pt, no 'latest' file and no "
                            "step-N checkpoint there")


def load_training_state(ckpt_dir: str, model, optimizer=None, scheduler=None,
                        rank: int = 0) -> dict:
    """Restore optimizer, scheduler and this rank's RNG streams from a checkpoint whose weights
    were already loaded into `model` (before wrapping). Returns the saved state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(os.path.join(ckpt_dir, "training_state.pt"), map_location="cpu",
                       weights_only=False)
    if optimizer is not None and state.get("optimizer") is not None:
        set_optimizer_state_dict(unwrap(model), optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if len(rngs) != world_size():
        raise RuntimeError(f"{ckpt_dir} was saved by {len(rngs)} ranks; resuming on "
                           f"{world_size()} would not continue the same run exactly")
    set_rng_state(rngs[rank])
    return state


# ---- the JSONL log -------------------------------------------------------------------------------

def log_jsonl(path: str, record: dict):
    """Append one record (one line) and flush, so a killed run keeps every finished step."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def start_log(out_dir: str, config: dict, resume_step: int | None) -> str:
    """Rank 0: write run_config.json and prepare out_dir/log.jsonl (on resume, drop the lines of
    steps after the checkpoint; a fresh run starts a new log). Returns the log's path."""
    log_path = os.path.join(out_dir, "log.jsonl")
    if is_main():
        save_run_config(out_dir, config)
        if resume_step is not None:
            truncate_jsonl(log_path, resume_step)
        elif os.path.exists(log_path):
            os.remove(log_path)
    return log_path


def truncate_jsonl(path: str, max_step: int):
    """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
    if not os.path.isfile(path):
        return
    keep = [ln for ln in open(path) if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
    atomic_write(path, "".join(keep))


def full_state_dict(model) -> dict:
    """The full (unsharded) model state dict on CPU. Under FSDP2 this is a collective: every rank
    must call it; rank 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(unwrap(model),
                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def saved_config(ckpt_dir: str) -> dict:
    """The resolved config a checkpoint was saved with (training_state.pt)."""
    return torch.load(os.path.join(ckpt_dir, "training_state.pt"), map_location="cpu",
                      weights_only=False)["config"]
