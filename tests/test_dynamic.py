"""extras/dynamic.py: DAPO's dynamic sampling (--dynamic-sampling), on hand-built batches and one
train_rl step."""
import itertools
import json

import numpy as np
import pytest
import torch

import grpo
import vadr
from conftest import run_script
from extras import dynamic

G = 2


@pytest.fixture(scope="module")
def toy(tiny_model):
    """Two rolled-out batches by hand: b1 (2 videos, prompts of two lengths) with 5-token
    completions, b2 (1 video) with 7-token ones; the conftest's tiny model scores them."""
    model, tok = tiny_model
    model.eval()
    rng = np.random.default_rng(0)
    vid = lambda h, w: vadr.encode_frames(rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8), 2.0)
    def batch(prompts, sizes, rows):
        vids = vadr.collate_videos([vid(h, w) for h, w in sizes])
        return dict(vadr.build_chat_inputs(tok, prompts, vids["video_grid_thw"]), **vids, rows=rows)
    b1 = batch(["short", "a longer prompt than the other"], [(56, 56), (112, 84)], ["r0", "r1"])
    b2 = batch(["mid length prompt"], [(84, 112)], ["s0"])
    g = torch.Generator().manual_seed(0)
    def roll(n_groups, T, R):
        ids = torch.randint(5, 40, (n_groups * G, T), generator=g)
        mask = (torch.arange(T)[None] < torch.randint(1, T + 1, (n_groups * G, 1), generator=g)).float()
        parts = [dict(total=r) for r in R]
        return dict(ids=ids, mask=mask, texts=[f"t{i}" for i in range(len(R))], seconds=[None] * len(R),
                    parts=parts, R=torch.tensor(R))
    return dict(model=model, tok=tok, b1=b1, b2=b2, r1=roll(2, 5, [1.0, 1.0, 0.0, 1.0]),
                r2=roll(1, 7, [0.5, 0.0]), pad=vadr.pad_token_id(tok))


def test_merge_keeps_each_group_exactly_and_pads_around_it(toy):
    b1, b2, r1, r2, pad = toy["b1"], toy["b2"], toy["r1"], toy["r2"], toy["pad"]
    batch, roll = dynamic.merge_groups([(b1, r1, 1), (b2, r2, 0)], G, pad)
    P = max(b1["input_ids"].shape[1], b2["input_ids"].shape[1])
    assert batch["input_ids"].shape == (2, P) and batch["rows"] == ["r1", "s0"]
    for i, (src, b) in enumerate(((b1, 1), (b2, 0))):
        p = src["input_ids"].shape[1]
        for k in dynamic.PROMPT_KEYS:  # the tail is the source row, the head is padding
            assert torch.equal(batch[k][i, P - p:], src[k][b]), (k, i)
            assert (batch[k][i, :P - p] == (pad if k == "input_ids" else 0)).all()
    n = b1["video_grid_thw"].prod(-1).tolist()
    assert torch.equal(batch["pixel_values_videos"],
                       torch.cat([b1["pixel_values_videos"][n[0]:], b2["pixel_values_videos"]]))
    assert torch.equal(batch["video_grid_thw"], torch.cat([b1["video_grid_thw"][1:], b2["video_grid_thw"]]))
    assert roll["ids"].shape == (4, 7)
    assert torch.equal(roll["ids"][:2, :5], r1["ids"][2:4]) and (roll["ids"][:2, 5:] == pad).all()
    assert torch.equal(roll["mask"][:2, :5], r1["mask"][2:4]) and (roll["mask"][:2, 5:] == 0).all()
    assert torch.equal(roll["ids"][2:], r2["ids"]) and roll["R"].tolist() == [0.0, 1.0, 0.5, 0.0]
    assert roll["texts"] == ["t2", "t3", "t0", "t1"]


def test_merged_batch_scores_the_same_log_probs(toy):
    """The extra left padding changes nothing the model computes for a completion (up to float32
    rounding): the update scores what was sampled."""
    model, b1, b2, r1, r2 = toy["model"], toy["b1"], toy["b2"], toy["r1"], toy["r2"]
    batch, roll = dynamic.merge_groups([(b1, r1, 1), (b2, r2, 0)], G, toy["pad"])
    keys = vadr.MODEL_INPUT_KEYS
    with torch.no_grad():
        merged = grpo.completion_logprobs(model, grpo.expand_inputs({k: batch[k] for k in keys}, G),
                                          roll["ids"])
        alone1 = grpo.completion_logprobs(model, grpo.expand_inputs({k: b1[k] for k in keys}, G), r1["ids"])
        alone2 = grpo.completion_logprobs(model, grpo.expand_inputs({k: b2[k] for k in keys}, G), r2["ids"])
    m = roll["mask"]
    assert torch.allclose(merged[:2, :5] * m[:2, :5], alone1[2:4] * r1["mask"][2:4], atol=1e-5)
    assert torch.allclose(merged[2:] * m[2:], alone2 * r2["mask"], atol=1e-5)


def test_refill_replaces_only_groups_without_signal(toy):
    b1, r1 = toy["b1"], toy["r1"]  # group 0: rewards (1, 1), no signal; group 1: (0, 1)
    calls = []
    def draw(n, rng):
        calls.append(n)
        return toy["b2"]
    rolls = iter([dict(toy["r2"], R=torch.tensor([2.0, 2.0])), toy["r2"]])  # round 1: no signal
    batch, roll, st = dynamic.refill(b1, r1, G, lambda b: next(rolls), draw, 4, toy["pad"], seed=0)
    assert st == dict(dynamic_dropped=1, dynamic_extra_groups=2, dynamic_rounds=2) and calls == [1, 1]
    assert batch["rows"] == ["r1", "s0"] and roll["R"].tolist() == [0.0, 1.0, 0.5, 0.0]
    # out of rounds: the dropped group comes back (zero advantage, KL only); the batch stays B
    rolls = iter([dict(toy["r2"], R=torch.tensor([2.0, 2.0]))])
    batch, roll, st = dynamic.refill(b1, r1, G, lambda b: next(rolls), draw, 1, toy["pad"], seed=0)
    assert st["dynamic_rounds"] == 1 and batch["rows"] == ["r1", "r0"]
    assert roll["R"].tolist() == [0.0, 1.0, 1.0, 1.0]
    # every group has signal: nothing drawn, the batch is returned as it came
    r_all = dict(r1, R=torch.tensor([1.0, 0.0, 0.0, 1.0]))
    same = dynamic.refill(b1, r_all, G, None, None, 4, toy["pad"], seed=0)
    assert same[0] is b1 and same[1] is r_all and same[2]["dynamic_extra_groups"] == 0


def test_train_rl_step_refills_and_logs(tiny_world, tmp_path, monkeypatch):
    """One train_rl step with --dynamic-sampling: the step's two groups get equal rewards, the
    refills get (1, 0, 0): both slots are refilled in one round, and the update sees signal."""
    import rewards
    import train_rl
    from test_rl import _rl_args
    sft = tmp_path / "sft"
    run_script("train_sft.py", ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"],
                                "--max-steps", "1", "--frames", "4"], sft)
    calls = itertools.count()
    real = rewards.group_rewards
    def scripted(completions, *a, **kw):
        parts = real(completions, *a, **kw)
        totals = [7.0] * len(parts) if next(calls) < 2 else [1.0] + [0.0] * (len(parts) - 1)
        return [dict(p, total=t) for p, t in zip(parts, totals)]
    monkeypatch.setattr(rewards, "group_rewards", scripted)
    out = tmp_path / "rl"
    train_rl.main(_rl_args(tiny_world, str(sft), 1, ["--batch-size", "2", "--dynamic-sampling", "--out", str(out),
                                                     "--device", "cpu", "--num-workers", "0", "--weight-decay", "0"]))
    (log,) = [json.loads(x) for x in open(out / "log.jsonl")]
    assert (log["dynamic_dropped"], log["dynamic_extra_groups"], log["dynamic_rounds"]) == (2, 2, 1)
    assert log["zero_std_fraction"] == 0.0 and log["reward"] == pytest.approx(1 / 3)
    with pytest.raises(SystemExit):
        train_rl.parse_args(["--dynamic-sampling", "--fsdp"])
