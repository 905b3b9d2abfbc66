"""extras/predictions.py -- resumable, sharded prediction files for eval.py's inference.

Not part of the method: what lets `python eval.py --model DIR --data test.jsonl --out preds.jsonl`
be killed and rerun (rows already in --out are skipped), and run under torchrun
(`torchrun --nproc_per_node N eval.py --model ...`: each rank writes <out>.rank<r> for its
strided shard and rank 0 merges them in manifest order at the end).
A resume must be the same run: <out>.meta.json (a sidecar, so the JSONL keeps the authors' row
layout) records which model and settings write <out> (run_meta), and check_resume refuses rows
written by anything else, or rows without that record, before a row is added.
Exercised by: pytest tests/test_eval_inference.py -q
"""
from __future__ import annotations

import hashlib
import json
import os

import data
import vadr
from extras import checkpoint


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
    rows = []
    for n, r, problem, _, raw, torn in data.read_jsonl(path, "predictions file", max_chars=None,
                                                       bad_utf8="yield"):
        if problem is None and isinstance(r, dict) and all(k in r for k in PREDICTION_KEYS):
            rows.append(r)
        elif not (torn and problem and _torn_row(raw)):
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
            json.loads(data.line_text(tail, text.count(b"\n") + 1))
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


META_VERSION = 1
# What defines a run's outputs besides the model and the data (eval.py's flags): a change to any of
# these makes the rows already written another run's. --limit, --batch-size, --num-workers,
# --device and --skip-bad may change on resume.
META_SETTINGS = ("frames", "min_pixels", "max_pixels", "frame_rule", "grid_time", "prompt_variant",
                 "max_new_tokens", "sample", "temperature", "top_p", "seed")


def meta_path(out: str) -> str:
    return out + ".meta.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model: str) -> dict:
    """'toy', or the checkpoint directory the loader reads (a run directory's `latest`) by its
    real path and each file's size and modification time: another checkpoint, a later step or a
    run retrained in the same folder all differ, without hashing gigabytes of weights."""
    if model == "toy":
        return {"name": "toy"}
    ckpt = model
    if not os.path.isfile(os.path.join(model, "config.json")):
        ckpt = checkpoint.latest_checkpoint(model) or model
    files = {}
    if os.path.isdir(ckpt):  # else the loader's own error follows
        for n in sorted(os.listdir(ckpt)):
            if os.path.isfile(p := os.path.join(ckpt, n)):
                st = os.stat(p)
                files[n] = [st.st_size, st.st_mtime_ns]
    return {"path": os.path.realpath(ckpt), "files": files}


def run_meta(args) -> dict:
    """The record of what writes --out: the model, the test manifest (real path and content
    hash), --video-root and META_SETTINGS (eval.py's flags after resolve_inference_args)."""
    return {"vadr_predictions": META_VERSION, "model": model_identity(args.model),
            "data": {"path": os.path.realpath(args.data), "sha256": _sha256(args.data)},
            "video_root": args.video_root and os.path.realpath(args.video_root),
            "settings": {k: getattr(args, k) for k in META_SETTINGS}}


def _first_difference(old, new, key: str = ""):
    """(dotted key, old value, new value) of the first difference in new's key order (the
    model's path before its files' times), or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(new) + [k for k in old if k not in new]:
            d = _first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if d:
                return d
        return None
    return None if old == new else (key, old, new)


def check_resume(out: str, meta: dict, world: int = 1) -> None:
    """Before inference loads its model: rows already in --out (or its rank files) must carry
    this run's record meta_path(out), else a vadr.InputError naming the file and what differs,
    and nothing is changed. A record of ours without rows beside it may be replaced
    (write_record, once the model has loaded); one that is not ours is refused."""
    mp = meta_path(out)
    parts = [p for p in [out] + [f"{out}.rank{r}" for r in range(world)] if os.path.isfile(p)]
    n_rows = sum(len(check_predictions_file(p)) for p in parts)
    old = None
    if os.path.lexists(mp):
        try:
            with open(mp, encoding="utf-8") as f:
                old = json.load(f)
            why = "not the record eval.py writes"
        except (OSError, UnicodeDecodeError, ValueError) as e:
            why = f"not readable ({type(e).__name__}: {e!s:.80})"
        if not (isinstance(old, dict) and old.get("vadr_predictions") == META_VERSION):
            raise vadr.InputError(f"{mp}: {why}, so {out} cannot be resumed; it was left "
                                  f"untouched: delete {mp} or pass another --out")
    if n_rows and old is None:
        raise vadr.InputError(f"{out}: holds {n_rows} prediction rows but no {mp} saying which "
                              "model and settings wrote them, so they cannot be resumed: delete "
                              f"{out} or pass another --out")
    diff = _first_difference(old, meta) if n_rows else None
    if diff:
        k, a, b = diff
        raise vadr.InputError(f"{out}: its {n_rows} rows were written by another run ({k} was "
                              f"{json.dumps(a)[:200]}, now {json.dumps(b)[:200]}); resuming would "
                              f"mix two runs: delete {out} and {mp}, or pass another --out")


def write_record(out: str, meta: dict) -> None:
    """meta_path(out), after check_resume and before the first row (atomically: torchrun ranks
    each write the same record)."""
    tmp = f"{meta_path(out)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path(out))


def written_by(out: str) -> str | None:
    """A line naming the model that wrote `out` (from its record), for --score's printout; None
    without a readable record."""
    try:
        with open(meta_path(out), encoding="utf-8") as f:
            rec = json.load(f)
        model = rec["model"].get("path") or rec["model"]["name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return f"NOTE: {out} was written by --model {model} ({meta_path(out)})"
