"""extras/bench.py -- what AVA-GRPO's rollouts, scoring and SFT cost: the usual video-GRPO code vs
this project's paths (grpo.sample_group, grpo.rl_step with extras/fastpath.py's scorer,
vadr.sft_loss_sum), side by side.

What. One process runs a naive baseline and our path on the same model, inputs and seeds,
INTERLEAVED (a short warm-up of each, then `--repeats` naive/ours pairs whose order alternates; the
median of each side is reported), prints every metric with the ratio ours / naive, and with --json
writes the numbers (keys rollout_speedup, rl_step_speedup, scoring_memory_ratio, device, ...).

  section       naive (the usual video-GRPO code)              ours (this project)
  rollout       HF generate(num_return_sequences=G): vision    grpo.sample_group: vision +
                tower and prompt prefill G times, on G copies   prefill once per video, KV cache
                of the video                                    copied to the G samples
  verification  G generate calls, one per trimmed video         one batched sample_group call
                (Algorithm 1)
  scoring       one forward over the G-expanded inputs with     fastpath.completion_logprobs:
                logits for every position, full-vocabulary      the prompt once per group (its KV
                log_softmax, gather (reference and policy)      cache copied to the G rows),
                                                                logits for the completion only,
                                                                chunked log-softmax, in-place
                                                                backward
  rl_step       grpo.rl_step with the three naive parts         grpo.rl_step as train_rl.py
                swapped in (naive_hooks)                        runs it
  sft           forward with logits for the whole sequence      vadr.sft_loss_sum
                + HF loss                                       (logits_to_keep)

Why. The paper names inference speed as Vad-R1's main limitation: its RL stage took 26 hours on 4
A100s for one epoch of 6448 videos, about 58 s per step of 4 videos, mostly rollout (G = 4
completions plus G verification completions per video, each up to 768 tokens, over ~800 video
tokens). The measured numbers are in docs/performance.md.

Commands (from the repository root):
    python -m extras.bench                              # CPU, toy preset; prints the table
    python -m extras.bench --json runs/bench_cpu.json   # ... and writes the numbers
    python -m extras.bench --sections scoring           # the scoring-memory accounting alone
    python -m extras.bench --device cuda --json runs/bench_gpu.json
        # GPU: a randomly initialised model of the real Qwen2.5-VL-7B shape (built on the meta
        # device, then to_empty on cuda in bf16; no weights needed) at the paper's settings: 16
        # frames of at most 128*28*28 pixels, G = 4, 768 new tokens forced by ignoring EOS. Under a
        # 10-minute limit per command, split it: --sections rollout,verification,scoring, then
        # --sections rl_step,sft

How it is measured.
  * Inputs: one rendered toy clip (extras.toy.render_toy_video, 64 frames of 360 x 640, written as
    H.264 and read back with vadr.encode_video like training does): 16 frames resized to 224 x 420
    = 960 video tokens (the paper: ~800), the RL prompt (vadr.build_prompt('binary')). Completions
    are forced to the full length (sample_group(ignore_eos=True) / generate(min_new_tokens=...)):
    a random model would otherwise stop at random places, and the paper's rollouts are long.
  * Sampling settings are the authors' (docs/paper-vs-authors.md s.2): temperature 1.0, top_p
    0.95, vision placeholders suppressed (suppress_tokens for generate), top_k off, no repetition
    penalty.
  * CPU: torch runs with --threads intra-op threads (default 1): on a shared machine, threads that
    wait on each other make the timings slower and noisier (docs/performance.md); ratios are what
    matter and both sides run under the same setting.
  * Scoring peak memory is counted at the REAL vocabulary (152064) for G x 768 completion tokens by
    accounting tensor allocations (TensorMemory: a TorchDispatchMode adds the bytes of every
    storage an operator creates and subtracts them when it is freed) under FakeTensorMode, so
    nothing is really allocated (the count equals the one on real tensors: tests/test_fastpath.py).
    The computation is the log-probs from a linear lm_head (hidden 256 -> 152064) over random
    hidden states, forward without grad (reference) and forward + backward (policy): naive =
    log_softmax(logits.float()).gather(...); ours = fastpath._ChunkedTokenLogprobs, what
    completion_logprobs applies to the model's logits. Inputs and weights are excluded (both sides
    hold them); the lm_head's logits are included (both sides produce them). On GPU the section
    also runs the real 7B-shaped reference + policy passes under torch.cuda.max_memory_allocated.
  * GPU extras: peak memory (torch.cuda.max_memory_allocated above what was allocated before the
    call) and model FLOPs utilisation = useful model FLOPs / (time x peak bf16 FLOP/s), where
    useful FLOPs count the matmuls and attention of the work itself once (vision tower once per
    video in a rollout, the lm_head only where logits are needed; in scoring, every row's prompt,
    which the shared-prompt pass runs once per group), so the naive side's repeated work lowers its
    MFU, and ours can read above the hardware's true utilisation in scoring. Attention inside the
    vision tower's 112-pixel windows is left out.
  * RL step on GPU: SGD instead of AdamW (lr 1e-6; AdamW's two bf16 states would not fit beside the
    policy, the reference and the gradients on 80 GB) and gradient checkpointing (as the
    authors); on CPU AdamW.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import weakref

import numpy as np
import torch

import grpo
import rewards
import vadr
from extras import cli, fastpath, rollout, toy, toymodel, training

# Qwen2.5-VL-7B-Instruct's shape (its config.json); weights are random, only the cost matters.
QWEN7B_TEXT = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                   intermediate_size=18944, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
                   rope_parameters=dict(rope_type="default", rope_theta=1000000.0, mrope_section=[16, 24, 24]))
QWEN7B_VISION = dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=3584,
                     patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                     fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
REAL_VOCAB = 152064
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12}
VIDEO_SIZE = (360, 640)        # 16:9; smart_resize at 128*28*28 pixels -> 224 x 420 -> 960 video tokens
VIDEO_FRAMES = 64              # frames in the clip (16 are sampled, as the paper)
# Algorithm 1 removes the predicted window or [0, 0.3] / [0.7, 1]: G kept-window sets of that kind
VERIFICATION_KEEPS = [[(0.3, 1.0)], [(0.0, 0.7)], [(0.0, 0.25), (0.6, 1.0)], [(0.3, 1.0)]]
SECTIONS = ("rollout", "verification", "scoring", "rl_step", "sft")


# ================================================================================================
# Models and inputs
# ================================================================================================

def qwen7b_config(tok, text: dict | None = None, vision: dict | None = None):
    """Qwen2_5_VLConfig of the real 7B shape (text/vision override entries, for tests), with the
    special-token ids of `tok` (the toy tokenizer: no Qwen tokenizer is needed or downloaded)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in vadr.SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(QWEN7B_TEXT, **(text or {}), bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(QWEN7B_VISION, **(vision or {})), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def random_model(config, tok, device, dtype, seed: int = 0, std: float = 0.02):
    """A randomly initialised Qwen2_5_VLForConditionalGeneration built on the meta device and then
    materialised with to_empty on `device` in `dtype`: no CPU initialisation of 8B parameters.
    to_empty leaves memory uninitialised, so every parameter is set here (normal(0, std) matrices,
    zero biases, unit norm weights) and the rotary inverse-frequency buffers are recomputed (fp32, as
    from_pretrained keeps them) from fresh rotary modules."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # parameters in dtype; rotary buffers are created as float32
    try:
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std, generator=gen)                 # linear, embedding, conv3d patch embed
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)                                       # RMSNorm / LayerNorm weights
        for mod in model.modules():
            if "RotaryEmbedding" in type(mod).__name__ and hasattr(mod, "inv_freq"):
                fresh = type(mod)(mod.config)                      # on CPU, float32, correct values
                for bname, buf in fresh.named_buffers(recurse=False):
                    getattr(mod, bname).copy_(buf)
    model.generation_config.eos_token_id = vadr.end_token_ids(tok)
    model.generation_config.pad_token_id = vadr.pad_token_id(tok)
    model.generation_config.bos_token_id = vadr.pad_token_id(tok)
    return model.eval()


def make_clip(out_dir: str, seed: int = 0, size=VIDEO_SIZE, n_frames: int = VIDEO_FRAMES) -> dict:
    """Render one toy clip with an event, write it as H.264, and return dict(path, target): target is
    its P2C-CoT text (think + '\\n' + answer: the SFT target, and the toy tokenizer's corpus)."""
    frames, meta = toy.render_toy_video(seed, category="Fighting", size=size, frames=n_frames)
    path = os.path.join(out_dir, "bench_clip.mp4")
    toy.write_video(path, frames, fps=meta["fps"])
    think, answer = toy.toy_texts(meta, np.random.default_rng(seed))
    return dict(path=path, target=think + "\n" + answer)


def prompt_batch(tok, videos: list[dict], prompt: str, device, targets=None) -> dict:
    """build_chat_inputs + collate_videos on `device` (LEFT-padded, mm_token_type_ids always present)."""
    vids = vadr.collate_videos(videos)
    chat = vadr.build_chat_inputs(tok, [prompt] * len(videos), vids["video_grid_thw"], targets=targets)
    return vadr.to_device({**chat, **vids}, device)


def single_row(inputs: dict, b: int) -> dict:
    """Row b of a left-padded batch as its own unpadded batch of one (its video's patches only)."""
    keep = inputs["attention_mask"][b].bool()
    n_patch = inputs["video_grid_thw"].prod(-1).tolist()
    start = sum(n_patch[:b])
    return dict(input_ids=inputs["input_ids"][b:b + 1, keep], attention_mask=inputs["attention_mask"][b:b + 1, keep],
                mm_token_type_ids=inputs["mm_token_type_ids"][b:b + 1, keep],
                pixel_values_videos=inputs["pixel_values_videos"][start:start + n_patch[b]],
                video_grid_thw=inputs["video_grid_thw"][b:b + 1],
                second_per_grid_ts=inputs["second_per_grid_ts"][b:b + 1])


# ================================================================================================
# The naive baseline: what the usual video-GRPO code does
# ================================================================================================

def hf_generate(model, inputs: dict, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                greedy: bool = False, end_ids=(), pad_id: int = 0, ignore_eos: bool = False,
                suppress_vision: bool = True) -> torch.Tensor:
    """HF generate(num_return_sequences=n) with sample_group's settings -> completion ids (B*n, T')."""
    inner = vadr.unwrap(model)
    kw = dict(max_new_tokens=max_new_tokens, num_return_sequences=n, eos_token_id=list(end_ids),
              pad_token_id=pad_id, do_sample=not greedy, top_k=0, repetition_penalty=1.0)
    if not greedy:
        kw.update(temperature=temperature, top_p=top_p)
    if ignore_eos:
        kw["min_new_tokens"] = max_new_tokens       # the end ids get -inf until max_new_tokens: forced length
    if suppress_vision:
        kw["suppress_tokens"] = grpo.vision_token_ids(inner.config)
    out = inner.generate(**vadr.model_inputs(inputs), **kw)      # (B*n, P + T')
    return out[:, inputs["input_ids"].shape[1]:]


def naive_sample_group(model, inputs: dict, num_samples: int = 1, max_new_tokens: int = 768,
                       temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, end_ids=(),
                       pad_id: int = 0, generator: torch.Generator | None = None, ignore_eos: bool = False,
                       suppress_vision: bool = True, sync_ranks: bool = False, stop=None) -> dict:
    """grpo.sample_group's contract done the naive way (swapped into grpo.rl_step by naive_hooks):
    a group is generate(num_return_sequences=G) (vision tower and prefill G times); a batch of single
    samples (the verification pass) is one generate call per video. HF samples from the global RNG,
    which is seeded from `generator`. stop is ignored: the naive verification decodes to the end."""
    if generator is not None:
        torch.manual_seed(generator.initial_seed())
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
              end_ids=end_ids, pad_id=pad_id, ignore_eos=ignore_eos, suppress_vision=suppress_vision)
    B = inputs["input_ids"].shape[0]
    if num_samples == 1 and B > 1:
        parts = [hf_generate(model, single_row(inputs, b), 1, **kw) for b in range(B)]
        ids = torch.full((B, max(p.shape[1] for p in parts)), pad_id, dtype=torch.long,
                         device=inputs["input_ids"].device)
        for b, p in enumerate(parts):
            ids[b, :p.shape[1]] = p[0]
    else:
        ids = hf_generate(model, inputs, num_samples, **kw)
    mask = torch.ones_like(ids, dtype=torch.float32) if ignore_eos else grpo.completion_mask(ids, end_ids, pad_id)
    return dict(completion_ids=ids, completion_mask=mask)


def naive_logprobs(model, inputs: dict, completion_ids: torch.Tensor, temperature: float = 1.0,
                   chunk: int | None = None, pad_id: int | None = None) -> torch.Tensor:
    """completion_logprobs' contract done the naive way: logits for EVERY position of prompt +
    completion, a full-vocabulary float32 log_softmax, then gather."""
    N, T = completion_ids.shape
    P = inputs["input_ids"].shape[1]
    inner = vadr.unwrap(model)
    pad = vadr.unwrap(model).generation_config.pad_token_id if pad_id is None else pad_id
    pad = int(pad[0] if isinstance(pad, (list, tuple)) else (pad or 0))
    vis = torch.as_tensor(grpo.vision_token_ids(inner.config), device=completion_ids.device)
    comp = completion_ids.masked_fill(torch.isin(completion_ids, vis), pad)
    out = model(input_ids=torch.cat([inputs["input_ids"], comp], 1),
                attention_mask=torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(N, T)], 1),
                mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"],
                                             inputs["mm_token_type_ids"].new_zeros(N, T)], 1),
                pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                second_per_grid_ts=inputs["second_per_grid_ts"], use_cache=False)
    logits = out.logits[:, P - 1:P + T - 1]                                            # (N, T, V) of (N, P+T, V)
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, completion_ids[..., None]).squeeze(-1)


def naive_hooks(hooks: grpo.StepHooks) -> grpo.StepHooks:
    """grpo.rl_step's hooks with the naive rollout, verification and scoring swapped in (same
    rewards, same loss, same update): the RL step of the usual video-GRPO code."""
    return dataclasses.replace(hooks, sample=naive_sample_group, score=naive_logprobs)


# ================================================================================================
# Timing, memory and FLOPs
# ================================================================================================

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device) -> tuple[float, float, int | None, object]:
    """Run fn once -> (wall seconds, process CPU seconds, peak CUDA bytes above the start or None on
    CPU, fn's result). CPU seconds: on a shared CPU machine the wall time also counts the time other
    processes held the cores; the process's own CPU time (one intra-op thread) is the work done."""
    _sync(device)
    base = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn()
    _sync(device)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    peak = torch.cuda.max_memory_allocated(device) - base if base is not None else None
    return dt, dc, peak, res


def interleaved(naive, ours, repeats: int, device, warmup=None) -> dict:
    """Warm up (warmup = (naive_short, ours_short) callables, or skip), then `repeats` naive/ours pairs
    whose order alternates (so a drift in machine load hits both). -> {side: dict(time (median wall s),
    cpu_time (median process CPU s), times, peak (max bytes or None), results)}."""
    if warmup is not None:
        for fn in warmup:
            fn()
    rec = {"naive": [], "ours": []}
    for i in range(repeats):
        order = [("naive", naive), ("ours", ours)]
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            rec[name].append(measure(fn, device))
    out = {}
    for name, runs in rec.items():
        peaks = [r[2] for r in runs if r[2] is not None]
        out[name] = dict(time=statistics.median(r[0] for r in runs), cpu_time=statistics.median(r[1] for r in runs),
                         times=[round(r[0], 4) for r in runs], cpu_times=[round(r[1], 4) for r in runs],
                         peak=max(peaks) if peaks else None, results=[r[3] for r in runs])
    return out


def text_flops(cfg, n_tokens: int, attn_pairs: float, lm_positions: int) -> float:
    """Forward FLOPs of the language model: matmuls of n_tokens tokens, attention over attn_pairs
    (query, key) pairs, lm_head on lm_positions positions."""
    t = cfg.get_text_config()
    h, L, i, V = t.hidden_size, t.num_hidden_layers, t.intermediate_size, t.vocab_size
    kvd = t.num_key_value_heads * (h // t.num_attention_heads)
    per_token = 2 * L * (2 * h * h + 2 * h * kvd + 3 * h * i)   # q, o; k, v; gated MLP
    return per_token * n_tokens + 2 * 2 * L * h * attn_pairs + 2 * h * V * lm_positions


def vision_flops(cfg, n_patches: int) -> float:
    """Forward FLOPs of the vision tower (patch embed, blocks' matmuls, 2x2 merger; windowed attention left out)."""
    v = cfg.vision_config
    hv, iv, m = v.hidden_size, v.intermediate_size, v.spatial_merge_size ** 2
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
    return (2 * n_patches * patch_in * hv + 2 * n_patches * v.depth * (4 * hv * hv + 3 * hv * iv)
            + 2 * (n_patches // m) * ((m * hv) ** 2 + m * hv * v.out_hidden_size))


def rollout_flops(cfg, n_patches: int, P: int, n_rows: int, T: int) -> float:
    """Useful FLOPs of sampling T tokens for n_rows rows over one prefill of a P-token prompt per video
    (counted once per video: what the work needs, whoever repeats it)."""
    n_videos = 1
    f = n_videos * (vision_flops(cfg, n_patches) + text_flops(cfg, P, P * (P + 1) / 2, 1))
    for t in range(T - 1):
        f += text_flops(cfg, n_rows, n_rows * (P + t + 1), n_rows)
    return f


def scoring_flops(cfg, n_patches: int, P: int, N: int, T: int, passes: float) -> float:
    """FLOPs of `passes` forward-equivalents (reference 1, policy forward + backward 3) over N rows of
    prompt + completion, logits only for the completion."""
    L = P + T
    one = N * vision_flops(cfg, n_patches) + text_flops(cfg, N * L, N * L * (L + 1) / 2, N * (T + 1))
    return passes * one


def peak_flops(device, override_tflops: float | None) -> float | None:
    """Peak dense bf16 FLOP/s of the GPU (table above), or --peak-tflops (also on CPU, for tests)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ---------------------------------------------------------------- scoring memory (tensor accounting)

class TensorMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracemalloc for tensors: every storage an operator creates adds its bytes to `current` (and to
    `peak` if higher); it is subtracted when the storage is freed (weakref callback). Storages that
    existed before (inputs, weights) and views of them are never counted. Works on real tensors and
    under FakeTensorMode (the same numbers, no memory used)."""

    def __init__(self):
        super().__init__()
        self.current, self.peak, self._live = 0, 0, {}

    def _track(self, st, nbytes: int):
        key = id(st)
        ref = self._live.get(key)
        if ref is not None and ref() is st:
            return False
        self._live[key] = weakref.ref(st, lambda _, k=key, n=nbytes: self._free(k, n))
        return True

    def _free(self, key, nbytes):
        self.current -= nbytes
        self._live.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_flatten
        for t in tree_flatten((args, kwargs))[0]:           # pre-existing storages: seen, 0 bytes
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage(), 0)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                n = st.nbytes()
                if self._track(st, n):
                    self.current += n
                    self.peak = max(self.peak, self.current)
        return out


def naive_head_logprobs(h, W, tok, temperature=1.0):
    """Naive scoring on a linear lm_head: logits (N, T, V), full log_softmax, gather."""
    logits = h @ W.T                                                             # (N, T, V)
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, tok[..., None]).squeeze(-1)


def ours_head_logprobs(h, W, tok, temperature=1.0, chunk=256):
    """Ours on the same head: the model's kept logits (N, T+1, V) -> fastpath._ChunkedTokenLogprobs, the
    function completion_logprobs applies to out.logits."""
    logits = torch.cat([h, h[:, -1:]], 1) @ W.T                                   # (N, T+1, V)
    return fastpath._ChunkedTokenLogprobs.apply(logits, tok, temperature, chunk)


def scoring_memory(N: int = 4, T: int = 768, V: int = REAL_VOCAB, H: int = 256, fake: bool = True,
                   chunk: int = 256) -> dict:
    """Peak bytes of the log-prob computation, naive vs ours: 'ref' = forward without grad, 'policy' =
    forward + backward (to the head's weight and the hidden states). fake=True: under FakeTensorMode
    (no memory used); False: real tensors (for checking the accounting)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    res = {}
    with (FakeTensorMode() if fake else contextlib.nullcontext()):
        g = None if fake else torch.Generator().manual_seed(0)
        h = torch.randn(N, T, H, generator=g).requires_grad_()
        W = torch.randn(V, H, generator=g).requires_grad_()
        tok = torch.randint(0, V, (N, T), generator=g)
        for name, fn in (("naive", naive_head_logprobs),
                         ("ours", lambda a, b, c: ours_head_logprobs(a, b, c, chunk=chunk))):
            acc = TensorMemory()
            with acc, torch.no_grad():
                lp = fn(h, W, tok)
            del lp
            res[f"{name}_ref"] = acc.peak
            acc = TensorMemory()
            with acc:
                lp = fn(h, W, tok)
                lp.sum().backward()
            del lp
            res[f"{name}_policy"] = acc.peak
            h.grad = W.grad = None
    res["logits_bytes"] = N * T * V * 4
    res.update(N=N, T=T, V=V, H=H, chunk=chunk, fake=fake)
    return res


# ================================================================================================
# Sections
# ================================================================================================

def section_rollout(ctx) -> dict:
    a, model, tok, dev = ctx["args"], ctx["model"], ctx["tok"], ctx["device"]
    inputs, G = ctx["inputs"], a.G
    kw = dict(temperature=1.0, top_p=0.95, end_ids=vadr.end_token_ids(tok), pad_id=vadr.pad_token_id(tok),
              ignore_eos=True)
    model.eval()

    def ours(T):
        return lambda: grpo.sample_group(model, inputs, num_samples=G, max_new_tokens=T,
                                         generator=torch.Generator(device=dev).manual_seed(a.seed), **kw)

    def naive(T):
        return lambda: naive_sample_group(model, inputs, num_samples=G, max_new_tokens=T,
                                          generator=torch.Generator(device=dev).manual_seed(a.seed), **kw)
    r = interleaved(naive(a.new_tokens), ours(a.new_tokens), a.repeats, dev, warmup=(naive(4), ours(4)))
    for side in r.values():
        side["tokens"] = int(side["results"][0]["completion_ids"].numel())
        side["tokens_per_s"] = side["tokens"] / side["time"]
        del side["results"]
    out = dict(naive=r["naive"], ours=r["ours"], speedup=r["naive"]["time"] / r["ours"]["time"],
               cpu_time_speedup=r["naive"]["cpu_time"] / r["ours"]["cpu_time"])
    pf = peak_flops(dev, a.peak_tflops)
    if pf:
        f = rollout_flops(ctx["config"], ctx["n_patches"], ctx["prompt_len"], G, a.new_tokens)
        for side in ("naive", "ours"):
            out[side]["mfu"] = f / (out[side]["time"] * pf)
    return out


def section_verification(ctx) -> dict:
    a, model, tok, dev = ctx["args"], ctx["model"], ctx["tok"], ctx["device"]
    v_inputs = ctx["v_inputs"]                                             # G trimmed videos, one batch
    kw = dict(temperature=1.0, top_p=0.95, end_ids=vadr.end_token_ids(tok), pad_id=vadr.pad_token_id(tok),
              ignore_eos=True)
    model.eval()

    def ours(T):
        return lambda: grpo.sample_group(model, v_inputs, num_samples=1, max_new_tokens=T,
                                         generator=torch.Generator(device=dev).manual_seed(a.seed), **kw)

    def naive(T):
        return lambda: naive_sample_group(model, v_inputs, num_samples=1, max_new_tokens=T,
                                          generator=torch.Generator(device=dev).manual_seed(a.seed), **kw)
    r = interleaved(naive(a.new_tokens), ours(a.new_tokens), a.repeats, dev, warmup=(naive(4), ours(4)))
    for side in r.values():
        del side["results"]
    out = dict(naive=r["naive"], ours=r["ours"], speedup=r["naive"]["time"] / r["ours"]["time"],
               cpu_time_speedup=r["naive"]["cpu_time"] / r["ours"]["cpu_time"],
               videos=int(v_inputs["input_ids"].shape[0]))
    pf = peak_flops(dev, a.peak_tflops)
    if pf:
        f = verification_flops(ctx, a.G, a.new_tokens)
        for side in ("naive", "ours"):
            out[side]["mfu"] = f / (out[side]["time"] * pf)
    return out


def verification_flops(ctx, G: int, T: int) -> float:
    """G trimmed videos (same size as the original), one completion each."""
    return G * rollout_flops(ctx["config"], ctx["n_patches"], ctx["prompt_len"], 1, T)


def section_scoring(ctx) -> dict:
    a, dev = ctx["args"], ctx["device"]
    mem = scoring_memory(N=a.G, T=a.score_tokens, V=REAL_VOCAB, H=256, fake=True)
    out = dict(memory=mem, memory_ratio_policy=mem["ours_policy"] / mem["naive_policy"],
               memory_ratio_ref=mem["ours_ref"] / mem["naive_ref"])
    # the model's own reference + policy passes (G-expanded inputs, random completions of new_tokens)
    model, ref, G, T = ctx["model"], ctx["ref"], a.G, a.new_tokens
    full = grpo.expand_inputs(ctx["inputs"], G)
    comp = torch.randint(20, len(ctx["tok"]), (G, T), generator=torch.Generator().manual_seed(a.seed)).to(dev)
    w = torch.randn(G, T, generator=torch.Generator().manual_seed(1)).to(dev)

    def run(fn):
        def go():
            with torch.no_grad():
                fn(ref, full, comp)
            model.train()
            (fn(model, full, comp) * w).sum().backward()
            model.zero_grad(set_to_none=True)
        return go
    r = interleaved(run(naive_logprobs), run(fastpath.completion_logprobs), a.repeats, dev,
                    warmup=(run(naive_logprobs), run(fastpath.completion_logprobs)))
    for side in r.values():
        del side["results"]
    out.update(naive=r["naive"], ours=r["ours"], speedup=r["naive"]["time"] / r["ours"]["time"],
               cpu_time_speedup=r["naive"]["cpu_time"] / r["ours"]["cpu_time"])
    pf = peak_flops(dev, a.peak_tflops)
    if pf:
        f = scoring_flops(ctx["config"], ctx["n_patches"], ctx["prompt_len"], G, T, passes=4)
        for side in ("naive", "ours"):
            out[side]["mfu"] = f / (out[side]["time"] * pf)
    return out


# What grpo.rl_step and extras/rollout.step_hooks read, as train_rl.py sets it for `--data
# bench.jsonl --model bench`: the paper preset (cli.RL_PAPER) and train_rl.py's defaults (every
# reward on, Eq. 3 at mu 1, no DAPO refill or spatial check, fastpath's scorer, one process).
# Written out because extras never import an entry script; tests/test_fastpath.py checks it
# against train_rl.parse_args.
RL_STEP_DEFAULTS = dict(epsilon=0.2, epsilon_high=None, mu=1, loss_type="sequence",
                        adv_std="unbiased", dynamic_sampling=False, dynamic_max_rounds=4,
                        length_mode="words", no_accuracy_reward=False, no_format_reward=False,
                        no_length_reward=False, no_verification_abnormal=False,
                        no_verification_normal=False, spatial_verification=False, spatial_value=0.5,
                        no_rollout_gather=False, skip_bad=False, seed=0, plain_scoring=False)


def rl_step_args(out: str) -> argparse.Namespace:
    """train_rl.py's flags for the step bench times (RL_STEP_DEFAULTS over cli.RL_PAPER)."""
    return argparse.Namespace(**dict(cli.RL_PAPER, **RL_STEP_DEFAULTS, data="bench.jsonl",
                                     model="bench", out=out))


def section_rl_step(ctx) -> dict:
    a, model, ref, tok, dev = ctx["args"], ctx["model"], ctx["ref"], ctx["tok"], ctx["device"]
    rargs = rl_step_args(ctx["tmp"])
    rargs.num_generations, rargs.max_new_tokens = a.G, a.new_tokens
    rargs.frames, rargs.max_pixels, rargs.seed = a.frames, a.max_pixels, a.seed
    if dev.type == "cuda":   # AdamW's states would not fit beside policy, reference and gradients (docstring)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=rargs.lr)
    else:
        opt = training.make_optimizer(model, rargs.lr, rargs.weight_decay)
    sched = training.cosine_schedule(opt, 10_000, 0)
    batch = dict(ctx["inputs"], rows=[dict(video_path=ctx["clip"]["path"], solution="Abnormal")])
    run = grpo.RLState(model, ref, tok, opt, sched, dict(rewards.DEFAULT_LENGTH_RANGES),
                       vadr.build_prompt("binary"))
    counter = iter(range(10 ** 6))
    # train_rl.py's hooks and scorer for these flags, completions of a fixed length
    score = grpo.completion_logprobs if rargs.plain_scoring else fastpath.completion_logprobs
    hooks = dataclasses.replace(rollout.step_hooks(rargs, tok, "none", score), ignore_eos=True)

    def step(naive: bool, T: int):
        def go():
            rargs.max_new_tokens = T
            s = next(counter) // 2      # naive and ours of one pair use the same seeds (step index)
            return grpo.rl_step(run, batch, rargs, s, naive_hooks(hooks) if naive else hooks)
        return go
    r = interleaved(step(True, a.new_tokens), step(False, a.new_tokens), a.rl_repeats, dev,
                    warmup=(step(True, 4), step(False, 4)))
    rargs.max_new_tokens = a.new_tokens
    keys = ("time_generation", "time_verification", "time_reference", "time_update")
    for side in r.values():
        side["breakdown"] = {k: statistics.median(x["timings"][k] for x in side["results"])
                             for k in keys}
        del side["results"]
    out = dict(naive=r["naive"], ours=r["ours"], speedup=r["naive"]["time"] / r["ours"]["time"],
               cpu_time_speedup=r["naive"]["cpu_time"] / r["ours"]["cpu_time"], optimizer=type(opt).__name__)
    pf = peak_flops(dev, a.peak_tflops)
    if pf:   # rollout + verification + reference (1 pass) + policy (forward + backward: 3)
        cfg, n, P = ctx["config"], ctx["n_patches"], ctx["prompt_len"]
        f = (rollout_flops(cfg, n, P, a.G, a.new_tokens) + verification_flops(ctx, a.G, a.new_tokens)
             + scoring_flops(cfg, n, P, a.G, a.new_tokens, passes=4))
        for side in ("naive", "ours"):
            out[side]["mfu"] = f / (out[side]["time"] * pf)
    return out


def section_sft(ctx) -> dict:
    a, model, dev = ctx["args"], ctx["model"], ctx["device"]
    batch = ctx["sft_batch"]
    n_tok = int(batch["input_ids"].numel())
    losses = {}

    def naive():
        model.train()
        out = model(**vadr.model_inputs(batch), labels=batch["labels"])     # logits for all L positions + HF loss
        out.loss.backward()
        losses["naive"] = out.loss.item()
        model.zero_grad(set_to_none=True)

    def ours():
        model.train()
        s, n = vadr.sft_loss_sum(model, batch)
        (s / n).backward()
        losses["ours"] = s.item() / n
        model.zero_grad(set_to_none=True)
    r = interleaved(naive, ours, a.repeats, dev, warmup=(naive, ours))
    for side in r.values():
        side["tokens_per_s"] = n_tok / side["time"]
        del side["results"]
    out = dict(naive=r["naive"], ours=r["ours"], speedup=r["naive"]["time"] / r["ours"]["time"],
               cpu_time_speedup=r["naive"]["cpu_time"] / r["ours"]["cpu_time"], tokens=n_tok, loss_naive=losses["naive"], loss_ours=losses["ours"])
    pf = peak_flops(dev, a.peak_tflops)
    if pf:
        L, n_tgt = n_tok, int((batch["labels"] != -100).sum())
        f = 3 * (vision_flops(ctx["config"], ctx["n_patches"]) + text_flops(ctx["config"], L, L * (L + 1) / 2, n_tgt + 1))
        for side in ("naive", "ours"):
            out[side]["mfu"] = f / (out[side]["time"] * pf)
    return out


# ================================================================================================
# Report
# ================================================================================================

def _fmt(x, unit=""):
    if x is None:
        return "-"
    if unit == "GB":
        return f"{x / 1e9:.2f}"
    if unit == "%":
        return f"{100 * x:.1f}%"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def report(res: dict) -> str:
    """The table: naive, ours, ours / naive; on CPU also ours / naive from process CPU times."""
    rows, cpu = [], res["device_type"] == "cpu"

    def row(name, r, key, unit="", kind=None):
        """r: a section's result; key: a field of r['naive'] / r['ours'] (a (dict, key) pair for nested
        fields); kind 'time' or 'rate' adds the CPU-time ratio."""
        get = (lambda side: r[side][key[0]][key[1]]) if isinstance(key, tuple) else (lambda side: r[side].get(key))
        n, o = get("naive"), get("ours")
        ratio = f"{o / n:.3g}" if (n not in (None, 0) and o is not None) else "-"
        cr = "-"
        if kind is not None and r["naive"].get("cpu_time"):
            c = r["ours"]["cpu_time"] / r["naive"]["cpu_time"]
            cr = f"{c if kind == 'time' else 1 / c:.3g}"
        rows.append((name, _fmt(n, unit), _fmt(o, unit), ratio, cr))
    s = res["sections"]
    if "rollout" in s:
        r = s["rollout"]
        row(f"rollout tokens/s (G={res['settings']['G']} x {res['settings']['new_tokens']} tokens)", r,
            "tokens_per_s", kind="rate")
        row("rollout time (s)", r, "time", kind="time")
        row("rollout peak memory (GB)", r, "peak", "GB")
        row("rollout MFU", r, "mfu", "%")
    if "verification" in s:
        r = s["verification"]
        row(f"verification time (s, {r['videos']} trimmed videos)", r, "time", kind="time")
        row("verification peak memory (GB)", r, "peak", "GB")
        row("verification MFU", r, "mfu", "%")
    if "scoring" in s:
        r, m = s["scoring"], s["scoring"]["memory"]
        shape = f"{m['N']}x{m['T']}x{m['V']}"
        mem = dict(naive=dict(ref=m["naive_ref"], policy=m["naive_policy"]),
                   ours=dict(ref=m["ours_ref"], policy=m["ours_policy"]))
        row(f"scoring peak mem, ref fwd (GB, {shape})", mem, "ref", "GB")
        row(f"scoring peak mem, policy fwd+bwd (GB, {shape})", mem, "policy", "GB")
        row("scoring time, model ref + policy (s)", r, "time", kind="time")
        row("scoring peak memory, model (GB)", r, "peak", "GB")
        row("scoring MFU", r, "mfu", "%")
    if "rl_step" in s:
        r = s["rl_step"]
        row("RL step time (s)", r, "time", kind="time")
        for k in ("time_generation", "time_verification", "time_reference", "time_update"):
            row(f"  {k[5:]} (s)", r, ("breakdown", k))
        row("RL step peak memory (GB)", r, "peak", "GB")
        row("RL step MFU", r, "mfu", "%")
    if "sft" in s:
        r = s["sft"]
        row(f"SFT tokens/s ({r['tokens']} tokens, fwd+bwd)", r, "tokens_per_s", kind="rate")
        row("SFT peak memory (GB)", r, "peak", "GB")
        row("SFT MFU", r, "mfu", "%")
    rows = [x for x in rows if x[1] != "-" or x[2] != "-"]                 # drop rows this device has no data for
    w = max(len(x[0]) for x in rows) + 2
    head = f"{'metric':<{w}}{'naive':>10}{'ours':>10}{'ours/naive':>12}" + (f"{'(cpu time)':>12}" if cpu else "")
    lines = [res["header"], head]
    lines += [f"{a:<{w}}{b:>10}{c:>10}{d:>12}" + (f"{e:>12}" if cpu else "") for a, b, c, d, e in rows]
    lines.append("")
    for key, target, better in (("rollout_speedup", 1.6, "ge"), ("rl_step_speedup", 1.4, "ge"),
                                ("scoring_memory_ratio", 0.5, "le")):
        if key in res:
            ok = res[key] >= target if better == "ge" else res[key] <= target
            lines.append(f"{key} = {res[key]:.3f}  (target {'>=' if better == 'ge' else '<='} {target}: "
                         f"{'met' if ok else 'MISSED'})")
    for key in ("verification_speedup", "scoring_time_speedup", "sft_speedup"):
        if key in res:
            lines.append(f"{key} = {res[key]:.3f}")
    return "\n".join(lines)


# ================================================================================================
# Main
# ================================================================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m extras.bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None,
                    help="cpu, cuda or cuda:N (default: cuda if available). cpu runs the toy "
                         "preset, cuda the random 7B-shaped model")
    ap.add_argument("--model", default=None, choices=["toy", "qwen7b"],
                    help="toy preset (CPU default) or random Qwen2.5-VL-7B shape (CUDA default)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--json", default=None, help="write the results here (JSON)")
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="new tokens per completion, forced (paper: 768; default 768 on cuda, 128 on cpu)")
    ap.add_argument("--score-tokens", type=int, default=768,
                    help="completion tokens per row in the scoring-memory accounting (paper: 768)")
    ap.add_argument("-G", "--G", type=int, default=4, help="completions per video (paper: 4)")
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video (paper: 16)")
    ap.add_argument("--max-pixels", type=int, default=vadr.DEFAULT_MAX_PIXELS, help="max pixels per frame (paper: 128*28*28)")
    ap.add_argument("--clip-size", type=int, nargs=2, default=list(VIDEO_SIZE), metavar=("H", "W"),
                    help="rendered clip's frame size (default 360 640 -> 960 video tokens; tests use less)")
    ap.add_argument("--clip-frames", type=int, default=VIDEO_FRAMES, help="frames in the rendered clip")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved naive/ours pairs per section (cpu 4, cuda 2)")
    ap.add_argument("--rl-repeats", type=int, default=None, help="pairs for the RL step (cpu 4, cuda 1)")
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (see the docstring; 0 = torch default)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak bf16 TFLOP/s for MFU (default: known for H100/H200/A100, else no MFU)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the model init, the clip and the samplers")
    ap.add_argument("--qwen7b-text", default=None,
                    help="JSON overrides of the 7B text config (tests shrink it, e.g. '{\"num_hidden_layers\": 1}')")
    ap.add_argument("--qwen7b-vision", default=None, help="JSON overrides of the 7B vision config (tests)")
    a = ap.parse_args(argv)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; choose from {SECTIONS}")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    dev = vadr.resolve_device(a.device)  # the scripts' one --device rule
    cuda = dev.type == "cuda"
    a.model = a.model or ("qwen7b" if cuda else "toy")
    a.new_tokens = a.new_tokens or (768 if cuda else 128)
    a.repeats = a.repeats or (2 if cuda else 4)
    a.rl_repeats = a.rl_repeats or (1 if cuda else 4)
    if not cuda and a.threads > 0:
        torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix="vadr_bench_")
    clip = make_clip(tmp, a.seed, tuple(a.clip_size), a.clip_frames)
    corpus = [clip["target"]]
    t_setup = time.perf_counter()
    if a.model == "toy":
        model, tok = toymodel.load_model("toy", corpus=corpus, seed=a.seed)
        model.to(dev)
    else:
        tok = toymodel.train_toy_tokenizer(corpus)
        tok.padding_side = "left"
        cfg = qwen7b_config(tok, json.loads(a.qwen7b_text) if a.qwen7b_text else None,
                            json.loads(a.qwen7b_vision) if a.qwen7b_vision else None)
        model = random_model(cfg, tok, dev, torch.bfloat16 if cuda else torch.float32, a.seed)
        if cuda:   # the authors' setting; also what lets policy + reference + gradients fit on 80 GB
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.eval()
    ref = None
    if any(s in a.sections for s in ("scoring", "rl_step")):
        ref = copy.deepcopy(model).requires_grad_(False).eval()
    video = vadr.encode_video(clip["path"], a.frames, max_pixels=a.max_pixels)
    prompt = vadr.build_prompt("binary")
    inputs = prompt_batch(tok, [video], prompt, dev)
    trims = [vadr.encode_video(clip["path"], a.frames, keep=k, max_pixels=a.max_pixels)
             for k in (VERIFICATION_KEEPS * a.G)[:a.G]]
    v_inputs = prompt_batch(tok, trims, prompt, dev)
    sft_batch = prompt_batch(tok, [video], vadr.build_prompt("fine"), dev, targets=[clip["target"]])
    grid = video["video_grid_thw"][0].tolist()
    ctx = dict(args=a, model=model, ref=ref, tok=tok, device=dev, inputs=inputs, v_inputs=v_inputs,
               sft_batch=sft_batch, clip=clip, tmp=tmp, config=vadr.unwrap(model).config,
               n_patches=int(np.prod(grid)), prompt_len=int(inputs["input_ids"].shape[1]))
    if cuda:
        dname = f"cuda: {torch.cuda.get_device_name(dev)}"
    else:
        dname = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    n_video_tok = vadr.video_token_count(video["video_grid_thw"])
    res = dict(device=dname, device_type=dev.type, model=a.model, torch=torch.__version__,
               setup_s=round(time.perf_counter() - t_setup, 1),
               settings=dict(G=a.G, new_tokens=a.new_tokens, frames=a.frames, max_pixels=a.max_pixels,
                             frame_hw=[grid[1] * 14, grid[2] * 14], video_tokens=n_video_tok,
                             prompt_tokens=ctx["prompt_len"], repeats=a.repeats, rl_repeats=a.rl_repeats,
                             temperature=1.0, top_p=0.95, seed=a.seed,
                             params=sum(p.numel() for p in model.parameters())),
               sections={})
    res["header"] = (f"vadr bench | {dname} | model {a.model} ({res['settings']['params'] / 1e6:.1f}M params) | "
                     f"G={a.G}, {a.new_tokens} new tokens forced, {a.frames} frames "
                     f"{grid[1] * 14}x{grid[2] * 14} -> {n_video_tok} video tokens, prompt {ctx['prompt_len']} tokens | "
                     f"median of {a.repeats} interleaved pairs ({a.rl_repeats} for the RL step)")
    runners = dict(rollout=section_rollout, verification=section_verification, scoring=section_scoring,
                   rl_step=section_rl_step, sft=section_sft)
    for name in a.sections:
        t0 = time.perf_counter()
        try:
            res["sections"][name] = runners[name](ctx)
        except torch.cuda.OutOfMemoryError as e:       # report it, keep the other sections
            res["sections"].pop(name, None)
            res.setdefault("errors", {})[name] = f"out of memory: {str(e)[:200]}"
            torch.cuda.empty_cache()
            continue
        res["sections"][name]["section_s"] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name} done in {res['sections'][name]['section_s']} s", file=sys.stderr, flush=True)
    s = res["sections"]
    if "rollout" in s:
        res["rollout_speedup"] = s["rollout"]["speedup"]
    if "verification" in s:
        res["verification_speedup"] = s["verification"]["speedup"]
    if "scoring" in s:
        res["scoring_memory_ratio"] = s["scoring"]["memory_ratio_policy"]
        res["scoring_time_speedup"] = s["scoring"]["speedup"]
    if "rl_step" in s:
        res["rl_step_speedup"] = s["rl_step"]["speedup"]
    if "sft" in s:
        res["sft_speedup"] = s["sft"]["speedup"]
    shutil.rmtree(tmp, ignore_errors=True)             # the rendered clip
    table = report(res)
    print(table)
    res["table"] = table
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
    return res


if __name__ == "__main__":
    vadr.run_main(main)
