"""grpo.py -- the GRPO / AVA-GRPO step as tensor math (paper Sec. 3.3 Eq. 1-2, App. C.2 Eq. 3,
Algorithm 2 lines 5-12), the code train_rl.py runs.

    Eq. 1   A_i = (r_i - mean(r)) / std(r) within the group of G completions    group_advantages
    Eq. 2   J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i)
                                          - beta KL(pi_theta || pi_ref) ]           grpo_loss
            rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    Eq. 3   Eq. 2 with pi_old = pi_theta "no grad" (one update per rollout, App. C.2),
            so rho_it = exp(logp - sg(logp)) = 1 in value              grpo_loss(old_logp=None)
    KL      k3 estimator exp(d) - d - 1, d = log pi_ref - log pi_theta            kl_k3
    log pi  per-token log-probs of the sampled completions, teacher-forced     completion_logprobs
    mask    the completion tokens that count: up to and including the first end  completion_mask
    Alg.2 line 5      G completions per video, prefilled once, KV cache shared     sample_group
    Alg.2 lines 5-10  the completions, Algorithm 1's second pass, the rewards R         rollout
    Alg.2 lines 5-12  one step: rollout, Eq. 1, the mu updates of Eq. 3              rl_step

Peer variants, flags that default to the paper (docs/paper-vs-authors.md s.7): Dr. GRPO (Liu et
al. 2025): A_i = r_i - mean(r) (std="none"), 1/(G * L_max) for 1/|o_i| (loss_type="dr_grpo");
clip-higher (DAPO, Yu et al. 2025): an upper clip 1 + epsilon_high, live only at mu > 1.

The rewards (Alg. 2 lines 6-10) are rewards.py. What a step needs beyond the method (FSDP, LoRA,
dynamic sampling, spatial verification, extras/fastpath.py's leaner scorer) comes in through
StepHooks, one named place; this file imports no extras.

Decisions (the paper vs the authors' trainer, docs/paper-vs-authors.md s.2)
 1. std in Eq. 1 is the UNBIASED (n-1) sample std by default, as the authors' trainer (torch.std);
    the paper does not say (std="biased": n). The denominator is std + 1e-4 (authors). At G = 4 the
    unbiased A is ~0.87x the biased one: under AdamW that only lowers the policy term against KL.
 2. A group whose G rewards are all equal has advantages exactly 0 (not (r - mean)/1e-4, which
    rounding could make nonzero), reported in zero_std; it still counts in the mean (KL only).
 3. KL: k3 with d clamped to [-10, 10], as the authors (the clamp also zeroes its gradient there;
    clamp=None removes it): the unbiased, always >= 0 estimator of Eq. 2's KL (GRPO's choice).
 4. Reduction "sequence" (default, Eq. 2/3, the authors): mean over each completion's tokens,
    then over the G completions; "token" (DAPO-style, not the paper): over all tokens at once,
    of ALL ranks (token_normaliser): DDP/FSDP average gradients, so each rank divides its token
    sum by the global token count / world size, not by its own count.
 5. Log-probs are of log softmax(logits / T), the distribution sampled from; top_p is not applied
    (outside the nucleus it would be -inf), as in the authors' trainer.
 6. Tokens after the first end token are attended in scoring, as in HF generate; causal attention
    keeps them from changing earlier log-probs, and completion_mask gives them no loss.
 7. A sampled vision placeholder id would make Qwen2.5-VL scatter video features into the wrong
    places: the sampler forbids them, scoring replaces one by pad, and completion_mask cuts the
    completion before it.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import random
import time
from typing import Callable, Sequence

import torch

import rewards
import vadr


# ---- Eq. 1: group-relative advantages (Algorithm 2 line 11) --------------------------------------

ADV_STDS = ("unbiased", "biased", "none")     # --adv-std
LOSS_TYPES = ("sequence", "token", "dr_grpo")  # --loss-type


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4,
                     std: str = "unbiased") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 within each group: A_i = (r_i - mean(r)) / (std(r) + eps).

    rewards: (B*G,) total rewards, the G completions of a prompt CONTIGUOUS (rows b*G .. b*G+G-1).
    std: "unbiased" (n-1, default) or "biased" (n), decision 1; "none": Dr. GRPO's r_i - mean(r).
    Returns (advantages (B*G,) float32, zero_std (B,) bool: the groups whose rewards are all
    equal; their advantages are exactly 0, decision 2)."""
    if std not in ADV_STDS:
        raise ValueError(f"std must be one of {ADV_STDS}, got {std!r}")
    if group_size < 2:
        raise ValueError("GRPO compares completions within a group: group_size must be >= 2")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.detach().to(torch.float32).reshape(-1, group_size)            # (B, G)
    mean = r.mean(dim=1, keepdim=True)                                         # (B, 1)
    sd = r.std(dim=1, keepdim=True, correction=1 if std == "unbiased" else 0)  # (B, 1)
    adv = (r - mean) / (sd + eps) if std != "none" else r - mean               # (B, G) Eq. 1
    zero_std = r.amax(dim=1) == r.amin(dim=1)                                  # (B,) all equal
    adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv)           # (B, G) decision 2
    return adv.reshape(-1), zero_std                                           # (B*G,), (B,)


# ---- Which completion tokens count ---------------------------------------------------------------

def vision_token_ids(config) -> list[int]:
    """Qwen2.5-VL's vision placeholder ids (decision 7), read from the model config."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [int(getattr(config, n)) for n in names if getattr(config, n, None) is not None]


def completion_mask(completion_ids: torch.Tensor, end_ids: Sequence[int], pad_id: int,
                    vision_ids: Sequence[int] = ()) -> torch.Tensor:
    """1 on the tokens that carry loss, 0 elsewhere. completion_ids: (N, T) sampled tokens,
    padded with pad_id; end_ids: every id that ends a completion (Qwen: <|im_end|>, <|endoftext|>).
    Returns mask (N, T) float32: 1 up to and INCLUDING the first end token (the choice to stop is
    trained too), 0 after it; a completion without one (cut at the maximum length) is all 1. A
    pad_id that is not an end id is masked wherever it is (Qwen pads with <|endoftext|>, an end
    id). vision_ids: a completion is cut just BEFORE its first one (decision 7)."""
    ids = completion_ids                                                           # (N, T)
    is_end = torch.isin(ids, torch.as_tensor(list(end_ids), device=ids.device))    # (N, T)
    ends_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()  # (N, T) ends strictly before
    mask = ends_before == 0                                  # (N, T) up to and incl. the first end
    mask &= ~((ids == pad_id) & ~is_end)                     # (N, T) padding that is not an end
    if len(vision_ids):
        is_vis = torch.isin(ids, torch.as_tensor(list(vision_ids), device=ids.device))  # (N, T)
        mask &= torch.cumsum(is_vis.long(), dim=1) == 0      # (N, T) cut at the first one
    return mask.to(torch.float32)                                                  # (N, T)


# ---- log pi_theta(o_it | q, o_i<t): one teacher-forced forward -----------------------------------

def scoring_inputs(model, inputs: dict, completion_ids: torch.Tensor,
                   pad_id: int | None = None) -> dict:
    """The model inputs of prompt + completion: the sequence the sampler had built when it chose
    the last token (rows as `inputs`: one per completion). Completion tokens are text
    (mm_token_type_ids 0), so their mRoPE positions continue the prompt's by +1 per token, as in
    sampling. Vision placeholders become pad_id (decision 7; default the model's generation pad
    id); every completion column gets attention 1 (decision 6)."""
    N, T = completion_ids.shape
    inner = vadr.unwrap(model)      # the config lives on the Qwen model, not on a DDP wrapper
    if pad_id is None:
        pad_id = inner.generation_config.pad_token_id
        pad_id = int(pad_id[0] if isinstance(pad_id, (list, tuple)) else (pad_id or 0))
    vis = torch.as_tensor(vision_token_ids(inner.config), device=completion_ids.device)
    comp = completion_ids.masked_fill(torch.isin(completion_ids, vis), pad_id)        # (N, T)
    video = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
             if inputs.get(k) is not None}
    return dict(
        input_ids=torch.cat([inputs["input_ids"], comp], dim=1),                       # (N, P+T)
        attention_mask=torch.cat([inputs["attention_mask"],
                                  inputs["attention_mask"].new_ones(N, T)], dim=1),    # (N, P+T)
        mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"],
                                     inputs["mm_token_type_ids"].new_zeros(N, T)], dim=1),
        **video)


def completion_logprobs(model, inputs: dict, completion_ids: torch.Tensor,
                        temperature: float = 1.0, pad_id: int | None = None) -> torch.Tensor:
    """Per-token log-probs of sampled completions under `model`, in ONE forward (teacher forcing).

    inputs: the prompt batch the completions were sampled from, ONE ROW PER COMPLETION (a prompt
      with G completions appears G times): input_ids (N, P) left-padded, attention_mask (N, P),
      mm_token_type_ids (N, P), pixel_values_videos, video_grid_thw (N, 3), second_per_grid_ts (N,).
    completion_ids: (N, T) the sampled tokens.  temperature: the sampling one (decision 5).
    pad_id: written over vision placeholders (decision 7; completion_mask(..., vision_ids) masks
      them). Returns logp (N, T) float32, differentiable when grad is enabled; entries after the
      first end token are meaningless: multiply by completion_mask.
    """
    N, T = completion_ids.shape
    if inputs["input_ids"].shape[0] != N:
        raise ValueError(f"{inputs['input_ids'].shape[0]} prompt rows for {N} completions: "
                         "repeat each prompt (and its video) once per completion")
    # logits_to_keep=T+1: lm_head runs on the last T+1 positions only. Position p predicts token
    # p+1, so the first T of them score the completion; the last one predicts past it.
    out = model(**scoring_inputs(model, inputs, completion_ids, pad_id), use_cache=False,
                logits_to_keep=T + 1)
    logits = out.logits[:, :-1].float() / temperature                          # (N, T, V)
    logp_all = torch.log_softmax(logits, dim=-1)                                # (N, T, V)
    return logp_all.gather(-1, completion_ids[..., None]).squeeze(-1)           # (N, T)


# ---- KL(pi_theta || pi_ref), the k3 estimator ----------------------------------------------------

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta:
        d = log pi_ref - log pi_theta,  KL ~ exp(d) - d - 1  (>= 0, 0 iff d = 0; E[exp(d)] = 1).
    d is clamped to [-clamp, clamp] (authors: 10; decision 3), which zeroes the gradient outside.
    Gradient w.r.t. logp: 1 - exp(d). Elementwise: returns the shape of logp."""
    d = ref_logp.detach() - logp                                                  # (..., T)
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return torch.exp(d) - d - 1.0                                                 # (..., T)


# ---- Eq. 2 / Eq. 3: the clipped surrogate with KL, and its loss (Algorithm 2 line 12) ------------

def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.04,
              epsilon: float = 0.2, loss_type: str = "sequence", n_tokens: float | None = None,
              epsilon_high: float | None = None) -> tuple[torch.Tensor, dict]:
    """loss = -J, with J of Eq. 2 (or Eq. 3 when old_logp is None).

    logp:       (N, T) log pi_theta of the sampled tokens, WITH grad (completion_logprobs).
    old_logp:   (N, T) log pi_old at sampling time, or None: one update per rollout (App. C.2,
                Eq. 3; the authors): pi_old = pi_theta without grad, i.e. logp.detach().
    ref_logp:   (N, T) log pi_ref (the frozen initial model, Alg. 2 line 2), or None: no KL term.
    advantages: (N,) one A_i per completion (group_advantages).   mask: (N, T) completion_mask.
    beta: KL weight (App. C.3: 0.04).  epsilon: clip range (Eq. 2; inactive at ratio 1).
    epsilon_high: the upper clip 1 + epsilon_high (DAPO's clip-higher); None = epsilon.
    loss_type: "sequence" (Eq. 2: 1/|o_i| per completion, then 1/G) or "token" (decision 4).
    n_tokens: the "token" denominator (token_normaliser under torchrun); None = this mask's sum.
      For "dr_grpo" (1/(N * L_max) per token), n_tokens = N * L_max is required.
    Returns (loss, stats): stats are detached 0-d tensors: kl (masked token mean of k3; 0 without
    KL), clip_frac (share of tokens where the clip binds: A > 0 and ratio > 1+eps, or A < 0 and
    ratio < 1-eps), ratio (masked mean).

    At ratio 1 the loss is ~0 (the A_i have group mean 0, k3 starts at 0) but still trains:
    d/dtheta exp(logp - sg(logp)) = grad log pi, so the gradient is -1/G sum_i A_i 1/|o_i| sum_t
    grad log pi_theta(o_it), REINFORCE with a group baseline. The rewards measure progress.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo" and n_tokens is None:
        raise ValueError("loss_type 'dr_grpo' needs n_tokens = rows x the generation budget")
    hi = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)                                                     # (N, T)
    if old_logp is None:
        old_logp = logp.detach()                                         # Eq. 3: sg(pi_theta)
    ratio = torch.exp(logp - old_logp)                                             # (N, T) rho_it
    A = advantages.to(logp.dtype)[:, None]                                         # (N, 1)
    unclipped = ratio * A                                                          # (N, T)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + hi) * A                      # (N, T)
    per_token = torch.minimum(unclipped, clipped)                        # (N, T) Eq. 2's min
    use_kl = ref_logp is not None and beta != 0.0
    if use_kl:
        kl = kl_k3(logp, ref_logp)                                                 # (N, T)
        per_token = per_token - beta * kl                                # (N, T) - beta KL
    if loss_type == "sequence":                                   # Eq. 2: 1/G sum_i 1/|o_i| sum_t
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)   # (N,)
        objective = per_seq.mean()                                                 # ()
    else:                              # decision 4: tokens pooled; dr_grpo: / (N * L_max)
        denom = mask.sum().clamp(min=1.0) if n_tokens is None else max(float(n_tokens), 1e-8)
        objective = (per_token * mask).sum() / denom                               # ()
    loss = -objective                                               # gradient descent on -J

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1.0)
        clip_active = ((A > 0) & (ratio > 1.0 + hi)) | ((A < 0) & (ratio < 1.0 - epsilon))
        stats = dict(kl=((kl * mask).sum() / n_tok) if use_kl else logp.new_zeros(()),
                     clip_frac=(clip_active.to(mask.dtype) * mask).sum() / n_tok,
                     ratio=(ratio * mask).sum() / n_tok)
    return loss, {k: v.detach() for k, v in stats.items()}


def token_normaliser(mask: torch.Tensor) -> float:
    """Decision 4's denominator on this rank: loss tokens of all ranks / world size. The gradient
    mean that DDP and FSDP take over ranks then equals the gradient of the global token mean."""
    n = vadr.all_reduce_sum(mask.sum().detach().float().reshape(1))  # (1,) summed over ranks
    return float(n.item()) / vadr.world_size()


# ---- Rollouts: G samples per video (Alg. 2 line 5), the verification pass (Alg. 1 line 10) -----
# A KV-cached sampling loop, every choice visible (as nanochat's engine): the prompt (vision tower
# included) is prefilled once per video, its cache copied to the G rows, and each decode step writes
# one K/V column. mRoPE: the prompt's positions come from get_rope_index; a generated token gets
# max(prompt positions) + 1, then + 1 per token, on all three axes, as get_rope_index gives them in
# the teacher-forced pass: sampling and scoring see the same positions (tested).

def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability sums to >= top_p
    (always at least the most likely one); the rest get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)        # (N, V)
    probs = torch.softmax(sorted_logits, dim=-1)                                    # (N, V)
    # a token is dropped when the mass strictly before it already reaches top_p
    drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p                          # (N, V)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)


def prefill(model, inputs: dict, G: int):
    """Sampling steps 1-2: one forward over the B prompts (vision tower + prompt text), the KV
    cache then copied to the G samples of each prompt (rows b*G .. b*G+G-1).
    Returns (cache, logits (B*G, V) float32 of the first new token, positions (3, B, P))."""
    inner = vadr.unwrap(model)
    pos, _ = inner.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], None,
                                        inputs["video_grid_thw"], inputs["second_per_grid_ts"],
                                        inputs["attention_mask"])                   # (3, B, P)
    out = inner(**vadr.model_inputs(inputs), position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, logits = out.past_key_values, out.logits[:, -1].float()                  # (B, V)
    if G > 1:
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, 0)                                     # (B*G, V)
    return cache, logits, pos


def choose_token(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool,
                 banned: torch.Tensor, generator: torch.Generator | None):
    """Sampling step 3, per row: the argmax, or one draw from softmax(logits / T) after top-p.
    banned ids get -inf first. Returns (token (N,), its log-prob (N,) under the banned-free
    softmax(logits / T): the sampling-time log pi)."""
    scaled = logits / (1.0 if greedy else temperature)                              # (N, V)
    if len(banned):
        scaled[:, banned] = float("-inf")
    logp_all = torch.log_softmax(scaled, dim=-1)                                    # (N, V)
    if greedy:
        tok = scaled.argmax(-1)                                                     # (N,)
    else:
        probs = torch.softmax(_top_p_filter(scaled, top_p), dim=-1)                 # (N, V)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)           # (N,)
    return tok, logp_all.gather(1, tok[:, None]).squeeze(1)                         # (N,), (N,)


def preallocate_kv(cache, capacity: int) -> None:
    """K/V buffers of `capacity` positions for each plain DynamicLayer of `cache`, in place. HF's
    appends by torch.cat, copying the whole cache (prompt x G rows) per layer and step; here a step
    writes its column, attention reads a view of the filled part (tested against HF generate)."""
    from transformers.cache_utils import DynamicLayer  # deferred: transformers loads slowly

    class Preallocated(DynamicLayer):
        def __init__(self, layer, capacity):
            super().__init__()
            k, v = layer.keys, layer.values                                   # (N, H_kv, P, D)
            self.n = k.shape[-2]
            self.kbuf, self.vbuf = (x.new_empty(*x.shape[:-2], capacity, x.shape[-1])
                                    for x in (k, v))                      # (N, H_kv, cap, D) x 2
            self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :] = k, v
            self.keys, self.values = self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :]
            self.dtype, self.device, self.is_initialized = k.dtype, k.device, True

        def update(self, key_states, value_states, *args, **kwargs):  # sample_group: m = 1
            m = key_states.shape[-2]
            self.kbuf[..., self.n:self.n + m, :] = key_states             # the new column only
            self.vbuf[..., self.n:self.n + m, :] = value_states
            self.n += m
            self.keys, self.values = self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :]
            return self.keys, self.values

    for i, layer in enumerate(getattr(cache, "layers", None) or []):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel() > 0:
            cache.layers[i] = Preallocated(layer, capacity)


def decode_masks(inner, attn: torch.Tensor, max_new_tokens: int):
    """The attention mask of decode step t, as step_mask(t), sliced from one built for the whole
    completion. With SDPA and full attention it is the (N, 1, 1, L) boolean mask HF would rebuild at
    every step (the text model takes a prepared {"full_attention": mask} as is; without left
    padding None, what HF builds itself); other kernels get the 2D mask."""
    N, P = attn.shape
    full = torch.cat([attn, attn.new_ones(N, max_new_tokens)], 1)                # (N, P+T)
    text_cfg = inner.config.get_text_config()
    kinds = getattr(text_cfg, "layer_types", None) or ["full_attention"]
    if getattr(text_cfg, "_attn_implementation", None) != "sdpa" \
            or any(k != "full_attention" for k in kinds):
        return lambda t: full[:, :P + t + 1]                                      # (N, P+t+1)
    full, no_pad = full.bool()[:, None, None, :], bool(attn.all())               # (N, 1, 1, P+T)
    return lambda t: {"full_attention": None if no_pad else full[..., :P + t + 1]}


def sample_group(model, inputs: dict, num_samples: int = 1, max_new_tokens: int = 768,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
                 end_ids=(), pad_id: int = 0, generator: torch.Generator | None = None,
                 suppress_vision: bool = True, ignore_eos: bool = False,
                 sync_ranks: bool = False, stop=None) -> dict:
    """Alg. 2 line 5: `num_samples` = G completions for each prompt of a left-padded batch (inputs:
    build_chat_inputs + collate_videos tensors for B prompts, each with a video).
    Returns dict(completion_ids (B*G, T), pad after the first end token; completion_mask (B*G, T);
    logprobs (B*G, T), the sampling-time log p of each chosen token under logits / T, times the
    mask; prompt_positions_max (B,)). Row b*G + g is sample g of prompt b (group_advantages'
    layout). suppress_vision: forbid the vision placeholder ids (decision 7).
    stop: (candidate ids, check(ids: list[int]) -> bool), e.g. label_stop(tok): a row whose new
      token is a candidate and whose tokens pass check ends there (mask too; no end token written).
      Every row still draws at every step: the others' tokens are those of a run without it.
    ignore_eos: sample to max_new_tokens (extras/bench.py's fixed lengths; `stop` is then unused).
    sync_ranks: FSDP: the all-done test is all-reduced, every rank runs as many decode steps."""
    inner, G = vadr.unwrap(model), num_samples
    P, dev = inputs["input_ids"].shape[1], inputs["input_ids"].device
    banned = torch.tensor(vision_token_ids(inner.config) if suppress_vision else [], device=dev,
                          dtype=torch.long)
    end = torch.tensor(list(end_ids), device=dev, dtype=torch.long)
    stop = None if ignore_eos else stop
    # inference_mode: no autograd bookkeeping on the small ops of every step. Not under FSDP
    # (sync_ranks): a buffer FSDP2 unshards in inference mode the next training forward can't write
    with torch.no_grad() if sync_ranks else torch.inference_mode():
        cache, logits, pos = prefill(model, inputs, G)                              # steps 1-2
        N = logits.shape[0]                                                         # B*G rows
        preallocate_kv(cache, P + max_new_tokens)
        step_mask = decode_masks(inner, inputs["attention_mask"].repeat_interleave(G, 0),
                                 max_new_tokens)
        next_pos = (pos.amax(dim=(0, 2)) + 1).repeat_interleave(G, 0)               # (N,)
        done = torch.zeros(N, dtype=torch.bool, device=dev)                         # (N,)
        cut = torch.full((N,), max_new_tokens, dtype=torch.long, device=dev)  # (N,) kept by stop
        if stop is not None:
            may_stop = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)  # (V,)
            may_stop[[i for i in stop[0] if i < len(may_stop)]] = True
        toks, lps = [], []
        for t in range(max_new_tokens):
            tok, lp = choose_token(logits, temperature, top_p, greedy, banned, generator)  # step 3
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)   # finished rows: padding
            toks.append(tok)
            lps.append(torch.where(done, torch.zeros_like(lp), lp))
            if stop is not None and bool((~done & may_stop[tok]).any()):
                rows = (~done & may_stop[tok]).nonzero().flatten().tolist()
                for n, ids_n in zip(rows, torch.stack(toks, 1)[rows].tolist()):
                    if stop[1](ids_n):
                        done[n], cut[n] = True, t + 1
            if not ignore_eos:
                done = done | torch.isin(tok, end)
                all_done = done.all().to(torch.int32)
                if sync_ranks:   # every rank keeps stepping until every rank is done
                    torch.distributed.all_reduce(all_done, op=torch.distributed.ReduceOp.MIN)
                if bool(all_done):
                    break
            if t == max_new_tokens - 1:    # the last token is chosen: its forward would go unused
                break
            # step 4: one decode step, one token per row at next_pos on all three mRoPE axes
            out = inner(input_ids=tok[:, None], attention_mask=step_mask(t),
                        position_ids=next_pos.view(1, N, 1).expand(3, N, 1),        # (3, N, 1)
                        past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1].float()          # (N, V)
            next_pos = next_pos + 1
        ids = torch.stack(toks, 1)                                                  # (N, T)
        mask = torch.ones_like(ids, dtype=torch.float32) if ignore_eos \
            else completion_mask(ids, list(end_ids), pad_id)                        # (N, T)
        mask = mask * (torch.arange(ids.shape[1], device=dev) < cut[:, None])     # (N, T) stop
        res = dict(completion_ids=ids, completion_mask=mask, logprobs=torch.stack(lps, 1) * mask,
                   prompt_positions_max=pos.amax(dim=(0, 2)))
    return {k: v.clone() for k, v in res.items()}   # ordinary tensors: autograd may use them later


def label_settled(text: str) -> bool:
    """True when vadr.parse_completion gives every continuation of `text` the label it gives
    `text`: the first <answer> is open, the first <which> after it is closed with no </answer>
    between, and no <which> comes before that <answer> (vadr._first_tag reads the first opening
    and the first closing after it). Tested against parse_completion on every prefix."""
    i = text.find("<answer>")
    if i < 0 or "<which>" in text[:i]:
        return False
    w = text.find("<which>", i)
    e = text.find("</which>", w) if w >= 0 else -1
    return e >= 0 and "</answer>" not in text[i:e]


@functools.lru_cache(maxsize=8)
def label_stop(tok):
    """sample_group's `stop` for Algorithm 1's second pass, of which only the label is read: a row
    ends once its <which> is settled, tried after tokens holding '>' (every tag ends with one)."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    cands = [i for i, p in enumerate(pieces) if isinstance(p, str) and ">" in p]
    return cands, lambda ids: label_settled(tok.decode(ids, skip_special_tokens=True))


def decode_completions(tok, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Completion text up to (not including) the end token."""
    return [tok.decode(row[:int(sum(m))], skip_special_tokens=True)
            for row, m in zip(ids.tolist(), mask.tolist())]


def expand_inputs(inputs: dict, G: int) -> dict:
    """Repeat each prompt (and its video) G times: rows b*G .. b*G+G-1 belong to prompt b."""
    n_patch = inputs["video_grid_thw"].prod(-1)                                    # (B,)
    chunks = torch.split(inputs["pixel_values_videos"], n_patch.tolist())          # B x (N_b, 1176)
    rep = lambda k: inputs[k].repeat_interleave(G, 0)
    return dict(input_ids=rep("input_ids"), attention_mask=rep("attention_mask"),  # (B*G, P)
                mm_token_type_ids=rep("mm_token_type_ids"),
                pixel_values_videos=torch.cat([c for c in chunks for _ in range(G)], 0),
                video_grid_thw=rep("video_grid_thw"),                              # (B*G, 3)
                second_per_grid_ts=rep("second_per_grid_ts"))                      # (B*G,)


# ---- Algorithm 2 lines 5-12: one AVA-GRPO step (train_rl.py's loop calls rl_step) ---------------

@dataclasses.dataclass
class StepHooks:
    """All a step takes from outside the core library, at one named place. The defaults run the
    plain method on one process; train_rl.py's come from extras/rollout.step_hooks."""
    score: Callable = completion_logprobs  # log pi (Eq. 3); extras/fastpath's: same, less memory
    sample: Callable = sample_group        # Alg. 2 line 5, Alg. 1 line 10 (bench: HF generate)
    rollout_weights: Callable = lambda model: contextlib.nullcontext(dict(bytes=0))  # FSDP gather
    reference: Callable = lambda model, ref_model: contextlib.nullcontext(ref_model)  # pi_ref's
    bad_video: Callable | None = None      # (row, error): a trimmed video fails; None: it raises
    idle_sample: Callable | None = None    # FSDP: (model, tok, row, prompt, device, sample_kw)
    extra_rewards: Callable | None = None  # (parts, model, tok, rows, texts, prompt, device, kw)
    refill: Callable | None = None         # DAPO: (batch, roll, rollout_of, seed) -> same + counts
    sync_ranks: bool = False               # sample_group's: under FSDP
    ignore_eos: bool = False               # sample_group's: extras/bench.py's fixed lengths


# Each random stream of a step is seeded from (seed, step, rank) alone, so --resume redraws it
# exactly: stream -> (seed multiplier, step multiplier).
SEED_STREAMS = {"sample": (1_000_003, 1009), "trim": (7_919, 101), "refill": (1, 7)}


def step_seed(seed: int, step: int, rank: int, stream: str) -> int:
    """The seed of one random stream (SEED_STREAMS) of this step on this rank."""
    a, b = SEED_STREAMS[stream]
    return seed * a + step * b + rank


def verification_inputs(tok, rows: list[dict], completions: list[str], G: int, rng, video_kw: dict,
                        prompt: str, device, bad_video=None) -> tuple[dict | None, list[int]]:
    """Algorithm 1 lines 3-9 for all B*G completions, in one batch -> (batch or None, indices of
    its completions); an empty trim gets no second pass (Alg. 1 line 1). bad_video(row, error): a
    video failing on frames the first pass did not read (None: the error stands)."""
    videos, which, n_frames = [], [], {}
    for i, c in enumerate(completions):
        path = rows[i // G]["video_path"]
        try:
            if path not in n_frames:
                n_frames[path] = vadr.count_frames(path)
            keep = rewards.verification_trim(c, rng, total_frames=n_frames[path])  # kept windows
            if keep:
                videos.append(vadr.encode_video(path, keep=keep, **video_kw))
                which.append(i)
        except vadr.VideoError as e:
            if bad_video is None:
                raise
            bad_video(rows[i // G], f"{e} (trimmed)")                # no second pass for it
    if not videos:
        return None, []
    vids = vadr.collate_videos(videos)
    chat = vadr.build_chat_inputs(tok, [prompt] * len(videos), vids["video_grid_thw"])
    return vadr.to_device({**chat, **vids}, device), which


def rollout(model, tok, batch: dict, args, length_ranges: dict, prompt: str, sample_kw: dict,
            trim_rng, t: dict, hooks: StepHooks) -> dict:
    """Algorithm 2 lines 5-10 on a batch of B videos -> dict(ids, mask (B*G, T), texts, seconds
    (the completion on each trimmed video, or None), parts (reward parts), R (B*G,)). Timings
    (and extra_rewards' counts) are added into t."""
    device, G = batch["input_ids"].device, args.num_generations
    inputs = {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}
    add = lambda k, t0: t.__setitem__(k, t.get(k, 0.0) + time.time() - t0)

    # ---- Alg.2 line 5: a group of G completions per video (vision + prefill once per video)
    t0 = time.time()
    model.eval()
    # under FSDP the weights are gathered once for both passes, then resharded for the update
    with hooks.rollout_weights(model) as gathered:
        roll = hooks.sample(model, inputs, num_samples=G, **sample_kw)
        ids, mask = roll["completion_ids"], roll["completion_mask"]                  # (B*G, T)
        texts = decode_completions(tok, ids, mask)
        add("time_generation", t0)

        # ---- Alg.2 line 8 = Algorithm 1: trim, one new completion per original
        t0 = time.time()
        seconds = [None] * len(texts)  # the completion on each trimmed video (None: no 2nd pass)
        if not (args.no_verification_abnormal and args.no_verification_normal):
            v_inputs, which = verification_inputs(tok, batch["rows"], texts, G, trim_rng,
                                                  vadr.video_args(args), prompt, device,
                                                  hooks.bad_video)
            if v_inputs is None and hooks.idle_sample:  # no trim: still join the collectives
                hooks.idle_sample(model, tok, batch["rows"][0], prompt, device, sample_kw)
            if v_inputs is not None:  # only the label is read: a row stops once it is settled
                v = hooks.sample(model, v_inputs, 1, stop=label_stop(tok), **sample_kw)
                for i, s in zip(which, decode_completions(tok, v["completion_ids"],
                                                          v["completion_mask"])):
                    seconds[i] = s                                                 # Alg. 1 line 11
        add("time_verification", t0)
    t["rollout_copy_gb"] = gathered["bytes"] / 2 ** 30  # the gathered copy (0 without FSDP)

    # ---- Alg.2 lines 6-10: the rewards (verification: Alg. 1 lines 12-16) and R, group by group
    parts = []
    for b, row in enumerate(batch["rows"]):
        grp = slice(b * G, (b + 1) * G)
        parts += rewards.group_rewards(
            texts[grp], row["solution"], seconds[grp], length_ranges, args.length_mode,
            n_tokens=mask[grp].sum(1).tolist(), use_accuracy=not args.no_accuracy_reward,
            use_format=not args.no_format_reward, use_length=not args.no_length_reward,
            verify_abnormal=not args.no_verification_abnormal,
            verify_normal=not args.no_verification_normal)
    if hooks.extra_rewards:  # beyond both papers: Algorithm 1 for *where* (extras/vanguard.py)
        counts = hooks.extra_rewards(parts, model, tok, batch["rows"], texts, prompt, device,
                                     sample_kw)
        for k, n in counts.items():  # summed over the step's rollouts, as the timings are
            t[k] = t.get(k, 0) + n
    R = torch.tensor([p["total"] for p in parts], dtype=torch.float32)               # (B*G,)
    return dict(ids=ids, mask=mask, texts=texts, seconds=seconds, parts=parts, R=R)


# What every step shares: the policy and pi_ref (the frozen copy; None under LoRA: hooks.reference
# turns the adapters off), the tokenizer, optimizer, schedule, length ranges, prompt and this rank.
RLState = collections.namedtuple(
    "RLState", "model ref_model tok opt sched length_ranges prompt rank", defaults=(0,))


def rl_step(run: RLState, batch: dict, args, step: int, hooks: StepHooks | None = None) -> dict:
    """Algorithm 2 lines 5-12 on this rank's videos -> dict(R (B*G,), parts, mask, zero_std, texts,
    lr, timings, stats: each update's loss stats), logged by extras/training.rl_log_fields."""
    model, tok, opt, sched, rank = run.model, run.tok, run.opt, run.sched, run.rank
    hooks, device, G = hooks or StepHooks(), batch["input_ids"].device, args.num_generations
    gen = torch.Generator(device=device).manual_seed(step_seed(args.seed, step, rank, "sample"))
    trim_rng = random.Random(step_seed(args.seed, step, rank, "trim"))
    sample_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_p=args.top_p, end_ids=vadr.end_token_ids(tok),
                     pad_id=vadr.pad_token_id(tok), generator=gen, sync_ranks=hooks.sync_ranks,
                     ignore_eos=hooks.ignore_eos)
    t = {}  # timings (and the refill's and extra_rewards' counts)
    roll_of = lambda b: rollout(model, tok, b, args, run.length_ranges, run.prompt, sample_kw,
                                trim_rng, t, hooks)
    roll = roll_of(batch)                                                  # Alg. 2 lines 5-10
    if hooks.refill:  # DAPO's dynamic sampling: groups whose rewards are all equal, replaced
        batch, roll, counts = hooks.refill(batch, roll, roll_of,
                                           step_seed(args.seed, step, rank, "refill"))
        t.update(counts)
    ids, mask, R = roll["ids"], roll["mask"], roll["R"]                    # (B*G, T) x 2, (B*G,)

    # ---- Alg.2 line 11 (Eq. 1): group-normalised advantages
    adv, zero_std = group_advantages(R, G, std=args.adv_std)                       # (B*G,), (B,)
    adv = adv.to(device)

    # ---- reference (and, for mu > 1, old-policy) log-probs, no gradient
    t0 = time.time()
    full = expand_inputs({k: batch[k] for k in vadr.MODEL_INPUT_KEYS}, G)   # a row per completion
    logprobs = lambda m: hooks.score(m, full, ids, temperature=args.temperature)   # (B*G, T)
    with torch.no_grad(), vadr.autocast(device):
        ref_logp = old_logp = None
        if args.beta > 0:  # pi_ref: the frozen copy, or (LoRA) the policy with its adapters off
            with hooks.reference(model, run.ref_model) as ref:
                ref_logp = logprobs(ref)
        if args.mu > 1:
            old_logp = logprobs(model)
    t["time_reference"] = time.time() - t0

    # ---- Alg.2 line 12: mu policy updates on this rollout (Eq. 3; Eq. 2 when mu > 1)
    t0 = time.time()
    model.train()
    stats_acc = []
    n_tok = None  # the loss's denominator: this mask's own for "sequence" (grpo_loss)
    if args.loss_type == "token":
        n_tok = token_normaliser(mask.to(device))
    elif args.loss_type == "dr_grpo":
        n_tok = mask.shape[0] * args.max_new_tokens
    for _ in range(args.mu):
        with vadr.autocast(device):
            logp = logprobs(model)                                                 # (B*G, T)
            loss, stats = grpo_loss(logp, old_logp, ref_logp, adv, mask.to(logp.dtype),
                                    beta=args.beta, epsilon=args.epsilon, loss_type=args.loss_type,
                                    n_tokens=n_tok, epsilon_high=args.epsilon_high)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stats_acc.append(dict({k: float(v) for k, v in stats.items()},
                              loss=float(loss.detach()), grad_norm=float(gn)))
    t["time_update"] = time.time() - t0
    return dict(R=R, parts=roll["parts"], mask=mask, zero_std=zero_std, texts=roll["texts"],
                lr=sched.get_last_lr()[0], timings=t, stats=stats_acc)
