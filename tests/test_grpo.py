"""Oracles for grpo.py (paper Eq. 1-3, App. C.2): hand-computed advantages, the k3 KL and its derivative,
the policy gradient at ratio 1 (= REINFORCE), the clip at ratio != 1, masking, and the teacher-forced
log-probs of the toy Qwen2.5-VL against a naive log_softmax and against generate's own scores.
Run: python -m pytest tests/test_grpo.py -q"""
import math

import numpy as np
import pytest
import torch

import grpo
import vadr
from extras import toymodel


# ---------------------------------------------------------------- Eq. 1: group advantages

def test_advantages_hand_values_unbiased_and_biased():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])           # mean 2.5, sum of squares 5
    a, z = grpo.group_advantages(r, 4)
    sd = math.sqrt(5 / 3)                             # n-1 (torch.std, the authors)
    assert torch.allclose(a, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (sd + 1e-4), atol=1e-7, rtol=0)
    assert z.tolist() == [False]
    a, _ = grpo.group_advantages(r, 4, std="biased")
    sd = math.sqrt(5 / 4)                             # n
    assert torch.allclose(a, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / (sd + 1e-4), atol=1e-7, rtol=0)
    a, _ = grpo.group_advantages(r, 4, eps=0.0, std="biased")
    assert torch.allclose(a, torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(5), atol=1e-7, rtol=0)


def test_advantages_per_group_and_zero_std_groups():
    # three groups of 2: [0, 2] -> +-1/(sqrt(2)+eps); [2.7, 2.7] and [0.1, 0.1] have no signal
    r = torch.tensor([0.0, 2.0, 2.7, 2.7, 0.1, 0.1], dtype=torch.float64)
    a, z = grpo.group_advantages(r, 2)
    s = 1 / (math.sqrt(2) + 1e-4)
    assert a.dtype == torch.float32 and a.shape == (6,)
    assert torch.allclose(a[:2], torch.tensor([-s, s]), atol=1e-7, rtol=0)
    assert a[2:].tolist() == [0.0, 0.0, 0.0, 0.0]     # exactly zero
    assert z.tolist() == [False, True, True] and int(z.sum()) == 2


def test_advantages_zero_std_exact_even_when_mean_rounds():
    r = torch.full((3,), 0.1)      # (0.1+0.1+0.1)/3 != 0.1 in float32: would give tiny nonzero A
    a, z = grpo.group_advantages(r, 3)
    assert a.tolist() == [0.0, 0.0, 0.0] and z.tolist() == [True]


def test_advantages_group_mean_is_zero_and_errors():
    g = torch.Generator().manual_seed(0)
    a, _ = grpo.group_advantages(torch.rand(5 * 4, generator=g), 4)
    assert torch.allclose(a.view(5, 4).sum(1), torch.zeros(5), atol=1e-5)
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.ones(6), 4)
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError):
        grpo.group_advantages(torch.ones(4), 2, std="population")


# ---------------------------------------------------------------- k3 KL

def test_k3_nonnegative_zero_when_equal_and_hand_value():
    g = torch.Generator().manual_seed(0)
    logp, ref = -5 * torch.rand(1000, generator=g), -5 * torch.rand(1000, generator=g)
    kl = grpo.kl_k3(logp, ref)
    assert (kl >= 0).all() and kl.shape == logp.shape
    assert grpo.kl_k3(logp, logp).abs().max().item() == 0.0
    # d = -0.5 - (-1) = 0.5: exp(.5) - .5 - 1
    assert grpo.kl_k3(torch.tensor(-1.0), torch.tensor(-0.5)).item() == pytest.approx(math.exp(0.5) - 1.5, abs=1e-7)
    # clamp at 10 (the authors): d = 20 is treated as 10
    assert grpo.kl_k3(torch.tensor(0.0), torch.tensor(20.0)).item() == pytest.approx(math.exp(10) - 11, rel=1e-6)
    assert grpo.kl_k3(torch.tensor(0.0), torch.tensor(20.0), clamp=None).item() == pytest.approx(
        math.exp(20) - 21, rel=1e-6)


def test_k3_gradient_autograd_and_analytic():
    g = torch.Generator().manual_seed(1)
    logp = (-3 * torch.rand(50, generator=g, dtype=torch.float64)).requires_grad_()
    ref = -3 * torch.rand(50, generator=g, dtype=torch.float64)
    grpo.kl_k3(logp, ref).sum().backward()
    # autograd of the written formula
    x = logp.detach().clone().requires_grad_()
    (torch.exp(ref - x) - (ref - x) - 1).sum().backward()
    assert torch.allclose(logp.grad, x.grad, atol=1e-12, rtol=0)
    # analytic: d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp)
    assert torch.allclose(logp.grad, 1 - torch.exp(ref - logp.detach()), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- the loss: a tiny differentiable policy

def tiny_policy(N=4, T=7, V=11, H=5, seed=0):
    """logp_{i,t} = log softmax(x_{i,t} W^T)[o_{i,t}] for a linear policy W (V, H): a differentiable
    stand-in for the model. Returns (W, logp_fn, tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, H, generator=g, dtype=torch.float64)                 # (N, T, H)
    W = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()   # (V, H)
    tok = torch.randint(0, V, (N, T), generator=g)                             # (N, T)

    def logp_fn(W):
        return torch.log_softmax(x @ W.T, -1).gather(-1, tok[..., None]).squeeze(-1)  # (N, T)
    return W, logp_fn, tok


MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1],
                     [1, 1, 1, 0, 0, 0, 0],
                     [1, 0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 0, 0]], dtype=torch.float64)
ADV = torch.tensor([1.2, -0.4, 0.0, -0.8], dtype=torch.float64)


def _grad(f, W):
    W.grad = None
    f().backward()
    return W.grad.clone()


@pytest.mark.parametrize("loss_type", ["sequence", "token"])
def test_ratio_one_gradient_is_reinforce(loss_type):
    W, logp_fn, _ = tiny_policy()
    if loss_type == "sequence":   # -(1/G) sum_i (1/|o_i|) sum_t A_i logp_it
        ref_fn = lambda: -((ADV[:, None] * logp_fn(W) * MASK).sum(1) / MASK.sum(1)).mean()
    else:                         # -(sum_it A_i logp_it) / (sum_it 1)
        ref_fn = lambda: -(ADV[:, None] * logp_fn(W) * MASK).sum() / MASK.sum()
    g_ref = _grad(ref_fn, W)
    loss_fn = lambda: grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK, beta=0.0, loss_type=loss_type)[0]
    g = _grad(loss_fn, W)
    assert g.abs().max() > 1e-3                                # a real gradient...
    assert torch.allclose(g, g_ref, atol=1e-6, rtol=0)         # ...equal to REINFORCE's
    # and its value is -mean(A) (ratio 1): not a measure of progress
    loss, st = grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK, beta=0.0, loss_type=loss_type)
    want = -ADV.mean() if loss_type == "sequence" else -(ADV[:, None] * MASK).sum() / MASK.sum()
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert st["ratio"].item() == 1.0 and st["clip_frac"].item() == 0.0 and st["kl"].item() == 0.0


def test_ratio_one_with_kl_matches_written_formula():
    W, logp_fn, _ = tiny_policy(seed=3)
    g = torch.Generator().manual_seed(4)
    ref = logp_fn(W).detach() + 0.3 * torch.randn(4, 7, generator=g, dtype=torch.float64)  # (N, T)
    beta = 0.04

    def written():  # -(1/G) sum_i (1/|o_i|) sum_t [exp(lp - sg(lp)) A_i - beta (exp(ref-lp) - (ref-lp) - 1)]
        lp = logp_fn(W)
        d = ref - lp
        per = torch.exp(lp - lp.detach()) * ADV[:, None] - beta * (torch.exp(d) - d - 1)
        return -((per * MASK).sum(1) / MASK.sum(1)).mean()
    loss, st = grpo.grpo_loss(logp_fn(W), None, ref, ADV, MASK, beta=beta)
    assert loss.item() == pytest.approx(written().item(), abs=1e-12)
    d = ref - logp_fn(W).detach()
    assert st["kl"].item() == pytest.approx((((torch.exp(d) - d - 1) * MASK).sum() / MASK.sum()).item(), abs=1e-12)
    g = _grad(lambda: grpo.grpo_loss(logp_fn(W), None, ref, ADV, MASK, beta=beta)[0], W)
    assert torch.allclose(g, _grad(written, W), atol=1e-10, rtol=0)
    # beta = 0 or no reference: no KL term
    l0, _ = grpo.grpo_loss(logp_fn(W), None, ref, ADV, MASK, beta=0.0)
    l1, _ = grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK)
    assert l0.item() == pytest.approx(l1.item(), abs=1e-12)


def test_clip_zeroes_gradient_only_in_the_direction_that_matters():
    # mu > 1: old_logp fixed, logp = old + delta; ratio = exp(delta). eps = 0.2.
    old = torch.zeros(4, 1, dtype=torch.float64)
    delta = torch.tensor([[math.log(1.5)], [math.log(1.5)], [math.log(0.5)], [math.log(0.5)]],
                         dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.float64)
    loss, st = grpo.grpo_loss(old + delta, old, None, adv, mask, beta=0.0, epsilon=0.2)
    loss.backward()
    # per-token objective / 4 sequences: d(-min(rA, clip(r)A))/d delta = -r A / 4 where the min picks rA
    assert delta.grad[0].item() == 0.0                          # A > 0, ratio 1.5 > 1.2: clipped
    assert delta.grad[1].item() == pytest.approx(1.5 / 4)       # A < 0, ratio 1.5: not clipped (pessimistic)
    assert delta.grad[2].item() == pytest.approx(-0.5 / 4)      # A > 0, ratio 0.5: not clipped
    assert delta.grad[3].item() == 0.0                          # A < 0, ratio 0.5 < 0.8: clipped
    assert st["clip_frac"].item() == 0.5 and st["ratio"].item() == pytest.approx(1.0)
    # value: -(1/4)[1.2*1 + 1.5*(-1) + 0.5*1 + 0.8*(-1)]
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)


def test_inside_clip_range_ratio_gradient_is_ratio_times_advantage():
    old = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    logp = (old + torch.tensor([[0.1, -0.1]], dtype=torch.float64)).requires_grad_()
    loss, st = grpo.grpo_loss(logp, old, None, torch.tensor([2.0], dtype=torch.float64),
                              torch.ones(1, 2, dtype=torch.float64), beta=0.0)
    loss.backward()
    assert torch.allclose(logp.grad, -2.0 * torch.exp(torch.tensor([[0.1, -0.1]], dtype=torch.float64)) / 2)
    assert st["clip_frac"].item() == 0.0


def test_dr_grpo_advantages_and_loss_by_hand():
    """Dr. GRPO (Liu et al. 2025): A_i = r_i - mean(r), and the per-token objective summed and
    divided by N x L_max (here 4 x 7), so a token's weight does not depend on its length."""
    adv, zero = grpo.group_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0]), 4,
                                      std="none")
    assert adv.tolist() == [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0] and zero.tolist() == [False, True]
    W, logp_fn, _ = tiny_policy()
    ref_fn = lambda: -(ADV[:, None] * logp_fn(W) * MASK).sum() / (4 * 7)
    loss_fn = lambda: grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK, beta=0.0,
                                     loss_type="dr_grpo", n_tokens=4 * 7)[0]
    g = _grad(loss_fn, W)
    assert g.abs().max() > 1e-3 and torch.allclose(g, _grad(ref_fn, W), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="n_tokens"):
        grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK, loss_type="dr_grpo")


def test_clip_higher_moves_only_the_upper_bound():
    """DAPO's clip-higher: eps_high 0.28 lets a ratio of 1.25 with A > 0 keep its gradient (the
    symmetric 0.2 clips it), still clips 1.5, and leaves the lower clip at 1 - 0.2."""
    old = torch.zeros(4, 1, dtype=torch.float64)
    delta = torch.tensor([[math.log(1.25)], [math.log(1.5)], [math.log(0.7)], [math.log(1.25)]],
                         dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    mask = torch.ones(4, 1, dtype=torch.float64)
    loss, st = grpo.grpo_loss(old + delta, old, None, adv, mask, beta=0.0, epsilon=0.2,
                              epsilon_high=0.28)
    loss.backward()
    assert delta.grad[:, 0].tolist() == pytest.approx([-1.25 / 4, 0.0, 0.0, -1.25 / 4])
    assert st["clip_frac"].item() == 0.5  # 1.5 above 1.28 and 0.7 below 0.8
    # value: -(1/4)[1.25 + 1.28 + 0.8*(-1) + 1.25]
    assert loss.item() == pytest.approx(-(1.25 + 1.28 - 0.8 + 1.25) / 4)
    delta.grad = None
    grpo.grpo_loss(old + delta, old, None, adv, mask, beta=0.0, epsilon=0.2)[0].backward()
    assert delta.grad[0, 0].item() == 0.0  # symmetric clip: 1.25 > 1.2 is clipped


def test_token_loss_over_ranks_is_the_global_token_mean():
    """Rows 0-1 on "rank 0" (10 tokens) and rows 2-3 on "rank 1" (6 tokens): DDP averages the two
    ranks' gradients, so with n_tokens = 16 / 2 that average is the gradient of the pooled token
    mean; each rank dividing by its own count (a mean of per-rank means) is not."""
    W, logp_fn, _ = tiny_policy()
    pooled = _grad(lambda: grpo.grpo_loss(logp_fn(W), None, None, ADV, MASK, beta=0.0,
                                          loss_type="token")[0], W)
    ranks = (slice(0, 2), slice(2, 4))
    part = lambda r, n: _grad(lambda: grpo.grpo_loss(logp_fn(W)[r], None, None, ADV[r], MASK[r],
                                                     beta=0.0, loss_type="token", n_tokens=n)[0], W)
    n_half = float(MASK.sum()) / 2                                      # 16 tokens / 2 ranks = 8
    ddp = (part(ranks[0], n_half) + part(ranks[1], n_half)) / 2
    assert torch.allclose(ddp, pooled, atol=1e-12, rtol=0)
    per_rank = (part(ranks[0], None) + part(ranks[1], None)) / 2
    assert (per_rank - pooled).abs().max() > 1e-3
    assert grpo.token_normaliser(MASK) == 16.0  # one process: the mask's own count


def _token_normaliser_rank(rank, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=2)
    out[rank] = grpo.token_normaliser(MASK[2 * rank:2 * rank + 2])
    torch.distributed.destroy_process_group()


def test_token_normaliser_sums_over_two_gloo_ranks(tmp_path):
    out = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_token_normaliser_rank, args=(str(tmp_path / "init"), out), nprocs=2)
    assert dict(out) == {0: 8.0, 1: 8.0}  # (10 + 6) / 2 on both ranks


def test_bad_loss_type():
    with pytest.raises(ValueError):
        grpo.grpo_loss(torch.zeros(1, 1), None, None, torch.zeros(1), torch.ones(1, 1), loss_type="dapo")


# ---------------------------------------------------------------- masking

IM_END, EOT, PAD, VID = 2, 0, 0, 13      # the toy tokenizer's ids: <|im_end|>, <|endoftext|> (= pad), <|video_pad|>


@pytest.mark.parametrize("ids,want", [
    ([5, 6, IM_END, 0, 0], [1, 1, 1, 0, 0]),          # ends with <|im_end|>, then padding
    ([5, EOT, 0, 0, 0], [1, 1, 0, 0, 0]),             # ends with <|endoftext|> (= pad id): it is the end token
    ([IM_END, 7, 7, IM_END, 7], [1, 0, 0, 0, 0]),     # only the FIRST end counts; empty answer keeps its end
    ([5, 6, 7, 8, 9], [1, 1, 1, 1, 1]),               # truncated at max length: no end, all count
    ([5, 6, 7, 8, IM_END], [1, 1, 1, 1, 1]),
    ([EOT, 0, 0, 0, 0], [1, 0, 0, 0, 0]),
])
def test_completion_mask_two_end_ids(ids, want):
    m = grpo.completion_mask(torch.tensor([ids]), [IM_END, EOT], PAD)
    assert m.dtype == torch.float32 and m[0].tolist() == want


def test_completion_mask_pad_that_is_not_an_end_id_and_vision_cut():
    ids = torch.tensor([[5, 99, 6, IM_END, 99], [5, 6, VID, 7, IM_END], [VID, 5, IM_END, 0, 0]])
    m = grpo.completion_mask(ids, [IM_END, EOT], pad_id=99, vision_ids=[VID, 12])
    assert m.tolist() == [[1, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_masked_tokens_carry_no_gradient_and_eos_does():
    ids = torch.tensor([[5, 6, IM_END, EOT, 0, 0], [5, EOT, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = grpo.completion_mask(ids, [IM_END, EOT], PAD)                     # (3, 6)
    logp = torch.full((3, 6), -1.0, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    ref = torch.full((3, 6), -1.3)
    loss, _ = grpo.grpo_loss(logp, None, ref, adv, mask, beta=0.04)
    loss.backward()
    assert (logp.grad[mask == 0] == 0).all()                                 # exactly zero
    assert logp.grad[0, 2] != 0 and logp.grad[1, 1] != 0                     # the end tokens are trained
    # at ratio 1 each kept token's gradient is -(A_i - beta (1 - exp(ref - logp))) / (|o_i| G)
    k = 1 - math.exp(-0.3)
    assert logp.grad[0, 0].item() == pytest.approx(-(1.0 - 0.04 * k) / (3 * 3))
    assert logp.grad[1, 1].item() == pytest.approx(-(-2.0 - 0.04 * k) / (2 * 3))
    assert logp.grad[2, 5].item() == pytest.approx(-(0.5 - 0.04 * k) / (6 * 3))


def test_empty_mask_row_contributes_zero_but_counts():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss, _ = grpo.grpo_loss(logp, None, None, torch.tensor([1.0, 5.0]), mask, beta=0.0)
    assert loss.item() == pytest.approx(-0.5)          # -(1 + 0) / 2
    loss.backward()
    assert (logp.grad[1] == 0).all()


# ---------------------------------------------------------------- completion_logprobs on the toy Qwen2.5-VL

@pytest.fixture(scope="module")
def toy():
    corpus = ["<think><step1>a grey road with two walkers</step1></think>", "<answer>Normal</answer>"]
    model, tok = toymodel.load_model("toy", corpus=corpus, seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    v1 = vadr.encode_frames(rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), 2.0)
    v2 = vadr.encode_frames(rng.integers(0, 256, (4, 112, 84, 3), dtype=np.uint8), 1.0)
    vids = vadr.collate_videos([v1, v2])
    # two prompts of different lengths -> the shorter row is LEFT-padded
    inputs = dict(vadr.build_chat_inputs(tok, ["short", "a longer prompt here"], vids["video_grid_thw"]), **vids)
    return model, tok, inputs


def _naive_logprobs(model, inputs, comp, temperature=1.0):
    """Reference: the full logits of the whole sequence, full log_softmax, shift by one."""
    N, T = comp.shape
    P = inputs["input_ids"].shape[1]
    out = model(input_ids=torch.cat([inputs["input_ids"], comp], 1),
                attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(comp)], 1),
                mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(comp).int()], 1),
                pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                second_per_grid_ts=inputs["second_per_grid_ts"], use_cache=False)
    logits = out.logits[:, P - 1:P + T - 1]                                   # (N, T, V) predicts comp
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, comp[..., None]).squeeze(-1)


def _random_completion(tok, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    comp = torch.randint(20, len(tok), (2, T), generator=g)                   # plain text ids
    comp[0, 5] = tok.convert_tokens_to_ids("<|im_end|>")                      # row 0 ends early, then padding
    comp[0, 6:] = vadr.pad_token_id(tok)
    return comp


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_completion_logprobs_equal_naive_log_softmax(toy, temperature):
    model, tok, inputs = toy
    comp = _random_completion(tok)
    with torch.no_grad():
        got = grpo.completion_logprobs(model, inputs, comp, temperature=temperature)
        want = _naive_logprobs(model, inputs, comp, temperature)
        plain = _naive_logprobs(model, inputs, comp, 1.0)
    assert got.shape == comp.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    if temperature != 1.0:                                                    # the temperature is really applied
        assert (got - plain).abs().max() > 1e-3


def test_completion_logprobs_gradients_equal_naive(toy):
    """(The fast path's chunk-size invariance is tests/test_fastpath.py's.)"""
    model, tok, inputs = toy
    comp = _random_completion(tok, seed=1)
    w = torch.linspace(-1, 1, comp.numel()).view(comp.shape)
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    (grpo.completion_logprobs(model, inputs, comp) * w).sum().backward()
    g1 = [p.grad.clone() for p in params]
    model.zero_grad()
    (_naive_logprobs(model, inputs, comp) * w).sum().backward()
    g2 = [p.grad.clone() for p in params]
    model.zero_grad()
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) < 1e-5
    assert max(a.abs().max().item() for a in g1) > 0


def test_completion_logprobs_match_generate_scores(toy):
    """The teacher-forced pass reproduces sampling: same positions (mRoPE), same masks, same logits."""
    from transformers import LogitsProcessor, LogitsProcessorList
    model, tok, inputs = toy
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    class EndRowZeroAtStep3(LogitsProcessor):     # row 0 stops after 3 tokens: its rest is padding
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - inputs["input_ids"].shape[1] == 3:
                scores[0] = -float("inf")
                scores[0, im_end] = 0.0
            return scores
    vis = grpo.vision_token_ids(model.config)
    with torch.no_grad():
        g = model.generate(**inputs, do_sample=False, max_new_tokens=8, output_logits=True,
                           return_dict_in_generate=True, suppress_tokens=vis,
                           logits_processor=LogitsProcessorList([EndRowZeroAtStep3()]))
        P = inputs["input_ids"].shape[1]
        comp = g.sequences[:, P:]                                                  # (2, T)
        sampled = torch.log_softmax(torch.stack(g.logits, 1).float(), -1)          # raw logits per step
        sampled = sampled.gather(-1, comp[..., None]).squeeze(-1)                  # (2, T)
        got = grpo.completion_logprobs(model, inputs, comp)
    mask = grpo.completion_mask(comp, vadr.end_token_ids(tok), vadr.pad_token_id(tok))
    assert comp[0, 3] == im_end and mask[0].tolist()[:5] == [1, 1, 1, 1, 0]       # end token kept, pad masked
    assert mask.sum() >= 5
    assert ((got - sampled).abs() * mask).max() < 1e-4


def test_completion_logprobs_survive_vision_ids_in_a_completion(toy):
    model, tok, inputs = toy
    comp = _random_completion(tok, seed=2)
    vid = tok.convert_tokens_to_ids("<|video_pad|>")
    comp[1, 4] = vid                                               # a sampled placeholder would break the scatter
    with torch.no_grad():
        got = grpo.completion_logprobs(model, inputs, comp)        # no error
        clean = grpo.completion_logprobs(model, inputs, comp.masked_fill(comp == vid, vadr.pad_token_id(tok)))
    mask = grpo.completion_mask(comp, vadr.end_token_ids(tok), vadr.pad_token_id(tok),
                                vision_ids=grpo.vision_token_ids(model.config))
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]         # cut before the placeholder
    assert torch.allclose(got[:, :4], clean[:, :4], atol=1e-6)     # tokens before it are unaffected
    assert torch.isfinite(got).all()
