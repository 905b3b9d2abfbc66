"""eval.py -- scoring Vad-R1 predictions the way the paper's tables do (and the common way too).

Paper: Vad-R1, Sec. 4.1 "Evaluation Metrics", Table 2 (reasoning + detection on the
Vad-Reasoning test set), Table 3 (VANE multiple choice), Table 4 (training strategies),
Tables 9-10 (appendix ablations). The exact protocol of the authors' evaluation scripts is in
../shared/notes/vad-r1-facts.md section 3 ("facts note s.3" below); this file follows it and
says so next to every rule. Every metric is written from its definition with numpy + the
standard library; the reference packages (nltk, rouge, rouge-score, scikit-learn) are used only
as test oracles in tests/test_eval_metrics.py.

Two halves, one file:

  1. INFERENCE (added by the lead, see the marked section at the bottom): a checkpoint over a
     test manifest -> predictions JSONL, one row per video: {source, video, anomaly_type, output}.
         python eval.py --model DIR --data test.jsonl --video-root ROOT --out preds.jsonl
  2. SCORING (this part): predictions JSONL + ground-truth JSONL -> metrics JSON + a Markdown
     table laid out like the paper's Table 2 (and Table 4).
         python eval.py --score preds.jsonl --gt Vad-Reasoning-SFT-test.jsonl --json metrics.json
         python eval.py --score preds.jsonl --gt test.jsonl --json m.json --with-paper
         python eval.py --mc vane_preds.jsonl --json vane.json          # multiple choice (VANE)

Ground truth: a Vad-Reasoning SFT-test JSONL (rows: source, video, anomaly_type, path,
total_frames, think, answer, and start/end on abnormal rows; facts note s.1). Predictions are
matched to GT rows by (source, video); a prediction without a usable source falls back to the
video id when that id is unique in the GT. A prediction for a video not in the GT is counted
and listed (authors: ignored), never a crash. A GT video with no prediction row is counted and
listed; the authors' protocol skips it, the common-convention IoU counts it as 0.

------------------------------------------------------------------------------------------------
Metrics JSON (nested dicts; the docs below use dotted names, e.g. detection.f1 is
json["detection"]["f1"]). A figure over an empty set is null.

  detection.*                (AUTHORS' protocol, facts note s.3; over GT videos with a prediction)
    accuracy, precision, recall, f1     binary, Abnormal = positive class
    miou, r@0.3, r@0.5, r@0.7           label-gated IoU (wrong label -> 0, right Normal -> 1)
    n                                   videos counted
  detection_abnormal_only.*  (COMMON convention; over ALL abnormal GT videos)
    miou, r@0.3, r@0.5, r@0.7, n        IoU of the parsed <when> vs GT, label ignored,
                                        missing row / no parseable <when> -> IoU 0
  category.*                 fine-grained <which> vs GT anomaly_type, abnormal GT videos with a row
    accuracy                            case-insensitive, whitespace-normalised exact match
    accuracy_merged                     same after vadr.normalize_category (merges the five
                                        spelling variants of the data, facts note s.1)
    n
  reasoning.*                (AUTHORS' protocol, facts note s.3)
    bleu2                               nltk sentence BLEU weights (0,1,0,0): BP x bigram precision
    meteor                              nltk meteor_score defaults, exact + Porter-stem stages only
    rouge1, rouge2, rouge_l             `rouge` package F (unique n-grams, summary-level union LCS)
    n, n_skipped_empty, n_short         scored / skipped (empty output) / scored 0 (< 5 chars)
  reasoning_common.*         (COMMON convention; every matched video, empty output scores 0)
    bleu2                               cumulative BLEU-2, weights (0.5, 0.5), no smoothing
    rouge1, rouge2, rouge_l             `rouge-score` style F (its default tokenizer, no stemmer)
    n
  frame.*                    frame-level detection from predicted intervals (see frame_scores)
    auc, best_f1, best_threshold, n_frames, n_videos
  counts.*
    n_gt, n_pred                        rows read
    n_matched                           GT videos that got a prediction row
    n_missing                           GT videos with no prediction row (skipped by the authors)
    n_unknown_pred                      prediction rows for videos not in the GT (ignored)
    n_duplicate_pred                    further rows for an already matched video (ignored)
    n_empty                             matched rows whose output is empty / whitespace only
    n_label_rule_disagree               matched rows where the authors' exact rule and our tolerant
                                        vadr rule disagree (e.g. `<which>Normal.</which>`)
    n_gt_no_interval                    abnormal GT rows lacking start/end/total_frames
  unmatched.unknown_pred, unmatched.missing   lists of "source/video" strings

Multiple-choice JSON (score_multiple_choice): accuracy, n, n_unanswered, n_missing_output,
per_category.{CATEGORY}.{accuracy, n}.

------------------------------------------------------------------------------------------------
Knowingly different from the authors' scripts (each documented where it happens):
  * METEOR has no WordNet synonym stage (no WordNet offline). With nltk's meteor_score this equals
    passing a WordNet stand-in whose synsets() returns []; the authors' numbers include synonym
    matches, so our METEOR is a lower bound of theirs (slightly lower on the same outputs).
  * The word tokenizer for BLEU/METEOR (facts note: "lowercased word tokens") is written here:
    lowercase, then tokens = maximal runs of word characters (regex \\w+) and every other
    non-space character on its own (regex [^\\w\\s]). This is close to nltk.word_tokenize on plain
    prose (punctuation split off) but differs on contractions ("don't" -> don ' t, not do n't).
  * Tags are replaced by a space and newlines by a space (then whitespace runs collapse to one
    space), so that `<which>Fighting</which><what>A man` does not glue into "fightinga".
  * "Empty prediction" (skipped) = the raw output is empty or whitespace only; "shorter than 5
    characters" (scores 0) is judged on the tag-stripped text, so an output made only of tags
    scores 0 instead of being skipped.
  * A hypothesis the `rouge` package refuses (no sentence left after splitting on '.', e.g.
    "....."), scores 0 here instead of raising.

Paper-internal inconsistency, for the record: Table 2 gives Vad-R1 ROUGE-2 = 0.194 but Table 4
gives 0.238 for the same model, and Table 10's "ROUGE-L / ROUGE-2" columns carry Table 4's
ROUGE-1 / ROUGE-L numbers. We copy each table's numbers as printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from functools import lru_cache

import numpy as np

import grpo
import vadr
from vadr import parse_completion

try:  # optional: merged category names (facts note s.1); eval still scores without it
    from vadr import normalize_category
except ImportError:  # pragma: no cover
    normalize_category = None


# ================================================================================================
# 0. Reading JSONL (fail loudly with file:line)
# ================================================================================================

def load_jsonl(path: str) -> list[dict]:
    """Read a JSON Lines file: one JSON object per non-blank line.

    A malformed line raises vadr.InputError (a ValueError) "PATH:LINE: ..." naming the file and the 1-based line,
    so a broken prediction file is never silently half-scored."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise vadr.InputError(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno}): "
                                 f"{line.strip()[:120]!r}") from None
            if not isinstance(obj, dict):
                raise vadr.InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


# ================================================================================================
# 1. Detection (facts note s.3): binary label, P/R/F1, interval IoU, mIoU, R@k
# ================================================================================================

def authors_label(which: str | None) -> str:
    """The authors' binary rule (facts note s.3): `<which>` content exactly "Normal" -> Normal,
    ANYTHING else -> Abnormal, including a missing <which> and an empty output.

    Exact string equality after the surrounding whitespace is stripped (vadr.parse_completion
    strips tag contents): "Normal." (trailing period), "normal" and "Normal video" are all
    Abnormal under this rule. vadr.label_from_which, our tolerant rule used in training, calls
    "Normal." Normal; the difference is counted in counts.n_label_rule_disagree."""
    return "Normal" if which == "Normal" else "Abnormal"


def gt_label(row: dict) -> str:
    """GT binary label: anomaly_type "Normal" (any case) -> Normal, any category -> Abnormal."""
    return "Normal" if str(row.get("anomaly_type", "")).strip().lower() == "normal" else "Abnormal"


def gt_interval(row: dict) -> tuple[float, float] | None:
    """GT interval, facts note s.1/s.3: normal -> [0, 1]; abnormal ->
    [round(start/total_frames, 3), round(end/total_frames, 3)] (start/end are frame indices).
    None for an abnormal row without start/end/total_frames (counted, excluded from IoU)."""
    if gt_label(row) == "Normal":
        return (0.0, 1.0)
    try:
        total = float(row["total_frames"])
        return (round(float(row["start"]) / total, 3), round(float(row["end"]) / total, 3))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def interval_iou(a, b) -> float:
    """Temporal IoU of a = [s1, e1] and b = [s2, e2], written the straightforward way:

        inter = max(0, min(e1, e2) - max(s1, s2))
        union = max(e1, e2) - min(s1, s2)
        IoU   = inter / union   (0 when union <= 0)

    A REVERSED interval (s > e) is used as written (facts note s.3): then
    min(e1, e2) - max(s1, s2) <= e1 - s1 < 0, so inter = 0 and IoU = 0 -- the same 0 that any
    straightforward intersection/union implementation gives. Degenerate [x, x] vs [x, x]
    (union 0) is defined as 0."""
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
    """Predicted interval, authors' rule (facts note s.3): Normal -> [0, 1]; Abnormal -> the
    parsed <when> as written (even reversed); no parseable <when> -> [0, 0]."""
    if authors_label(parsed.get("which")) == "Normal":
        return (0.0, 1.0)
    return parsed["when"] if parsed.get("when") is not None else (0.0, 0.0)


def detection_metrics(outputs: list[str], gt_rows: list[dict]) -> dict:
    """Authors' detection protocol (facts note s.3) over aligned (output, GT row) pairs, i.e. every
    GT video that has a prediction row, whatever its output:

      label:  authors_label(<which>) vs gt_label(row); Abnormal is the positive class;
      IoU:    label right -> interval_iou(predicted_interval_authors, gt_interval)
              (a right Normal is IoU([0,1],[0,1]) = 1); label wrong -> 0;
      mIoU = mean IoU, R@k = mean(IoU >= k).
    Abnormal GT rows without an interval are left out of the IoU figures (not of P/R/F1)."""
    parsed = [parse_completion(o) for o in outputs]
    pred = [authors_label(p.get("which")) for p in parsed]
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
    """Fine-grained category accuracy over abnormal GT videos with a prediction row:
    correct iff _norm_cat(<which>) == _norm_cat(anomaly_type); a missing <which> is wrong.
    accuracy_merged additionally maps both sides through vadr.normalize_category (unknown names
    keep their normalised text), so "Drown" and "Drowning" count as the same category."""
    hits, hits_m, n = 0, 0, 0
    for out, row in zip(outputs, gt_rows):
        if gt_label(row) != "Abnormal":
            continue
        n += 1
        which = parse_completion(out).get("which")
        if which is None:
            continue
        hits += _norm_cat(which) == _norm_cat(row.get("anomaly_type", ""))
        if normalize_category is not None:
            a = normalize_category(which) or _norm_cat(which)
            b = normalize_category(str(row.get("anomaly_type", ""))) or _norm_cat(row.get("anomaly_type", ""))
            hits_m += _norm_cat(a) == _norm_cat(b)
    return {"accuracy": hits / n if n else None,
            "accuracy_merged": (hits_m / n if n else None) if normalize_category else None, "n": n}


# ================================================================================================
# 2. Text normalisation and tokenisers
# ================================================================================================

_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*>")   # any XML-like tag: <think>, </step1>, <when>...
_WORD_RE = re.compile(r"\w+|[^\w\s]")                 # words, and each punctuation mark alone
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")            # rouge-score's default tokenizer


def strip_tags(text: str | None) -> str:
    """Facts note s.3: "all tags removed and newlines dropped". Each tag -> one space, each
    newline -> one space, whitespace runs -> one space, ends trimmed (see the module docstring
    for why a space and not the empty string)."""
    text = _TAG_RE.sub(" ", text or "")
    return " ".join(text.split())


def word_tokens(text: str) -> list[str]:
    """The BLEU/METEOR tokenizer ("lowercased word tokens", facts note s.3): lowercase, then
    re.findall(r"\\w+|[^\\w\\s]"): maximal runs of Unicode word characters (letters, digits, _)
    and every other non-space character as a token of its own.
    "The car's speed: 0.5!" -> [the, car, ', s, speed, :, 0, ., 5, !]"""
    return _WORD_RE.findall(text.lower())


def rouge_score_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer (no stemmer): lowercase, every run of characters outside
    [a-z0-9] -> one space, split on whitespace (non-ASCII letters are therefore dropped)."""
    return _NON_ALNUM_RE.sub(" ", text.lower()).split()


def ngram_counts(tokens: list, n: int) -> Counter:
    """Multiset of the len(tokens) - n + 1 contiguous n-grams (empty if len(tokens) < n)."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# ================================================================================================
# 3. BLEU (Papineni et al. 2002) in nltk's sentence_bleu conventions, single reference
# ================================================================================================

def bleu(reference: list[str], hypothesis: list[str], weights=(0.25, 0.25, 0.25, 0.25)) -> float:
    """Sentence BLEU against ONE reference, no smoothing (nltk sentence_bleu, method0):

      p_n  = sum_g min(count_hyp(g), count_ref(g)) / max(1, sum_g count_hyp(g))   (clipped
             n-gram precision; n-grams g of order n)
      BP   = 1 if c > r, 0 if c == 0, else exp(1 - r / c)    (c = len(hyp), r = len(ref))
      BLEU = BP * exp( sum_n w_n * log p_n )   over the n with w_n > 0

    Authors' "BLEU-2" (facts note s.3) is weights (0, 1, 0, 0): BP * p_2 (NOT cumulative).
    The common cumulative BLEU-2 is weights (0.5, 0.5): BP * sqrt(p_1 * p_2).
    Zero matches: no unigram match at all -> 0 (nltk returns 0); a zero p_n with w_n > 0 -> 0
    (nltk substitutes p_n = 2.2e-308, i.e. 0 to machine precision for these weights)."""
    c, r = len(hypothesis), len(reference)
    nums, dens = [], []
    for n in range(1, len(weights) + 1):
        hyp_c, ref_c = ngram_counts(hypothesis, n), ngram_counts(reference, n)
        nums.append(sum(min(cnt, ref_c[g]) for g, cnt in hyp_c.items()))
        dens.append(max(1, sum(hyp_c.values())))
    if not nums or nums[0] == 0:
        return 0.0
    log_sum = 0.0
    for w, num, den in zip(weights, nums, dens):
        if w == 0:
            continue
        if num == 0:
            return 0.0
        log_sum += w * math.log(num / den)
    bp = 1.0 if c > r else (0.0 if c == 0 else math.exp(1.0 - r / c))
    return bp * math.exp(log_sum)


# ================================================================================================
# 4. Porter stemmer (Porter 1980), NLTK_EXTENSIONS variant, written from the algorithm
# ================================================================================================
# Notation from the paper: c = consonant, v = vowel; a word is [C](VC)^m[V] and m is its
# "measure"; *v* = the stem contains a vowel; *d = ends with a double consonant; *o = ends
# consonant-vowel-consonant with the last consonant not w, x or y. A rule list is tried in
# order and the FIRST rule whose suffix matches decides: if its condition fails the word is
# left unchanged (no later rule is tried).
# NLTK's extensions (the mode nltk.stem.PorterStemmer uses by default, and so METEOR):
#   * a table of irregular forms (skies -> sky, dying -> die, news -> news, ...);
#   * words of 1-2 letters are returned lowercased and unstemmed;
#   * step 1a: a 4-letter word ending "ies" -> "ie" (dies -> die, but flies -> fli);
#   * step 1b: "ied" -> "ie" for 4-letter words, else -> "i" (died -> die, spied -> spi);
#   * *o also holds for a 2-letter stem vowel+consonant ("ow", "at");
#   * step 1c: y -> i only when the y follows a consonant that is not the first letter;
#   * step 2: "alli" -> "al" tried first (and step 2 re-run), "bli" -> "ble" instead of
#     "abli" -> "able", plus "fulli" -> "ful" and "logi" -> "log" (the l counted in the stem).

_PORTER_VOWELS = frozenset("aeiou")
_PORTER_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
    "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
    "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed",
    "exceed": "exceed", "succeed": "succeed",
}


def _cv(word: str) -> str:
    """'c'/'v' pattern: a, e, i, o, u are vowels; y is a vowel after a consonant, a consonant
    at the start or after a vowel (TOY -> cvc, SYZYGY -> cvcvcv); everything else consonant."""
    out = []
    for i, ch in enumerate(word):
        if ch in _PORTER_VOWELS:
            out.append("v")
        elif ch == "y":
            out.append("v" if i > 0 and out[i - 1] == "c" else "c")
        else:
            out.append("c")
    return "".join(out)


def _measure(stem: str) -> int:
    """m in [C](VC)^m[V] = number of 'vc' transitions in the c/v pattern."""
    return _cv(stem).count("vc")


def _has_vowel(stem: str) -> bool:
    return "v" in _cv(stem)


def _ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _cv(word)[-1] == "c"


def _ends_cvc(word: str) -> bool:
    """*o, plus NLTK's 2-letter vowel+consonant case."""
    cv = _cv(word)
    if len(word) >= 3 and cv[-3:] == "cvc" and word[-1] not in "wxy":
        return True
    return len(word) == 2 and cv == "vc"


def _apply_first(word: str, rules) -> str:
    """rules: (suffix, replacement, condition(stem) -> bool). The first matching suffix decides."""
    for suffix, repl, cond in rules:
        if word.endswith(suffix):
            stem = word[:len(word) - len(suffix)]
            return stem + repl if cond(stem) else word
    return word


def _m_gt0(stem: str) -> bool:
    return _measure(stem) > 0


def _m_gt1(stem: str) -> bool:
    return _measure(stem) > 1


def _porter_step1a(w: str) -> str:
    # SSES -> SS, IES -> I, SS -> SS, S -> ''   (NLTK: 4-letter "ies" -> "ie")
    if w.endswith("ies") and len(w) == 4:
        return w[:-3] + "ie"
    always = lambda s: True  # noqa: E731
    return _apply_first(w, [("sses", "ss", always), ("ies", "i", always),
                            ("ss", "ss", always), ("s", "", always)])


def _porter_step1b(w: str) -> str:
    # NLTK: "ied" -> "ie" (4 letters) or "i"
    if w.endswith("ied"):
        return w[:-3] + ("ie" if len(w) == 4 else "i")
    # (m>0) EED -> EE ; if the condition fails the word stays (the ED rule is not tried)
    if w.endswith("eed"):
        return w[:-3] + "ee" if _measure(w[:-3]) > 0 else w
    # (*v*) ED -> '' ; (*v*) ING -> ''
    stem = None
    for suf in ("ed", "ing"):
        if w.endswith(suf) and _has_vowel(w[:-len(suf)]):
            stem = w[:-len(suf)]
            break
    if stem is None:
        return w
    # tidy-up after ED/ING: AT -> ATE, BL -> BLE, IZ -> IZE
    for suf in ("at", "bl", "iz"):
        if stem.endswith(suf):
            return stem + "e"
    # (*d and not (*L or *S or *Z)) -> single letter ; a double l/s/z stays as it is
    if _ends_double_consonant(stem):
        return stem[:-1] if stem[-1] not in "lsz" else stem
    # (m=1 and *o) -> E
    if _measure(stem) == 1 and _ends_cvc(stem):
        return stem + "e"
    return stem


def _porter_step1c(w: str) -> str:
    # NLTK: Y -> I when preceded by a consonant that is not the word's first letter
    if w.endswith("y"):
        stem = w[:-1]
        if len(stem) > 1 and _cv(stem)[-1] == "c":
            return stem + "i"
    return w


_STEP2_RULES = [(s, r, _m_gt0) for s, r in (
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"), ("izer", "ize"),
    ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous"),
    ("ization", "ize"), ("ation", "ate"), ("ator", "ate"), ("alism", "al"), ("iveness", "ive"),
    ("fulness", "ful"), ("ousness", "ous"), ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"),
    ("fulli", "ful"))]


def _porter_step2(w: str) -> str:
    # NLTK: (m>0) ALLI -> AL first, then step 2 again on the result
    if w.endswith("alli") and _measure(w[:-4]) > 0:
        return _porter_step2(w[:-4] + "al")
    # NLTK: LOGI -> LOG with the l counted in the stem: condition m(word[:-3]) > 0
    rules = _STEP2_RULES + [("logi", "log", lambda stem: _measure(w[:-3]) > 0)]
    return _apply_first(w, rules)


_STEP3_RULES = [(s, r, _m_gt0) for s, r in (
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
    ("ful", ""), ("ness", ""))]

_STEP4_RULES = [(s, "", _m_gt1) for s in (
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent")] + [
    # (m>1 and (*S or *T)) ION -> ''
    ("ion", "", lambda stem: _measure(stem) > 1 and stem[-1:] in ("s", "t"))] + [
    (s, "", _m_gt1) for s in ("ou", "ism", "ate", "iti", "ous", "ive", "ize")]


def _porter_step5a(w: str) -> str:
    # (m>1) E -> '' ; (m=1 and not *o) E -> ''   (both conditions tried)
    if w.endswith("e"):
        stem = w[:-1]
        m = _measure(stem)
        if m > 1 or (m == 1 and not _ends_cvc(stem)):
            return stem
    return w


def _porter_step5b(w: str) -> str:
    # (m>1 and *d and *L) -> single letter; m measured on the word minus its last letter
    if w.endswith("ll") and _measure(w[:-1]) > 1:
        return w[:-1]
    return w


@lru_cache(maxsize=200_000)
def porter_stem(word: str) -> str:
    """Porter stem of one word, lowercased, NLTK_EXTENSIONS variant (see the notes above)."""
    w = word.lower()
    if w in _PORTER_IRREGULAR:
        return _PORTER_IRREGULAR[w]
    if len(word) <= 2:
        return w
    for step in (_porter_step1a, _porter_step1b, _porter_step1c, _porter_step2):
        w = step(w)
    w = _apply_first(w, _STEP3_RULES)
    w = _apply_first(w, _STEP4_RULES)
    w = _porter_step5a(w)
    return _porter_step5b(w)


# ================================================================================================
# 5. METEOR (Banerjee & Lavie 2005; Lavie & Agarwal 2007) in nltk's meteor_score conventions
# ================================================================================================

def _align_stage(hyp: list[tuple[int, str]], ref: list[tuple[int, str]], key):
    """One greedy matching stage over the still-unmatched words: walking the hypothesis from its
    LAST word to its first, each word takes the right-most still-free reference word with the
    same key (key = identity for the exact stage, porter_stem for the stem stage).
    Returns (pairs of original positions (h, r), unmatched hyp, unmatched ref)."""
    free = defaultdict(list)                       # key -> reference slots, ascending
    for j, (_, w) in enumerate(ref):
        free[key(w)].append(j)
    pairs, used_h, used_r = [], set(), set()
    for i in range(len(hyp) - 1, -1, -1):
        slots = free.get(key(hyp[i][1]))
        if slots:
            j = slots.pop()                        # right-most free slot
            pairs.append((hyp[i][0], ref[j][0]))
            used_h.add(i)
            used_r.add(j)
    return (pairs, [x for i, x in enumerate(hyp) if i not in used_h],
            [x for j, x in enumerate(ref) if j not in used_r])


def meteor(reference: list[str], hypothesis: list[str], alpha: float = 0.9, beta: float = 3.0,
           gamma: float = 0.5) -> float:
    """METEOR of one hypothesis against ONE reference (nltk meteor_score, default parameters):

      alignment: exact stage, then Porter-stem stage on what is left (WordNet synonym stage
                 OMITTED: no WordNet offline; = nltk with a wordnet whose synsets() is []);
      m = matched unigrams, P = m / len(hyp), R = m / len(ref)
      Fmean   = P * R / (alpha * P + (1 - alpha) * R)
      chunks  = fewest runs of matches adjacent in both hyp and ref (matches sorted by hyp pos)
      Penalty = gamma * (chunks / m) ** beta
      METEOR  = (1 - Penalty) * Fmean ;  0 when m == 0 or either side is empty.
    Tokens are compared lowercased (nltk's preprocess=str.lower)."""
    hyp = [(i, w.lower()) for i, w in enumerate(hypothesis)]
    ref = [(j, w.lower()) for j, w in enumerate(reference)]
    if not hyp or not ref:
        return 0.0
    exact, hyp_left, ref_left = _align_stage(hyp, ref, lambda w: w)
    stem, _, _ = _align_stage(hyp_left, ref_left, porter_stem)
    matches = sorted(exact + stem)
    m = len(matches)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    chunks = 1 + sum(not (b[0] == a[0] + 1 and b[1] == a[1] + 1) for a, b in zip(matches, matches[1:]))
    penalty = gamma * (chunks / m) ** beta
    return (1 - penalty) * fmean


# ================================================================================================
# 6. ROUGE (Lin 2004) in two conventions: the `rouge` package (authors) and `rouge-score` (common)
# ================================================================================================

def _rouge_pkg_sentences(text: str) -> list[list[str]]:
    """The `rouge` package's view of a text: sentences = the pieces of text.split('.') that are
    non-empty (before trimming), each piece's whitespace runs joined to single spaces, then split
    on ' ' into tokens (no lowercasing, no stemming). A piece of only whitespace therefore gives
    one empty-string token, exactly as the package does."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if len(piece) > 0]


def _lcs_table(x: list, y: list) -> list[list[int]]:
    """T[i][j] = length of the longest common subsequence of x[:i] and y[:j]:
       T[i][j] = T[i-1][j-1] + 1 if x[i-1] == y[j-1] else max(T[i-1][j], T[i][j-1])."""
    t = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        xi, row, prev = x[i - 1], t[i], t[i - 1]
        for j in range(1, len(y) + 1):
            row[j] = prev[j - 1] + 1 if xi == y[j - 1] else max(prev[j], row[j - 1])
    return t


def _lcs_words(x: list, y: list) -> list:
    """One LCS of x and y read back from the end of the table; on a tie the step goes to
    (i, j-1) unless T[i-1][j] > T[i][j-1] (the `rouge` package's choice, which matters because
    that package keeps the LCS as a SET of words)."""
    t = _lcs_table(x, y)
    i, j, out = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif t[i - 1][j] > t[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return out[::-1]


def _f_pkg(p: float, r: float) -> float:
    """The `rouge` package's F: 2 * P * R / (P + R + 1e-8)."""
    return 2.0 * p * r / (p + r + 1e-8)


def _f_score(p: float, r: float) -> float:
    """rouge-score's F: 2PR / (P + R), 0 when P + R == 0."""
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def rouge_n(prediction: str, reference: str, n: int = 2, convention: str = "rouge") -> dict:
    """ROUGE-N of one prediction against one reference text -> {"p", "r", "f"}.

    convention="rouge" (the `rouge` package, authors' protocol, facts note s.3): tokens from
      _rouge_pkg_sentences flattened across sentences; n-grams as SETS (each distinct n-gram once):
        P = |G_hyp & G_ref| / |G_hyp| ,  R = |G_hyp & G_ref| / |G_ref|  (0 if the set is empty),
        F = 2PR / (P + R + 1e-8).  A prediction with no sentence (the package raises) -> all 0.
    convention="rouge_score" (Google's rouge-score, default tokenizer, no stemmer): n-gram
      multisets, overlap = sum_g min(c_hyp(g), c_ref(g)),
        P = overlap / max(1, #hyp n-grams), R = overlap / max(1, #ref n-grams), F = 2PR/(P+R)."""
    if convention == "rouge":
        hs, rs = _rouge_pkg_sentences(prediction), _rouge_pkg_sentences(reference)
        if not hs or not rs:
            return {"p": 0.0, "r": 0.0, "f": 0.0}
        gh = set(ngram_counts([w for s in hs for w in s], n))
        gr = set(ngram_counts([w for s in rs for w in s], n))
        ov = len(gh & gr)
        p = ov / len(gh) if gh else 0.0
        r = ov / len(gr) if gr else 0.0
        return {"p": p, "r": r, "f": _f_pkg(p, r)}
    if convention == "rouge_score":
        ch, cr = ngram_counts(rouge_score_tokens(prediction), n), ngram_counts(rouge_score_tokens(reference), n)
        ov = sum(min(c, ch[g]) for g, c in cr.items())
        p = ov / max(1, sum(ch.values()))
        r = ov / max(1, sum(cr.values()))
        return {"p": p, "r": r, "f": _f_score(p, r)}
    raise ValueError(f"unknown ROUGE convention {convention!r} (use 'rouge' or 'rouge_score')")


def rouge_l(prediction: str, reference: str, convention: str = "rouge") -> dict:
    """ROUGE-L of one prediction against one reference text -> {"p", "r", "f"}.

    convention="rouge" (the `rouge` package's summary-level union LCS, authors' protocol):
        U    = union over reference sentences r_i and prediction sentences c_j of the SET of
               words of LCS(r_i, c_j) (one LCS per pair, read back as in _lcs_words)
        m    = number of distinct reference words, n = number of distinct prediction words
        R = |U| / m, P = |U| / n, F = 2PR / (P + R + 1e-8).   No sentence -> all 0.
    convention="rouge_score" (sentence-level ROUGE-L on rouge-score tokens):
        P = LCS / len(hyp), R = LCS / len(ref), F = 2PR / (P + R); empty side -> 0."""
    if convention == "rouge":
        hs, rs = _rouge_pkg_sentences(prediction), _rouge_pkg_sentences(reference)
        if not hs or not rs:
            return {"p": 0.0, "r": 0.0, "f": 0.0}
        union = set()
        for rsent in rs:
            for hsent in hs:
                union.update(_lcs_words(rsent, hsent))
        m = len({w for s in rs for w in s})
        n = len({w for s in hs for w in s})
        r, p = len(union) / m, len(union) / n
        return {"p": p, "r": r, "f": _f_pkg(p, r)}
    if convention == "rouge_score":
        th, tr = rouge_score_tokens(prediction), rouge_score_tokens(reference)
        if not th or not tr:
            return {"p": 0.0, "r": 0.0, "f": 0.0}
        lcs = _lcs_table(tr, th)[-1][-1]
        p, r = lcs / len(th), lcs / len(tr)
        return {"p": p, "r": r, "f": _f_score(p, r)}
    raise ValueError(f"unknown ROUGE convention {convention!r} (use 'rouge' or 'rouge_score')")


# ================================================================================================
# 7. Reasoning-text metrics per video and their means
# ================================================================================================

def reasoning_texts(output: str | None, gt_row: dict) -> tuple[str, str]:
    """(prediction text, reference text), facts note s.3: reference = think + answer with all
    tags removed and newlines dropped; prediction = the whole output with tags removed."""
    ref = strip_tags(str(gt_row.get("think") or "") + " " + str(gt_row.get("answer") or ""))
    return strip_tags(output), ref


def reasoning_scores_authors(output: str | None, gt_row: dict) -> dict | None:
    """One video's scores in the authors' protocol (facts note s.3); None = skipped.

    Empty output (empty / whitespace only) -> skipped (None). Tag-stripped text shorter than 5
    characters -> every score 0 (flag short=True). Otherwise, on lowercased texts:
      bleu2  = bleu(ref_tokens, hyp_tokens, weights=(0, 1, 0, 0))        (BP x bigram precision)
      meteor = meteor(ref_tokens, hyp_tokens)                            (no WordNet stage)
      rouge1/rouge2/rouge_l = F of the `rouge` package convention on the lowercased strings."""
    if output is None or not str(output).strip():
        return None
    pred, ref = reasoning_texts(output, gt_row)
    if len(pred) < 5:
        return {"bleu2": 0.0, "meteor": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rouge_l": 0.0, "short": True}
    pl, rl = pred.lower(), ref.lower()
    ht, rt = word_tokens(pl), word_tokens(rl)
    return {"bleu2": bleu(rt, ht, (0, 1, 0, 0)), "meteor": meteor(rt, ht),
            "rouge1": rouge_n(pl, rl, 1)["f"], "rouge2": rouge_n(pl, rl, 2)["f"],
            "rouge_l": rouge_l(pl, rl)["f"], "short": False}


def reasoning_scores_common(output: str | None, gt_row: dict) -> dict:
    """One video's scores in the common convention: cumulative BLEU-2 (weights (0.5, 0.5), no
    smoothing) on the same lowercased word tokens, rouge-score style ROUGE-1/2/L F on the
    tag-stripped texts. Nothing is skipped: an empty output scores 0 everywhere."""
    pred, ref = reasoning_texts(output, gt_row)
    return {"bleu2": bleu(word_tokens(ref), word_tokens(pred), (0.5, 0.5)),
            "rouge1": rouge_n(pred, ref, 1, "rouge_score")["f"],
            "rouge2": rouge_n(pred, ref, 2, "rouge_score")["f"],
            "rouge_l": rouge_l(pred, ref, "rouge_score")["f"]}


def _mean(xs):
    return float(np.mean(xs)) if len(xs) else None


def reasoning_metrics(outputs: list[str], gt_rows: list[dict]) -> dict:
    """Means over videos of reasoning_scores_authors (-> "reasoning") and
    reasoning_scores_common (-> "reasoning_common"). GT rows with neither think nor answer are
    left out of both."""
    auth, comm, n_skip, n_short = [], [], 0, 0
    for out, row in zip(outputs, gt_rows):
        if not (row.get("think") or row.get("answer")):
            continue
        comm.append(reasoning_scores_common(out, row))
        s = reasoning_scores_authors(out, row)
        if s is None:
            n_skip += 1
            continue
        n_short += s["short"]
        auth.append(s)
    keys_a = ("bleu2", "meteor", "rouge1", "rouge2", "rouge_l")
    keys_c = ("bleu2", "rouge1", "rouge2", "rouge_l")
    reasoning = {k: _mean([s[k] for s in auth]) for k in keys_a}
    reasoning.update(n=len(auth), n_skipped_empty=n_skip, n_short=n_short)
    common = {k: _mean([s[k] for s in comm]) for k in keys_c}
    common["n"] = len(comm)
    return {"reasoning": reasoning, "reasoning_common": common}


# ================================================================================================
# 8. Frame level: ROC-AUC (Mann-Whitney) and best-threshold F1
# ================================================================================================

def frame_scores(output: str | None, total_frames: int) -> np.ndarray:
    """Per-frame anomaly score from a completion. OUR definition: facts note s.3 says only that the
    authors' UCF-Crime AUC uses per-frame scores over all test frames concatenated, not how a
    completion becomes per-frame scores. Binary scores make the AUC (TPR + TNR) / 2:
      frame f (0-based) scores 1 if the authors' label is Abnormal and a <when> (s, e) was parsed
      and s <= f / total_frames <= e; every other frame (Normal, no parseable <when>, a
      reversed interval) scores 0."""
    scores = np.zeros(int(total_frames), dtype=np.float64)
    p = parse_completion(output)
    if authors_label(p.get("which")) == "Abnormal" and p.get("when") is not None:
        s, e = p["when"]
        pos = np.arange(int(total_frames)) / float(total_frames)
        scores[(pos >= s) & (pos <= e)] = 1.0
    return scores


def frame_labels(gt_row: dict) -> np.ndarray | None:
    """Per-frame GT: 1 for frames start..end inclusive on abnormal rows, 0 elsewhere and on normal
    rows. None if total_frames (or start/end of an abnormal row) is missing."""
    try:
        total = int(gt_row["total_frames"])
    except (KeyError, TypeError, ValueError):
        return None
    lab = np.zeros(total, dtype=np.int64)
    if gt_label(gt_row) == "Abnormal":
        try:
            s, e = int(gt_row["start"]), int(gt_row["end"])
        except (KeyError, TypeError, ValueError):
            return None
        lab[max(s, 0):min(e, total - 1) + 1] = 1
    return lab


def frame_auc(labels, scores) -> float | None:
    """ROC-AUC as the Mann-Whitney statistic (what sklearn.metrics.roc_auc_score returns):

      AUC = (sum of the ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)

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


def frame_metrics(outputs: list[str], gt_rows: list[dict]) -> dict:
    """Frame-level AUC and best F1 over all frames of all matched videos concatenated."""
    labs, scs, nv = [], [], 0
    for out, row in zip(outputs, gt_rows):
        lab = frame_labels(row)
        if lab is None or len(lab) == 0:
            continue
        labs.append(lab)
        scs.append(frame_scores(out, len(lab)))
        nv += 1
    if not labs:
        return {"auc": None, "best_f1": None, "best_threshold": None, "n_frames": 0, "n_videos": 0}
    y, s = np.concatenate(labs), np.concatenate(scs)
    f1, t = best_f1(y, s)
    return {"auc": frame_auc(y, s), "best_f1": f1, "best_threshold": t,
            "n_frames": int(len(y)), "n_videos": nv}


# ================================================================================================
# 9. Matching predictions to GT, and the whole score
# ================================================================================================

def _key(row: dict) -> tuple[str, str]:
    return (str(row.get("source", "")).strip(), str(row.get("video", "")).strip())


def match_predictions(pred_rows: list[dict], gt_rows: list[dict]) -> dict:
    """Pair prediction rows with GT rows: by (source, video); else by video alone when that id is
    unique in the GT. Returns dict(matched: list of (gt_index, output) in GT order,
    unknown: prediction keys not in the GT, duplicates: count of extra rows for a matched
    video (the first row wins), missing: GT keys with no prediction). Two GT rows with the same
    (source, video) raise ValueError: the GT must identify each video once."""
    by_key = {}
    by_video = defaultdict(list)
    for i, g in enumerate(gt_rows):
        k = _key(g)
        if k in by_key:
            raise ValueError(f"ground truth has two rows for source={k[0]!r} video={k[1]!r}")
        by_key[k] = i
        by_video[k[1]].append(i)
    got, unknown, dup = {}, [], 0
    for p in pred_rows:
        k = _key(p)
        gi = by_key.get(k)
        if gi is None and len(by_video.get(k[1], [])) == 1:
            gi = by_video[k[1]][0]
        if gi is None:
            unknown.append(f"{k[0]}/{k[1]}")
            continue
        if gi in got:
            dup += 1
            continue
        out = p.get("output")
        got[gi] = "" if out is None else str(out)
    matched = [(i, got[i]) for i in range(len(gt_rows)) if i in got]
    missing = ["/".join(_key(g)) for i, g in enumerate(gt_rows) if i not in got]
    return {"matched": matched, "unknown": unknown, "duplicates": dup, "missing": missing}


def score_predictions(pred_rows: list[dict], gt_rows: list[dict]) -> dict:
    """Every figure of the metrics JSON (layout in the module docstring) from prediction rows
    {source, video, output, ...} and GT rows (Vad-Reasoning SFT-test format)."""
    m = match_predictions(pred_rows, gt_rows)
    idx = [i for i, _ in m["matched"]]
    outs = [o for _, o in m["matched"]]
    gts = [gt_rows[i] for i in idx]
    got = dict(m["matched"])
    res = {"detection": detection_metrics(outs, gts)}
    ab = [i for i, g in enumerate(gt_rows) if gt_label(g) == "Abnormal"]
    res["detection_abnormal_only"] = detection_abnormal_only([got.get(i) for i in ab],
                                                             [gt_rows[i] for i in ab])
    res["category"] = category_metrics(outs, gts)
    res.update(reasoning_metrics(outs, gts))
    res["frame"] = frame_metrics(outs, gts)
    # share of outputs whose whole text matches the 2- or 4-step layout (the format reward, Table 7)
    res["format"] = {"pass_rate": _mean([float(vadr.check_format(o) is not None) for o in outs]),
                     "n": len(outs)}
    disagree = 0
    for o in outs:
        p = parse_completion(o)
        ours = p.get("label") or "Abnormal"        # missing <which>: Abnormal under both rules
        disagree += ours != authors_label(p.get("which"))
    res["counts"] = {
        "n_gt": len(gt_rows), "n_pred": len(pred_rows), "n_matched": len(outs),
        "n_missing": len(m["missing"]), "n_unknown_pred": len(m["unknown"]),
        "n_duplicate_pred": m["duplicates"], "n_empty": sum(not o.strip() for o in outs),
        "n_label_rule_disagree": disagree,
        "n_gt_no_interval": sum(gt_interval(g) is None for g in gt_rows),
    }
    res["unmatched"] = {"unknown_pred": m["unknown"], "missing": m["missing"]}
    return res


# ================================================================================================
# 10. Multiple choice (VANE, paper Table 3; facts note s.3)
# ================================================================================================
# JSONL format, one question per line:
#   {"id": "sora_012", "category": "SORA", "question": "... A. ... B. ... C. ... D. ...",
#    "answer": "B", "output": "<think>...</think><answer>B</answer>"}
# "answer" is the correct letter (a longer string is read with the same extraction rule);
# "output" is the model's completion. The GT may also come from a separate file of the same rows
# without "output", matched by id.

_CHOICE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")


def extract_choice(text: str | None) -> str | None:
    """The predicted letter: the FIRST standalone capital A, B, C or D (not touching another
    letter or digit: "B", "(B)", "B.", "Answer: B" match; "Bus", "AD" do not) in the <answer>
    block when there is one, else in the output with any <think>...</think> removed.
    Caveat of this simple rule: the article "A" in "A man ..." is read as choice A."""
    if not text:
        return None
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    scope = m.group(1) if m else re.sub(r"<think>.*?(</think>|$)", " ", text, flags=re.DOTALL)
    c = _CHOICE_RE.search(scope)
    return c.group(1) if c else None


def score_multiple_choice(preds: list[dict], gts: list[dict] | None = None) -> dict:
    """Accuracy overall and per category (paper Table 3: per-category accuracy, in %). A question
    is correct only when the extracted letter equals the answer letter (facts note s.3).
    gts=None: the prediction rows carry category and answer themselves; otherwise GT rows are
    matched by str(id) and every GT question counts (no output -> wrong)."""
    if gts is None:
        gts = preds
    out_by_id = {}
    for p in preds:
        out_by_id.setdefault(str(p.get("id")), p.get("output"))
    per = defaultdict(lambda: [0, 0])
    n_unans, n_missing = 0, 0
    for g in gts:
        gid = str(g.get("id"))
        if gid not in out_by_id:
            n_missing += 1
        pred = extract_choice(out_by_id.get(gid))
        n_unans += pred is None
        gold = extract_choice(str(g.get("answer", "")))
        cat = str(g.get("category", ""))
        per[cat][0] += pred is not None and pred == gold
        per[cat][1] += 1
    n = sum(v[1] for v in per.values())
    return {"accuracy": sum(v[0] for v in per.values()) / n if n else None, "n": n,
            "n_unanswered": n_unans, "n_missing_output": n_missing,
            "per_category": {c: {"accuracy": v[0] / v[1], "n": v[1]} for c, v in sorted(per.items())}}


# ================================================================================================
# 11. Tables (paper Table 2 / Table 4 layouts), with the paper's published rows
# ================================================================================================

# Columns: (header, dotted metric key). Table 2: reasoning (BLEU-2, METEOR, ROUGE-2) and
# detection (Acc, F1, mIoU, R@0.3, R@0.5). Table 4: BLEU-2, ROUGE-1/2/L, Prec., mIoU, R@0.3/0.5/0.7.
TABLE2_COLUMNS = [("BLEU-2", "reasoning.bleu2"), ("METEOR", "reasoning.meteor"),
                  ("ROUGE-2", "reasoning.rouge2"), ("Acc", "detection.accuracy"),
                  ("F1", "detection.f1"), ("mIoU", "detection.miou"),
                  ("R@0.3", "detection.r@0.3"), ("R@0.5", "detection.r@0.5")]
TABLE4_COLUMNS = [("BLEU-2", "reasoning.bleu2"), ("ROUGE-1", "reasoning.rouge1"),
                  ("ROUGE-2", "reasoning.rouge2"), ("ROUGE-L", "reasoning.rouge_l"),
                  ("Prec.", "detection.precision"), ("mIoU", "detection.miou"),
                  ("R@0.3", "detection.r@0.3"), ("R@0.5", "detection.r@0.5"),
                  ("R@0.7", "detection.r@0.7")]


def _paper_row(keys, values):
    return dict(zip(keys, values))


_T2 = [k for _, k in TABLE2_COLUMNS]
_T4 = [k for _, k in TABLE4_COLUMNS]
# Published numbers (facts, copied from the paper). Table 2: Vad-Reasoning test set.
PAPER_TABLE2 = {
    "Qwen2.5-VL-7B (paper, Table 2)": _paper_row(_T2, [0.113, 0.264, 0.116, 0.761, 0.730, 0.567, 0.610, 0.563]),
    "Vad-R1 (paper, Table 2)": _paper_row(_T2, [0.233, 0.406, 0.194, 0.875, 0.862, 0.713, 0.770, 0.706]),
}
# Table 4: training strategies on Qwen2.5-VL-7B.
PAPER_TABLE4 = {
    "Qwen2.5-VL (paper, Table 4)": _paper_row(_T4, [0.113, 0.505, 0.199, 0.477, 0.768, 0.567, 0.610, 0.563, 0.526]),
    "+SFT (paper, Table 4)": _paper_row(_T4, [0.219, 0.456, 0.196, 0.429, 0.712, 0.612, 0.677, 0.599, 0.535]),
    "+AVA-GRPO (paper, Table 4)": _paper_row(_T4, [0.143, 0.513, 0.207, 0.486, 0.810, 0.675, 0.736, 0.661, 0.606]),
    "+SFT+AVA-GRPO (paper, Table 4)": _paper_row(_T4, [0.233, 0.530, 0.238, 0.501, 0.882, 0.713, 0.770, 0.706, 0.651]),
}
# Table 3: VANE per-category accuracy (%), Vad-R1 row.
PAPER_TABLE3_VAD_R1 = {"SORA": 41.30, "OpenSORA": 78.00, "RG2": 56.00, "VideoLCM": 63.46,
                       "MS-T2": 60.42, "Avenue": 75.76, "Ped1": 60.00, "Ped2": 63.89}


def get_metric(metrics: dict, dotted: str):
    """metrics["a"]["b"] for dotted "a.b"; also accepts a flat dict keyed by dotted names.
    Missing -> None."""
    if dotted in metrics:
        return metrics[dotted]
    cur = metrics
    head, _, tail = dotted.partition(".")
    cur = cur.get(head) if isinstance(cur, dict) else None
    if isinstance(cur, dict):
        return cur.get(tail)
    return None


def format_table(named_metrics: dict[str, dict], with_paper: bool = False, layout: str = "table2") -> str:
    """A Markdown table, one row per named metrics dict (nested as score_predictions returns, or
    flat with dotted keys). layout "table2": the paper's Table 2 columns; "table4": Table 4's.
    with_paper=True appends the paper's published rows of that table (numbers as printed).
    Missing figures print as "-". Values are printed to three decimals like the paper."""
    cols = {"table2": TABLE2_COLUMNS, "table4": TABLE4_COLUMNS}[layout]
    rows = dict(named_metrics)
    if with_paper:
        rows.update(PAPER_TABLE2 if layout == "table2" else PAPER_TABLE4)
    lines = ["| Method | " + " | ".join(h for h, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, met in rows.items():
        cells = []
        for _, key in cols:
            v = get_metric(met, key)
            cells.append("-" if v is None else f"{v:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_mc_table(named: dict[str, dict], with_paper: bool = False) -> str:
    """Table-3-style Markdown: per-category accuracy in %, one row per named MC result."""
    cats = sorted({c for r in named.values() for c in r.get("per_category", {})})
    if with_paper:
        cats = list(PAPER_TABLE3_VAD_R1) + [c for c in cats if c not in PAPER_TABLE3_VAD_R1]
    lines = ["| Method | " + " | ".join(cats) + " | All |", "|---|" + "---:|" * (len(cats) + 1)]
    for name, r in named.items():
        pc = r.get("per_category", {})
        cells = [f"{100 * pc[c]['accuracy']:.2f}" if c in pc else "-" for c in cats]
        allv = r.get("accuracy")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if allv is None else f'{100 * allv:.2f}'} |")
    if with_paper:
        lines.append("| Vad-R1 (paper, Table 3) | " + " | ".join(
            f"{PAPER_TABLE3_VAD_R1[c]:.2f}" if c in PAPER_TABLE3_VAD_R1 else "-" for c in cats) + " | - |")
    return "\n".join(lines)


def format_report(metrics: dict, name: str = "ours", with_paper: bool = False) -> str:
    """The CLI's printout: Table 2 and Table 4 layouts, the common-convention figures, counts."""
    c = metrics["counts"]
    rc, da = metrics["reasoning_common"], metrics["detection_abnormal_only"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    parts = [
        "Authors' protocol (facts note s.3), Table 2 layout:", format_table({name: metrics}, with_paper, "table2"),
        "", "Table 4 layout:", format_table({name: metrics}, with_paper, "table4"), "",
        f"Common conventions: cumulative BLEU-2 {fmt(rc['bleu2'])}, rouge-score R-1/R-2/R-L "
        f"{fmt(rc['rouge1'])}/{fmt(rc['rouge2'])}/{fmt(rc['rouge_l'])}; abnormal-only mIoU "
        f"{fmt(da['miou'])}, R@0.3/0.5/0.7 {fmt(da['r@0.3'])}/{fmt(da['r@0.5'])}/{fmt(da['r@0.7'])} "
        f"(n={da['n']}); category acc {fmt(metrics['category']['accuracy'])}; "
        f"frame AUC {fmt(metrics['frame']['auc'])}, best F1 {fmt(metrics['frame']['best_f1'])}",
        "Counts: " + ", ".join(f"{k}={v}" for k, v in c.items()),
    ]
    if c["n_unknown_pred"]:
        parts.append(f"WARNING: {c['n_unknown_pred']} prediction rows name videos not in the GT "
                     f"(ignored), e.g. {metrics['unmatched']['unknown_pred'][:5]}")
    if c["n_missing"]:
        parts.append(f"NOTE: {c['n_missing']} GT videos have no prediction row (skipped by the "
                     f"authors' protocol; IoU 0 in detection_abnormal_only)")
    return "\n".join(parts)


# ================================================================================================
# 12. Command line
# ================================================================================================

def run_scoring(pred_path: str, gt_path: str, json_path: str | None = None,
                with_paper: bool = False, name: str = "ours") -> dict:
    """What `--score` does: read both JSONL files, score, write the JSON (if asked), print."""
    metrics = score_predictions(load_jsonl(pred_path), load_jsonl(gt_path))
    if json_path:
        d = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(d, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
    print(format_report(metrics, name=name, with_paper=with_paper))
    return metrics


def run_mc_scoring(pred_path: str, gt_path: str | None = None, json_path: str | None = None,
                   with_paper: bool = False, name: str = "ours") -> dict:
    """What `--mc` does: multiple-choice accuracy (VANE-style JSONL, section 10)."""
    res = score_multiple_choice(load_jsonl(pred_path), load_jsonl(gt_path) if gt_path else None)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump({"multiple_choice": res}, f, indent=2)
    print(format_mc_table({name: res}, with_paper))
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Vad-R1 evaluation: inference (--model) or scoring (--score / --mc).")
    g = ap.add_argument_group("inference (a checkpoint over a manifest -> predictions JSONL)")
    g.add_argument("--model", help="checkpoint directory, or 'toy'")
    g.add_argument("--data", help="test manifest JSONL (Vad-Reasoning SFT-test rows)")
    g.add_argument("--video-root", help="directory the videos are resolved against")
    g.add_argument("--out", help="predictions JSONL to write")
    add_inference_args(ap)
    s = ap.add_argument_group("scoring")
    s.add_argument("--score", metavar="PREDS", help="predictions JSONL (source, video, output) to score")
    s.add_argument("--gt", help="ground-truth JSONL (Vad-Reasoning SFT-test format; for --mc optional)")
    s.add_argument("--mc", metavar="PREDS", help="multiple-choice JSONL (id, category, question, answer, output)")
    s.add_argument("--json", help="write every figure here (layout: module docstring)")
    s.add_argument("--with-paper", action="store_true", help="print the paper's published rows beside ours")
    s.add_argument("--name", default="ours", help="row name in the printed table")
    s.add_argument("--report", metavar="RUN_DIR", help="write RUN_DIR/table.md, curves and frame strips "
                   "from eval_*.json and the logs (with --data/--video-root for the strips)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.score:
        if not args.gt:
            raise SystemExit("--score needs --gt (the ground-truth JSONL)")
        run_scoring(args.score, args.gt, args.json, args.with_paper, args.name)
        return 0
    if args.mc:
        run_mc_scoring(args.mc, args.gt, args.json, args.with_paper, args.name)
        return 0
    if args.model:
        return run_inference(args)
    if args.report:
        print(run_report(args.report, args.data, args.video_root))
        return 0
    build_parser().print_help()
    return 2


# ================================================================================================
# 13. INFERENCE: a checkpoint over a test manifest -> predictions JSONL (facts note s.3 "Inference")
# ================================================================================================
# 16 frames at linspace(0, total-1, 16), at most 128*28*28 pixels per frame, the fine-grained P2C-CoT
# prompt, up to 512 new tokens. Greedy by default (deterministic, what a table should report);
# --sample uses the authors' temperature 0.1 / top_p 0.9. One row per video, flushed per batch:
# {source, video, anomaly_type, output}, the authors' layout, so their scorers read our files and
# ours reads theirs. Rows already in --out are skipped (resume); under torchrun each rank writes
# <out>.rank<r> for its strided shard and rank 0 merges them in manifest order at the end.

def add_inference_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("generation (facts note s.3)")
    g.add_argument("--batch-size", type=int, default=4, help="videos per generation batch")
    g.add_argument("--limit", type=int, default=None, help="only the first N videos of the manifest")
    g.add_argument("--sample", action="store_true", help="sample like the authors (temperature/top-p) instead of greedy")
    g.add_argument("--temperature", type=float, default=0.1, help="sampling temperature with --sample (authors: 0.1)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus with --sample (authors: 0.9)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="max completion length (authors: 512)")
    g.add_argument("--prompt-variant", default="fine", choices=["fine", "binary"], help="<which>: categories or Abnormal/Normal")
    g.add_argument("--skip-bad", action="store_true", help="skip (and count) bad manifest rows instead of failing")
    g.add_argument("--num-workers", type=int, default=1, help="DataLoader workers decoding videos")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    vadr.add_video_args(ap)


def _done_keys(path: str) -> set:
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


def generate_outputs(model, tok, batch: dict, args, generator=None) -> list[str]:
    """One batched generation (grpo.sample_group with one sample per video); texts up to the end token."""
    out = grpo.sample_group(model, {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}, num_samples=1,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, greedy=not args.sample, end_ids=vadr.end_token_ids(tok),
                            pad_id=vadr.pad_token_id(tok), generator=generator)
    texts = []
    for ids, m in zip(out["completion_ids"].tolist(), out["completion_mask"].tolist()):
        texts.append(tok.decode(ids[:int(sum(m))], skip_special_tokens=True))
    return texts


def run_inference(args) -> int:
    """python eval.py --model DIR --data test.jsonl --video-root ROOT --out preds.jsonl [--json m.json]"""
    import torch
    from tqdm import tqdm
    import data as data_mod

    if not (args.data and args.out):
        raise SystemExit("inference needs --model, --data and --out")
    dist_info = vadr.setup_distributed(args.device)
    rank, world, device = dist_info["rank"], dist_info["world_size"], dist_info["device"]
    rows = data_mod.read_manifest(args.data, "sft", video_root=args.video_root, skip_bad=args.skip_bad)
    if args.limit:
        rows = rows[:args.limit]
    part = args.out if world == 1 else f"{args.out}.rank{rank}"
    os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)
    done = _done_keys(part) | (_done_keys(args.out) if world > 1 else set())
    mine = [r for r in vadr.shard_for_rank(rows, rank, world) if (str(r["source"]), str(r["video"])) not in done]
    model, tok = vadr.load_model(args.model, device=device,
                                 dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    model.eval()
    ds = data_mod.SFTDataset(mine, prompt_variant=args.prompt_variant, num_frames=args.frames,
                             min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, collate_fn=data_mod.make_collate(tok, with_targets=False),
                                         num_workers=args.num_workers if len(mine) else 0)
    gen = torch.Generator(device=device).manual_seed(args.seed + rank)
    with tqdm(total=len(mine), disable=not vadr.is_main(), desc="eval") as pbar:
        for batch in loader:
            texts = generate_outputs(model, tok, vadr.to_device(batch, device), args, gen)
            with open(part, "a") as f:
                for r, t in zip(batch["rows"], texts):
                    f.write(json.dumps(dict(source=r["source"], video=r["video"], anomaly_type=r["anomaly_type"],
                                            output=t), ensure_ascii=False) + "\n")
            pbar.update(len(texts))
    vadr.barrier()
    if world > 1 and vadr.is_main():  # merge the rank files in manifest order
        by_key = {}
        for src in [args.out] + [f"{args.out}.rank{r}" for r in range(world)]:
            if os.path.isfile(src):
                for r in load_jsonl(src):
                    by_key[(str(r["source"]), str(r["video"]))] = r
        with open(args.out + ".tmp", "w") as f:
            for r in rows:
                k = (str(r["source"]), str(r["video"]))
                if k in by_key:
                    f.write(json.dumps(by_key[k], ensure_ascii=False) + "\n")
        os.replace(args.out + ".tmp", args.out)
        for r in range(world):
            if os.path.isfile(f"{args.out}.rank{r}"):
                os.remove(f"{args.out}.rank{r}")
    if vadr.is_main():
        print(f"predictions: {args.out}")
        if args.json:  # score straight away against the same manifest
            run_scoring(args.out, args.data, args.json, args.with_paper, args.name)
    vadr.barrier()
    if dist_info["distributed"]:
        torch.distributed.destroy_process_group()
    return 0


# ================================================================================================
# 14. REPORT: the toy pipeline's Table-4-style table, training curves (SVG) and frame strips (PNG)
# ================================================================================================
#   python eval.py --report runs/toy [--data data/toy/Vad-Reasoning-SFT-test.jsonl --video-root data/toy/videos]
# reads runs/toy/eval_{base,sft,rl,rl_only}.json, sft/log.jsonl and rl/log.jsonl, and writes
# table.md, sft_curves.svg, rl_curves.svg (the paper's Figure 10: total reward, its std, completion
# length, plus each reward's mean) and strips/<video>.png (the 16 sampled frames with the
# ground-truth interval in green and the predicted one in red under them). No plotting library:
# SVG is text and PNG is written with zlib (data.write_png).

REPORT_ROWS = [("base", "Toy Qwen2.5-VL (stage-0 captioner)"), ("rl_only", "+AVA-GRPO"), ("sft", "+SFT"),
               ("rl", "+SFT+AVA-GRPO")]


def svg_curves(path: str, panels: list[tuple[str, list, list]], cols: int = 3, w: int = 300, h: int = 200):
    """Small multiples: one line chart per (title, xs, ys) panel, with min/max labels."""
    rows = max(1, math.ceil(len(panels) / cols))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * w}" height="{rows * h}" '
           f'font-family="sans-serif" font-size="11">', f'<rect width="100%" height="100%" fill="white"/>']
    for k, (title, xs, ys) in enumerate(panels):
        ox, oy = (k % cols) * w, (k // cols) * h
        L, R, T, B = ox + 45, ox + w - 10, oy + 22, oy + h - 25   # plot box
        out.append(f'<text x="{ox + w / 2}" y="{oy + 14}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{L}" y="{T}" width="{R - L}" height="{B - T}" fill="none" stroke="#999"/>')
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if not pts:
            continue
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-9)
        poly = " ".join(f"{L + (x - x0) / (x1 - x0) * (R - L):.1f},{B - (y - y0) / (y1 - y0) * (B - T):.1f}"
                        for x, y in pts)
        out.append(f'<polyline points="{poly}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
        out.append(f'<text x="{L - 3}" y="{T + 8}" text-anchor="end">{y1:.3g}</text>')
        out.append(f'<text x="{L - 3}" y="{B}" text-anchor="end">{y0:.3g}</text>')
        out.append(f'<text x="{L}" y="{B + 14}">{x0:g}</text><text x="{R}" y="{B + 14}" text-anchor="end">{x1:g} steps</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def _smooth(ys: list, k: int) -> list:
    """Trailing moving average over k steps (RL rewards are noisy at 2 videos per step)."""
    return [float(np.mean(ys[max(0, i - k + 1):i + 1])) for i in range(len(ys))]


def frame_strip(frames, total: int, indices, gt: tuple | None, pred: tuple | None, scale: int = 1):
    """The sampled frames side by side over two timeline bars (fractions of the video):
    ground truth in green, prediction in red; a normal video / prediction leaves its bar grey."""
    T, H, W, _ = frames.shape
    strip = np.concatenate([np.pad(f, ((0, 0), (1, 1), (0, 0)), constant_values=255) for f in frames], 1)
    width = strip.shape[1]
    bars = np.full((22, width, 3), 255, np.uint8)
    for row, (iv, rgb) in enumerate([(gt, (40, 160, 60)), (pred, (210, 40, 40))]):
        y = 2 + row * 10
        bars[y:y + 8] = (215, 215, 215)
        if iv is not None:
            a, b = sorted((min(max(iv[0], 0.0), 1.0), min(max(iv[1], 0.0), 1.0)))
            bars[y:y + 8, int(a * width):max(int(a * width) + 1, int(b * width))] = rgb
    for i in indices:  # tick marks where the sampled frames sit
        x = min(width - 1, int(i / max(1, total) * width))
        bars[20:22, x] = 0
    img = np.concatenate([strip, bars], 0)
    return img.repeat(scale, 0).repeat(scale, 1)


def run_report(run_dir: str, data_path: str | None, video_root: str | None, n_strips: int = 8) -> str:
    import data as data_mod

    named = {}
    for key, label in REPORT_ROWS:
        p = os.path.join(run_dir, f"eval_{key}.json")
        if os.path.isfile(p):
            named[label] = json.load(open(p))
    lines = ["# Toy Vad-R1: what each stage adds (layout of the paper's Table 4)", "",
             format_table(named, layout="table4"), "", "Detection and format (authors' protocol):", "",
             "| Model | Acc | F1 | mIoU | format pass rate | category acc |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in named.items():
        cells = [get_metric(m, k) for k in ("detection.accuracy", "detection.f1", "detection.miou",
                                            "format.pass_rate", "category.accuracy")]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    rl_log = os.path.join(run_dir, "rl", "log.jsonl")
    if os.path.isfile(rl_log):
        recs = load_jsonl(rl_log)
        n = max(1, len(recs) // 10)
        first, last = np.mean([r["reward"] for r in recs[:n]]), np.mean([r["reward"] for r in recs[-n:]])
        lines += ["", f"RL: mean total reward over the first tenth of steps {first:.3f}, over the last tenth "
                  f"{last:.3f} ({len(recs)} steps)."]
        xs = [r["step"] for r in recs]
        k = max(1, len(recs) // 20)
        panels = [(f"{t} (avg {k})", xs, _smooth([r.get(key) for r in recs], k)) for t, key in
                  [("total reward", "reward"), ("reward std", "reward_std"), ("completion length", "completion_length"),
                   ("accuracy", "reward_accuracy"), ("format", "reward_format"), ("verification", "reward_verification"),
                   ("length", "reward_length"), ("KL", "kl"), ("zero-std groups", "zero_std_fraction")]]
        svg_curves(os.path.join(run_dir, "rl_curves.svg"), panels)
    sft_log = os.path.join(run_dir, "sft", "log.jsonl")
    if os.path.isfile(sft_log):
        recs = load_jsonl(sft_log)
        xs = [r["step"] for r in recs]
        svg_curves(os.path.join(run_dir, "sft_curves.svg"),
                   [("SFT loss (nats / target token)", xs, [r["loss"] for r in recs]),
                    ("learning rate", xs, [r["lr"] for r in recs]), ("grad norm", xs, [r["grad_norm"] for r in recs])])
    preds_path = next((os.path.join(run_dir, f"preds_{k}.jsonl") for k in ("rl", "sft", "base")
                       if os.path.isfile(os.path.join(run_dir, f"preds_{k}.jsonl"))), None)
    if preds_path and data_path:
        os.makedirs(os.path.join(run_dir, "strips"), exist_ok=True)
        gt = data_mod.read_manifest(data_path, "sft", video_root=video_root)
        preds = {(str(r["source"]), str(r["video"])): r["output"] for r in load_jsonl(preds_path)}
        ab = [r for r in gt if r["label"] == "Abnormal"][: n_strips // 2]
        no = [r for r in gt if r["label"] == "Normal"][: n_strips - len(ab)]
        for r in ab + no:
            out = preds.get((str(r["source"]), str(r["video"])))
            if out is None:
                continue
            p = parse_completion(out)
            v = vadr.read_video(r["video_path"], 16)
            pred_iv = p["when"] if p["label"] == "Abnormal" else None
            img = frame_strip(v["frames"], v["total_frames"], v["indices"], r["when"], pred_iv)
            data_mod.write_png(os.path.join(run_dir, "strips", f"{r['video']}.png"), img)
        lines += ["", f"Frame strips ({os.path.basename(preds_path)}): {os.path.join(run_dir, 'strips')}/ "
                  "(green = ground truth, red = predicted interval)."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(run_dir, "table.md"), "w") as f:
        f.write(text)
    return text


if __name__ == "__main__":
    sys.exit(vadr.run_main(main))
