"""extras/fastpath.py -- grpo.sample_group and grpo.completion_logprobs with the same contracts,
computed with less time and memory: what train_rl.py (Algorithm 2 lines 5, 8 and 12) and eval.py
run. The math is grpo.py's; this file only changes how much work and memory it takes.

  sample_group          grpo's sampling loop (prefill once per video, KV cache copied to the G
                        samples) plus: a KV cache preallocated for prompt + max_new_tokens (no
                        per-step torch.cat), decode masks prepared once, inference_mode, and the
                        two flags only the scripts need: sync_ranks (FSDP) and ignore_eos (bench)
  completion_logprobs   grpo's teacher-forced pass plus: the vision tower encodes each video once
                        for its G rows, and the log-probs come from a chunked autograd function
                        that never holds a float32 (N, T, V) log-softmax

Same values: tests/test_fastpath.py compares each with grpo's plain version and with HF generate
(identical tokens; log-probs and gradients to float rounding). What they save, measured:
docs/performance.md.

Run:   python -m pytest tests/test_fastpath.py -q
       python -m extras.bench                      # naive vs these paths, side by side
"""
from __future__ import annotations

import contextlib
import functools

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


# ------------------------------------------------------------------------------------------------
# Sampling: grpo's loop with a preallocated KV cache and prepared decode masks
# ------------------------------------------------------------------------------------------------

def _preallocate_kv(cache, capacity: int) -> None:
    """Move each plain DynamicLayer of `cache` into K/V buffers of `capacity` positions (in place).

    Why: HF's DynamicLayer appends a decode step's K/V with torch.cat, which copies the WHOLE cache
    (prompt included, x G samples) for every layer at every step. Writing the new column into a
    buffer sized for prompt + max_new_tokens makes a step O(1) in copies; attention reads a view of
    the filled part (docs/performance.md). The values attention sees are the same (tested against
    HF generate). Layers of any other kind (sliding window, quantized, ...) are left as they are.
    """
    from transformers.cache_utils import DynamicLayer

    class _PreallocatedLayer(DynamicLayer):
        def __init__(self, layer, capacity):
            super().__init__()
            k, v = layer.keys, layer.values                                   # (N, H_kv, P, D)
            self.n = k.shape[-2]
            self.kbuf = k.new_empty(*k.shape[:-2], capacity, k.shape[-1])    # (N, H_kv, cap, D)
            self.vbuf = v.new_empty(*v.shape[:-2], capacity, v.shape[-1])
            self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :] = k, v
            self.keys, self.values = self.kbuf[..., :self.n, :], self.vbuf[..., :self.n, :]
            self.dtype, self.device, self.is_initialized = k.dtype, k.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self.n + m > self.kbuf.shape[-2]:                   # past capacity: grow like HF
                self.kbuf = torch.cat([self.keys, key_states], -2)
                self.vbuf = torch.cat([self.values, value_states], -2)
            else:
                self.kbuf[..., self.n:self.n + m, :] = key_states         # the new column only
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
                 ignore_eos: bool = False, suppress_vision: bool = True,
                 sync_ranks: bool = False, stop=None) -> dict:
    """grpo.sample_group (same arguments and result, see there), faster, plus three flags:
    sync_ranks: under FSDP every forward is a collective, so all ranks must run the same number
      of decode steps: the stop test (all rows finished) is all-reduced over ranks.
    ignore_eos: keep sampling to max_new_tokens (extras/bench.py's forced-length rollouts).
    stop: (candidate token ids, check(ids: list[int]) -> bool), e.g. label_stop(tok): a row whose
      new token is a candidate and whose tokens so far pass check ends there (its mask ends after
      that token, no end token is written). Every row still draws from the generator at every
      step, so the other rows' tokens are exactly those of a run without `stop`.
    """
    # inference_mode rather than no_grad: no autograd bookkeeping (version counters, view
    # tracking) on the small ops of every decode step (docs/performance.md). Not under FSDP
    # (sync_ranks): FSDP2 reuses its unsharded-parameter buffers across forwards, and a buffer
    # made in inference mode could not be written by the next training forward.
    with (torch.no_grad() if sync_ranks else torch.inference_mode()):
        out = _sample_group(model, inputs, num_samples, max_new_tokens, temperature, top_p, greedy,
                            end_ids, pad_id, generator, ignore_eos, suppress_vision, sync_ranks,
                            None if ignore_eos else stop)
    # clones made outside inference mode are ordinary tensors (the completions feed autograd later)
    return {k: v.clone() for k, v in out.items()}


def label_settled(text: str) -> bool:
    """True when vadr.parse_completion gives every continuation of `text` the label it gives
    `text`: the first <answer> is open, the first <which> after it is closed with no </answer>
    between, and no <which> comes before that <answer>. Then the label is that <which>'s,
    whether the answer closes later (it is the first <which> inside it) or never (it is the first
    <which> of the text): vadr._first_tag reads the first opening and the first closing after it.
    tests/test_fastpath.py checks this against parse_completion on every prefix of completions."""
    i = text.find("<answer>")
    if i < 0 or "<which>" in text[:i]:
        return False
    w = text.find("<which>", i)
    e = text.find("</which>", w) if w >= 0 else -1
    return e >= 0 and "</answer>" not in text[i:e]


@functools.lru_cache(maxsize=8)
def label_stop(tok):
    """sample_group's `stop` for Algorithm 1's second completion, of which only the label is read
    (rewards.verification_reward_from_text): a row ends once its <which> is settled (label_settled),
    checked only after tokens whose text holds '>' (every tag ends with one). Saves the rest of the
    answer's decode steps (docs/performance.md) and leaves every reward as it was."""
    pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
    cands = [i for i, p in enumerate(pieces) if isinstance(p, str) and ">" in p]
    return cands, lambda ids: label_settled(tok.decode(ids, skip_special_tokens=True))


def _decode_masks(inner, attn: torch.Tensor, max_new_tokens: int):
    """The attention mask of decode step t, as step_mask(t) (t = 0, 1, ...).

    Why: with SDPA, HF would rebuild an (N, 1, 1, L) boolean mask from the 2D mask at every step
    (create_causal_mask); its text model also takes a prepared {"full_attention": mask} as is, so
    the mask is built once and sliced. A batch without left padding gets None, what
    create_causal_mask itself returns for a one-token query with no padding. Other attention
    kernels (eager, flash-attention 2) get the 2D mask grown by one column per step, as grpo's."""
    N, dev = attn.shape[0], attn.device
    text_cfg = inner.config.get_text_config()
    layer_types = getattr(text_cfg, "layer_types", None) or ["full_attention"]
    sdpa = getattr(text_cfg, "_attn_implementation", None) == "sdpa" \
        and all(k == "full_attention" for k in layer_types)
    if sdpa:
        no_pad, P = bool(attn.all()), attn.shape[1]
        full = torch.cat([attn, attn.new_ones(N, max_new_tokens)], 1).bool()[:, None, None, :]
        return lambda t: {"full_attention": None if no_pad else full[..., :P + t + 1]}  # (N,1,1,.)
    grown = [attn]

    def step_mask(t):
        grown[0] = torch.cat([grown[0], torch.ones(N, 1, dtype=attn.dtype, device=dev)], 1)
        return grown[0]                                                          # (N, P+t+1)
    return step_mask


def _sample_group(model, inputs, num_samples, max_new_tokens, temperature, top_p, greedy, end_ids,
                  pad_id, generator, ignore_eos, suppress_vision, sync_ranks, stop) -> dict:
    """sample_group's body (grpo.sample_group's steps), run under inference_mode / no_grad."""
    inner = vadr.unwrap(model)
    P, G, dev = inputs["input_ids"].shape[1], num_samples, inputs["input_ids"].device
    cache, logits, pos = grpo.prefill(model, inputs, G)                          # steps 1-2
    _preallocate_kv(cache, P + max_new_tokens)     # decode steps write in place (no torch.cat)
    step_mask = _decode_masks(inner, inputs["attention_mask"].repeat_interleave(G, 0),
                              max_new_tokens)
    N = logits.shape[0]
    next_pos = (pos.amax(dim=(0, 2)) + 1).repeat_interleave(G, 0)                # (N,)
    end = torch.tensor(list(end_ids), device=dev, dtype=torch.long)
    banned = torch.tensor(grpo.vision_token_ids(inner.config) if suppress_vision else [],
                          device=dev, dtype=torch.long)
    done = torch.zeros(N, dtype=torch.bool, device=dev)
    cut = torch.full((N,), max_new_tokens, dtype=torch.long, device=dev)  # (N,) stop: kept length
    if stop is not None:
        may_stop = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)      # (V,)
        may_stop[[i for i in stop[0] if i < len(may_stop)]] = True
    toks, lps = [], []
    for t in range(max_new_tokens):
        tok, lp = grpo.choose_token(logits, temperature, top_p, greedy, banned, generator)  # step 3
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)     # finished rows: padding
        toks.append(tok)
        lps.append(torch.where(done, torch.zeros_like(lp), lp))
        if stop is not None and bool((~done & may_stop[tok]).any()):
            rows = (~done & may_stop[tok]).nonzero().flatten().tolist()
            hist = torch.stack(toks, 1)[rows].tolist()                       # those rows' tokens
            for n, ids_n in zip(rows, hist):
                if stop[1](ids_n):
                    done[n], cut[n] = True, t + 1
        if not ignore_eos:
            done = done | torch.isin(tok, end)
            all_done = done.all().to(torch.int32)
            if sync_ranks:   # every rank keeps stepping until every rank is done (collectives)
                torch.distributed.all_reduce(all_done, op=torch.distributed.ReduceOp.MIN)
            if bool(all_done):
                break
        if t == max_new_tokens - 1:      # the last token is chosen: its forward would go unused
            break
        # step 4: one decode step, one token per row at next_pos on all three mRoPE axes
        out = inner(input_ids=tok[:, None], attention_mask=step_mask(t),
                    position_ids=next_pos.view(1, N, 1).expand(3, N, 1),            # (3, N, 1)
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()              # (N, V)
        next_pos = next_pos + 1
    ids = torch.stack(toks, 1)                                                      # (N, T)
    mask = grpo.completion_mask(ids, list(end_ids), pad_id) if not ignore_eos \
        else torch.ones_like(ids, dtype=torch.float32)                              # (N, T)
    mask = mask * (torch.arange(ids.shape[1], device=dev) < cut[:, None])         # (N, T) stop
    return dict(completion_ids=ids, completion_mask=mask,
                logprobs=torch.stack(lps, 1) * mask, prompt_positions_max=pos.amax(dim=(0, 2)))
