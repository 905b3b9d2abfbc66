"""The toy base (extras/toybase.py, toy-base/): its caption format and scoring on hand cases, its
dense token labels, a pretraining world that shares no video with the default world, and the
shipped directory: plain from_pretrained, the recipe's config and tokenizer, the size cap.
Run: pytest tests/test_toybase.py"""
import json
import os

import numpy as np
import pytest
import torch

from extras import toy, toybase, toymodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "toy-base")


def test_grounded_caption_round_trip():
    row = dict(label="Abnormal", anomaly_type="Fire", start=12, end=30, total_frames=48, bbox=[14, 46, 60, 92])
    cap = toybase.grounded_caption(row, (112, 112))
    assert cap == "Fire during [0.25, 0.625] at [0.125, 0.411, 0.536, 0.821]."
    assert toybase.parse_grounded(cap) == dict(category="Fire", when=(0.25, 0.625), box=[0.125, 0.411, 0.536, 0.821])
    quiet = toybase.grounded_caption(dict(label="Normal"), (112, 112))
    assert quiet == "People walk and cars drive as usual."
    assert toybase.parse_grounded(quiet) == dict(category=None, when=None, box=None)
    # a multi-word category, and broken boxes
    assert toybase.parse_grounded("Flooding or Tsunami during [0.1, 0.5] at [0, 0, 1, 1].")["category"] == \
        "Flooding or Tsunami"
    assert toybase.parse_box("Fire during [0.1, 0.5] at [0.1, 0.2, nan, 0.4].") is None
    assert toybase.parse_box("Fire during [0.1, 0.5] at [0.1, 0.2].") is None
    assert toybase.iou_1d((0.5, 0.1), (0.0, 1.0)) == 0.0  # a window that ends before it starts scores 0


def test_score_grounded_hand_case():
    """Two Fire videos (one named with the right window and box, one named Explosion with half the
    window and no box) and two quiet videos (one captioned quiet, one not)."""
    rows = [dict(label="Abnormal", anomaly_type="Fire", start=0, end=50, total_frames=100, bbox=[0, 0, 56, 56]),
            dict(label="Abnormal", anomaly_type="Fire", start=0, end=50, total_frames=100, bbox=[0, 0, 56, 56]),
            dict(label="Normal", anomaly_type="Normal"), dict(label="Normal", anomaly_type="Normal")]
    caps = ["Fire during [0.0, 0.5] at [0.000, 0.000, 0.500, 0.500].",
            "Explosion during [0.0, 0.25].",
            "People walk and cars drive as usual.",
            "Fire during [0.1, 0.2] at [0, 0, 1, 1]."]
    r = toybase.score_grounded(rows, caps, (112, 112))
    assert r["named"] == {"Fire": 0.5, "Normal": 0.5}
    assert r["when_miou"] == {"Fire": pytest.approx(0.75)}       # IoU 1 and 0.5
    assert r["box_acc50"] == {"Fire": 0.5} and r["box_miou_all"] == pytest.approx(0.5)


def test_token_labels_from_frame_boxes():
    """A 112 x 112 video of 16 sampled frames (8 temporal patches, 4 x 4 merged cells of 28 px):
    the event's box on frame 2 covers cells (row 1, cols 1-2) by >= 7 px in x and y; frames 0-1 and
    4-15 have no event box, so only temporal patch 1 (frames 2, 3) carries the label."""
    row = dict(label="Abnormal", bbox=[30, 30, 84, 50], _cls=3, frame_boxes={"2": [30, 30, 84, 50]})
    lab = toybase.token_labels(row, np.arange(16), torch.tensor([8, 8, 8]), (112, 112), min_cover=0.25)
    lab = lab.view(8, 4, 4)
    want = torch.zeros(8, 4, 4, dtype=torch.long)
    want[1, 1, 1] = want[1, 1, 2] = 3   # x: 30-56 covers col 1 by 26, col 2 (56-84) by 28; y: 30-50 row 1 by 20
    assert torch.equal(lab, want)
    # without frame boxes: the union bbox on every patch with a frame in [start, end)
    row2 = dict(label="Abnormal", bbox=[30, 30, 84, 50], _cls=1, start=4, end=8)
    lab2 = toybase.token_labels(row2, np.arange(16), torch.tensor([8, 8, 8]), (112, 112), min_cover=0.5).view(8, 4, 4)
    assert lab2.sum().item() == 2 * 2 and lab2[2, 1, 1] == lab2[3, 1, 2] == 1
    assert toybase.token_labels(dict(label="Normal"), np.arange(16), torch.tensor([8, 8, 8]), (112, 112)).sum() == 0


def test_pretraining_world_shares_no_video_with_the_default_world():
    """A video is a function of its render seed (and the world's settings): the pretraining world's
    seeds and the default world's never meet, whatever the default world's size."""
    kw = dict(toy.TOY_DEFAULTS)
    pre = dict(kw, **toybase.PRETRAIN_DEFAULTS)
    args = lambda d: [d[k] for k in ("seed", "n_sft", "n_test", "n_rl", "n_caption", "size", "frames", "fps",
                                     "sprite_scale", "categories", "text_variants", "column_tint")]  # noqa: E731
    default_seeds = {j["seed"] for j in toy._toy_jobs("/tmp/x", *args(kw))}
    pre_seeds = {j["seed"] for j in toy._toy_jobs("/tmp/y", *args(pre))}
    assert len(pre_seeds) == pre["n_sft"] and len(default_seeds) == sum(kw[k] for k in ("n_sft", "n_test", "n_rl",
                                                                                         "n_caption"))
    assert not default_seeds & pre_seeds
    assert pre["seed"] != kw["seed"] and pre["categories"] == kw["categories"]


@pytest.mark.skipif(not os.path.isdir(SHIPPED), reason="toy-base/ not built yet (make toy-base)")
def test_shipped_base_loads_and_matches_its_recipe():
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    size = sum(os.path.getsize(os.path.join(SHIPPED, f)) for f in os.listdir(SHIPPED))
    assert size <= toybase.SHIP_LIMIT_MB * 2 ** 20, size
    tok = AutoTokenizer.from_pretrained(SHIPPED)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(SHIPPED)
    # the tokenizer is the one the recipe trains on its shipped corpus (byte-level BPE, same vocab)
    corpus = toybase.read_corpus(os.path.join(SHIPPED, "tokenizer_corpus.jsonl.gz"))
    again = toymodel.train_toy_tokenizer(corpus)
    assert again.get_vocab() == tok.get_vocab()
    # the config is the toy preset's architecture for that tokenizer
    want = toymodel.toy_config(again).to_dict()
    got = model.config.to_dict()
    for part in ("text_config", "vision_config"):
        for k, v in want[part].items():
            if k not in ("_name_or_path", "dtype", "torch_dtype", "transformers_version", "architectures"):
                assert got[part].get(k) == v, (part, k)
    for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert got[k] == want[k], k
    recipe = json.load(open(os.path.join(SHIPPED, "recipe.json")))
    assert recipe["world"]["categories"] == list(toy.TOY_DEFAULTS["categories"])
    assert recipe["world"]["seed"] == toybase.PRETRAIN_SEED
    card = open(os.path.join(SHIPPED, "README.md")).read()
    for c in toy.TOY_DEFAULTS["categories"]:
        assert f"| {c} |" in card


def test_manifest_reader_passes_frame_boxes_through_and_checks_them(tiny_world, tmp_path):
    """data.read_manifest keeps a row's per-frame boxes (keys as strings) and refuses a malformed
    map with the file:line, as it does a malformed bbox."""
    import data
    import vadr
    lines = open(tiny_world["sft_train"], encoding="utf-8").read().splitlines()
    good, bad = (json.loads(lines[0]), json.loads(lines[0]))
    good["frame_boxes"] = {"3": [1, 2, 30, 40], 4: [2, 2, 31, 41]}
    bad["frame_boxes"] = {"3": [1, 2, 30]}
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(good) + "\n")
    assert data.read_manifest(str(p), "sft", check_videos=False)[0]["frame_boxes"] == \
        {"3": [1, 2, 30, 40], "4": [2, 2, 31, 41]}
    p.write_text(json.dumps(bad) + "\n")
    with pytest.raises(vadr.InputError) as e:
        data.read_manifest(str(p), "sft", check_videos=False)
    assert str(e.value) == (f"{p}:1: bad-value: 'frame_boxes' must map frame numbers to 4 integers, "
                            "got {'3': [1, 2, 30]}")
