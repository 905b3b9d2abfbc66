"""extras/vanguard.py: box parsing and IoU by hand, slot labels and frame scores by hand, a stage-1
head that never moves the frozen VLM, and frame AUC against scikit-learn."""
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import data
import eval as eval_mod
import vadr
from extras import vanguard


# ---------------------------------------------------------------- boxes

@pytest.mark.parametrize("text,box", [
    ("on the left [0.125, 0.300, 0.406, 0.650] by the road", (0.125, 0.3, 0.406, 0.65)),
    ("[.1,.2,.3,.4]", (0.1, 0.2, 0.3, 0.4)),
    ("[0.1, 0.2, 0.3]", None),                       # three numbers: not a box
    ("no box here", None), (None, None), (12, None),
    ("[1e400, 0, 1, 1]", None),                      # not a number we accept
])
def test_parse_box(text, box):
    assert vanguard.parse_box(text) == (pytest.approx(box) if box else None)


@pytest.mark.parametrize("pred,gt,iou", [
    ((0.0, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), 1.0),
    ((0.0, 0.0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75), 0.0625 / (0.25 + 0.25 - 0.0625)),
    ((0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9), 0.0),          # disjoint
    ((0.5, 0.0, 0.2, 0.5), (0.0, 0.0, 0.5, 0.5), 0.0),          # reversed x
    ((0.1, 0.1, 0.1, 0.5), (0.0, 0.0, 0.5, 0.5), 0.0),          # zero width
    ((-0.1, 0.0, 0.5, 0.5), (0.0, 0.0, 0.5, 0.5), 0.0),         # out of range
    ((0.0, 0.0, 0.5, 1.2), (0.0, 0.0, 0.5, 0.5), 0.0),
    (None, (0.0, 0.0, 0.5, 0.5), 0.0), ((0.0, 0.0, 0.5), (0.0, 0.0, 0.5, 0.5), 0.0),
])
def test_box_iou_by_hand(pred, gt, iou):
    assert vanguard.box_iou(pred, gt) == pytest.approx(iou, abs=1e-12)
    assert vanguard.box_iou(gt, pred) == pytest.approx(iou, abs=1e-12)


def test_format_box_round_trips():
    s = vanguard.format_box([14, 33, 59, 98], 112, 112)
    assert s == "[0.125, 0.295, 0.527, 0.875]"
    assert vanguard.parse_box(s) == pytest.approx((0.125, 0.295, 0.527, 0.875))


# ---------------------------------------------------------------- slots and frames

def test_slot_labels_and_frame_scores_by_hand():
    row = dict(label="Abnormal", start=30, end=49)
    idx = [0, 13, 26, 40, 53, 66, 79, 99]                 # 8 sampled frames -> 4 slots
    assert vanguard.slot_labels(row, idx).tolist() == [0, 1, 0, 0]   # 40 in 30..49 only
    assert vanguard.slot_labels(dict(row, end=53), idx).tolist() == [0, 1, 1, 0]
    assert vanguard.slot_labels(dict(label="Normal"), idx).tolist() == [0, 0, 0, 0]
    assert vanguard.slot_labels(row, idx[:7]).tolist() == [0, 1, 0, 0]  # odd: last repeated
    fs = vanguard.frame_scores([0.1, 0.9, 0.5, 0.2], idx, 100)
    assert fs.shape == (100,)
    assert fs[0] == 0.1 and fs[6] == 0.1 and fs[7] == 0.1   # nearest sampled frame 0 or 13
    assert fs[20] == 0.9 and fs[33] == 0.9 and fs[34] == 0.9  # 26 and 40 are slot 1's
    assert fs[47] == 0.5 and fs[99] == 0.2                   # 53 (slot 2), 99 (slot 3)


# ---------------------------------------------------------------- stage 1 on the tiny world

@pytest.fixture(scope="module")
def stage1(tiny_world, tiny_model, tmp_path_factory):
    model = copy.deepcopy(tiny_model[0])  # frozen here; the session's model stays as it is
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("stage1")
    common = ["--model", "unused", "--video-root", tiny_world["videos"]]
    orig = vanguard._load_backbone
    vanguard._load_backbone = lambda path: _frozen(model)
    try:
        vanguard.main(["stage1", *common, "--data", tiny_world["sft_train"], "--out", str(out),
                       "--frames", "4", "--epochs", "30"])
        preds = out / "scores.jsonl"
        vanguard.main(["scores", *common, "--data", tiny_world["sft_test"], "--head", str(out),
                       "--out", str(preds)])
    finally:
        vanguard._load_backbone = orig
    return dict(model=model, before=before, out=out, preds=preds, world=tiny_world)


def _frozen(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_stage1_never_moves_the_vlm(stage1):
    model = stage1["model"]
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(stage1["before"][k], after[k]) for k in after)
    head, cfg = vanguard.load_head(str(stage1["out"]))
    assert cfg["n_slots"] == 8 * 2 and cfg["log"][-1]["loss"] < cfg["log"][0]["loss"]


def test_frame_auc_of_head_scores_equals_sklearn(stage1):
    rows = data.read_manifest(stage1["world"]["sft_test"], "sft", video_root=stage1["world"]["videos"])
    scores = {(p["source"], p["video"]): p["frame_scores"] for p in eval_mod.load_jsonl(str(stage1["preds"]))}
    y = np.concatenate([eval_mod.frame_labels(r) for r in rows])
    s = np.concatenate([scores[(r["source"], r["video"])] for r in rows])
    assert len(s) == sum(r["total_frames"] for r in rows) and 0 < y.sum() < len(y)
    assert eval_mod.frame_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_scores_with_a_head_of_another_backbone_is_one_line(stage1, tmp_path, monkeypatch):
    """A head trained on features of another width (another backbone): one line, no scores file."""
    import json
    import shutil
    import vadr
    head = tmp_path / "head"
    shutil.copytree(stage1["out"], head)
    cfg = json.load(open(head / "head_config.json"))
    cfg["dim"] = 6
    (head / "head_config.json").write_text(json.dumps(cfg))
    torch.save(vanguard.make_head(6, len(cfg["categories"]), cfg["hidden"]).state_dict(), head / "head.pt")
    monkeypatch.setattr(vanguard, "_load_backbone", lambda path: _frozen(stage1["model"]))
    out = tmp_path / "s.jsonl"
    with pytest.raises(vadr.InputError) as e:
        vanguard.main(["scores", "--model", "other", "--video-root", stage1["world"]["videos"], "--data",
                       stage1["world"]["sft_test"], "--head", str(head), "--out", str(out)])
    width = 2 * stage1["model"].config.vision_config.out_hidden_size
    assert str(e.value) == (f"--head {head} reads 6-wide features, --model other gives {width}: pass the backbone "
                            f"it was trained on ({cfg['backbone']})")
    assert not out.exists()


# ---------------------------------------------------------------- eval.py's box and head-score metrics

def _gt(video, label, start=None, end=None, total=10):
    r = dict(source="TOY", video=video, anomaly_type="Fire" if label == "Abnormal" else "Normal",
             total_frames=total)
    return dict(r, start=start, end=end) if label == "Abnormal" else r


def test_box_metrics_by_hand():
    gts = [_gt("a", "Abnormal", 2, 5), _gt("b", "Abnormal", 0, 3), _gt("c", "Abnormal", 1, 2),
           _gt("n", "Normal")]
    boxes = {("TOY", "a"): (0.0, 0.0, 0.5, 0.5), ("TOY", "b"): (0.0, 0.0, 0.5, 0.5),
             ("TOY", "c"): (0.5, 0.5, 1.0, 1.0)}
    outs = ["<answer><where>left [0.0, 0.0, 0.5, 0.5]</where></answer>",      # IoU 1
            "<answer><where>left [0.25, 0.25, 0.75, 0.75]</where></answer>",  # 0.0625 / 0.4375
            None,                                                             # missing: 0
            "<answer><where>anywhere [0, 0, 1, 1]</where></answer>"]          # normal: no box
    m = vanguard.box_metrics(outs, gts, boxes)
    assert m["n"] == 3 and m["n_no_box"] == 1
    assert m["miou"] == pytest.approx((1 + 0.0625 / 0.4375 + 0) / 3) and m["acc@0.5"] == pytest.approx(1 / 3)


def test_head_frame_metrics_equal_sklearn_and_count_missing():
    gts = [_gt("a", "Abnormal", 2, 5, total=8), _gt("n", "Normal", total=6)]
    rows = [dict(source="TOY", video="a", frame_scores=[0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.3, 0.2])]
    m = vanguard.head_frame_metrics(rows, ["s:1"], gts)
    y = np.r_[eval_mod.frame_labels(gts[0]), eval_mod.frame_labels(gts[1])]
    s = np.r_[rows[0]["frame_scores"], np.zeros(6)]  # the video without scores: 0 on every frame
    assert m["n_missing"] == 1 and m["n_videos"] == 2
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(ValueError, match="^s:1: frame scores of TOY/a: 3 values for 8 frames$"):
        vanguard.head_frame_metrics([dict(rows[0], frame_scores=[0.1] * 3)], ["s:1"], gts[:1])


def test_eval_score_with_boxes_and_frame_scores(stage1, tmp_path, capsys):
    import json
    w = stage1["world"]
    boxes = tmp_path / "not" / "yet" / "boxes.jsonl"  # its folder is created
    vanguard.main(["boxes", "--data", w["sft_test"], "--video-root", w["videos"], "--out", str(boxes)])
    gt_boxes = vanguard.load_boxes(str(boxes))
    rows = data.read_manifest(w["sft_test"], "sft", video_root=w["videos"])
    assert len(gt_boxes) == sum(r["label"] == "Abnormal" for r in rows) > 0
    # predictions that write each abnormal video's own box: box mIoU 1, accuracy 1
    preds = tmp_path / "preds.jsonl"
    with open(preds, "w") as f:
        for r in rows:
            box = gt_boxes.get((r["source"], r["video"]))
            where = f"<where>here {list(box)}</where>" if box else ""
            f.write(json.dumps(dict(source=r["source"], video=r["video"],
                                    output=f"<answer><which>Normal</which>{where}</answer>")) + "\n")
    out = tmp_path / "m.json"
    eval_mod.main(["--score", str(preds), "--gt", w["sft_test"], "--json", str(out), "--boxes", str(boxes),
                   "--frame-scores", str(stage1["preds"])])
    m = json.load(open(out))
    assert m["box"] == {"miou": 1.0, "n": len(gt_boxes), "n_no_box": 0, "acc@0.5": 1.0}
    assert m["frame_head"]["n_missing"] == 0 and 0.0 <= m["frame_head"]["auc"] <= 1.0
    bad = tmp_path / "bad_boxes.jsonl"
    bad.write_text('{"source": "TOY", "video": "x", "box": [0.5, 0.1, 0.2, 0.9]}\n')
    with pytest.raises(ValueError, match="bad_boxes.jsonl:1: box .* is not inside"):
        vanguard.load_boxes(str(bad))
    with pytest.raises(ValueError, match="missing.jsonl: no such box file"):
        vanguard.load_boxes(str(tmp_path / "missing.jsonl"))


def test_eval_inference_scores_boxes_and_frame_scores_at_json(stage1, tmp_path):
    """eval.py --model ... --json with --boxes/--frame-scores scores them straight after generation,
    the same figures as --score on the written predictions; without --json, one line before loading."""
    import json
    w = stage1["world"]
    boxes = tmp_path / "boxes.jsonl"
    vanguard.main(["boxes", "--data", w["sft_test"], "--video-root", w["videos"], "--out", str(boxes)])
    common = ["--data", w["sft_test"], "--video-root", w["videos"], "--frames", "4", "--max-new-tokens", "4",
              "--num-workers", "0", "--device", "cpu", "--boxes", str(boxes), "--frame-scores", str(stage1["preds"])]
    with pytest.raises(vadr.InputError, match="--boxes is scored into --json; add --json"):
        eval_mod.main(["--model", "toy", "--out", str(tmp_path / "p0.jsonl"), *common])
    with pytest.raises(vadr.InputError, match="--frame-scores .*nope.jsonl: no such file"):
        eval_mod.main(["--model", "toy", "--out", str(tmp_path / "p0.jsonl"), "--json", str(tmp_path / "m0.json"),
                       *common[:-1], str(tmp_path / "nope.jsonl")])
    assert not (tmp_path / "p0.jsonl").exists()
    eval_mod.main(["--model", "toy", "--out", str(tmp_path / "p.jsonl"), "--json", str(tmp_path / "m.json"), *common])
    m = json.load(open(tmp_path / "m.json"))
    eval_mod.main(["--score", str(tmp_path / "p.jsonl"), "--gt", w["sft_test"], "--json", str(tmp_path / "s.json"),
                   "--boxes", str(boxes), "--frame-scores", str(stage1["preds"])])
    s = json.load(open(tmp_path / "s.json"))
    assert m["box"] == s["box"] and m["box"]["n"] == len(vanguard.load_boxes(str(boxes))) > 0
    assert m["frame_head"] == s["frame_head"] and m["frame_head"]["n_missing"] == 0


# ---------------------------------------------------------------- stage 2: the box inside <where>

def test_box_target_puts_the_box_in_where_and_keeps_the_format(tiny_world):
    import vadr
    rows = data.read_manifest(tiny_world["sft_train"], "sft", video_root=tiny_world["videos"])
    ab = next(r for r in rows if r["label"] == "Abnormal")
    no = next(r for r in rows if r["label"] == "Normal")
    boxes = {(ab["source"], ab["video"]): (0.125, 0.3, 0.40625, 0.65)}
    ds = vanguard.BoxSFTDataset([ab, no], boxes, num_frames=4)
    plain = data.SFTDataset([ab, no], num_frames=4)
    t = ds.target(ab)
    where = vadr.parse_completion(t)["where"]
    assert where == vadr.parse_completion(plain.target(ab))["where"] + " [0.125, 0.300, 0.406, 0.650]"
    assert vanguard.parse_box(where) == pytest.approx((0.125, 0.3, 0.406, 0.65))
    assert vadr.check_format(t) == "abnormal"                       # the format reward still pays
    assert ds.target(no) == plain.target(no)                        # no box: today's target
    assert ds.prompt == plain.prompt                                # the question eval.py asks
    # stage 2's target: the same answer, no think; the classification-only target: the category
    g = vanguard.BoxSFTDataset([ab], boxes, target="grounding", num_frames=4)
    assert g.target(ab) == t.split("\n", 1)[1] and g.target(ab).startswith("<answer>")
    lab = vanguard.BoxSFTDataset([ab, no], boxes, target="label", num_frames=4)
    assert lab.target(ab) == f"<answer>Category: <which>{ab['anomaly_type']}</which>.</answer>"
    assert lab.target(no) == "<answer>Category: <which>Normal</which>.</answer>"
    with pytest.raises(ValueError, match="target must be one of"):
        vanguard.BoxSFTDataset([ab], boxes, target="boxes", num_frames=4)
    assert vanguard.with_box("<answer>no where tag</answer>", (0, 0, 1, 1)) == "<answer>no where tag</answer>"


def test_stage2_trains_lora_on_box_targets(tiny_world, tmp_path, monkeypatch):
    """`python -m extras.vanguard stage2 --boxes B <train_sft.py flags>` runs
    `train_sft.py --boxes B --target grounding <flags>`: one LoRA step whose batch targets carry
    the boxes (the collate sees BoxSFTDataset's items)."""
    import json
    import train_sft
    boxes = tmp_path / "boxes.jsonl"
    vanguard.main(["boxes", "--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"],
                   "--out", str(boxes)])
    seen = []
    real = vanguard.BoxSFTDataset.target
    monkeypatch.setattr(vanguard.BoxSFTDataset, "target", lambda self, r: seen.append(real(self, r)) or seen[-1])
    flags = ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"], "--max-steps", "1",
             "--frames", "4", "--lora-rank", "4", "--device", "cpu", "--num-workers", "0", "--batch-size", "4"]
    out = tmp_path / "sft"
    train_sft.main(["--boxes", str(boxes), "--target", "grounding", *flags, "--out", str(out)])
    assert any(vanguard.parse_box(t) for t in seen) and len(seen) >= 4
    assert not any("<think>" in t for t in seen)                    # stage 2: the grounding target
    cfg = json.load(open(out / "run_config.json"))
    assert (cfg["lora_rank"], cfg["boxes"], cfg["target"]) == (4, str(boxes), "grounding")
    assert (out / "log.jsonl").read_text().count("\n") == 1
    out = tmp_path / "s2"  # the command: train_sft.py in its own process, then vanguard_config.json
    vanguard.main(["stage2", "--boxes", str(boxes), *flags, "--out", str(out)])
    assert json.load(open(out / "vanguard_config.json")) == dict(stage="stage2", target="grounding",
                                                                 boxes=str(boxes))
    assert json.load(open(out / "run_config.json"))["target"] == "grounding"
    assert (out / "log.jsonl").read_text().count("\n") == 1
    with pytest.raises(ValueError) as e:
        vanguard.main(["stage2", "--boxes", str(boxes), *flags])
    assert str(e.value) == "stage2 needs --out RUN_DIR (the stage's run directory)"
    with pytest.raises(SystemExit) as e:  # train_sft.py's own error, printed by it: its exit code
        vanguard.main(["stage3", "--boxes", str(tmp_path / "none.jsonl"), *flags, "--out", str(tmp_path / "s3")])
    assert e.value.code == 1 and not (tmp_path / "s3").exists()
    with pytest.raises(ValueError) as e:
        train_sft.main(["--target", "label", *flags, "--out", str(tmp_path / "s4")])
    assert str(e.value) == ("train_sft.py: --target label needs --boxes BOXES.jsonl "
                            "(python -m extras.vanguard boxes writes one)")
    with pytest.raises(ValueError, match="stage2 needs --boxes"):
        vanguard.main(["stage2", "--data", tiny_world["sft_train"]])
    with pytest.raises(ValueError, match="stage3: --target must be one of"):
        vanguard.main(["stage3", "--boxes", str(boxes), "--target", "box"])
    with pytest.raises(ValueError, match="stage3: --boxes needs a value"):
        vanguard.main(["stage3", "--boxes", "--target", "cot"])
    assert vanguard._stage_flags("stage3", ["--boxes", "b", "--model", "m"]) == (["--model", "m"], "b", "cot", "stage3")


# ---------------------------------------------------------------- spatial verification

ABN = ("<think><step1>a</step1><step2>b</step2><step3>c</step3><step4>d</step4></think><answer><which>Fire"
       "</which><what>fire</what><when>[0.25, 0.5]</when><where>left [0.25, 0.5, 0.5, 1.0]</where>"
       "<why>w</why><how>h</how></answer>")


def test_spatial_trim_needs_an_abnormal_answer_a_when_and_a_box():
    assert vanguard.spatial_trim(ABN) == ((0.25, 0.5), (0.25, 0.5, 0.5, 1.0))
    assert vanguard.spatial_trim(ABN.replace("Fire", "Normal")) is None
    assert vanguard.spatial_trim(ABN.replace("[0.25, 0.5]</when>", "[0.5, 0.25]</when>")) is None
    assert vanguard.spatial_trim(ABN.replace("[0.25, 0.5, 0.5, 1.0]", "[0.5, 0.5, 0.25, 1.0]")) is None
    assert vanguard.spatial_trim(ABN.replace(" [0.25, 0.5, 0.5, 1.0]", "")) is None


def test_blank_box_is_exactly_the_box_over_exactly_the_interval():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 8, 12, 3), dtype=np.uint8)   # 8 sampled frames of 8 x 12
    indices = [0, 5, 10, 15, 20, 25, 30, 39]                        # of a 40-frame video
    out = vanguard.blank_box(frames, indices, 40, (0.25, 0.5), (0.25, 0.5, 0.5, 1.0))
    # interval: frames 10 <= i < 20 -> sampled positions 2, 3; box: x 3..5 (of 12), y 4..7 (of 8)
    mask = np.zeros(frames.shape[:3], bool)
    mask[2:4, 4:8, 3:6] = True
    assert (out[mask] == vanguard.BLANK_RGB).all()
    assert np.array_equal(out[~mask], frames[~mask])               # nothing else changed
    assert not np.shares_memory(out, frames)
    # a box edge between pixels goes outward: x 0.3..0.45 of 12 -> 3.6..5.4 -> columns 3, 4, 5
    out2 = vanguard.blank_box(frames, indices, 40, (0.0, 0.1), (0.3, 0.0, 0.45, 0.1))
    m2 = np.zeros(frames.shape[:3], bool)
    m2[0, 0:1, 3:6] = True                                          # frames 0..3 -> position 0; y 0..0.8 -> row 0
    assert (out2[m2] == vanguard.BLANK_RGB).all() and np.array_equal(out2[~m2], frames[~m2])


def test_spatial_reward():
    normal = ABN.replace("<which>Fire", "<which>Normal")
    assert vanguard.spatial_reward(ABN, normal) == 0.5
    assert vanguard.spatial_reward(ABN, ABN) == 0.0
    assert vanguard.spatial_reward(ABN, None) == 0.0
    assert vanguard.spatial_reward(normal, ABN) == 0.0
    assert vanguard.spatial_reward(ABN, normal, value=1.0) == 1.0


class _Args:
    num_generations, frames, frame_rule, spatial_value = 2, 16, "paper", 0.5
    min_pixels = max_pixels = grid_time = None


def _spatial_pass(monkeypatch, texts, trim=None):
    """add_spatial_rewards on one 1,000-frame video (16 sampled frames of 8 x 8, random pixels)
    and len(texts) completions, the sampler answering Normal. -> (parts, counts, videos
    sampled)."""
    frames = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    video = dict(frames=frames, indices=vadr.sample_frame_indices(1000, 16), total_frames=1000,
                 sampled_fps=1.0)
    monkeypatch.setattr(vadr, "read_video", lambda path, n, rule: video)
    if trim is not None:
        monkeypatch.setattr(vanguard, "spatial_trim", lambda c: trim)
    sampled = []
    monkeypatch.setattr(vadr, "encode_frames", lambda f, *a: sampled.append(f) or {"frames": f})
    monkeypatch.setattr(vadr, "collate_videos", lambda vids: {"video_grid_thw": None})
    monkeypatch.setattr(vadr, "build_chat_inputs", lambda tok, prompts, grid: {})
    monkeypatch.setattr(vanguard.grpo, "sample_group", lambda *a, **k: dict(
        completion_ids=None, completion_mask=None))
    normal = ABN.replace("<which>Fire", "<which>Normal")
    monkeypatch.setattr(vanguard.grpo, "decode_completions", lambda tok, ids, m: [normal] * len(sampled))
    parts = [{"total": 1.0} for _ in texts]
    counts = vanguard.add_spatial_rewards(parts, None, None, [{"video_path": "v.mp4"}], list(texts),
                                          _Args, "prompt", "cpu", {})
    return parts, counts, sampled


def test_spatial_pass_is_skipped_when_the_blanking_changes_no_pixel(monkeypatch):
    """Issue 34's case: 16 frames sampled of 1,000 (0, 67, ..., 533, 599, ...), <when>
    [0.54, 0.59] = frames 540..589 holds none of them: no pixel blanked, no second pass, no
    spatial reward; the counts say so. A <when> that does hold one ([0.53, 0.54]: frame 533)
    gets the pass, and its Normal answer is paid."""
    assert list(vadr.sample_frame_indices(1000, 16)[8:10]) == [533, 599]
    none_sampled = ABN.replace("[0.25, 0.5]</when>", "[0.54, 0.59]</when>")
    parts, counts, sampled = _spatial_pass(monkeypatch, [none_sampled, ABN.replace("Fire", "Normal")])
    assert counts == {"spatial_passes": 0, "spatial_skipped": 1} and sampled == []
    assert parts == [{"total": 1.0, "spatial": 0.0}, {"total": 1.0, "spatial": 0.0}]
    one_sampled = ABN.replace("[0.25, 0.5]</when>", "[0.53, 0.54]</when>")
    parts, counts, sampled = _spatial_pass(monkeypatch, [one_sampled, none_sampled])
    assert counts == {"spatial_passes": 1, "spatial_skipped": 1} and len(sampled) == 1
    assert parts == [{"total": 1.5, "spatial": 0.5}, {"total": 1.0, "spatial": 0.0}]
    # exactly sampled frame 8 (index 533), box x 2..4, y 4..8 of 8 x 8, is the blank colour
    assert (sampled[0][8, 4:8, 2:4] == vanguard.BLANK_RGB).all()
    mask = np.zeros((16, 8, 8), bool)
    mask[8, 4:8, 2:4] = True
    assert not (sampled[0][~mask] == vanguard.BLANK_RGB).all(-1).any()


def test_spatial_pass_is_skipped_for_a_box_of_no_pixel(monkeypatch):
    """A box of zero width ([0.5, 0, 0.5, 1] of 8 columns: 4..4; spatial_trim's valid_box never
    gives one) over the whole video blanks nothing: skipped. Its neighbour one column wide is not."""
    _, counts, sampled = _spatial_pass(monkeypatch, [ABN], trim=((0.0, 1.0), (0.5, 0.0, 0.5, 1.0)))
    assert counts == {"spatial_passes": 0, "spatial_skipped": 1} and sampled == []
    parts, counts, sampled = _spatial_pass(monkeypatch, [ABN], trim=((0.0, 1.0), (0.5, 0.0, 0.6, 1.0)))
    assert counts == {"spatial_passes": 1, "spatial_skipped": 0} and parts[0]["spatial"] == 0.5
    assert (sampled[0][:, :, 4] == vanguard.BLANK_RGB).all() and (sampled[0][:, :, 5] != vanguard.BLANK_RGB).any()


def test_spatial_pass_in_train_rl_blanks_and_pays(tiny_world, tmp_path, monkeypatch):
    """train_rl.py --spatial-verification on one step: every completion is given a spatial trim
    (monkeypatched: the tiny model writes no boxes); the frames that reach the encoder carry the
    blank exactly there; the second completions reach spatial_reward; its value is in the total
    and the log."""
    import json
    import train_rl
    import vadr
    from test_rl import _rl_args
    from conftest import run_script
    sft = tmp_path / "sft"
    run_script("train_sft.py", ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"],
                                "--max-steps", "1", "--frames", "4"], sft)
    trim = ((0.0, 1.0), (0.0, 0.0, 0.5, 0.5))
    monkeypatch.setattr(vanguard, "spatial_trim", lambda c: trim)
    blanked, calls = [], []
    real_encode = vadr.encode_frames
    def spy(frames, *a, **k):
        blanked.append(np.array(frames))
        return real_encode(frames, *a, **k)
    monkeypatch.setattr(vadr, "encode_frames", spy)
    monkeypatch.setattr(vanguard, "spatial_reward", lambda first, second, value: calls.append(second) or value)
    out = tmp_path / "rl"
    train_rl.main(_rl_args(tiny_world, str(sft), 1, ["--spatial-verification", "--spatial-value", "0.25",
                                                     "--no-verification-reward", "--out", str(out),
                                                     "--device", "cpu", "--num-workers", "0"]))
    assert len(calls) == 3 and all(isinstance(c, str) for c in calls)  # G = 3 completions, 3 passes
    spatial = [f for f in blanked if (f[:, :f.shape[1] // 2, :f.shape[2] // 2] == vanguard.BLANK_RGB).all()]
    assert len(spatial) == 3  # the three blanked videos: the box's quarter is the blank colour
    (log,) = [json.loads(x) for x in open(out / "log.jsonl")]
    assert log["reward_spatial"] == 0.25
    assert (log["spatial_passes"], log["spatial_skipped"]) == (3, 0)
    with pytest.raises(SystemExit):
        train_rl.parse_args(["--spatial-verification", "--fsdp"])


def test_parse_box_is_linear_in_a_long_digit_run():
    """Model outputs are untrusted: the number pattern is vadr's linear one (a `\\d+\\.?\\d*` would
    split a run of N digits N^2 ways: 6,000 digits took 0.33 s, so 200,000 would take minutes)."""
    import time
    t = time.perf_counter()
    assert vanguard.parse_box("<where>[" + "1" * 200_000 + "</where>") is None
    assert time.perf_counter() - t < 1.0


# ---------------------------------------------------------------- the curriculum's table

def test_vanguard_table_rows_and_predicted_abnormal_rate(tmp_path):
    """table.md: a row per eval_<stem>.json present, its metrics as written, '-' for a missing
    one, and the share of predictions that are Abnormal (authors' rule) against the truth."""
    import json
    gt = [dict(source="S", video=f"v{i}", anomaly_type=t) for i, t in
          enumerate(["Fire", "Fire", "Fire", "Normal"])]
    (tmp_path / "gt.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gt))
    outs = ["<which>Fire</which>", "<which>Normal</which>", "no tags", "<which>Normal</which>"]
    (tmp_path / "preds_stage3.jsonl").write_text("".join(
        json.dumps(dict(source="S", video=f"v{i}", output=o)) + "\n" for i, o in enumerate(outs)))
    (tmp_path / "eval_stage3.json").write_text(json.dumps(dict(
        frame_head=dict(auc=0.9125), frame=dict(auc=0.5), detection=dict(f1=0.8),
        box={"miou": 0.25, "acc@0.5": 0.0}, format=dict(pass_rate=1.0))))
    text = vanguard.vanguard_table(str(tmp_path), str(tmp_path / "gt.jsonl"))
    assert "predicted Abnormal (true 0.750)" in text
    # 'no tags' has no <which>: Abnormal under the authors' rule, so 2 of 4 are Abnormal
    assert "| staged: head -> grounding -> CoT | - | 0.912 | 0.500 | 0.800 | 0.250 | 0.000 | 1.000 | 0.500 |" in text
    assert text.count("\n| ") == 2 and (tmp_path / "table.md").read_text() == text  # header + the one row
    # --seeds: RUN/seed<N>/, one row per model and seed; an RL row names the run it started from
    for seed, f1 in ((0, 0.5), (3, 0.25)):
        d = tmp_path / f"seed{seed}"
        (d / "rl").mkdir(parents=True)
        (d / "rl" / "run_config.json").write_text(json.dumps(dict(model=str(tmp_path / f"seed{seed}" / "stage2"))))
        (d / "preds_rl.jsonl").write_text((tmp_path / "preds_stage3.jsonl").read_text())
        (d / "eval_rl.json").write_text(json.dumps(dict(detection=dict(f1=f1))))
    text = vanguard.vanguard_table(str(tmp_path), str(tmp_path / "gt.jsonl"), seeds=[0, 3])
    assert text.count("\n| ") == 3
    assert "| stage2 + AVA-GRPO | 0 | - | - | 0.500 | - | - | - | 0.500 |" in text
    assert "| stage2 + AVA-GRPO | 3 | - | - | 0.250 | - | - | - | 0.500 |" in text
