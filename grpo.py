"""grpo.py -- the GRPO / AVA-GRPO update as tensor math (paper Sec. 3.3 Eq. 1-2, App. C.2 Eq. 3, Algorithm 2).

    Eq. 1   A_i = (r_i - mean(r)) / std(r)                      within the group of G completions   group_advantages
    Eq. 2   J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i)
                                          - beta KL(pi_theta || pi_ref) ]                            grpo_loss
            rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    Eq. 3   the same with pi_old = pi_theta "no grad" (one update per rollout, App. C.2),
            so rho_it = exp(logp - sg(logp)) = 1 in value                                            grpo_loss(old_logp=None)
    KL      k3 estimator exp(d) - d - 1, d = log pi_ref - log pi_theta (as the authors' trainer)    kl_k3
    log pi  per-token log-probs of sampled completions, one teacher-forced forward                  completion_logprobs
    mask    which completion tokens count: up to and including the first end token                  completion_mask

Algorithm 2 in train_rl.py uses these as: line 11 group_advantages(R), line 12 "update pi_theta with
Eq. 3" = loss, stats = grpo_loss(completion_logprobs(policy, ...), None, ref_logp, A, mask); loss.backward().
Sampling (line 5, and the verification completions of line 8) is sample_group below; the trims and
rewards (lines 6-10) are in rewards.py; the loop itself is train_rl.py.

Run the tests:  python -m pytest tests/test_grpo.py -q

Decisions and departures (paper vs the authors' scripts vs this file)
--------------------------------------------------------------------
 1. std in Eq. 1 is the UNBIASED (n-1) sample std by default, as the authors' TRL-based trainer
    (torch.std); the paper does not say. std="biased" gives the population std (n). The denominator is
    std + 1e-4 (authors). With G = 4 the two differ by a factor sqrt(4/3), which only rescales A (the
    loss is linear in A), i.e. acts like a learning-rate factor of about 0.87 vs 1.
 2. A group whose G rewards are all equal has no signal: its advantages are set to exactly 0 (not
    (r - mean)/1e-4, which float rounding of the mean could make nonzero) and it is reported in the
    zero_std mask. It still counts in the mean over sequences (its terms are 0 apart from the KL).
 3. KL: k3 with d clamped to [-10, 10], as the authors; the clamp also zeroes the KL gradient where
    |d| > 10 (kl_k3(clamp=None) removes it). Eq. 2 in the paper writes the exact KL; k3 is its
    unbiased, always >= 0 estimator from samples of pi_theta (the GRPO paper's choice).
 4. Reduction: "sequence" (default) = Eq. 2/3 exactly: mean over each completion's own tokens
    (1/|o_i|), then mean over the G completions (1/G) -- what the authors do. "token" = sum over all
    tokens / number of tokens (DAPO-style; long completions weigh more): an option, not the paper.
 5. Log-probs are of the TEMPERATURE-scaled distribution, log softmax(logits / T), the distribution the
    completions were sampled from (T = 1.0 in the authors' RL). top_p (0.95) is NOT applied: the
    truncated distribution has log-prob -inf outside the nucleus, so the policy gradient, like TRL's
    and the authors', is that of the temperature-only policy.
 6. Tokens after the first end token get attention 1 in the scoring forward, exactly as in HF
    generate (which keeps extending the mask with ones for finished rows). They cannot change the
    log-probs of earlier tokens (causal attention) and carry no loss (completion_mask).
 7. A sampled completion that contains a vision placeholder id (<|video_pad|>, <|image_pad|>,
    <|vision_start|>, <|vision_end|>) would make Qwen2.5-VL scatter video features into the wrong
    places (the placeholder count would not match the video's token count: an error). Such ids are
    replaced by pad in the scoring input, and completion_mask(vision_ids=...) cuts the completion
    BEFORE the first one: later tokens were sampled in a context the scoring pass no longer
    reproduces. Better still, the sampler forbids them (generate(..., suppress_tokens=vision ids)).
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch

import vadr


# ------------------------------------------------------------------------------------------------
# Eq. 1: group-relative advantages (Algorithm 2 line 11)
# ------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4,
                     std: str = "unbiased") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 within each group: A_i = (r_i - mean(r)) / (std(r) + eps).

    rewards: (B*G,) total rewards, the G completions of each prompt CONTIGUOUS (rows b*G .. b*G+G-1).
    std: "unbiased" (n-1, torch.std, the authors' trainer; default) or "biased" (n). See decision 1.
    Returns (advantages (B*G,) float32, zero_std (B,) bool: groups whose rewards are all equal; their
    advantages are exactly 0, decision 2).
    """
    if std not in ("unbiased", "biased"):
        raise ValueError(f"std must be 'unbiased' or 'biased', got {std!r}")
    if group_size < 2:
        raise ValueError("GRPO compares completions within a group: group_size must be >= 2")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.detach().to(torch.float32).reshape(-1, group_size)        # (B, G)
    mean = r.mean(dim=1, keepdim=True)                                     # (B, 1)
    sd = r.std(dim=1, keepdim=True, correction=1 if std == "unbiased" else 0)  # (B, 1)
    adv = (r - mean) / (sd + eps)                                          # (B, G)   Eq. 1
    zero_std = r.amax(dim=1) == r.amin(dim=1)                              # (B,) all G rewards equal
    adv = torch.where(zero_std[:, None], torch.zeros_like(adv), adv)       # (B, G)   exactly 0 (decision 2)
    return adv.reshape(-1), zero_std                                       # (B*G,), (B,)


# ------------------------------------------------------------------------------------------------
# Which completion tokens count
# ------------------------------------------------------------------------------------------------

def vision_token_ids(config) -> list[int]:
    """Qwen2.5-VL's vision placeholder ids (decision 7), read from the model config."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [int(getattr(config, n)) for n in names if getattr(config, n, None) is not None]


def completion_mask(completion_ids: torch.Tensor, end_ids: Sequence[int], pad_id: int,
                    vision_ids: Sequence[int] = ()) -> torch.Tensor:
    """1 on the tokens that carry loss, 0 elsewhere.

    completion_ids: (N, T) sampled tokens (what generate returned after the prompt, padded with pad_id).
    end_ids: every id that ends a completion (Qwen: <|im_end|> and <|endoftext|>, vadr.end_token_ids).
    Returns mask (N, T) float32: 1 up to and INCLUDING the first end token (the model chose to stop there:
    that choice is trained too), 0 after it. A pad_id that is not an end id is masked wherever it is
    (Qwen pads with <|endoftext|>, itself an end id: there the first one is the end token).
    vision_ids: a completion is cut just BEFORE its first vision placeholder (decision 7).
    A completion with no end token (truncated at max length) is all 1.
    """
    ids = completion_ids                                                       # (N, T)
    is_end = torch.isin(ids, torch.as_tensor(list(end_ids), device=ids.device))  # (N, T)
    ends_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()           # (N, T) end tokens strictly before t
    mask = ends_before == 0                                                    # (N, T) up to and incl. the first end
    mask &= ~((ids == pad_id) & ~is_end)                                       # (N, T) padding that is not an end token
    if len(vision_ids):
        is_vis = torch.isin(ids, torch.as_tensor(list(vision_ids), device=ids.device))  # (N, T)
        mask &= torch.cumsum(is_vis.long(), dim=1) == 0                        # (N, T) cut at the first one
    return mask.to(torch.float32)                                              # (N, T)


# ------------------------------------------------------------------------------------------------
# log pi_theta(o_it | q, o_i<t): one teacher-forced forward
# ------------------------------------------------------------------------------------------------

class _ChunkedTokenLogprobs(torch.autograd.Function):
    """logp[n, t] = log softmax(logits[n, t] / T)[tokens[n, t]] for t < T_c, from logits (N, T_c + 1, V)
    (the last position, which predicts past the completion, is ignored and gets zero gradient).

    Memory (the reason this exists; measured by bench.py --sections scoring). The naive
    log_softmax(logits.float()).gather(...) allocates a float32 (N, T_c, V) log-softmax, keeps it for
    backward, and backward allocates two more tensors of that size (the scattered gradient of the gather
    and the log-softmax's input gradient): with Qwen's 152k vocabulary and 4 x 768 tokens each is 1.9 GB.
    Here the forward walks `chunk` rows at a time and keeps only the per-token logsumexp (N, T_c);
    the backward rebuilds each chunk's softmax from the saved logits and the logsumexp and writes the
    gradient (1[v = token] - softmax_v) * g / T straight into the LOGITS' OWN storage, which nothing else
    needs any more (lm_head's backward keeps its input and weight, not its output; Megatron's
    vocab-parallel cross-entropy uses the same in-place trick). So beyond the logits that the model's
    forward produced anyway, only one chunk of float32 temporaries is ever alive: forward or backward.
    A per-chunk torch.utils.checkpoint (the earlier version) saved the forward's copy but not backward's:
    each chunk's slice-backward allocated a full-size zero gradient for the whole logits tensor.
    Consequence: the logits tensor passed in is overwritten by backward; backward may run only once.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk):
        N, T = tokens.shape                                                  # logits (N, T+1, V)
        tgt = torch.empty(N, T, dtype=torch.float32, device=logits.device)   # (N, T) logit[token] / T
        lse = torch.empty(N, T, dtype=torch.float32, device=logits.device)   # (N, T) logsumexp(logits / T)
        for n in range(N):
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                x = logits[n, t0:t1].float() / temperature                   # (c, V) the one float32 temporary
                tgt[n, t0:t1] = x.gather(-1, tokens[n, t0:t1, None]).squeeze(-1)
                m = x.amax(dim=-1, keepdim=True)                             # (c, 1) logsumexp, stabilised,
                lse[n, t0:t1] = x.sub_(m).exp_().sum(-1).log_() + m[:, 0]    # in place (no second (c, V) copy)
                del x                                                        # free it before the next chunk's
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk, ctx.used = temperature, chunk, False
        return tgt - lse                                                     # (N, T)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):                                                    # g (N, T): dL/dlogp
        if ctx.used:
            raise RuntimeError("completion_logprobs' backward overwrites the logits in place and can run once "
                               "(retain_graph=True with a second backward is not supported)")
        ctx.used = True
        logits, tokens, lse = ctx.saved_tensors
        N, T = tokens.shape
        temp, chunk = ctx.temperature, ctx.chunk
        gs = g.float() / temp                                                # (N, T)
        grad = logits                                                        # (N, T+1, V) written in place
        for n in range(N):
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                # d logp / d logits_v = (1[v = token] - softmax(logits / T)_v) / T
                p = logits[n, t0:t1].float() / temp                          # (c, V) the one float32 temporary
                p.sub_(lse[n, t0:t1, None]).exp_()                           # softmax(logits / T), in place
                p.mul_(-gs[n, t0:t1, None])
                p.scatter_add_(-1, tokens[n, t0:t1, None], gs[n, t0:t1, None])
                grad[n, t0:t1].copy_(p)                                      # read fully above, then overwritten
                del p                                                        # free it before the next chunk's
        grad[:, T:].zero_()                                                  # the dropped last position
        return grad, None, None, None


def _video_groups(inputs: dict) -> list[int] | None:
    """Sizes of the runs of consecutive rows that carry the very same video (expand_inputs repeats each
    video for its G rows), or None if no two neighbouring rows share one."""
    grid, spg, pv = inputs["video_grid_thw"], inputs["second_per_grid_ts"], inputs["pixel_values_videos"]
    n = grid.prod(-1).tolist()                                                   # patches per row's video
    if sum(n) != pv.shape[0]:
        return None
    chunks = torch.split(pv, n)
    sizes = [1]
    for i in range(1, len(chunks)):
        same = n[i] == n[i - 1] and torch.equal(grid[i], grid[i - 1]) and torch.equal(spg[i], spg[i - 1]) \
            and torch.equal(chunks[i], chunks[i - 1])
        if same:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes if len(sizes) < len(chunks) else None


@contextlib.contextmanager
def _encode_each_video_once(model, inputs: dict):
    """While inside, the vision tower encodes one copy of each video of `inputs` and its features are
    repeated for the rows that share it (a group of G completions of one video).

    Why: the scoring passes (reference, policy) run over G-expanded inputs, so the vision tower would
    encode every video G times (on the toy preset ~40% of a scoring forward+backward; Qwen2.5-VL-7B: a
    675M-parameter tower over ~3840 patches per video, ~12% of the FLOPs and G x its activations).
    The repeat is a differentiable copy, so the vision tower's gradient is the sum over the G rows, as
    before (same values up to float summation order; tested). It is done with hooks on the tower
    INSIDE the model's own forward, so FSDP/DDP wrapping is untouched (the tower's parameters are
    gathered by the root forward as usual)."""
    inner = vadr.unwrap(model)
    visual = getattr(getattr(inner, "model", None), "visual", None)
    sizes = _video_groups(inputs) if visual is not None and inputs.get("pixel_values_videos") is not None else None
    if sizes is None:
        yield
        return
    grid = inputs["video_grid_thw"]                                              # (N, 3)
    n_patch = grid.prod(-1)                                                      # (N,)
    first = torch.tensor([sum(sizes[:j]) for j in range(len(sizes))], device=grid.device)  # first row per group
    starts = torch.cumsum(n_patch, 0) - n_patch                                  # (N,) patch offsets
    keep = torch.cat([torch.arange(int(starts[f]), int(starts[f] + n_patch[f]), device=grid.device)
                      for f in first.tolist()])                                  # patches of one copy each
    merged = (n_patch[first] // visual.spatial_merge_size ** 2).tolist()         # LLM tokens per unique video
    total, state = int(n_patch.sum()), {}
    plain = {"grid_thw", "return_dict", "output_attentions", "output_hidden_states"}

    def pre(mod, args, kwargs):
        hs = args[0] if args else kwargs.get("hidden_states")
        state["on"] = hs is not None and hs.shape[0] == total and set(kwargs) - {"hidden_states"} <= plain
        if not state["on"]:                       # not this batch's call, or precomputed extras: leave it
            return None
        kwargs = dict(kwargs, grid_thw=grid[first])
        if args:
            return (hs[keep],) + tuple(args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hs[keep])

    def post(mod, args, kwargs, out):
        if not state.pop("on", False):
            return None
        parts = torch.split(out.pooler_output, merged)                          # one (tokens, D) per video
        out.pooler_output = torch.cat([p for p, k in zip(parts, sizes) for _ in range(k)])  # rows' layout
        return out

    handles = [visual.register_forward_pre_hook(pre, with_kwargs=True),
               visual.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def completion_logprobs(model, inputs: dict, completion_ids: torch.Tensor, temperature: float = 1.0,
                        chunk: int = 256, pad_id: int | None = None) -> torch.Tensor:
    """Per-token log-probs of sampled completions under `model`, in ONE forward (teacher forcing).

    inputs: the prompt batch the completions were sampled from (vadr.build_chat_inputs + vadr.collate_videos,
      one row per completion, so a prompt repeated G times appears G times):
      input_ids (N, P) LEFT-padded, attention_mask (N, P), mm_token_type_ids (N, P),
      pixel_values_videos, video_grid_thw (N, 3), second_per_grid_ts (N,).
    completion_ids: (N, T) the sampled tokens (generate's output minus the prompt columns).
    temperature: the sampling temperature (decision 5).  chunk: completion tokens per log-softmax chunk.
    pad_id: id written over vision placeholders inside completions (decision 7); default the model's
      generation pad id. Those positions must be masked: completion_mask(..., vision_ids=vision_token_ids(cfg)).
    Returns logp (N, T) float32, differentiable w.r.t. the model when grad is enabled. Entries after the
    first end token are computed but meaningless: multiply by completion_mask.
    """
    N, T = completion_ids.shape
    if inputs["input_ids"].shape[0] != N:
        raise ValueError(f"{inputs['input_ids'].shape[0]} prompt rows for {N} completions: repeat each "
                         "prompt (and its video) once per completion")
    inner = vadr.unwrap(model)  # config lives on the Qwen model, not on a DDP wrapper; the forward goes through `model`
    if pad_id is None:
        pad_id = inner.generation_config.pad_token_id
        pad_id = int(pad_id[0] if isinstance(pad_id, (list, tuple)) else (pad_id or 0))
    vis = torch.as_tensor(vision_token_ids(inner.config), device=completion_ids.device)
    comp = completion_ids.masked_fill(torch.isin(completion_ids, vis), pad_id)          # (N, T) decision 7

    # Prompt + completion, exactly the sequence generate had built when it sampled the last token.
    input_ids = torch.cat([inputs["input_ids"], comp], dim=1)                             # (N, P+T)
    attention_mask = torch.cat([inputs["attention_mask"],
                                inputs["attention_mask"].new_ones(N, T)], dim=1)          # (N, P+T) decision 6
    # Completion tokens are text (type 0). transformers 5.x computes the 3D mRoPE positions only when
    # mm_token_type_ids is given; then the completion's positions continue the prompt's last text
    # position by +1 per token, exactly as during sampling.
    mm_types = torch.cat([inputs["mm_token_type_ids"],
                          inputs["mm_token_type_ids"].new_zeros(N, T)], dim=1)            # (N, P+T)
    video = {k: inputs[k] for k in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
             if inputs.get(k) is not None}
    with _encode_each_video_once(model, inputs):   # one vision pass per distinct video, not per row
        out = model(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_types,
                    use_cache=False, logits_to_keep=T + 1, **video)
    # logits_to_keep=T+1: only the last T+1 positions go through lm_head (the prompt's logits are never
    # needed). Position p predicts token p+1, so the logits at positions P-1 .. P+T-2 (the first T kept
    # ones) score the T completion tokens; the last kept position (predicting past the completion) is ignored.
    # Why not log_softmax(logits).gather(...): see _ChunkedTokenLogprobs (a float32 (N, T, V) log-softmax
    # is 1.9 GB for 4 x 768 tokens of Qwen's 152k vocabulary, and backward would allocate two more).
    # The whole out.logits goes in, not the view logits[:, :-1]: a view's backward would allocate a
    # full-size zero gradient for the base tensor.
    logits = out.logits                                                                   # (N, T+1, V)
    del out                                      # the logits are now referenced only here (overwritten by backward)
    if T == 0:
        return logits.new_zeros(N, 0, dtype=torch.float32)
    return _ChunkedTokenLogprobs.apply(logits, completion_ids, temperature, chunk)       # (N, T)


# ------------------------------------------------------------------------------------------------
# KL(pi_theta || pi_ref), the k3 estimator
# ------------------------------------------------------------------------------------------------

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float | None = 10.0) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref) on tokens sampled from pi_theta:
        d = log pi_ref - log pi_theta,  KL ~ exp(d) - d - 1   (>= 0, = 0 iff d = 0; E[exp(d)] = 1 under pi_theta).
    d is clamped to [-clamp, clamp] (authors: 10; decision 3), which also zeroes the gradient outside.
    Gradient w.r.t. logp: 1 - exp(d). Shapes: any, elementwise; returns the same shape as logp.
    """
    d = ref_logp.detach() - logp                                                      # (..., T)
    if clamp is not None:
        d = d.clamp(-clamp, clamp)
    return torch.exp(d) - d - 1.0                                                     # (..., T)


# ------------------------------------------------------------------------------------------------
# Eq. 2 / Eq. 3: the clipped surrogate with KL, and its loss (Algorithm 2 line 12)
# ------------------------------------------------------------------------------------------------

def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.04, epsilon: float = 0.2,
              loss_type: str = "sequence") -> tuple[torch.Tensor, dict]:
    """loss = -J, with J of Eq. 2 (or Eq. 3 when old_logp is None).

    logp:       (N, T) log pi_theta of the sampled tokens, WITH grad (completion_logprobs).
    old_logp:   (N, T) log pi_old at sampling time, or None: a single update per rollout (App. C.2,
                Eq. 3; the authors): pi_old = pi_theta without grad, i.e. logp.detach().
    ref_logp:   (N, T) log pi_ref (the frozen initial model, Alg. 2 line 2), or None for no KL term.
    advantages: (N,) one A_i per completion (group_advantages).   mask: (N, T) completion_mask.
    beta: KL weight (paper App. C.3: 0.04).  epsilon: clip range (Eq. 2; unused in value at ratio 1).
    loss_type: "sequence" (Eq. 2: 1/|o_i| per completion, then 1/G) or "token" (decision 4).
    Returns (loss scalar, stats) with stats (detached 0-d tensors): kl (masked mean of k3 over tokens;
    0 without KL), clip_frac (fraction of tokens where the clip bounds the objective: A > 0 and
    ratio > 1+eps, or A < 0 and ratio < 1-eps), ratio (masked mean).

    Why the loss is ~0 at ratio 1 although it trains: in value, ratio = exp(logp - sg(logp)) = 1, the
    surrogate is A_i, and the mean of A over a group is 0 (Eq. 1), while k3 starts at 0 (pi_theta =
    pi_ref at step 0). But d/dtheta exp(logp - sg(logp)) = exp(0) * dlogp/dtheta = grad log pi: the
    gradient is -1/G sum_i A_i 1/|o_i| sum_t grad log pi_theta(o_it), the REINFORCE policy gradient with
    a group baseline. The logged loss is not a measure of progress; the rewards are.
    """
    if loss_type not in ("sequence", "token"):
        raise ValueError(f"loss_type must be 'sequence' or 'token', got {loss_type!r}")
    mask = mask.to(logp.dtype)                                                        # (N, T)
    if old_logp is None:
        old_logp = logp.detach()                                                      # Eq. 3: pi_old = sg(pi_theta)
    ratio = torch.exp(logp - old_logp)                                                # (N, T) rho_it, Eq. 2
    A = advantages.to(logp.dtype)[:, None]                                            # (N, 1) broadcast over tokens
    unclipped = ratio * A                                                             # (N, T)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon) * A                    # (N, T)
    per_token = torch.minimum(unclipped, clipped)                                     # (N, T) min(rho A, clip(rho) A)
    use_kl = ref_logp is not None and beta != 0.0
    if use_kl:
        kl = kl_k3(logp, ref_logp)                                                    # (N, T)
        per_token = per_token - beta * kl                                             # (N, T) ... - beta KL
    if loss_type == "sequence":                                                       # Eq. 2: 1/G sum_i 1/|o_i| sum_t
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)      # (N,)
        objective = per_seq.mean()                                                    # ()
    else:                                                                             # decision 4: all tokens pooled
        objective = (per_token * mask).sum() / mask.sum().clamp(min=1.0)              # ()
    loss = -objective                                                                 # gradient DEscent on -J

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1.0)
        clip_active = ((A > 0) & (ratio > 1.0 + epsilon)) | ((A < 0) & (ratio < 1.0 - epsilon))  # (N, T)
        stats = dict(kl=((kl * mask).sum() / n_tok) if use_kl else logp.new_zeros(()),
                     clip_frac=(clip_active.to(mask.dtype) * mask).sum() / n_tok,
                     ratio=(ratio * mask).sum() / n_tok)
    return loss, {k: v.detach() for k, v in stats.items()}

# ------------------------------------------------------------------------------------------------
# Rollouts: group sampling (Algorithm 2 line 5) and the verification pass (Algorithm 1 line 10)
# ------------------------------------------------------------------------------------------------
# A small sampling loop over the model's forward with a KV cache, written out so that every
# choice is visible: the vision tower and the prompt prefill run ONCE per video, the cache is then
# copied to the G samples of the group (repeat_interleave along the batch), and each decode step
# feeds one token per row. The usual video-GRPO code calls generate(num_return_sequences=G), which
# copies the video G times and runs the vision tower and the prefill G times.
#
# Positions (mRoPE). Prompt positions come from the model's own get_rope_index (3 ids per token:
# time, height, width on video tokens; equal text ids elsewhere). A text token that follows the
# prompt gets position max(prompt positions) + 1, then + 1 per token, on all three axes: exactly
# what get_rope_index assigns to the same tokens in the teacher-forced pass over prompt +
# completion, so sampling, policy and reference passes see the same positions (tested).


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability sums to >= top_p
    (always at least the most likely one); the rest get -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)        # (N, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    # a token is dropped when the mass strictly before it already reaches top_p
    drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p                          # (N, V)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, sorted_idx, sorted_logits)


def _preallocate_kv(cache, capacity: int) -> None:
    """Move each plain DynamicLayer of `cache` into K/V buffers of `capacity` positions (in place).

    Why: HF's DynamicLayer appends a decode step's K/V with torch.cat, which copies the WHOLE cache
    (prompt included: ~800 video tokens + the prompt text, x G samples) for every layer at every step.
    Writing the new column into a buffer sized for prompt + max_new_tokens makes the step O(1) in
    copies; attention reads a view of the filled part. Measured on the toy preset (CPU, 1 thread,
    ~1600-token prompt): about 20% off each decode step; on a GPU the copy is a small share of a step.
    The values the attention sees are the same tensors, so the logits are the same (tested against
    HF generate). Layers of any other kind (sliding window, quantized, ...) are left as they are.
    """
    from transformers.cache_utils import DynamicLayer

    class _PreallocatedLayer(DynamicLayer):
        def __init__(self, layer, capacity):
            super().__init__()
            k, v = layer.keys, layer.values                                       # (N, H_kv, P, D)
            self.n = k.shape[-2]
            self.kbuf = k.new_empty(*k.shape[:-2], capacity, k.shape[-1])        # (N, H_kv, cap, D)
            self.vbuf = v.new_empty(*v.shape[:-2], capacity, v.shape[-1])
            self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :] = k, v
            self.keys, self.values = self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :]
            self.dtype, self.device, self.is_initialized = k.dtype, k.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self.n + m > self.kbuf.shape[-2]:                                  # past capacity: grow like HF
                self.kbuf, self.vbuf = torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)
            else:
                self.kbuf[..., self.n:self.n + m, :] = key_states                 # one new column, no copy
                self.vbuf[..., self.n:self.n + m, :] = value_states
            self.n += m
            self.keys, self.values = self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :]
            return self.keys, self.values

    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None \
                and layer.keys.numel() > 0:
            layers[i] = _PreallocatedLayer(layer, capacity)


def sample_group(model, inputs: dict, num_samples: int = 1, max_new_tokens: int = 768,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
                 end_ids=(), pad_id: int = 0, generator: torch.Generator | None = None,
                 ignore_eos: bool = False, suppress_vision: bool = True, sync_ranks: bool = False) -> dict:
    """Sample `num_samples` completions for each prompt of a left-padded batch.

    inputs: build_chat_inputs(...) + collate_videos(...) tensors for B prompts (each with its video).
    Returns dict(completion_ids (B*G, T) with pad after the first end token, completion_mask
    (B*G, T) (1 up to and including the first end token), logprobs (B*G, T) (sampling-time log p of
    each chosen token under logits / temperature), prompt_positions_max (B,)).
    Row b*G + g is sample g of prompt b (the layout grpo's group functions expect).
    suppress_vision: forbid the vision placeholder ids (decision 7): a sampled <|video_pad|> would
      break every later forward over the completion.
    sync_ranks: under FSDP every forward is a collective, so all ranks must run the same number of
      decode steps: the stop test (all rows finished) is all-reduced over ranks.
    ignore_eos: keep sampling to max_new_tokens (the benchmark's forced-length setting).
    """
    # inference_mode rather than no_grad: no autograd bookkeeping at all (version counters, view
    # tracking) on the ~20 small ops of every decode step, ~10% of a toy-preset step on CPU. Not under
    # FSDP (sync_ranks): FSDP2 reuses its unsharded-parameter buffers across forwards, and a buffer
    # made in inference mode could not be written by the next training forward.
    with (torch.no_grad() if sync_ranks else torch.inference_mode()):
        out = _sample_group(model, inputs, num_samples, max_new_tokens, temperature, top_p, greedy, end_ids,
                            pad_id, generator, ignore_eos, suppress_vision, sync_ranks)
    # clones made outside inference mode are ordinary tensors (the completions feed autograd later)
    return {k: v.clone() for k, v in out.items()}


def _sample_group(model, inputs, num_samples, max_new_tokens, temperature, top_p, greedy, end_ids, pad_id,
                  generator, ignore_eos, suppress_vision, sync_ranks) -> dict:
    """sample_group's body (see there), run under inference_mode / no_grad."""
    inner = getattr(model, "module", model)
    B, P = inputs["input_ids"].shape
    G, dev = num_samples, inputs["input_ids"].device
    # 1. prefill once per prompt: vision tower + prompt, last position's logits only
    pos, _ = inner.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], None,
                                        inputs["video_grid_thw"], inputs["second_per_grid_ts"],
                                        inputs["attention_mask"])                       # (3, B, P)
    out = inner(**vadr.model_inputs(inputs), position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    logits = out.logits[:, -1].float()                                                  # (B, V)
    # 2. copy the cache to the G samples of each prompt (rows b*G .. b*G+G-1)
    if G > 1:
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, 0)                                         # (B*G, V)
    _preallocate_kv(cache, P + max_new_tokens)  # decode steps write in place (no per-step torch.cat)
    attn = inputs["attention_mask"].repeat_interleave(G, 0)                             # (B*G, P)
    # Decode-step attention mask, built once. With SDPA, HF would rebuild a (N, 1, 1, L) boolean mask
    # from the 2D mask at every step (create_causal_mask); its text model also accepts an already
    # prepared mapping {"full_attention": mask} and then uses it as is. A batch without left padding
    # gets None, as create_causal_mask itself returns for a one-token query with no padding
    # (_ignore_causal_mask_sdpa). Other attention kernels (eager, flash-attention 2) take the 2D mask,
    # grown by one column per step as before.
    text_cfg = inner.config.get_text_config()
    sdpa = getattr(text_cfg, "_attn_implementation", None) == "sdpa" and \
        all(k == "full_attention" for k in (getattr(text_cfg, "layer_types", None) or ["full_attention"]))
    if sdpa:
        no_pad = bool(attn.all())
        full_mask = torch.cat([attn, attn.new_ones(B * G, max_new_tokens)], 1).bool()[:, None, None, :]  # (N, 1, 1, P+T)
    next_pos = (pos.amax(dim=(0, 2)) + 1).repeat_interleave(G, 0)                       # (B*G,)
    end = torch.tensor(list(end_ids), device=dev, dtype=torch.long)
    banned = torch.tensor(vision_token_ids(inner.config) if suppress_vision else [], device=dev,
                          dtype=torch.long)
    N = B * G
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    toks, lps = [], []
    for t in range(max_new_tokens):
        # 3. choose the next token per row: argmax, or a sample from softmax(logits / T) after top-p
        scaled = logits / (1.0 if greedy else temperature)                              # (N, V)
        if len(banned):
            scaled[:, banned] = float("-inf")
        logp_all = torch.log_softmax(scaled, dim=-1)                                    # (N, V)
        if greedy:
            tok = scaled.argmax(-1)                                                     # (N,)
        else:
            probs = torch.softmax(_top_p_filter(scaled, top_p), dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)           # (N,)
        lp = logp_all.gather(1, tok[:, None]).squeeze(1)                                # (N,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)  # finished rows emit padding
        toks.append(tok)
        lps.append(torch.where(done, torch.zeros_like(lp), lp))
        if not ignore_eos:
            done = done | torch.isin(tok, end)
            all_done = done.all().to(torch.int32)
            if sync_ranks:  # every rank keeps stepping until every rank is done (FSDP collectives)
                torch.distributed.all_reduce(all_done, op=torch.distributed.ReduceOp.MIN)
            if bool(all_done):
                break
        if t == max_new_tokens - 1:  # the last token is chosen: its forward's logits would go unused
            break
        # 4. one decode step: one token per row at position next_pos on all three mRoPE axes
        if sdpa:
            step_mask = {"full_attention": None if no_pad else full_mask[..., :P + t + 1]}  # (N, 1, 1, P+t+1)
        else:
            attn = torch.cat([attn, torch.ones(N, 1, dtype=attn.dtype, device=dev)], 1)  # (N, P+t+1)
            step_mask = attn
        step_pos = next_pos.view(1, N, 1).expand(3, N, 1)                               # (3, N, 1)
        out = inner(input_ids=tok[:, None], attention_mask=step_mask, position_ids=step_pos,
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = next_pos + 1
    ids = torch.stack(toks, 1)                                                          # (N, T)
    mask = completion_mask(ids, list(end_ids), pad_id) if not ignore_eos \
        else torch.ones_like(ids, dtype=torch.float32)                                  # (N, T)
    return dict(completion_ids=ids, completion_mask=mask,
                logprobs=torch.stack(lps, 1) * mask, prompt_positions_max=pos.amax(dim=(0, 2)))
