"""Oracles for data.py: manifest validation with exact line numbers and skip counts, category
variants, video path resolution order, the Dataset/collate batch layout, and bad input reported
by the scripts without a traceback. CPU only, tiny data. Run: pytest tests/test_data.py
(the toy world's own oracles: tests/test_toy.py)"""
import json
import os

import numpy as np
import pytest
import torch

import data
import vadr
from extras import toy, toymodel


# A valid abnormal pair: total 100, start 25, end 50 -> <when>[0.25, 0.5]</when>
# (docs/paper-vs-authors.md s.1).
ABN_THINK = ("<think><step1>A road with cars.</step1><step2>A car hits a wall.</step2>"
             "<step3>A crash is abnormal.</step3><step4>People may be hurt.</step4></think>")
ABN_ANSWER = ("<answer>The video shows <which>Traffic Accidents</which>: <what>a car hits a wall</what> in "
              "<when>[0.25, 0.5]</when> at <where>the left</where>. It is abnormal because <why>cars should "
              "not crash</why>, and <how>people may be hurt</how>.</answer>")
NOR_THINK = "<think><step1>A quiet street.</step1><step2>Nothing unusual happens.</step2></think>"
NOR_ANSWER = ("<answer>The video is <which>Normal</which>: <what>people walk</what>. It is normal because "
              "<why>nothing unusual happens</why>.</answer>")


def _abn(video, **kw):
    row = dict(source="UCF", video=video, anomaly_type="Traffic Accidents", path=f"/media/x/UCF/{video}.mp4",
               total_frames=100, start=25, end=50, think=ABN_THINK, answer=ABN_ANSWER)
    row.update(kw)
    return row


def _write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for ln in lines:
            f.write((ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False)) + "\n")
    return str(path)


def _touch(path, content=b"not really a video"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


# ================================================================ manifest validation

def _broken_sft(tmp_path):
    root = tmp_path / "videos"
    for v in ("good", "normal1", "v5", "v6", "v7", "v8", "v12", "v13"):
        _touch(str(root / "UCF" / f"{v}.mp4"))
    _touch(str(root / "UCF" / "empty.mp4"), b"")
    no_think = _abn("v3")
    del no_think["think"]
    typo = _abn("v8", think=ABN_THINK.replace("</step1>", "<step1>"))  # SFT-train video 2088's typo
    lines = [
        _abn("good"),                                                    # 1 ok
        '{"source": "UCF", "video": "x", "anomaly_type": ',               # 2 bad JSON
        no_think,                                                        # 3 missing field
        _abn("nope"),                                                    # 4 missing video
        _abn("v5", start=50, end=50),                                    # 5 start >= end
        _abn("v6", start=25, end=120),                                   # 6 end > total_frames
        _abn("v7", anomaly_type="Alien Invasion"),                       # 7 unknown category
        typo,                                                            # 8 <step1> closing typo
        "",                                                              # 9 blank: skipped, counted
        dict(source="UCF", video="normal1", anomaly_type="Normal", path="/media/x/UCF/normal1.mp4",
             total_frames=80, think=NOR_THINK, answer=NOR_ANSWER),       # 10 ok
        _abn("empty"),                                                   # 11 unreadable (empty file)
        _abn("v12", start=30),                                           # 12 <when> != start/total
        _abn("v13", anomaly_type="Normal"),                              # 13 4-step text on a Normal row
    ]
    return _write_jsonl(tmp_path / "sft.jsonl", lines), str(root)


EXPECTED = [(2, "bad-json"), (3, "missing-field"), (4, "missing-video"), (5, "bad-interval"),
            (6, "interval-out-of-range"), (7, "unknown-category"), (8, "bad-format"), (11, "unreadable-video"),
            (12, "when-mismatch"), (13, "label-mismatch")]


def test_broken_manifest_lists_every_problem_with_its_line(tmp_path):
    path, root = _broken_sft(tmp_path)
    with pytest.raises(data.ManifestError) as ei:
        data.read_manifest(path, "sft", video_root=root)
    e = ei.value
    assert [(ln, r) for ln, r, _ in e.problems] == EXPECTED
    msg = str(e)
    assert msg.splitlines()[0] == f"{path}: 10 problem(s) in 10 row(s):"
    for ln, reason in EXPECTED:
        assert f"\n{path}:{ln}: {reason}: " in msg
    assert f"{path}:3: missing-field: missing 'think'" in msg
    assert f"{path}:5: bad-interval: start 50 >= end 50" in msg
    assert f"{path}:6: interval-out-of-range: [start, end] = [25, 120]" in msg
    assert f"{path}:7: unknown-category: anomaly_type 'Alien Invasion'" in msg
    assert f"{path}:8: bad-format: tag #3 is <step1> where </step1> is expected" in msg
    assert f"{path}:11: unreadable-video: {root}/UCF/empty.mp4: empty file" in msg
    assert f"{path}:12: when-mismatch: <when> is (0.25, 0.5) but start/end/total_frames give [0.3, 0.5]" in msg
    # the missing video names every candidate, in the documented order
    assert (f"{path}:4: missing-video: video 'nope' (source 'UCF') not found; tried: {root}/UCF/nope.mp4, "
            f"{root}/nope.mp4, {root}/media/x/UCF/nope.mp4, {root}/x/UCF/nope.mp4, /media/x/UCF/nope.mp4") in msg


def test_skip_bad_counts_exactly(tmp_path, capsys):
    path, root = _broken_sft(tmp_path)
    rows = data.read_manifest(path, "sft", video_root=root, skip_bad=True)
    assert [r["line"] for r in rows] == [1, 10]
    assert "skipped 10 bad row(s)" in capsys.readouterr().err
    _, problems = data.check_manifest(path, "sft", video_root=root)
    assert data.skipped_counts(problems) == {r: 1 for _, r in EXPECTED}
    good, normal = rows
    assert good["video_path"] == f"{root}/UCF/good.mp4" and good["label"] == "Abnormal"
    assert good["when"] == (0.25, 0.5) and (good["start"], good["end"], good["total_frames"]) == (25, 50, 100)
    assert normal["label"] == "Normal" and normal["anomaly_type"] == "Normal" and normal["when"] is None
    assert "start" not in normal


def test_rl_manifest_checks(tmp_path):
    root = tmp_path / "v"
    for v in ("a", "b", "c", "d"):
        _touch(str(root / "XD" / f"{v}.mp4"))
    rl = lambda v, at, sol, **kw: dict(dict(source="XD", video=v, anomaly_type=at, path=f"/m/{v}.mp4",
                                            data_type="video", solution=sol), **kw)
    path = _write_jsonl(tmp_path / "rl.jsonl", [
        rl("a", "Abnormal", "Abnormal"),
        rl("b", "Normal", "<answer>Normal</answer>"),   # a tag-wrapped weak label is accepted
        rl("c", "Abnormal", "Normal"),                  # disagreement
        rl("d", "Fighting", "Abnormal"),                # RL rows carry only the binary label
        {k: v for k, v in rl("d", "Normal", "Normal").items() if k != "data_type"},
    ])
    _, problems = data.check_manifest(path, "rl", video_root=str(root))
    assert [(ln, r) for ln, r, _ in problems] == [(3, "label-mismatch"), (4, "bad-value"), (5, "missing-field")]
    rows = data.read_manifest(path, "rl", video_root=str(root), skip_bad=True)
    assert [(r["line"], r["label"], r["anomaly_type"]) for r in rows] == [(1, "Abnormal", "Abnormal"),
                                                                         (2, "Normal", "Normal")]


def test_category_variants_are_normalised(tmp_path):
    variants = {"Red Lgiht Violation": "Red Light Violation", "Avalanche\u200b and Landslide": "Avalanche and Landslide",
                "Falling objects": "Falling Objects", "Drown": "Drowning", "Animal Hurts Human": "Animals Hurt Human",
                "\u200bFighting ": "Fighting"}
    path = _write_jsonl(tmp_path / "c.jsonl", [_abn(f"v{i}", anomaly_type=k) for i, k in enumerate(variants)])
    rows = data.read_manifest(path, "sft", check_videos=False)
    assert [r["anomaly_type"] for r in rows] == list(variants.values())
    assert all(r["anomaly_type"] in vadr.CATEGORIES for r in rows)


def test_path_resolution_order(tmp_path):
    root = tmp_path / "root"
    orig = "/media/u/VA-RL/SH/Abnormal/a.mp4"  # the authors' absolute path: its tail is the layout
    r = lambda *p: str(root.joinpath(*p))
    cands = [r("SH", "a.mp4"), r("a.mp4"), r("media", "u", "VA-RL", "SH", "Abnormal", "a.mp4"),
             r("u", "VA-RL", "SH", "Abnormal", "a.mp4"), r("VA-RL", "SH", "Abnormal", "a.mp4"),
             r("SH", "Abnormal", "a.mp4"), r("Abnormal", "a.mp4"), orig]  # repeats dropped
    assert data.video_candidates("SH", "a", orig, str(root)) == cands
    assert data.resolve_video("SH", "a", orig, str(root)) == (None, cands, [])
    for c in cands[:-1]:  # each candidate alone is found
        _touch(c)
        assert data.resolve_video("SH", "a", orig, str(root)) == (c, cands, []), c
        os.remove(c)
    # two different files match: the first wins and the other is reported (ambiguous)
    _touch(cands[5]), _touch(cands[1])
    assert data.resolve_video("SH", "a", orig, str(root)) == (cands[1], cands, [cands[5]])
    os.remove(cands[1])
    os.link(cands[5], cands[1])  # the same file twice (a hard link) is not ambiguous
    assert data.resolve_video("SH", "a", orig, str(root)) == (cands[1], cands, [])
    # `path` that exists as written is the row's own file: it wins, a file under the root is no rival
    copy = tmp_path / "elsewhere" / "a.mp4"
    _touch(str(copy), b"the original")
    assert data.resolve_video("SH", "a", str(copy), str(root)) == (str(copy), data.video_candidates(
        "SH", "a", str(copy), str(root)), [])
    # without a root only the path as written; a relative path is relative to the manifest's folder
    assert data.video_candidates("UCF", "a", "sub/x.mp4", None, "/m") == ["/m/sub/x.mp4"]
    # a video name that already has an extension gets none added; a Windows path splits too
    assert data.video_candidates("S", "b.mp4", "C:\\v\\b.mp4", "/r") == [
        "/r/S/b.mp4", "/r/b.mp4", "/r/C:/v/b.mp4", "/r/v/b.mp4", "./C:\\v\\b.mp4"]


def test_ambiguous_video_is_reported_by_line(tmp_path):
    root = tmp_path / "v"
    _touch(str(root / "SH" / "Abnormal" / "a.mp4")), _touch(str(root / "a.mp4"), b"other")
    path = _write_jsonl(tmp_path / "rl.jsonl", [dict(
        source="SH", video="a", anomaly_type="Abnormal", path="/m/SH/Abnormal/a.mp4",
        data_type="video", solution="Abnormal")])
    _, problems = data.check_manifest(path, "rl", video_root=str(root))
    assert problems == [(1, "ambiguous-video", f"video 'a' matches different files: {root}/a.mp4, "
                         f"{root}/SH/Abnormal/a.mp4; keep one or pass a --video-root that holds one")]


# The released manifests (annotations only). A clone without them skips; VADR_RELEASED_DATA points
# at another folder holding Vad-Reasoning-RL.jsonl and Vad-Reasoning-SFT-train.jsonl.
RELEASED = os.environ.get("VADR_RELEASED_DATA", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data"))
RELEASED_FILES = {"rl": "Vad-Reasoning-RL.jsonl", "sft": "Vad-Reasoning-SFT-train.jsonl"}
needs_released = pytest.mark.skipif(not all(os.path.isfile(os.path.join(RELEASED, f))
                                            for f in RELEASED_FILES.values()),
                                    reason=f"released manifests not in {RELEASED}")


@needs_released
def test_released_manifests_validate_but_one_row():
    for kind, name in RELEASED_FILES.items():
        path = os.path.join(RELEASED, name)
        _, problems = data.check_manifest(path, kind, check_videos=False)
        expect = [(583, "bad-format")] if kind == "sft" else []
        assert [(ln, r) for ln, r, _ in problems] == expect, kind
    assert "tag #3 is <step1> where </step1> is expected" in problems[0][2]


@needs_released
@pytest.mark.parametrize("strip", [0, 2, 3])
def test_released_layout_resolves_under_a_root(tmp_path, strip):
    """Every `path` of both released manifests, as a tree of small files with its first `strip`
    components cut (0: /media/<user>/VA-Reasoning-RL/..., 2: VA-Reasoning-RL/..., 3: the
    <source>/... layout inside one tree): every row resolves to its own file."""
    for kind, name in RELEASED_FILES.items():
        path = os.path.join(RELEASED, name)
        with open(path, encoding="utf-8") as f:
            paths = [json.loads(line)["path"] for line in f if line.strip()]
        root = tmp_path / f"{kind}{strip}"
        want = [str(root.joinpath(*p.strip("/").split("/")[strip:])) for p in paths]
        for w in want:
            _touch(w, b"x")
        rows, problems = data.check_manifest(path, kind, video_root=str(root))
        assert [(ln, r) for ln, r, _ in problems] == ([(583, "bad-format")] if kind == "sft" else [])
        by_line = {r["line"]: r["video_path"] for r in rows}
        assert len(by_line) == len(paths) - (kind == "sft")
        assert all(by_line[i + 1] == w for i, w in enumerate(want) if i + 1 in by_line), kind


# ================================================================ Dataset and collate

def test_sft_batch_of_two_video_sizes(tmp_path):
    rows = []
    for name, seed, cat, size in (("big", 1, "Fire", (112, 112)), ("small", 2, None, (56, 84))):
        frames, meta = toy.render_toy_video(seed, cat, size=size, frames=24)
        path = str(tmp_path / f"{name}.mp4")
        toy.write_video(path, frames)
        think, answer = toy.toy_texts(meta, np.random.default_rng(seed))
        row = dict(source="TOY", video=name, anomaly_type=meta["category"], path=path, total_frames=24,
                   think=think, answer=answer)
        if cat:
            row.update(start=meta["start"], end=meta["end"], bbox=meta["bbox"])
        rows.append(row)
    rows = data.read_manifest(_write_jsonl(tmp_path / "m.jsonl", rows), "sft", probe_videos=True)
    tok = toymodel.train_toy_tokenizer([r["think"] + "\n" + r["answer"] for r in rows])
    ds = data.SFTDataset(rows)
    items = [ds[0], ds[1]]
    assert items[0]["prompt"] == items[1]["prompt"] == vadr.build_prompt("fine")
    batch = data.make_collate(tok, with_targets=True)(items)
    assert set(batch) == {"input_ids", "attention_mask", "mm_token_type_ids", "labels", "pixel_values_videos",
                          "video_grid_thw", "second_per_grid_ts", "rows"}
    # 16 frames -> grid_t 8; 112x112 -> 8x8 patches, 56x84 -> 4x6 patches (smart_resize keeps both)
    assert batch["video_grid_thw"].tolist() == [[8, 8, 8], [8, 4, 6]]
    assert tuple(batch["pixel_values_videos"].shape) == (8 * 8 * 8 + 8 * 4 * 6, 1176)
    assert torch.allclose(batch["second_per_grid_ts"], torch.tensor([2 / (16 / 24 * 8)] * 2))
    video_id = tok.convert_tokens_to_ids("<|video_pad|>")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ids, lab, att = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for i, grid in enumerate(batch["video_grid_thw"].tolist()):
        assert int((ids[i] == video_id).sum()) == grid[0] * grid[1] * grid[2] // 4   # 128 and 48
        assert torch.equal(batch["mm_token_type_ids"][i] == 2, ids[i] == video_id)
        target = tok(items[i]["target"], add_special_tokens=False)["input_ids"] + [im_end]
        on = lab[i] != -100
        assert lab[i][on].tolist() == target                       # labels only on the target tokens
        assert on[-len(target):].all() and int(on.sum()) == len(target)   # ... which end the row
        assert ids[i][-len(target):].tolist() == target
        n_pad = int((att[i] == 0).sum())
        assert att[i][n_pad:].all() and not att[i][:n_pad].any()   # left padding
    assert batch["rows"] == rows
    assert items[0]["target"] == rows[0]["think"] + "\n" + rows[0]["answer"]

    # RL items: weak label as the solution, the binary prompt, no labels without targets
    rl = data.RLDataset(rows)
    it = rl[0]
    assert it["solution"] == "Abnormal" and rl[1]["solution"] == "Normal"
    assert it["prompt"] == vadr.build_prompt("binary") and it["video_path"] == rows[0]["video_path"]
    rb = data.make_collate(tok, with_targets=False)([rl[0], rl[1]])
    assert "labels" not in rb and rb["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="target"):
        data.make_collate(tok, with_targets=True)([rl[0]])
    # DataLoader workers decode and collate (the collate function pickles)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=data.make_collate(tok, with_targets=True))
    wb = next(iter(dl))
    assert torch.equal(wb["input_ids"], ids) and torch.equal(wb["pixel_values_videos"], batch["pixel_values_videos"])


def test_scripts_report_bad_input_without_a_traceback(tiny_world, tmp_path):
    """A broken manifest given to a training script: one clear message naming file:line, exit 1,
    no Python traceback (vadr.run_main); a malformed predictions file likewise for eval.py."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    w = tiny_world  # conftest's tiny world: its manifest paths and videos folder
    good = open(w["sft_train"]).read().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good[:2] + ['{"source": "TOY", "video": "x"']) + "\n")
    p = subprocess.run([sys.executable, "train_sft.py", "--data", str(bad), "--video-root", w["videos"],
                        "--out", str(tmp_path / "run")], cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"{bad}:3: bad-json" in p.stderr
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"source": "TOY", "video": "a", "output": ""}\n{oops\n')
    p = subprocess.run([sys.executable, "eval.py", "--score", str(preds), "--gt", w["sft_test"]],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr and f"{preds}:2: not valid JSON" in p.stderr

