"""extras/metrics.py -- the metric definitions that eval.py scores with and extras/vanguard.py shares.

eval.py is an entry script and extras never import one, so the rules both need live here, each
once: the authors' binary label of an answer, the ground truth's label and interval, the frame
rule and the frame level's ROC-AUC and best F1 (the UCF-Crime convention), and how a table prints
a figure. eval.py imports every one of them under the same name (eval.frame_auc is this
frame_auc), and its docstring and docs/eval.md say how each is used.
Exercised by: pytest tests/test_eval_metrics.py tests/test_vanguard.py -q
"""
from __future__ import annotations

import numpy as np

import data


# ---- labels and intervals (docs/paper-vs-authors.md s.1/s.3) --------------------------------------

def authors_label(which: str | None) -> str:
    """The authors' binary rule (docs/paper-vs-authors.md s.3): `<which>` content exactly
    "Normal" (tag contents are stripped) -> Normal, ANYTHING else -> Abnormal, including a
    missing <which> and an empty output: "Normal.", "normal" and "Normal video" are Abnormal.
    Rows where vadr.label_from_which (training's rule) differs are counted in
    counts.n_label_rule_disagree."""
    return "Normal" if which == "Normal" else "Abnormal"


def gt_label(row: dict) -> str:
    """GT binary label: anomaly_type "Normal" (any case) -> Normal, any category -> Abnormal."""
    return "Normal" if str(row.get("anomaly_type", "")).strip().lower() == "normal" else "Abnormal"


def gt_interval(row: dict) -> tuple[float, float] | None:
    """GT interval, docs/paper-vs-authors.md s.1/s.3: normal -> [0, 1]; abnormal ->
    [round(start/total_frames, 3), round(end/total_frames, 3)] (start/end are frame indices).
    None for an abnormal row without start/end/total_frames (counted, excluded from IoU)."""
    if gt_label(row) == "Normal":
        return (0.0, 1.0)
    try:
        total = float(row["total_frames"])
        return (round(float(row["start"]) / total, 3), round(float(row["end"]) / total, 3))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None

# ---- frame level: ROC-AUC (Mann-Whitney) and best-threshold F1 -----------------------------------

def frames_inside(interval, total_frames: int) -> np.ndarray:
    """Frames f (0-based) of a video whose position f / total_frames lies in [s, e] (bool mask):
    the ONE rule by which both a predicted <when> and the GT interval (gt_interval's fractions,
    rounded to 3 places like every <when>) become frames, so the GT's own text scores AUC 1."""
    s, e = interval
    pos = np.arange(int(total_frames)) / float(total_frames)
    return (pos >= s) & (pos <= e)


def frame_labels(gt_row: dict) -> np.ndarray | None:
    """Per-frame GT: 1 for the frames_inside gt_interval on abnormal rows (start..end as the
    rounded fractions every <when> holds), 0 elsewhere and on normal rows. None if total_frames
    is missing or not in 1..data.MAX_TOTAL_FRAMES, or an abnormal row has no interval."""
    try:
        total = int(gt_row["total_frames"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not 0 < total <= data.MAX_TOTAL_FRAMES:
        return None
    if gt_label(gt_row) == "Normal":
        return np.zeros(total, dtype=np.int64)
    g = gt_interval(gt_row)
    return None if g is None else frames_inside(g, total).astype(np.int64)


def frame_auc(labels, scores) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic (what sklearn.metrics.roc_auc_score returns):
      AUC = (sum of the ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos * n_neg),
    ranks 1..N over all scores ascending, TIED scores sharing their average rank (so a tied
    positive/negative pair counts 1/2). None when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average rank of each tie block: blocks [a, b) in sorted order get rank (a + 1 + b) / 2
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], len(s_sorted)]
    block_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(block_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def best_f1(labels, scores) -> tuple[float | None, float | None]:
    """Best F1 over thresholds t in the distinct scores, predicting positive when score >= t:
    F1(t) = 2 TP / (2 TP + FP + FN). Returns (F1, t); (None, None) without any positive."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    if n_pos == 0 or len(s) == 0:
        return None, None
    order = np.argsort(-s, kind="mergesort")
    s_d, y_d = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_d)), len(s_d) - 1]   # last index of each tie block
    tp = np.cumsum(y_d)[last]
    fp = (last + 1) - tp
    fn = n_pos - tp
    f1 = 2 * tp / (2 * tp + fp + fn)
    k = int(np.argmax(f1))
    return float(f1[k]), float(s_d[last[k]])

# ---- tables -------------------------------------------------------------------------------------

def get_metric(metrics: dict, dotted: str):
    """metrics["a"]["b"] for dotted "a.b"; also accepts a flat dict keyed by dotted names.
    Missing -> None."""
    if dotted in metrics:
        return metrics[dotted]
    head, _, tail = dotted.partition(".")
    sub = metrics.get(head) if isinstance(metrics, dict) else None
    return sub.get(tail) if isinstance(sub, dict) else None


def fmt(v) -> str:
    """A figure as the paper prints it: three decimals; a missing one as "-"."""
    return "-" if v is None else f"{v:.3f}"
