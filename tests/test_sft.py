"""train_sft.py oracles: the loss mask and value by hand, gradient accumulation = one big batch,
overfitting one batch, DDP/FSDP2 (2 gloo ranks) = one process, checkpoint round trip, and
SIGKILL-and-resume = uninterrupted. Run: pytest tests/test_sft.py"""
import json
import os

import pytest
import torch

from conftest import kill_when_saved, run_script, saved_weights
import data
import train_sft
import vadr
from extras import toy, toymodel



def _batch(tok, rows, frames=4):
    ds = data.SFTDataset(rows, num_frames=frames)
    return data.make_collate(tok, with_targets=True)([ds[i] for i in range(len(rows))])


def test_loss_masks_all_but_assistant_tokens_and_equals_hand_computation(tiny_world, tiny_model):
    model, tok = tiny_model
    rows = data.read_manifest(tiny_world["sft_train"], "sft")[:2]
    b = _batch(tok, rows)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, r in enumerate(rows):  # exactly the target text and the closing <|im_end|> carry a label
        want = tok(r["think"] + "\n" + r["answer"], add_special_tokens=False)["input_ids"] + [im_end]
        assert b["labels"][i][b["labels"][i] != -100].tolist() == want
    with torch.no_grad():
        loss_sum, n = vadr.sft_loss_sum(model, b)
        logits = model(**vadr.model_inputs(b)).logits  # (B, L, V) full, the naive way
    hand, count = 0.0, 0
    for i in range(b["labels"].shape[0]):
        for p in range(1, b["labels"].shape[1]):
            y = int(b["labels"][i, p])
            if y != -100:  # token p is predicted from position p-1
                hand -= torch.log_softmax(logits[i, p - 1].double(), -1)[y].item()
                count += 1
    assert n == count == sum(len(tok(r["think"] + "\n" + r["answer"], add_special_tokens=False)["input_ids"]) + 1
                             for r in rows)
    assert loss_sum.item() == pytest.approx(hand, rel=1e-5)


def test_grad_accumulation_equals_one_big_batch(tiny_world, tiny_model):
    model, tok = tiny_model
    rows = data.read_manifest(tiny_world["sft_train"], "sft")[:3]
    one = _batch(tok, rows)                               # one batch of 3
    micro = [_batch(tok, rows[:1]), _batch(tok, rows[1:])]  # 1 + 2, different target lengths
    grads = []
    for batches in ([one], micro):
        model.zero_grad(set_to_none=True)
        res = train_sft.backward_global_batch(model, batches, world=1, mode="none", device=torch.device("cpu"))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert res["target_tokens"] == sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    # and per-micro-batch averaging (the usual mistake) would NOT give the same gradient
    model.zero_grad(set_to_none=True)
    for m in micro:
        ls, n = vadr.sft_loss_sum(model, m)
        (ls / n / 2).backward()
    assert not all(torch.allclose(a, p.grad, atol=1e-6, rtol=1e-4) for a, p in zip(grads[0], model.parameters()))
    model.zero_grad(set_to_none=True)


def test_toy_model_overfits_one_batch(tiny_world):
    model, tok = toymodel.load_model("toy", corpus=toy.toy_corpus(tiny_world["root"]), seed=3)
    b = _batch(tok, data.read_manifest(tiny_world["sft_train"], "sft")[:1])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(80):
        ls, n = vadr.sft_loss_sum(model, b)
        (ls / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append((ls / n).item())
    assert losses[0] > 6.0            # ~ log(vocabulary) for a random model
    assert min(losses[-5:]) < 0.5     # memorised: < 0.5 nats per target token


def _run(args, out, nproc=1, wait=True):
    return run_script("train_sft.py", args, out, nproc, wait)


def _common(w):
    return ["--data", w["sft_train"], "--video-root", w["videos"], "--frames", "4", "--lr", "1e-3", "--seed", "5"]


def test_ddp_and_fsdp_two_ranks_equal_one_process(tiny_world, tmp_path):
    w = tiny_world
    _run(_common(w) + ["--max-steps", "2", "--batch-size", "1", "--grad-accum", "2"], tmp_path / "one")
    _run(_common(w) + ["--max-steps", "2", "--batch-size", "1", "--grad-accum", "1"], tmp_path / "ddp", nproc=2)
    _run(_common(w) + ["--max-steps", "2", "--batch-size", "1", "--grad-accum", "1", "--fsdp"], tmp_path / "fsdp",
         nproc=2)
    one = saved_weights(tmp_path / "one")
    for mode in ("ddp", "fsdp"):
        other = saved_weights(tmp_path / mode)
        assert one.keys() == other.keys()
        for k in one:
            assert torch.allclose(one[k], other[k], atol=1e-5, rtol=1e-4), (mode, k)
        logs = [json.loads(x) for x in open(tmp_path / mode / "log.jsonl")]
        ref = [json.loads(x) for x in open(tmp_path / "one" / "log.jsonl")]
        assert [r["loss"] for r in logs] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
        cfg = json.load(open(tmp_path / mode / "run_config.json"))
        assert cfg["world_size"] == 2 and cfg["parallel"] == mode and cfg["global_batch"] == 2
    sums = json.load(open(tmp_path / "ddp" / "rank_checksums.json"))
    assert len(sums) == 2 and sums[0] == sums[1]  # the two DDP ranks hold exactly the same weights


def test_checkpoint_round_trip_and_kill_resume_equivalence(tiny_world, tmp_path):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    args = _common(tiny_world) + ["--max-steps", "5", "--batch-size", "2", "--grad-accum", "1",
                                  "--save-every", "1", "--keep-last", "10"]
    _run(args, tmp_path / "full")
    # a run killed with SIGKILL once step 2 is checkpointed, then resumed, ends with the same weights
    kill_when_saved(_run(args, tmp_path / "killed", wait=False), tmp_path / "killed" / "step-2")
    assert not os.path.isdir(tmp_path / "killed" / "step-5")
    _run(args + ["--resume", str(tmp_path / "killed")], tmp_path / "killed")
    a, b = saved_weights(tmp_path / "full"), saved_weights(tmp_path / "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x) for x in open(tmp_path / "full" / "log.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "killed" / "log.jsonl")]
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5] and [r["loss"] for r in la] == [r["loss"] for r in lb]
    # the checkpoint is a Hugging Face directory: from_pretrained and AutoTokenizer load it
    d = tmp_path / "full" / "step-5"
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d))
    t = AutoTokenizer.from_pretrained(str(d))
    assert t.convert_tokens_to_ids("<|video_pad|>") == m.config.video_token_id
    st = torch.load(d / "training_state.pt", weights_only=False)
    assert st["step"] == 5 and st["config"]["lr"] == 1e-3 and st["optimizer"] is not None
    assert json.load(open(d / "run_config.json"))["max_steps"] == 5
    assert not [x for x in os.listdir(tmp_path / "full") if x.startswith(".tmp")]


def test_cached_videos_decode_once_and_train_the_same(tiny_world, tiny_model, monkeypatch, tmp_path):
    """--cache-videos (the toy preset's setting): each video is decoded once, training does not change
    the cached tensors, and two epochs give the same losses as without the cache."""
    model, tok = tiny_model
    rows = data.read_manifest(tiny_world["sft_train"], "sft", tiny_world["videos"])
    calls = []
    real = vadr.encode_video
    monkeypatch.setattr(vadr, "encode_video", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    cached = data.SFTDataset(rows, num_frames=4, cache_videos=True)
    collate = data.make_collate(tok, with_targets=True)
    for _ in range(2):  # two epochs, each with a forward and backward through the cached tensors
        loss, _ = vadr.sft_loss_sum(model, collate([cached[i] for i in range(len(rows))]))
        loss.backward()
    model.zero_grad(set_to_none=True)
    assert sorted(calls) == sorted(r["video_path"] for r in rows)  # one decode per video
    plain = data.SFTDataset(rows, num_frames=4)
    for i in range(len(rows)):
        fresh = plain[i]["video"]
        assert set(fresh) == set(cached.cache[i])
        for k, v in fresh.items():
            assert torch.equal(v, cached.cache[i][k]) if torch.is_tensor(v) else v == cached.cache[i][k], k
    w = tiny_world
    args = _common(w) + ["--epochs", "2", "--batch-size", "4", "--grad-accum", "1"]
    _run(args + ["--cache-videos"], tmp_path / "c")
    _run(args + ["--no-cache-videos"], tmp_path / "n")
    lc, ln = ([json.loads(x)["loss"] for x in open(tmp_path / d / "log.jsonl")] for d in ("c", "n"))
    assert len(lc) == 4 and lc == ln
    assert json.load(open(tmp_path / "c" / "run_config.json"))["cache_videos"] is True


def test_linear_schedule_by_hand_and_schedule_flag(tiny_world, tmp_path):
    """extras.training.linear_schedule's multipliers on hand-computed values, and `--schedule
    linear` (the authors' SFT trainer's decay) reaching the optimizer and run_config.json."""
    from extras import training
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    f = training.linear_schedule(opt, total_steps=10, warmup_steps=0).lr_lambdas[0]
    assert [f(0), f(5), f(10)] == [1.0, 0.5, 0.0]
    f = training.linear_schedule(opt, total_steps=10, warmup_steps=2).lr_lambdas[0]
    assert [f(0), f(1), f(2), f(6), f(10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert train_sft.parse_args([]).schedule == "cosine"  # today's behaviour stays the default
    _run(_common(tiny_world) + ["--max-steps", "3", "--batch-size", "1", "--grad-accum", "1",
                                "--warmup-ratio", "0", "--schedule", "linear"], tmp_path / "lin")
    lrs = [json.loads(x)["lr"] for x in open(tmp_path / "lin" / "log.jsonl")]
    assert lrs == pytest.approx([1e-3 * 2 / 3, 1e-3 / 3, 0.0])  # cosine would give 0.75e-3 first
    assert json.load(open(tmp_path / "lin" / "run_config.json"))["schedule"] == "linear"


def test_toy_preset_keeps_the_trained_vision_encoder_frozen(tiny_world, tmp_path):
    """The toy preset trains the language model only when it starts from a trained checkpoint
    (stage 0 taught the encoder to see); stage 0 itself, a random --model toy, the paper preset and
    --no-freeze-vision train the vision encoder too. Checked on the flags and on saved weights."""
    def parsed(*extra):
        return train_sft.parse_args(["--data", tiny_world["sft_train"], *extra]).freeze_vision
    assert parsed("--model", "ckpt", "--preset", "toy") is True
    assert parsed("--model", "ckpt", "--preset", "toy", "--no-freeze-vision") is False
    assert parsed("--model", "ckpt", "--preset", "toy", "--task", "caption") is False
    assert parsed("--model", "toy", "--preset", "toy") is False
    assert parsed("--model", "ckpt", "--preset", "paper") is False
    assert parsed("--model", "toy", "--preset", "paper", "--freeze-vision") is True
    w = tiny_world
    _run(_common(w) + ["--max-steps", "1", "--batch-size", "2"], tmp_path / "base")
    base = saved_weights(tmp_path / "base")
    args = _common(w) + ["--model", str(tmp_path / "base"), "--preset", "toy", "--max-steps", "2",
                         "--batch-size", "2"]
    _run(args, tmp_path / "frozen")
    _run(args + ["--no-freeze-vision"], tmp_path / "trained")
    for run, vision_moves in (("frozen", False), ("trained", True)):
        after = saved_weights(tmp_path / run)
        moved = {k for k in base if not torch.equal(base[k], after[k])}
        assert any(".language_model." in k for k in moved), run
        assert any(".visual." in k for k in moved) == vision_moves, (run, sorted(moved)[:3])
    assert json.load(open(tmp_path / "frozen" / "run_config.json"))["freeze_vision"] is True
