"""data.py -- Vad-Reasoning manifests and the Datasets built on them (paper Sec. 3.2, App. B).

Reads the released SFT and RL JSON Lines files (docs/paper-vs-authors.md s.1): read_manifest
checks a whole file in one pass and raises ONE ManifestError listing every problem as
`file:line: reason: detail` (or, with skip_bad, drops and counts the bad rows). The Datasets
decode videos in __getitem__ (so in DataLoader workers); make_collate builds the Qwen2.5-VL chat
batch (vadr.build_chat_inputs, s.4). The toy world's manifests: extras/toy.py (docs/toy-world.md).
read_length_manifest reads --length-ranges-from's SFT manifest through the same checks.
read_jsonl is the one JSONL reader (manifests, ground truth, predictions, box and score files,
training logs): every caller gets its lines with file:line and words its own refusal.
    python -m extras.validate --manifest Vad-Reasoning-SFT-train.jsonl --kind sft --video-root R

Departures from the released data and the authors' scripts:
  * Beyond the schema, `<when>` must be [round(start/T, 3), round(end/T, 3)] (true of every
    released row) and the think/answer layout must fit the label. Whether `end` is inclusive is
    not documented, so only start < end <= total_frames is required.
  * Toy rows may carry `bbox` and `frame_boxes` (checked, passed through); kind 'caption' reads the toy's Toy-Caption.jsonl.
  * Videos resolve against trailing parts of the authors' `path` under --video-root (s.6); two
    different files matching one row is an error (ambiguous-video), not a silent pick. A `path`
    that exists as written wins over the root (the root resolves the authors' machine's paths);
    one file reached from rows of other ids and another anomaly_type is a conflicting-video.
  * The SFT labels mask the prompt (vadr.build_chat_inputs), unlike the authors' script (s.2).
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter

import torch

import vadr

# ---- 1. Vad-Reasoning manifests (docs/paper-vs-authors.md s.1) ----------------------------------

# Fields of the released files, in order; abnormal SFT rows add start/end, toy rows may add bbox.
SFT_FIELDS = ("source", "video", "anomaly_type", "path", "total_frames", "think", "answer")
SFT_INTERVAL_FIELDS = ("start", "end")
RL_FIELDS = ("source", "video", "anomaly_type", "path", "data_type", "solution")
CAPTION_FIELDS = ("source", "video", "path", "caption")   # toy stage 0 only (not a released file)
_TEXT_FIELDS = {"sft": ("anomaly_type", "think", "answer"),
                "gt": ("anomaly_type", "think", "answer"),
                "rl": ("anomaly_type", "data_type", "solution"), "caption": ("caption",)}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
# Reasons a row can be rejected (the keys of the skip counts).
REASONS = ("bad-json", "missing-field", "bad-value", "unknown-category", "bad-interval",
           "interval-out-of-range", "bad-format", "label-mismatch", "when-mismatch",
           "missing-video", "ambiguous-video", "unreadable-video", "frame-count-mismatch",
           "row-too-long", "duplicate-video", "conflicting-video")
# A bound on one line, so that a corrupt row never builds a million-token target: the released
# rows are at most 3,336 characters (SFT-train line 415; RL: 312), ~20x less.
MAX_ROW_CHARS = 65_536
# A bound on total_frames: 10^7 frames is 92 hours at 30 fps, 16x the longest released video
# (628,020 frames, SFT-train), and keeps a corrupt count (1e300) from sizing per-frame arrays.
MAX_TOTAL_FRAMES = 10_000_000


class ManifestError(vadr.InputError):
    """Every problem of one manifest, one per line of the message: `file:line: reason: detail`.
    `.problems` holds (line, reason, detail) tuples in file order. One problem: that line alone."""

    def __init__(self, path: str, problems: list[tuple[int, str, str]]):
        self.path, self.problems = path, list(problems)
        head = f"{path}: {len(problems)} problem(s) in {len({p[0] for p in problems})} row(s):"
        lines = [f"{path}:{ln}: {r}: {d}" for ln, r, d in problems]
        super().__init__("\n".join(lines if len(lines) == 1 else [head] + lines))


def _as_written(path: str, manifest_dir: str) -> str:
    return path if not path or os.path.isabs(path) else os.path.join(manifest_dir, path)


def video_candidates(source: str, video: str, path: str, video_root: str | None,
                     manifest_dir: str = ".") -> list[str]:
    """The files tried for one row, in order. `path` is an absolute path on the authors' machine
    whose tail is the released folder layout (docs/paper-vs-authors.md s.1), so with a root R:
        1. R/<source>/<video>.mp4      2. R/<video>.mp4
        3. R/<trailing components of path>, longest first, ending with R/<basename>
        4. R/<source>/<basename of path>
        5. `path` as written (relative paths are taken relative to the manifest's folder)
    Without a root only candidate 5. resolve_video says which one wins (5. when it exists)."""
    name = video if video.lower().endswith(VIDEO_EXTENSIONS) else video + ".mp4"
    parts = [c for c in path.replace("\\", "/").split("/") if c not in ("", ".", "..")]
    as_written = _as_written(path, manifest_dir)
    cands = []
    if video_root is not None:
        cands += [os.path.join(video_root, source, name), os.path.join(video_root, name)]
        cands += [os.path.join(video_root, *parts[k:]) for k in range(len(parts))]
        if parts:
            cands.append(os.path.join(video_root, source, parts[-1]))
    if as_written:
        cands.append(as_written)
    return list(dict.fromkeys(cands))  # keep order, drop repeats (e.g. basename == <video>.mp4)


def resolve_video(source: str, video: str, path: str, video_root: str | None,
                  manifest_dir: str = ".") -> tuple[str | None, list[str], list[str]]:
    """-> (the row's video or None, every candidate tried, the existing candidates under the root
    that are other files than the first: non-empty means the match is ambiguous). A `path` that
    exists as written is the row's own file and wins outright: the root only resolves paths that
    do not exist here (the authors' machine's), so a root holding another world's videos of the
    same names is never read in its place."""
    cands = video_candidates(source, video, path, video_root, manifest_dir)
    written = _as_written(path, manifest_dir)
    if written and os.path.isfile(written):
        return written, cands, []
    found = [c for c in cands if os.path.isfile(c)]
    others = [c for c in found[1:] if not os.path.samefile(c, found[0])]
    return (found[0] if found else None), cands, others


def _as_int(v) -> int | None:
    """JSON ints, and floats with an integral value (12.0), are accepted as ints; bools are not."""
    ok = isinstance(v, int) or isinstance(v, float) and v.is_integer()
    return int(v) if ok and not isinstance(v, bool) else None


def expected_tags(layout: str) -> list[str]:
    """The tags of the 'abnormal' or 'normal' layout, in order (docs/paper-vs-authors.md s.1)."""
    abnormal = layout == "abnormal"
    steps = [f"step{i}" for i in range(1, 5 if abnormal else 3)]
    answer = ["which", "what"] + (["when", "where", "why", "how"] if abnormal else ["why"])
    pairs = lambda tags: [x for t in tags for x in (f"<{t}>", f"</{t}>")]
    return ["<think>", *pairs(steps), "</think>", "<answer>", *pairs(answer), "</answer>"]


def diagnose_format(text: str, layout: str) -> str:
    """Where `text` first departs from the layout, e.g. 'tag #3 is <step1> where </step1> is
    expected' (the released row that closes step 1 with <step1>, docs/paper-vs-authors.md s.1)."""
    found, exp = vadr.TAG_RE.findall(text), expected_tags(layout)
    for i, (a, b) in enumerate(zip(found, exp)):
        if a != b:
            return f"tag #{i + 1} is {a} where {b} is expected ({layout} layout)"
    if len(found) < len(exp):
        return (f"{exp[len(found)]} is missing ({layout} layout, {len(found)} of {len(exp)} "
                "tags present)")
    if len(found) > len(exp):
        return f"extra tag {found[len(exp)]} after the {layout} layout's last tag"
    return (f"tags are in {layout} order, but text stands outside them where only whitespace "
            "is allowed (around <think>/<answer> or between steps)")


def _check_row(obj, kind: str, bad) -> dict | None:
    """One parsed JSON row -> the normalised row (without line and video_path), or None. Problems
    go to bad(reason, detail), which returns None, so `return bad(...)` rejects the row."""
    if not isinstance(obj, dict):
        return bad("bad-json", f"a JSON object is expected, got {type(obj).__name__}")
    fields = {"sft": SFT_FIELDS, "gt": SFT_FIELDS, "rl": RL_FIELDS, "caption": CAPTION_FIELDS}[kind]
    missing = [f for f in fields if f not in obj]
    if missing:
        return bad("missing-field", "missing " + ", ".join(repr(f) for f in missing))
    wrong = [f for f in ("source", "path") + _TEXT_FIELDS[kind] if not isinstance(obj[f], str)]
    for f in wrong:
        bad("bad-value", f"{f!r} must be a string, got {obj[f]!r:.60}")
    if not isinstance(obj["video"], (str, int)) or isinstance(obj["video"], bool):
        return bad("bad-value", f"'video' must be a string (or an int), got {obj['video']!r:.60}")
    if wrong:
        return None
    row = dict(source=obj["source"].strip(), video=str(obj["video"]).strip(), path=obj["path"])
    if "bbox" in obj:  # toy world extra field: 4 numbers
        b = obj["bbox"]
        if not (isinstance(b, list) and len(b) == 4 and all(_as_int(v) is not None for v in b)):
            return bad("bad-value", f"'bbox' must be 4 integers [x1, y1, x2, y2], got {b!r:.60}")
        row["bbox"] = [int(v) for v in b]
    if "frame_boxes" in obj:  # the toy pretraining world's extra field: {frame: bbox} (extras/toybase.py)
        fb = obj["frame_boxes"]
        if not (isinstance(fb, dict) and all(str(t).isdigit() and isinstance(b, list) and len(b) == 4
                                              and all(_as_int(v) is not None for v in b) for t, b in fb.items())):
            return bad("bad-value", f"'frame_boxes' must map frame numbers to 4 integers, got {fb!r:.60}")
        row["frame_boxes"] = {str(int(t)): [int(v) for v in b] for t, b in fb.items()}
    if kind == "caption":
        if not obj["caption"].strip():
            return bad("bad-value", "'caption' is empty")
        # label: whether an event is described (toy rows carry anomaly_type; reports only)
        atype = obj.get("anomaly_type")
        label = None if atype is None else "Normal" if atype == "Normal" else "Abnormal"
        return dict(row, caption=obj["caption"], anomaly_type=atype, label=label)
    return _check_rl(obj, row, bad) if kind == "rl" else _check_sft(obj, row, bad, kind == "sft")


def _check_interval(obj: dict, row: dict, bad) -> dict | None:
    """start/end of an abnormal SFT row: integer frame indices, 0 <= start < end <= total."""
    total = row["total_frames"]
    miss = [f for f in SFT_INTERVAL_FIELDS if f not in obj]
    if miss:
        return bad("missing-field", "abnormal row without " + ", ".join(repr(f) for f in miss))
    s, e = _as_int(obj["start"]), _as_int(obj["end"])
    if s is None or e is None:
        return bad("bad-value", "'start'/'end' must be integer frame indices, got "
                   f"{obj['start']!r}, {obj['end']!r}")
    if s >= e:
        return bad("bad-interval", f"start {s} >= end {e}")
    if s < 0 or e > total:
        return bad("interval-out-of-range",
                   f"[start, end] = [{s}, {e}] is not inside [0, total_frames={total}]")
    # <when> is this pair, fractions rounded to 3 places (docs/paper-vs-authors.md s.1, s.3)
    row.update(start=s, end=e, when=(round(s / total, 3), round(e / total, 3)))
    return row


def _check_sft(obj: dict, row: dict, bad, layout: bool = True) -> dict | None:
    """An SFT row; layout=False (kind 'gt', scoring's ground truth) skips the checks of the
    think/answer layout: a reference text is graded by the text metrics, never parsed."""
    total, atype = _as_int(obj["total_frames"]), obj["anomaly_type"]
    if total is None or not 0 < total <= MAX_TOTAL_FRAMES:
        return bad("bad-value", "'total_frames' must be a positive integer up to "
                   f"{MAX_TOTAL_FRAMES:,} (MAX_TOTAL_FRAMES), got {obj['total_frames']!r:.60}")
    # normalize_category merges the 5 spelling variants (docs/paper-vs-authors.md s.1)
    normal = atype.strip().lower() == "normal"
    category = "Normal" if normal else vadr.normalize_category(atype)
    if category is None:
        return bad("unknown-category",
                   f"anomaly_type {atype!r} is not one of the 37 categories (or Normal)")
    label = "Normal" if normal else "Abnormal"
    row.update(anomaly_type=category, label=label, total_frames=total, think=obj["think"],
               answer=obj["answer"], when=None)
    if not normal and _check_interval(obj, row, bad) is None:
        return None
    if not layout:
        return row
    # SFT trains on think + "\n" + answer (docs/paper-vs-authors.md s.2): check that whole text.
    text, layout = row["think"] + "\n" + row["answer"], "normal" if normal else "abnormal"
    got = vadr.check_format(text)
    if got is None:
        return bad("bad-format", diagnose_format(text, layout))
    if got != layout:
        return bad("label-mismatch", f"anomaly_type {atype!r} needs the {layout} layout, the "
                   f"text has the {got} layout")
    if not normal:
        when, want = vadr.parse_completion(row["answer"])["when"], row["when"]
        if when is None or abs(when[0] - want[0]) > 1e-9 or abs(when[1] - want[1]) > 1e-9:
            return bad("when-mismatch",
                       f"<when> is {when} but start/end/total_frames give {list(want)}")
    return row


def _binary_label(text: str) -> str | None:
    """vadr.weak_label, but a category name is refused: RL rows carry the binary label (s.1)."""
    plain = vadr.strip_tags(text).strip().rstrip(".")
    return None if vadr.normalize_category(plain) else vadr.weak_label(text)


def _check_rl(obj: dict, row: dict, bad) -> dict | None:
    atype, sol = obj["anomaly_type"], obj["solution"]
    label, sol_label = _binary_label(atype), _binary_label(sol)
    if label is None:
        return bad("bad-value", f"RL anomaly_type must be 'Abnormal' or 'Normal', got {atype!r}")
    if sol_label is None:
        return bad("bad-value",
                   f"'solution' must be the weak label Abnormal or Normal, got {sol!r:.60}")
    if sol_label != label:
        return bad("label-mismatch", f"solution {sol!r} disagrees with anomaly_type {atype!r}")
    if obj["data_type"] != "video":
        return bad("bad-value", f"'data_type' must be 'video', got {obj['data_type']!r}")
    row.update(anomaly_type=label, label=label, data_type="video", solution=sol)
    return row


def _find_video(row: dict, video_root, mdir: str, check: bool, probe: bool, bad) -> str | None:
    """The row's video; with check, reported through bad if missing, ambiguous, unreadable or
    empty; probe also decodes the first and last frames through vadr.read_video (the training
    path) and checks the frame count against total_frames (ms per video)."""
    args = (row["source"], row["video"], row["path"], video_root, mdir)
    if not check:  # the best guess, for callers that only read text
        return video_candidates(*args)[0]
    found, cands, others = resolve_video(*args)
    if found is None:
        bad("missing-video", f"video {row['video']!r} (source {row['source']!r}) not found; "
            "tried: " + ", ".join(cands))
    elif others:
        bad("ambiguous-video", f"video {row['video']!r} matches different files: "
            + ", ".join([found] + others) + "; keep one or pass a --video-root that holds one")
    elif not os.access(found, os.R_OK):
        bad("unreadable-video", f"{found}: not readable (permissions)")
    elif os.path.getsize(found) == 0:
        bad("unreadable-video", f"{found}: empty file")
    elif probe:
        try:
            vadr.read_video(found, num_frames=2, expect_frames=row.get("total_frames"))
        except vadr.VideoError as e:
            bad(e.reason, f"{found}: {e.why}")
    return found


def line_text(raw: bytes, lineno: int) -> str:
    """One physical line of a JSONL file as text: UTF-8, and a byte-order mark on line 1 is not
    data (Windows editors write one). The one decoding rule of every JSONL reader here (manifests,
    ground truth, predictions); UnicodeDecodeError for bytes that are not UTF-8."""
    return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")


def read_lines(path: str, what: str = "manifest", max_chars: int | None = MAX_ROW_CHARS,
               bad_utf8: str = "raise"):
    """(line number, text, raw bytes) per physical line of a JSONL file (what: 'manifest', 'log',
    ... for the messages), decoded by line_text; text and raw None for a line over max_chars,
    which is read in pieces of 4 * max_chars + 2 bytes (UTF-8 spends at most 4 on a character),
    never whole (max_chars None: no bound). vadr.InputError for a file that cannot be read, and
    for a line that is not UTF-8 (bad_utf8 'yield': text None, raw kept, for the caller to
    judge)."""
    if not os.path.isfile(path):  # missing, a directory, a device (/dev/zero would never end)
        why = "is a directory" if os.path.isdir(path) else (
            "not a regular file" if os.path.exists(path) else "not found")
        raise vadr.InputError(f"cannot read {what} {path}: {why}")
    try:
        f = open(path, "rb")
    except OSError as e:  # no permission
        raise vadr.InputError(f"cannot read {what} {path}: {e.strerror}") from None
    limit = 4 * max_chars + 2 if max_chars else -1
    with f:
        for lineno, raw in enumerate(iter(lambda: f.readline(limit), b""), 1):
            if len(raw) == limit and not raw.endswith(b"\n"):
                while (more := f.readline(limit)) and not more.endswith(b"\n"):
                    pass
                yield lineno, None, None
                continue
            try:
                text = line_text(raw, lineno)
            except UnicodeDecodeError as e:
                if bad_utf8 == "yield":
                    yield lineno, None, raw
                    continue
                raise vadr.InputError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} "
                                      f"at byte {e.start + 1} of the line); re-encode the {what} "
                                      "as UTF-8 (e.g. iconv -t UTF-8)") from None
            if max_chars and len(text.rstrip("\r\n")) > max_chars:
                yield lineno, None, None
            else:
                yield lineno, text, raw


def read_jsonl(path: str, what: str = "manifest", max_chars: int | None = MAX_ROW_CHARS,
               bad_utf8: str = "raise"):
    """The one JSONL reader (manifests, ground truth, predictions, box and score files, training
    logs): (line number, value, problem, text, raw, torn) per non-blank line of read_lines.
    value is the parsed JSON when problem is None; else problem is (reason, detail) with reason
    'row-too-long', 'bad-json' or (bad_utf8 'yield') 'not-utf8'. torn: the last line, without its
    newline (a write cut short by a kill); each caller says what it accepts and words the error
    for its file."""
    for lineno, text, raw in read_lines(path, what, max_chars, bad_utf8):
        torn = raw is not None and not raw.endswith(b"\n")
        if text is None:
            problem = (("not-utf8", "not UTF-8 text") if raw is not None else
                       ("row-too-long", f"more than {max_chars} characters (MAX_ROW_CHARS)"))
            yield lineno, None, problem, None, raw, torn
            continue
        if not text.strip():
            continue
        try:
            yield lineno, json.loads(text), None, text, raw, torn
        except json.JSONDecodeError as e:
            yield lineno, None, ("bad-json", f"not valid JSON ({e.msg}, column {e.colno})"), text, raw, torn
        except (ValueError, RecursionError) as e:  # a 5000-digit int, nesting 10^4 deep
            yield (lineno, None, ("bad-json", f"not readable JSON ({type(e).__name__}: {e!s:.80})"),
                   text, raw, torn)


def check_manifest(path: str, kind: str = "sft", video_root: str | None = None,
                   check_videos: bool = True, probe_videos: bool = False):
    """Validate every row of a manifest in one pass. -> (rows, problems): the good rows
    (normalised dicts, see read_manifest) and [(line, reason, detail)] for every problem, in
    file order. Never raises for a bad row (vadr.InputError: see read_lines). Blank lines are
    skipped; line numbers are physical, 1-based. A second row for a (source, video) is a
    duplicate-video; one video file reached from rows of other ids with another anomaly_type
    (label or category) is a conflicting-video. kind 'gt' (scoring's ground truth): SFT rows
    without the think/answer layout checks (_check_sft)."""
    if kind not in ("sft", "rl", "caption", "gt"):
        raise ValueError(f"kind must be 'sft', 'rl', 'caption' or 'gt', got {kind!r}")
    mdir = os.path.dirname(os.path.abspath(path))
    rows, problems, seen, files, lineno = [], [], {}, {}, 0

    def bad(reason, detail):  # returns None, so `return bad(...)` rejects the row
        assert reason in REASONS, reason
        problems.append((lineno, reason, detail))

    for lineno, value, problem, *_ in read_jsonl(path):
        n_problems = len(problems)
        row = bad(*problem) if problem else _check_row(value, kind, bad)
        key = row and (row["source"], row["video"])
        if key in seen:
            row = bad("duplicate-video", f"source {key[0]!r} video {key[1]!r} is also at line "
                      f"{seen[key]}; each video once per manifest (--skip-bad keeps the first)")
        if row is not None:
            row["video_path"] = _find_video(row, video_root, mdir, check_videos, probe_videos, bad)
            other = files.get(os.path.realpath(row["video_path"] or "")) if check_videos else None
            if other and other["anomaly_type"] != row["anomaly_type"]:
                bad("conflicting-video", f"{row['video_path']} is also the video of {path}:"
                    f"{other['line']} (source {other['source']!r} video {other['video']!r}, "
                    f"{other['anomaly_type']}), here {row['anomaly_type']}; one file cannot be "
                    "both: fix the row's path or --video-root")
        if len(problems) == n_problems:
            seen[key] = lineno
            rows.append(dict(row, line=lineno))
            if check_videos and row["video_path"]:
                files.setdefault(os.path.realpath(row["video_path"]), rows[-1])
    return rows, problems


def skipped_counts(problems) -> Counter:
    """Rows skipped by reason: each bad row counted once, under its first problem's reason."""
    first = {ln: reason for ln, reason, _ in reversed(problems)}  # reversed: the first one wins
    return Counter(first.values())


def counts_text(counts: Counter) -> str:
    return ", ".join(f"{r}={n}" for r, n in sorted(counts.items()))


def read_manifest(path: str, kind: str = "sft", video_root: str | None = None,
                  skip_bad: bool = False, check_videos: bool = True,
                  probe_videos: bool = False) -> list[dict]:
    """Read and validate a manifest (kind 'sft', 'rl', 'caption': the toy's Toy-Caption.jsonl, or
    'gt': an SFT-test file as eval.py's ground truth, its think/answer layout unchecked):
    one ManifestError listing every problem, or with skip_bad the bad rows dropped and counted
    on stderr. Rows: the schema fields, line, video_path, label ('Abnormal' / 'Normal'), bbox if
    present. SFT: anomaly_type one of the 37 categories or 'Normal'; abnormal rows add start/end
    and when = (round(start/total, 3), round(end/total, 3)), else when = None. RL: anomaly_type
    = label, solution as written. caption: anomaly_type and label as given (None if absent)."""
    rows, problems = check_manifest(path, kind, video_root, check_videos, probe_videos)
    if problems and not skip_bad:
        raise ManifestError(path, problems)
    if counts := skipped_counts(problems):
        print(f"{path}: skipped {sum(counts.values())} bad row(s): " + counts_text(counts),
              file=sys.stderr)
    if not rows:  # every row bad (skip_bad), or an empty file: nothing to train on is an error
        raise ManifestError(path, problems or [(0, "bad-value", "the manifest holds no rows")])
    return rows


def read_length_manifest(path: str, skip_bad: bool = False) -> list[dict]:
    """--length-ranges-from: the SFT manifest whose reasoning lengths give the length reward's
    ranges (App. C.2; length_ranges), read and checked as read_manifest
    reads it (its videos need not be there). A file with no think text (the RL manifest) or
    without rows of both classes is one InputError naming it: its ranges would be (0, 0) or
    missing, and the length reward would never pay."""
    what = ("pass the SFT manifest (Vad-Reasoning-SFT-train.jsonl), whose reasoning lengths give "
            "the ranges")
    if not os.path.isfile(path):
        why = "is a directory" if os.path.isdir(path) else (
            "is not a regular file" if os.path.exists(path) else "does not exist")
        raise vadr.InputError(f"--length-ranges-from {path} {why}; {what}")
    rows, problems = check_manifest(path, "sft", check_videos=False)
    if not rows and problems and all(r == "missing-field" and "'think'" in d
                                     for _, r, d in problems):
        raise vadr.InputError(f"--length-ranges-from {path}: its rows have no think text (an RL "
                              f"manifest?); {what}")
    if problems and not skip_bad:
        raise ManifestError(path, problems)
    if problems:
        print(f"{path}: skipped {len({p[0] for p in problems})} bad row(s): "
              + counts_text(skipped_counts(problems)), file=sys.stderr)
    missing = [c for c in ("Normal", "Abnormal") if not any(r["label"] == c for r in rows)]
    if missing:
        raise vadr.InputError(f"--length-ranges-from {path}: no {' and no '.join(missing)} row "
                              f"(the length reward needs a range for each); {what}")
    return rows


def length_ranges(rows: list[dict]) -> dict:
    """{'Normal': (min, max), 'Abnormal': (min, max)}: words of think + answer without tags
    (vadr.count_words) in any SFT manifest, the statistic the paper's length-reward ranges
    come from (App. C.2; docs/paper-vs-authors.md s.1)."""
    n = {label: [vadr.count_words(r["think"] + " " + r["answer"]) for r in rows
                 if r["label"] == label] for label in ("Normal", "Abnormal")}
    return {label: (min(v), max(v)) for label, v in n.items() if v}


# ---- 2. torch Datasets and collate (decoding in __getitem__, so DataLoader workers decode) ------

class SFTDataset(torch.utils.data.Dataset):
    """One item per SFT row: dict(video=vadr.encode_video(...), prompt, target, row).
    target = think + "\\n" + answer (docs/paper-vs-authors.md s.2). prompt_variant 'fine' asks
    for the fine-grained category in <which>, which is what the SFT answers hold (App. C.1)."""
    target_fields = ("think", "answer")

    def __init__(self, rows: list[dict], prompt_variant: str = "fine", cache_videos: bool = False,
                 **video):
        missing = [r.get("line") for r in rows if any(k not in r for k in self.target_fields)]
        if missing:
            raise ValueError(f"{type(self).__name__} needs rows with {'/'.join(self.target_fields)}"
                             f"; rows at lines {missing[:10]} have none")
        # video: vadr.encode_video's keywords (num_frames, min/max_pixels, frame_rule, grid_time)
        self.rows, self.prompt, self.video_args = rows, vadr.build_prompt(prompt_variant), video
        # cache_videos: each video decoded once, for many epochs over a small set (the toy SFT);
        # per process, so each DataLoader worker keeps its own
        self.cache = {} if cache_videos else None

    def __len__(self):
        return len(self.rows)

    def video(self, i: int) -> dict:
        """Row i's video, encoded by vadr.encode_video (or from the cache)."""
        video = self.cache.get(i) if self.cache is not None else None
        if video is None:
            row = self.rows[i]  # total_frames (SFT rows): a video far shorter is an error
            video = vadr.encode_video(row["video_path"], expect_frames=row.get("total_frames"),
                                      **self.video_args)
            if self.cache is not None:
                self.cache[i] = video
        return video

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return dict(video=self.video(i), prompt=self.prompt, target=self.target(row), row=row)

    def target(self, row: dict) -> str:
        return row["think"] + "\n" + row["answer"]  # docs/paper-vs-authors.md s.2


class RLDataset(SFTDataset):
    """One item per row: dict(video, prompt, solution, video_path, row). solution = the weak
    label 'Abnormal' / 'Normal', which the accuracy reward compares <which> with (the 'binary'
    prompt asks for exactly that; docs/paper-vs-authors.md s.2). SFT rows work too."""
    target_fields = ()

    def __init__(self, rows: list[dict], prompt_variant: str = "binary", **video_args):
        super().__init__(rows, prompt_variant, **video_args)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        # video_path travels with the item: AVA-GRPO re-reads the file with a kept window (Alg. 1)
        return dict(video=self.video(i), prompt=self.prompt, solution=row["label"],
                    video_path=row["video_path"], row=row)


def collate_batch(items: list[dict], tokenizer, system: str = vadr.DEFAULT_SYSTEM_PROMPT,
                  with_targets: bool = True) -> dict:
    """Items of SFTDataset / RLDataset -> one batch dict:
    input_ids, attention_mask, mm_token_type_ids (B, L) [+ labels (B, L) with targets]
    pixel_values_videos (sum N_i, 1176), video_grid_thw (B, 3), second_per_grid_ts (B,), rows."""
    videos = vadr.collate_videos([it["video"] for it in items])
    if with_targets and any("target" not in it for it in items):
        raise ValueError("with_targets=True needs items with a 'target' (use SFTDataset)")
    targets = [it["target"] for it in items] if with_targets else None
    chat = vadr.build_chat_inputs(tokenizer, [it["prompt"] for it in items],
                                  videos["video_grid_thw"], system=system, targets=targets)
    return {**chat, **videos, "rows": [it["row"] for it in items]}


def make_collate(tokenizer, system: str = vadr.DEFAULT_SYSTEM_PROMPT, *, with_targets: bool):
    """A collate_fn for DataLoader. A functools.partial of a module-level function (not a
    closure) so that it pickles into DataLoader workers under any start method."""
    return functools.partial(collate_batch, tokenizer=tokenizer, system=system,
                             with_targets=with_targets)
