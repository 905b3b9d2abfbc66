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


def done_keys(path: str) -> set:
    """(source, video) of the rows already written: a crash loses at most the batch in flight.
    A torn last line (killed mid-write) is dropped and rewritten."""
    if not os.path.isfile(path):
        return set()
    good, keys = [], set()
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # only a torn final line can be malformed here (we write whole lines)
            good.append(line if line.endswith("\n") else line + "\n")
            keys.add((str(r.get("source")), str(r.get("video"))))
    with open(path, "w") as f:
        f.writelines(good)
    return keys


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
