"""Oracles for extras/toy.py, the toy anomaly world (docs/toy-world.md): determinism (bytes of
manifests and mp4 files), schema, stage-0 captions, the decord round trip, anomaly visibility in
the 16 sampled frames, honesty (no trivial global cue), the P2C-CoT texts, the world knobs and
the command line. CPU only, tiny worlds. Run: pytest tests/test_toy.py"""
import json
import os
import re

import numpy as np
import pytest

import data
import vadr
from extras import toy


# ================================================================ the toy world

# n_sft: twice the number of toy categories, so that each appears exactly once among the abnormal rows
TINY = dict(n_sft=2 * len(toy.TOY_CATEGORIES), n_test=4, n_rl=6, n_caption=4, size=(64, 80), frames=(16, 24),
            fps=8, workers=1, quiet=True)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("toy"))
    return out, toy.generate_toy_world(out, seed=0, **TINY)


def _read_all(out):
    return [open(p, encoding="utf-8").read().replace(out, "<OUT>") for p in toy.manifest_paths(out).values()]


def _decode_all(path):
    import decord
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    return vr.get_batch(list(range(len(vr)))).asnumpy()  # (T, H, W, 3) uint8


def test_toy_world_is_deterministic(tmp_path):
    kw = dict(n_sft=4, n_test=2, n_rl=2, n_caption=2, size=(64, 64), frames=(16, 20), quiet=True)
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    toy.generate_toy_world(a, seed=3, workers=1, **kw)
    toy.generate_toy_world(b, seed=3, workers=2, **kw)   # worker count must not matter
    toy.generate_toy_world(c, seed=4, workers=1, **kw)
    ma, mb, mc = _read_all(a), _read_all(b), _read_all(c)
    assert ma == mb                      # byte-identical up to the absolute out dir in `path`
    assert ma != mc
    for name in sorted(os.listdir(os.path.join(a, "videos"))):
        va, vb = os.path.join(a, "videos", name), os.path.join(b, "videos", name)
        assert open(va, "rb").read() == open(vb, "rb").read(), name   # the mp4 bytes, too
        fa, fb = _decode_all(va), _decode_all(vb)
        assert fa.shape == fb.shape and np.array_equal(fa, fb), name
    # same directory, same seed: byte-identical manifests, no path substitution needed
    toy.generate_toy_world(d, seed=3, workers=1, **kw)
    first = [open(p, "rb").read() for p in toy.manifest_paths(d).values()]
    toy.generate_toy_world(d, seed=3, workers=1, **kw)
    assert first == [open(p, "rb").read() for p in toy.manifest_paths(d).values()]


def test_toy_schema(tiny_world):
    out, paths = tiny_world
    names = set()
    for key, n in (("sft_train", TINY["n_sft"]), ("sft_test", 4), ("rl", 6)):
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
                assert r["anomaly_type"] in toy.TOY_CATEGORIES and r["anomaly_type"] in vadr.CATEGORIES
                T, s, e = r["total_frames"], r["start"], r["end"]
                assert 0 <= s < e <= T
                assert p["when"] == (round(s / T, 3), round(e / T, 3))
                assert f"<when>{toy.format_when(s, e, T)}</when>" in r["answer"]
                x1, y1, x2, y2 = r["bbox"]
                assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 64
    assert len(names) == TINY["n_sft"] + 4 + 6  # unique names across the three manifests
    train = data.read_manifest(paths["sft_train"], "sft")
    # len(TOY_CATEGORIES) abnormal training videos spread evenly: each toy category exactly once
    assert sorted(r["anomaly_type"] for r in train if r["label"] == "Abnormal") == sorted(toy.TOY_CATEGORIES)
    assert len(toy.toy_corpus(out)) == 2 * TINY["n_sft"] + 4  # think + answer per SFT row, then the captions


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
        assert not any(cat.lower() in c.lower() for cat in toy.TOY_CATEGORIES)
        # the event first (so the first token is decided by the pixels), then the scene
        m = re.match(r"[A-Z][^.]* from (\d+\.\d) s to (\d+\.\d) s\. (A street|[A-Z][a-z]+ buildings)", c)
        assert (m is not None) == (r["label"] == "Abnormal"), c
        assert c.startswith(toy._CAPTION_QUIET + " ") == (r["label"] == "Normal"), c
        if m:
            assert float(m.group(1)) < float(m.group(2)) <= 24 / 8   # at most 24 frames at 8 fps
    ds = toy.CaptionDataset(rows, num_frames=16)
    item = ds[0]
    assert item["prompt"] == toy.CAPTION_PROMPT and item["target"] == rows[0]["caption"]
    with pytest.raises(ValueError, match="CaptionDataset needs rows with caption"):
        toy.CaptionDataset([{"line": 3, "think": "", "answer": ""}])


def test_when_formatting():
    assert toy.format_when(16, 32, 64) == "[0.25, 0.5]"
    assert toy.format_when(0, 17, 72) == "[0.0, 0.236]"
    assert toy.format_when(36, 72, 72) == "[0.5, 1.0]"


def test_ensure_toy_world_reuses_and_regenerates(tiny_world, tmp_path):
    out = str(tmp_path / "w")
    kw = dict(seed=1, n_sft=2, n_test=2, n_rl=2, n_caption=2, size=(64, 64), frames=(16, 16), workers=1, quiet=True)
    p = toy.ensure_toy_world(out, **kw)
    stamp = os.stat(p["sft_train"]).st_mtime_ns
    assert toy.ensure_toy_world(out, **kw) == p and os.stat(p["sft_train"]).st_mtime_ns == stamp  # reused
    toy.ensure_toy_world(out, **dict(kw, seed=2))                                                 # regenerated
    assert _read_all(out) != []
    assert json.load(open(os.path.join(out, "toy_world.json")))["params"]["seed"] == 2


def test_decord_round_trip(tmp_path):
    frames, meta = toy.render_toy_video(11, "Fire", size=(112, 112), frames=24, fps=8)
    assert frames.shape == (24, 112, 112, 3) and frames.dtype == np.uint8
    path = str(tmp_path / "v.mp4")
    toy.write_video(path, frames, fps=8)
    got = _decode_all(path)
    assert got.shape == frames.shape
    diff = np.abs(got.astype(np.int16) - frames.astype(np.int16))
    assert diff.mean() < 6, diff.mean()
    v = vadr.read_video(path, 16)
    assert v["total_frames"] == 24 and abs(v["fps"] - 8.0) < 1e-6


def _changed(a, b):
    """(T, H, W) bool: pixels whose colour differs by more than 30 in some channel."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > 30).any(-1)


@pytest.mark.parametrize("category", toy.TOY_CATEGORIES)
def test_anomaly_visible_in_sampled_frames(category, tmp_path):
    for seed in (100, 101, 102):
        frames, meta = toy.render_toy_video(seed, category, size=(112, 112), frames=(48, 64))
        cf, cf_meta = toy.render_toy_video(seed, category, size=(112, 112), frames=(48, 64), draw_event=False)
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
            toy.write_video(pa, frames)
            toy.write_video(pb, cf)
            dch = _changed(_decode_all(pa), _decode_all(pb))
            assert all(dch[i][box].sum() >= 15 for i in inside)


def test_normal_video_has_no_event():
    a, ma = toy.render_toy_video(5, None, size=(64, 64), frames=20)
    b, _ = toy.render_toy_video(5, None, size=(64, 64), frames=20, draw_event=False)
    assert np.array_equal(a, b)
    assert (ma["label"], ma["category"], ma["start"], ma["end"], ma["bbox"]) == ("Normal", "Normal", None, None, None)


def test_no_trivial_global_cue():
    """Length and mean colour do not give the label away (best threshold accuracy stays low)."""
    stats, labels, cats = [], [], set()
    for i in range(48):
        cat = None if i % 2 == 0 else toy.TOY_CATEGORIES[(i // 2) % len(toy.TOY_CATEGORIES)]
        frames, meta = toy.render_toy_video(1000 + i, cat, size=(64, 64), frames=(16, 32))
        stats.append([meta["total_frames"], *frames.reshape(-1, 3).mean(0)])
        labels.append(cat is not None)
        cats.add(cat)
    assert cats == {None, *toy.TOY_CATEGORIES}  # every category takes part
    stats, labels = np.array(stats), np.array(labels)
    for k in range(stats.shape[1]):
        best = max(max(((stats[:, k] > t) == labels).mean(), ((stats[:, k] <= t) == labels).mean())
                   for t in np.unique(stats[:, k]))
        assert best < 0.8, (k, best)


def test_toy_texts_pass_format_and_vary():
    texts = set()
    for i, cat in enumerate([None, *toy.TOY_CATEGORIES] * 4):
        _, meta = toy.render_toy_video(200 + i, cat, size=(64, 64), frames=16)
        think, answer = toy.toy_texts(meta, np.random.default_rng([200 + i, 7]))
        assert vadr.check_format(think + "\n" + answer) == ("normal" if cat is None else "abnormal")
        n = len(vadr.strip_tags(think + " " + answer).split())
        assert (40 <= n <= 100) if cat is None else (80 <= n <= 160), n
        texts.add(re.sub(r"\d", "", think))
    assert len(texts) >= 28  # varied templates and facts, not one text per category


def test_text_variants_one_makes_the_text_a_function_of_the_facts():
    """text_variants=1 (the default world's setting): every slot takes its first option, so the
    text no longer depends on the random draw, the answer is the labelled "Category: <which>..."
    layout, and the text equals the first-option text written out here by hand. Out-of-range
    values fail."""
    _, meta = toy.render_toy_video(5, "Fire", size=(112, 112), frames=32, sprite_scale=2.5)
    v = toy._fact_words(meta)
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
        assert toy.toy_texts(meta, np.random.default_rng(seed), text_variants=1) == (want_think, want_answer)
    _, meta_n = toy.render_toy_video(6, None, size=(112, 112), frames=32)
    t, a = toy.toy_texts(meta_n, np.random.default_rng(0), text_variants=1)
    assert a == ("<answer>Category: <which>Normal</which>. Event: <what>ordinary street activity</what>. "
                 "Reason: <why>people walk calmly and the traffic flows one way</why>.</answer>")
    assert t.startswith("<think><step1>A street seen from the side: ") and vadr.check_format(t + "\n" + a) == "normal"
    # every category's first-option text passes the format; with every option the texts vary more
    one, every = set(), set()
    for i, cat in enumerate([None, *toy.TOY_CATEGORIES] * 3):
        _, m = toy.render_toy_video(300 + i, cat, size=(64, 64), frames=16)
        t1, a1 = toy.toy_texts(m, np.random.default_rng([300 + i, 7]), text_variants=1)
        assert vadr.check_format(t1 + "\n" + a1) == ("normal" if cat is None else "abnormal")
        ta, aa = toy.toy_texts(m, np.random.default_rng([300 + i, 7]))
        # the judging sentence (step3 if abnormal, else step2) starts with fixed words
        key = lambda t: t.split("</step2>" if cat else "</step1>")[1][:32]
        one.add(key(t1))
        every.add(key(ta))
    assert len(one) == 1 + len(toy.TOY_CATEGORIES) < len(every)
    assert toy.TEXT_VARIANTS == 4
    for bad in (0, toy.TEXT_VARIANTS + 1, 1.5):
        with pytest.raises(ValueError, match="text_variants"):
            toy.toy_texts(meta, np.random.default_rng(0), text_variants=bad)


def test_world_knobs_categories_and_sprite_scale(tmp_path):
    """--categories restricts the abnormal videos to those categories (still half of each split) and is
    recorded in toy_world.json; --sprite-scale draws the same video with sprites that many times larger."""
    out = str(tmp_path / "w")
    kw = dict(seed=2, n_sft=6, n_test=2, n_rl=4, n_caption=4, size=(64, 64), frames=(16, 16), workers=1, quiet=True)
    toy.generate_toy_world(out, categories=("Fire",), sprite_scale=2.0, **kw)
    rows = data.read_manifest(toy.manifest_paths(out)["sft_train"], "sft")
    assert sorted(r["anomaly_type"] for r in rows) == ["Fire"] * 3 + ["Normal"] * 3
    params = json.load(open(os.path.join(out, "toy_world.json")))["params"]
    assert (params["categories"], params["sprite_scale"]) == (["Fire"], 2.0)
    with pytest.raises(ValueError, match="toy categories"):
        toy.generate_toy_world(str(tmp_path / "bad"), categories=("Fire", "Robbery"), **kw)
    # the default world is unchanged by the knobs' defaults: same rows as without them
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    toy.generate_toy_world(a, **kw)
    toy.generate_toy_world(b, categories=toy.TOY_CATEGORIES, sprite_scale=1.0,
                            text_variants=toy.TEXT_VARIANTS, **kw)
    assert _read_all(a) == [t.replace(b, a) for t in _read_all(b)]
    # text_variants=1: the same videos and captions, every answer in the first layout, recorded
    c = str(tmp_path / "c")
    toy.generate_toy_world(c, text_variants=1, **kw)
    pa, pc = toy.manifest_paths(a), toy.manifest_paths(c)
    ra, rc = (data.read_manifest(p["sft_train"], "sft") for p in (pa, pc))
    assert [r["video"] for r in ra] == [r["video"] for r in rc] and ra != rc
    assert all(r["answer"].startswith("<answer>Category: <which>") for r in rc)
    assert open(pa["caption"]).read().replace(a, c) == open(pc["caption"]).read()
    assert json.load(open(os.path.join(c, "toy_world.json")))["params"]["text_variants"] == 1
    # sprite sizes scale: the fire's bbox (radius ~ sprite unit) grows about 2x at scale 2
    _, m1 = toy.render_toy_video(7, "Fire", size=(112, 112), frames=32)
    _, m2 = toy.render_toy_video(7, "Fire", size=(112, 112), frames=32, sprite_scale=2.0)
    w1, w2 = m1["bbox"][2] - m1["bbox"][0], m2["bbox"][2] - m2["bbox"][0]
    assert 1.6 < w2 / w1 < 2.4, (w1, w2)
    with pytest.raises(ValueError, match="sprite_scale"):
        toy.render_toy_video(7, "Fire", size=(112, 112), frames=32, sprite_scale=10)


def test_column_tint_is_the_same_ramp_in_every_video_after_the_mirror():
    """--column-tint A adds exactly round(A * (1 - 2x/(W-1))) red and takes as much blue at column x
    of every frame, whichever way the video was mirrored; nothing else about the video changes."""
    A, W = 40, 80
    ramp = np.round(np.linspace(A, -A, W)).astype(int)                        # (W,) red - blue
    mirrors = set()
    for seed, cat in [(0, "Fire"), (1, None), (2, "Fire"), (3, None), (5, "Explosion")]:
        f0, m0 = toy.render_toy_video(seed, cat, size=(64, W), frames=16)
        f1, m1 = toy.render_toy_video(seed, cat, size=(64, W), frames=16, column_tint=A)
        assert m1["bbox"] == m0["bbox"] and m1["facts"] == m0["facts"] and f1.shape == f0.shape
        mirrors.add(m0["mirrored"])
        want = np.clip(f0.astype(int) + ramp[:, None] * np.array([1, 0, -1]), 0, 255)  # (T, H, W, 3)
        assert np.array_equal(f1, want.astype(np.uint8))
        assert np.array_equal(m1["background"], np.clip(m0["background"].astype(int)
                                                        + ramp[:, None] * np.array([1, 0, -1]), 0, 255))
    assert mirrors == {True, False}  # mirrored and unmirrored videos were both checked
    with pytest.raises(ValueError, match="column_tint"):
        toy.render_toy_video(0, "Fire", size=(64, W), frames=16, column_tint=101)
    with pytest.raises(ValueError, match="column_tint"):
        toy.generate_toy_world("/nonexistent/never", column_tint=-1, n_sft=2, n_test=2, n_rl=2, n_caption=2,
                                workers=1, quiet=True)


def test_default_world_has_the_papers_proportions():
    """Sec. 3.2: 1,755 CoT-annotated SFT videos, 6,448 weakly labelled RL videos (3.67x). The default
    world keeps that ratio (90 : 330), so SFT leaves headroom and RL sees more videos, labels only."""
    d = toy.TOY_DEFAULTS
    assert (d["n_sft"], d["n_rl"], d["n_test"]) == (90, 330, 60)
    assert abs(d["n_rl"] / d["n_sft"] - 6448 / 1755) < 0.01


def test_bad_world_flags_fail_before_rendering(tmp_path):
    """python -m extras.toy with an out-of-range flag: one clear message, exit 1, no traceback from a worker
    process, and nothing written."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for flags, msg in ((["--sprite-scale", "9"], "sprite_scale must be in [0.5, 4], got 9.0"),
                       (["--frames", "8"], "python -m extras.toy: --frames 8: 16 <= LO <= HI <= 2048")):
        out = tmp_path / "w"
        p = subprocess.run([sys.executable, "-m", "extras.toy", "--out", str(out), *flags], cwd=root,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and f"error: {msg}" in p.stderr, p.stderr
        assert not out.exists()


def test_caption_check_scores_the_opening_sentence():
    """Stage 0's caption check on hand-made captions: an event caption counts as 'event seen'
    whatever follows; only the quiet opening counts as 'nothing seen'."""
    quiet = toy._CAPTION_QUIET + " A street under a grey sky."
    assert not toy.caption_says_event(quiet) and not toy.caption_says_event("  " + quiet)
    assert toy.caption_says_event("Flames and grey smoke rise on the left from 1.0 s to 2.0 s.")
    assert toy.caption_says_event("") and toy.caption_says_event("People walk")  # not the sentence
    rows = [dict(label="Abnormal", anomaly_type="Fire"), dict(label="Abnormal", anomaly_type="Fire"),
            dict(label="Abnormal", anomaly_type="Explosion"), dict(label="Normal", anomaly_type="Normal"),
            dict(label="Normal", anomaly_type="Normal")]
    caps = ["Flames rise.", quiet, "A bright burst.", quiet, "Flames rise."]
    r = toy.score_captions(rows, caps)
    # right: yes, no, yes | yes, no -> 3 of 5; events 2 of 3; quiet 1 of 2; Fire 1/2, Explosion 1/1
    assert r == dict(n=5, accuracy=0.6, tpr=2 / 3, tnr=0.5,
                     per_category={"Explosion": 1.0, "Fire": 0.5, "Normal": 0.5})
    with pytest.raises(ValueError):  # one caption per row, or it is an error
        toy.score_captions(rows, caps[:4])


def test_caption_check_bad_flags_one_line(tmp_path):
    """caption-check with a missing model or manifest or too few frames: exit 1, one line naming
    the flag, no traceback, no JSON written."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "cc.json"
    for flags, msg in ((["--model", str(tmp_path / "nope")], "--model"),
                       (["--model", str(tmp_path), "--data", str(tmp_path / "none.jsonl")], "--data"),
                       (["--model", str(tmp_path), "--frames", "1"], "--frames must be >= 2")):
        p = subprocess.run([sys.executable, "-m", "extras.toy", "caption-check", *flags, "--json", str(out)],
                           cwd=root, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and msg in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()
