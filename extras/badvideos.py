"""extras/badvideos.py -- --skip-bad at decode time: a video that fails mid-run (vadr.VideoError:
missing, corrupt, truncated, a size decord cannot convert, a frame count far from its row's) is
skipped and counted instead of stopping a day-long run; without --skip-bad the run stops with one
line naming the file and the manifest line.

Not part of the method. Videos decode in DataLoader workers, where an exception would reach the
main process wrapped in another one, traceback text and all; so SkipBadVideos never raises for a
bad video: it hands on a marker, collate sets it aside, and the main process (Tally.note) decides.
  * Training (replace=True, with --skip-bad): the bad row's item is replaced by the next row of
    the manifest whose video decodes. Every rank keeps a full batch, so no rank runs a step with
    fewer videos, or none, while the others wait in DDP/FSDP collectives; and the replacement is
    deterministic, so a resumed run replays the same batches (checkpoint.py's guarantee).
  * Eval (replace=False): the marker comes through as a failed row; eval.py writes a prediction
    row with an "error" field for it, scored as missing and counted, never silently dropped.
Commands that decode outside a DataLoader and have no --skip-bad at decode time (extras.vanguard,
extras.rewardcheck, extras.toy caption-check) decode `with at_line(manifest, row)`: a bad video is
then one line naming the manifest's file:line as well as the video.
Exercised by: pytest tests/test_bad_input_data.py tests/test_bad_input_files.py -q
"""
from __future__ import annotations

import contextlib
import functools
import sys

import torch

import vadr


class SkipBadVideos(torch.utils.data.Dataset):
    """ds[i] (a data.SFTDataset or subclass), plus 'bad_videos': [(row, error)] skipped on the
    way. A bad video gives dict(row, bad_videos, failed=True), unless replace: then the next rows
    (i+1, i+2, ... wrapping) are tried, and only a manifest of which none decodes fails."""

    def __init__(self, ds, replace: bool):
        self.ds, self.replace, self.rows = ds, replace, ds.rows

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        bad = []
        for k in range(len(self.ds) if self.replace else 1):
            j = (i + k) % len(self.ds)
            try:
                return dict(self.ds[j], bad_videos=bad)
            except vadr.VideoError as e:
                bad.append((self.rows[j], str(e)))
        return dict(row=self.rows[i], bad_videos=bad, failed=True)


def _collate(items: list[dict], inner) -> dict:
    good = [it for it in items if not it.get("failed")]
    batch = inner(good) if good else {"rows": []}
    return dict(batch, bad_videos=[b for it in items for b in it["bad_videos"]],
                failed_rows=[it["row"] for it in items if it.get("failed")])


def make_collate(inner):
    """inner (data.make_collate's) over the good items; adds bad_videos and failed_rows. A
    partial of a module-level function, so it pickles into DataLoader workers."""
    return functools.partial(_collate, inner=inner)


class Tally:
    """The main process's count of the bad videos met at decode time, for one manifest."""

    def __init__(self, manifest: str, skip_bad: bool):
        self.manifest, self.skip_bad, self.seen, self.uses = manifest, skip_bad, {}, 0

    def note(self, batch: dict, replace: bool = True) -> dict:
        """Count the batch's bad videos (each printed once to stderr), or without --skip-bad stop
        at the first with vadr.InputError naming file and manifest line. -> the batch. replace
        (training): a failed row means no video of the manifest decodes, an error; otherwise
        (eval) the failed rows stay in batch["failed_rows"]."""
        for row, err in batch.pop("bad_videos"):
            self.skip(row, err)
            self.uses += 1
        if replace and batch.pop("failed_rows"):
            raise vadr.InputError(f"{self.manifest}: no row has a video that decodes")
        return batch

    def skip(self, row: dict, err: str):
        where = f"{self.manifest}:{row.get('line')}"
        if not self.skip_bad:
            raise vadr.InputError(f"{where}: {err} (pass --skip-bad to skip and count bad videos)")
        if row.get("line") not in self.seen:
            print(f"--skip-bad: skipped {where}: {err}", file=sys.stderr)
        self.seen[row.get("line")] = err

    def report(self, what: str = "replaced by the next readable row") -> int:
        """Every rank calls this at the end (it gathers); rank 0 prints the total. -> the number
        of distinct bad videos over all ranks."""
        seen = {}
        for part in vadr.gather_objects(self.seen):
            seen.update(part)
        uses = sum(vadr.gather_objects(self.uses))
        if self.skip_bad and vadr.is_main():
            lines = ", ".join(str(ln) for ln in sorted(seen, key=str)[:20])
            print(f"--skip-bad: {len(seen)} bad video(s) at decode time in {self.manifest} "
                  f"({uses} use(s), {what})" + (f"; manifest lines {lines}" if seen else ""),
                  file=sys.stderr)
        return len(seen)


@contextlib.contextmanager
def at_line(manifest: str, row: dict):
    """A vadr.VideoError inside becomes an InputError "MANIFEST:LINE: <the video's error>"."""
    try:
        yield
    except vadr.VideoError as e:
        raise vadr.InputError(f"{manifest}:{row.get('line')}: {e}") from None
