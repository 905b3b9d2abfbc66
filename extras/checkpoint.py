"""extras/checkpoint.py -- checkpoints that resume a run exactly, and the JSONL training log.

Not part of the method (the paper says nothing about checkpoints); what makes a run killed at
any moment continue as if it had never stopped. A checkpoint is a Hugging Face directory
(config.json, model*.safetensors, tokenizer files, generation_config.json) that from_pretrained
and AutoTokenizer load as they are, plus

  * training_state.pt: optimizer, scheduler, step and data position, every rank's RNG streams,
    the resolved config;
  * run_config.json: the same config, readable;
  * checkpoint_manifest.json, written last: the size of every file above (what makes a
    checkpoint "intact" for --resume: checkpoint_problem).

It is written into a temporary directory (.tmp-<name>-<pid>) and renamed into place, so a crash
mid-save never leaves half a checkpoint; the run directory's `latest` file names the newest
complete one. What a crash leaves instead (.tmp-* directories) goes at the next save; a save
that fails (a full disk) is one line, the previous checkpoint intact. --resume and --model skip a
checkpoint damaged later (truncated, deleted files), with a warning, for the newest intact one
(resolve_checkpoint: the one rule from a run directory to its checkpoint). A resumed run is the
same run or a one-line refusal (continue_run, check_same_data): its stage, its flags (left out:
the run's; RESUME_MAY_CHANGE lists those that may change), its rows and videos by content.
A LoRA run writes its adapters instead of the full weights (extras/lora.py save_lora_checkpoint,
through write_checkpoint below); the training scripts choose which writer they use.

Exercised by:
    python train_sft.py --save-every 50 --keep-last 2 --out runs/toy/sft
    python train_sft.py --resume runs/toy/sft        # a run directory (its `latest`) or a step-N
    python train_rl.py --resume runs/toy/rl
    pytest tests/test_sft.py -k resume; pytest tests/test_rl.py -k resume
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import struct
import sys
import zipfile

import numpy as np
import torch
from safetensors import SafetensorError

import data
from vadr import (InputError, barrier, gather_objects, is_main, unwrap,
                  world_size)

TRAINING_STATE = "training_state.pt"
MANIFEST = "checkpoint_manifest.json"


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
    tokenizer, training_state.pt, run_config.json and last the manifest into a temporary
    directory, rename it into place, point `latest` at it and prune old step-N directories."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opt_sd = None
    if optimizer is not None:
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        opt_sd = get_optimizer_state_dict(unwrap(model), optimizer, options=opts)
    rngs = gather_objects(rng_state())  # one per rank: each rank resumes its own streams
    final = os.path.join(out_dir, name)
    if is_main():
        os.makedirs(out_dir, exist_ok=True)
        remove_stale_temporaries(out_dir)
        tmp = os.path.join(out_dir, f".tmp-{name}-{os.getpid()}")
        state = dict(train_state or {}, rng=rngs, config=config or {}, optimizer=opt_sd,
                     scheduler=scheduler.state_dict() if scheduler else None)
        try:
            os.makedirs(tmp)
            write_weights(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save(state, os.path.join(tmp, "training_state.pt"))
            with open(os.path.join(tmp, "run_config.json"), "w") as f:
                json.dump(config or {}, f, indent=1, default=str)
            write_manifest(tmp)
            bad = checkpoint_problem(tmp)  # a writer that lost bytes without raising
            if bad:
                raise OSError(errno.EIO, f"read back: {bad}")
        except _WRITE_ERRORS as e:  # a full disk, a quota: nothing under the final name changes
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(_unwritten(final, out_dir, e)) from None
        old = os.path.join(out_dir, f".tmp-{name}-old-{os.getpid()}")
        if os.path.exists(final):  # a resumed run redoing a step: move the old one aside in one
            os.replace(final, old)  # step, so a kill never leaves half of it under its name
        os.replace(tmp, final)  # atomic on one file system
        try:
            atomic_write(os.path.join(out_dir, "latest"), name)
        except OSError as e:  # `latest` still names the previous checkpoint, which is intact
            raise InputError(_unwritten(os.path.join(out_dir, "latest"), out_dir, e)) from None
        shutil.rmtree(old, ignore_errors=True)
        if keep_last:
            _prune_checkpoints(out_dir, keep_last, protect=name)
    barrier()
    return final if is_main() else None


# what a failed write raises: OSError (ENOSPC, EDQUOT, ...); torch.save's zip writer reports one as
# a RuntimeError, safetensors as its own error
_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _unwritten(path: str, out_dir: str, e: Exception) -> str:
    """The one line for a checkpoint (or its `latest` pointer) that could not be written."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else \
        (str(e).splitlines() or [type(e).__name__])[0][:200]
    prev = latest_checkpoint(out_dir)
    then = f"the previous checkpoint {prev} is intact: free space in {os.path.abspath(out_dir)} " \
        f"(--keep-last 1 keeps fewer) and --resume {out_dir}" if prev else \
        f"no checkpoint was written before: free space in {os.path.abspath(out_dir)} and run again"
    return f"{path}: could not be written ({why}); {then}"


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
    steps = [d for d in os.listdir(run_dir)
             if re.fullmatch(r"step-\d+", d) and os.path.isdir(os.path.join(run_dir, d))]
    return sorted(steps, key=lambda d: int(d.split("-")[1]))


def _prune_checkpoints(out_dir: str, keep_last: int, protect: str):
    """Keep the keep_last newest step-N up to `protect` (the one just saved). Newer ones stay: after
    a resume from an older checkpoint they are the damaged ones it skipped (the user's to inspect),
    or are replaced when the run gets there. Each goes by a rename first, so a kill mid-delete
    leaves a .tmp-* directory (removed at the next save), never half a checkpoint."""
    upto = int(protect.split("-")[1]) if re.fullmatch(r"step-\d+", protect) else None
    steps = [d for d in _step_dirs(out_dir) if upto is None or int(d.split("-")[1]) <= upto]
    for d in steps[:-keep_last]:
        if d != protect and not os.path.islink(os.path.join(out_dir, d)):  # a link: the user's
            gone = os.path.join(out_dir, f".tmp-{d}-pruned-{os.getpid()}")
            os.replace(os.path.join(out_dir, d), gone)
            shutil.rmtree(gone, ignore_errors=True)


# what write_checkpoint and _prune_checkpoints (and lora's base writer) leave when killed:
# .tmp-<name>-[old-|pruned-]<pid>
_TEMPORARY = re.compile(r"\.tmp-(?:step-\d+|init|lora-base)-(?:old-|pruned-)?(\d+)")


def remove_stale_temporaries(out_dir: str):
    """Remove the temporary directories interrupted saves left in out_dir: those named as
    write_checkpoint names them, of a process that is no longer running (or of this one).
    Nothing else is touched: other names, files and links stay."""
    for d in os.listdir(out_dir):
        m = _TEMPORARY.fullmatch(d)
        path = os.path.join(out_dir, d)
        if m and os.path.isdir(path) and not os.path.islink(path) and \
                not _running_elsewhere(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _running_elsewhere(pid: int) -> bool:
    """Whether pid is a live process other than this one (its save may be in progress)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


def write_manifest(ckpt_dir: str):
    """checkpoint_manifest.json: every file of ckpt_dir (relative path) and its size in bytes."""
    files = {}
    for root, _, names in os.walk(ckpt_dir):
        for n in names:
            p = os.path.join(root, n)
            files[os.path.relpath(p, ckpt_dir)] = os.path.getsize(p)
    with open(os.path.join(ckpt_dir, MANIFEST), "w") as f:
        json.dump(dict(format="vadr-checkpoint-v1", files=files), f, indent=1)


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
    """--resume PATH -> the checkpoint to continue from (resolve_checkpoint's rule). A run
    directory whose only intact checkpoint is its `init` (the toy's untrained model) starts at
    step 0."""
    return resolve_checkpoint(path, "--resume")


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint run_dir/latest names, or None (unreadable, or no plain name like step-N)."""
    try:
        with open(os.path.join(run_dir, "latest"), encoding="utf-8") as f:
            name = f.read(4096).strip()
    except (OSError, UnicodeDecodeError):
        return None
    plain = re.fullmatch(r"[\w.-]*[\w-][\w.-]*", name)  # not '', '.', '..' nor a path
    return os.path.join(run_dir, name) if plain else None


def resolve_checkpoint(path: str, flag: str = "--model") -> str:
    """The one rule from a path to the checkpoint it means, for --resume, --model (every script
    and extras/lora.load_merged), --merge. PATH is 'toy' (--model), a checkpoint directory
    (taken only if intact: no fallback for one named on purpose; a Hugging Face directory that
    this project did not write, without training_state.pt, is taken as it is, except by
    --resume), or a run directory: the checkpoint its `latest` names, else the newest intact
    step-N, else its `init`. Each damaged checkpoint skipped costs a one-line warning naming it;
    none intact is an InputError naming the bad file and what to do."""
    if flag == "--resume":
        again = "start the run afresh without --resume (with --overwrite, to reuse the directory)"
    else:
        again = "pass another checkpoint or run directory (nothing is downloaded)"
    if path == "toy" and flag == "--model":
        return path
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "no such directory"
        toy = " or toy" if flag == "--model" else ""
        raise InputError(f"{flag} {path}: {what}; pass a run directory (or one of its step-N "
                         f"checkpoints){toy}, or {again}")
    if is_checkpoint_dir(path):
        ours = any(os.path.lexists(os.path.join(path, f)) for f in (TRAINING_STATE, MANIFEST))
        bad = checkpoint_problem(path) if ours or flag == "--resume" else None
        run_dir = os.path.dirname(os.path.abspath(path))
        if bad and flag == "--resume":
            raise InputError(f"{flag} {path}: {bad}; resume from another checkpoint (its run "
                             f"directory {run_dir} falls back to the newest intact one), or "
                             f"{again}")
        if bad:
            raise InputError(f"{flag} {path}: {bad}; pass its run directory {run_dir} (which "
                             "falls back to the newest intact checkpoint) or another checkpoint")
        return path
    latest = latest_checkpoint(path)
    if latest is None and os.path.lexists(os.path.join(path, "latest")):
        _warn(f"{flag} {path}: {os.path.join(path, 'latest')} names no checkpoint directory; "
              "ignored")
    named = [latest] if latest else []
    steps = [os.path.join(path, d) for d in reversed(_step_dirs(path))]
    init = [os.path.join(path, "init")] if os.path.isdir(os.path.join(path, "init")) else []
    candidates = list(dict.fromkeys(named + steps + init))  # no checkpoint checked twice
    if not candidates:
        raise InputError(f"{flag} {path}: no checkpoint there (no `latest` file, no step-N "
                         f"directory); {again}")
    bad = []
    for c in candidates:
        problem = checkpoint_problem(c)
        if problem is None:
            start = " (the untrained model: step 0)" if c in init else ""
            for b in bad:
                _warn(f"{flag} {path}: skipping a damaged checkpoint: {b}; "
                      f"{'resuming from' if flag == '--resume' else 'taking'} {c}" + start)
            return c
        named_by = f"{os.path.join(path, 'latest')} names {c}, but " if c == latest else ""
        bad.append(named_by + problem)
    more = f"; {len(bad) - 1} older ones are damaged too" if len(bad) > 1 else ""
    raise InputError(f"{flag} {path}: no intact checkpoint there: {bad[0]}{more}; {again}")


def _warn(msg: str):
    if is_main():
        print(f"warning: {msg}", file=sys.stderr)


def is_checkpoint_dir(path: str) -> bool:
    """Whether path is meant as one checkpoint (intact or not), not a run directory holding
    several: it has a file only a checkpoint has."""
    return any(os.path.lexists(os.path.join(path, f))
               for f in (TRAINING_STATE, MANIFEST, "config.json", "adapter_config.json"))


def checkpoint_problem(ckpt_dir: str) -> str | None:
    """Why ckpt_dir is not an intact checkpoint (a phrase naming the bad file), or None. Intact:
    every file its manifest lists is there with the size written (a checkpoint from before
    manifests: the files every checkpoint has are there and non-empty), and the files with a
    structure parse: JSON, safetensors (its header's tensor sizes must add up to the file's) and
    training_state.pt (a zip: its directory, at the end, and its pickle's CRC). Cheap (no tensor
    is read), and it catches what happens to a complete checkpoint later: a copy or disk cut
    short, a file deleted, a pointer to a directory that is gone."""
    if not os.path.isdir(ckpt_dir):
        return f"{ckpt_dir} " + ("is not a directory" if os.path.exists(ckpt_dir) else
                                 "does not exist")
    man = os.path.join(ckpt_dir, MANIFEST)
    if os.path.lexists(man):
        try:
            with open(man, encoding="utf-8") as f:
                sizes = {str(k): int(v) for k, v in json.load(f)["files"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{man} is not a readable manifest (truncated?)"
    else:  # written before manifests: the files every checkpoint has must not be empty
        sizes = dict.fromkeys(_required_files(ckpt_dir), 0)
        sizes.update({n: -1 for n in os.listdir(ckpt_dir)  # -1: any size
                      if n not in sizes and os.path.isfile(os.path.join(ckpt_dir, n))})
    for rel in dict.fromkeys([TRAINING_STATE] + sorted(sizes)):
        p = os.path.join(ckpt_dir, rel)
        if not os.path.isfile(p):
            return f"{p} is missing"
        got, want = os.path.getsize(p), sizes.get(rel, 0)
        if want == 0 and got == 0:
            return f"{p} is empty"
        if want > 0 and got != want:
            return f"{p} has {got} bytes where {want} were written (truncated?)"
        bad = _format_problem(p)
        if bad:
            return f"{p} {bad}"
    return None


def _required_files(ckpt_dir: str) -> list[str]:
    """The files of a checkpoint written before manifests: training state, config, tokenizer and
    the weights (full: model.safetensors or the shards its index names; LoRA: the adapters)."""
    names = [TRAINING_STATE, "run_config.json", "tokenizer_config.json"]
    if os.path.lexists(os.path.join(ckpt_dir, "adapter_config.json")):
        return names + ["adapter_config.json", "adapter_model.safetensors"]
    index = os.path.join(ckpt_dir, "model.safetensors.index.json")
    if not os.path.lexists(index):
        return names + ["config.json", "model.safetensors"]
    try:
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        shards = []  # the index itself is reported as unreadable
    return names + ["config.json", "model.safetensors.index.json"] + shards


def _format_problem(path: str) -> str | None:
    """What is wrong inside a file whose format can be checked from its header, or None."""
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                json.load(f)
        elif path.endswith(".safetensors"):  # u64 header length, JSON header, tensor bytes
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n)) if n <= size - 8 else None
            if not isinstance(header, dict):
                return "is not a safetensors file (truncated?)"
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                      default=0)
            if 8 + n + end != size:
                return f"has {size} bytes where its header needs {8 + n + end} (truncated?)"
        elif path.endswith(".pt"):  # a zip; its pickle (small: the tensors are apart) is read
            with zipfile.ZipFile(path) as z:  # whole, which checks its CRC
                z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    except Exception as e:  # noqa: BLE001 -- whatever a damaged file makes a parser raise
        kind = {".json": "JSON", ".safetensors": "safetensors", ".pt": "torch.save"}
        return (f"is not valid {kind[os.path.splitext(path)[1]]} (truncated or corrupted?: "
                f"{type(e).__name__})")
    return None


def load_training_state(ckpt_dir: str, model, optimizer=None, scheduler=None,
                        rank: int = 0) -> dict:
    """Restore optimizer, scheduler and this rank's RNG streams from a checkpoint whose weights
    were already loaded into `model` (before wrapping). Returns the saved state, with its position
    (step, epoch, step_in_epoch). The toy's `init` checkpoint, written before step 1, has none
    yet: it starts at step 0, from the weights and RNG streams the uninterrupted run had there."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = _read_state(ckpt_dir)
    where = os.path.join(ckpt_dir, TRAINING_STATE)
    if "step" not in state:  # init: saved before the first step, no optimizer or position yet
        state.update(step=0, epoch=0, step_in_epoch=0)
    if not all(isinstance(state.get(k), int) for k in ("step", "epoch", "step_in_epoch")) \
            or not isinstance(state.get("rng"), list):
        raise InputError(f"{where}: no step/epoch/step_in_epoch/rng in it (not written by this "
                         "project's training scripts?); resume from one of their checkpoints")
    rngs = state["rng"]
    if len(rngs) != world_size():
        raise InputError(f"{ckpt_dir} was saved by {len(rngs)} ranks; resuming on "
                         f"{world_size()} would not continue the same run exactly: resume with "
                         f"{len(rngs)} ranks (torchrun --nproc_per_node {len(rngs)})")
    _check_same_trainable(where, model, optimizer, state.get("optimizer"))
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            set_optimizer_state_dict(unwrap(model), optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise InputError(f"{where}: its optimizer state does not fit this model "
                         f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]});"
                         " resume with the run's own flags (--freeze-vision, --lora-*)") from None
    set_rng_state(rngs[rank])
    return state


def _check_same_trainable(where: str, model, optimizer, saved: dict | None):
    """A resumed run must train the parameters its checkpoint trained: the optimizer state is
    keyed by parameter name, and loading it into an optimizer over another set (a flag such as
    --freeze-vision changed) silently drops or skips moments instead of continuing the run."""
    if optimizer is None or not isinstance(saved, dict):
        return
    was = {n for g in saved.get("param_groups", []) for n in g.get("params", [])}
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    now = {names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]}
    if was and was != now:
        raise InputError(f"{where}: its run trained {len(was)} parameter tensors, this one would "
                         f"train {len(now)} ({len(was - now)} of them not, {len(now - was)} new): "
                         "resume with the run's own flags (--freeze-vision, --lora-*)")


# ---- resuming the same run: its stage, flags and data ------------------------------------------

# The flags a resumed run may change (docs/engineering-notes.md): how far it runs (--max-steps:
# the end moves, and the cosine schedule's end with it), how often it saves, how it reads videos,
# memory settings, where it runs. None changes what a step computes from the one before. Every
# other flag defines the run: left out on resume it takes the run's value, given it must equal it.
RESUME_MAY_CHANGE = ("max_steps", "save_every", "keep_last", "num_workers", "cache_videos",
                     "grad_ckpt", "no_grad_ckpt", "no_rollout_gather", "device", "out")
# The invocation itself and this machine's: never taken from the run.
_THIS_COMMAND = ("resume", "overwrite", "out", "device", "merge", "dry_run", "dry_run_gpus",
                 "dry_run_video_hw")
# Compared by what they hold, not by their text (check_same_data): the rows, the videos, the
# length ranges. A path to the same content elsewhere is the same run.
_BY_CONTENT = ("data", "video_root", "length_ranges_from")
_PATHS = ("model", "tokenizer_corpus")  # compared as real paths
_NOT_FLAGS = ("preset_filled", "flags_given")
SCRIPTS = {"sft": "train_sft.py", "rl": "train_rl.py"}


def run_stage(config: dict) -> str | None:
    """'sft' or 'rl': the script whose run a saved config is (None: not known)."""
    if config.get("stage") in SCRIPTS:
        return config["stage"]
    return "rl" if "num_generations" in config else "sft" if "task" in config else None


def _shown(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return "(unset)" if v is None else str(v)


def _same(dest: str, new, old) -> bool:
    if dest in _PATHS:
        real = lambda v: v if v in (None, "toy") else os.path.realpath(str(v))
        if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)):
            return [real(x) for x in new] == [real(x) for x in old]
        return real(new) == real(old)
    return new == old


def resume_run(args, stage: str) -> str | None:
    """--resume: the checkpoint it names (resolve_resume), with args continued as that run's
    (continue_run); None without --resume."""
    ckpt_dir = resolve_resume(args.resume) if args.resume else None
    if ckpt_dir:
        continue_run(args, ckpt_dir, stage)
    return ckpt_dir


def continue_run(args, ckpt_dir: str, stage: str):
    """--resume, before anything is loaded or written: the checkpoint must be this script's
    stage's (an RL run resumed by train_sft.py would get SFT steps appended and its
    run_config.json replaced), and the run keeps its flags: a flag left out takes the run's
    value; a run-defining flag given must equal it (one-line InputError naming the flag and both
    values). args.flags_given: the flags the command line set (extras/cli.flags_given)."""
    script, saved = SCRIPTS[stage], saved_config(ckpt_dir)
    was = run_stage(saved)
    if was is not None and was != stage:
        raise InputError(
            f"{script}: --resume {args.resume}: {ckpt_dir} is an {was.upper()} run's checkpoint; "
            f"{script} must not append {stage.upper()} steps to it nor overwrite its "
            f"run_config.json: continue it with {SCRIPTS[was]} --resume {args.resume}, or start "
            f"{stage.upper()} from it with --model {args.resume} and a new --out")
    given = set(getattr(args, "flags_given", ()))
    for dest in sorted(saved):
        if dest in _NOT_FLAGS or not hasattr(args, dest):
            continue
        new, old = getattr(args, dest), saved[dest]
        if dest == "preset" and old is None:  # an RL record without it: it says nothing
            continue
        if dest not in given:
            if dest not in _THIS_COMMAND:
                setattr(args, dest, old)
        elif dest not in RESUME_MAY_CHANGE + _THIS_COMMAND + _BY_CONTENT \
                and not _same(dest, new, old):
            flag = "--" + dest.replace("_", "-")
            raise InputError(
                f"{script}: --resume {args.resume}: {flag} {_shown(new)} is not the run's "
                f"{flag} {_shown(old)}: a resumed run keeps the flags that define it; leave "
                f"{flag} out, or start a new run (another --out)")
    args.preset_filled = saved.get("preset_filled") or []


def data_content(rows: list[dict]) -> dict:
    """What a run reads, whatever the paths: the rows as validated (sha256; physical line numbers
    and resolved video paths left out) and their videos (each file's size, first and last 4 KiB,
    in row order). Kept in the run's config; check_same_data compares it on resume."""
    skip = ("line", "video_path")
    text = json.dumps([{k: v for k, v in r.items() if k not in skip} for r in rows],
                      sort_keys=True, default=str)
    videos = hashlib.sha256()
    for r in rows:  # 8 KiB a video: cheap for the 6,448 RL videos, even on a network file system
        try:
            with open(r["video_path"], "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(4096)
                f.seek(max(0, size - 4096))
                videos.update(f"{size}:".encode() + head + f.read(4096))
        except (OSError, TypeError):
            videos.update(b"unreadable")
    return dict(rows=hashlib.sha256(text.encode()).hexdigest(), videos=videos.hexdigest())


def check_same_data(args, saved: dict, stage: str, content: dict, length_ranges=None):
    """--resume: the run's rows, videos (and RL length ranges) must be what it read before; a
    difference is a one-line InputError naming the flag and both values. A checkpoint written
    before this record was kept is not checked."""
    script, was = SCRIPTS[stage], saved.get("data_content")
    was = was if isinstance(was, dict) else None
    again = "pass the run's, or start a new run (another --out)"
    if was and was["rows"] != content["rows"]:
        raise InputError(f"{script}: --resume {args.resume}: --data {args.data} does not hold the "
                         f"rows of the run's --data {saved.get('data')}; {again}")
    if was and was["videos"] != content["videos"]:
        raise InputError(f"{script}: --resume {args.resume}: the videos under --video-root "
                         f"{args.video_root} are not the run's (--video-root "
                         f"{saved.get('video_root')}: same rows, other files); {again}")
    old = saved.get("length_ranges")
    if length_ranges is not None and isinstance(old, dict):
        as_lists = lambda r: {k: list(v) for k, v in r.items()}
        if as_lists(length_ranges) != as_lists(old):
            raise InputError(f"{script}: --resume {args.resume}: --length-ranges-from "
                             f"{args.length_ranges_from} gives the length ranges "
                             f"{as_lists(length_ranges)}, the run's --length-ranges-from "
                             f"{saved.get('length_ranges_from')} gave {as_lists(old)}; {again}")


# ---- the JSONL log -------------------------------------------------------------------------------

def log_jsonl(path: str, record: dict):
    """Append one record (one line) and flush, so a killed run keeps every finished step."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
    except OSError as e:  # a full disk: the checkpoints so far are intact
        raise InputError(f"{path}: the log could not be written ({e.strerror}); free space there "
                         f"and --resume {os.path.dirname(path)}") from None


def start_log(out_dir: str, config: dict, resume_step: int | None) -> str:
    """Rank 0: write run_config.json and prepare out_dir/log.jsonl (on resume, drop the lines of
    steps after the checkpoint; a fresh run starts a new log). Returns the log's path."""
    log_path = os.path.join(out_dir, "log.jsonl")
    if is_main():
        writing = os.path.join(out_dir, "run_config.json")
        try:
            save_run_config(out_dir, config)
            writing = log_path
            if resume_step is not None:
                truncate_jsonl(log_path, resume_step)
            elif os.path.exists(log_path):
                os.remove(log_path)
        except OSError as e:  # a full disk before the first step
            raise InputError(f"{writing}: could not be written ({e.strerror}); free space in "
                             f"{os.path.abspath(out_dir)} and run again") from None
    return log_path


def truncate_jsonl(path: str, max_step: int):
    """On resume, drop log lines of steps after the checkpoint (they will be redone). A last
    line cut short by a kill mid-write (no newline) is such a line; any other line that is not
    a JSON record is an error naming it (the log is the user's, not ours to guess at)."""
    if not os.path.isfile(path):
        return
    keep = []
    for i, rec, problem, ln, _, torn in data.read_jsonl(path, "log", max_chars=None,
                                                        bad_utf8="yield"):
        try:
            if problem:
                raise ValueError(problem[1])
            step = int(rec.get("step", 0))
        except (ValueError, AttributeError, TypeError):
            if torn:
                break  # the record being written when the run was killed
            raise InputError(f"{path}:{i}: not a log record; fix or delete the line to resume"
                             ) from None
        if step <= max_step:
            keep.append(ln)
    atomic_write(path, "".join(keep))


def full_state_dict(model) -> dict:
    """The full (unsharded) model state dict on CPU. Under FSDP2 this is a collective: every rank
    must call it; rank 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(unwrap(model),
                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def saved_config(ckpt_dir: str) -> dict:
    """The resolved config a checkpoint was saved with: its run_config.json (training_state.pt
    holds the same beside the optimizer state, which for a 7B is gigabytes to unpickle)."""
    try:
        with open(os.path.join(ckpt_dir, "run_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if isinstance(config, dict):
            return config
    except (OSError, ValueError):
        pass
    return _read_state(ckpt_dir).get("config") or {}


def _read_state(ckpt_dir: str) -> dict:
    """training_state.pt as saved, or an InputError naming it (damage the cheap checks of
    checkpoint_problem, which resolve_resume applied, cannot see)."""
    path = os.path.join(ckpt_dir, TRAINING_STATE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- unpickling a damaged file raises anything
        raise InputError(f"{path} cannot be read ({type(e).__name__}: corrupted?); move its "
                         "checkpoint aside and --resume the run directory: it falls back to the "
                         "newest intact checkpoint") from None
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a training state; resume "
                         "from a checkpoint the training scripts wrote")
    return state
