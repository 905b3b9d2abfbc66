"""Bad videos and bad manifests (issue 16, classes Videos and Manifests): every decoder failure is a
vadr.VideoError naming the file; the probe (extras/validate.py --probe) reports each kind with its
manifest line; --skip-bad skips and counts bad videos at decode time in train_sft.py, train_rl.py's
second pass and eval.py; manifests are bounded per row, read as UTF-8 with file:line, and name each
video once. Run: pytest tests/test_bad_input_data.py -q"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script

import data
import eval as ev
import vadr
from extras import badvideos, checkpoint, toy, validate


def _rows(path):
    return [json.loads(x) for x in open(path, encoding="utf-8")]


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def bad_videos(tiny_world, tmp_path_factory):
    """One file per kind of bad video, each with the frame count of the SFT-test row it stands in
    for (so only its own fault shows), keyed by name: (path, the row it replaces)."""
    d = tmp_path_factory.mktemp("bad_videos")
    test = _rows(tiny_world["sft_test"])
    src = open(test[0]["path"], "rb").read()
    out = {}
    (d / "trunc.mp4").write_bytes(src[:len(src) // 2])               # a copy cut in half
    (d / "text.mp4").write_text("this is a text file, not a video\n")
    n = test[2]["total_frames"]
    toy.write_video(str(d / "tiny8.mp4"), np.full((n, 8, 8, 3), 120, np.uint8))      # 8x8
    toy.write_video(str(d / "wide.mp4"), np.full((n, 2, 1000, 3), 120, np.uint8))    # aspect 500
    short = test[1]["total_frames"] // 3                                             # a third
    toy.write_video(str(d / "short.mp4"), np.full((short, 64, 64, 3), 120, np.uint8))
    near = test[3]["total_frames"] - 3                                               # within slack
    toy.write_video(str(d / "near.mp4"), np.full((near, 64, 64, 3), 120, np.uint8))
    for name, i in (("trunc", 0), ("text", 0), ("tiny8", 2), ("wide", 2), ("short", 1), ("near", 3)):
        out[name] = (str(d / f"{name}.mp4"), dict(test[i], video=f"bad_{name}", path=str(d / f"{name}.mp4")))
    return out


# ================================================================ videos: one error type, naming the file

def test_every_decoder_failure_is_a_video_error_naming_the_file(bad_videos, tmp_path):
    want = {"trunc": "RuntimeError: Error reading", "text": "RuntimeError: Error reading",
            "tiny8": "DECORDError: ", "wide": "aspect ratio of 2x1000 exceeds 200"}
    for name, frag in want.items():
        path = bad_videos[name][0]
        with pytest.raises(vadr.VideoError) as ei:
            vadr.encode_video(path, num_frames=4)
        e = ei.value
        assert isinstance(e, vadr.InputError) and e.path == path and e.reason == "unreadable-video"
        assert str(e).startswith(f"cannot read video {path}: {frag}") and "\n" not in str(e)
    with pytest.raises(vadr.VideoError, match="text.mp4: RuntimeError"):
        vadr.count_frames(bad_videos["text"][0])
    with pytest.raises(vadr.VideoError, match="gone.mp4: file not found"):
        vadr.count_frames(str(tmp_path / "gone.mp4"))


def test_frame_count_tolerance_is_max_3_frames_or_1_percent(bad_videos):
    path, row = bad_videos["short"]
    n = row["total_frames"] // 3
    assert vadr.read_video(path, 2, expect_frames=n + 3)["total_frames"] == n      # 3 frames: fine
    with pytest.raises(vadr.VideoError) as ei:
        vadr.read_video(path, 2, expect_frames=n + 4)
    assert ei.value.reason == "frame-count-mismatch"
    assert f"decodes {n} frames but its row says total_frames={n + 4}" in str(ei.value)
    vadr.read_video(path, 2, expect_frames=n - 3)                                  # fewer or more
    with pytest.raises(vadr.VideoError):
        vadr.read_video(path, 2, expect_frames=n - 4)
    assert vadr.FRAME_SLACK == (3, 0.01)  # 1% of the length once that is more than 3 frames


def test_probe_reports_each_bad_video_with_its_line(tiny_world, bad_videos, tmp_path, capsys):
    good = _rows(tiny_world["sft_test"])
    names = ["trunc", "text", "tiny8", "wide", "short", "near"]
    path = _write(tmp_path / "m.jsonl", good + [bad_videos[n][1] for n in names])  # lines 5..10
    _, problems = data.check_manifest(path, "sft", probe_videos=True)
    assert [(ln, r) for ln, r, _ in problems] == [
        (5, "unreadable-video"), (6, "unreadable-video"), (7, "unreadable-video"), (8, "unreadable-video"),
        (9, "frame-count-mismatch")]                                 # 10 (3 frames short) is accepted
    detail = {ln: d for ln, _, d in problems}
    assert detail[6].startswith(f"{bad_videos['text'][0]}: RuntimeError: Error reading")
    assert detail[8] == f"{bad_videos['wide'][0]}: aspect ratio of 2x1000 exceeds 200"
    n = good[1]["total_frames"]
    assert detail[9].startswith(f"{bad_videos['short'][0]}: decodes {n // 3} frames but its row says "
                                f"total_frames={n} (off by more than max(3, 1%)")
    # without --probe only the cheap checks run (the files exist and are not empty): all pass
    assert data.check_manifest(path, "sft")[1] == []
    # the command line: every problem with file:line, the count by reason, exit 1
    with pytest.raises(SystemExit) as ei:
        validate.main(["--manifest", path, "--kind", "sft", "--probe"])
    err = capsys.readouterr().err
    assert ei.value.code == 1 and "Traceback" not in err
    assert f"{path}:9: frame-count-mismatch: " in err and f"{path}:7: unreadable-video: " in err
    assert "bad rows by reason: frame-count-mismatch=1, unreadable-video=4" in err
    rows = data.read_manifest(path, "sft", skip_bad=True, probe_videos=True)
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 10]
    assert "skipped 5 bad row(s): frame-count-mismatch=1, unreadable-video=4" in capsys.readouterr().err


# ================================================================ decode time: markers, replacement, counts

def test_dataset_marks_or_replaces_a_bad_video_and_tally_counts_it(tiny_world, bad_videos, tiny_model, tmp_path,
                                                                   capsys):
    _, tok = tiny_model
    good = data.read_manifest(tiny_world["sft_test"], "sft")
    bad = dict(bad_videos["text"][1], line=3, video_path=bad_videos["text"][0])
    rows = good[:2] + [bad] + good[2:]
    ds = data.SFTDataset(rows, num_frames=4)
    collate = badvideos.make_collate(data.make_collate(tok, with_targets=True))
    # eval's mode: a marker that collate sets aside; the good items still form a batch
    marked = badvideos.SkipBadVideos(ds, replace=False)
    assert marked[2]["failed"] and marked[2]["row"] is bad and marked[1]["bad_videos"] == []
    batch = collate([marked[1], marked[2], marked[3]])
    assert [r["line"] for r in batch["rows"]] == [good[1]["line"], good[2]["line"]]
    assert batch["failed_rows"] == [bad] and batch["video_grid_thw"].shape[0] == 2
    with pytest.raises(vadr.InputError) as ei:  # without --skip-bad: the file, the manifest line, the flag
        badvideos.Tally("m.jsonl", skip_bad=False).note(dict(batch), replace=False)
    assert str(ei.value) == f"m.jsonl:3: cannot read video {bad['video_path']}: RuntimeError: Error reading " \
                            f"{bad['video_path']}... (pass --skip-bad to skip and count bad videos)"
    tally = badvideos.Tally("m.jsonl", skip_bad=True)
    assert tally.note(dict(batch), replace=False)["failed_rows"] == [bad]
    assert "--skip-bad: skipped m.jsonl:3: cannot read video" in capsys.readouterr().err
    # training's mode: the next row stands in, so the batch stays full (DDP ranks stay in step)
    replaced = badvideos.SkipBadVideos(ds, replace=True)
    it = replaced[2]
    assert it["row"] is rows[3] and [r for r, _ in it["bad_videos"]] == [bad]
    tb = collate([replaced[0], it])
    assert tb["video_grid_thw"].shape[0] == 2 and tb["failed_rows"] == []
    tally.note(tb)
    assert tally.uses == 2 and list(tally.seen) == [3] and tally.report() == 1
    assert "--skip-bad: 1 bad video(s) at decode time in m.jsonl (2 use(s), replaced by the next readable " \
           "row); manifest lines 3" in capsys.readouterr().err
    # a worker process hands the marker over too (no exception wrapped in DataLoader's traceback)
    dl = torch.utils.data.DataLoader(marked, batch_size=5, num_workers=1, collate_fn=collate)
    assert next(iter(dl))["failed_rows"][0]["line"] == 3
    # at decode time the row's total_frames is checked too (SFT rows; the probe's rule)
    short = dict(bad_videos["short"][1], line=9, video_path=bad_videos["short"][0])
    (got,) = badvideos.SkipBadVideos(data.SFTDataset([short], num_frames=4), replace=False)[0]["bad_videos"]
    n = short["total_frames"]
    assert got == (short, f"cannot read video {short['video_path']}: decodes {n // 3} frames but its row says "
                          f"total_frames={n} (off by more than max(3, 1%))")
    # no video decodes at all: an error even with --skip-bad
    only_bad = badvideos.SkipBadVideos(data.SFTDataset([bad], num_frames=4), replace=True)
    with pytest.raises(vadr.InputError, match="m.jsonl: no row has a video that decodes"):
        badvideos.Tally("m.jsonl", skip_bad=True).note(collate([only_bad[0]]))


def test_rl_second_pass_skips_a_video_that_fails_there(bad_videos, tmp_path, capsys):
    """grpo.verification_inputs with train_rl.py's hooks (extras/rollout.step_hooks)."""
    import random
    import grpo
    from extras import rollout
    row = dict(bad_videos["text"][1], line=7, video_path=bad_videos["text"][0], solution="Abnormal")
    args = SimpleNamespace(data="rl.jsonl", skip_bad=True, frames=4, min_pixels=3136, max_pixels=100352,
                           frame_rule="paper", grid_time="one", no_rollout_gather=False,
                           spatial_verification=False, dynamic_sampling=False)
    texts = ["<answer><which>Fighting</which><when>[0.2, 0.5]</when></answer>"] * 2
    second = lambda: grpo.verification_inputs(None, [row], texts, 2, random.Random(0), vadr.video_args(args), "p",
                                              "cpu", rollout.step_hooks(args, None, "none", None).bad_video)
    got = second()
    assert got == (None, [])                    # both completions: no second pass, each one said
    assert capsys.readouterr().err.count("--skip-bad: skipped rl.jsonl:7: cannot read video") == 2
    args.skip_bad = False
    with pytest.raises(vadr.InputError, match=r"rl\.jsonl:7: cannot read video .*text\.mp4.*--skip-bad"):
        second()
    with pytest.raises(vadr.VideoError, match=r"cannot read video .*text\.mp4"):  # no hook: the error stands
        grpo.verification_inputs(None, [row], texts, 2, random.Random(0), vadr.video_args(args), "p", "cpu")


def test_train_sft_skip_bad_finishes_and_counts(tiny_world, bad_videos, tmp_path):
    m = _write(tmp_path / "sft.jsonl", _rows(tiny_world["sft_train"]) + [bad_videos["trunc"][1]])  # bad: line 9
    # 9 rows, batch 3: one epoch of 3 steps uses every row, the bad one included
    args = ["--data", m, "--frames", "4", "--batch-size", "3", "--grad-accum", "1", "--max-steps", "3"]
    import train_sft  # in-process (a subprocess costs seconds): run_main turns this into one line
    with pytest.raises(vadr.InputError) as ei:
        train_sft.main(args + ["--out", str(tmp_path / "a"), "--device", "cpu", "--num-workers", "0"])
    assert str(ei.value) == (f"{m}:9: cannot read video {bad_videos['trunc'][0]}: RuntimeError: Error reading "
                             f"{bad_videos['trunc'][0]}... (pass --skip-bad to skip and count bad videos)")
    p = run_script("train_sft.py", args + ["--skip-bad"], tmp_path / "b")
    assert f"--skip-bad: skipped {m}:9: cannot read video {bad_videos['trunc'][0]}" in p.stderr
    assert f"--skip-bad: 1 bad video(s) at decode time in {m} (1 use(s), replaced by the next readable row); " \
           f"manifest lines 9" in p.stderr
    log = [json.loads(x) for x in open(tmp_path / "b" / "log.jsonl")]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_eval_skip_bad_writes_an_error_row_scored_as_missing(tiny_world, tiny_model, bad_videos, tmp_path, capsys):
    model, tok = tiny_model
    checkpoint.save_checkpoint(str(tmp_path), "ckpt", model, tok)
    good = _rows(tiny_world["sft_test"])
    m = _write(tmp_path / "test.jsonl", good[:2] + [bad_videos["text"][1]] + good[2:])  # bad: line 3
    out, js = tmp_path / "preds.jsonl", tmp_path / "m.json"
    argv = ["--model", str(tmp_path / "ckpt"), "--data", m, "--out", str(out), "--json", str(js), "--frames", "4",
            "--max-new-tokens", "4", "--batch-size", "2", "--num-workers", "0", "--device", "cpu"]
    with pytest.raises(vadr.InputError) as ei:
        ev.main(argv)
    assert str(ei.value).startswith(f"{m}:3: cannot read video {bad_videos['text'][0]}: ")
    assert str(ei.value).endswith("(pass --skip-bad to skip and count bad videos)")
    assert len(_rows(out)) == 2                        # the first batch was written; the rerun resumes
    capsys.readouterr()
    assert ev.main(argv + ["--skip-bad"]) == 0
    rows = _rows(out)
    assert [r["video"] for r in rows] == [g["video"] for g in good[:2]] + ["bad_text"] + [g["video"] for g in good[2:]]
    err = rows[2]
    assert err["output"] == "" and err["error"].startswith(f"cannot read video {bad_videos['text'][0]}: ")
    printed = capsys.readouterr()
    assert f"--skip-bad: 1 bad video(s) at decode time in {m} (1 use(s), written as prediction rows with an " \
           f"'error' field); manifest lines 3" in printed.err
    assert "NOTE: 1 prediction row(s) carry an 'error'" in printed.out
    c = json.load(open(js))["counts"]
    assert c["n_video_error"] == 1 and c["n_gt"] == 5 and c["n_matched"] == 4 and c["n_missing"] == 1
    # a rerun does not retry it (the row is done) and scoring counts it the same way
    assert ev.main(argv + ["--skip-bad"]) == 0 and len(_rows(out)) == 5
    assert json.load(open(js))["counts"]["n_video_error"] == 1


# ================================================================ manifests

def test_row_size_is_bounded_with_file_line(tiny_world, tmp_path):
    row = _rows(tiny_world["sft_test"])[0]
    line = json.dumps(row)
    fill = lambda n: json.dumps(dict(row, video="pad", pad="x" * (n - len(json.dumps(dict(row, video="pad", pad=""))))))
    at, over = fill(data.MAX_ROW_CHARS), fill(data.MAX_ROW_CHARS + 1)
    assert (len(at), len(over)) == (data.MAX_ROW_CHARS, data.MAX_ROW_CHARS + 1)
    huge = '{"a": "' + "y" * 10_000_000 + '"}'           # 10 MB on one line: read in pieces, never whole
    path = _write(tmp_path / "m.jsonl", [line, over, at, huge, "é" * 20_000])
    _, problems = data.check_manifest(path, "sft", check_videos=False)
    assert problems == [(2, "row-too-long", f"more than {data.MAX_ROW_CHARS} characters (MAX_ROW_CHARS)"),
                        (4, "row-too-long", f"more than {data.MAX_ROW_CHARS} characters (MAX_ROW_CHARS)"),
                        (5, "bad-json", "not valid JSON (Expecting value, column 1)")]  # 40 KB, 20k chars
    rows = data.read_manifest(path, "sft", skip_bad=True, check_videos=False)
    assert [r["line"] for r in rows] == [1, 3]
    # the released data's longest row (3,336 characters) is far below the bound
    assert data.MAX_ROW_CHARS >= 16 * 3336


def test_unreadable_manifests_are_one_line_errors(tmp_path, tiny_world):
    row = json.dumps(_rows(tiny_world["sft_test"])[0])
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes((row + "\n\n").encode() + '{"think": "café"}\n'.encode("latin-1"))
    with pytest.raises(vadr.InputError) as ei:
        data.check_manifest(str(latin), "sft", check_videos=False)
    assert str(ei.value) == (f"{latin}:3: not UTF-8 text (byte 0xe9 at byte 15 of the line); re-encode the "
                             "manifest as UTF-8 (e.g. iconv -t UTF-8)")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + row.encode() + b"\n")    # a UTF-8 byte-order mark is accepted
    assert [r["line"] for r in data.read_manifest(str(bom), "sft", check_videos=False)] == [1]
    for where, why in ((tmp_path / "none.jsonl", "not found"), (tmp_path, "is a directory"),
                       ("/dev/zero", "not a regular file")):   # /dev/zero: endless, never read
        with pytest.raises(vadr.InputError) as e:
            data.read_manifest(str(where))
        assert str(e.value) == f"cannot read manifest {where}: {why}"
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 30_000 + "]" * 30_000 + "\n" + '{"n": ' + "9" * 5000 + "}\n")
    assert [(ln, r) for ln, r, _ in data.check_manifest(str(deep), "sft")[1]] == [(1, "bad-json"), (2, "bad-json")]
    # through a script: the message alone, exit 1
    p = subprocess.run([sys.executable, "-m", "extras.validate", "--manifest", str(latin), "--kind", "sft"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr == f"error: {ei.value}\n"


def test_duplicate_videos_are_reported_with_both_lines(tiny_world, tmp_path, capsys):
    rows = _rows(tiny_world["sft_test"])
    path = _write(tmp_path / "m.jsonl", rows[:3] + [rows[1]] + rows[3:] + [dict(rows[0], source=f" {rows[0]['source']} ")])
    src, vid = rows[1]["source"], rows[1]["video"]
    _, problems = data.check_manifest(path, "sft")
    assert [(ln, r) for ln, r, _ in problems] == [(4, "duplicate-video"), (6, "duplicate-video")]
    assert problems[0][2] == (f"source {src!r} video {vid!r} is also at line 2; each video once per manifest "
                              "(--skip-bad keeps the first)")
    assert "is also at line 1;" in problems[1][2]
    assert [r["line"] for r in data.read_manifest(path, "sft", skip_bad=True)] == [1, 2, 3, 5]
    assert "skipped 2 bad row(s): duplicate-video=2" in capsys.readouterr().err
    # eval's ground truth: the same rule, with the same lines, never a crash
    preds = _write(tmp_path / "p.jsonl", [dict(source=r["source"], video=r["video"], output="") for r in rows])
    with pytest.raises(data.ManifestError) as ei:
        ev.main(["--score", preds, "--gt", path])
    assert str(ei.value) == "\n".join([f"{path}: 2 problem(s) in 2 row(s):"] +
                                      [f"{path}:{ln}: {r}: {d}" for ln, r, d in problems])
    assert ev.main(["--score", preds, "--gt", path, "--skip-bad", "--json", str(tmp_path / "m.json")]) == 0
    assert json.load(open(tmp_path / "m.json"))["counts"]["n_gt"] == 4
    assert f"{path}: skipped 2 bad row(s): duplicate-video=2" in capsys.readouterr().err


def test_one_video_file_under_two_ids_with_other_labels_is_refused(tiny_world, tmp_path):
    rows = _rows(tiny_world["sft_test"])
    ab = next(r for r in rows if r["anomaly_type"] != "Normal")
    no = next(r for r in rows if r["anomaly_type"] == "Normal")
    path = _write(tmp_path / "m.jsonl", [ab, dict(no, video="alias", path=ab["path"])])
    with pytest.raises(data.ManifestError) as ei:
        data.read_manifest(path, "sft")
    assert str(ei.value) == (f"{path}:2: conflicting-video: {ab['path']} is also the video of {path}:1 (source "
                             f"{ab['source']!r} video {ab['video']!r}, {ab['anomaly_type']}), here Normal; one file "
                             "cannot be both: fix the row's path or --video-root")
    # the same file under another id with the same label is no contradiction
    path = _write(tmp_path / "m2.jsonl", [ab, dict(ab, video="alias")])
    assert [r["video_path"] for r in data.read_manifest(path, "sft")] == [ab["path"]] * 2


def test_a_rows_existing_path_wins_over_the_video_root(tiny_world, tmp_path):
    rows = _rows(tiny_world["sft_test"])
    r0, r1 = rows[0], rows[1]
    root = tmp_path / "other_world"                # holds another file under r0's own name
    (root / r0["source"]).mkdir(parents=True)
    (root / r0["source"] / f"{r0['video']}.mp4").write_bytes(open(r1["path"], "rb").read())
    path = _write(tmp_path / "m.jsonl", [r0, dict(r1, path="/gone/on/this/machine/x.mp4")])
    got = data.read_manifest(path, "sft", video_root=str(root), skip_bad=True)
    assert [r["video_path"] for r in got] == [r0["path"]]           # the row's own file, not the root's
    # a path that does not exist here is what the root resolves (the authors' machine's paths)
    moved = _write(tmp_path / "m3.jsonl", [dict(r0, path=f"/gone/{r0['source']}/{r0['video']}.mp4")])
    assert data.read_manifest(moved, "sft", video_root=str(root))[0]["video_path"] == \
        str(root / r0["source"] / f"{r0['video']}.mp4")


def test_eval_resume_refuses_rows_of_another_model_or_settings(tiny_world, tiny_model, tmp_path, capsys):
    model, tok = tiny_model
    for name in ("sft", "rl"):
        checkpoint.save_checkpoint(str(tmp_path), name, model, tok)
    out, meta = tmp_path / "p.jsonl", tmp_path / "p.jsonl.meta.json"

    def argv(model_dir, *extra):
        return ["--model", str(tmp_path / model_dir), "--data", tiny_world["sft_test"], "--out", str(out),
                "--frames", "4", "--max-new-tokens", "4", "--batch-size", "2", "--num-workers", "0",
                "--device", "cpu", "--limit", "2", *extra]
    assert ev.main(argv("sft")) == 0
    before, rec = out.read_bytes(), json.load(open(meta))
    real = os.path.realpath(tmp_path)
    assert rec["model"]["path"] == f"{real}/sft" and rec["settings"]["max_new_tokens"] == 4
    assert rec["data"]["path"] == os.path.realpath(tiny_world["sft_test"])
    capsys.readouterr()
    assert ev.main(["--score", str(out), "--gt", tiny_world["sft_test"], "--allow-missing"]) == 0
    assert f"NOTE: {out} was written by --model {real}/sft ({meta})\n" in capsys.readouterr().out
    tail = f"resuming would mix two runs: delete {out} and {meta}, or pass another --out"
    for extra, what in [(("rl",), f'model.path was "{real}/sft", now "{real}/rl"'),
                        (("sft", "--max-new-tokens", "6"), "settings.max_new_tokens was 4, now 6"),
                        (("sft", "--sample"), "settings.sample was false, now true"),
                        (("sft", "--frames", "8"), "settings.frames was 4, now 8"),
                        (("sft", "--video-root", tiny_world["videos"]),
                         f'video_root was null, now "{os.path.realpath(tiny_world["videos"])}"')]:
        with pytest.raises(vadr.InputError) as ei:
            ev.main(argv(*extra))
        assert str(ei.value) == f"{out}: its 2 rows were written by another run ({what}); {tail}", extra
    # a checkpoint rewritten in place (a retrained run) is another model too
    os.utime(tmp_path / "sft" / "config.json", ns=(1, 1))
    with pytest.raises(vadr.InputError, match=r"\(model\.files\.config\.json was \[\d+, \d+\], now \[\d+, 1\]\)"):
        ev.main(argv("sft"))
    # rows without the record cannot be vouched for; a record that is not ours is not replaced
    meta.unlink()
    with pytest.raises(vadr.InputError) as ei:
        ev.main(argv("sft"))
    assert str(ei.value) == (f"{out}: holds 2 prediction rows but no {meta} saying which model and settings "
                             f"wrote them, so they cannot be resumed: delete {out} or pass another --out")
    meta.write_text("my notes")
    with pytest.raises(vadr.InputError) as ei:
        ev.main(argv("sft"))
    assert str(ei.value) == (f"{meta}: not readable (JSONDecodeError: Expecting value: line 1 column 1 (char 0)), "
                             f"so {out} cannot be resumed; it was left untouched: delete {meta} or pass another --out")
    assert out.read_bytes() == before and meta.read_text() == "my notes"
    # a new --out beside an old record of ours (stopped before its first row): the record is replaced
    meta.write_text(json.dumps(rec))
    out.unlink()
    assert ev.main(argv("rl", "--limit", "1")) == 0
    assert json.load(open(meta))["model"]["path"] == f"{real}/rl" and len(_rows(out)) == 1
    # a model that does not load leaves no record behind
    (tmp_path / "empty").mkdir()
    with pytest.raises(vadr.InputError, match=r"no checkpoint there \(no `latest` file, no step-N directory\)"):
        ev.main(argv("empty") + ["--out", str(tmp_path / "q.jsonl")])
    assert not os.path.exists(tmp_path / "q.jsonl.meta.json")
