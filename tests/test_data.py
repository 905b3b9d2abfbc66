"""Oracles for data.py: manifest validation with exact line numbers and skip counts, category
variants, video path resolution order, toy-world determinism and schema, the decord round trip,
anomaly visibility in the 16 sampled frames, honesty (no trivial global cue), and the
Dataset/collate batch layout. CPU only, tiny data. Run: pytest tests/test_data.py"""
import json
import os
import re

import numpy as np
import pytest
import torch

import data
import vadr

# Tests of the batch layout need these vadr functions; they skip (and say so) only if one is missing.
_BATCH_FNS = ("encode_video", "collate_videos", "build_chat_inputs", "build_prompt", "train_toy_tokenizer",
              "video_token_count", "sample_frame_indices")
needs_batch = pytest.mark.skipif(not all(hasattr(vadr, f) for f in _BATCH_FNS),
                                 reason=f"vadr lacks one of {_BATCH_FNS}")

# A valid abnormal pair: total 100, start 25, end 50 -> <when>[0.25, 0.5]</when> (facts s.1).
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
            f"{root}/nope.mp4, /media/x/UCF/nope.mp4") in msg


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
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    orig = str(elsewhere / "orig.mp4")  # the row's `path`, which also exists here
    cands = [str(root / "UCF" / "a.mp4"), str(root / "a.mp4"), str(root / "orig.mp4"),
             str(root / "UCF" / "orig.mp4"), orig]
    for c in cands:
        _touch(c)
    assert data.video_candidates("UCF", "a", orig, str(root)) == cands
    for i, c in enumerate(cands):  # the first existing candidate wins; remove it, the next one wins
        assert data.resolve_video("UCF", "a", orig, str(root)) == (c, cands), i
        os.remove(c)
    assert data.resolve_video("UCF", "a", orig, str(root)) == (None, cands)
    # without a root only the path as written; a relative path is relative to the manifest's folder
    assert data.video_candidates("UCF", "a", "sub/x.mp4", None, "/m") == ["/m/sub/x.mp4"]
    # a video name that already has an extension gets none added; repeats are dropped
    assert data.video_candidates("S", "b.mp4", "/p/b.mp4", "/r") == ["/r/S/b.mp4", "/r/b.mp4", "/p/b.mp4"]


# ================================================================ the toy world

TINY = dict(n_sft=14, n_test=4, n_rl=6, n_caption=4, size=(64, 80), frames=(16, 24), fps=8, workers=1, quiet=True)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    return out, data.generate_toy_world(out, seed=0, **TINY)


def _read_all(out):
    return [open(p, encoding="utf-8").read().replace(out, "<OUT>") for p in data.manifest_paths(out).values()]


def _decode_all(path):
    import decord
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()  # (T, H, W, 3) uint8


def test_toy_world_is_deterministic(tmp_path):
    kw = dict(n_sft=4, n_test=2, n_rl=2, n_caption=2, size=(64, 64), frames=(16, 20), quiet=True)
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    data.generate_toy_world(a, seed=3, workers=1, **kw)
    data.generate_toy_world(b, seed=3, workers=2, **kw)   # worker count must not matter
    data.generate_toy_world(c, seed=4, workers=1, **kw)
    ma, mb, mc = _read_all(a), _read_all(b), _read_all(c)
    assert ma == mb                      # byte-identical up to the absolute out dir in `path`
    assert ma != mc
    for name in sorted(os.listdir(os.path.join(a, "videos"))):
        va, vb = os.path.join(a, "videos", name), os.path.join(b, "videos", name)
        assert open(va, "rb").read() == open(vb, "rb").read(), name   # the mp4 bytes, too
        fa, fb = _decode_all(va), _decode_all(vb)
        assert fa.shape == fb.shape and np.array_equal(fa, fb), name
    # same directory, same seed: byte-identical manifests, no path substitution needed
    data.generate_toy_world(d, seed=3, workers=1, **kw)
    first = [open(p, "rb").read() for p in data.manifest_paths(d).values()]
    data.generate_toy_world(d, seed=3, workers=1, **kw)
    assert first == [open(p, "rb").read() for p in data.manifest_paths(d).values()]


def test_toy_schema(tiny_world):
    out, paths = tiny_world
    names = set()
    for key, n in (("sft_train", 14), ("sft_test", 4), ("rl", 6)):
        kind = "rl" if key == "rl" else "sft"
        raw = [json.loads(ln) for ln in open(paths[key], encoding="utf-8")]
        assert len(raw) == n
        assert sum(r["anomaly_type"] != "Normal" for r in raw) == n // 2   # label balance
        rows = data.read_manifest(paths[key], kind, probe_videos=True)     # passes our own validator
        assert len(rows) == n
        for r in raw:
            assert r["source"] == "TOY" and re.fullmatch(r"toy_\d{5}", r["video"])
            assert r["path"] == os.path.join(out, "videos", r["video"] + ".mp4") and os.path.isfile(r["path"])
            names.add(r["video"])
            if kind == "rl":
                assert list(r) == list(data.RL_FIELDS)
                assert r["data_type"] == "video" and r["solution"] == r["anomaly_type"] in ("Abnormal", "Normal")
                continue
            abnormal = r["anomaly_type"] != "Normal"
            want = set(data.SFT_FIELDS) | ({"start", "end", "bbox"} if abnormal else set())
            assert set(r) == want, r.keys()
            text = r["think"] + "\n" + r["answer"]
            assert vadr.check_format(text) == ("abnormal" if abnormal else "normal")
            p = vadr.parse_completion(text)
            assert p["which"] == r["anomaly_type"]
            frames = _decode_all(r["path"])
            assert frames.shape == (r["total_frames"], 64, 80, 3)
            assert 16 <= r["total_frames"] <= 24
            if abnormal:
                assert r["anomaly_type"] in data.TOY_CATEGORIES and r["anomaly_type"] in vadr.CATEGORIES
                T, s, e = r["total_frames"], r["start"], r["end"]
                assert 0 <= s < e <= T
                assert p["when"] == (round(s / T, 3), round(e / T, 3))
                assert f"<when>{data.format_when(s, e, T)}</when>" in r["answer"]
                x1, y1, x2, y2 = r["bbox"]
                assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 64
    assert len(names) == 24  # unique names across the three manifests
    train = data.read_manifest(paths["sft_train"], "sft")
    # 7 abnormal training videos spread evenly: each toy category exactly once
    assert sorted(r["anomaly_type"] for r in train if r["label"] == "Abnormal") == sorted(data.TOY_CATEGORIES)
    assert len(data.toy_corpus(out)) == 2 * 14 + 4  # think + answer per SFT row, then the captions


def test_toy_captions_describe_pixels_without_judging(tiny_world):
    """Stage-0 captions (toy only): own videos, plain description, the event's time in seconds; no
    category name, no 'anomaly', no P2C-CoT tag, so that judging is left to SFT and AVA-GRPO."""
    out, paths = tiny_world
    rows = data.read_manifest(paths["caption"], "caption", probe_videos=True)
    assert len(rows) == 4 and sum(r["label"] == "Abnormal" for r in rows) == 2
    others = {json.loads(ln)["video"] for k in ("sft_train", "sft_test", "rl") for ln in open(paths[k])}
    for r in rows:
        assert r["video"] not in others
        c = r["caption"]
        assert "<" not in c and "anomal" not in c.lower() and "normal" not in c.lower()
        assert not any(cat.lower() in c.lower() for cat in data.TOY_CATEGORIES)
        # the event first (so the first token is decided by the pixels), then the scene
        m = re.match(r"[A-Z][^.]* from (\d+\.\d) s to (\d+\.\d) s\. (A street|[A-Z][a-z]+ buildings)", c)
        assert (m is not None) == (r["label"] == "Abnormal"), c
        assert c.startswith(data._CAPTION_QUIET + " ") == (r["label"] == "Normal"), c
        if m:
            assert float(m.group(1)) < float(m.group(2)) <= 24 / 8   # at most 24 frames at 8 fps
    ds = data.CaptionDataset(rows, num_frames=16)
    item = ds[0]
    assert item["prompt"] == data.CAPTION_PROMPT and item["target"] == rows[0]["caption"]
    with pytest.raises(ValueError, match="CaptionDataset needs rows with caption"):
        data.CaptionDataset([{"line": 3, "think": "", "answer": ""}])


def test_when_formatting():
    assert data.format_when(16, 32, 64) == "[0.25, 0.5]"
    assert data.format_when(0, 17, 72) == "[0.0, 0.236]"
    assert data.format_when(36, 72, 72) == "[0.5, 1.0]"


def test_ensure_toy_world_reuses_and_regenerates(tiny_world, tmp_path):
    out = str(tmp_path / "w")
    kw = dict(seed=1, n_sft=2, n_test=2, n_rl=2, n_caption=2, size=(64, 64), frames=(16, 16), workers=1, quiet=True)
    p = data.ensure_toy_world(out, **kw)
    stamp = os.stat(p["sft_train"]).st_mtime_ns
    assert data.ensure_toy_world(out, **kw) == p and os.stat(p["sft_train"]).st_mtime_ns == stamp  # reused
    data.ensure_toy_world(out, **dict(kw, seed=2))                                                 # regenerated
    assert _read_all(out) != []
    assert json.load(open(os.path.join(out, "toy_world.json")))["params"]["seed"] == 2


def test_decord_round_trip(tmp_path):
    frames, meta = data.render_toy_video(11, "Fire", size=(112, 112), frames=24, fps=8)
    assert frames.shape == (24, 112, 112, 3) and frames.dtype == np.uint8
    path = str(tmp_path / "v.mp4")
    data.write_video(path, frames, fps=8)
    got = _decode_all(path)
    assert got.shape == frames.shape
    diff = np.abs(got.astype(np.int16) - frames.astype(np.int16))
    assert diff.mean() < 6, diff.mean()
    v = vadr.read_video(path, 16)
    assert v["total_frames"] == 24 and abs(v["fps"] - 8.0) < 1e-6


def _changed(a, b):
    """(T, H, W) bool: pixels whose colour differs by more than 30 in some channel."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > 30).any(-1)


@pytest.mark.parametrize("category", data.TOY_CATEGORIES)
def test_anomaly_visible_in_sampled_frames(category, tmp_path):
    for seed in (100, 101, 102):
        frames, meta = data.render_toy_video(seed, category, size=(112, 112), frames=(48, 64))
        cf, cf_meta = data.render_toy_video(seed, category, size=(112, 112), frames=(48, 64), draw_event=False)
        T, s, e = meta["total_frames"], meta["start"], meta["end"]
        assert cf_meta["total_frames"] == T and (cf_meta["start"], cf_meta["end"]) == (s, e)
        assert 0.25 * T - 1 <= e - s <= 0.6 * T + 1, (T, s, e)      # 25-60% of the video
        x1, y1, x2, y2 = meta["bbox"]
        idx = vadr.sample_frame_indices(T, 16)
        inside = [int(i) for i in idx if s <= i < e]
        assert len(inside) >= 3, (T, s, e)                          # the event is in >= 3 of 16 frames
        ch = _changed(frames, cf)                                   # (T, H, W): pixels the event drew
        box = np.zeros(ch.shape[1:], bool)
        box[y1:y2, x1:x2] = True
        for i in inside:
            assert ch[i].sum() >= 20, (seed, i, ch[i].sum())        # clearly visible
            assert not (ch[i] & ~box).any()                         # and inside the bbox
            # against the empty street (the static background) the bbox differs clearly, too
            assert (_changed(frames[i][None], meta["background"][None])[0] & box).sum() >= 20
        if seed == 100:  # still visible after H.264 compression and decord decoding
            pa, pb = str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")
            data.write_video(pa, frames)
            data.write_video(pb, cf)
            dch = _changed(_decode_all(pa), _decode_all(pb))
            assert all(dch[i][box].sum() >= 15 for i in inside)


def test_normal_video_has_no_event():
    a, ma = data.render_toy_video(5, None, size=(64, 64), frames=20)
    b, _ = data.render_toy_video(5, None, size=(64, 64), frames=20, draw_event=False)
    assert np.array_equal(a, b)
    assert (ma["label"], ma["category"], ma["start"], ma["end"], ma["bbox"]) == ("Normal", "Normal", None, None, None)


def test_no_trivial_global_cue():
    """Length and mean colour do not give the label away (best threshold accuracy stays low)."""
    stats, labels = [], []
    for i in range(48):
        cat = None if i % 2 == 0 else data.TOY_CATEGORIES[(i // 2) % 7]
        frames, meta = data.render_toy_video(1000 + i, cat, size=(64, 64), frames=(16, 32))
        stats.append([meta["total_frames"], *frames.reshape(-1, 3).mean(0)])
        labels.append(cat is not None)
    stats, labels = np.array(stats), np.array(labels)
    for k in range(stats.shape[1]):
        best = max(max(((stats[:, k] > t) == labels).mean(), ((stats[:, k] <= t) == labels).mean())
                   for t in np.unique(stats[:, k]))
        assert best < 0.8, (k, best)


def test_toy_texts_pass_format_and_vary():
    texts = set()
    for i, cat in enumerate([None, *data.TOY_CATEGORIES] * 4):
        _, meta = data.render_toy_video(200 + i, cat, size=(64, 64), frames=16)
        think, answer = data.toy_texts(meta, np.random.default_rng([200 + i, 7]))
        assert vadr.check_format(think + "\n" + answer) == ("normal" if cat is None else "abnormal")
        n = len(data.strip_tags(think + " " + answer).split())
        assert (40 <= n <= 100) if cat is None else (80 <= n <= 160), n
        texts.add(re.sub(r"\d", "", think))
    assert len(texts) >= 28  # varied templates and facts, not one text per category


def test_text_variants_one_makes_the_text_a_function_of_the_facts():
    """text_variants=1 (the default world's setting): every slot takes its first option, so the
    text no longer depends on the random draw, the answer is the labelled "Category: <which>..."
    layout, and the text equals the first-option text written out here by hand. Out-of-range
    values fail."""
    _, meta = data.render_toy_video(5, "Fire", size=(112, 112), frames=32, sprite_scale=2.5)
    v = data._fact_words(meta)
    want_think = (f"<think><step1>A street seen from the side: {v['nb']} buildings under a {v['sky']} sky, a "
                  f"{v['walk']} walkway with {v['np']} people, and a road where {v['nc']} cars drive {v['cdir']}."
                  f"</step1><step2>From {v['t0']} s to {v['t1']} s, flickering red and orange flames appear "
                  f"{v['at']}, grow larger and give off grey smoke.</step2><step3>Open flames and smoke do not "
                  f"belong on a street; the bright flickering colours show a fire.</step3><step4>It may come "
                  f"from a cigarette or burning rubbish, and it can spread and hurt people.</step4></think>")
    want_answer = (f"<answer>Category: <which>Fire</which>. Event: <what>a fire burns on the walkway</what>. "
                   f"Time: <when>{v['when']}</when>. Place: <where>the {v['vert']} {v['h']} of the frame</where>. "
                   f"Reason: <why>open fire is dangerous on a street</why>. Impact: <how>it may spread and "
                   f"injure people</how>.</answer>")
    for seed in range(5):  # the draw does not matter any more
        assert data.toy_texts(meta, np.random.default_rng(seed), text_variants=1) == (want_think, want_answer)
    _, meta_n = data.render_toy_video(6, None, size=(112, 112), frames=32)
    t, a = data.toy_texts(meta_n, np.random.default_rng(0), text_variants=1)
    assert a == ("<answer>Category: <which>Normal</which>. Event: <what>ordinary street activity</what>. "
                 "Reason: <why>people walk calmly and the traffic flows one way</why>.</answer>")
    assert t.startswith("<think><step1>A street seen from the side: ") and vadr.check_format(t + "\n" + a) == "normal"
    # every category's first-option text passes the format; with every option the texts vary more
    one, every = set(), set()
    for i, cat in enumerate([None, *data.TOY_CATEGORIES] * 3):
        _, m = data.render_toy_video(300 + i, cat, size=(64, 64), frames=16)
        t1, a1 = data.toy_texts(m, np.random.default_rng([300 + i, 7]), text_variants=1)
        assert vadr.check_format(t1 + "\n" + a1) == ("normal" if cat is None else "abnormal")
        ta, aa = data.toy_texts(m, np.random.default_rng([300 + i, 7]))
        # the judging sentence (step3 if abnormal, else step2) starts with fixed words
        key = lambda t: t.split("</step2>" if cat else "</step1>")[1][:32]
        one.add(key(t1))
        every.add(key(ta))
    assert len(one) == 1 + len(data.TOY_CATEGORIES) < len(every)
    assert data.TEXT_VARIANTS == 4
    for bad in (0, data.TEXT_VARIANTS + 1, 1.5):
        with pytest.raises(ValueError, match="text_variants"):
            data.toy_texts(meta, np.random.default_rng(0), text_variants=bad)


# ================================================================ Dataset and collate

@needs_batch
def test_sft_batch_of_two_video_sizes(tmp_path):
    rows = []
    for name, seed, cat, size in (("big", 1, "Fire", (112, 112)), ("small", 2, None, (56, 84))):
        frames, meta = data.render_toy_video(seed, cat, size=size, frames=24)
        path = str(tmp_path / f"{name}.mp4")
        data.write_video(path, frames)
        think, answer = data.toy_texts(meta, np.random.default_rng(seed))
        row = dict(source="TOY", video=name, anomaly_type=meta["category"], path=path, total_frames=24,
                   think=think, answer=answer)
        if cat:
            row.update(start=meta["start"], end=meta["end"], bbox=meta["bbox"])
        rows.append(row)
    rows = data.read_manifest(_write_jsonl(tmp_path / "m.jsonl", rows), "sft", probe_videos=True)
    tok = vadr.train_toy_tokenizer([r["think"] + "\n" + r["answer"] for r in rows])
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
    w = tiny_world[1]  # this module's tiny_world fixture: (out_dir, manifest paths)
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
    assert p.returncode == 1 and "Traceback" not in p.stderr and f"{preds}:2: malformed JSON" in p.stderr


def test_world_knobs_categories_and_sprite_scale(tmp_path):
    """--categories restricts the abnormal videos to those categories (still half of each split) and is
    recorded in toy_world.json; --sprite-scale draws the same video with sprites that many times larger."""
    out = str(tmp_path / "w")
    kw = dict(seed=2, n_sft=6, n_test=2, n_rl=4, n_caption=4, size=(64, 64), frames=(16, 16), workers=1, quiet=True)
    data.generate_toy_world(out, categories=("Fire",), sprite_scale=2.0, **kw)
    rows = data.read_manifest(data.manifest_paths(out)["sft_train"], "sft")
    assert sorted(r["anomaly_type"] for r in rows) == ["Fire"] * 3 + ["Normal"] * 3
    params = json.load(open(os.path.join(out, "toy_world.json")))["params"]
    assert (params["categories"], params["sprite_scale"]) == (["Fire"], 2.0)
    with pytest.raises(ValueError, match="toy categories"):
        data.generate_toy_world(str(tmp_path / "bad"), categories=("Fire", "Robbery"), **kw)
    # the default world is unchanged by the knobs' defaults: same rows as without them
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    data.generate_toy_world(a, **kw)
    data.generate_toy_world(b, categories=data.TOY_CATEGORIES, sprite_scale=1.0,
                            text_variants=data.TEXT_VARIANTS, **kw)
    assert _read_all(a) == [t.replace(b, a) for t in _read_all(b)]
    # text_variants=1: the same videos and captions, every answer in the first layout, recorded
    c = str(tmp_path / "c")
    data.generate_toy_world(c, text_variants=1, **kw)
    pa, pc = data.manifest_paths(a), data.manifest_paths(c)
    ra, rc = (data.read_manifest(p["sft_train"], "sft") for p in (pa, pc))
    assert [r["video"] for r in ra] == [r["video"] for r in rc] and ra != rc
    assert all(r["answer"].startswith("<answer>Category: <which>") for r in rc)
    assert open(pa["caption"]).read().replace(a, c) == open(pc["caption"]).read()
    assert json.load(open(os.path.join(c, "toy_world.json")))["params"]["text_variants"] == 1
    # sprite sizes scale: the fire's bbox (radius ~ sprite unit) grows about 2x at scale 2
    _, m1 = data.render_toy_video(7, "Fire", size=(112, 112), frames=32)
    _, m2 = data.render_toy_video(7, "Fire", size=(112, 112), frames=32, sprite_scale=2.0)
    w1, w2 = m1["bbox"][2] - m1["bbox"][0], m2["bbox"][2] - m2["bbox"][0]
    assert 1.6 < w2 / w1 < 2.4, (w1, w2)
    with pytest.raises(ValueError, match="sprite_scale"):
        data.render_toy_video(7, "Fire", size=(112, 112), frames=32, sprite_scale=10)


def test_bad_world_flags_fail_before_rendering(tmp_path):
    """data.py toy with an out-of-range flag: one clear message, exit 1, no traceback from a worker
    process, and nothing written."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for flags, msg in ((["--sprite-scale", "9"], "sprite_scale must be in [0.5, 4], got 9.0"),
                       (["--frames", "8"], "frames must be 16 <= lo <= hi")):
        out = tmp_path / "w"
        p = subprocess.run([sys.executable, "data.py", "toy", "--out", str(out), *flags], cwd=root,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and f"error: {msg}" in p.stderr, p.stderr
        assert not out.exists()
