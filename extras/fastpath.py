"""extras/fastpath.py -- grpo.completion_logprobs with the same contract, computed with less time
and memory: a drop-in that train_rl.py selects in one line (--plain-scoring runs grpo's instead)
for the log-probs of Eq. 3 (Algorithm 2 line 12: the reference pass and the policy's). The math is
grpo's; this file only changes how much work and memory it takes. A paper reader may skip it.

  completion_logprobs   grpo's teacher-forced pass plus: the prompt runs once per group of G rows
                        (its KV cache copied to them) where a cache can be kept, else the vision
                        tower encodes each video once for its G rows; and the log-probs come from
                        a chunked autograd function that never holds a float32 (N, T, V)
                        log-softmax

Same values: tests/test_fastpath.py compares it with grpo's plain version and with the naive
one-forward scoring of extras/bench.py (log-probs and gradients to float rounding). What it saves,
measured: docs/performance.md. The sampler that runs is grpo.sample_group itself.

Run:   python -m pytest tests/test_fastpath.py -q
       python -m extras.bench                      # naive vs these paths, side by side
"""
from __future__ import annotations

import contextlib

import torch

import grpo
import vadr


# ------------------------------------------------------------------------------------------------
# Scoring: log pi_theta(o_it | q, o_i<t) without the (N, T, V) log-softmax
# ------------------------------------------------------------------------------------------------

class _ChunkedTokenLogprobs(torch.autograd.Function):
    """logp[n, t] = log softmax(logits[n, t] / T)[tokens[n, t]] for t < T_c, from logits
    (N, T_c + 1, V); the last position (predicting past the completion) gets zero gradient.

    Why: log_softmax(logits.float()).gather(...) keeps a float32 (N, T_c, V) log-softmax for
    backward, and backward allocates two more of that size (the gather's scattered gradient and
    the log-softmax's input gradient): with Qwen's 152k vocabulary and 4 x 768 tokens, 1.9 GB each.
    Here the forward walks `chunk` rows at a time and keeps only the logsumexp (N, T_c); backward
    rebuilds each chunk's softmax from the saved logits and writes (1[v = token] - softmax_v) g / T
    into the LOGITS' OWN storage, which nothing else needs (lm_head's backward keeps its input and
    weight, not its output; Megatron's vocab-parallel cross-entropy does the same). So only one
    chunk of float32 temporaries is ever alive. Consequence: backward overwrites the logits passed
    in and may run only once.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk):
        N, T = tokens.shape                                              # logits (N, T+1, V)
        tgt = torch.empty(N, T, dtype=torch.float32, device=logits.device)   # (N, T) logit[tok]/T
        lse = torch.empty(N, T, dtype=torch.float32, device=logits.device)   # (N, T) logsumexp
        for n in range(N):
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                x = logits[n, t0:t1].float() / temperature          # (c, V) the float32 temporary
                tgt[n, t0:t1] = x.gather(-1, tokens[n, t0:t1, None]).squeeze(-1)      # (c,)
                m = x.amax(dim=-1, keepdim=True)                     # (c, 1) stabilised logsumexp,
                lse[n, t0:t1] = x.sub_(m).exp_().sum(-1).log_() + m[:, 0]   # in place: one copy
                del x                                                # freed before the next chunk
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk, ctx.used = temperature, chunk, False
        return tgt - lse                                                 # (N, T)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):                                                # g (N, T): dL/dlogp
        if ctx.used:
            raise RuntimeError("completion_logprobs' backward overwrites the logits in place and "
                               "can run once (a second backward after retain_graph=True is not "
                               "supported)")
        ctx.used = True
        logits, tokens, lse = ctx.saved_tensors
        N, T = tokens.shape
        temp, chunk = ctx.temperature, ctx.chunk
        gs = g.float() / temp                                            # (N, T)
        grad = logits                                                    # (N, T+1, V) in place
        for n in range(N):
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                # d logp / d logits_v = (1[v = token] - softmax(logits / T)_v) / T
                p = logits[n, t0:t1].float() / temp                  # (c, V) the float32 temporary
                p.sub_(lse[n, t0:t1, None]).exp_()                   # (c, V) softmax, in place
                p.mul_(-gs[n, t0:t1, None])
                p.scatter_add_(-1, tokens[n, t0:t1, None], gs[n, t0:t1, None])
                grad[n, t0:t1].copy_(p)                       # read fully above, then written
                del p
        grad[:, T:].zero_()                                              # the dropped last position
        return grad, None, None, None


def _video_groups(inputs: dict) -> list[int] | None:
    """Sizes of the runs of consecutive rows that carry the very same video (expand_inputs repeats
    each video for its G rows), or None if no two neighbouring rows share one."""
    grid, spg = inputs["video_grid_thw"], inputs["second_per_grid_ts"]           # (N, 3), (N,)
    pv = inputs["pixel_values_videos"]                                           # (sum n, 1176)
    n = grid.prod(-1).tolist()                                                   # patches per row
    if sum(n) != pv.shape[0]:
        return None
    chunks = torch.split(pv, n)
    sizes = [1]
    for i in range(1, len(chunks)):
        same = n[i] == n[i - 1] and torch.equal(grid[i], grid[i - 1]) \
            and torch.equal(spg[i], spg[i - 1]) and torch.equal(chunks[i], chunks[i - 1])
        if same:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes if len(sizes) < len(chunks) else None


@contextlib.contextmanager
def _encode_each_video_once(model, inputs: dict):
    """While inside, the vision tower encodes one copy of each video of `inputs`, and its features
    are repeated for the rows that share it (a group of G completions of one video).

    Why: the scoring passes run over G-expanded inputs, so the tower would encode every video G
    times (Qwen2.5-VL-7B: a 675M-parameter tower over ~3840 patches per video; its share of a step
    is in docs/performance.md). The repeat is a differentiable copy, so the tower's gradient is the
    sum over the G rows, as before (equal up to float summation order; tested). Hooks on the tower
    act INSIDE the model's forward, so FSDP/DDP wrapping is untouched."""
    inner = vadr.unwrap(model)
    visual = getattr(getattr(inner, "model", None), "visual", None)
    has_video = visual is not None and inputs.get("pixel_values_videos") is not None
    sizes = _video_groups(inputs) if has_video else None
    if sizes is None:
        yield
        return
    grid = inputs["video_grid_thw"]                                              # (N, 3)
    n_patch = grid.prod(-1)                                                      # (N,)
    first = torch.tensor([sum(sizes[:j]) for j in range(len(sizes))],
                         device=grid.device)                                     # (U,) first rows
    starts = torch.cumsum(n_patch, 0) - n_patch                                  # (N,) offsets
    keep = torch.cat([torch.arange(int(starts[f]), int(starts[f] + n_patch[f]), device=grid.device)
                      for f in first.tolist()])                        # patches of one copy each
    merged = (n_patch[first] // visual.spatial_merge_size ** 2).tolist()  # LLM tokens per video
    total, state = int(n_patch.sum()), {}
    plain = {"grid_thw", "return_dict", "output_attentions", "output_hidden_states"}

    def pre(mod, args, kwargs):
        hs = args[0] if args else kwargs.get("hidden_states")
        state["on"] = hs is not None and hs.shape[0] == total \
            and set(kwargs) - {"hidden_states"} <= plain
        if not state["on"]:                  # not this batch's call, or extra inputs: leave it
            return None
        kwargs = dict(kwargs, grid_thw=grid[first])
        if args:
            return (hs[keep],) + tuple(args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hs[keep])

    def post(mod, args, kwargs, out):
        if not state.pop("on", False):
            return None
        parts = torch.split(out.pooler_output, merged)                # U x (tokens, D)
        out.pooler_output = torch.cat([p for p, k in zip(parts, sizes) for _ in range(k)])  # rows
        return out

    handles = [visual.register_forward_pre_hook(pre, with_kwargs=True),
               visual.register_forward_hook(post, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _prompt_groups(inputs: dict) -> list[int] | None:
    """Sizes of the runs of consecutive rows with the very same prompt (tokens, mask and video:
    the G rows of a group), or None if no two neighbouring rows share one."""
    sizes = _video_groups(inputs)
    if sizes is None:
        return None
    ids, attn = inputs["input_ids"], inputs["attention_mask"]                   # (N, P)
    first = 0
    for n in sizes:
        if not (torch.equal(ids[first:first + n], ids[first].expand(n, -1)) and
                torch.equal(attn[first:first + n], attn[first].expand(n, -1))):
            return None
        first += n
    return sizes


def _can_share_prompt(model) -> bool:
    """The shared-prompt pass needs a KV cache: not from a layer that checkpoints (HF drops the
    cache in a training-mode layer with gradient checkpointing; the eval-mode reference keeps it)
    nor under FSDP2 (two forwards of each sharded module before one backward), where the
    one-forward path runs instead."""
    fsdp = getattr(torch.distributed, "fsdp", None)
    kind = getattr(fsdp, "FSDPModule", None) or ()                     # () : isinstance is False
    return not any((getattr(m, "gradient_checkpointing", False) is True and m.training)
                   or isinstance(m, kind) for m in vadr.unwrap(model).modules())


def _shared_prompt_logits(model, inputs: dict, comp: torch.Tensor, sizes: list[int]):
    """The logits (N, T+1, V) of the one-forward pass, with each distinct prompt run ONCE.

    Why: the G rows of a group share their prompt (the video tokens are most of it: 862 of ~1,080
    tokens on the toy, thousands on the real data), and causal attention makes the prompt's
    activations independent of the completion. So the prompt runs once per group (vision tower
    and text), its KV cache is copied to the group's rows (a differentiable gather: the prompt's
    gradient is the sum over the G rows, as before), and the completions run on top of it. Same
    values to float rounding (tests/test_fastpath.py); the teacher-forced pass of rl_step does
    about (U*P + N*T) / (N*(P+T)) of the work (docs/performance.md)."""
    N, T = comp.shape
    dev = comp.device
    U = len(sizes)
    first = torch.tensor([sum(sizes[:j]) for j in range(U)], device=dev)        # (U,) first rows
    rows = torch.repeat_interleave(torch.arange(U, device=dev),
                                   torch.tensor(sizes, device=dev))             # (N,) row -> group
    grid = inputs["video_grid_thw"]                                              # (N, 3)
    chunks = torch.split(inputs["pixel_values_videos"], grid.prod(-1).tolist())  # N x (n, 1176)
    prompt = {k: inputs[k][first] for k in ("input_ids", "attention_mask", "mm_token_type_ids",
                                            "video_grid_thw", "second_per_grid_ts")}  # (U, ...)
    prompt["pixel_values_videos"] = torch.cat([chunks[f] for f in first.tolist()])
    inner = vadr.unwrap(model)
    pos, _ = inner.model.get_rope_index(prompt["input_ids"], prompt["mm_token_type_ids"], None,
                                        prompt["video_grid_thw"], prompt["second_per_grid_ts"],
                                        prompt["attention_mask"])               # (3, U, P)
    out = model(**vadr.model_inputs(prompt), position_ids=pos, use_cache=True, logits_to_keep=1)
    cache, head = out.past_key_values, out.logits[rows]          # head (N, 1, V): predicts token 0
    del out
    cache.batch_select_indices(rows)                             # (U, H, P, D) -> (N, H, P, D)
    # completion tokens: text, positions continuing the prompt's by +1 (= grpo.scoring_inputs)
    start = pos.amax(dim=(0, 2))[rows] + 1                                       # (N,)
    cpos = (start[:, None] + torch.arange(T, device=dev)).expand(3, N, T)        # (3, N, T)
    attn = torch.cat([inputs["attention_mask"], inputs["attention_mask"].new_ones(N, T)], 1)
    out = model(input_ids=comp, attention_mask=attn, position_ids=cpos, past_key_values=cache,
                use_cache=True)                                                  # (N, T, V)
    return torch.cat([head, out.logits], 1)                                      # (N, T+1, V)


def completion_logprobs(model, inputs: dict, completion_ids: torch.Tensor,
                        temperature: float = 1.0, chunk: int = 256,
                        pad_id: int | None = None, share_prompt: bool = True) -> torch.Tensor:
    """grpo.completion_logprobs (same arguments and result, see there), with one pass per
    distinct prompt (share_prompt, where _can_share_prompt), else one vision pass per distinct
    video, and the chunked log-probs. chunk: completion tokens per log-softmax chunk."""
    N, T = completion_ids.shape
    if inputs["input_ids"].shape[0] != N:
        raise ValueError(f"{inputs['input_ids'].shape[0]} prompt rows for {N} completions: "
                         "repeat each prompt (and its video) once per completion")
    scoring = grpo.scoring_inputs(model, inputs, completion_ids, pad_id)
    sizes = _prompt_groups(inputs) if share_prompt and T > 0 and _can_share_prompt(model) \
        else None
    if sizes is not None:
        P = inputs["input_ids"].shape[1]
        logits = _shared_prompt_logits(model, inputs, scoring["input_ids"][:, P:], sizes)
    else:
        with _encode_each_video_once(model, inputs):
            out = model(**scoring, use_cache=False, logits_to_keep=T + 1)
        # The whole out.logits goes in, not the view logits[:, :-1]: a view's backward would
        # allocate a full-size zero gradient for its base tensor.
        logits = out.logits                                                      # (N, T+1, V)
        del out                           # now referenced only here (backward overwrites it)
    if T == 0:
        return logits.new_zeros(N, 0, dtype=torch.float32)
    return _ChunkedTokenLogprobs.apply(logits, completion_ids, temperature, chunk)  # (N, T)
