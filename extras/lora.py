"""extras/lora.py -- moved from vadr.py (to be cleaned)."""
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

from vadr import (barrier, is_main, load_model, unwrap, wrap_model)
from extras import checkpoint
from extras import scale

# ------------------------------------------------------------------------------------------------
# 10. LoRA, rollout weights under FSDP, memory estimates
# ------------------------------------------------------------------------------------------------
# The same two scripts serve three machines (README "tiers"): a laptop CPU (toy preset), one GPU
# (Qwen2.5-VL-7B with LoRA adapters), and 4+ GPUs (full fine-tuning with FSDP2). This section holds
# what the last two need beyond the plain loop:
#   10a. LoRA written from scratch: LoRALinear, apply / disable / merge, adapter-only checkpoints,
#        the reference model of RL as "the policy with its adapters off".
#   10b. A guard that every training forward runs the vision tower (FSDP collectives).
#   10c. rollout_weights: under FSDP, gather the full weights once per RL step for sampling.
#   10d. Memory estimates from a config alone (--dry-run), checked against the toy's measured memory
#        (tests/test_scale.py).

import contextlib  # (this section's own imports, kept here so the section reads on its own)

import torch.nn as nn

# ---- 10a. LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") ----------
#
# A frozen weight W (out, in) gets a trainable low-rank update:
#     y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,    A (r, in), B (out, r), r << min(in, out)
# i.e. the effective weight is W + (alpha / r) B A. B starts at ZERO, so at step 0 the adapted model
# computes exactly what the base computes (the update B A is 0), while A starts random so that the
# gradient of B, (alpha / r) g^T (x A^T), is non-zero from the first step. alpha / r keeps the size of
# the update comparable when r changes (the LoRA paper's scaling). Only A and B train: for
# Qwen2.5-VL-7B with r = 64 on the 7 projections of the 28 decoder layers that is 161M parameters
# (1.9% of 8.29B), so gradients and AdamW state shrink ~50x, and the frozen base can be held in
# bf16 (2 bytes per weight instead of fp32's 4).

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_FORMAT = "vadr-lora-v1"       # adapter_config.json "format": what wrote the adapter checkpoint
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    """nn.Linear + a low-rank adapter: y = base(x) + scale * dropout(x) A^T B^T, scale = alpha / r.

    base: the wrapped nn.Linear (kept as a child, frozen). lora_A (r, in) ~ N(0, 1/in) (the LoRA
    paper's random Gaussian A, scaled like a default nn.Linear init), lora_B (out, r) = 0 (so the
    module starts exactly equal to `base`). `enabled = False` switches the adapter path off: the
    module then IS the base layer (RL's reference model, no second copy of the weights).
    The adapter path runs in the adapters' dtype (fp32) and is cast back to the base output's dtype,
    so a bf16 base with fp32 adapters works with or without autocast."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        self.enabled = True
        dev = base.weight.device
        A = torch.empty(rank, base.in_features, dtype=torch.float32, device=dev)  # (r, in)
        if dev.type != "meta":  # the dry run builds on the meta device: nothing to initialise there
            # drawn on CPU from an explicit generator: the same adapters on every rank and device
            a = torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
            A.copy_(a)
        self.lora_A = nn.Parameter(A)                                               # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32,
                                               device=dev))                         # (out, r)

    def forward(self, x):                                                           # x (..., in)
        y = self.base(x)                                                            # (..., out)
        if not self.enabled:
            return y
        h = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        h = h.to(self.lora_A.dtype) @ self.lora_A.t()                               # (..., r)
        return y + (h @ self.lora_B.t() * self.scale).to(y.dtype)                   # (..., out)

    def merged_weight(self) -> torch.Tensor:
        """W + scale * B A in fp32, cast to the base weight's dtype: (out, in)."""
        W = self.base.weight
        return (W.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())).to(W.dtype)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}, enabled={self.enabled}"


def lora_modules(model) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def lora_config(model) -> dict | None:
    """The LoRA settings recorded by apply_lora (rank, alpha, dropout, targets, base_model), or None
    for a model without adapters."""
    return getattr(unwrap(model), "vadr_lora", None)


def apply_lora(model, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets=LORA_TARGETS, seed: int = 0) -> int:
    """Wrap every nn.Linear named in `targets` inside the LANGUAGE model (model.model.language_model)
    in a LoRALinear, and freeze every other parameter (vision tower, embeddings, norms, lm_head, the
    wrapped weights themselves). Returns the number of wrapped layers. Adapters are initialised from
    a generator seeded with `seed`: identical on every rank (FSDP2 does not broadcast weights)."""
    if lora_config(model) is not None:
        raise RuntimeError("apply_lora: the model already has LoRA adapters")
    alpha = float(2 * rank if alpha is None else alpha)
    targets = tuple(targets)
    inner = unwrap(model)
    lm = inner.model.language_model
    inner.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    wrapped = 0
    for name, module in list(lm.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and type(child) is nn.Linear:
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout, generator=gen))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"--lora-targets {','.join(targets)} matched no nn.Linear in the language model "
                         f"(its projections are {sorted({n.split('.')[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})})")
    inner.vadr_lora = dict(rank=int(rank), alpha=alpha, dropout=float(dropout), targets=list(targets))
    return wrapped


@contextlib.contextmanager
def lora_disabled(model):
    """Inside: every adapter is off, so the model computes exactly its base weights (RL's pi_ref)."""
    mods = [m for _, m in lora_modules(model)]
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(mods, before):
            m.enabled = e


def lora_state_dict(model) -> dict:
    """Adapters only: {fully qualified name: fp32 CPU tensor}, names as in the unwrapped model
    ('model.language_model.layers.0.self_attn.q_proj.lora_A'). Under FSDP2 each adapter is a
    sharded DTensor: full_tensor() all-gathers it, so every rank must call this (same order)."""
    out = {}
    for n, p in unwrap(model).named_parameters():
        if n.endswith(".lora_A") or n.endswith(".lora_B"):
            t = p.detach()
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[n] = t.to("cpu", copy=True).contiguous()
    return out


def load_lora_state_dict(model, sd: dict):
    """Copy saved adapters into a model that apply_lora prepared with the same settings (strict)."""
    params = {n: p for n, p in unwrap(model).named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    missing, extra = sorted(set(params) - set(sd)), sorted(set(sd) - set(params))
    if missing or extra:
        raise RuntimeError(f"adapter weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]} "
                           "(different --lora-rank / --lora-targets than the checkpoint?)")
    with torch.no_grad():
        for n, p in params.items():
            if tuple(sd[n].shape) != tuple(p.shape):
                raise RuntimeError(f"adapter {n}: saved shape {tuple(sd[n].shape)} != model {tuple(p.shape)}")
            p.copy_(sd[n])


def merge_lora(model):
    """Fold every adapter into its base weight (W <- W + scale * B A, computed in fp32) and put the
    plain nn.Linear back, so that save_pretrained writes an ordinary Hugging Face checkpoint."""
    inner = unwrap(model)
    for name, m in lora_modules(inner):
        parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
        with torch.no_grad():
            m.base.weight.copy_(m.merged_weight())
        setattr(parent, name.rsplit(".", 1)[-1], m.base)
    if hasattr(inner, "vadr_lora"):
        del inner.vadr_lora
    return model


def is_adapter_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a run directory resolved through its `latest` file."""
    if path == "toy":
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither 'toy' nor a directory (nothing is downloaded)")
    if not os.path.isfile(os.path.join(path, "config.json")) and not is_adapter_checkpoint(path) \
            and os.path.isfile(os.path.join(path, "latest")):
        path = os.path.join(path, open(os.path.join(path, "latest")).read().strip())
    return path


def read_adapter_config(path: str) -> dict:
    cfg = json.load(open(os.path.join(path, ADAPTER_CONFIG)))
    if cfg.get("format") != LORA_FORMAT:
        raise ValueError(f"{path}/{ADAPTER_CONFIG}: format {cfg.get('format')!r}, expected {LORA_FORMAT!r}")
    return cfg


def load_merged(path: str, dtype=None, device=None, corpus=None, seed: int = 0):
    """-> (plain Qwen2_5_VLForConditionalGeneration, tokenizer) from any checkpoint: 'toy', a Hugging
    Face directory, or an adapter checkpoint, whose base (itself possibly an adapter checkpoint: an
    RL LoRA run on top of an SFT LoRA run) is loaded recursively and gets the adapters folded in."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = resolve_checkpoint(path)
    if path == "toy" or not is_adapter_checkpoint(path):
        return load_model(path, dtype=dtype, device=device, corpus=corpus, seed=seed)
    cfg = read_adapter_config(path)
    model, _ = load_merged(cfg["base_model"], dtype=dtype)
    apply_lora(model, cfg["rank"], cfg["alpha"], 0.0, cfg["targets"])
    load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
    merge_lora(model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if device is not None:
        model.to(device)
    return model, tok


def _save_hf_dir(path: str, model, tokenizer):
    """A plain Hugging Face directory (config, safetensors, tokenizer), written atomically, rank 0."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_lora_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None, scheduler=None,
                         train_state: dict | None = None, config: dict | None = None,
                         keep_last: int | None = None) -> str | None:
    """save_checkpoint for a LoRA run (it dispatches here): the ADAPTERS alone
    (adapter_model.safetensors + adapter_config.json naming the base checkpoint), the tokenizer,
    and the same training_state.pt / run_config.json / `latest` as a full checkpoint, so --resume
    continues exactly. A few hundred MB for the 7B instead of 17 GB; `--merge` makes a full HF dir.
    Collective under torch.distributed (adapters and optimizer state are gathered); rank 0 writes."""
    from safetensors.torch import save_file

    lcfg = lora_config(model)
    if not lcfg.get("base_model"):
        raise RuntimeError("this LoRA model does not record its base checkpoint (use vadr.load_for_training)")
    sd = lora_state_dict(model)

    def write(tmp):
        save_file(sd, os.path.join(tmp, ADAPTER_WEIGHTS))
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(dict(format=LORA_FORMAT, scope="model.language_model", **lcfg,
                           adapter_parameters=sum(t.numel() for t in sd.values())), f, indent=1)

    return checkpoint._write_checkpoint(out_dir, name, write, model, tokenizer, optimizer, scheduler, train_state,
                             config, keep_last)


def merge_checkpoint(src: str, out: str) -> str:
    """`--merge SRC --out DIR`: the adapters of SRC (a LoRA checkpoint or run directory) folded into
    their base, written as a full Hugging Face directory that from_pretrained loads and eval.py scores.
    The merged weights keep the dtype of the root base checkpoint (bf16 for Qwen2.5-VL-7B)."""
    src = resolve_checkpoint(src)
    if not is_adapter_checkpoint(src):
        raise SystemExit(f"--merge {src}: no {ADAPTER_CONFIG} there; only LoRA checkpoints need merging "
                         "(a full checkpoint already is a Hugging Face directory)")
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"--merge: output directory {out} exists and is not empty; pass a new --out")
    root = src
    while is_adapter_checkpoint(root):
        root = resolve_checkpoint(read_adapter_config(root)["base_model"])
    dtype = None
    if root != "toy":
        root_cfg = json.load(open(os.path.join(root, "config.json")))
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            root_cfg.get("dtype") or root_cfg.get("torch_dtype"), torch.float32)
    model, tok = load_merged(src, dtype=dtype)
    _save_hf_dir(out, model, tok)
    print(f"merged {src} (base {root}) -> {out} [{dtype or torch.float32}]")
    return out


def _lora_base_dtype(args, device_type: str):
    choice = getattr(args, "lora_base_dtype", "auto")
    if choice == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return dict(bf16=torch.bfloat16, fp32=torch.float32)[choice]


def load_for_training(path: str, args, resume: bool, corpus=None, seed: int = 0):
    """The training scripts' model loading (replaces a bare load_model): -> (model, tokenizer).

      * path 'toy', a Hugging Face directory, or an adapter checkpoint (folded into its base);
      * resume from a LoRA checkpoint: the base is rebuilt and the saved adapters loaded into it
        (the run's LoRA settings come from the checkpoint);
      * --lora-rank R: adapters are added (apply_lora) and the model records its base checkpoint;
        a toy base is first saved to <out>/lora-base, since a random toy model is not on disk;
      * gradient checkpointing is switched on for a real (non-toy) model unless --no-grad-ckpt;
      * the vision-tower guard is installed (scale.install_vision_guard).
    Call it before prepare_model (which moves and wraps the model)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    device_type = (getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    device_type = torch.device(device_type).type
    path = resolve_checkpoint(path)
    if resume and path != "toy" and is_adapter_checkpoint(path):
        cfg = read_adapter_config(path)
        if args.lora_rank not in (None, cfg["rank"]):
            raise SystemExit(f"--resume {path}: the checkpoint has rank-{cfg['rank']} adapters, "
                             f"not --lora-rank {args.lora_rank}")
        args.lora_rank, args.lora_alpha, args.lora_dropout = cfg["rank"], cfg["alpha"], cfg["dropout"]
        args.lora_targets = ",".join(cfg["targets"])
        model, _ = load_merged(cfg["base_model"])
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        model.to(_lora_base_dtype(args, device_type))
        apply_lora(model, cfg["rank"], cfg["alpha"], cfg["dropout"], cfg["targets"], seed=seed)
        load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
        model.vadr_lora["base_model"] = cfg["base_model"]
    else:
        if resume and getattr(args, "lora_rank", None):
            raise SystemExit(f"--resume {path} is a full checkpoint (no adapters): drop --lora-rank")
        model, tok = load_merged(path, corpus=corpus, seed=seed)
        if getattr(args, "lora_rank", None):
            if path == "toy":
                base = os.path.abspath(os.path.join(args.out, "lora-base"))
                if is_main():
                    _save_hf_dir(base, model, tok)
                barrier()
            else:
                base = os.path.abspath(path)
            model.to(_lora_base_dtype(args, device_type))
            apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout,
                       [t for t in args.lora_targets.split(",") if t], seed=seed)
            model.vadr_lora["base_model"] = base
    if lora_config(model) is not None and is_main():
        n_ad = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        lc = lora_config(model)
        print(f"[lora] rank {lc['rank']} alpha {lc['alpha']:g} dropout {lc['dropout']:g} on "
              f"{','.join(lc['targets'])}: {n_ad:,} trainable of {n_all:,} parameters; base {lc['base_model']}")
    if not scale.is_toy_config(model.config) and not getattr(args, "no_grad_ckpt", False) and not args.grad_ckpt:
        args.grad_ckpt = True  # real model: activations of 28 layers x thousands of tokens (see estimate_memory)
        if is_main():
            print("[memory] gradient checkpointing on (real model; --no-grad-ckpt turns it off)")
    scale.install_vision_guard(model)
    return model, tok


def make_reference_model(model, args, resume: bool, dist_info: dict):
    """The KL reference pi_ref of RL (Alg. 2 lines 1-2: pi_ref <- pi_theta at the start).
    With LoRA: None -- the reference is the policy itself with its adapters switched off
    (reference_policy), exactly the starting weights, with no second copy of the 7B weights.
    Without LoRA: a frozen copy of the starting checkpoint (on resume, reloaded from args.model),
    sharded like the policy under FSDP. None as well when beta = 0 (no KL term)."""
    import copy

    if args.beta <= 0 or lora_config(model) is not None:
        return None
    ref = load_merged(args.model)[0] if resume else copy.deepcopy(model)
    ref.requires_grad_(False).eval().to(dist_info["device"])
    if dist_info["distributed"] and args.fsdp:
        ref = wrap_model(ref, "fsdp", dist_info["device"], bf16=dist_info["device"].type == "cuda")
    return ref


@contextlib.contextmanager
def reference_policy(model, ref_model):
    """Yields the module that computes log pi_ref: ref_model when there is one, else (LoRA) the
    policy with every adapter switched off for the duration of the block."""
    if ref_model is not None:
        yield ref_model
    elif lora_config(model) is not None:
        with lora_disabled(model):
            yield model
    else:
        raise RuntimeError("no reference model: beta > 0 needs a frozen copy or LoRA adapters to switch off")


