"""The sampler that runs (grpo.sample_group) and the scorer's drop-in (extras/fastpath.py) give the
plain results and the naive paths' results (extras/bench.py measures what they save;
docs/performance.md has the numbers).

  * grpo.sample_group (prefill once, a preallocated cache, prepared decode masks, inference_mode)
    = the plain step-by-step loop below (_loop_sample_group: HF's cache grown by torch.cat, the 2D
    mask grown per step): the same completions, masks and sampling-time log-probs, greedy and
    sampled under one seed, with left padding, G = 1 and 3, and with a stop.
  * fastpath.completion_logprobs (vision once per video, chunked log-probs with an in-place
    backward) = grpo.completion_logprobs: values and gradients; invariant to the chunk size.
  * both samplers vs HF generate(num_return_sequences=G): identical greedy
    completions (with an early end token, left padding, G = 1 and 2), identical SAMPLED completions
    under one seed (HF's sampler draws from the global RNG the way sample_group draws from its
    generator: one multinomial over the (B*G, V) probabilities per step), and the same per-step
    distributions (the top-p filtered scores equal HF's processed scores).
  * the sampling-time log-probs equal completion_logprobs' teacher-forced ones, and the mRoPE positions
    used at every decode step equal get_rope_index over prompt + completion.
  * the vision tower runs once per video per group, in sampling and in scoring (same gradients).
  * one batched verification call = one call per trimmed video.
  * the chunked log-prob function: naive values and gradients; its memory accounting (bench.py) is the
    same on real and fake tensors and at most half the naive one at the real vocabulary.
  * extras/bench.py's random 7B-shaped model is built right (meta device + to_empty), and it runs.
Run: python -m pytest tests/test_fastpath.py -q
"""
import contextlib
import copy
import json

import numpy as np
import pytest
import torch

import grpo
import rewards
import vadr
from extras import bench, fastpath, toymodel

IMPLS = {"grpo": grpo, "fastpath": fastpath}   # the scorers: the plain one and the drop-in


def _loop_sample_group(model, inputs, num_samples=1, max_new_tokens=768, temperature=1.0, top_p=1.0,
                       greedy=False, end_ids=(), pad_id=0, generator=None, suppress_vision=True):
    """The oracle: grpo.sample_group's steps in their plainest form (HF's DynamicCache appending by
    torch.cat, the 2D attention mask grown by one column per step, no_grad, no stop)."""
    inner, G = vadr.unwrap(model), num_samples
    N, dev = inputs["input_ids"].shape[0] * G, inputs["input_ids"].device
    banned = torch.tensor(grpo.vision_token_ids(inner.config) if suppress_vision else [], device=dev,
                          dtype=torch.long)
    end = torch.tensor(list(end_ids), device=dev, dtype=torch.long)
    with torch.no_grad():
        cache, logits, pos = grpo.prefill(model, inputs, G)
        attn = inputs["attention_mask"].repeat_interleave(G, 0)
        next_pos = (pos.amax(dim=(0, 2)) + 1).repeat_interleave(G, 0)
        done = torch.zeros(N, dtype=torch.bool, device=dev)
        toks, lps = [], []
        for t in range(max_new_tokens):
            tok, lp = grpo.choose_token(logits, temperature, top_p, greedy, banned, generator)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            toks.append(tok)
            lps.append(torch.where(done, torch.zeros_like(lp), lp))
            done = done | torch.isin(tok, end)
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            attn = torch.cat([attn, attn.new_ones(N, 1)], 1)
            out = inner(input_ids=tok[:, None], attention_mask=attn,
                        position_ids=next_pos.view(1, N, 1).expand(3, N, 1), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            next_pos = next_pos + 1
    ids = torch.stack(toks, 1)
    mask = grpo.completion_mask(ids, list(end_ids), pad_id)
    return dict(completion_ids=ids, completion_mask=mask, logprobs=torch.stack(lps, 1) * mask,
                prompt_positions_max=pos.amax(dim=(0, 2)))


SAMPLERS = {"grpo": grpo.sample_group, "loop": _loop_sample_group}   # the one that runs, the oracle


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here (restored after): on a shared 2-core machine two threads that wait on
    each other make these small forwards several times slower (docs/performance.md)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def toy():
    corpus = ["<think><step1>a grey road with two walkers and a red car</step1></think>",
              "<answer><which>Normal</which><what>people walk</what></answer>"]
    model, tok = toymodel.load_model("toy", corpus=corpus, seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    v1 = vadr.encode_frames(rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), 2.0)
    v2 = vadr.encode_frames(rng.integers(0, 256, (4, 112, 84, 3), dtype=np.uint8), 1.0)
    v3 = vadr.encode_frames(rng.integers(0, 256, (4, 84, 112, 3), dtype=np.uint8), 4.0)
    vids = vadr.collate_videos([v1, v2])
    # two prompts of different lengths and videos of different sizes: the shorter row is LEFT-padded
    inputs = dict(vadr.build_chat_inputs(tok, ["short", "a longer prompt here"], vids["video_grid_thw"]), **vids)
    return dict(model=model, tok=tok, inputs=inputs, videos=[v1, v2, v3], end=vadr.end_token_ids(tok),
                pad=vadr.pad_token_id(tok), vis=grpo.vision_token_ids(model.config))


def _generate(t, model, inputs, G, T, **kw):
    """HF generate, G completions per prompt (greedy generate refuses num_return_sequences > 1: the
    prompts are repeated instead, as expand_inputs does)."""
    if not kw.get("do_sample") and G > 1:
        inputs, G = grpo.expand_inputs(inputs, G), 1
    P = inputs["input_ids"].shape[1]
    with torch.no_grad():
        g = model.generate(**inputs, num_return_sequences=G, max_new_tokens=T, eos_token_id=t["end"],
                           pad_token_id=t["pad"], suppress_tokens=t["vis"], top_k=0, return_dict_in_generate=True,
                           output_logits=True, output_scores=True, **kw)
    return g.sequences[:, P:], g


# ---------------------------------------------------------------- grpo's sampler = the plain loop, fastpath's scorer = grpo's

@pytest.mark.parametrize("G,greedy,seed,attn", [(1, True, 0, "sdpa"), (3, True, 0, "sdpa"), (3, False, 0, "sdpa"),
                                                (3, False, 1, "sdpa"), (3, False, 0, "eager")])
def test_sample_group_equals_the_plain_loop(toy, G, greedy, seed, attn):
    """Left-padded batch of two videos: the same tokens, masks and positions; the sampling-time
    log-probs to float rounding (the same ops on the same values, a view of a preallocated cache).
    eager: the decode mask is the 2D one sliced, not SDPA's prepared 4D one."""
    t = toy
    model = t["model"]
    if attn != "sdpa":
        model = copy.deepcopy(model)
        model.set_attn_implementation(attn)
    assert model.config.get_text_config()._attn_implementation == attn
    kw = dict(num_samples=G, max_new_tokens=10, temperature=0.7, top_p=0.9, greedy=greedy,
              end_ids=t["end"], pad_id=t["pad"])
    plain = _loop_sample_group(model, t["inputs"], generator=torch.Generator().manual_seed(seed), **kw)
    fast = grpo.sample_group(model, t["inputs"], generator=torch.Generator().manual_seed(seed), **kw)
    assert plain["completion_ids"].shape[0] == 2 * G
    for k in ("completion_ids", "completion_mask", "prompt_positions_max"):
        assert torch.equal(plain[k], fast[k]), k
    assert torch.allclose(plain["logprobs"], fast["logprobs"], atol=1e-5)
    assert not fast["logprobs"].is_inference()                  # ordinary tensors: autograd may use them


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fast_completion_logprobs_equal_plain_values_and_gradients(toy, temperature):
    """G-expanded inputs (so the vision tower is shared) and a completion with an early end: the
    same log-probs and the same gradients for every parameter, vision tower included."""
    t, G = toy, 2
    model = copy.deepcopy(t["model"])
    full = grpo.expand_inputs(t["inputs"], G)
    comp = torch.randint(20, len(t["tok"]), (2 * G, 9), generator=torch.Generator().manual_seed(4))
    comp[0, 5], comp[0, 6:] = t["tok"].convert_tokens_to_ids("<|im_end|>"), t["pad"]
    w = torch.randn(2 * G, 9, generator=torch.Generator().manual_seed(5))
    out = {}
    for name, impl in IMPLS.items():
        model.zero_grad()
        lp = impl.completion_logprobs(model, full, comp, temperature=temperature)
        (lp * w).sum().backward()
        out[name] = lp.detach(), [p.grad.clone() for p in model.parameters()]
    (lp_plain, g_plain), (lp_fast, g_fast) = out["grpo"], out["fastpath"]
    assert lp_fast.shape == comp.shape and lp_fast.dtype == torch.float32
    assert torch.allclose(lp_plain, lp_fast, atol=1e-5, rtol=0)
    # float32 rounding scales with each gradient's size (up to ~16 here): bound the error per tensor
    # relative to its largest entry (an all-zero plain gradient must then be matched to 1e-17)
    assert max(((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
               for a, b in zip(g_plain, g_fast)) < 1e-5
    assert max(a.abs().max().item() for a in g_fast) > 0


# ---------------------------------------------------------------- greedy and sampled completions = HF generate

@pytest.mark.parametrize("impl", SAMPLERS)
@pytest.mark.parametrize("G", [1, 2])
def test_greedy_equals_hf_generate(toy, G, impl):
    t = toy
    ours = SAMPLERS[impl](t["model"], t["inputs"], num_samples=G, max_new_tokens=8,
                                    greedy=True, end_ids=t["end"], pad_id=t["pad"])
    hf, _ = _generate(t, t["model"], t["inputs"], G, 8, do_sample=False)
    assert torch.equal(ours["completion_ids"], hf)


@pytest.mark.parametrize("impl", SAMPLERS)
def test_greedy_equals_hf_generate_with_an_early_end(toy, impl):
    """Make <|im_end|> win exactly where video 0's completion would first emit a token x that video 1's
    never does: W[end] = 1.01 W[x] (x's logit is the positive maximum there). Video 0's samples stop and
    are padded, video 1's go on: as generate does."""
    t = toy
    first = SAMPLERS[impl](t["model"], t["inputs"], num_samples=1, max_new_tokens=8,
                                     greedy=True, end_ids=t["end"], pad_id=t["pad"])["completion_ids"]
    k = next(i for i, v in enumerate(first[0].tolist()) if v not in first[1].tolist())
    x = int(first[0, k])
    model = copy.deepcopy(t["model"])
    im_end = t["tok"].convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        model.lm_head.weight[im_end] = 1.01 * model.lm_head.weight[x]
    ours = SAMPLERS[impl](model, t["inputs"], num_samples=2, max_new_tokens=8, greedy=True,
                                    end_ids=t["end"], pad_id=t["pad"])
    hf, _ = _generate(t, model, t["inputs"], 2, 8, do_sample=False)
    ids = ours["completion_ids"]
    assert torch.equal(ids, hf)
    assert ids.shape == (4, 8) and (ids[:2, k] == im_end).all()         # video 0's samples end at step k
    assert ours["completion_mask"][:2].sum(1).tolist() == [k + 1, k + 1]  # the end token counts, padding not
    assert (ids[:2, k + 1:] == t["pad"]).all() and ours["completion_mask"][2:].sum() == 16


@pytest.mark.parametrize("impl", SAMPLERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_completions_equal_hf_generate_under_one_seed(toy, seed, impl):
    t = toy
    ours = SAMPLERS[impl](t["model"], t["inputs"], num_samples=3, max_new_tokens=10,
                                    temperature=0.7, top_p=0.9, end_ids=t["end"], pad_id=t["pad"],
                                    generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)                                # HF samples from the global generator
    hf, g = _generate(t, t["model"], t["inputs"], 3, 10, do_sample=True, temperature=0.7, top_p=0.9)
    assert torch.equal(ours["completion_ids"], hf)
    # the per-step distributions are the same: HF's processed scores (vision ids suppressed, / T,
    # top-p) equal ours, and our sampling-time log-probs are log softmax of the suppressed logits / T
    raw = torch.stack(g.logits, 1).float()                                  # (N, T, V) raw logits
    scaled = raw / 0.7
    scaled[..., t["vis"]] = float("-inf")
    mine = grpo._top_p_filter(scaled.flatten(0, 1), 0.9).view_as(scaled)
    theirs = torch.stack(g.scores, 1)
    assert torch.equal(torch.isinf(mine), torch.isinf(theirs))
    fin = torch.isfinite(mine)
    assert torch.allclose(mine[fin], theirs[fin], atol=1e-5)
    lp = torch.log_softmax(scaled, -1).gather(-1, hf[..., None]).squeeze(-1)
    assert torch.allclose(lp * ours["completion_mask"], ours["logprobs"], atol=1e-5)


# ---------------------------------------------------------------- the second completion stops once its label is settled

def test_stopped_rows_keep_their_tokens_and_the_others_are_untouched(toy):
    """A stop that ends the rows starting with an even token at their 3rd token: those rows' tokens and
    log-probs up to the cut are the ones of the plain loop without a stop, their masks end there and
    padding follows; every other row is identical; the loop ends earlier only when every row is done."""
    t = toy
    kw = dict(num_samples=3, max_new_tokens=10, temperature=1.5, end_ids=t["end"], pad_id=t["pad"])
    plain = _loop_sample_group(t["model"], t["inputs"], generator=torch.Generator().manual_seed(1), **kw)
    even = [i for i, v in enumerate(plain["completion_ids"][:, 0].tolist()) if v % 2 == 0]
    assert 0 < len(even) < 6                                  # both kinds of rows, so the checks can fail
    stop = (list(range(len(t["tok"]))), lambda ids: len(ids) == 3 and ids[0] % 2 == 0)
    cut = grpo.sample_group(t["model"], t["inputs"], generator=torch.Generator().manual_seed(1), stop=stop, **kw)
    m0, m1 = plain["completion_mask"], cut["completion_mask"]
    assert m1.shape[1] <= m0.shape[1]
    for n in range(6):
        k = min(3, int(m0[n].sum())) if n in even else int(m0[n].sum())
        assert torch.equal(cut["completion_ids"][n, :k], plain["completion_ids"][n, :k]), n
        assert (cut["completion_ids"][n, k:] == t["pad"]).all(), n
        assert m1[n].tolist() == [1.0] * k + [0.0] * (m1.shape[1] - k), n
        assert torch.allclose(cut["logprobs"][n], plain["logprobs"][n, :m1.shape[1]] * m1[n], atol=1e-6), n


COMPLETIONS = [
    "<think><step1>a road</step1></think>\n<answer>Category: <which>Normal</which>. Event: <what>people walk"
    "</what></answer>",
    "<think><step1>fire</step1></think><answer><which>Fire</which><when>[0.2, 0.6]</when></answer>",
    "<answer><what>x</what><which>Abnormal</which></answer>",
    "<think><which>Normal</which></think><answer><which>Abnormal</which></answer>",  # a <which> in the think
    "<answer>Category: none</answer> then <which>Abnormal</which>",                   # the which outside it
    "<answer><which>Normal</which><which>Abnormal</which>",                           # never closed
    "<which>Abnormal</which><answer><which>Normal</which></answer>",
    "<answer><which>Norm</which></answer>",
]
TAILS = ["", "</answer>", "<which>Abnormal</which></answer>", "</which><which>Normal</which>",
         "</answer><answer><which>Abnormal</which></answer>", " <what>y</what></answer><which>Normal</which>"]


def test_label_settled_means_no_continuation_changes_the_label():
    """Every prefix of each completion that label_settled calls settled keeps vadr.parse_completion's label
    under every continuation tried (its own rest and adversarial tails); typical outputs settle right after
    their answer's </which>, and the traps (a <which> before the answer, an answer closed before its
    <which>) never settle, where a tail would indeed change the label."""
    for c in COMPLETIONS:
        for k in range(len(c) + 1):
            if grpo.label_settled(c[:k]):
                label = vadr.parse_completion(c[:k])["label"]
                for tail in [c[k:]] + TAILS:
                    assert vadr.parse_completion(c[:k] + tail)["label"] == label, (c[:k], tail)
    first = lambda c: next((k for k in range(len(c) + 1) if grpo.label_settled(c[:k])), None)
    for c in COMPLETIONS[:3] + COMPLETIONS[5:6] + COMPLETIONS[7:]:
        assert first(c) == c.index("</which>", c.index("<answer>")) + len("</which>"), c
    for c in (COMPLETIONS[3], COMPLETIONS[4], COMPLETIONS[6]):
        assert first(c) is None, c
    trap = "<think><which>Normal</which></think><answer><which>Abnormal</which>"   # unclosed: Normal
    assert vadr.parse_completion(trap)["label"] == "Normal"
    assert vadr.parse_completion(trap + "</answer>")["label"] == "Abnormal"


def test_label_stop_cuts_a_tokenised_completion_right_after_its_settled_which(toy):
    """label_stop on the toy tokenizer: its check, tried only after candidate tokens (those holding '>'),
    first passes at the token that closes the answer's </which> (a token may hold more, '>.'); the cut text has
    the full text's label."""
    tok = toy["tok"]
    cands, check = grpo.label_stop(tok)
    assert grpo.label_stop(tok) is grpo.label_stop(tok)        # built once per tokenizer
    for c in COMPLETIONS[:3]:
        ids = tok(c)["input_ids"]
        k = next(k for k in range(1, len(ids) + 1) if ids[k - 1] in cands and check(ids[:k]))
        text = tok.decode(ids[:k], skip_special_tokens=True)
        assert not check(ids[:k - 1]) and text.count("</which>") == 1, text   # settles at token k
        assert len(text) - (text.index("</which>") + len("</which>")) < len(tok.decode(ids[k - 1:k])), text
        assert rewards.predicted_label(text) == rewards.predicted_label(c) is not None


# ---------------------------------------------------------------- sampling-time log-probs, positions, prefill once

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("greedy", [True, False])
def test_sampling_logprobs_equal_teacher_forced(toy, greedy, impl, sampler):
    """With suppress_vision=False the sampled distribution is softmax(logits / T) exactly, the one
    completion_logprobs scores (with suppression the sampling-time values are renormalised over the
    allowed ids: larger by -log(1 - p(vision ids)), a few 1e-3 on the random toy)."""
    t, G, temp = toy, 2, (1.0 if greedy else 0.7)
    out = SAMPLERS[sampler](t["model"], t["inputs"], num_samples=G, max_new_tokens=9,
                                   temperature=temp, top_p=0.9, greedy=greedy, end_ids=t["end"],
                                   pad_id=t["pad"], suppress_vision=False,
                                   generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tf = IMPLS[impl].completion_logprobs(t["model"], grpo.expand_inputs(t["inputs"], G),
                                             out["completion_ids"], temperature=temp)
    m = out["completion_mask"]
    assert m.sum() > 0 and torch.allclose(tf * m, out["logprobs"], atol=2e-5)


@pytest.mark.parametrize("impl", SAMPLERS)
def test_decode_positions_equal_get_rope_index_and_prefill_runs_once(toy, impl):
    t, G, T = toy, 3, 6
    # every row runs to T: grpo's by ignore_eos, the plain loop by an end id never sampled
    run_to_T = dict(ignore_eos=True, end_ids=t["end"]) if impl == "grpo" else dict(end_ids=[-1])
    model, inputs = t["model"], t["inputs"]
    B, P = inputs["input_ids"].shape
    calls, vision = [], []
    h1 = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["input_ids"].shape, kw["position_ids"].clone())), with_kwargs=True)
    h2 = model.model.visual.register_forward_hook(lambda m, a, o: vision.append(a[0].shape[0]))
    try:
        out = SAMPLERS[impl](model, inputs, num_samples=G, max_new_tokens=T, temperature=1.0,
                                       pad_id=t["pad"], generator=torch.Generator().manual_seed(0),
                                       **run_to_T)
    finally:
        h1.remove()
        h2.remove()
    # vision tower once, on the B videos' patches (not G copies); prefill once on B rows; T-1 decode steps
    assert vision == [inputs["pixel_values_videos"].shape[0]]
    assert calls[0][0] == (B, P) and len(calls) == T and all(c[0] == (B * G, 1) for c in calls[1:])
    # get_rope_index over prompt + completion, the sequence the teacher-forced passes see
    comp = out["completion_ids"]                                                   # (B*G, T)
    full = grpo.expand_inputs(inputs, G)
    ids = torch.cat([full["input_ids"], comp], 1)
    attn = torch.cat([full["attention_mask"], torch.ones_like(comp)], 1)
    mm = torch.cat([full["mm_token_type_ids"], torch.zeros_like(comp).int()], 1)
    want, _ = model.model.get_rope_index(ids, mm, None, full["video_grid_thw"], full["second_per_grid_ts"], attn)
    prefill = calls[0][1]                                                          # (3, B, P)
    assert torch.equal(prefill.repeat_interleave(G, 1), want[:, :, :P])
    for step, (_, pos) in enumerate(calls[1:]):                                    # token `step` is fed at P+step
        assert torch.equal(pos[:, :, 0], want[:, :, P + step]), step


@pytest.mark.parametrize("impl", SAMPLERS)
def test_batched_verification_equals_one_call_per_video(toy, impl):
    """Algorithm 1's G trimmed videos in one left-padded batch give what G separate calls give."""
    t = toy
    vids = t["videos"]
    prompt = "Is anything abnormal in this video?"
    batch = dict(vadr.build_chat_inputs(t["tok"], [prompt] * 3, torch.cat([v["video_grid_thw"] for v in vids])),
                 **vadr.collate_videos(vids))
    assert (batch["attention_mask"] == 0).any()                                    # really padded
    kw = dict(num_samples=1, max_new_tokens=6, greedy=True, end_ids=t["end"], pad_id=t["pad"])
    together = SAMPLERS[impl](t["model"], batch, **kw)
    for b, v in enumerate(vids):
        one = dict(vadr.build_chat_inputs(t["tok"], [prompt], v["video_grid_thw"]), **v)
        alone = SAMPLERS[impl](t["model"], one, **kw)
        n = alone["completion_ids"].shape[1]
        assert torch.equal(together["completion_ids"][b, :n], alone["completion_ids"][0])
        assert torch.allclose(together["logprobs"][b, :n], alone["logprobs"][0], atol=1e-5)
    # and the naive baseline (one HF generate per video) agrees
    naive = bench.naive_sample_group(t["model"], batch, **kw)
    assert torch.equal(naive["completion_ids"], together["completion_ids"])


# ---------------------------------------------------------------- scoring: vision once, chunked log-probs

def test_scoring_encodes_each_video_once_with_the_same_gradients(toy):
    t, G = toy, 3
    model = copy.deepcopy(t["model"])
    full = grpo.expand_inputs(t["inputs"], G)
    comp = torch.randint(20, len(t["tok"]), (2 * G, 7), generator=torch.Generator().manual_seed(0))
    w = torch.randn(2 * G, 7, generator=torch.Generator().manual_seed(1))
    seen = []
    h = model.model.visual.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))

    def grads(dedupe):
        model.zero_grad()
        ctx = contextlib.nullcontext() if dedupe else _no_dedupe()
        with ctx:
            lp = fastpath.completion_logprobs(model, full, comp, share_prompt=False)
            (lp * w).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters()]
    try:
        lp1, g1 = grads(True)
        lp2, g2 = grads(False)
    finally:
        h.remove()
    assert seen == [t["inputs"]["pixel_values_videos"].shape[0], full["pixel_values_videos"].shape[0]]
    assert torch.allclose(lp1, lp2, atol=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) < 1e-5
    vis = [a for (n, _), a in zip(model.named_parameters(), g1) if n.startswith("model.visual")]
    assert max(v.abs().max().item() for v in vis) > 0                      # the vision tower is trained too
    with torch.no_grad():                                                   # and naive scoring agrees
        assert torch.allclose(bench.naive_logprobs(model, full, comp), lp1, atol=1e-5)


def _rows(inputs, idx):
    """The rows idx of a prompt batch, each with its own video (a group of G is idx repeated)."""
    chunks = torch.split(inputs["pixel_values_videos"], inputs["video_grid_thw"].prod(-1).tolist())
    out = {k: inputs[k][idx] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw",
                                       "second_per_grid_ts")}
    return dict(out, pixel_values_videos=torch.cat([chunks[i] for i in idx]))


@pytest.mark.parametrize("idx", [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1], [1, 0, 0]])
def test_shared_prompt_scoring_runs_each_prompt_once_with_the_same_values_and_gradients(toy, idx):
    """Groups of rows with one prompt (left-padded, of sizes 3+3, 3+1 and 1+2): the text model runs once over
    the distinct prompts and once over the completions on their copied KV cache; log-probs and every
    parameter's gradient equal grpo's one-forward pass and fastpath's with share_prompt=False."""
    t = toy
    model = copy.deepcopy(t["model"])
    full = _rows(t["inputs"], idx)
    N, T, P = len(idx), 8, full["input_ids"].shape[1]
    comp = torch.randint(20, len(t["tok"]), (N, T), generator=torch.Generator().manual_seed(2))
    comp[1, 4], comp[1, 5:] = t["tok"].convert_tokens_to_ids("<|im_end|>"), t["pad"]
    comp[2, 3] = t["vis"][0]                                     # a vision placeholder: scored as the pad id
    w = torch.randn(N, T, generator=torch.Generator().manual_seed(3))
    seen = []
    h = model.model.language_model.register_forward_hook(
        lambda m, a, kw, o: seen.append(tuple(o.last_hidden_state.shape[:2])), with_kwargs=True)
    out = {}
    try:
        for name, fn in (("grpo", grpo.completion_logprobs),
                         ("shared", fastpath.completion_logprobs),
                         ("one_pass", lambda *a, **k: fastpath.completion_logprobs(*a, share_prompt=False, **k))):
            model.zero_grad()
            seen.clear()
            lp = fn(model, full, comp, temperature=0.7)
            (lp * w).sum().backward()
            out[name] = lp.detach(), [p.grad.clone() for p in model.parameters()], list(seen)
    finally:
        h.remove()
    U = len([i for j, i in enumerate(idx) if j == 0 or idx[j - 1] != i])   # distinct runs of one prompt
    assert out["shared"][2] == [(U, P), (N, T)]
    assert out["one_pass"][2] == out["grpo"][2] == [(N, P + T)]
    for name in ("shared", "one_pass"):
        assert torch.allclose(out[name][0], out["grpo"][0], atol=1e-5, rtol=0), name
        assert max((a - b).abs().max().item() for a, b in zip(out[name][1], out["grpo"][1])) < 1e-5, name
    vis = [a for (n, _), a in zip(model.named_parameters(), out["shared"][1]) if n.startswith("model.visual")]
    assert max(v.abs().max().item() for v in vis) > 0            # the prompt pass's gradient reaches the tower


def test_shared_prompt_scoring_only_where_it_can(toy):
    """Rows that share a video but not their prompt text, and a training-mode model with gradient
    checkpointing: the one-forward path runs (the text model sees N rows of P+T tokens once), with the
    same values. The same model in eval mode (the frozen reference) keeps the shared pass."""
    t = toy
    model = copy.deepcopy(t["model"])
    full = _rows(t["inputs"], [0, 0, 1, 1])
    other = dict(full, input_ids=full["input_ids"].clone())
    other["input_ids"][1, -2] += 1                              # one text token of row 1 differs from row 0
    comp = torch.randint(20, len(t["tok"]), (4, 6), generator=torch.Generator().manual_seed(2))
    seen = []
    h = model.model.language_model.register_forward_hook(
        lambda m, a, kw, o: seen.append(tuple(o.last_hidden_state.shape[:2])), with_kwargs=True)
    try:
        with torch.no_grad():
            fastpath.completion_logprobs(model, other, comp)
            assert seen == [(4, full["input_ids"].shape[1] + 6)]
            seen.clear()
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            lp = fastpath.completion_logprobs(model.train(), full, comp)
            assert seen == [(4, full["input_ids"].shape[1] + 6)]
            assert torch.allclose(lp, grpo.completion_logprobs(model, full, comp), atol=1e-5, rtol=0)
            seen.clear()
            lp = fastpath.completion_logprobs(model.eval(), full, comp)
            assert seen == [(2, full["input_ids"].shape[1]), (4, 6)]
            assert torch.allclose(lp, grpo.completion_logprobs(model, full, comp), atol=1e-5, rtol=0)
    finally:
        h.remove()


def test_completion_logprobs_chunking_invariant_and_gradients(toy):
    """Any chunk size gives the same log-probs, and the in-place backward the naive gradients."""
    model, tok, inputs = toy["model"], toy["tok"], toy["inputs"]
    comp = torch.randint(20, len(tok), (2, 9), generator=torch.Generator().manual_seed(1))
    comp[0, 5], comp[0, 6:] = tok.convert_tokens_to_ids("<|im_end|>"), toy["pad"]
    with torch.no_grad():
        outs = [fastpath.completion_logprobs(model, inputs, comp, chunk=c) for c in (1, 2, 4, 1000)]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-6, rtol=0)
    # gradients through the rebuilt chunks equal the naive ones
    w = torch.linspace(-1, 1, comp.numel()).view(comp.shape)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    (fastpath.completion_logprobs(model, inputs, comp, chunk=3) * w).sum().backward()
    g1 = [p.grad.clone() for p in params]
    model.zero_grad()
    (bench.naive_logprobs(model, inputs, comp) * w).sum().backward()
    g2 = [p.grad.clone() for p in params]
    model.zero_grad()
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) < 1e-5
    assert max(a.abs().max().item() for a in g1) > 0


@contextlib.contextmanager
def _no_dedupe():
    saved = fastpath._encode_each_video_once
    fastpath._encode_each_video_once = lambda model, inputs: contextlib.nullcontext()
    try:
        yield
    finally:
        fastpath._encode_each_video_once = saved


@pytest.mark.parametrize("temperature,chunk", [(1.0, 5), (0.7, 64)])
def test_chunked_logprobs_values_and_gradients(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 17, 8, generator=g, requires_grad=True)
    W = torch.randn(50, 8, generator=g, requires_grad=True)
    tok = torch.randint(0, 50, (3, 17), generator=g)
    w = torch.randn(3, 17, generator=g)
    (bench.naive_head_logprobs(h, W, tok, temperature) * w).sum().backward()
    want = (h.grad.clone(), W.grad.clone())
    h.grad = W.grad = None
    lp = bench.ours_head_logprobs(h, W, tok, temperature, chunk)
    assert torch.allclose(lp, bench.naive_head_logprobs(h, W, tok, temperature), atol=1e-5)
    (lp * w).sum().backward()
    assert torch.allclose(h.grad, want[0], atol=1e-5) and torch.allclose(W.grad, want[1], atol=1e-5)
    # the backward writes into the logits: a second backward through the same graph is refused
    lp = bench.ours_head_logprobs(h, W, tok, temperature, chunk)
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        lp.sum().backward()


def test_scoring_memory_accounting_real_equals_fake_and_target():
    real = bench.scoring_memory(N=2, T=40, V=3000, H=16, fake=False, chunk=16)
    fake = bench.scoring_memory(N=2, T=40, V=3000, H=16, fake=True, chunk=16)
    for k in ("naive_ref", "naive_policy", "ours_ref", "ours_policy"):
        assert real[k] == fake[k] > 0, k
    S = real["logits_bytes"]
    assert real["naive_policy"] >= 2.9 * S                   # log-softmax + its gradients: ~3 logits-sized tensors
    full = bench.scoring_memory()                             # 4 x 768 tokens, vocabulary 152064 (fake: no memory)
    assert full["V"] == 152064 and full["ours_policy"] <= 0.5 * full["naive_policy"]
    assert full["ours_ref"] <= 0.5 * full["naive_ref"]


# ---------------------------------------------------------------- extras/bench.py: the 7B-shaped builder, a smoke run

TINY_TEXT = dict(num_hidden_layers=1, hidden_size=256, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64, vocab_size=2048)
TINY_VISION = dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=32, out_hidden_size=256,
                   fullatt_block_indexes=[1])


def test_meta_built_model_has_right_buffers_and_runs(toy):
    cfg = bench.qwen7b_config(toy["tok"], TINY_TEXT, TINY_VISION)
    assert cfg.text_config.rope_parameters["mrope_section"] == [16, 24, 24]   # head_dim 128 as the 7B
    model = bench.random_model(cfg, toy["tok"], torch.device("cpu"), torch.float32, seed=0)
    from transformers import Qwen2_5_VLForConditionalGeneration
    plain = Qwen2_5_VLForConditionalGeneration(cfg)
    for (n, b), (_, b2) in zip(model.named_buffers(), plain.named_buffers()):
        assert torch.equal(b, b2), n
    w = model.model.language_model.layers[0].mlp.up_proj.weight
    assert abs(w.std().item() - 0.02) < 0.003 and model.model.language_model.norm.weight.eq(1).all()
    with torch.no_grad():
        out = model(**vadr.model_inputs(toy["inputs"]), logits_to_keep=1)
    assert torch.isfinite(out.logits).all()


def test_bench_rl_step_args_are_train_rl_s(tmp_path):
    """extras/bench.py writes out the flags of the RL step it times (extras never import an entry
    script): each is what train_rl.py gives for its command line."""
    import train_rl
    ours = vars(bench.rl_step_args(str(tmp_path)))
    theirs = vars(train_rl.parse_args(["--data", "bench.jsonl", "--model", "bench", "--out", str(tmp_path)]))
    assert {"beta", "mu", "epsilon", "loss_type", "num_generations", "max_new_tokens", "lr",
            "frames", "no_verification_normal", "spatial_verification"} <= set(ours)
    assert {k: theirs[k] for k in ours} == ours


def test_bench_smoke(tmp_path, toy):
    """Every section on CPU at tiny sizes, on the 7B-shaped builder (shrunk) with an MFU peak given:
    the code path the GPU run takes, minus CUDA."""
    path = tmp_path / "bench.json"
    res = bench.main(["--device", "cpu", "--model", "qwen7b", "--qwen7b-text", json.dumps(TINY_TEXT),
                      "--qwen7b-vision", json.dumps(TINY_VISION), "--clip-size", "56", "84", "--clip-frames", "20",
                      "--frames", "4", "--new-tokens", "3", "--score-tokens", "8", "--repeats", "1",
                      "--rl-repeats", "1", "--peak-tflops", "1", "--json", str(path)])
    saved = json.loads(path.read_text())
    for k in ("rollout_speedup", "rl_step_speedup", "scoring_memory_ratio", "verification_speedup", "sft_speedup"):
        assert saved[k] > 0, k
    assert saved["device"].startswith("cpu") and saved["device_type"] == "cpu"
    assert "mfu" in saved["sections"]["rollout"]["ours"] and "rollout tokens/s" in res["table"]
    assert abs(saved["sections"]["sft"]["loss_naive"] - saved["sections"]["sft"]["loss_ours"]) < 1e-4
