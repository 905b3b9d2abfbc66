"""train_rl.py integration oracles (the math has its own hand-computed tests in test_grpo.py and
test_rewards.py): one AVA-GRPO step changes the weights and logs every field; two gloo ranks
stay identical; a SIGKILLed run resumed ends with the uninterrupted run's weights.
Run: pytest tests/test_rl.py"""
import itertools
import json

import pytest
import torch
from conftest import kill_when_saved, run_script, saved_weights

LOG_FIELDS = ["step", "epoch", "reward", "reward_std", "reward_accuracy", "reward_format", "reward_verification",
              "reward_length", "completion_length", "kl", "clip_frac", "ratio", "loss", "grad_norm",
              "zero_std_fraction", "lr", "time_generation", "time_verification", "time_reference", "time_update",
              "step_time", "time_data", "mem_peak_gb", "sample"]


@pytest.fixture(scope="module")
def sft_ckpt(tiny_world, tmp_path_factory):
    """A few SFT steps on the tiny world: the RL starting point (and its tokenizer)."""
    out = tmp_path_factory.mktemp("sft")
    run_script("train_sft.py", ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"], "--frames", "4",
                          "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1"], out)
    return str(out)


def _rl_args(w, ckpt, steps, extra=()):
    return ["--model", ckpt, "--data", w["rl"], "--video-root", w["videos"], "--frames", "4", "--max-new-tokens", "12",
            "--num-generations", "3", "--batch-size", "1", "--max-steps", str(steps), "--lr", "1e-3",
            "--length-ranges-from", w["sft_train"], "--seed", "3", *extra]


def test_no_signal_step_leaves_weights_exactly_unchanged(tiny_world, sft_ckpt, tmp_path):
    # An almost untrained model scores 0 on every reward: every group has zero std, so A = 0 (Eq. 1),
    # and at the first step policy = reference, so k3 = 0 with zero gradient. With no weight decay
    # the AdamW update is exactly 0: the weights must not move by a single bit.
    run_script("train_rl.py", _rl_args(tiny_world, sft_ckpt, 1, ["--weight-decay", "0"]), tmp_path)
    (log,) = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert log["zero_std_fraction"] == 1.0 and log["kl"] == 0.0 and log["grad_norm"] == 0.0
    before, after = saved_weights(sft_ckpt), saved_weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_rl_step_changes_weights_and_logs_every_field(tiny_world, sft_ckpt, tmp_path, monkeypatch):
    import rewards
    import train_rl
    # give the group reward variance: an accuracy stand-in alternating 1, 0, 1 over the completions
    flips = itertools.cycle([1.0, 0.0])
    monkeypatch.setattr(rewards, "accuracy_reward", lambda c, s: next(flips))
    train_rl.main(_rl_args(tiny_world, sft_ckpt, 1, ["--weight-decay", "0", "--out", str(tmp_path),
                                                     "--device", "cpu", "--num-workers", "0"]))
    (log,) = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    assert set(LOG_FIELDS) <= set(log), set(LOG_FIELDS) - set(log)
    assert log["zero_std_fraction"] < 1.0 and log["grad_norm"] > 0
    assert log["completion_length"] <= 12
    assert log["ratio"] == pytest.approx(1.0) and log["clip_frac"] == 0.0  # mu = 1: ratio is 1 in value (Eq. 3)
    before, after = saved_weights(sft_ckpt), saved_weights(tmp_path)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    cfg = json.load(open(tmp_path / "run_config.json"))
    assert cfg["beta"] == 0.04 and cfg["mu"] == 1 and cfg["num_generations"] == 3


def test_plain_scoring_runs_grpos_scorer_for_the_same_step(tiny_world, sft_ckpt, tmp_path, monkeypatch):
    """--plain-scoring: train_rl.py's one scorer line hands grpo.completion_logprobs to grpo.rl_step
    (the reference and the policy pass), and fastpath's drop-in is not called; without it the drop-in
    runs and grpo's is not. The flag is in run_config.json, and the two steps log the same rewards and
    the same loss and gradient norm to float rounding."""
    import grpo
    import rewards
    import train_rl
    from extras import fastpath
    calls = {"grpo": 0, "fastpath": 0}
    counted = lambda name, fn: lambda *a, **k: calls.__setitem__(name, calls[name] + 1) or fn(*a, **k)
    monkeypatch.setattr(grpo, "completion_logprobs", counted("grpo", grpo.completion_logprobs))
    monkeypatch.setattr(fastpath, "completion_logprobs", counted("fastpath", fastpath.completion_logprobs))
    logs = {}
    for name, extra in (("plain", ["--plain-scoring"]), ("fast", [])):
        flips = itertools.cycle([1.0, 0.0])
        monkeypatch.setattr(rewards, "accuracy_reward", lambda c, s: next(flips))
        calls.update(grpo=0, fastpath=0)
        train_rl.main(_rl_args(tiny_world, sft_ckpt, 1, ["--out", str(tmp_path / name), "--device", "cpu",
                                                         "--num-workers", "0", *extra]))
        assert calls == ({"grpo": 2, "fastpath": 0} if extra else {"grpo": 0, "fastpath": 2}), name
        assert json.load(open(tmp_path / name / "run_config.json"))["plain_scoring"] is bool(extra)
        (logs[name],) = [json.loads(x) for x in open(tmp_path / name / "log.jsonl")]
    plain, fast = logs["plain"], logs["fast"]
    assert plain["sample"] == fast["sample"] and plain["reward"] == fast["reward"] and plain["grad_norm"] > 0
    for k in ("loss", "grad_norm", "kl"):
        assert plain[k] == pytest.approx(fast[k], rel=1e-4, abs=1e-6), k


def test_peer_variant_flags_reach_the_loss(tiny_world, sft_ckpt, tmp_path, monkeypatch):
    """--adv-std none --loss-type dr_grpo --epsilon-high (grpo.py's peer variants): the advantages
    are r - mean (hand-checked against the rewards the step saw) and the loss gets Dr. GRPO's
    denominator rows x --max-new-tokens and the upper clip."""
    import grpo
    import rewards
    import train_rl
    flips = itertools.cycle([1.0, 0.0, 0.0])
    monkeypatch.setattr(rewards, "accuracy_reward", lambda c, s: next(flips))
    seen, real_adv, real_loss = {}, grpo.group_advantages, grpo.grpo_loss
    monkeypatch.setattr(grpo, "group_advantages", lambda R, G, **kw: seen.update(
        R=R.clone(), adv_kw=kw) or real_adv(R, G, **kw))
    monkeypatch.setattr(grpo, "grpo_loss", lambda *a, **kw: seen.update(
        adv=a[3].clone(), loss_kw=kw) or real_loss(*a, **kw))
    train_rl.main(_rl_args(tiny_world, sft_ckpt, 1, [
        "--out", str(tmp_path), "--device", "cpu", "--num-workers", "0", "--adv-std", "none",
        "--loss-type", "dr_grpo", "--epsilon-high", "0.28"]))
    R = seen["R"].view(-1, 3)
    assert seen["adv_kw"]["std"] == "none"
    assert seen["adv"].abs().max() > 0.1  # a group with signal, so the check below can fail
    assert torch.allclose(seen["adv"].view(-1, 3), R - R.mean(1, keepdim=True), atol=1e-6)
    n_rows = seen["R"].numel()
    assert seen["loss_kw"]["loss_type"] == "dr_grpo" and seen["loss_kw"]["epsilon_high"] == 0.28
    assert seen["loss_kw"]["n_tokens"] == n_rows * 12  # rows x --max-new-tokens (_rl_args: 12)


def test_rl_two_ranks_identical_and_kill_resume(tiny_world, sft_ckpt, tmp_path):
    args = _rl_args(tiny_world, sft_ckpt, 3, ["--save-every", "1", "--keep-last", "10", "--temperature", "3.0"])
    run_script("train_rl.py", args, tmp_path / "ddp", nproc=2)
    sums = json.load(open(tmp_path / "ddp" / "rank_checksums.json"))
    assert len(sums) == 2 and sums[0] == sums[1]
    run_script("train_rl.py", args, tmp_path / "full")
    kill_when_saved(run_script("train_rl.py", args, tmp_path / "killed", wait=False), tmp_path / "killed" / "step-1")
    run_script("train_rl.py", args + ["--resume", str(tmp_path / "killed")], tmp_path / "killed")
    a, b = saved_weights(tmp_path / "full"), saved_weights(tmp_path / "killed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x) for x in open(tmp_path / "full" / "log.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "killed" / "log.jsonl")]
    assert [r["step"] for r in lb] == [1, 2, 3]
    assert [r["reward"] for r in la] == [r["reward"] for r in lb] and [r["sample"] for r in la] == [r["sample"] for r in lb]


def test_rl_prompt_variant_follows_the_preset():
    """The paper preset samples under the binary RL prompt (docs/paper-vs-authors.md s.2); the toy preset under the
    SFT (fine) prompt, the only one the toy SFT model has seen; an explicit flag wins over both."""
    import train_rl
    assert train_rl.parse_args([]).prompt_variant == "fine"
    assert train_rl.parse_args(["--data", "rl.jsonl", "--model", "sft_dir"]).prompt_variant == "binary"
    assert train_rl.parse_args(["--prompt-variant", "binary"]).prompt_variant == "binary"
    assert train_rl.parse_args(["--data", "rl.jsonl", "--model", "m", "--prompt-variant", "fine"]).prompt_variant == "fine"


def test_rl_presets_train_the_vision_encoder_unless_asked():
    """Both RL presets record freeze_vision=False (RL trains the whole model; on the toy world that
    grounded better than freezing, docs/experiments.md); --freeze-vision wins over them."""
    import train_rl
    assert train_rl.parse_args([]).freeze_vision is False
    assert train_rl.parse_args(["--data", "rl.jsonl", "--model", "m"]).freeze_vision is False
    assert train_rl.parse_args(["--freeze-vision"]).freeze_vision is True
