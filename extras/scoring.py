"""extras/scoring.py -- reading and checking the JSONL files that eval.py scores (untrusted input).

Not part of the method: what lets `python eval.py --score preds.jsonl --gt test.jsonl` say which
file and line is wrong instead of a traceback or a silently wrong figure (docs/eval.md
"Matching"). eval.load_jsonl reads with read_jsonl; eval.match_predictions pairs rows with
pair_rows. The rules:
  * a file that is missing, not a regular file, not UTF-8, or holds a line that is not a JSON
    object: InputError "PATH:LINE: ..." (never half-scored), read by data.read_jsonl, the one
    JSONL reader (a byte-order mark on line 1 is not data);
  * a prediction row without a usable `video` (absent, null, not a string or an integer, empty),
    with a `source` that is not a string, or without a string `output`: MALFORMED, counted and
    listed as "PATH:LINE: why", and its video stays missing (so it is counted wrong);
  * two prediction rows for one GT video: the same output -> counted once (n_duplicate_pred);
    different outputs -> InputError naming both lines (which one to score is not ours to guess);
  * the ground truth (read_gt) gets a training manifest's checks (data.py, kind 'gt'): every
    field, total_frames (positive, bounded), 0 <= start < end <= total_frames, each (source, video)
    once; a bad row is data.ManifestError "PATH:LINE: reason: detail" (--skip-bad: dropped and
    counted); pair_rows still refuses a GT without usable or unique ids passed in directly;
  * a JSON file to read (--report's eval_*.json, a run's run_config.json): read_json_object, and
    a file a command writes (--json, --out): check_output, before any work; a JSON file that is
    missing, a directory, not UTF-8, malformed or not an object, and an output that is a
    directory, one of the inputs or not writable: one-line InputError naming it. Every script and
    extra reads and guards its JSON files with these two; write_json writes --json whole or not
    at all.
Exercised by: pytest tests/test_bad_input_scoring.py tests/test_bad_input_files.py -q
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict

import data
import vadr
from extras.textmetrics import MAX_SCORED_CHARS


def _not_a_file(path: str) -> str:
    return "is a directory" if os.path.isdir(path) else (
        "is not a regular file" if os.path.exists(path) else "does not exist")


def read_jsonl(path: str) -> tuple[list[dict], list[str]]:
    """(rows, "PATH:LINE" of each row) of a JSON Lines file, blank lines skipped; every problem is
    a one-line vadr.InputError naming the file (and line)."""
    if not os.path.isfile(path):  # a device (/dev/zero) would never end
        raise vadr.InputError(f"{path}: {_not_a_file(path)}; expected a JSONL file (one JSON "
                              "object per line)")
    rows, where = [], []
    for lineno, obj, problem, text, _, _ in data.read_jsonl(path, "file", max_chars=None):
        if problem:  # bad JSON: the line itself, cut, shows what is wrong
            raise vadr.InputError(f"{path}:{lineno}: {problem[1]}: {text.strip()[:120]!r}")
        if not isinstance(obj, dict):
            raise vadr.InputError(f"{path}:{lineno}: expected a JSON object, got "
                                  f"{type(obj).__name__}")
        rows.append(obj)
        where.append(f"{path}:{lineno}")
    return rows, where


def read_gt(path: str, skip_bad: bool = False) -> tuple[list[dict], list[str]]:
    """(rows as written, "PATH:LINE" of each) of a ground-truth file that passes a manifest's
    checks (data.read_manifest, kind 'gt', videos not looked for): a bad row is a
    data.ManifestError naming PATH:LINE, or with skip_bad it is dropped and counted on stderr.
    The rows stay as written (anomaly_type not normalised: category accuracy compares it)."""
    good = {r["line"] for r in data.read_manifest(path, "gt", skip_bad=skip_bad,
                                                  check_videos=False)}
    rows, where = [], []
    for lineno, obj, *_ in data.read_jsonl(path, "ground truth"):
        if lineno in good:
            rows.append(obj)
            where.append(f"{path}:{lineno}")
    return rows, where


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in `path` (what: what it should be, for the message), decoded by
    data.line_text (UTF-8, a byte-order mark is not data). A missing file, a directory or device,
    an unreadable file, bytes that are not UTF-8, malformed JSON (with its line and column), nesting
    too deep, or another JSON value: one vadr.InputError naming it."""
    if not os.path.isfile(path):  # a device (/dev/zero) would never end
        raise vadr.InputError(f"{path}: {_not_a_file(path)}; expected {what}")
    try:
        with open(path, "rb") as f:
            obj = json.loads(data.line_text(f.read(), 1))
    except OSError as e:
        raise vadr.InputError(f"{path}: cannot read it ({e.strerror}); expected {what}") from None
    except UnicodeDecodeError:
        raise vadr.InputError(f"{path}: not UTF-8; expected {what}") from None
    except json.JSONDecodeError as e:
        raise vadr.InputError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}); "
                              f"expected {what}") from None
    except RecursionError:
        raise vadr.InputError(f"{path}: JSON nested too deeply; expected {what}") from None
    if not isinstance(obj, dict):
        raise vadr.InputError(f"{path}: expected {what} (a JSON object), got {type(obj).__name__}")
    return obj


def check_writable(path: str, flag: str, script: str, is_dir: bool):
    """The directory `path` (is_dir), or the file `path`'s folder, exists and takes a new entry,
    or can be created. Tried for real (a probe directory made and removed at once) where access()
    would not say: a root user on a read-only mount, /proc, a folder that is a file."""
    folder = path if is_dir else os.path.dirname(os.path.abspath(path))
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):  # the nearest existing ancestor receives the new folders
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise vadr.InputError(f"{script}: {flag} {path}: {probe} is a file, not a directory; "
                              f"pass another {flag}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".vadr-write-probe-", dir=probe))
    except OSError as e:
        raise vadr.InputError(f"{script}: {flag} {path}: cannot write in {probe} "
                              f"({e.strerror}); pass a writable {flag}") from None


def check_output(prog: str, flag: str, path: str | None, inputs: dict, is_dir: bool = False):
    """Before any work: the file (or, is_dir, the folder) `path` that `flag` names will be
    written, so a file must not be a directory, it must not be one of the command's inputs
    ({flag: path}; the same name, even before it exists, or the same file by another name), and
    it must be writable (check_writable). No path: nothing to check."""
    if not path:
        return
    if not is_dir and os.path.isdir(path):
        raise vadr.InputError(f"{prog}: {flag} {path} is a directory; pass a file name")
    for other, p in inputs.items():
        if p and (os.path.realpath(p) == os.path.realpath(path) or (
                os.path.exists(p) and os.path.exists(path) and os.path.samefile(p, path))):
            raise vadr.InputError(f"{prog}: {flag} {path} is also {other} {p}, which it would "
                                  f"replace; pass another {flag}")
    check_writable(path, flag, prog, is_dir=is_dir)


def key_problem(row: dict) -> str | None:
    """Why (source, video) of a row is unusable, else None. video: a non-empty string or an
    integer (ids like 2 match "2"); source: absent (match by video alone) or a string."""
    v, s = row.get("video"), row.get("source", "")
    if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
        return f"'video' must be a non-empty string, got {v!r:.60}"
    if not isinstance(s, str):
        return f"'source' must be a string, got {s!r:.60}"
    return None


def key(row: dict) -> tuple[str, str]:
    return (str(row.get("source", "")).strip(), str(row.get("video", "")).strip())


def pair_rows(pred_rows: list[dict], gt_rows: list[dict], pred_where: list[str],
              gt_where: list[str]) -> dict:
    """eval.match_predictions' work (its docstring has the contract; the rules: this module's)."""
    by_key, first_at, by_video = {}, {}, defaultdict(list)
    for i, g in enumerate(gt_rows):
        why = key_problem(g)
        if why:
            raise vadr.InputError(f"{gt_where[i]}: ground-truth row: {why}")
        k = key(g)
        if k in by_key:
            raise vadr.InputError(f"{gt_where[i]}: ground truth repeats source={k[0]!r} "
                                  f"video={k[1]!r} (first at {gt_where[by_key[k]]}); each video "
                                  f"must appear once: remove one of the two rows")
        by_key[k] = i
        by_video[k[1]].append(i)
    got, unknown, malformed, dup = {}, [], [], 0
    for n, p in enumerate(pred_rows):
        out = p.get("output")
        why = key_problem(p) or (None if isinstance(out, str) else
                                 "no 'output'" if "output" not in p else
                                 f"'output' must be a string, got {type(out).__name__}")
        if why:
            malformed.append(f"{pred_where[n]}: {why}")
            continue
        k = key(p)
        gi = by_key.get(k)
        if gi is None and len(by_video.get(k[1], [])) == 1:
            gi = by_video[k[1]][0]
        if gi is None:
            unknown.append(f"{k[0]}/{k[1]}")
            continue
        if gi in got:
            if got[gi] != out:
                gk = "/".join(key(gt_rows[gi]))
                raise vadr.InputError(f"{pred_where[n]}: a second prediction for {gk} with a "
                                      f"different output (first at {pred_where[first_at[gi]]});"
                                      f" keep one row per video")
            dup += 1
            continue
        got[gi], first_at[gi] = out, n
    matched = [(i, got[i]) for i in range(len(gt_rows)) if i in got]
    missing = ["/".join(key(g)) for i, g in enumerate(gt_rows) if i not in got]
    return {"matched": matched, "unknown": unknown, "duplicates": dup, "missing": missing,
            "malformed": malformed}


def warnings(metrics: dict, fmt) -> list[str]:
    """The lines paper_tables.format_report prints under the tables when rows were ignored, missing,
    repeated or cut (fmt: extras/metrics.fmt, as eval.py passes it)."""
    c, u, r = metrics["counts"], metrics["unmatched"], metrics["reasoning"]
    out = []
    if c["n_unknown_pred"]:
        out.append(f"WARNING: {c['n_unknown_pred']} prediction rows name videos not in the GT "
                   f"(ignored), e.g. {u['unknown_pred'][:5]}")
    if c["n_missing"]:
        dm = metrics["detection_matched_only"]
        out.append(f"WARNING: {c['n_missing']} of {c['n_gt']} GT videos have no usable "
                   f"prediction, counted WRONG in every figure above (no label, IoU 0, text 0), "
                   f"e.g. {u['missing'][:5]}; skipping them as the authors do: acc "
                   f"{fmt(dm['accuracy'])}, F1 {fmt(dm['f1'])}, mIoU {fmt(dm['miou'])} "
                   f"(detection_matched_only)")
    if c["n_malformed_pred"]:
        out.append(f"WARNING: {c['n_malformed_pred']} prediction rows are malformed (ignored, "
                   f"their videos missing), e.g. {u['malformed'][:3]}")
    if c["n_duplicate_pred"]:
        out.append(f"NOTE: {c['n_duplicate_pred']} repeated prediction rows with the same output "
                   f"(counted once)")
    if r["n_truncated"]:
        out.append(f"NOTE: {r['n_truncated']} outputs are longer than {MAX_SCORED_CHARS} "
                   f"characters: the text metrics score their beginning (docs/eval.md)")
    return out


def write_json(path: str, obj):
    """--json, whole or not at all (a temporary file renamed into place)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        os.replace(path + ".tmp", path)
    except OSError as e:  # a folder that is a file, no permission, a full disk
        raise vadr.InputError(f"--json {path}: cannot write it ({e.strerror}); pass another "
                              "--json") from None
