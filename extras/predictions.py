"""extras/predictions.py -- resumable, sharded prediction files for eval.py's inference.

Not part of the method: what lets `python eval.py --model DIR --data test.jsonl --out preds.jsonl`
be killed and rerun (rows already in --out are skipped), and run under torchrun
(`torchrun --nproc_per_node N eval.py --model ...`: each rank writes <out>.rank<r> for its
strided shard and rank 0 merges them in manifest order at the end).
Exercised by: pytest tests/test_eval_inference.py -q
"""
from __future__ import annotations

import json
import os
import sys

import vadr


PREDICTION_KEYS = ("source", "video", "output")  # what run_inference writes on every row


def _torn_row(raw: bytes) -> bool:
    """Whether unterminated text is the start of a row as run_inference writes them (json.dumps
    of a dict whose first key is source): a torn write, not a file that is not ours (a video
    or any other file without newlines is one long 'last line')."""
    head = b'{"source": '
    return raw.startswith(head) or head.startswith(raw)


def check_predictions_file(path: str) -> list[dict]:
    """The rows of an existing --out, which inference will append to: every line must be one of
    ours (a JSON object with source, video and output), else a vadr.InputError naming path:line,
    and the file is left as it is (it may be the user's manifest, or another tool's output).
    The one exception is a torn last line without its newline (a run killed mid-write, so the
    start of one of our rows): it is left out of the rows, and done_keys drops it. Blank lines
    are skipped."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    rows = []
    for n, raw in enumerate(lines, 1):
        last = n == len(lines)  # the text after the final newline: b"" or a torn write
        if not raw.strip():
            continue
        try:
            r = json.loads(raw.decode("utf-8"))
            ok = isinstance(r, dict) and all(k in r for k in PREDICTION_KEYS)
        except (UnicodeDecodeError, json.JSONDecodeError):
            r, ok = None, False
        if ok:
            rows.append(r)
        elif not (last and r is None and _torn_row(raw)):
            raise vadr.InputError(
                f"{path}:{n}: not a predictions row (a JSON object with "
                f"{', '.join(PREDICTION_KEYS)}), so --out is not a predictions file to resume; "
                "it was left untouched: pass a new --out")
    return rows


def done_keys(path: str) -> set:
    """(source, video) of the rows already written: a crash loses at most the batch in flight.
    A file that is not ours is refused untouched (check_predictions_file); a torn last line
    (killed mid-write) is dropped, the only change ever made to the file here."""
    if not os.path.isfile(path):
        return set()
    rows = check_predictions_file(path)
    with open(path, "rb") as f:
        text = f.read()
    if text and not text.endswith(b"\n"):  # a last line without its newline
        head, _, tail = text.rpartition(b"\n")
        whole = head + b"\n" if head else b""
        try:  # a complete row whose newline was lost keeps it; a torn one goes
            json.loads(tail.decode("utf-8"))
            whole += tail + b"\n"
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        with open(path + ".tmp", "wb") as f:
            f.write(whole)
        os.replace(path + ".tmp", path)
    return {(str(r["source"]), str(r["video"])) for r in rows}


def merge_rank_files(out: str, rows: list[dict], world: int, read_jsonl):
    """Rank 0, after the barrier: <out> and every <out>.rank<r> -> <out> in manifest order.
    read_jsonl is eval.load_jsonl (file:line errors), passed in because extras never import
    the entry scripts."""
    by_key = {}
    for src in [out] + [f"{out}.rank{r}" for r in range(world)]:
        if os.path.isfile(src):
            for r in read_jsonl(src):
                by_key[(str(r["source"]), str(r["video"]))] = r
    with open(out + ".tmp", "w") as f:
        for r in rows:
            k = (str(r["source"]), str(r["video"]))
            if k in by_key:
                f.write(json.dumps(by_key[k], ensure_ascii=False) + "\n")
    os.replace(out + ".tmp", out)
    for r in range(world):
        if os.path.isfile(f"{out}.rank{r}"):
            os.remove(f"{out}.rank{r}")


def unique_gt(path: str, rows: list[dict], key, skip_bad: bool) -> list[dict]:
    """Ground-truth rows (eval.load_jsonl's, file order) with each key(row) = (source, video)
    once: a repeat is a vadr.InputError naming both lines of `path`, or with skip_bad the later
    row is dropped and counted on stderr (data.check_manifest's rule for training manifests)."""
    with open(path, encoding="utf-8") as f:  # the physical line of each row (blank lines skipped)
        lines = [n for n, text in enumerate(f, 1) if text.strip()]
    first, keep, dropped = {}, [], []
    for n, r in zip(lines, rows):
        k = key(r)
        if k not in first:
            first[k] = n
            keep.append(r)
            continue
        msg = (f"{path}:{n}: duplicate-video: source {k[0]!r} video {k[1]!r} is also at line "
               f"{first[k]}")
        if not skip_bad:
            raise vadr.InputError(msg + " (the ground truth names each video once; --skip-bad "
                                  "keeps the first)")
        dropped.append(msg)
    if dropped:
        print(f"{path}: skipped {len(dropped)} duplicate GT row(s) (--skip-bad): {dropped[0]}",
              file=sys.stderr)
    return keep
