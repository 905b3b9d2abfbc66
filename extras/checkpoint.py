"""extras/checkpoint.py -- moved from vadr.py (to be cleaned)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vadr import (barrier, full_state_dict, gather_objects, is_main, unwrap, world_size)
from extras import lora

# ------------------------------------------------------------------------------------------------
# 8. Checkpoints with exact resume, and the JSONL log
# ------------------------------------------------------------------------------------------------
# A checkpoint is a Hugging Face directory (config.json, model*.safetensors, tokenizer files,
# generation_config.json) that from_pretrained / AutoTokenizer load, plus training_state.pt
# (optimizer, scheduler, step, data position, every rank's RNG states, resolved config) and
# run_config.json. It is written to a temporary directory and renamed into place, so a crash
# mid-save never leaves a half checkpoint; `latest` names the newest complete one.

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


def save_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None, scheduler=None,
                    train_state: dict | None = None, config: dict | None = None,
                    max_shard_size: str = "5GB", keep_last: int | None = None) -> str | None:
    """Write out_dir/name atomically. Collective under torch.distributed (call on every rank);
    only rank 0 writes. Returns the final path on rank 0."""
    if lora.lora_config(model) is not None:  # section 10: a LoRA run's checkpoint holds its adapters alone
        return lora.save_lora_checkpoint(out_dir, name, model, tokenizer, optimizer, scheduler, train_state,
                                    config, keep_last)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in our logs
    sd = full_state_dict(model)        # collective under FSDP
    write = lambda tmp: unwrap(model).save_pretrained(tmp, state_dict=sd, safe_serialization=True,
                                                      max_shard_size=max_shard_size)
    return _write_checkpoint(out_dir, name, write, model, tokenizer, optimizer, scheduler, train_state,
                             config, keep_last)


def _write_checkpoint(out_dir: str, name: str, write_weights, model, tokenizer, optimizer, scheduler,
                      train_state, config, keep_last) -> str | None:
    """The part every checkpoint shares: gather the optimizer state and every rank's RNG streams
    (collectives), then on rank 0 write weights (write_weights(tmp_dir)), tokenizer,
    training_state.pt and run_config.json into a temporary directory, rename it into place, point
    `latest` at it and prune old step-N directories."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opt_sd = None
    if optimizer is not None:
        opt_sd = get_optimizer_state_dict(unwrap(model), optimizer,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = gather_objects(rng_state())  # one per rank: each rank resumes its own streams
    final = os.path.join(out_dir, name)
    if is_main():
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_weights(tmp)
        tokenizer.save_pretrained(tmp)
        state = dict(train_state or {}, rng=rngs, config=config or {},
                     optimizer=opt_sd, scheduler=scheduler.state_dict() if scheduler else None)
        torch.save(state, os.path.join(tmp, "training_state.pt"))
        with open(os.path.join(tmp, "run_config.json"), "w") as f:
            json.dump(config or {}, f, indent=1, default=str)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one file system
        _atomic_write(os.path.join(out_dir, "latest"), name)
        if keep_last:
            _prune_checkpoints(out_dir, keep_last, protect=name)
    barrier()
    return final if is_main() else None


def _atomic_write(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune_checkpoints(out_dir: str, keep_last: int, protect: str):
    steps = sorted((d for d in os.listdir(out_dir) if re.fullmatch(r"step-\d+", d)),
                   key=lambda d: int(d.split("-")[1]))
    for d in steps[:-keep_last]:
        if d != protect:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)


def resolve_resume(path: str) -> str:
    """--resume accepts a checkpoint directory or a run directory (then its `latest`)."""
    if os.path.isfile(os.path.join(path, "training_state.pt")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        return os.path.join(path, open(latest).read().strip())
    # no `latest` (e.g. deleted by an interrupted make): the newest complete step-N checkpoint
    steps = sorted((d for d in os.listdir(path) if re.fullmatch(r"step-\d+", d)
                    and os.path.isfile(os.path.join(path, d, "training_state.pt"))) if os.path.isdir(path) else [],
                   key=lambda d: int(d.split("-")[1]))
    if steps:
        return os.path.join(path, steps[-1])
    raise FileNotFoundError(f"--resume {path}: no training_state.pt, no 'latest' file and no step-N checkpoint there")


def load_training_state(ckpt_dir: str, model, optimizer=None, scheduler=None, rank: int = 0) -> dict:
    """Restore optimizer, scheduler and this rank's RNG streams from a checkpoint whose weights
    were already loaded into `model` (load_model(ckpt_dir) before wrapping). Returns the state."""
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
        raise RuntimeError(f"{ckpt_dir} was saved by {len(rngs)} ranks; resuming on {world_size()} "
                           "would not continue the same run exactly")
    set_rng_state(rngs[rank])
    return state


def log_jsonl(path: str, record: dict):
    """Append one record (one line) and flush, so a killed run keeps every finished step."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def truncate_jsonl(path: str, max_step: int):
    """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
    if not os.path.isfile(path):
        return
    keep = [ln for ln in open(path) if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
    _atomic_write(path, "".join(keep))


def save_run_config(out_dir: str, config: dict):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "run_config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)




def save_if_due(args, step: int, total_steps: int, epoch: int, s: int, steps_per_epoch: int, model, tok, opt,
                sched, config) -> bool:
    """Checkpoint every --save-every steps and at the last step, recording where the data order
    resumes (the next batch of this epoch, or the next epoch). Returns True at the last step."""
    last = step >= total_steps
    if last or (args.save_every and step % args.save_every == 0):
        nxt = (epoch, s + 1) if s + 1 < steps_per_epoch else (epoch + 1, 0)
        save_checkpoint(args.out, f"step-{step}", model, tok, opt, sched,
                        dict(step=step, epoch=nxt[0], step_in_epoch=nxt[1]), config, keep_last=args.keep_last)
    return last



