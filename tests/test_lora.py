"""LoRA oracles (extras/lora.py): a LoRA model starts exactly equal to its base; only adapter
parameters receive gradients; merged weights give the logits of base + adapters; adapters switched
off give exactly the base (RL's reference, no copy); adapter-only checkpoints resume exactly, merge
into a Hugging Face directory that from_pretrained loads and eval.py scores, and chain (RL LoRA on
top of SFT LoRA). The one-GPU route end to end (issue 36): a LoRA run is a --model like any
checkpoint, for RL (adapters of its own, or merged on load into full weights) and for eval.py,
which loads it merged. Run: pytest tests/test_lora.py"""
import copy
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import data
import vadr
from extras import lora

N_TARGETS = len(lora.LORA_TARGETS)


def _batch(tok, rows, frames=4):
    ds = data.SFTDataset(rows, num_frames=frames)
    return data.make_collate(tok, with_targets=True)([ds[i] for i in range(len(rows))])


def _logits(model, b):
    with torch.no_grad():
        return model(**vadr.model_inputs(b)).logits  # (B, L, V)


@pytest.fixture(scope="module")
def batch(tiny_world, tiny_model):
    return _batch(tiny_model[1], data.read_manifest(tiny_world["sft_train"], "sft")[:1])


@pytest.fixture(scope="module")
def base_logits(tiny_model, batch):
    return _logits(tiny_model[0].eval(), batch)


def test_lora_starts_equal_to_base_and_only_adapters_get_gradients(tiny_model, batch, base_logits):
    model = copy.deepcopy(tiny_model[0]).eval()
    n = lora.apply_lora(model, rank=4, alpha=8, seed=0)
    assert n == N_TARGETS * model.config.text_config.num_hidden_layers
    # B = 0: the adapter path adds exactly 0, so the logits are bit-identical to the base's
    assert torch.equal(base_logits, _logits(model, batch))
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(k.endswith((".lora_A", ".lora_B")) for k in trainable)
    assert all(".language_model." in k for k in trainable)                      # vision tower frozen
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    model.train()
    loss, n_tok = vadr.sft_loss_sum(model, batch)
    loss.backward()
    for k, p in model.named_parameters():
        if k in trainable:
            assert p.grad is not None, k
        else:
            assert p.grad is None, k                                              # no gradient off the adapters
    # at B = 0 only B moves first: dL/dA = scale B^T g x = 0, dL/dB = scale g (x A^T) != 0
    assert all(float(m.lora_B.grad.abs().sum()) > 0 for _, m in lora.lora_modules(model))
    assert all(float(m.lora_A.grad.abs().sum()) == 0 for _, m in lora.lora_modules(model))


def test_merged_equals_base_plus_adapters_and_adapters_off_equals_base(tiny_model, batch, base_logits, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    model = copy.deepcopy(tiny_model[0]).eval()
    lora.apply_lora(model, rank=4, alpha=8, seed=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters as after some training: B != 0
        for _, m in lora.lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.05)
    adapted = _logits(model, batch)
    assert not torch.allclose(adapted, base_logits, atol=1e-3)                 # the adapters do something
    # RL's reference: the same module with its adapters off IS the base, bit for bit
    with lora.lora_disabled(model):
        assert torch.equal(_logits(model, batch), base_logits)
    assert all(m.enabled for _, m in lora.lora_modules(model))                # switched back on after
    # merge: W + scale B A folded in, plain nn.Linear back, same logits up to fp32 rounding
    merged = lora.merge_lora(copy.deepcopy(model))
    assert not lora.lora_modules(merged) and lora.lora_config(merged) is None
    assert merged.state_dict().keys() == tiny_model[0].state_dict().keys()     # the plain HF layout
    merged_logits = _logits(merged, batch)
    torch.testing.assert_close(merged_logits, adapted, atol=2e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path / "m")
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "m")).eval()
    assert torch.equal(_logits(again, batch), merged_logits)


def _sft_args(w, out, extra=()):
    return ["--data", w["sft_train"], "--video-root", w["videos"], "--frames", "4", "--lr", "1e-2", "--seed", "5",
            "--batch-size", "2", "--grad-accum", "1", "--lora-rank", "4", "--out", str(out), "--device", "cpu",
            "--num-workers", "0", *extra]


@pytest.fixture(scope="module")
def lora_sft_run(tiny_world, tmp_path_factory):
    """2 LoRA SFT steps on the toy preset (base = the random toy model, saved to <out>/lora-base)."""
    import train_sft
    out = tmp_path_factory.mktemp("lora_sft")
    train_sft.main(_sft_args(tiny_world, out, ["--max-steps", "2", "--save-every", "1", "--keep-last", "10"]))
    return out


def test_lora_checkpoint_holds_adapters_alone_and_resumes_exactly(tiny_world, lora_sft_run, tmp_path):
    import train_sft
    out = lora_sft_run
    d = out / "step-2"
    files = set(os.listdir(d))
    assert {lora.ADAPTER_WEIGHTS, lora.ADAPTER_CONFIG, "training_state.pt", "run_config.json"} <= files
    assert not any(f.startswith("model") and f.endswith(".safetensors") for f in files)  # no base weights
    cfg = json.load(open(d / lora.ADAPTER_CONFIG))
    assert cfg["format"] == lora.LORA_FORMAT and cfg["rank"] == 4 and cfg["alpha"] == 8.0
    assert cfg["base_model"] == str((out / "lora-base").resolve()) and os.path.isfile(out / "lora-base" / "config.json")
    ad = load_file(d / lora.ADAPTER_WEIGHTS)
    assert len(ad) == 2 * N_TARGETS * 4 and cfg["adapter_parameters"] == sum(t.numel() for t in ad.values())
    assert all(k.endswith((".lora_A", ".lora_B")) for k in ad)
    st = torch.load(d / "training_state.pt", weights_only=False)
    assert st["step"] == 2 and st["optimizer"] is not None
    # the untrained init checkpoint of the toy preset is an adapter checkpoint with B = 0
    assert all(float(t.abs().sum()) == 0 for k, t in load_file(out / "init" / lora.ADAPTER_WEIGHTS).items()
               if k.endswith(".lora_B"))
    # resume from step 1 (step 2 removed) -> the same adapters and log as the uninterrupted run
    res = tmp_path / "res"
    shutil.copytree(out, res)
    shutil.rmtree(res / "step-2")
    (res / "latest").write_text("step-1")
    train_sft.main(_sft_args(tiny_world, res, ["--max-steps", "2", "--save-every", "1", "--keep-last", "10",
                                               "--resume", str(res)]))
    a, b = load_file(out / "step-2" / lora.ADAPTER_WEIGHTS), load_file(res / "step-2" / lora.ADAPTER_WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], load_file(out / "step-1" / lora.ADAPTER_WEIGHTS)[k]) for k in a)  # it trained
    la = [json.loads(x) for x in open(out / "log.jsonl")]
    lb = [json.loads(x) for x in open(res / "log.jsonl")]
    assert [r["step"] for r in lb] == [1, 2] and [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_merge_writes_a_hf_dir_that_loads_and_scores(tiny_world, lora_sft_run, tmp_path):
    import eval as eval_mod
    import train_sft
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    out = tmp_path / "merged"
    train_sft.main(["--merge", str(lora_sft_run), "--out", str(out)])
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert not lora.lora_modules(m)
    # the merged logits equal base + adapters (rebuilt the way --resume does)
    import argparse
    args = argparse.Namespace(lora_rank=None, lora_alpha=None, lora_dropout=0.0, lora_targets="", device="cpu",
                              lora_base_dtype="auto", out=str(tmp_path), grad_ckpt=False, no_grad_ckpt=False)
    adapted, _, _ = lora.load_for_training(str(lora_sft_run / "step-2"), args, resume=True)
    b = _batch(tok, data.read_manifest(tiny_world["sft_train"], "sft")[:1])
    adapted.eval()
    torch.testing.assert_close(_logits(m, b), _logits(adapted, b), atol=2e-5, rtol=1e-4)
    with pytest.raises(SystemExit, match="not empty"):                         # never overwrites a directory
        train_sft.main(["--merge", str(lora_sft_run), "--out", str(out)])
    # eval.py scores the merged directory like any checkpoint
    preds = tmp_path / "preds.jsonl"
    eval_mod.main(["--model", str(out), "--data", tiny_world["sft_test"], "--video-root", tiny_world["videos"],
                   "--out", str(preds), "--json", str(tmp_path / "m.json"), "--limit", "2", "--frames", "4",
                   "--max-new-tokens", "8", "--device", "cpu", "--num-workers", "0"])
    assert len(open(preds).readlines()) == 2 and json.load(open(tmp_path / "m.json"))


def test_lora_rl_reference_is_the_base_with_adapters_off(tiny_world, lora_sft_run, tmp_path, monkeypatch):
    import itertools
    import rewards
    import train_rl
    from transformers import Qwen2_5_VLForConditionalGeneration
    flips = itertools.cycle([1.0, 0.0])  # reward variance, so that the adapters move at step 1
    monkeypatch.setattr(rewards, "accuracy_reward", lambda c, s: next(flips))
    made = []
    real = lora.make_reference_model
    monkeypatch.setattr(lora, "make_reference_model", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    out = tmp_path / "rl"
    train_rl.main(["--model", str(lora_sft_run), "--data", tiny_world["rl"], "--video-root", tiny_world["videos"],
                   "--frames", "4", "--max-new-tokens", "8", "--num-generations", "3", "--batch-size", "1",
                   "--max-steps", "2", "--lr", "1e-2", "--length-ranges-from", tiny_world["sft_train"], "--seed", "3",
                   "--weight-decay", "0", "--lora-rank", "2", "--out", str(out), "--device", "cpu", "--num-workers", "0"])
    assert made == [None]                                                      # no second copy of the weights
    logs = [json.loads(x) for x in open(out / "log.jsonl")]
    # step 1: policy = reference exactly (B = 0), so k3 = 0; step 2: the adapters moved, the reference did not
    assert logs[0]["kl"] == 0.0 and logs[0]["grad_norm"] > 0 and logs[1]["kl"] > 0
    # the RL adapters sit on the SFT checkpoint, itself adapters on the toy base: the chain merges
    cfg = json.load(open(out / "step-2" / lora.ADAPTER_CONFIG))
    assert cfg["rank"] == 2 and cfg["base_model"] == str((lora_sft_run / "step-2").resolve())
    train_rl.main(["--merge", str(out), "--out", str(tmp_path / "merged")])
    Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "merged"))


def test_lora_train_embeddings_saves_them_resumes_and_merges(tiny_world, tmp_path):
    """--lora-train-embeddings: the input embeddings and lm_head train beside the adapters, are
    saved in the adapter checkpoint (and nothing else of the base), and the merge carries them."""
    import argparse
    import train_sft
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    out = tmp_path / "emb"
    train_sft.main(_sft_args(tiny_world, out, ["--max-steps", "2", "--lora-train-embeddings"]))
    d = out / "step-2"
    ad = load_file(d / lora.ADAPTER_WEIGHTS)
    emb = {"model.language_model.embed_tokens.weight", "lm_head.weight"}
    assert emb <= ad.keys() and len(ad) == 2 * N_TARGETS * 4 + 2
    assert all(k in emb or k.endswith((".lora_A", ".lora_B")) for k in ad)
    assert json.load(open(d / lora.ADAPTER_CONFIG))["train_embeddings"] is True
    base = dict(Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out / "lora-base")).named_parameters())
    assert all(not torch.equal(ad[k], base[k]) for k in emb)                  # both trained
    # resumed as its checkpoint says (the flag need not be repeated), merged with them
    args = argparse.Namespace(lora_rank=None, lora_alpha=None, lora_dropout=0.0, lora_targets="", device="cpu",
                              lora_base_dtype="auto", out=str(tmp_path), grad_ckpt=False, no_grad_ckpt=False)
    adapted, _, settings = lora.load_for_training(str(d), args, resume=True)
    assert settings["lora_train_embeddings"] is True
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == set(ad)
    train_sft.main(["--merge", str(out), "--out", str(tmp_path / "merged")])
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "merged")).eval()
    assert torch.equal(m.lm_head.weight, ad["lm_head.weight"])
    b = _batch(AutoTokenizer.from_pretrained(str(d)), data.read_manifest(tiny_world["sft_train"], "sft")[:1])
    torch.testing.assert_close(_logits(m, b), _logits(adapted.eval(), b), atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="--lora-train-embeddings trains beside LoRA adapters"):
        train_sft.main(["--data", tiny_world["sft_train"], "--lora-train-embeddings", "--out", str(tmp_path / "x")])


def test_the_one_gpu_lora_route_sft_rl_eval_end_to_end(tiny_world, lora_sft_run, tmp_path,
                                                       monkeypatch):
    """SFT with adapters (lora_sft_run) -> RL from that run directory, with adapters of its own
    or merged on load and trained in full -> eval.py --model on each run directory: the same
    predictions as eval.py on its --merge'd directory."""
    import itertools
    import eval as eval_mod
    import rewards
    import train_rl
    from conftest import saved_weights
    flips = itertools.cycle([1.0, 0.0])  # reward variance: the first step has a gradient
    monkeypatch.setattr(rewards, "accuracy_reward", lambda c, s: next(flips))
    w = tiny_world
    rl = ["--model", str(lora_sft_run), "--data", w["rl"], "--video-root", w["videos"], "--frames",
          "4", "--max-new-tokens", "8", "--num-generations", "2", "--batch-size", "1",
          "--max-steps", "1", "--lr", "1e-2", "--length-ranges-from", w["sft_train"], "--device",
          "cpu", "--num-workers", "0"]
    full, adapters = tmp_path / "rl_full", tmp_path / "rl_lora"
    train_rl.main(rl + ["--out", str(full)])  # merged on load: every weight trains
    ckpt = full / "step-1"
    assert (ckpt / "model.safetensors").is_file() and not (ckpt / lora.ADAPTER_CONFIG).exists()
    assert json.loads(open(full / "log.jsonl").readline())["grad_norm"] > 0
    start = lora.load_merged(str(lora_sft_run))[0].state_dict()
    after = saved_weights(ckpt)
    moved = {k for k in start if not torch.equal(start[k], after[k])}
    assert any(".layers." in k and "proj" in k for k in moved)  # the merged projections trained
    train_rl.main(rl + ["--lora-rank", "2", "--out", str(adapters)])  # adapters on the adapters
    assert (adapters / "step-1" / lora.ADAPTER_CONFIG).is_file()

    def predictions(model, name):
        out = tmp_path / f"{name}.jsonl"
        eval_mod.main(["--model", str(model), "--data", w["sft_test"], "--video-root",
                       w["videos"], "--out", str(out), "--limit", "2", "--frames", "4",
                       "--max-new-tokens", "8", "--device", "cpu", "--num-workers", "0"])
        return [json.loads(x)["output"] for x in open(out)]

    for run in (lora_sft_run, adapters):
        merged = tmp_path / f"merged_{run.name}"
        train_rl.main(["--merge", str(run), "--out", str(merged)])
        got = predictions(run, f"run_{run.name}")
        assert len(got) == 2 and got == predictions(merged, f"merged_{run.name}")
    assert len(predictions(full, "full")) == 2
