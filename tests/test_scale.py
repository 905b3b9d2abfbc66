"""Scale-out oracles (extras/scale.py): the --dry-run estimate (Qwen2.5-VL-7B parameter count from
the config alone; the toy estimate against memory measured on CPU), FSDP2 rollouts on gathered
weights (same samples as the sharded path, one all-gather per module instead of one per decode
step, train_rl identical with and without the gather on two gloo ranks), and the vision-tower guard
(two FSDP ranks whose videos differ in size finish and match one process).
Run: pytest tests/test_scale.py"""
import argparse
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import vadr
from extras import lora, scale, toy, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_7B = os.path.join(ROOT, "tests", "fixtures", "qwen2.5-vl-7b")
GiB = 2 ** 30
# Tolerances of the estimate against the toy's measured CPU memory (measure_cpu_memory):
HELD_TOL = 0.15   # activations kept for backward: estimate within +-15% of the measured bytes
PEAK_TOL = 0.25   # peak of forward + backward (gradients, recomputation, loss temporaries): +-25%
STATE_TOL = 0.01  # weights, gradients, AdamW state after one real step: +-1% (AdamW's step counters)


def _torchrun(script, args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), script, *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a hang (the failure mode the vision guard prevents) fails the test through the timeout
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _latest_weights(run_dir):
    """The latest checkpoint's weights, loaded the way users load them (transformers writes the legacy
    or the current Qwen2.5-VL key names depending on how the model was wrapped; loading unifies them)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    d = os.path.join(run_dir, open(os.path.join(run_dir, "latest")).read().strip())
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(d).state_dict()


# ---- dry run -----------------------------------------------------------------------------------

def test_dry_run_7b_fixture_counts_parameters_and_fits_the_tiers(capsys):
    import train_rl
    import train_sft
    cfg = scale.load_config(FIXTURE_7B)  # config.json alone, no weights, no tokenizer
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads,
            tc.intermediate_size, tc.vocab_size) == (3584, 28, 28, 4, 18944, 152064)
    assert tc.rope_parameters["mrope_section"] == [16, 24, 24] and tc.rope_parameters["rope_theta"] == 1e6
    assert (vc.depth, vc.hidden_size, vc.out_hidden_size, vc.fullatt_block_indexes) == (32, 1280, 3584, [7, 15, 23, 31])
    lora = train_sft.main(["--dry-run", "--model", FIXTURE_7B, "--lora-rank", "64"])
    assert "8,292,166,656" in capsys.readouterr().out
    pc = lora["params"]
    assert pc["total"] == 8_292_166_656 and pc["vision"] == 676_550_144   # Qwen2.5-VL-7B: 8.29B
    # r x (in + out) per adapted projection, 7 per layer, 28 layers
    h, i, kv = 3584, 18944, 512
    assert lora["trainable"] == 28 * 64 * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))
    assert lora["weights"] == 2 * pc["total"] + 4 * lora["trainable"]          # bf16 base + fp32 adapters
    assert lora["grad_ckpt"] and lora["reference"] == 0 and lora["peak"] < 40 * GiB  # one 40-80 GB GPU
    rl_lora = train_rl.main(["--dry-run", "--model", FIXTURE_7B, "--lora-rank", "64"])
    assert rl_lora["reference"] == 0 and rl_lora["rollout_copy"] == 0 and rl_lora["shapes"]["rows"] == 4
    assert rl_lora["shapes"]["target"] == 768                                    # paper preset, not the toy's
    full = train_rl.main(["--dry-run", "--model", FIXTURE_7B, "--fsdp", "--dry-run-gpus", "4"])
    P = pc["total"]
    assert full["weights"] == 4 * P / 4 and full["optimizer"] == 8 * P / 4 and full["reference"] == 4 * P / 4
    assert full["rollout_copy"] == 2 * P                                         # whole bf16 copy, not sharded
    assert full["peak"] < 80 * GiB                                               # the paper's 4 x 80 GB
    one = train_rl.main(["--dry-run", "--model", FIXTURE_7B])
    assert one["peak"] > 80 * GiB                                                # full RL does not fit one GPU
    out = capsys.readouterr().out
    assert "rollout copy" in out and "FSDP2 over 4 GPUs" in out


# ---- toy estimate vs measured memory -------------------------------------------------------------

def _sft_shapes(b):
    labels = b["labels"]                                                       # (B, L)
    keep = int(labels.shape[1] - (labels != -100).any(0).nonzero().min() + 1)  # sft_loss_sum's logits_to_keep
    return dict(rows=labels.shape[0], seq_len=labels.shape[1], patches=b["pixel_values_videos"].shape[0],
                keep=keep, padded=bool((b["attention_mask"] == 0).any()))


def _state_bytes(model, opt) -> dict:
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)
    return dict(weights=nbytes(model.parameters()),
                gradients=nbytes(p.grad for p in model.parameters() if p.grad is not None),
                optimizer=nbytes(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)))


def test_toy_estimate_matches_measured_memory(tiny_world, tiny_model):
    import grpo
    from extras import fastpath
    model0, tok = tiny_model
    ds = data.SFTDataset(data.read_manifest(tiny_world["sft_train"], "sft")[:2], num_frames=4)
    collate = data.make_collate(tok, with_targets=True)
    b2, b1 = collate([ds[0], ds[1]]), collate([ds[0]])       # 2 left-padded rows (sdpa mask path); 1 row
    G, T = 2, 16
    full = grpo.expand_inputs({k: b1[k] for k in vadr.MODEL_INPUT_KEYS}, G)  # RL: G rows, video x G
    ids = torch.randint(20, 200, (G, T), generator=torch.Generator().manual_seed(0))
    # the scoring pass encodes each video once for its G rows (extras/fastpath.py): one copy's patches
    # and runs the prompt once for them (the shared-prompt pass without checkpointing or FSDP)
    rl_shapes = dict(rows=G, seq_len=full["input_ids"].shape[1] + T, patches=b1["pixel_values_videos"].shape[0],
                     keep=T + 1, padded=False, videos=1, prompt_tokens=full["input_ids"].shape[1])
    cases = [("sft", False, b2, _sft_shapes(b2)), ("sft", True, b1, _sft_shapes(b1)), ("rl", False, None, rl_shapes)]
    for stage, ckpt, b, shapes in cases:
        model = copy.deepcopy(model0).train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        def step(mark):
            if stage == "sft":
                loss, _ = vadr.sft_loss_sum(model, b)
            else:
                loss = fastpath.completion_logprobs(model, full, ids).sum()
            mark()                 # activations held for backward = what the forward left allocated
            loss.backward()
        meas = scale.measure_cpu_memory(step)
        args = argparse.Namespace(fsdp=False, grad_ckpt=ckpt, beta=0.04, lora_rank=None, freeze_vision=False)
        est = scale.estimate_memory(model.config, args, stage, device_type="cpu", shapes=shapes)
        act = est["activation_parts"]
        assert abs(act["held"] / meas["held"] - 1) < HELD_TOL, (stage, ckpt, act["held"], meas["held"])
        peak_est = est["gradients"] + est["activations"]   # what forward + backward allocate on top
        assert abs(peak_est / meas["peak"] - 1) < PEAK_TOL, (stage, ckpt, peak_est, meas["peak"])
        if stage == "sft" and not ckpt:  # weights, gradients, AdamW state after one real step
            opt = training.make_optimizer(model, 1e-3, 0.0)
            opt.step()
            for k, v in _state_bytes(model, opt).items():
                assert abs(est[k] / v - 1) < STATE_TOL, (k, est[k], v)
    # the same with LoRA adapters (CPU: fp32 base 4P + adapters 4T, gradients 4T, AdamW 8T)
    model = copy.deepcopy(model0).train()
    lora.apply_lora(model, 4, seed=0)
    opt = training.make_optimizer(model, 1e-3, 0.0)
    vadr.sft_loss_sum(model, b1)[0].backward()
    opt.step()
    args = argparse.Namespace(fsdp=False, grad_ckpt=False, beta=0.0, lora_rank=4, lora_alpha=None,
                              lora_targets=",".join(lora.LORA_TARGETS), freeze_vision=False)
    est = scale.estimate_memory(model.config, args, "sft", device_type="cpu", shapes=_sft_shapes(b1))
    for k, v in _state_bytes(model, opt).items():
        assert abs(est[k] / v - 1) < STATE_TOL, ("lora", k, est[k], v)
    # LoRA + --lora-train-embeddings: the embeddings and lm_head's gradients and AdamW state too
    model = copy.deepcopy(model0).train()
    lora.apply_lora(model, 4, seed=0, train_embeddings=True)
    opt = training.make_optimizer(model, 1e-3, 0.0)
    vadr.sft_loss_sum(model, b1)[0].backward()
    opt.step()
    args.lora_train_embeddings = True
    est = scale.estimate_memory(model.config, args, "sft", device_type="cpu", shapes=_sft_shapes(b1))
    for k, v in _state_bytes(model, opt).items():
        assert abs(est[k] / v - 1) < STATE_TOL, ("lora+emb", k, est[k], v)


# ---- vision-tower guard ------------------------------------------------------------------------

def test_vision_guard_rejects_a_forward_without_video(tiny_world, tiny_model):
    import grpo
    model, tok = copy.deepcopy(tiny_model[0]).eval(), tiny_model[1]
    scale.install_vision_guard(model)
    ds = data.SFTDataset(data.read_manifest(tiny_world["sft_train"], "sft")[:1], num_frames=4)
    b = data.make_collate(tok, with_targets=False)([ds[0]])
    with pytest.raises(RuntimeError, match="without video"), torch.no_grad():
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    # decode steps (a KV cache is given) skip the vision tower on every rank alike: allowed
    out = grpo.sample_group(model, {k: b[k] for k in vadr.MODEL_INPUT_KEYS}, num_samples=2, max_new_tokens=3,
                            end_ids=vadr.end_token_ids(tok), pad_id=vadr.pad_token_id(tok),
                            generator=torch.Generator().manual_seed(0))
    assert out["completion_ids"].shape[0] == 2


def test_fsdp_ranks_with_different_video_sizes_finish_and_match_one_process(tmp_path):
    # two toy worlds of different frame sizes; the manifest is ordered so that in every global batch
    # rank 0 gets a 112x112 video (8x8 patches per frame pair) and rank 1 an 84x140 one (6x10)
    a = toy.generate_toy_world(str(tmp_path / "a"), seed=1, n_sft=2, n_test=0, n_rl=0, size=(112, 112),
                               frames=(16, 20), quiet=True)
    b = toy.generate_toy_world(str(tmp_path / "b"), seed=2, n_sft=2, n_test=0, n_rl=0, size=(84, 140),
                               frames=(16, 20), quiet=True)
    ra = [json.loads(x) for x in open(a["sft_train"])]
    rb = [json.loads(x) for x in open(b["sft_train"])]
    for r in rb:
        r["video"] = "b_" + r["video"]  # unique ids; each row keeps its absolute path
    seed, n = 5, 4
    perm = training.epoch_order(n, 0, seed, 2, 0, 1)  # the epoch's global order (world 1 = the permutation)
    rows = [None] * n
    for k, idx in enumerate(perm):
        rows[idx] = (ra if k % 2 == 0 else rb)[k // 2]
    man = tmp_path / "mixed.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in range(2):
        order = training.epoch_order(n, 0, seed, 2, r, 2)
        assert {rows[i]["video"].startswith("b_") for i in order} == {r == 1}  # every batch: sizes differ
    common = ["--data", str(man), "--frames", "4", "--lr", "1e-3", "--seed", str(seed), "--max-steps", "2",
              "--batch-size", "1", "--device", "cpu", "--num-workers", "0"]
    _torchrun("train_sft.py", common + ["--grad-accum", "1", "--fsdp", "--out", str(tmp_path / "fsdp")])
    import train_sft
    train_sft.main(common + ["--grad-accum", "2", "--out", str(tmp_path / "one")])
    one, fsdp = _latest_weights(tmp_path / "one"), _latest_weights(tmp_path / "fsdp")
    # atol 5e-5: AdamW divides by sqrt(v), so a gradient entry near 0 turns float-rounding noise of the
    # reduction order into updates of up to lr = 1e-3 (measured: one entry in 1.4M off by 1.3e-5); a
    # rank that ran the wrong video would move the loss itself, checked to 1e-5 below
    for k in one:
        assert torch.allclose(one[k], fsdp[k], atol=5e-5, rtol=1e-4), k
    lo = [json.loads(x)["loss"] for x in open(tmp_path / "one" / "log.jsonl")]
    lf = [json.loads(x)["loss"] for x in open(tmp_path / "fsdp" / "log.jsonl")]
    assert lf == pytest.approx(lo, rel=1e-5)


# ---- FSDP rollouts on gathered weights ---------------------------------------------------------

@pytest.fixture(scope="module")
def toy_ckpt(tiny_model, tmp_path_factory):
    """The tiny toy model as a Hugging Face directory (a starting checkpoint for RL)."""
    d = tmp_path_factory.mktemp("toy_ckpt")
    tiny_model[0].save_pretrained(d)
    tiny_model[1].save_pretrained(d)
    return str(d)


_WORKER = r'''
import json, os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.distributed as dist
import data, grpo, vadr
from extras import lora, scale, training


def main(argv):
    ckpt, manifest, out = argv
    info = vadr.setup_distributed("cpu")
    rank = info["rank"]
    model, tok = lora.load_merged(ckpt)
    P = sum(p.numel() for p in model.parameters())
    model = training.wrap_model(model, "fsdp", info["device"]).eval()
    rows = data.read_manifest(manifest, "rl")[rank::2][:1]          # a different video per rank
    b = data.make_collate(tok, with_targets=False)([data.RLDataset(rows, num_frames=4)[0]])
    calls = []
    real = dist.all_gather_single
    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    dist.all_gather_single = counted                                 # FSDP2's parameter all-gather
    res = {}
    for gather in (True, False):  # gathered first: FSDP2 leaves the root unsharded after a forward
        calls.clear()
        with scale.rollout_weights(model, enabled=gather) as g:
            o = grpo.sample_group(model, {k: b[k] for k in vadr.MODEL_INPUT_KEYS}, num_samples=3, max_new_tokens=12,
                                  temperature=3.0, top_p=1.0, end_ids=[-1], pad_id=vadr.pad_token_id(tok),
                                  generator=torch.Generator().manual_seed(rank), sync_ranks=True)
        res[str(gather)] = dict(ids=o["completion_ids"].tolist(), logprobs=o["logprobs"].tolist(), all_gathers=len(calls),
                                bytes=g["bytes"])
    n_fsdp = sum(1 for m in model.modules() if isinstance(m, torch.distributed.fsdp.FSDPModule))
    n_layers = model.config.text_config.num_hidden_layers
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(dict(res, P=P, n_fsdp=n_fsdp, n_layers=n_layers, steps=12), f)
    dist.destroy_process_group()


vadr.run_main(main, sys.argv[1:4])  # ends the way the scripts do (os._exit: see run_main)
'''


def test_rollout_gather_samples_like_the_sharded_path_with_one_gather(tiny_world, toy_ckpt, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    _torchrun(str(script), [toy_ckpt, tiny_world["rl"], str(tmp_path)])
    for r in range(2):
        res = json.load(open(tmp_path / f"rank{r}.json"))
        sharded, gathered = res["False"], res["True"]
        assert gathered["ids"] == sharded["ids"]                           # the same samples, token for token
        torch.testing.assert_close(torch.tensor(gathered["logprobs"]), torch.tensor(sharded["logprobs"]),
                                   atol=1e-6, rtol=1e-6)
        # gathered: one all-gather per FSDP module for the whole rollout. Sharded: all of them in the
        # prefill, then every decoder layer again at each of the 11 decode steps (12 tokens; the end id
        # is never sampled; decode steps skip the vision blocks, and FSDP2 keeps the root unsharded)
        assert gathered["all_gathers"] == res["n_fsdp"]
        assert sharded["all_gathers"] == res["n_fsdp"] + (res["steps"] - 1) * res["n_layers"]
        assert gathered["bytes"] == 4 * res["P"] and sharded["bytes"] == 0  # fp32 on CPU: 4 bytes x P


def test_train_rl_fsdp_identical_with_and_without_rollout_gather(tiny_world, toy_ckpt, tmp_path):
    args = ["--model", toy_ckpt, "--data", tiny_world["rl"], "--video-root", tiny_world["videos"], "--frames", "4",
            "--max-new-tokens", "6", "--num-generations", "2", "--batch-size", "1", "--max-steps", "2",
            "--lr", "1e-3", "--length-ranges-from", tiny_world["sft_train"], "--seed", "3", "--temperature", "3.0",
            "--fsdp", "--device", "cpu", "--num-workers", "0"]
    _torchrun("train_rl.py", args + ["--out", str(tmp_path / "gather")])
    _torchrun("train_rl.py", args + ["--no-rollout-gather", "--out", str(tmp_path / "sharded")])
    lg = [json.loads(x) for x in open(tmp_path / "gather" / "log.jsonl")]
    ls = [json.loads(x) for x in open(tmp_path / "sharded" / "log.jsonl")]
    P = sum(p.numel() for p in lora.load_merged(toy_ckpt)[0].parameters())
    for g, s in zip(lg, ls):
        assert g["rollout_copy_gb"] == pytest.approx(4 * P / GiB) and s["rollout_copy_gb"] == 0.0  # measured copy
        for k in g:
            if isinstance(g[k], str):
                assert g[k] == s[k], k                                           # the logged sample text
            elif not k.startswith("time") and k not in ("step_time", "rollout_copy_gb", "mem_peak_gb"):
                assert g[k] == pytest.approx(s[k], rel=1e-6, abs=1e-9), k        # rewards, lengths, loss, kl, ...
    wg, ws = _latest_weights(tmp_path / "gather"), _latest_weights(tmp_path / "sharded")
    for k in wg:
        assert torch.allclose(wg[k], ws[k], atol=1e-7, rtol=1e-6), k


# ---- process exit under torchrun ----------------------------------------------------------------

_EXIT_WORKER = r'''
import atexit, os, sys
sys.path.insert(0, os.getcwd())
import torch, torch.distributed as dist
import vadr


def main(argv):
    marker = argv[0]
    info = vadr.setup_distributed("cpu")
    t = torch.ones(3)
    if dist.is_initialized():
        dist.all_reduce(t)
        dist.destroy_process_group()
    # written only if the interpreter's teardown runs (atexit handlers are part of it)
    atexit.register(lambda: open(f"{marker}.teardown{info['rank']}", "w").close())
    print(f"rank {info['rank']} sum {t[0].item():.0f}", end="")  # no newline: stdout to a pipe is buffered
    return 7


sys.exit(vadr.run_main(main, sys.argv[1:]))
'''


def test_run_main_ends_a_process_group_member_without_interpreter_teardown(tmp_path):
    """vadr.run_main: a process that started a process group leaves with os._exit (the gloo
    teardown race, see run_main) after flushing stdout, with main()'s return value as its exit code;
    a single process still ends normally (its atexit handlers run). Two ranks started by hand, so
    that each one's exit code is seen (torchrun would fold them into one)."""
    import socket
    script = tmp_path / "exit_worker.py"
    script.write_text(_EXIT_WORKER)
    marker = str(tmp_path / "m")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(script), marker], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for r, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 7, err[-2000:]             # main()'s return value, not a signal
        assert out == f"rank {r} sum 2"                   # flushed before os._exit; the all-reduce ran
        assert not os.path.exists(f"{marker}.teardown{r}")  # no interpreter teardown
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    one = subprocess.run([sys.executable, str(script), marker], cwd=ROOT, capture_output=True, text=True,
                         env=dict(env, OMP_NUM_THREADS="1"), timeout=120)
    assert one.returncode == 7 and one.stdout == "rank 0 sum 1"
    assert os.path.exists(f"{marker}.teardown0")            # a single process ends the normal way


def test_peak_memory_gb_follows_the_resident_high_water_mark_on_cpu():
    """The log's mem_peak_gb on CPU: the resident high-water mark above a baseline, and a reset
    that starts a new peak (a freed 0.5 GiB tensor is gone from the next peak, a live one is not)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc")
    cpu = torch.device("cpu")
    base = scale.resident_bytes()
    scale.reset_peak_memory(cpu)
    x = torch.ones(2 ** 27)   # 0.5 GiB of fp32, touched
    del x
    first = scale.peak_memory_gb(cpu, base)
    assert first == pytest.approx(0.5, abs=0.05)  # the pytest process also frees and allocates a little
    scale.reset_peak_memory(cpu)  # the freed tensor left the process (large allocations are mmap'ed)
    assert scale.peak_memory_gb(cpu, base) < 0.05
    y = torch.ones(2 ** 26)   # 0.25 GiB, kept
    assert scale.peak_memory_gb(cpu, base) == pytest.approx(0.25, abs=0.05)
    del y
