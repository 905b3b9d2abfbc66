"""extras/scale.py -- what the two training scripts need beyond one process: FSDP2 safety and
speed, and memory estimates from a config alone.

Not part of the method. The same train_sft.py / train_rl.py serve a laptop CPU (the toy preset),
one GPU (the 7B with LoRA, extras/lora.py) and 4+ GPUs (full fine-tuning with FSDP2, the paper's
4 x 80 GB); docs/scale.md has the commands and the figures of each tier. This file holds:

  * install_vision_guard: every training forward must run the vision tower, because under FSDP2
    its sharded blocks are collectives that every rank must join;
  * rollout_weights: under FSDP2, gather the full weights once per RL step for sampling instead
    of once per decode step;
  * the memory model behind --dry-run (count_parameters, activation_memory, sequence_shapes,
    estimate_memory, dry_run) and measure_cpu_memory, which tests/test_scale.py checks it with;
  * grad_ckpt_default (gradient checkpointing on for a real model), load_policy (the weights
    with both, for train_rl.py) and add_scale_args, the flags of the LoRA and scale-out tiers.

Exercised by:
    python train_sft.py --dry-run --model tests/fixtures/qwen2.5-vl-7b --lora-rank 64
    python train_rl.py --dry-run --model tests/fixtures/qwen2.5-vl-7b --fsdp --dry-run-gpus 4
    torchrun --nproc_per_node 4 train_rl.py --model runs/sft --data Vad-Reasoning-RL.jsonl \
        --video-root ROOT --fsdp --out runs/rl          # [--no-rollout-gather]
    pytest tests/test_scale.py
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os

import torch

import grpo
import vadr
from extras import checkpoint, lora
from vadr import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, DEFAULT_SYSTEM_PROMPT, IMAGE_FACTOR,
                  SPECIAL_TOKENS, TEMPORAL_PATCH_SIZE, build_prompt, is_main, smart_resize,
                  unwrap)
from extras.toymodel import TOY_TEXT, TOY_VISION, TOY_VOCAB

# ---- every rank runs the vision tower in every training forward ---------------------------------
# Under FSDP2 every vision block is sharded: its forward all-gathers its weights, a collective
# that every rank must join. A rank whose forward skipped the vision tower would issue the
# language model's all-gathers while the others issue the vision blocks': the run hangs until
# the timeout, or silently pairs the wrong tensors. Different video SIZES on different ranks are
# fine (an all-gather moves parameters, whose shapes do not depend on the input). So the rule,
# checked before every forward of the inner Qwen2_5_VLModel: a forward that starts a sequence
# (no KV cache yet: training, scoring, the prefill of sampling) must carry a non-empty video.
# Decode steps (a KV cache is given) skip the vision tower on every rank alike, kept in lockstep
# by grpo.sample_group(sync_ranks=True). A failing rank raises, and torchrun then stops every
# rank: a clear error instead of a hang.

def _vision_guard_hook(module, args, kwargs):
    cache = kwargs.get("past_key_values")
    decoding = cache is not None and cache.get_seq_length() > 0
    pv = kwargs.get("pixel_values_videos")
    if not decoding and (pv is None or pv.numel() == 0) and kwargs.get("pixel_values") is None:
        raise RuntimeError(
            "a Qwen2.5-VL forward without video: every training/scoring forward must run the "
            "vision tower (under FSDP its sharded blocks are collectives every rank must join, "
            "or the run hangs). Pass pixel_values_videos / video_grid_thw (vadr.model_inputs).")


def install_vision_guard(model):
    """Register _vision_guard_hook on the inner Qwen2_5_VLModel (once)."""
    inner = unwrap(model).model
    if not getattr(inner, "_vadr_vision_guard", False):
        inner.register_forward_pre_hook(_vision_guard_hook, with_kwargs=True)
        inner._vadr_vision_guard = True
    return model


# ---- rollouts on gathered weights under FSDP2 ---------------------------------------------------
# FSDP2 keeps 1/N of every weight on each rank and all-gathers a layer just before its forward.
# Training does one forward per layer per step, so that is cheap. Sampling is not: every decode
# step runs every layer, so the sharded model would all-gather the whole model once per generated
# token. rollout_weights() instead all-gathers every FSDP module ONCE, keeps the full weights (in
# the compute dtype) resident for the whole sampling phase, and reshards after it: decode steps
# then run with no parameter collective. The price is one full copy of the weights per GPU on top
# of the sharded training state (estimate_memory's "rollout copy"; train_rl logs the measured size
# as rollout_copy_gb; docs/scale.md has the 7B's figures). Gradients are None during sampling, so
# the copy competes only with weights, optimizer state and the KV cache.

@contextlib.contextmanager
def rollout_weights(model, enabled: bool = True):
    """Inside: under FSDP2 every module's full weights are gathered and stay resident (no
    all-gather per decode step); outside, the model is sharded again. Without FSDP (or
    enabled=False) a no-op. Collective: every rank enters and leaves together. Yields
    dict(gathered, bytes = the size of the gathered copy measured from the unsharded parameters,
    cuda_bytes = the CUDA allocation it caused, or None on CPU)."""
    from torch.distributed.fsdp import FSDPModule

    info = dict(gathered=False, bytes=0, cuda_bytes=None)
    mods = [m for m in unwrap(model).modules() if isinstance(m, FSDPModule)]
    if not enabled or not mods:
        yield info
        return
    # Make the root's lazy init happen now (it normally happens in its first forward): it decides
    # which module is the root and sets the root's own "do not reshard after forward" flag, which
    # we are about to override and must restore exactly afterwards. (FSDP2 private state: the
    # public set_reshard_after_forward has no getter.)
    mods[0]._get_fsdp_state()._lazy_init()
    saved = []
    for m in mods:
        st = m._get_fsdp_state()
        saved.append((st, st._auto_reshard_after_forward,
                      [(g, g.post_forward_mesh_info) for g in st._fsdp_param_groups]))
        m.set_reshard_after_forward(False, recurse=False)  # forwards inside keep the weights whole
    cuda = torch.cuda.is_available() and any(p.is_cuda for p in mods[0].parameters())
    before = torch.cuda.memory_allocated() if cuda else 0
    try:
        for m in mods:  # one all-gather per FSDP module, in the same order on every rank
            m.unshard()
        # unsharded parameters are plain tensors again (sharded ones are DTensors)
        whole = [p for p in unwrap(model).parameters() if not hasattr(p, "full_tensor")]
        info.update(gathered=True, bytes=sum(p.numel() * p.element_size() for p in whole),
                    cuda_bytes=(torch.cuda.memory_allocated() - before) if cuda else None)
        yield info
    finally:
        for m in mods:
            m.reshard()
        for st, auto, groups in saved:
            st._auto_reshard_after_forward = auto
            for g, pf in groups:
                g.post_forward_mesh_info = pf


# ---- memory estimates (--dry-run) ----------------------------------------------------------------

GiB = 2 ** 30
# A dry run has no tokenizer. Qwen's BPE makes 4.02-4.08 characters a token on the P2C-CoT
# prompts and the chat template adds 15 tokens (docs/real-tokenizer.md): 4.0 keeps it a bound.
CHARS_PER_TOKEN = 4.0
TEMPLATE_TOKENS = 15
# the longest SFT answer (docs/paper-vs-authors.md s.1: 441 words) at ~1.5 tokens a word, plus tags
SFT_TARGET_TOKENS = 768
TOY_FRAME_HW = (112, 112)  # frame size of the toy world (extras.toy.generate_toy_world's default)


def is_toy_config(config) -> bool:
    tc = config.text_config
    return (tc.hidden_size == TOY_TEXT["hidden_size"]
            and tc.num_hidden_layers == TOY_TEXT["num_hidden_layers"])


def grad_ckpt_default(args, config) -> bool:
    """Whether to train with gradient checkpointing: --grad-ckpt, or on by default for a real
    (non-toy) model unless --no-grad-ckpt, because without it the activations of 28 layers x
    thousands of tokens do not fit (estimate_memory). Prints the note when it turns it on."""
    if args.grad_ckpt or is_toy_config(config) or getattr(args, "no_grad_ckpt", False):
        return bool(args.grad_ckpt)
    if is_main():
        print("[memory] gradient checkpointing on (real model; --no-grad-ckpt turns it off)")
    return True


def load_policy(path: str, args, resume: bool, corpus=None, seed: int = 0):
    """lora.load_for_training, then what both training scripts do with it -> (model, tokenizer,
    settings, save). settings: the flags the caller applies to args (a resumed LoRA run's adapter
    flags; gradient checkpointing on for a real model). The vision-tower guard is installed (every
    forward runs the vision tower: FSDP collectives). save: the checkpoint writer of this run, its
    adapters alone with LoRA, else the full weights."""
    model, tok, settings = lora.load_for_training(path, args, resume=resume, corpus=corpus,
                                                  seed=seed)
    settings = dict(settings, grad_ckpt=grad_ckpt_default(args, model.config))
    install_vision_guard(model)
    save = lora.save_lora_checkpoint if lora.lora_config(model) else checkpoint.save_checkpoint
    return model, tok, settings, save


def load_config(name_or_dir: str):
    """The Qwen2_5_VLConfig of 'toy' (no tokenizer needed: vocabulary TOY_VOCAB), of a Hugging
    Face directory (config.json alone is enough: tests/fixtures/qwen2.5-vl-7b has no weights), of
    a run directory (its latest checkpoint) or of an adapter checkpoint (its base's)."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    if name_or_dir == "toy":
        # special-token ids as train_toy_tokenizer places them (Qwen's order at the front); they
        # do not change any size. The vocabulary is the cap TOY_VOCAB (the trained tokenizer's is
        # at most that).
        ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        text = dict(TOY_TEXT, vocab_size=TOY_VOCAB, bos_token_id=ids["<|endoftext|>"],
                    eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
        return Qwen2_5_VLConfig(text_config=text, vision_config=dict(TOY_VISION),
                                tie_word_embeddings=False, image_token_id=ids["<|image_pad|>"],
                                video_token_id=ids["<|video_pad|>"],
                                vision_start_token_id=ids["<|vision_start|>"],
                                vision_end_token_id=ids["<|vision_end|>"])
    path = checkpoint.resolve_checkpoint(name_or_dir)
    if lora.is_adapter_checkpoint(path):
        return load_config(lora.read_adapter_config(path)["base_model"])
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json (pass --model toy or a Qwen2.5-VL "
                                "directory)")
    return AutoConfig.from_pretrained(path)


def count_parameters(config, adapters: dict | None = None) -> dict:
    """Exact parameter counts from a Qwen2_5_VLForConditionalGeneration built on the META device
    (no memory, no weights), optionally with adapters. Keys: total, vision, vision_blocks,
    language (embeddings + decoder layers + final norm), embed, lm_head, layer (one decoder
    layer), n_layers, root (what FSDP's root module holds: everything outside decoder layers and
    vision blocks), adapters (0 without LoRA; adapters are NOT in total)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        m = Qwen2_5_VLForConditionalGeneration(config)
    if adapters:
        lora.apply_lora(m, adapters["rank"], adapters.get("alpha"), 0.0,
                        adapters.get("targets", lora.LORA_TARGETS))
    n = lambda mod: sum(p.numel() for p in mod.parameters())
    ad = sum(p.numel() for name, p in m.named_parameters()
             if name.endswith((".lora_A", ".lora_B")))
    lm, vis = m.model.language_model, m.model.visual
    out = dict(total=n(m) - ad, vision=n(vis), vision_blocks=sum(n(b) for b in vis.blocks),
               language=n(lm) - ad, embed=n(lm.embed_tokens), lm_head=n(m.lm_head),
               n_layers=len(lm.layers), adapters=ad)
    out["layer"] = (sum(n(l) for l in lm.layers) - ad) // len(lm.layers)
    out["root"] = out["total"] - out["layer"] * out["n_layers"] - out["vision_blocks"]
    return out


def activation_memory(config, *, rows: int, seq_len: int, patches: int, keep: int, act_bytes: int,
                      grad_ckpt: bool, padded: bool, loss: str, vision_trainable: bool,
                      lora_dropout: float = 0.0, lora_targets=(), lora_rank: int = 0,
                      prompt_rows: int | None = None, prompt_len: int | None = None) -> dict:
    """Bytes of activations one training micro-batch keeps for backward, derived tensor by tensor
    from what autograd saves in transformers' Qwen2.5-VL (sdpa attention; checked against the
    toy's measured memory in tests/test_scale.py). a = act_bytes (2 for bf16 autocast, 4 for fp32
    on CPU), h = hidden, I = intermediate, kv = kv_heads * head_dim, per token of one decoder layer:
      RMSNorm x2: the fp32 input (4h; the residual itself when a = 4) + the normalised, cast x
        (a h)
      norm outputs x2 (inputs of q/k/v and gate/up): 2 a h
      attention: q after RoPE (a h), k and v (a kv each; a h each when a padding mask makes sdpa
        repeat the kv heads), sdpa output (a h) and its contiguous copy for o_proj (a h),
        logsumexp (4 heads)
      MLP (SwiGLU): gate, silu(gate), up, silu*up (4 a I)
      -> (8 + 2a + 3a) h + 2 a kv(or h) + 4 a I + 4 heads per token per layer.
    A padded batch also keeps sdpa's additive mask, one (rows, L, L) tensor in the compute dtype
    per layer (torch converts the bool mask per call). Vision blocks, per patch: the same RMSNorm
    terms, qkv input, q and k after RoPE, the qkv output (v is a view of it: 3h), sdpa output,
    proj input, MLP 4 a I_v + a h: (8 + 11 a) h + 4 a I. Final norm (4h + 2ah per token), and the
    loss: SFT keeps the fp32 log-softmax of `keep` positions (4 V each), RL keeps the
    (rows, keep, V) logits in the compute dtype (grpo._ChunkedTokenLogprobs).
    With gradient checkpointing every decoder layer / vision block keeps only its input (a h per
    token), and backward recomputes one layer at a time: + one layer's full activations at the
    peak. Shared prompt (RL scoring without checkpointing or FSDP, extras/fastpath.py; prompt_rows
    U distinct prompts of prompt_len P, rows N of T = seq_len - P completion tokens): the prompt
    pass keeps U*P tokens as above; the completion pass keeps N*T tokens without their own k, v
    (only the (P+T)-long concatenation is saved: N (P+T) 2 a h per layer, sdpa repeating the kv
    heads under the mask it always gets) plus its additive mask N T (P+T) a per layer. LoRA: the same path is kept (the adapters' A needs the inputs the base weights would
    have); dropout > 0 adds each adapted projection's dropped input and mask ((a + 1) x in) per
    token. Returns dict(held (kept at the end of forward), recompute (one layer, only with
    checkpointing), logits_peak (the loss's transient copies), and the parts)."""
    tc, vc = config.text_config, config.vision_config
    a, h, I, L = act_bytes, tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers
    heads = tc.num_attention_heads
    kv = tc.num_key_value_heads * (h // heads)
    kv_saved = h if (padded and kv != h) else kv
    tokens = rows * seq_len
    per_tok_layer = (8 + 5 * a) * h + 2 * a * kv_saved + 4 * a * I + 4 * heads   # bytes
    if lora_dropout > 0:
        ins = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h, "gate_proj": h, "up_proj": h,
               "down_proj": I}
        per_tok_layer += sum((a + 1) * ins.get(t, h) for t in lora_targets)
    if lora_rank:
        per_tok_layer += a * lora_rank * len(lora_targets)                   # x A^T per adapter
    mask_layer = rows * seq_len * seq_len * a if padded else 0               # sdpa additive mask
    layer_full = tokens * per_tok_layer + mask_layer                         # one layer, all tokens
    bool_masks = rows * seq_len * seq_len if padded else 0
    if prompt_rows is not None and not grad_ckpt:                            # shared prompt
        P, T = prompt_len, seq_len - prompt_len
        kv_c = h if kv != h else kv                                          # repeated under a mask
        per_tok_c = per_tok_layer - 2 * a * kv_saved                         # own k, v not kept
        tokens = prompt_rows * P + rows * T
        layer_full = (prompt_rows * P * per_tok_layer
                      + (prompt_rows * P * P * a if padded else 0)          # prompt pass
                      + rows * T * per_tok_c + rows * (P + T) * 2 * a * kv_c
                      + rows * T * (P + T) * a)                              # completion pass
        bool_masks = (prompt_rows * P * P if padded else 0) + rows * T * (P + T)
    hv, Iv, nb = vc.hidden_size, vc.intermediate_size, vc.depth
    per_patch_block = (8 + 11 * a) * hv + 4 * a * Iv
    if vision_trainable:
        vision = patches * hv * a * nb if grad_ckpt else patches * per_patch_block * nb
        # patch merger: RMSNorm over patches, then 2-layer MLP on merged tokens (4 hv wide)
        vision += patches * (4 + a) * hv + patches // 4 * (3 * 4 * hv) * a
    else:
        vision = 0  # frozen tower: no graph is recorded through it
    lm = tokens * h * a * L if grad_ckpt else layer_full * L
    final = tokens * (4 + 2 * a) * h                                         # final RMSNorm
    V = tc.vocab_size
    if loss == "sft":
        logits_held = rows * (keep - 1) * V * 4    # fp32 log-softmax kept by cross_entropy
        logits_peak = rows * keep * V * (a + 4)    # the logits and their fp32 copy, transient
    else:
        logits_held = rows * keep * V * a    # (rows, T+1, V) logits kept by the chunked log-prob
        logits_peak = 2 * 256 * V * 4        # one chunk of fp32 temporaries (grpo chunk=256)
    # shared by all layers: RoPE cos/sin (rows, L, head_dim) each, the bool padding mask, and the
    # vision tower's fp32 rotary cos/sin (patches, head_dim_v) each
    shared = 2 * tokens * (h // heads) * a + bool_masks
    if vision_trainable:
        shared += 2 * patches * (hv // vc.num_heads) * 4
    block_full = patches * per_patch_block if vision_trainable else 0
    held = lm + vision + final + logits_held + shared
    return dict(held=held, recompute=(max(layer_full, block_full) if grad_ckpt else 0),
                logits_peak=logits_peak, language=lm, vision=vision, final_norm=final,
                logits=logits_held, shared=shared, per_token_layer=per_tok_layer)


def sequence_shapes(args, stage: str, frame_hw: tuple[int, int] | None = None) -> dict:
    """Sequence sizes of one training micro-batch at the given settings (upper bounds for real
    data): video tokens = ceil(frames / 2) temporal patches x (h/28)(w/28) merged tokens per frame
    pair, with (h, w) = smart_resize(frame_hw) when the frame size is known (--dry-run-video-hw;
    the toy world's 112x112 -> 16), else the max_pixels bound max_pixels / 28^2 (16 frames at
    128*28*28 -> 8 x 128 = 1024); patches = 4 x that (2x2 merge); prompt text ~ len(system +
    P2C-CoT prompt) / CHARS_PER_TOKEN + TEMPLATE_TOKENS; target = SFT_TARGET_TOKENS or RL's
    --max-new-tokens. SFT rows = --batch-size, RL rows = batch x G (the update scores all G
    completions in one forward); the vision tower encodes each video once (grpo's scoring passes
    share one encoding among a video's G rows). Padding: SFT rows differ in target length when
    batch > 1; RL rows of different videos differ in prompt length unless every frame has the
    same size (a known --dry-run-video-hw, the toy world)."""
    frames = getattr(args, "frames", 16)
    max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
    if frame_hw:
        min_pixels = getattr(args, "min_pixels", DEFAULT_MIN_PIXELS)
        rh, rw = smart_resize(frame_hw[0], frame_hw[1], IMAGE_FACTOR, min_pixels, max_pixels)
        per_pair = (rh // IMAGE_FACTOR) * (rw // IMAGE_FACTOR)
    else:
        per_pair = max_pixels // IMAGE_FACTOR ** 2
    vt = math.ceil(frames / TEMPORAL_PATCH_SIZE) * per_pair
    variant = getattr(args, "prompt_variant", None) or ("binary" if stage == "rl" else "fine")
    prompt_chars = len(DEFAULT_SYSTEM_PROMPT) + len(build_prompt(variant))
    text = math.ceil(prompt_chars / CHARS_PER_TOKEN) + TEMPLATE_TOKENS
    target = args.max_new_tokens if stage == "rl" else SFT_TARGET_TOKENS
    videos = args.batch_size
    rows = videos * (args.num_generations if stage == "rl" else 1)
    padded = videos > 1 and (stage == "sft" or not frame_hw)
    return dict(video_tokens=vt, prompt_tokens=vt + text, target=target, rows=rows, videos=videos,
                seq_len=vt + text + target, patches=4 * vt * videos, keep=target + 1,
                padded=padded)


def estimate_memory(config, args, stage: str, world: int = 1, device_type: str = "cuda",
                    shapes: dict | None = None, frame_hw: tuple[int, int] | None = None) -> dict:
    """Per-GPU memory of one training step, in bytes, for `stage` 'sft' or 'rl', `world` GPUs
    (sharded when args.fsdp), LoRA when args.lora_rank. Every line states its formula (P = all
    parameters, T = trainable ones, N = world size when sharded by FSDP, else 1):
      weights      full: fp32 master weights 4P/N (FSDP2 keeps fp32 shards and casts to bf16 per
                   layer, so there is no separate "master copy"); LoRA: frozen base b*P/N (b = 2
                   for the bf16 base on GPU, 4 on CPU) + fp32 adapters 4T/N
      gradients    fp32, 4T/N
      optimizer    AdamW exp_avg + exp_avg_sq, fp32: 8T/N
      reference    RL with beta > 0: the frozen fp32 copy 4P/N; 0 with LoRA (adapters switched off)
      rollout copy RL under FSDP with the gather (rollout_weights): the full weights in the compute
                   dtype, c*P, NOT divided by N; 0 without FSDP (the weights are whole already)
      KV cache     RL sampling: layers x 2 (k, v) x kv_heads x head_dim x c x rows x (prompt + T)
      compute copies  no FSDP, full fine-tuning on GPU: autocast caches a bf16 copy of every
                   trainable fp32 weight for the whole forward+backward, 2T; FSDP: the root
                   module's gathered weights, and gradients when trainable (embeddings, lm_head,
                   ...: kept from forward to the end of backward) c P_root + c P_root_trainable,
                   two gathered layers (current + prefetched; one in a 1-layer model) 2 c P_layer, one layer's unsharded
                   fp32 gradients 4 T_layer
      activations  activation_memory(): held for backward + max(one recomputed layer, the loss's
                   transient logits copies)
    Peak = weights + optimizer + reference
           + max(rollout phase: rollout copy + KV cache,
                 update phase: gradients + compute copies + activations)
    (gradients are freed before sampling; the rollout copy is freed before the update). Not
    counted: the CUDA context and allocator fragmentation (docs/scale.md)."""
    rl = stage == "rl"
    fsdp = bool(getattr(args, "fsdp", False)) and world > 1
    shard = world if fsdp else 1
    cuda = device_type == "cuda"
    c = 2 if cuda else 4                            # compute dtype bytes (bf16 / fp32)
    adapters = None
    if getattr(args, "lora_rank", None):
        targets = getattr(args, "lora_targets", ",".join(lora.LORA_TARGETS))
        adapters = dict(rank=args.lora_rank, alpha=getattr(args, "lora_alpha", None),
                        targets=[t for t in targets.split(",") if t])
    pc = count_parameters(config, adapters)
    P = pc["total"]
    if adapters:  # + the fp32 embeddings and lm_head with --lora-train-embeddings
        tied = getattr(config, "tie_word_embeddings", False)
        E = (pc["embed"] + (0 if tied else pc["lm_head"])
             if getattr(args, "lora_train_embeddings", False) else 0)  # fp32, trained in full
        T = pc["adapters"] + E
        base_b = 2 if lora.base_dtype(args, device_type) == torch.bfloat16 else 4
        weights = (base_b * (P - E) + 4 * T) / shard
    else:
        T = P - (pc["vision"] if getattr(args, "freeze_vision", False) else 0)
        weights = 4 * P / shard
    grads, optim = 4 * T / shard, 8 * T / shard
    beta = getattr(args, "beta", 0.0) or 0.0
    reference = 4 * P / shard if (rl and beta > 0 and not adapters) else 0
    gather = rl and fsdp and not getattr(args, "no_rollout_gather", False)
    rollout_copy = c * (P + (T if adapters else 0)) if gather else 0
    if fsdp:
        root_trainable = 0 if adapters else pc["root"]
        layer_trainable = T / pc["n_layers"] if adapters else pc["layer"]
        # the current layer and the prefetched next one: a model of one decoder layer has no next
        compute_copies = (c * (pc["root"] + root_trainable) + min(2, pc["n_layers"]) * c * pc["layer"]
                          + 4 * layer_trainable)
    else:
        # autocast's cached bf16 copies of the trainable fp32 weights
        compute_copies = 2 * T if cuda else 0
    sh = shapes or sequence_shapes(args, stage, frame_hw)
    tc = config.text_config
    head_dim = tc.hidden_size // tc.num_attention_heads
    kv_cache = (tc.num_hidden_layers * 2 * tc.num_key_value_heads * head_dim
                * c * sh["rows"] * sh["seq_len"]) if rl else 0
    grad_ckpt = bool(getattr(args, "grad_ckpt", False))
    share = rl and not grad_ckpt and not fsdp and sh.get("videos", sh["rows"]) < sh["rows"]
    act = activation_memory(
        config, rows=sh["rows"], seq_len=sh["seq_len"], patches=sh["patches"], keep=sh["keep"],
        act_bytes=c, grad_ckpt=grad_ckpt, padded=sh["padded"], loss=stage,
        vision_trainable=not adapters and not getattr(args, "freeze_vision", False),
        lora_dropout=(getattr(args, "lora_dropout", 0.0) or 0.0) if adapters else 0.0,
        lora_targets=adapters["targets"] if adapters else (),
        lora_rank=adapters["rank"] if adapters else 0,
        prompt_rows=sh["videos"] if share else None, prompt_len=sh.get("prompt_tokens"))
    # the loss's transient logits copies live at the end of forward / start of backward, the
    # recomputed layer later in backward: the two peaks do not add up
    activations = act["held"] + max(act["recompute"], act["logits_peak"])
    persistent = weights + optim + reference
    rollout_phase = rollout_copy + kv_cache
    update_phase = grads + compute_copies + activations
    return dict(params=pc, trainable=T, world=world, fsdp=fsdp, lora=adapters, compute_bytes=c,
                shapes=sh, device_type=device_type, grad_ckpt=grad_ckpt, weights=weights,
                gradients=grads, optimizer=optim, reference=reference, rollout_copy=rollout_copy,
                kv_cache=kv_cache, compute_copies=compute_copies, activations=activations,
                activation_parts=act, rollout_phase=rollout_phase, update_phase=update_phase,
                peak=persistent + max(rollout_phase, update_phase),
                peak_phase="rollout" if rollout_phase > update_phase else "update")


def format_memory_report(est: dict, stage: str, model_name: str) -> str:
    pc, sh = est["params"], est["shapes"]
    scale, su = (GiB, "GiB") if est["peak"] >= 2 * GiB else (2 ** 20, "MiB")  # the toy reads in MiB
    g = lambda b: f"{b / scale:8.2f} {su}"
    unit = "GPU" if est["device_type"] == "cuda" else "CPU process"
    if est["fsdp"]:
        par = f"FSDP2 over {est['world']} {unit}s"
    elif est["world"] > 1:
        par = f"DDP over {est['world']} {unit}s (full replicas)"
    else:
        par = f"1 {unit}"
    if est["lora"]:
        mode = f"LoRA rank {est['lora']['rank']} on {','.join(est['lora']['targets'])}"
    else:
        mode = "full fine-tuning"
    act = est["activation_parts"]
    lines = [
        f"model {model_name}: Qwen2_5_VLForConditionalGeneration built on the meta device "
        "(no weights)",
        f"parameters {pc['total']:,} = vision {pc['vision']:,} + language model "
        f"{pc['language']:,} ({pc['n_layers']} layers x {pc['layer']:,}, embeddings "
        f"{pc['embed']:,}) + lm_head {pc['lm_head']:,}",
        f"trainable {est['trainable']:,} ({mode}); FSDP root group {pc['root']:,}",
        f"setting: {stage}, {par}, compute {'bf16' if est['compute_bytes'] == 2 else 'fp32'}, "
        f"gradient checkpointing {'on' if est['grad_ckpt'] else 'off'}; micro-batch of "
        f"{sh['videos']} video(s) = {sh['rows']} rows (RL: x G), {sh['video_tokens']} video "
        f"tokens + {sh['prompt_tokens'] - sh['video_tokens']} prompt text + {sh['target']} "
        f"target tokens per row, {sh['patches']} vision patches",
        f"per-{unit} memory (estimate; formulas in extras/scale.py estimate_memory):",
        f"  weights              {g(est['weights'])}",
        f"  gradients            {g(est['gradients'])}",
        f"  optimizer (AdamW)    {g(est['optimizer'])}",
        f"  reference model      {g(est['reference'])}",
        f"  rollout copy         {g(est['rollout_copy'])}",
        f"  KV cache (sampling)  {g(est['kv_cache'])}",
        f"  compute copies       {g(est['compute_copies'])}",
        f"  activations          {g(est['activations'])}  (held {act['held'] / scale:.2f}"
        f" + max(recompute {act['recompute'] / scale:.2f}, loss logits "
        f"{act['logits_peak'] / scale:.2f}))",
        f"  peak                 {g(est['peak'])}  ({est['peak_phase']} phase"
        + ("; + CUDA context ~0.5 GiB and fragmentation)" if unit == "GPU"
           else "; + the Python process itself)"),
    ]
    return "\n".join(lines)


def dry_run_settings(args, config, paper_preset: dict | None = None) -> dict:
    """The flags a dry run plans with instead of the parsed ones: train_rl picks its preset from
    --data, which a dry run lacks, so a real model gets the paper preset's values for the flags
    the toy preset filled; and gradient checkpointing as a training run would decide it."""
    settings = {}
    if paper_preset and not is_toy_config(config) and "preset" not in args.flags_given:
        for item in getattr(args, "preset_filled", []):
            k = item.split("=", 1)[0]
            if k in paper_preset:
                settings[k] = paper_preset[k]
    if not is_toy_config(config) and not getattr(args, "no_grad_ckpt", False):
        settings["grad_ckpt"] = True
    return settings


def dry_run(args, stage: str, paper_preset: dict | None = None) -> dict:
    """--dry-run: config alone -> parameter counts and the per-GPU estimate, printed; nothing is
    loaded, no process group is started. Planned GPUs: --dry-run-gpus, else WORLD_SIZE, else 1.
    Plans with args updated by dry_run_settings (args itself is left as it is); returns
    estimate_memory's dict plus settings = what the dry run assumed."""
    config = load_config(args.model)
    settings = dry_run_settings(args, config, paper_preset)
    planned = argparse.Namespace(**{**vars(args), **settings})
    world = planned.dry_run_gpus or int(os.environ.get("WORLD_SIZE", 1))
    device_type = torch.device(planned.device).type if getattr(planned, "device", None) else "cuda"
    hw = planned.dry_run_video_hw
    if hw:
        try:
            hw = tuple(int(v) for v in hw.lower().replace("x", ",").split(","))
            assert len(hw) == 2 and min(hw) > 0
        except (ValueError, AssertionError):
            raise SystemExit(f"--dry-run-video-hw {planned.dry_run_video_hw!r}: expected "
                             "HEIGHT,WIDTH such as 240,320")
    elif is_toy_config(config):
        hw = TOY_FRAME_HW
    est = estimate_memory(config, planned, stage, world=world, device_type=device_type,
                          frame_hw=hw)
    print(format_memory_report(est, stage, planned.model))
    return dict(est, settings=settings)


def measure_cpu_memory(fn) -> dict:
    """Run fn(mark) under torch.profiler(profile_memory=True) and follow the CPU allocator's
    running total: dict(held = bytes allocated (net) when fn calls mark(), e.g. right after the
    forward, i.e. what the forward left for backward; peak = the highest net allocation during
    fn; end = the net at its end), all relative to the start. The CPU stand-in for
    torch.cuda.max_memory_allocated that tests/test_scale.py checks the estimates against."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    MARK = 7_777_777  # a (freed at once) allocation of this many bytes marks the point in the trace

    def mark():
        torch.empty(MARK, dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(mark)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:  # allocator records live in the trace
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    recs = sorted((e for e in trace["traceEvents"] if e.get("name") == "[memory]"),
                  key=lambda e: e["ts"])
    net = peak = 0
    held = None
    for e in recs:  # in time order
        b = e["args"]["Bytes"]
        if abs(b) == MARK:  # the marker itself counts neither in the net nor in the peak
            held = net if held is None else held
            continue
        net += b
        peak = max(peak, net)
    return dict(held=held, peak=peak, end=net)


# ---- what a step used: the log keys mem_peak_gb and time_data (docs/log-keys.md) --------------

def resident_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory from /proc/self/status (VmRSS now, VmHWM its high-water
    mark), bytes; 0 where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return 0


def memory_baseline() -> int:
    """The resident bytes mem_peak_gb is measured above: this process before its model is loaded,
    with transformers' lazily imported Qwen2.5-VL modules already in (about 0.14 GiB that would
    otherwise count as the step's)."""
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401 (the lazy import)
    return resident_bytes()


def reset_peak_memory(device: torch.device):
    """Start a new peak: torch's allocator statistics on CUDA; on CPU the kernel's resident
    high-water mark (writing 5 to /proc/self/clear_refs resets VmHWM, Linux >= 4.0)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_gb(device: torch.device, baseline: int) -> float:
    """GiB at the peak since reset_peak_memory: on CUDA torch.cuda.max_memory_allocated (tensors
    only, as the memory model counts them); on CPU the resident high-water mark above `baseline`
    (the process's resident memory before the model was loaded: Python, torch, transformers), so
    it also holds the tokenizer, decoded videos and what the C allocator keeps after a free."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GiB
    return max(0, resident_bytes("VmHWM") - baseline) / GiB


# ---- flags ---------------------------------------------------------------------------------------

def add_scale_args(ap: argparse.ArgumentParser):
    """The LoRA and scale-out flags both training scripts share; returns the group, into which
    each script adds its own: train_sft.py's --lora-train-embeddings (not RL's: its pi_ref is the
    policy with its adapters off, so the embeddings stay as SFT left them), train_rl.py's
    --no-rollout-gather and --plain-scoring."""
    g = ap.add_argument_group("LoRA, scale-out and memory (docs/scale.md)")
    g.add_argument("--lora-rank", type=int, default=None,
                   help="train rank-R LoRA adapters on the language model's projections instead "
                        "of all weights (the one-GPU tier; vision tower frozen). Default: off "
                        "(full fine-tuning)")
    g.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA scale numerator: update = (alpha / R) B A (default 2R)")
    g.add_argument("--lora-dropout", type=float, default=0.0,
                   help="dropout on the adapter path's input (default 0: no extra activation "
                        "memory)")
    g.add_argument("--lora-targets", default=",".join(lora.LORA_TARGETS),
                   help="comma-separated nn.Linear names inside the language model to adapt")
    g.add_argument("--lora-base-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="dtype of the frozen base weights under LoRA (auto: bf16 on GPU, fp32 "
                        "on CPU)")
    g.add_argument("--merge", default=None, metavar="CKPT",
                   help="fold a LoRA checkpoint's adapters into its base, write it to a new --out")
    g.add_argument("--dry-run", action="store_true",
                   help="print parameter counts and the per-GPU memory estimate at these "
                        "settings from the --model config alone (meta device), and exit")
    g.add_argument("--dry-run-gpus", type=int, default=None,
                   help="GPUs the dry run plans for, sharded with --fsdp (default: WORLD_SIZE, 1)")
    g.add_argument("--dry-run-video-hw", default=None, metavar="H,W",
                   help="frame size the dry run assumes (default: the --max-pixels bound for a "
                        "real model, 112,112 for the toy)")
    g.add_argument("--no-grad-ckpt", action="store_true",
                   help="no gradient checkpointing for a real model (default there: on)")
    return g


def sample_idle(model, tok, row: dict, prompt: str, args, device, sample_kw: dict):
    """Under FSDP every forward is a collective: a rank whose verification trims were all empty
    still runs the sampling loop, on its untrimmed first video, and throws the result away (its
    rewards stay 0), so that the other ranks' second pass does not hang."""
    vid = vadr.encode_video(row["video_path"], **vadr.video_args(args))
    dummy = {**vadr.build_chat_inputs(tok, [prompt], vid["video_grid_thw"]), **vid}
    grpo.sample_group(model, vadr.to_device(dummy, device), num_samples=1, **sample_kw)
