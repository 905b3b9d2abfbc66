"""extras/lora.py -- LoRA adapters written from scratch, for training the 7B on one GPU.

Not in the Vad-R1 paper, which fine-tunes every weight on 4 x 80 GB (App. C.3). With LoRA
(Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") only small adapters on the
language model's projections train, so the same two scripts fit one GPU. This file holds:

  * LoRALinear, apply_lora / lora_disabled / merge_lora: the adapters themselves;
  * adapter-only checkpoints (save_lora_checkpoint, through extras/checkpoint.py's writer) and
    load_merged, which loads any checkpoint as plain weights, folding a chain of adapters (RL
    LoRA on SFT LoRA on a base) in: what every script's --model goes through ('toy' included,
    built by toymodel.load_model), so a LoRA run is a --model like any checkpoint;
  * load_for_training: the training scripts' model loading, with or without adapters;
  * RL's reference model pi_ref (Alg. 2 lines 1-2): with LoRA it is the policy with its adapters
    switched off, so no second copy of the weights exists (make_reference_model,
    reference_policy);
  * merge_checkpoint: `--merge`, a full Hugging Face directory that eval.py scores.

Exercised by:
    python train_sft.py --model /ckpt/Qwen2.5-VL-7B-Instruct --data Vad-Reasoning-SFT-train.jsonl \
        --video-root ROOT --lora-rank 64 --out runs/sft-lora
    python train_rl.py --model runs/sft-lora --data Vad-Reasoning-RL.jsonl --video-root ROOT \
        --lora-rank 64 --out runs/rl-lora
    python train_rl.py --merge runs/rl-lora --out runs/rl-merged
    pytest tests/test_lora.py
Memory figures for the 7B: docs/scale.md.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil

import torch
import torch.nn as nn
import torch.nn.functional as F

from extras import checkpoint, toymodel
from extras.training import wrap_model
from vadr import InputError, barrier, is_main, load_model, resolve_device, unwrap

# ---- the adapters --------------------------------------------------------------------------------
#
# A frozen weight W (out, in) gets a trainable low-rank update:
#     y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,    A (r, in), B (out, r), r << min(in, out)
# i.e. the effective weight is W + (alpha / r) B A. B starts at ZERO, so at step 0 the adapted
# model computes exactly what the base computes, while A starts random so that the gradient of B,
# (alpha / r) g^T (x A^T), is non-zero from the first step. alpha / r keeps the size of the
# update comparable when r changes (the LoRA paper's scaling). Only A and B train, so gradients
# and AdamW state shrink to the adapters' size, and the frozen base can be held in bf16.

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
    The adapter path runs in the adapters' dtype (fp32) and is cast back to the base output's
    dtype, so a bf16 base with fp32 adapters works with or without autocast."""

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
            a = torch.randn(rank, base.in_features, generator=generator)
            A.copy_(a / math.sqrt(base.in_features))
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
        return (f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}, "
                f"enabled={self.enabled}")


def lora_modules(model) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def lora_config(model) -> dict | None:
    """The LoRA settings recorded by apply_lora (rank, alpha, dropout, targets, base_model), or
    None for a model without adapters."""
    return getattr(unwrap(model), "vadr_lora", None)


def apply_lora(model, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets=LORA_TARGETS, seed: int = 0, train_embeddings: bool = False) -> int:
    """Wrap every nn.Linear named in `targets` inside the LANGUAGE model
    (model.model.language_model) in a LoRALinear, and freeze every other parameter (vision
    tower, embeddings, norms, lm_head, the wrapped weights themselves). Returns the number of
    wrapped layers. Adapters are initialised from a generator seeded with `seed`: identical on
    every rank (FSDP2 does not broadcast weights).
    train_embeddings: the input embeddings and lm_head train in full as well (fp32), saved beside
    the adapters (peft calls them modules_to_save): a base that never wrote some tokens (the toy
    captioner and the P2C tags) has untrained rows there that no low-rank update reaches."""
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
        present = sorted({n.split(".")[-1] for n, m in lm.named_modules()
                          if isinstance(m, nn.Linear)})
        raise ValueError(f"--lora-targets {','.join(targets)} matched no nn.Linear in the "
                         f"language model (its projections are {present})")
    if train_embeddings:
        for m in (inner.get_input_embeddings(), inner.get_output_embeddings()):
            m.float().requires_grad_(True)
    inner.vadr_lora = dict(rank=int(rank), alpha=alpha, dropout=float(dropout),
                           targets=list(targets), train_embeddings=bool(train_embeddings))
    return wrapped


def _saved_names(inner) -> set[str]:
    """What an adapter checkpoint holds: every lora_A / lora_B, and with train_embeddings the
    input embedding and lm_head weights (names as in the unwrapped model)."""
    names = {n for n, _ in inner.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    if (getattr(inner, "vadr_lora", None) or {}).get("train_embeddings"):
        names |= {n for n, p in inner.named_parameters()
                  if p is inner.get_input_embeddings().weight
                  or p is inner.get_output_embeddings().weight}
    return names


@contextlib.contextmanager
def lora_disabled(model):
    """Inside: every adapter is off, so the model computes exactly its base weights (pi_ref)."""
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
    """Adapters only (+ the embeddings with train_embeddings): {fully qualified name: fp32 CPU
    tensor}, names as in the unwrapped model ('model.language_model.layers.0.self_attn.q_proj.
    lora_A'). Under FSDP2 each is a sharded DTensor: full_tensor() all-gathers it, so every
    rank must call this (same order)."""
    out, keep = {}, _saved_names(unwrap(model))
    for n, p in unwrap(model).named_parameters():
        if n in keep:
            t = p.detach()
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[n] = t.to("cpu", copy=True).contiguous()
    return out


def load_lora_state_dict(model, sd: dict):
    """Copy saved adapters into a model that apply_lora prepared with the same settings (strict)."""
    keep = _saved_names(unwrap(model))
    params = {n: p for n, p in unwrap(model).named_parameters() if n in keep}
    missing, extra = sorted(set(params) - set(sd)), sorted(set(sd) - set(params))
    if missing or extra:
        raise RuntimeError(f"adapter weights do not match the model: missing {missing[:3]}, "
                           f"unexpected {extra[:3]} (different --lora-rank / --lora-targets / "
                           "--lora-train-embeddings than the checkpoint?)")
    with torch.no_grad():
        for n, p in params.items():
            if tuple(sd[n].shape) != tuple(p.shape):
                raise RuntimeError(f"adapter {n}: saved shape {tuple(sd[n].shape)} != model "
                                   f"{tuple(p.shape)}")
            p.copy_(sd[n])


def merge_lora(model):
    """Fold every adapter into its base weight (W <- W + scale * B A, computed in fp32) and put the
    plain nn.Linear back, so that save_pretrained writes an ordinary Hugging Face checkpoint.
    Every parameter is trainable again, as from_pretrained leaves a model (apply_lora froze
    them): a merged LoRA run trains in full like any checkpoint."""
    inner = unwrap(model)
    for name, m in lora_modules(inner):
        parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
        with torch.no_grad():
            m.base.weight.copy_(m.merged_weight())
        setattr(parent, name.rsplit(".", 1)[-1], m.base)
    if hasattr(inner, "vadr_lora"):
        del inner.vadr_lora
    inner.requires_grad_(True)
    return model


# ---- adapter checkpoints -------------------------------------------------------------------------
# An adapter checkpoint holds adapter_model.safetensors and adapter_config.json (settings and the
# absolute path of its base checkpoint), beside the tokenizer and the training_state.pt /
# run_config.json / `latest` of any checkpoint. Its base is itself a Hugging Face directory or
# another adapter checkpoint (RL LoRA on top of SFT LoRA), and must stay where it was.

def is_adapter_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def read_adapter_config(path: str) -> dict:
    """adapter_config.json of an adapter checkpoint; its base must still be where it was."""
    where = os.path.join(path, ADAPTER_CONFIG)
    try:
        with open(where, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: not readable JSON ({type(e).__name__}); pass an intact "
                         "checkpoint") from None
    fmt = cfg.get("format") if isinstance(cfg, dict) else None
    if fmt != LORA_FORMAT:
        raise InputError(f"{where}: format {fmt!r}, expected {LORA_FORMAT!r}: not written by "
                         "this project")
    base = cfg.get("base_model")
    if base != "toy" and not os.path.isdir(str(base)):
        raise InputError(f"{where}: its base checkpoint {base} is gone (moved or deleted?); an "
                         "adapter checkpoint needs its base where it was: put it back there")
    return cfg


def load_merged(path: str, dtype=None, device=None, corpus=None, seed: int = 0):
    """-> (plain Qwen2_5_VLForConditionalGeneration, tokenizer) from any checkpoint: 'toy', a
    Hugging Face directory, a run directory (checkpoint.resolve_checkpoint), or an adapter
    checkpoint, whose base (itself possibly an adapter checkpoint) is loaded recursively and gets
    the adapters folded in (trainable in full, as any loaded model)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = checkpoint.resolve_checkpoint(path)  # a run directory: its newest intact checkpoint
    if path == "toy":
        return toymodel.load_model(path, dtype=dtype, device=device, corpus=corpus, seed=seed)
    if not is_adapter_checkpoint(path):
        return load_model(path, dtype=dtype, device=device)
    cfg = read_adapter_config(path)
    model, _ = load_merged(cfg["base_model"], dtype=dtype)
    apply_lora(model, cfg["rank"], cfg["alpha"], 0.0, cfg["targets"],
               train_embeddings=cfg.get("train_embeddings", False))
    load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
    merge_lora(model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if device is not None:
        model.to(device)
    return model, tok


def _save_hf_dir(path: str, model, tokenizer):
    """A plain Hugging Face directory (config, safetensors, tokenizer), written atomically."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tmp = os.path.join(parent, f".tmp-{base}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_lora_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None,
                         scheduler=None, train_state: dict | None = None,
                         config: dict | None = None, keep_last: int | None = None) -> str | None:
    """checkpoint.save_checkpoint's counterpart for a LoRA run: the ADAPTERS alone
    (adapter_model.safetensors + adapter_config.json naming the base checkpoint), the tokenizer,
    and the same training_state.pt / run_config.json / `latest` as a full checkpoint, so --resume
    continues exactly; `--merge` makes a full HF dir. Collective under torch.distributed
    (adapters and optimizer state are gathered); rank 0 writes."""
    from safetensors.torch import save_file

    lcfg = lora_config(model)
    if not lcfg.get("base_model"):
        raise RuntimeError("this LoRA model does not record its base checkpoint "
                           "(use lora.load_for_training)")
    sd = lora_state_dict(model)

    def write_weights(tmp):
        save_file(sd, os.path.join(tmp, ADAPTER_WEIGHTS))
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(dict(format=LORA_FORMAT, scope="model.language_model", **lcfg,
                           adapter_parameters=sum(t.numel() for t in sd.values())), f, indent=1)

    return checkpoint.write_checkpoint(out_dir, name, write_weights, model, tokenizer, optimizer,
                                       scheduler, train_state, config, keep_last)


def merge_checkpoint(src: str, out: str) -> str:
    """`--merge SRC --out DIR`: the adapters of SRC (a LoRA checkpoint or run directory) folded
    into their base, written as a full Hugging Face directory that from_pretrained loads and
    eval.py scores. The merged weights keep the dtype of the root base checkpoint (bf16 for
    Qwen2.5-VL-7B)."""
    src = checkpoint.resolve_checkpoint(src, "--merge")
    if not is_adapter_checkpoint(src):
        raise SystemExit(f"--merge {src}: no {ADAPTER_CONFIG} there; only LoRA checkpoints need "
                         "merging (a full checkpoint already is a Hugging Face directory)")
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"--merge: output directory {out} exists and is not empty; "
                         "pass a new --out")
    root = src
    while is_adapter_checkpoint(root):
        root = checkpoint.resolve_checkpoint(read_adapter_config(root)["base_model"])
    dtype = None
    if root != "toy":
        root_cfg = json.load(open(os.path.join(root, "config.json")))
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            root_cfg.get("dtype") or root_cfg.get("torch_dtype"), torch.float32)
    model, tok = load_merged(src, dtype=dtype)
    _save_hf_dir(out, model, tok)
    print(f"merged {src} (base {root}) -> {out} [{dtype or torch.float32}]")
    return out


# ---- loading for training ------------------------------------------------------------------------

def base_dtype(args, device_type: str):
    """dtype of the frozen base under LoRA (--lora-base-dtype; auto: bf16 on GPU, fp32 on CPU)."""
    choice = getattr(args, "lora_base_dtype", "auto")
    if choice == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return dict(bf16=torch.bfloat16, fp32=torch.float32)[choice]


def load_for_training(path: str, args, resume: bool, corpus=None, seed: int = 0):
    """The training scripts' model loading: -> (model, tokenizer, settings).

      * path 'toy', a Hugging Face directory, or an adapter checkpoint (folded into its base);
      * resume from a LoRA checkpoint: the base is rebuilt and the saved adapters loaded into it,
        with the checkpoint's LoRA settings;
      * --lora-rank R: adapters are added (apply_lora) and the model records its base checkpoint;
        a toy base is first saved to <out>/lora-base, since a random toy model is not on disk.
    `settings` holds what the checkpoint decided instead of the flags: {lora_rank, lora_alpha,
    lora_dropout, lora_targets} when resuming a LoRA checkpoint, else {}. `args` is only read;
    the caller applies `settings` to it, so that the config it saves is the run's. Call before
    training.prepare_model (which moves and wraps the model)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    device_type = resolve_device(getattr(args, "device", None)).type
    path = checkpoint.resolve_checkpoint(path, "--resume" if resume else "--model")
    settings = {}
    if resume and path != "toy" and is_adapter_checkpoint(path):
        cfg = read_adapter_config(path)
        if args.lora_rank not in (None, cfg["rank"]):
            raise SystemExit(f"--resume {path}: the checkpoint has rank-{cfg['rank']} adapters, "
                             f"not --lora-rank {args.lora_rank}")
        settings = dict(lora_rank=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                        lora_targets=",".join(cfg["targets"]),
                        lora_train_embeddings=cfg.get("train_embeddings", False))
        model, _ = load_merged(cfg["base_model"])
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        model.to(base_dtype(args, device_type))
        apply_lora(model, cfg["rank"], cfg["alpha"], cfg["dropout"], cfg["targets"], seed=seed,
                   train_embeddings=cfg.get("train_embeddings", False))
        load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
        model.vadr_lora["base_model"] = cfg["base_model"]
    else:
        if resume and getattr(args, "lora_rank", None):
            raise SystemExit(f"--resume {path} is a full checkpoint (no adapters): "
                             "drop --lora-rank")
        model, tok = load_merged(path, corpus=corpus, seed=seed)
        if getattr(args, "lora_rank", None):
            if path == "toy":
                base = os.path.abspath(os.path.join(args.out, "lora-base"))
                if is_main():
                    _save_hf_dir(base, model, tok)
                barrier()
            else:
                base = os.path.abspath(path)
            model.to(base_dtype(args, device_type))
            apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout,
                       [t for t in args.lora_targets.split(",") if t], seed=seed,
                       train_embeddings=getattr(args, "lora_train_embeddings", False))
            model.vadr_lora["base_model"] = base
    lc = lora_config(model)
    if lc is not None and is_main():
        n_ad = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        print(f"[lora] rank {lc['rank']} alpha {lc['alpha']:g} dropout {lc['dropout']:g} on "
              f"{','.join(lc['targets'])}: {n_ad:,} trainable of {n_all:,} parameters; "
              f"base {lc['base_model']}")
    return model, tok, settings


# ---- RL's reference model ------------------------------------------------------------------------

def make_reference_model(model, args, resume: bool, dist_info: dict):
    """The KL reference pi_ref of RL (Alg. 2 lines 1-2: pi_ref <- pi_theta at the start).
    With LoRA: None -- the reference is the policy itself with its adapters switched off
    (reference_policy), exactly the starting weights, with no second copy of the weights.
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
        raise RuntimeError("no reference model: beta > 0 needs a frozen copy or LoRA adapters "
                           "to switch off")
