"""extras/validate.py -- the command line that validates one Vad-Reasoning manifest (data.py).

Not part of the method: data.read_manifest run alone, before a training run, with its problems
(`file:line: reason: detail`) and the counts by reason on stderr and exit 1, or the good rows'
labels, sources, categories and reasoning-length ranges (data.length_ranges).
    python -m extras.validate --manifest Vad-Reasoning-SFT-train.jsonl --kind sft --video-root R
    python -m extras.validate --manifest data/toy/Vad-Reasoning-RL.jsonl --kind rl --skip-bad
Exercised by: pytest tests/test_bad_input_data.py -q
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import data
import vadr


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m extras.validate", description="validate a "
                                 "manifest; list every problem with file:line")
    ap.add_argument("--manifest", required=True, help="a Vad-Reasoning .jsonl file")
    ap.add_argument("--kind", choices=("sft", "rl"), required=True,
                    help="sft (CoT rows) or rl (weak labels)")
    ap.add_argument("--video-root", default=None,
                    help="folder to resolve videos in (the order: data.video_candidates)")
    ap.add_argument("--skip-bad", action="store_true",
                    help="drop bad rows and count them instead of failing")
    ap.add_argument("--no-check-videos", action="store_true", help="do not look for the videos")
    ap.add_argument("--probe", action="store_true", help="also decode every video's first and "
                    "last frames and compare its frame count with total_frames (vadr.FRAME_SLACK)")
    a = ap.parse_args(argv)
    try:
        rows = data.read_manifest(a.manifest, a.kind, a.video_root, skip_bad=a.skip_bad,
                                  check_videos=not a.no_check_videos, probe_videos=a.probe)
    except data.ManifestError as e:
        print(str(e), file=sys.stderr)
        print("bad rows by reason: " + data.counts_text(data.skipped_counts(e.problems)),
              file=sys.stderr)
        sys.exit(1)
    labels, sources = Counter(r["label"] for r in rows), Counter(r["source"] for r in rows)
    print(f"{a.manifest}: {len(rows)} good rows; labels {dict(labels)}; sources {dict(sources)}")
    if a.kind == "sft":
        print(f"categories: {dict(Counter(r['anomaly_type'] for r in rows).most_common())}")
        print(f"reasoning length ranges (words, tags stripped): {data.length_ranges(rows)}")


if __name__ == "__main__":
    vadr.run_main(main)
