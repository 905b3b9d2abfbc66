"""eval.py -- Vad-R1 evaluation: inference over a test set, and the scores of the paper's tables.

Paper: Sec. 4.1 "Evaluation Metrics"; Table 2 (reasoning + detection on the Vad-Reasoning test
set), Table 3 (VANE), Table 4 (training strategies), Tables 9-10 (ablations). Scoring follows the
authors' evaluation scripts (docs/paper-vs-authors.md s.3) and also reports the common
conventions. Every metric is written from its definition: detection, grounding and the frame
scores of a completion here; the binary labels, the GT interval and the frame level's truth,
ROC-AUC and best F1 in extras/metrics.py (extras/vanguard.py shares them), the reasoning-text
metrics in extras/textmetrics.py, VANE in extras/vane.py; nltk, rouge, rouge-score and
scikit-learn are test oracles only (tests/test_eval_metrics.py).

    # inference: checkpoint + test manifest -> JSONL rows {source, video, anomaly_type, output}
    python eval.py --model DIR --data test.jsonl --video-root ROOT --out preds.jsonl
    # scoring: predictions + ground truth -> metrics JSON + tables in Table 2 / Table 4 layout
    python eval.py --score preds.jsonl --gt test.jsonl --json metrics.json [--with-paper]
    python eval.py --mc vane_preds.jsonl --json vane.json          # multiple choice (VANE)
    # the toy pipeline's table.md, curves and frame strips (Makefile; pictures: extras/report.py)
    python eval.py --report runs/toy --data data/toy/Vad-Reasoning-SFT-test.jsonl \
        --video-root data/toy/videos

Inference takes the authors' inference settings for every unset flag (16 frames, 28*28 ..
128*28*28 pixels, 512 new tokens; docs/paper-vs-authors.md s.5) but decodes greedily, a departure
from their temperature-0.1 sampling so that a table is reproducible; `--authors-inference` samples
as they did and refuses any flag that contradicts their settings. A rerun into an existing --out
resumes it only if <out>.meta.json shows the same model, manifest and settings
(extras/predictions.py).

Predictions are matched to ground-truth rows by (source, video), else by a video id unique in the
GT. A prediction for a video not in the GT is counted and listed, never a crash. A GT video
without a usable prediction counts WRONG in every figure (no label, IoU 0, text scores 0; the
authors skip it: detection_matched_only), and `--score` then exits 1 without writing --json unless
--allow-missing; repeated and malformed rows: extras/scoring.py. The ground truth gets a training
manifest's checks (data.py, kind 'gt'). Metrics JSON (nested; detection.f1 is
json["detection"]["f1"], a figure over an empty set is null): detection, detection_matched_only,
detection_abnormal_only, category, reasoning, reasoning_common, frame, format, counts, unmatched;
every key, and where we knowingly depart from the authors' scripts (METEOR without WordNet, our
tokenizer, tags as spaces, ...): docs/eval.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import data
import grpo
import vadr
from extras import (badvideos, cli, flagcheck, lora, paper_tables, predictions, report,
                    scale, scoring, textmetrics, training, vane, vanguard)
# the label, interval and frame-level definitions extras/vanguard.py shares (extras/metrics.py);
# frame_auc and best_f1 are what frame_metrics' four counts equal (the tests check eval's names)
from extras.metrics import (authors_label, best_f1, frame_auc, frame_labels, frames_inside,
                            gt_interval, gt_label)
from vadr import parse_completion


# ---- 0. Reading JSONL (fail loudly with file:line) -----------------------------------------------

def load_jsonl(path: str, with_lines: bool = False):
    """Read a JSON Lines file: one JSON object per non-blank line. A missing file, a directory,
    bytes that are not UTF-8 or a malformed line raise vadr.InputError (a ValueError)
    "PATH:LINE: ..." naming the file and the 1-based line, so a broken prediction file is never
    silently half-scored (extras/scoring.py). with_lines: (rows, "PATH:LINE" of each row)."""
    rows, where = scoring.read_jsonl(path)
    return (rows, where) if with_lines else rows


# ---- 1. Detection (docs/paper-vs-authors.md s.3): binary label, P/R/F1, interval IoU, mIoU, R@k --
# The labels and the GT interval (authors_label, gt_label, gt_interval): extras/metrics.py.

def interval_iou(a, b) -> float:
    """Temporal IoU of a = [s1, e1] and b = [s2, e2], written the straightforward way:

        inter = max(0, min(e1, e2) - max(s1, s2))
        union = max(e1, e2) - min(s1, s2)
        IoU   = inter / union   (0 when union <= 0, e.g. [x, x] vs [x, x])
    A REVERSED interval (s > e) is used as written (docs/paper-vs-authors.md s.3): then
    min(e1, e2) - max(s1, s2) <= e1 - s1 < 0, so inter = 0 and IoU = 0."""
    s1, e1 = float(a[0]), float(a[1])
    s2, e2 = float(b[0]), float(b[1])
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = max(e1, e2) - min(s1, s2)
    return inter / union if union > 0 else 0.0


RECALL_THRESHOLDS = (0.3, 0.5, 0.7)


def _iou_summary(ious: list[float]) -> dict:
    """mIoU = mean IoU; R@k = fraction of videos with IoU >= k (k in 0.3, 0.5, 0.7)."""
    out = {"miou": float(np.mean(ious)) if ious else None}
    for k in RECALL_THRESHOLDS:
        out[f"r@{k}"] = float(np.mean([iou >= k for iou in ious])) if ious else None
    out["n"] = len(ious)
    return out


def binary_prf(pred: list[str], gold: list[str], positive: str = "Abnormal") -> dict:
    """Accuracy, precision, recall, F1 with `positive` as the positive class:

        P = TP / (TP + FP),  R = TP / (TP + FN),  F1 = 2PR / (P + R) = 2TP / (2TP + FP + FN)
        accuracy = (TP + TN) / N ;  a 0/0 ratio is 0 (scikit-learn's zero_division=0)."""
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive and g != positive for p, g in zip(pred, gold))
    fn = sum(p != positive and g == positive for p, g in zip(pred, gold))
    n = len(gold)
    correct = sum(p == g for p, g in zip(pred, gold))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
    return {"accuracy": correct / n if n else None, "precision": prec if n else None,
            "recall": rec if n else None, "f1": f1 if n else None}


def predicted_interval_authors(parsed: dict) -> tuple[float, float]:
    """Predicted interval, authors' rule (docs/paper-vs-authors.md s.3): Normal -> [0, 1];
    Abnormal -> the parsed <when> as written (even reversed); no parseable <when> -> [0, 0]."""
    if authors_label(parsed.get("which")) == "Normal":
        return (0.0, 1.0)
    return parsed["when"] if parsed.get("when") is not None else (0.0, 0.0)


def detection_metrics(outputs: list[str | None], gt_rows: list[dict]) -> dict:
    """Authors' detection protocol (docs/paper-vs-authors.md s.3) over aligned (output, GT row)
    pairs. An output None (a GT video without a prediction) has NO label: wrong whatever the GT
    (an abnormal video is a false negative), IoU 0; every other output, even empty, is scored:

      label:  authors_label(<which>) vs gt_label(row); Abnormal is the positive class;
      IoU:    label right -> interval_iou(predicted_interval_authors, gt_interval)
              (a right Normal is IoU([0,1],[0,1]) = 1); label wrong -> 0;
      mIoU = mean IoU, R@k = mean(IoU >= k).
    Abnormal GT rows without an interval are left out of the IoU figures (not of P/R/F1)."""
    parsed = [parse_completion(o) for o in outputs]
    pred = [None if o is None else authors_label(p.get("which")) for o, p in zip(outputs, parsed)]
    gold = [gt_label(r) for r in gt_rows]
    out = binary_prf(pred, gold)
    ious = []
    for p, pl, gl, row in zip(parsed, pred, gold, gt_rows):
        g = gt_interval(row)
        if g is None:
            continue
        ious.append(interval_iou(predicted_interval_authors(p), g) if pl == gl else 0.0)
    iou = _iou_summary(ious)
    out.update({k: iou[k] for k in ("miou", "r@0.3", "r@0.5", "r@0.7")})
    out["n"] = len(gold)
    out["n_iou"] = iou["n"]
    return out


def detection_abnormal_only(outputs_or_none: list[str | None], gt_rows: list[dict]) -> dict:
    """Common temporal-grounding convention: IoU over ABNORMAL GT videos only, the label ignored;
    the predicted interval is the parsed <when> as written; a missing prediction row (None) or no
    parseable <when> scores IoU 0. Pass every abnormal GT row, with None where no row exists."""
    ious = []
    for out, row in zip(outputs_or_none, gt_rows):
        g = gt_interval(row)
        if gt_label(row) != "Abnormal" or g is None:
            continue
        when = parse_completion(out)["when"] if out is not None else None
        ious.append(interval_iou(when, g) if when is not None else 0.0)
    return _iou_summary(ious)


def _norm_cat(s) -> str:
    """Case-insensitive, whitespace-normalised form: lowercase, runs of whitespace -> one space."""
    return " ".join(str(s).split()).lower()


def category_metrics(outputs: list[str], gt_rows: list[dict]) -> dict:
    """Fine-grained category accuracy over abnormal GT videos: correct iff _norm_cat(<which>)
    == _norm_cat(anomaly_type); a missing <which> or prediction (None) is wrong.
    accuracy_merged additionally maps both sides through vadr.normalize_category (unknown names
    keep their normalised text), so "Drown" and "Drowning" count as the same category.
    per_category: {GT category: accuracy over its videos}."""
    hits_m, per = 0, {}
    for out, row in zip(outputs, gt_rows):
        if gt_label(row) != "Abnormal":
            continue
        gt_cat = row.get("anomaly_type", "")
        c = per.setdefault(str(gt_cat), [0, 0])  # [hits, videos]
        c[1] += 1
        which = parse_completion(out).get("which")
        if which is None:
            continue
        c[0] += _norm_cat(which) == _norm_cat(gt_cat)
        a = vadr.normalize_category(which) or _norm_cat(which)
        b = vadr.normalize_category(str(gt_cat)) or _norm_cat(gt_cat)
        hits_m += _norm_cat(a) == _norm_cat(b)
    hits, n = (sum(v[i] for v in per.values()) for i in (0, 1))
    return {"accuracy": hits / n if n else None, "accuracy_merged": hits_m / n if n else None,
            "n": n, "per_category": {k: h / m for k, (h, m) in sorted(per.items())}}


# ---- 2. Frame level: ROC-AUC (Mann-Whitney) and best-threshold F1 --------------------------------
# The frame rule, the per-frame truth, ROC-AUC and best F1 (frames_inside, frame_labels,
# frame_auc, best_f1): extras/metrics.py.

def frame_scores(output: str | None, total_frames: int) -> np.ndarray:
    """Per-frame anomaly score from a completion. OUR definition: docs/paper-vs-authors.md s.3
    says only that the authors' UCF-Crime AUC uses per-frame scores over all test frames
    concatenated, not how a completion becomes per-frame scores. Frame f (0-based) scores 1 if
    the authors' label is Abnormal and a <when> (s, e) was parsed and f is frames_inside it;
    every other frame (Normal, no parseable <when>, a reversed interval) scores 0. Binary scores
    make the AUC (TPR + TNR) / 2."""
    scores = np.zeros(int(total_frames), dtype=np.float64)
    p = parse_completion(output)
    if authors_label(p.get("which")) == "Abnormal" and p.get("when") is not None:
        scores[frames_inside(p["when"], total_frames)] = 1.0
    return scores


def frame_metrics(outputs: list[str], gt_rows: list[dict]) -> dict:
    """Frame-level AUC and best F1 over all frames of all GT videos concatenated (a video
    without a prediction, None, scores 0 on every frame). The scores are binary, so four counts
    of the concatenation give exactly what frame_auc and best_f1 would return on it, and memory
    stays one video's frames (the test checks this against the concatenated arrays):
      AUC = (TP / P + TN / N) / 2 ;  best F1 over t in {1, 0}: 2TP / (2TP + FP + FN) at t = 1
      (if any frame scores 1), 2P / (2P + N) at t = 0 (if any scores 0); a tie keeps t = 1."""
    n = n_pos = tp = fp = nv = 0
    for out, row in zip(outputs, gt_rows):
        lab = frame_labels(row)
        if lab is None or len(lab) == 0:
            continue
        y, s = lab.astype(bool), frame_scores(out, len(lab)) > 0
        n, n_pos, nv = n + len(y), n_pos + int(y.sum()), nv + 1
        tp, fp = tp + int((y & s).sum()), fp + int((~y & s).sum())
    if not nv:
        return {"auc": None, "best_f1": None, "best_threshold": None, "n_frames": 0, "n_videos": 0}
    n_neg = n - n_pos
    auc = (tp / n_pos + (n_neg - fp) / n_neg) / 2 if n_pos and n_neg else None
    cands = ([(2 * tp / (2 * tp + fp + n_pos - tp), 1.0)] if tp + fp else []) + \
        ([(2 * n_pos / (2 * n_pos + n_neg), 0.0)] if tp + fp < n else [])
    f1, t = max(cands, key=lambda c: c[0]) if n_pos else (None, None)
    return {"auc": auc, "best_f1": f1, "best_threshold": t, "n_frames": n, "n_videos": nv}


# ---- 3. Matching predictions to GT, and the whole score ------------------------------------------

_key = scoring.key  # (source, video), stripped: how a row names its video


def match_predictions(pred_rows: list[dict], gt_rows: list[dict], pred_where=None,
                      gt_where=None) -> dict:
    """Pair prediction rows with GT rows: by (source, video); else by video alone when that id is
    unique in the GT. Returns dict(matched: list of (gt_index, output) in GT order, unknown:
    prediction keys not in the GT, duplicates: extra rows with the SAME output for a matched
    video (counted once), missing: GT keys with no usable prediction, malformed: "WHERE: why" of
    rows without a usable video/source/output, which are ignored). Two different outputs for one
    video, or a GT that names a video twice or without a usable id, raise vadr.InputError naming
    the lines (rules: extras/scoring.py). *_where: "PATH:LINE" of each row (load_jsonl)."""
    pw = pred_where or [f"prediction row {n + 1}" for n in range(len(pred_rows))]
    gw = gt_where or [f"ground-truth row {n + 1}" for n in range(len(gt_rows))]
    return scoring.pair_rows(pred_rows, gt_rows, pw, gw)


def score_predictions(pred_rows: list[dict], gt_rows: list[dict], pred_where=None,
                      gt_where=None, boxes: dict | None = None) -> dict:
    """Every figure of the metrics JSON (keys: docs/eval.md) from prediction rows
    {source, video, output, ...} and GT rows (Vad-Reasoning SFT-test format), over EVERY GT
    video: one without a usable prediction counts wrong (no label, IoU 0, text scores 0, format
    failed; counts.n_missing). detection_matched_only: the authors' protocol, which skips them."""
    m = match_predictions(pred_rows, gt_rows, pred_where, gt_where)
    got = dict(m["matched"])
    outs = [got.get(i) for i in range(len(gt_rows))]  # None: no prediction (wrong everywhere)
    seen = [o for o in outs if o is not None]
    res = {"detection": detection_metrics(outs, gt_rows),
           "detection_matched_only": detection_metrics(seen, [gt_rows[i] for i, _ in m["matched"]])}
    ab = [i for i, g in enumerate(gt_rows) if gt_label(g) == "Abnormal"]
    res["detection_abnormal_only"] = detection_abnormal_only([outs[i] for i in ab],
                                                             [gt_rows[i] for i in ab])
    res["category"] = category_metrics(outs, gt_rows)
    res.update(textmetrics.reasoning_metrics(outs, gt_rows))
    res["frame"] = frame_metrics(outs, gt_rows)
    # share of outputs whose whole text matches the 2- or 4-step layout (the format reward, Table 7)
    passed = [float(o is not None and vadr.check_format(o) is not None) for o in outs]
    res["format"] = {"pass_rate": float(np.mean(passed)) if passed else None, "n": len(outs)}
    disagree = 0  # a <which> the training rule gives no label ('Normal.'), the authors' Abnormal
    for o in seen:
        p = parse_completion(o)
        disagree += p["which"] is not None and p["label"] != authors_label(p["which"])
    res["counts"] = {
        "n_gt": len(gt_rows), "n_pred": len(pred_rows), "n_matched": len(seen),
        "n_missing": len(m["missing"]), "n_unknown_pred": len(m["unknown"]),
        "n_duplicate_pred": m["duplicates"], "n_malformed_pred": len(m["malformed"]),
        "n_empty": sum(not o.strip() for o in seen), "n_label_rule_disagree": disagree,
        "n_gt_no_interval": sum(gt_interval(g) is None for g in gt_rows),
    }
    res["unmatched"] = {"unknown_pred": m["unknown"], "missing": m["missing"],
                        "malformed": m["malformed"]}
    if boxes is not None:  # VANGUARD: the box in <where> against the GT box (extras/vanguard.py)
        res["box"] = vanguard.box_metrics(outs, gt_rows, boxes)
    return res


# ---- 4. Inference: a checkpoint over a test manifest -> predictions JSONL ------------------------
# Greedy, or the authors' sampling (AUTHORS_INFERENCE, beside the flags in section 6). Rows in
# their layout, flushed per batch; resume and torchrun shards: extras/predictions.py.

def generate_outputs(model, tok, batch: dict, args, generator=None) -> list[str]:
    """One batched generation (grpo.sample_group, one sample per video); texts up to the end
    token."""
    out = grpo.sample_group(model, {k: batch[k] for k in vadr.MODEL_INPUT_KEYS},
                            num_samples=1, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p,
                            greedy=not args.sample, end_ids=vadr.end_token_ids(tok),
                            pad_id=vadr.pad_token_id(tok), generator=generator)
    return grpo.decode_completions(tok, out["completion_ids"], out["completion_mask"])


def run_inference(args) -> int:
    """What `--model` does: a predictions JSONL for --data (scored at once with --json)."""
    import torch
    from tqdm import tqdm

    dist_info = vadr.setup_distributed(args.device)
    rank, world, device = dist_info["rank"], dist_info["world_size"], dist_info["device"]
    mem0 = scale.memory_baseline()  # before the model: the baseline of the peak printed at the end
    rows = data.read_manifest(args.data, "sft", video_root=args.video_root,
                              skip_bad=args.skip_bad)
    if args.limit:
        rows = rows[:args.limit]
    part = args.out if world == 1 else f"{args.out}.rank{rank}"
    os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)
    # rows already in --out must be this model's with these settings (<out>.meta.json)
    meta = predictions.run_meta(args)
    predictions.check_resume(args.out, meta, world)
    done = predictions.done_keys(part) | (predictions.done_keys(args.out) if world > 1 else set())
    mine = [r for r in vadr.shard_for_rank(rows, rank, world)
            if (str(r["source"]), str(r["video"])) not in done]
    model, tok = lora.load_merged(args.model, device=device,
                                  dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.eval()
    predictions.write_record(args.out, meta)
    ds = data.SFTDataset(mine, prompt_variant=args.prompt_variant,
                         **vadr.video_args(args))
    # a video that fails to decode: an error naming it, or (--skip-bad) an "error" row for it
    collate = badvideos.make_collate(data.make_collate(tok, with_targets=False))
    loader = torch.utils.data.DataLoader(badvideos.SkipBadVideos(ds, replace=False),
                                         batch_size=args.batch_size, collate_fn=collate,
                                         num_workers=args.num_workers if len(mine) else 0)
    bad_videos = badvideos.Tally(args.data, args.skip_bad)
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)
    waited, tw = 0.0, time.time()
    scale.reset_peak_memory(device)
    with tqdm(total=len(mine), disable=not vadr.is_main(), desc="eval") as pbar:
        for batch in loader:
            waited += time.time() - tw  # for the DataLoader's decoded videos
            failed = bad_videos.note(batch, replace=False).pop("failed_rows")
            texts = generate_outputs(model, tok, vadr.to_device(batch, device), args, gen) \
                if batch["rows"] else []
            outs = [dict(output=t) for t in texts] + \
                [dict(output="", error=bad_videos.seen[r["line"]]) for r in failed]  # as missing
            with open(part, "a") as f:
                for r, o in sorted(zip(batch["rows"] + failed, outs), key=lambda x: x[0]["line"]):
                    row = dict(source=r["source"], video=r["video"],
                               anomaly_type=r["anomaly_type"], **o)
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            pbar.update(len(texts) + len(failed))
            tw = time.time()
    bad_videos.report("written as prediction rows with an 'error' field")
    if vadr.is_main():  # rank 0's figures (docs/log-keys.md's time_data and mem_peak_gb)
        print(f"generated {len(mine)} videos: waited {waited:.1f} s for decoded videos, "
              f"peak memory {scale.peak_memory_gb(device, mem0):.2f} GiB")
    vadr.barrier()
    if world > 1 and vadr.is_main():
        predictions.merge_rank_files(args.out, rows, world, load_jsonl)
    if vadr.is_main():
        print(f"predictions: {args.out}")
        if args.json:  # score straight away against the same manifest
            run_scoring(args.out, args.data, args.json, args.with_paper, args.name, args.skip_bad,
                        args.allow_missing, keys={_key(r) for r in rows}, boxes=args.boxes,
                        frame_scores=args.frame_scores)
    vadr.barrier()
    if dist_info["distributed"]:
        torch.distributed.destroy_process_group()
    return 0


# ---- 5. --score: predictions against the ground truth (the printout: extras/paper_tables.py) ---

def run_scoring(pred_path: str, gt_path: str, json_path: str | None = None,
                with_paper: bool = False, name: str = "ours", skip_bad: bool = False,
                allow_missing: bool = False, keys: set | None = None, boxes: str | None = None,
                frame_scores: str | None = None) -> dict:
    """What `--score` does: read both JSONL files, score, print, write the JSON (if asked).
    Rows with an "error" (a video inference could not decode) count as no prediction. A GT video
    without a usable prediction counts wrong (score_predictions); unless allow_missing, any such
    video (other than an "error" row's under skip_bad) is an InputError after the printout and
    --json is not written. keys: score only these (source, video) (inference's --limit).
    boxes / frame_scores: VANGUARD's box JSONL and a stage-1 head's per-frame scores
    (extras/vanguard.py) add metrics["box"] and metrics["frame_head"]."""
    scoring.check_output("eval.py", "--json", json_path, {"--score": pred_path, "--gt": gt_path,
                                                          "--boxes": boxes,
                                                          "--frame-scores": frame_scores})
    preds, pred_where = load_jsonl(pred_path, with_lines=True)
    errors = [p for p in preds if "error" in p]
    gt_all, gt_where = scoring.read_gt(gt_path, skip_bad)  # a training manifest's checks
    where = dict(zip(map(id, gt_all), gt_where))
    gt = [g for g in gt_all if keys is None or _key(g) in keys]
    if not gt:
        raise vadr.InputError(f"{gt_path}: no ground-truth rows to score against")
    ok = [n for n, p in enumerate(preds) if "error" not in p]
    metrics = score_predictions([preds[n] for n in ok], gt, [pred_where[n] for n in ok],
                                [where[id(g)] for g in gt],
                                vanguard.load_boxes(boxes) if boxes else None)
    metrics["counts"]["n_video_error"] = len(errors)
    if frame_scores:
        metrics["frame_head"] = vanguard.head_frame_metrics(
            *load_jsonl(frame_scores, with_lines=True), gt)
    print(paper_tables.format_report(metrics, name=name, with_paper=with_paper))
    if note := predictions.written_by(pred_path):  # which model the row named `name` is
        print(note)
    if errors:
        print(f"NOTE: {len(errors)} prediction row(s) carry an 'error' (the video did not decode;"
              f" scored as no prediction), e.g. {'/'.join(_key(errors[0]))}: {errors[0]['error']}")
    if keys is not None and len(gt) < len(gt_all):
        print(f"NOTE: scored against the {len(gt)} of {len(gt_all)} GT rows this run covered")
    explained = {"/".join(_key(p)) for p in errors} if skip_bad else set()
    missing = [k for k in metrics["unmatched"]["missing"] if k not in explained]
    if missing and not allow_missing:
        bad = metrics["unmatched"]["malformed"]
        raise vadr.InputError(
            f"{pred_path}: {len(missing)} of {len(gt)} GT videos have no usable prediction (e.g. "
            f"{missing[0]}{f'; {len(bad)} malformed row(s), e.g. {bad[0]}' if bad else ''}), "
            f"counted wrong above; --json not written. Complete the file, or pass "
            f"--allow-missing to accept a partial one")
    if json_path:
        scoring.write_json(json_path, metrics)
    return metrics


# ---- 6. Every flag of this script, and the authors' inference settings ---------------------------
# The authors' inference settings fill the unset flags (docs/paper-vs-authors.md s.3, s.5): 16
# frames at linspace(0, total-1, 16), 28*28 .. 128*28*28 pixels, 512 new tokens, temperature 0.1,
# top_p 0.9 (with --sample; greedy by default, --authors-inference samples as they did).
AUTHORS_INFERENCE = dict(training.VIDEO_AUTHORS_INFERENCE, temperature=0.1, top_p=0.9,
                         max_new_tokens=512)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Vad-R1 evaluation: inference (--model) or scoring (--score / --mc).")
    g = ap.add_argument_group("inference (a checkpoint over a manifest -> predictions JSONL)")
    g.add_argument("--model", help="checkpoint directory, or 'toy'")
    g.add_argument("--data", help="test manifest JSONL (Vad-Reasoning SFT-test rows)")
    g.add_argument("--video-root", help="directory the videos are resolved against")
    g.add_argument("--out", help="predictions JSONL to write")
    g = ap.add_argument_group("generation (docs/paper-vs-authors.md s.3)")
    g.add_argument("--batch-size", type=int, default=4, help="videos per generation batch")
    g.add_argument("--limit", type=int, help="only the first N videos of the manifest")
    g.add_argument("--sample", action="store_true",
                   help="sample (temperature/top-p) instead of greedy")
    g.add_argument("--authors-inference", action="store_true",
                   help="the authors' inference settings: --sample, and the defaults below fixed")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature with --sample (authors: 0.1)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus with --sample (authors: 0.9)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="max completion length (authors: 512)")
    g.add_argument("--prompt-variant", default="fine", choices=["fine", "binary"],
                   help="<which>: categories or Abnormal/Normal")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) bad manifest rows instead of failing")
    g.add_argument("--num-workers", type=int, default=1, help="DataLoader workers decoding videos")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    # --frames --frame-rule --max-pixels --min-pixels --grid-time, unset: AUTHORS_INFERENCE's
    training.add_video_args(ap)
    g = ap.add_argument_group("scoring")
    g.add_argument("--score", metavar="PREDS",
                   help="predictions JSONL (source, video, output) to score")
    g.add_argument("--gt",
                   help="ground-truth JSONL (Vad-Reasoning SFT-test format; for --mc optional)")
    g.add_argument("--mc", metavar="PREDS",
                   help="multiple-choice JSONL (id, category, question, answer, output)")
    g.add_argument("--json", help="write every figure here (keys: docs/eval-keys.md)")
    g.add_argument("--boxes", help="VANGUARD: GT boxes JSONL (python -m extras.vanguard boxes)")
    g.add_argument("--frame-scores",
                   help="VANGUARD: a stage-1 head's per-frame scores (extras.vanguard scores)")
    g.add_argument("--allow-missing", action="store_true",
                   help="exit 0 although GT videos lack a prediction (they count as wrong)")
    g.add_argument("--with-paper", action="store_true",
                   help="print the paper's published rows beside ours")
    g.add_argument("--name", default="ours", help="row name in the printed table")
    g.add_argument("--report", metavar="RUN_DIR",
                   help="write RUN_DIR/table.md, curves and frame strips "
                   "from eval_*.json and the logs (with --data/--video-root for the strips)")
    g.add_argument("--pooled", nargs="+", metavar="RUN_DIR",
                   help="RL minus SFT pooled over several make-toy runs (seeds) of one world, with a "
                        "paired bootstrap over the test videos (needs --data, the test manifest; "
                        "--pooled-stages picks the two stems)")
    g.add_argument("--pooled-stages", nargs=2, default=["sft", "rl"], metavar=("A", "B"),
                   help="--pooled compares preds_B.jsonl with preds_A.jsonl in each run")
    g.add_argument("--ablation-report", metavar="ABL_DIR",
                   help="write ABL_DIR/table10.md from eval_<stem>.json and <stem>/log.jsonl "
                        "(make toy-ablation; with --with-paper the paper's 16-frame rows)")
    return ap


def parse_args(argv=None):
    """parser()'s flags; the unset generation and video flags take AUTHORS_INFERENCE's values."""
    return cli.resolve_inference_args(parser().parse_args(argv), AUTHORS_INFERENCE)


def main(argv=None) -> int:
    args = parse_args(argv)
    flagcheck.check_flags(args, "eval")  # inference: every flag and --out, before loading
    if args.score:
        if not args.gt:
            raise SystemExit("--score needs --gt (the ground-truth JSONL)")
        run_scoring(args.score, args.gt, args.json, args.with_paper, args.name, args.skip_bad,
                    args.allow_missing, boxes=args.boxes, frame_scores=args.frame_scores)
        return 0
    if args.mc:
        vane.run_mc_scoring(args.mc, args.gt, args.json, args.with_paper, args.name)
        return 0
    if args.model:
        return run_inference(args)
    if args.report or args.pooled or args.ablation_report:  # the toy pipeline's reports
        return report.report_main(args, detection_metrics)
    parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(vadr.run_main(main))
