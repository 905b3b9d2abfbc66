"""eval.py end to end: inference with the toy model on a few toy videos, scoring of the result,
resume (rows already written are skipped) and the authors' row layout. Run: pytest tests/test_eval_inference.py"""
import json
import os

import data
import eval as ev
import vadr
from extras import checkpoint


def test_inference_then_scoring_and_resume(tiny_world, tiny_model, tmp_path):
    model, tok = tiny_model
    ckpt = tmp_path / "ckpt"
    checkpoint.save_checkpoint(str(tmp_path), "ckpt", model, tok)
    out, js = tmp_path / "preds.jsonl", tmp_path / "m.json"
    argv = ["--model", str(ckpt), "--data", tiny_world["sft_test"], "--video-root", tiny_world["videos"],
            "--out", str(out), "--json", str(js), "--frames", "4", "--max-new-tokens", "8", "--batch-size", "2",
            "--num-workers", "0", "--device", "cpu"]
    # first only 2 videos (as if killed after one batch), then the rest: nothing is redone
    assert ev.main(argv + ["--limit", "2"]) == 0
    first = [json.loads(x) for x in open(out)]
    assert len(first) == 2
    assert ev.main(argv) == 0
    rows = [json.loads(x) for x in open(out)]
    gt = data.read_manifest(tiny_world["sft_test"], "sft")
    assert [(r["source"], r["video"]) for r in rows] == [(g["source"], g["video"]) for g in gt]
    assert rows[:2] == first                                        # resumed, not regenerated
    assert all(set(r) == {"source", "video", "anomaly_type", "output"} for r in rows)  # the authors' layout
    m = json.load(open(js))
    assert m["counts"]["n_matched"] == len(gt) == 4 and m["counts"]["n_missing"] == 0
    assert 0.0 <= m["detection"]["accuracy"] <= 1.0 and "bleu2" in m["reasoning"]
    # scoring the same file through the scoring CLI gives the same figures
    assert ev.main(["--score", str(out), "--gt", tiny_world["sft_test"], "--json", str(tmp_path / "m2.json")]) == 0
    assert json.load(open(tmp_path / "m2.json"))["detection"] == m["detection"]


def test_greedy_inference_is_deterministic(tiny_world, tiny_model, tmp_path):
    model, tok = tiny_model
    rows = data.read_manifest(tiny_world["sft_test"], "sft")[:2]
    ds = data.SFTDataset(rows, num_frames=4)
    batch = data.make_collate(tok, with_targets=False)([ds[0], ds[1]])
    args = ev.parse_args(["--max-new-tokens", "6"])
    a = ev.generate_outputs(model, tok, batch, args)
    b = ev.generate_outputs(model, tok, batch, args)
    assert a == b and len(a) == 2
