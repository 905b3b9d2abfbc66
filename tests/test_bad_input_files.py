"""Bad input, second round (issue 36), classes "User files replaced", "Toy-world flags out of
range", "Box files", "Corrupt JSON or a folder where a file is expected" and "A message that names
a video but not the manifest line": extras/toy.py's command line and output folder, the Makefile's
paths, extras/vanguard.py's box files and outputs, extras/rewardcheck.py's run config. Every case
is one exact line (vadr.InputError) before anything is written; a few subprocesses prove the
wiring (exit code, one line on stderr, no traceback). Run: pytest tests/test_bad_input_files.py"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import data
import train_sft
import vadr
from extras import badvideos, rewardcheck, scoring, toy, vanguard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-sft", "2", "--n-test", "2", "--n-rl", "2", "--n-caption", "2", "--frames", "16", "--size", "48",
        "64", "--workers", "1"]
OWN = ("videos/toy_NNNNN.mp4, Vad-Reasoning-SFT-train.jsonl, Vad-Reasoning-SFT-test.jsonl, "
       "Vad-Reasoning-RL.jsonl, Toy-Caption.jsonl, toy_world.json")


def _digest(folder):
    """Every file under folder and its bytes' hash: what 'nothing was touched' compares."""
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _refused(fn, argv, msg):
    with pytest.raises(vadr.InputError) as e:
        fn(argv)
    assert str(e.value) == msg


def _cli(args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


# ================================================================ user files replaced

class TestToyOutputFolder:
    """python -m extras.toy --out DIR writes only into a new or empty folder or a toy world's own
    (its toy_world.json stamp); --overwrite writes among other files but replaces only its names."""

    def test_a_users_manifests_are_never_replaced(self, tmp_path):
        d = tmp_path / "released"
        d.mkdir()
        (d / "Vad-Reasoning-SFT-train.jsonl").write_text('{"the": "released rows"}\n')
        (d / "notes.txt").write_text("mine\n")
        before = _digest(d)
        _refused(toy.main, ["--out", str(d), *TINY],
                 f"{d} holds files that no toy world wrote (Vad-Reasoning-SFT-train.jsonl, notes.txt; no toy "
                 f"world's toy_world.json): pass a new or empty --out, or write the toy world among them with "
                 f"`python -m extras.toy --out {d} --overwrite` (it replaces only its own names: {OWN})")
        assert _digest(d) == before

    def test_overwrite_replaces_only_the_toy_worlds_names(self, tmp_path, capsys):
        d = tmp_path / "mixed"
        d.mkdir()
        (d / "Vad-Reasoning-SFT-train.jsonl").write_text('{"the": "released rows"}\n')
        (d / "notes.txt").write_text("mine\n")
        toy.main(["--out", str(d), *TINY, "--overwrite"])
        assert (d / "notes.txt").read_text() == "mine\n"
        assert len(data.read_manifest(str(d / "Vad-Reasoning-SFT-train.jsonl"), "sft")) == 2
        assert not (d / toy.WRITING_MARK).exists()
        # now a toy world: regenerated without --overwrite, other files still left alone
        toy.main(["--out", str(d), *TINY, "--seed", "5"])
        assert json.load(open(d / "toy_world.json"))["params"]["seed"] == 5
        assert (d / "notes.txt").read_text() == "mine\n"

    def test_a_stopped_generation_can_be_run_again(self, tmp_path, monkeypatch):
        d = tmp_path / "stopped"

        def die(job):
            raise KeyboardInterrupt
        monkeypatch.setattr(toy, "_toy_job", die)
        with pytest.raises(KeyboardInterrupt):
            toy.main(["--out", str(d), *TINY])
        assert (d / toy.WRITING_MARK).exists() and not (d / "toy_world.json").exists()
        monkeypatch.undo()
        toy.main(["--out", str(d), *TINY])  # its own unfinished folder: no --overwrite needed
        assert (d / "toy_world.json").exists() and not (d / toy.WRITING_MARK).exists()

    def test_a_corrupt_stamp_is_not_a_toy_world(self, tmp_path):
        d = tmp_path / "w"
        toy.main(["--out", str(d), *TINY])
        (d / "toy_world.json").write_text("{not json")
        _refused(toy.main, ["--out", str(d), *TINY],
                 f"{d} holds files that no toy world wrote (Toy-Caption.jsonl, Vad-Reasoning-RL.jsonl, "
                 f"Vad-Reasoning-SFT-test.jsonl, Vad-Reasoning-SFT-train.jsonl, ...; no toy world's "
                 f"toy_world.json): pass a new or empty --out, or write the toy world among them with "
                 f"`python -m extras.toy --out {d} --overwrite` (it replaces only its own names: {OWN})")
        # ensure_toy_world (the scripts' default data) reads it as absent, not as a traceback
        with pytest.raises(vadr.InputError, match="holds files that no toy world wrote"):
            toy.ensure_toy_world(str(d), seed=0, n_sft=2, n_test=2, n_rl=2, n_caption=2, size=(48, 48),
                                 frames=(16, 16), workers=1, quiet=True)

    def test_a_folder_of_a_manifests_name_is_never_deleted(self, tmp_path):
        d = tmp_path / "w"
        (d / "Toy-Caption.jsonl").mkdir(parents=True)
        _refused(toy.main, ["--out", str(d), *TINY, "--overwrite"],
                 f"{d / 'Toy-Caption.jsonl'}: the toy world writes a file of this name and deletes nothing "
                 "else; move it away or pass another --out")
        (d / "Toy-Caption.jsonl").rmdir()
        (d / "videos").write_text("a file\n")
        _refused(toy.main, ["--out", str(d), *TINY, "--overwrite"],
                 f"{d / 'videos'}: the toy world writes a folder of this name and deletes nothing else; "
                 "move it away or pass another --out")

    def test_out_is_a_file_or_empty(self, tmp_path):
        f = tmp_path / "f"
        f.write_text("x")
        _refused(toy.main, ["--out", str(f), *TINY],
                 f"python -m extras.toy: --out {f}: {f} is a file, not a directory; pass another --out")
        _refused(toy.main, ["--out", "", *TINY], "python -m extras.toy: --out '': pass a folder")


class TestVanguardOutputs:
    """python -m extras.vanguard never writes over one of its inputs, nor over a file it did not write."""

    def test_boxes_out_is_the_manifest(self, tiny_world, tmp_path):
        m = tmp_path / "m.jsonl"
        shutil.copy(tiny_world["sft_test"], m)
        before = m.read_bytes()
        _refused(vanguard.main, ["boxes", "--data", str(m), "--video-root", tiny_world["videos"], "--out", str(m)],
                 f"python -m extras.vanguard boxes: --out {m} is also --data {m}, which it would replace; "
                 "pass another --out")
        link = tmp_path / "link.jsonl"  # the same file by another name
        os.symlink(m, link)
        _refused(vanguard.main, ["boxes", "--data", str(m), "--out", str(link)],
                 f"python -m extras.vanguard boxes: --out {link} is also --data {m}, which it would "
                 "replace; pass another --out")
        assert m.read_bytes() == before

    def test_an_existing_file_of_another_kind_is_not_replaced(self, tiny_world, tmp_path):
        other = tmp_path / "train.jsonl"
        shutil.copy(tiny_world["sft_train"], other)
        before = other.read_bytes()
        _refused(vanguard.main, ["boxes", "--data", tiny_world["sft_test"], "--out", str(other)],
                 f"python -m extras.vanguard boxes: --out {other} exists and is not a file of `boxes` (rows "
                 "with 'box'), so it is not replaced; pass another --out")
        _refused(vanguard.main, ["scores", "--model", str(tmp_path), "--head", str(tmp_path), "--data",
                                 tiny_world["sft_test"], "--out", str(other)],
                 f"python -m extras.vanguard scores: --out {other} exists and is not a file of `scores` (rows "
                 "with 'frame_scores'), so it is not replaced; pass another --out")
        assert other.read_bytes() == before
        _refused(vanguard.main, ["boxes", "--data", tiny_world["sft_test"], "--out", str(tmp_path)],
                 f"python -m extras.vanguard boxes: --out {tmp_path} is a directory; pass a file name")
        # a box file of its own is rewritten
        out = tmp_path / "boxes.jsonl"
        for _ in range(2):
            vanguard.main(["boxes", "--data", tiny_world["sft_test"], "--video-root", tiny_world["videos"],
                           "--out", str(out)])
        assert len(vanguard.load_boxes(str(out))) > 0

    def test_stage1_out_is_the_model_and_table_data_is_the_table(self, tiny_world, tmp_path):
        model = tmp_path / "model"
        model.mkdir()
        _refused(vanguard.main, ["stage1", "--model", str(model), "--data", tiny_world["sft_train"], "--out",
                                 str(model)],
                 f"python -m extras.vanguard stage1: --out {model} is also --model {model}, which it would "
                 "replace; pass another --out")
        (tmp_path / "table.md").write_text("| a |\n")
        _refused(vanguard.main, ["table", "--data", str(tmp_path / "table.md"), "--out", str(tmp_path)],
                 f"table: --data {tmp_path / 'table.md'} is {tmp_path}/table.md, which the table would replace; "
                 "pass the test manifest")


class TestMakefilePaths:
    """make splits a path with a space: the Makefile refuses one before any recipe runs (make -n)."""

    @pytest.mark.parametrize("var", ["RUN", "DATA", "VRUN", "VDATA", "SMOKE"])
    def test_a_path_with_a_space_is_refused(self, var):
        p = subprocess.run(["make", "-n", "toy", "toy-vanguard", f"{var}=runs/my run"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.strip().endswith(
            f'*** {var}="runs/my run" holds a space: make splits paths at spaces (and --overwrite could then '
            "delete another run); pass a path without one.  Stop."), p.stderr
        assert len(p.stderr.strip().splitlines()) == 1

    def test_paths_without_spaces_still_plan(self):
        p = subprocess.run(["make", "-n", "toy", "RUN=runs/x", "DATA=data/x"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0 and "--model toy-base" in p.stdout and "--out runs/x/sft" in p.stdout, p.stderr


# ================================================================ toy-world flags out of range

W = "python -m extras.toy"
P = "python -m extras.toy preview"
SIZE = "H W are even numbers of pixels from 48 to 1024 (H.264 yuv420p)"
FRAMES = "16 <= LO <= HI <= 2048 (16 frames are sampled per video)"
SPLIT = "each split holds a normal and an abnormal video: 2 to 100000"
TOY_BAD = [
    (["--fps", "0"], f"{W}: --fps 0.0: frames per second in [1, 240]"),
    (["--fps", "nan"], f"{W}: --fps nan: frames per second in [1, 240]"),
    (["--fps", "1e9"], f"{W}: --fps 1000000000.0: frames per second in [1, 240]"),
    (["--size", "-2", "64"], f"{W}: --size -2 64: {SIZE}"),
    (["--size", "64", "63"], f"{W}: --size 64 63: {SIZE}"),
    (["--size", "99998", "99998"], f"{W}: --size 99998 99998: {SIZE}"),
    (["--size", "112", "72"], f"{W}: --size 112 72: decord 0.6 cannot read back frames 72 pixels wide (measured: of "
                              "the even widths from 48 to 1024, 48 and 72 fail); pass another W"),
    (["--n-sft", "0"], f"{W}: --n-sft 0: {SPLIT}"),
    (["--n-test", "-4"], f"{W}: --n-test -4: {SPLIT}"),
    (["--n-rl", "1"], f"{W}: --n-rl 1: {SPLIT}"),
    (["--n-caption", "1000000000"], f"{W}: --n-caption 1000000000: {SPLIT} (or 0 for none)"),
    (["--frames", "30", "20"], f"{W}: --frames 30 20: {FRAMES}"),
    (["--frames", "8"], f"{W}: --frames 8: {FRAMES}"),
    (["--frames", "16", "100000"], f"{W}: --frames 16 100000: {FRAMES}"),
    (["--frames", "16", "20", "30"], f"{W}: --frames 16 20 30: one length, or LO HI for a random length per video"),
    (["--frames", "2048", "--size", "1024", "1024"],
     f"{W}: --frames 2048: 2048 frames of 1024 x 1024 take 6.0 GiB to render, more than 1 GiB: fewer or smaller "
     "frames"),
    (["--seed", "-1"], f"{W}: --seed -1: seeds are >= 0"),
    (["--workers", "0"], f"{W}: --workers 0: processes: 1 to 64 (leave it out for the CPU count, at most 8)"),
    (["--workers", "100000"],
     f"{W}: --workers 100000: processes: 1 to 64 (leave it out for the CPU count, at most 8)"),
    (["--text-variants", "0"], "text_variants must be an integer in [1, 4], got 0"),
    (["--sprite-scale", "nan"], "sprite_scale must be in [0.5, 4], got nan"),
    (["--column-tint", "101"], "column_tint must be an integer in [0, 100], got 101"),
]


class TestToyFlags:
    @pytest.mark.parametrize("flags,msg", TOY_BAD, ids=[" ".join(f) for f, _ in TOY_BAD])
    def test_world_flag_is_refused_before_anything_is_written(self, tmp_path, flags, msg):
        out = tmp_path / "w"
        _refused(toy.main, ["--out", str(out), *flags], msg)
        assert not out.exists()

    @pytest.mark.parametrize("flags,msg", [
        (["--size", "10", "10"], f"{P}: --size 10 10: {SIZE}"),
        (["--frames", "20", "16"], f"{P}: --frames 20 16: {FRAMES}"),
        (["--fps", "0"], f"{P}: --fps 0.0: frames per second in [1, 240]"),
        (["--seed", "-3"], f"{P}: --seed -3: seeds are >= 0"),
        (["--num-frames", "0"], f"{P}: --num-frames 0: frames in the sheet: 1 to 64"),
        (["--num-frames", "100000"], f"{P}: --num-frames 100000: frames in the sheet: 1 to 64"),
        (["--text-variants", "9"], "text_variants must be an integer in [1, 4], got 9"),
    ])
    def test_preview_flag_is_refused(self, tmp_path, flags, msg):
        out = tmp_path / "p.png"
        _refused(toy.main, ["preview", "--out", str(out), *flags], msg)
        assert not out.exists()

    def test_preview_out_is_a_folder_or_the_video(self, tiny_world, tmp_path):
        _refused(toy.main, ["preview", "--out", str(tmp_path)],
                 f"{P}: --out {tmp_path} is a directory; pass a file name")
        video = tmp_path / "v.mp4"
        shutil.copy(data.read_manifest(tiny_world["sft_test"], "sft", video_root=tiny_world["videos"])[0]
                    ["video_path"], video)
        _refused(toy.main, ["preview", "--out", str(video), "--video", str(video)],
                 f"{P}: --out {video} is also --video {video}, which it would replace; pass another --out")

    def test_caption_check_flags(self, tiny_world, tmp_path):
        m = tiny_world["sft_test"]
        cc = lambda *a: ["caption-check", "--model", str(tmp_path), "--data", m, *a]  # noqa: E731
        for n in ("1", "100000"):
            _refused(toy.main, cc("--frames", n), "caption-check: --frames must be >= 2 (Qwen2.5-VL's temporal "
                                                  f"patch) and at most 2048 (the longest toy video), got {n}")
        _refused(toy.main, cc("--json", str(tmp_path / "cc.json")),
                 f"caption-check: --json {tmp_path / 'cc.json'} is inside --model {tmp_path}; pass a file outside "
                 "the checkpoint")
        other = tmp_path.parent / (tmp_path.name + "-out")
        other.mkdir()
        _refused(toy.main, cc("--json", str(other)), f"caption-check: --json {other} is a directory; pass a file name")
        _refused(toy.main, ["caption-check", "--model", str(tmp_path), "--data", m, "--json", m],
                 f"caption-check: --json {m} is also --data {m}, which it would replace; pass another --json")
        _refused(toy.main, ["caption-check", "--model", m, "--data", m],
                 f"caption-check: --model {m} is a file; pass a stage-0 run or checkpoint folder such as "
                 "runs/toy/base")
        _refused(toy.main, ["caption-check", "--model", str(tmp_path), "--data", str(tmp_path)],
                 f"caption-check: --data {tmp_path} is a folder; pass an SFT manifest (.jsonl)")

    @pytest.mark.parametrize("fps", ["7.5", "1", "240"])
    def test_valid_edges_are_not_refused(self, tmp_path, fps):
        """A fractional or edge frame rate is written as such (PyAV takes a rational rate)."""
        import decord
        out = tmp_path / "w"
        toy.main(["--out", str(out), *TINY, "--fps", fps])
        video = data.read_manifest(str(out / "Vad-Reasoning-SFT-test.jsonl"), "sft")[0]["video_path"]
        assert decord.VideoReader(video).get_avg_fps() == pytest.approx(float(fps))

    def test_preview_writes_into_a_new_folder(self, tmp_path, capsys):
        out = tmp_path / "new" / "sub" / "p.png"
        toy.main(["preview", "--out", str(out), "--frames", "16", "--size", "48", "48"])  # not read back: 48 is fine
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        toy.main(["preview", "--out", str(out), "--frames", "16", "--category", "Fire", "--counterfactual"])
        assert "(counterfactual: the event is not drawn, no texts)" in capsys.readouterr().out

    def test_every_accepted_width_is_read_back_by_decord(self, tmp_path):
        """The measurement behind UNREADABLE_WIDTHS, on the pinned decord: the refused widths fail, a
        sample of the accepted ones read back (every even width to 1024 did when it was measured)."""
        import numpy as np
        for w in (50, 64, 70, 74, 112, 140, 1024) + toy.UNREADABLE_WIDTHS:
            p = str(tmp_path / f"w{w}.mp4")
            toy.write_video(p, np.zeros((2, 48, w, 3), np.uint8))
            if w in toy.UNREADABLE_WIDTHS:
                with pytest.raises(vadr.VideoError):
                    vadr.read_video(p, 2)
            else:
                assert vadr.read_video(p, 2)["frames"].shape == (2, 48, w, 3)

    def test_cli_exit_code_and_one_line(self, tmp_path):
        out = tmp_path / "w"
        p = _cli(["-m", "extras.toy", "--out", str(out), "--fps", "0"])
        assert p.returncode == 1 and p.stderr == f"error: {W}: --fps 0.0: frames per second in [1, 240]\n"
        assert not out.exists()


# ================================================================ box files

class TestBoxFiles:
    """Every box JSONL extras/vanguard.py reads (stage2/stage3 --boxes, eval.py --boxes)."""

    @pytest.mark.parametrize("text,msg", [
        ('{"source": "TOY", "video": "a", "box": [0.5, 0.1, 0.2, 0.9]}\n',
         "{p}:1: box [0.5, 0.1, 0.2, 0.9] is not inside [0, 1] with x1 < x2 and y1 < y2"),
        ('\n{"source": "TOY", "video": "a", "box": [-0.1, 0.1, 0.2, 0.9]}\n',
         "{p}:2: box [-0.1, 0.1, 0.2, 0.9] is not inside [0, 1] with x1 < x2 and y1 < y2"),
        ('{"source": "TOY", "video": "a", "box": [0.1, 0.1, 1.5, 0.9]}\n',
         "{p}:1: box [0.1, 0.1, 1.5, 0.9] is not inside [0, 1] with x1 < x2 and y1 < y2"),
        ('{"source": "TOY", "video": "a", "box": [0.1, 0.1, NaN, 0.9]}\n',
         "{p}:1: box [0.1, 0.1, nan, 0.9] is not inside [0, 1] with x1 < x2 and y1 < y2"),
        ('{"source": "TOY", "video": "a", "box": [0.1, 0.1, 0.2]}\n',
         '{p}:1: expected {{source, video, box: [x1, y1, x2, y2]}} with 4 numbers in the box, got '
         '{{"source": "TOY", "video": "a", "box": [0.1, 0.1, 0.2]}}'),
        ('{"source": "TOY", "video": "a", "box": "0123"}\n',
         '{p}:1: expected {{source, video, box: [x1, y1, x2, y2]}} with 4 numbers in the box, got '
         '{{"source": "TOY", "video": "a", "box": "0123"}}'),
        ('{"video": "a", "box": [0.1, 0.1, 0.2, 0.2]}\n',
         '{p}:1: expected {{source, video, box: [x1, y1, x2, y2]}} with 4 numbers in the box, got '
         '{{"video": "a", "box": [0.1, 0.1, 0.2, 0.2]}}'),
        ('{"source": "TOY", "video": "a", "box": [0.1, 0.1, 0.2, 0.2]\n',
         "{p}:1: not valid JSON (Expecting ',' delimiter, column 1): "
         "'{{\"source\": \"TOY\", \"video\": \"a\", \"box\": [0.1, 0.1, 0.2, 0.2]'"),
        ('[0.1, 0.1, 0.2, 0.2]\n', "{p}:1: expected a JSON object, got list"),
        ('{"source": "TOY", "video": "a", "box": [0.1, 0.1, 0.2, 0.2]}\n'
         '{"source": "TOY", "video": "a", "box": [0.1, 0.1, 0.3, 0.3]}\n',
         "{p}:2: a second box for TOY/a, unlike the one at {p}:1; keep one"),
    ])
    def test_bad_box_file_names_the_file_and_line(self, tmp_path, text, msg):
        p = tmp_path / "boxes.jsonl"
        p.write_text(text)
        with pytest.raises(vadr.InputError) as e:
            vanguard.load_boxes(str(p))
        assert str(e.value) == msg.format(p=p)

    def test_not_utf8_a_folder_or_missing(self, tmp_path):
        p = tmp_path / "boxes.jsonl"
        p.write_bytes(b'{"source": "TOY", "video": "\xff", "box": [0, 0, 1, 1]}\n')
        with pytest.raises(vadr.InputError) as e:
            vanguard.load_boxes(str(p))
        assert str(e.value) == (f"{p}:1: not UTF-8 text (byte 0xff at byte 29 of the line); re-encode "
                                "the file as UTF-8 (e.g. iconv -t UTF-8)")
        for path, what in ((tmp_path, "is a folder, not a box file"), (tmp_path / "no.jsonl", "no such box file")):
            with pytest.raises(vadr.InputError) as e:
                vanguard.load_boxes(str(path))
            assert str(e.value) == (f"{path}: {what} (python -m extras.vanguard boxes writes one from a "
                                    "manifest's bbox fields)")

    def test_boxes_of_another_manifest_cover_no_video(self, tiny_world, tmp_path):
        p = tmp_path / "boxes.jsonl"
        p.write_text('{"source": "TOY", "video": "not_in_it", "box": [0.1, 0.1, 0.2, 0.2]}\n')
        boxes = vanguard.load_boxes(str(p))
        rows = data.read_manifest(tiny_world["sft_train"], "sft", video_root=tiny_world["videos"])
        m = tiny_world["sft_train"]
        with pytest.raises(vadr.InputError) as e:
            vanguard.check_boxes_cover(boxes, rows, m)
        assert str(e.value) == (f"{p}: none of its 1 boxes is for an abnormal video of {m}; pass the box file "
                                f"made from it (python -m extras.vanguard boxes --data {m})")
        (tmp_path / "empty.jsonl").write_text("\n")
        with pytest.raises(vadr.InputError) as e:
            vanguard.check_boxes_cover(vanguard.load_boxes(str(tmp_path / "empty.jsonl")), rows, m)
        assert str(e.value).startswith(f"{tmp_path / 'empty.jsonl'}: it holds no box, none is for an abnormal")
        # stage 2 (train_sft.py --boxes, which `vanguard stage2` runs) refuses it before its run directory exists
        out = tmp_path / "stage2"
        with pytest.raises(vadr.InputError) as e:
            train_sft.main(["--boxes", str(p), "--model", str(tmp_path), "--data", m, "--out", str(out)])
        assert str(e.value).startswith(f"{p}: none of its 1 boxes is for an abnormal video of {m}")
        assert not out.exists()
        # eval.py --score --boxes: no box figure computed from nothing
        with pytest.raises(vadr.InputError) as e:
            vanguard.box_metrics([None] * len(rows), [dict(source=r["source"], video=r["video"]) for r in rows],
                                 boxes)
        assert str(e.value) == (f"{p}: none of its 1 boxes is for a video of the ground truth; pass the box file "
                                "made from the --gt manifest (python -m extras.vanguard boxes --data GT)")

    def test_frame_scores_rows(self):
        gts = [dict(source="TOY", video="a", anomaly_type="Fire", start=2, end=5, total_frames=8)]
        go = lambda rows: vanguard.head_frame_metrics(rows, [f"s.jsonl:{i + 2}" for i in range(len(rows))], gts)  # noqa
        for rows, msg in (
                ([dict(source="TOY", frame_scores=[0.1] * 8)],
                 "s.jsonl:2: a row with 'video' must be a non-empty string, got None (python -m extras.vanguard "
                 "scores writes {source, video, frame_scores})"),
                ([dict(source="TOY", video="a")],
                 "s.jsonl:2: a row with no 'frame_scores' (python -m extras.vanguard scores writes {source, "
                 "video, frame_scores})"),
                ([dict(source="TOY", video="a", frame_scores=[0.1] * 8), dict(source="TOY", video="a",
                                                                             frame_scores=[0.2] * 8)],
                 "s.jsonl:3: frame scores of TOY/a differ from those at s.jsonl:2; keep one"),
                ([dict(source="TOY", video="a", frame_scores=["x"] * 8)],
                 "s.jsonl:2: frame scores of TOY/a: expected a list of finite numbers (python -m extras.vanguard "
                 "scores writes them)"),
                ([dict(source="TOY", video="a", frame_scores=[float("nan")] * 8)],
                 "s.jsonl:2: frame scores of TOY/a: expected a list of finite numbers (python -m extras.vanguard "
                 "scores writes them)"),
                ([dict(source="TOY", video="a", frame_scores=[0.1] * 8), dict(source="TOY", video="a",
                                                                             frame_scores=[0.1] * 3)],
                 "s.jsonl:3: frame scores of TOY/a differ from those at s.jsonl:2; keep one"),
                ([dict(source="TOY", video="b", frame_scores=[0.1] * 8), dict(source="TOY", video="a",
                                                                             frame_scores=[0.1] * 3)],
                 "s.jsonl:3: frame scores of TOY/a: 3 values for 8 frames")):
            with pytest.raises(vadr.InputError) as e:
                go(rows)
            assert str(e.value) == msg
        assert go([dict(source=" TOY ", video="a", frame_scores=[0.1] * 8)])["n_missing"] == 0  # keys as scoring's

    def test_eval_frame_scores_errors_name_the_file_and_line(self, tiny_world, tmp_path):
        import eval as ev
        g = json.loads(open(tiny_world["sft_test"]).readline())
        fs, preds = tmp_path / "fs.jsonl", tmp_path / "p.jsonl"
        fs.write_text("\n" + json.dumps(dict(source=g["source"], video=g["video"], frame_scores=[0.5])) + "\n")
        preds.write_text("")
        with pytest.raises(vadr.InputError) as e:
            ev.run_scoring(str(preds), tiny_world["sft_test"], allow_missing=True, frame_scores=str(fs))
        assert str(e.value) == (f"{fs}:2: frame scores of {g['source']}/{g['video']}: 1 values for "
                                f"{g['total_frames']} frames")

    def test_a_bbox_outside_its_frame_and_a_manifest_without_bbox(self, tiny_world, tmp_path):
        rows = [json.loads(line) for line in open(tiny_world["sft_test"])]
        n = next(i for i, r in enumerate(rows) if "bbox" in r)
        rows[n]["bbox"] = [10, 10, 5000, 20]
        m = tmp_path / "m.jsonl"
        m.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / "b.jsonl"
        _refused(vanguard.main, ["boxes", "--data", str(m), "--video-root", tiny_world["videos"], "--out", str(out)],
                 f"{m}:{n + 1}: bbox [10, 10, 5000, 20] is not inside the video's 112 x 112 frame with x1 < x2 "
                 "and y1 < y2")
        for r in rows:
            r.pop("bbox", None)
        m.write_text("".join(json.dumps(r) + "\n" for r in rows))
        _refused(vanguard.main, ["boxes", "--data", str(m), "--video-root", tiny_world["videos"], "--out", str(out)],
                 f"{m}: no abnormal row carries a bbox (the toy world's SFT manifests do); no box file written")
        assert not out.exists()


# ================================================================ corrupt JSON, a folder for a file

S1 = "python -m extras.vanguard stage1"


class TestVanguardStage1Flags:
    @pytest.mark.parametrize("flags,msg", [
        (["--frames", "0"], f"{S1}: --frames 0: a video needs at least 1 frame (2 with --frame-rule authors, which "
                            "takes an even number)"),
        (["--lr", "inf"], f"{S1}: --lr inf: must be a finite number"),
        (["--lr", "0"], f"{S1}: --lr 0.0: the learning rate must be > 0"),
        (["--epochs", "0"], f"{S1}: --epochs 0: passes over the data: at least 1 (0 trains nothing and leaves no "
                            "checkpoint)"),
        (["--seed", "-1"], f"{S1}: --seed -1: seeds are in [0, 2**32) (the scripts derive per-step seeds from it)"),
        (["--min-pixels", "0"], f"{S1}: --min-pixels 0: pixels per frame must be in [1, 12845056] (Qwen2.5-VL's "
                                "16384 * 28 * 28)"),
        (["--batch-size", "0"], f"{S1}: --batch-size 0: slots per step: at least 1"),
        (["--hidden", "0"], f"{S1}: --hidden 0: the head's hidden width: at least 1"),
    ])
    def test_refused_before_loading(self, tiny_world, tmp_path, flags, msg):
        out = tmp_path / "head"
        _refused(vanguard.main, ["stage1", "--model", str(tmp_path / "none"), "--data", tiny_world["sft_train"],
                                 "--out", str(out), *flags], msg)
        assert not out.exists()


class TestVanguardJsonFiles:
    """A stage-1 head's files and the table's eval_<stem>.json: missing, corrupt or foreign -> one line."""

    def _scores(self, tiny_world, tmp_path, head):
        with pytest.raises(vadr.InputError) as e:
            vanguard.main(["scores", "--model", str(tmp_path), "--head", str(head), "--data", tiny_world["sft_test"],
                           "--out", str(tmp_path / "s.jsonl")])
        assert not (tmp_path / "s.jsonl").exists()
        return str(e.value)

    def test_head_files(self, tiny_world, tmp_path):
        head = tmp_path / "head"
        head.mkdir()
        cfg, what = head / "head_config.json", ("a stage-1 head's head_config.json (python -m extras.vanguard stage1 "
                                                "writes it)")
        assert self._scores(tiny_world, tmp_path, head) == f"{cfg}: does not exist; expected {what}"
        cfg.write_text('{"dim": 4')
        assert self._scores(tiny_world, tmp_path, head) == (
            f"{cfg}:1: malformed JSON (Expecting ',' delimiter, column 10); expected {what}")
        cfg.write_text('{"dim": 4}')
        assert self._scores(tiny_world, tmp_path, head) == (
            f"{cfg}: no hidden, categories, frames, min_pixels, max_pixels; expected {what}")
        cfg.write_text(json.dumps(dict(dim=4, hidden=3, categories=["Fire"], frames=4, min_pixels=1, max_pixels=9)))
        (head / "head.pt").write_bytes(b"not torch")
        msg = self._scores(tiny_world, tmp_path, head)
        assert msg.startswith(f"{head / 'head.pt'}: not the weights of the head {cfg} describes (") and msg.endswith(
            "); run python -m extras.vanguard stage1 again") and len(msg.splitlines()) == 1, msg

    def test_table_reads_a_corrupt_eval_json_in_one_line(self, tiny_world, tmp_path):
        (tmp_path / "eval_stage3.json").write_text("{")
        with pytest.raises(vadr.InputError) as e:
            vanguard.main(["table", "--data", tiny_world["sft_test"], "--out", str(tmp_path)])
        assert str(e.value) == (f"{tmp_path / 'eval_stage3.json'}:1: malformed JSON (Expecting property name "
                                "enclosed in double quotes, column 2); expected eval.py's metrics JSON (--json)")


class TestRewardcheckFiles:
    """python -m extras.rewardcheck's run config and --json: one line each, before any model loads."""

    def _run(self, tmp_path, cfg_text=None):
        run = tmp_path / "rl"
        run.mkdir(exist_ok=True)
        if cfg_text is not None:
            (run / "run_config.json").write_text(cfg_text)
        return run

    def test_corrupt_or_wrong_run_config(self, tmp_path):
        run = self._run(tmp_path, '{"num_generations": 2,')
        cfg = run / "run_config.json"
        go = lambda *a: rewardcheck.main(["--run", str(run), "--models", str(tmp_path), *a])  # noqa: E731
        what = "an RL run's run_config.json (train_rl.py writes it)"
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == (f"{cfg}:1: malformed JSON (Expecting property name enclosed in double quotes, "
                                f"column 23); expected {what}")
        cfg.write_text("[1, 2]")
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == f"{cfg}: expected {what} (a JSON object), got list"
        cfg.write_bytes(b'{"a": "\xff"}')
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == f"{cfg}: not UTF-8; expected {what}"
        cfg.write_text('{"num_generations": 2, "length_ranges": {}, "data": "x.jsonl"}')
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == (f"rewardcheck: {cfg} lacks seed, batch_size, total_steps, prompt_variant, "
                                "max_new_tokens, temperature, top_p, frames, min_pixels, max_pixels, frame_rule, "
                                "grid_time: not a whole RL run's config (train_rl.py writes it)")
        full = dict(data="x.jsonl", seed=0, batch_size="4", total_steps=2, num_generations=2, length_ranges={},
                    prompt_variant="fine", max_new_tokens=4, temperature=1.0, top_p=True, frames=4, min_pixels=1,
                    max_pixels=9, frame_rule="paper", grid_time="real")
        cfg.write_text(json.dumps(full))
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == (f"rewardcheck: {cfg}: batch_size, top_p of the wrong type (edited by hand?): not an "
                                "RL run's config as train_rl.py writes it")
        cfg.unlink()
        cfg.mkdir()
        with pytest.raises(vadr.InputError) as e:
            go()
        assert str(e.value) == f"{cfg}: is a directory; expected {what}"

    def test_run_models_json_and_seed(self, tiny_world, tmp_path):
        f = tmp_path / "file"
        f.write_text("x")
        _refused(rewardcheck.main, ["--run", str(f), "--models", str(tmp_path)],
                 f"rewardcheck: --run {f} is a file; pass an RL run directory (with run_config.json)")
        run = self._run(tmp_path)
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(tmp_path)],
                 f"rewardcheck: --run {run} has no run_config.json (an RL run directory)")
        cfg = dict(data=tiny_world["rl"], video_root=tiny_world["videos"], seed=0, batch_size=1, total_steps=2,
                   num_generations=2, length_ranges={}, prompt_variant="fine", max_new_tokens=4, temperature=1.0,
                   top_p=1.0, frames=4, min_pixels=3136, max_pixels=3136, frame_rule="paper", grid_time="real")
        (run / "run_config.json").write_text(json.dumps(cfg))
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(f)],
                 f"rewardcheck: --models {f} is a file; pass checkpoint or run directories")
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(tmp_path), "--seed", "-1"],
                 "rewardcheck: --seed -1: seeds are in [0, 2**32)")
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(tmp_path), "--json", str(tmp_path)],
                 f"rewardcheck: --json {tmp_path} is a directory; pass a file name")
        cfg_path = run / "run_config.json"
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(tmp_path), "--json", str(cfg_path)],
                 f"rewardcheck: --json {cfg_path} is also --run's run_config.json {cfg_path}, which it would "
                 "replace; pass another --json")
        _refused(rewardcheck.main, ["--run", str(run), "--models", str(tmp_path), "--json", tiny_world["rl"]],
                 f"rewardcheck: --json {tiny_world['rl']} is also the run's --data {tiny_world['rl']}, which it "
                 "would replace; pass another --json")

    def test_cli_exit_code_and_one_line(self, tmp_path):
        run = self._run(tmp_path, "{")
        p = _cli(["-m", "extras.rewardcheck", "--run", str(run), "--models", str(tmp_path)])
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
        assert p.stderr.startswith(f"error: {run / 'run_config.json'}:1: malformed JSON"), p.stderr


# ================================================================ a video named, and its manifest line

class TestVideoErrorsNameTheManifestLine:
    def test_at_line_adds_the_manifest_file_and_line(self, tmp_path):
        with pytest.raises(vadr.InputError) as e:
            with badvideos.at_line("m.jsonl", dict(line=7)):
                vadr.read_video(str(tmp_path / "gone.mp4"), 4)
        assert str(e.value) == f"m.jsonl:7: cannot read video {tmp_path / 'gone.mp4'}: file not found"

    def test_vanguard_boxes_names_the_manifest_line_of_a_bad_video(self, tiny_world, tmp_path):
        rows = [json.loads(line) for line in open(tiny_world["sft_test"])]
        n = next(i for i, r in enumerate(rows) if "bbox" in r)
        bad = tmp_path / "bad.mp4"
        bad.write_bytes(b"not a video")
        rows[n]["path"] = str(bad)
        m = tmp_path / "m.jsonl"
        m.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(vadr.InputError) as e:
            vanguard.main(["boxes", "--data", str(m), "--video-root", str(tmp_path), "--out",
                           str(tmp_path / "b.jsonl")])
        assert str(e.value).startswith(f"{m}:{n + 1}: cannot read video {bad}: "), str(e.value)
        assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "b.jsonl").exists()


def test_check_output_and_read_json_object_are_the_shared_rules(tmp_path):
    """One copy of each rule (extras/scoring.py), used by eval.py, report, toy, rewardcheck and vanguard."""
    (tmp_path / "ok.json").write_text('\ufeff{"a": 1}')  # a byte-order mark is accepted, as manifests
    assert scoring.read_json_object(str(tmp_path / "ok.json"), "x") == {"a": 1}
    with pytest.raises(vadr.InputError) as e:
        scoring.read_json_object(str(tmp_path / "none.json"), "a config")
    assert str(e.value) == f"{tmp_path / 'none.json'}: does not exist; expected a config"
    scoring.check_output("p", "--json", str(tmp_path / "new" / "x.json"), {"--data": None})  # creatable
    scoring.check_output("p", "--json", None, {"--data": None})                            # not asked for
    (tmp_path / "deep.json").write_text("[" * 100000)
    with pytest.raises(vadr.InputError) as e:
        scoring.read_json_object(str(tmp_path / "deep.json"), "x")
    assert str(e.value) == f"{tmp_path / 'deep.json'}: JSON nested too deeply; expected x"
    # the same name is refused even before the input exists (inference writes --out later)
    with pytest.raises(vadr.InputError) as e:
        scoring.check_output("p", "--json", str(tmp_path / "p.jsonl"), {"--out": str(tmp_path / "." / "p.jsonl")})
    assert str(e.value) == (f"p: --json {tmp_path / 'p.jsonl'} is also --out {tmp_path / '.' / 'p.jsonl'}, which it "
                            "would replace; pass another --json")
