"""rewards.py -- the five rewards of AVA-GRPO (paper Table 7), as pure functions: strings in, floats out.

    Type                               Value   here
    Accuracy                           1       accuracy_reward
    Format                             1       format_reward
    Anomaly verification: Abnormal     +0.5    verification_trim (Alg. 1 lines 3-9) + verification_reward (lines 11-16)
    Anomaly verification: Normal       -0.2    (same)
    Length                             0.2     length_reward / length_rewards_group (App. C.2, C.3)

and their sum, Algorithm 2 line 10: R = R_acc + R_f + R_ano + R_len (total_reward, group_rewards).
Nothing here touches a model or a video: the caller (train_rl.py) samples the completions, asks
verification_trim which part of the video to keep, re-encodes the trimmed video, samples the second
completion, and hands the texts back to total_reward. That keeps every reward testable on strings.

Paper sections: Sec. 3.3 (verification), App. C.2 (length reward), App. C.3 (ranges [140, 261] normal,
[233, 456] abnormal), Table 7 (values), Algorithms 1-2. Authors' scripts: ../shared/notes/vad-r1-facts.md s.2.

Run the tests:  python -m pytest tests/test_rewards.py -q

Decisions and departures (paper vs the authors' scripts vs this file)
--------------------------------------------------------------------
 1. Verification reward follows Algorithm 1 exactly, per completion: +0.5 when the first prediction
    is Abnormal and the prediction on the trimmed video is Normal, -0.2 when Normal -> Abnormal,
    0 otherwise. DEPARTS FROM THE AUTHORS' SCRIPT, which (a) read the first prediction from a stale
    loop variable (a bug: every completion was compared against the same, wrong, first label) and
    (b) gave -0.2 only to completions that had also scored accuracy or format. Neither is in the paper.
 2. Which part of the video is discarded (Alg. 1 lines 4-8): predicted Abnormal with a valid
    <when>[s, e] (0 <= s < e <= 1) -> discard [s, e]; anything else (predicted Normal, Abnormal
    without a valid <when>, no label at all) -> discard [0, 0.3] or [0.7, 1] with probability 1/2.
    The paper does not say what to do with an Abnormal prediction lacking a usable <when>, nor how
    long "the beginning or the ending segment" is; 0.3 and the fallback are the authors' choices.
 3. Degenerate trim: discarding [s, e] = [0, 1] leaves no video (and with total_frames given, any
    kept window holding no frame is the same case). verification_trim then returns [] and the
    caller skips the second pass: r_ano = 0, the value Algorithm 1 line 1 initialises it to. We do
    NOT fall back to the head/tail trim there, because the trimmed video would still contain the
    segment the model called abnormal, so a "Normal" on it would be evidence AGAINST the first
    prediction, yet it would earn +0.5. Skipping never pays more than a real segment (0 vs 0/+0.5),
    so it is not a reward hack.
 4. The coin of the head/tail trim is drawn from a generator the caller passes (seeded per step), and
    it is drawn on every call, whatever the branch, so completion i's coin does not depend on what
    the completions before it predicted. The authors used the global `random` module.
 5. Length is counted in WORDS: the whole completion with the project's tags (<think>, <step1>..,
    <answer>, <which>.. <how>, opening or closing) replaced by spaces, then split on whitespace
    (count_words). The paper counts "the length of the reasoning text" in the SFT data, whose
    statistics (facts note s.1, think + answer, tags stripped) match the paper's ranges; counting a
    completion the same way as the SFT target keeps the ranges meaningful. Bounds are inclusive.
 6. The range is chosen by the PREDICTED class (<which>), as in the authors' script; the paper is
    silent. Why predicted: a Normal answer is a 2-step text and an Abnormal one a 4-step text, so the
    expected length follows the layout the model chose; judging a wrong "Normal" answer against the
    abnormal range would push the model to pad a 2-step text. Label correctness is the accuracy
    reward's job, so the length reward stays independent of it. No parseable label -> 0.
 7. The authors' length reward is offered as length_rewards_group(mode="authors"): it counts
    completion TOKENS (the caller passes n_tokens; the ranges are applied to that count as given),
    and pays only completions with accuracy 1, and only when more than one completion of the group
    is correct. The default ("words") is the paper's description.
 8. The weak label (`solution`) may be 'Abnormal'/'Normal', wrapped in <answer>..</answer> (Video-R1
    style), or a fine-grained category; it is reduced to Normal/Abnormal with the same rule as the
    prediction (vadr.label_from_which: 'Normal' -> Normal, any other text -> Abnormal).
"""
from __future__ import annotations

import json
import re
from typing import Iterable, Sequence

import vadr

# Table 7 values.
ACCURACY_VALUE = 1.0
FORMAT_VALUE = 1.0
VERIFY_ABNORMAL_VALUE = 0.5    # Abnormal -> Normal after discarding the predicted segment (Alg. 1 line 13)
VERIFY_NORMAL_VALUE = -0.2     # Normal -> Abnormal after discarding the head or the tail (Alg. 1 line 15)
LENGTH_VALUE = 0.2

# App. C.3: "For normal videos, the length range of reasoning process is set as [140, 261], while it is
# set as [233, 456] for abnormal videos." Inclusive, in words (decision 5).
DEFAULT_LENGTH_RANGES = {"Normal": (140, 261), "Abnormal": (233, 456)}

# Alg. 1 line 5, "randomly discard either the beginning or the ending segment": the authors remove
# [0, 0.3] or [0.7, 1] of the video (facts note s.2).
HEAD_TAIL_FRACTION = 0.3

_TAG = re.compile(r"</?(?:think|answer|step\d+|which|what|when|where|why|how)>")


# ------------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------------

def predicted_label(completion: str) -> str | None:
    """'Abnormal' / 'Normal' from the completion's <which> (vadr.parse_completion), None if there is none."""
    return vadr.parse_completion(completion)["label"]


def weak_label(solution: str) -> str:
    """Reduce the RL row's `solution` to 'Abnormal' / 'Normal' (decision 8). Raises on an empty label."""
    s = _TAG.sub(" ", str(solution)).strip()
    label = vadr.label_from_which(s)
    if label is None:
        raise ValueError(f"weak label {solution!r} is empty: expected 'Abnormal' or 'Normal'")
    return label


# ------------------------------------------------------------------------------------------------
# Accuracy and format (Table 7 rows 1-2; Algorithm 2 lines 6-7)
# ------------------------------------------------------------------------------------------------

def accuracy_reward(completion: str, solution: str) -> float:
    """Accuracy reward (Table 7: 1).

    Returns 1.0 if the binary label predicted in <which> (vadr.parse_completion(completion)['label'])
    equals the weak label `solution` ('Abnormal' / 'Normal'), else 0.0 (also 0.0 without a <which>).
    """
    return ACCURACY_VALUE if predicted_label(completion) == weak_label(solution) else 0.0


def format_reward(completion: str) -> float:
    """Format reward (Table 7: 1).

    Returns 1.0 if the WHOLE completion matches the 2-step normal layout
    (<think><step1/><step2/></think><answer> which, what, why </answer>) or the 4-step abnormal layout
    (step1..step4; which, what, when, where, why, how), tags in that order (vadr.check_format), else 0.0.
    The layout need not agree with <which>: that is the accuracy reward's business.
    """
    return FORMAT_VALUE if vadr.check_format(completion) is not None else 0.0


# ------------------------------------------------------------------------------------------------
# Length (Table 7 row 5; App. C.2-C.3)
# ------------------------------------------------------------------------------------------------

def count_words(text: str) -> int:
    """Words of `text` with the project's tags replaced by spaces, split on whitespace (decision 5).
    '<think><step1>a b</step1></think>' -> 2; '<when>[0.2, 0.5]</when>' -> 2 ('[0.2,', '0.5]')."""
    return len(_TAG.sub(" ", text or "").split())


def _in_range(n: int, label: str | None, ranges: dict) -> bool:
    if label is None:
        return False
    lo, hi = ranges[label]
    return lo <= n <= hi  # inclusive bounds (App. C.3 "[140, 261]")


def length_reward(completion: str, ranges: dict = DEFAULT_LENGTH_RANGES) -> float:
    """Length reward, the paper's version (Table 7: 0.2; App. C.2).

    Returns 0.2 if count_words(completion) lies in ranges[predicted class] (inclusive), else 0.0.
    ranges: {'Normal': (lo, hi), 'Abnormal': (lo, hi)}, default DEFAULT_LENGTH_RANGES (App. C.3),
    or length_ranges_from_manifest(sft_rows). The predicted class chooses the range (decision 6);
    a completion without a parseable <which> gets 0.0.
    """
    label = predicted_label(completion)
    return LENGTH_VALUE if _in_range(count_words(completion), label, ranges) else 0.0


def length_rewards_group(completions: Sequence[str], solution: str, ranges: dict = DEFAULT_LENGTH_RANGES,
                         mode: str = "words", n_tokens: Sequence[int] | None = None) -> list[float]:
    """Length rewards for the G completions of one group.

    mode="words"  : [length_reward(c, ranges) for c in completions] (the paper; decisions 5-6).
    mode="authors": the authors' script (decision 7): completion i gets 0.2 only if
                    accuracy_reward(c_i, solution) == 1, more than one completion of the group has
                    accuracy 1, and n_tokens[i] lies in ranges[predicted class] (inclusive).
                    n_tokens: completion lengths in tokens, one per completion (required).
    Returns a list of G floats.
    """
    if mode == "words":
        return [length_reward(c, ranges) for c in completions]
    if mode != "authors":
        raise ValueError(f"length mode must be 'words' or 'authors', got {mode!r}")
    if n_tokens is None or len(n_tokens) != len(completions):
        raise ValueError("mode='authors' counts tokens: pass n_tokens, one per completion")
    acc = [accuracy_reward(c, solution) for c in completions]
    n_correct = sum(a == ACCURACY_VALUE for a in acc)
    return [LENGTH_VALUE if (a == ACCURACY_VALUE and n_correct > 1
                             and _in_range(int(n), predicted_label(c), ranges)) else 0.0
            for c, a, n in zip(completions, acc, n_tokens)]


def length_ranges_from_manifest(rows: Iterable[dict] | str) -> dict:
    """[min, max] word count per class over an SFT manifest (App. C.2: "we first separately calculate
    the length of the reasoning text for abnormal videos and normal videos in Vad-Reasoning-SFT").

    rows: dicts with 'think' and 'answer' (the released SFT rows), or the path of a JSONL file of them.
    A row's text is think + "\\n" + answer (the SFT target), counted with count_words, exactly as a
    completion is. Its class is the label of its <which> (fallback: its 'anomaly_type').
    Returns {'Normal': (lo, hi), 'Abnormal': (lo, hi)}; raises if a class has no row.
    """
    if isinstance(rows, str):
        with open(rows, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    lengths = {"Normal": [], "Abnormal": []}
    for row in rows:
        text = f"{row.get('think') or ''}\n{row.get('answer') or ''}"
        label = vadr.parse_completion(text)["label"] or vadr.label_from_which(row.get("anomaly_type"))
        if label is not None:
            lengths[label].append(count_words(text))
    missing = [k for k, v in lengths.items() if not v]
    if missing:
        raise ValueError(f"no SFT row of class {missing}: cannot compute its length range")
    return {k: (min(v), max(v)) for k, v in lengths.items()}


# ------------------------------------------------------------------------------------------------
# Anomaly verification (Algorithm 1)
# ------------------------------------------------------------------------------------------------

def is_valid_when(when) -> bool:
    """A usable predicted interval: (s, e) with 0 <= s < e <= 1 (fractions of the video)."""
    if when is None:
        return False
    s, e = when
    return 0.0 <= s < e <= 1.0


def verification_trim(completion: str, rng, total_frames: int | None = None) -> list[tuple[float, float]]:
    """Which part of the video to keep for the second pass (Algorithm 1 lines 3-9).

    completion: the first completion o_i.  rng: random.Random or numpy.random.Generator (anything with
    .random() -> float in [0, 1)), seeded by the caller per step; exactly one draw per call (decision 4).
    total_frames: optional; if given, a kept set holding no frame of a video that long is degenerate.
    Returns the KEPT windows as (a, b) fractions of the video, to pass as vadr.read_video(keep=...):
      predicted Abnormal, valid <when>[s, e]  -> [(0, s), (e, 1)] minus empty windows   (line 7)
      anything else                           -> [(0.3, 1)] or [(0, 0.7)], prob. 1/2 each (line 5)
      degenerate (nothing would be left)      -> []: skip the second pass, r_ano = 0     (decision 3)
    """
    coin = rng.random()  # drawn first, on every call (decision 4)
    p = vadr.parse_completion(completion)                                   # line 3: extract prediction
    if p["label"] == "Abnormal" and is_valid_when(p["when"]):              # line 6-7: discard [s, e]
        s, e = p["when"]
        keep = [(a, b) for a, b in ((0.0, s), (e, 1.0)) if b > a]          # drop empty windows
    else:                                                                  # line 4-5: head or tail
        keep = [(HEAD_TAIL_FRACTION, 1.0)] if coin < 0.5 else [(0.0, 1.0 - HEAD_TAIL_FRACTION)]
    if not keep or (total_frames is not None and len(vadr.kept_frames(total_frames, keep)) == 0):
        return []                                                          # degenerate (decision 3)
    return keep                                                            # line 9: the trimmed video


def verification_reward(first_label: str | None, second_label: str | None) -> float:
    """Anomaly verification reward of one completion (Algorithm 1 lines 12-16; Table 7).

    first_label: label predicted on the whole video ('Abnormal' / 'Normal' / None);
    second_label: label predicted on the trimmed video (None if there was no second pass).
    Returns +0.5 if Abnormal -> Normal, -0.2 if Normal -> Abnormal, else 0.0.
    """
    if first_label == "Abnormal" and second_label == "Normal":   # line 12-13: the discarded part was the anomaly
        return VERIFY_ABNORMAL_VALUE
    if first_label == "Normal" and second_label == "Abnormal":   # line 14-15: "normal" rested on too few frames
        return VERIFY_NORMAL_VALUE
    return 0.0                                                   # line 1: r_i = 0


def verification_reward_from_text(first_completion: str, second_completion: str | None) -> float:
    """verification_reward on the labels parsed from the two completions' <which> (None -> 0.0)."""
    if second_completion is None:
        return 0.0
    return verification_reward(predicted_label(first_completion), predicted_label(second_completion))


# ------------------------------------------------------------------------------------------------
# The sum (Algorithm 2 line 10)
# ------------------------------------------------------------------------------------------------

def total_reward(completion: str, solution: str, second_completion: str | None = None,
                 ranges: dict = DEFAULT_LENGTH_RANGES, use_accuracy: bool = True, use_format: bool = True,
                 use_verification: bool = True, use_length: bool = True) -> dict:
    """All rewards of one completion and their sum (Algorithm 2 line 10: R = R_acc + R_f + R_ano + R_len).

    second_completion: the completion sampled on the trimmed video (None: no second pass -> R_ano = 0).
    The use_* switches give Table 10's ablation: GRPO = accuracy + format (use_verification=False,
    use_length=False); GRPO+len_reward; GRPO+ano_reward; AVA-GRPO = all four (default).
    A switched-off component is reported as 0.0.
    Returns dict(accuracy, format, verification, length, total) of floats.
    """
    r = dict(accuracy=accuracy_reward(completion, solution) if use_accuracy else 0.0,
             format=format_reward(completion) if use_format else 0.0,
             verification=verification_reward_from_text(completion, second_completion) if use_verification else 0.0,
             length=length_reward(completion, ranges) if use_length else 0.0)
    r["total"] = r["accuracy"] + r["format"] + r["verification"] + r["length"]   # Alg. 2 line 10
    return r


def group_rewards(completions: Sequence[str], solution: str,
                  second_completions: Sequence[str | None] | None = None,
                  ranges: dict = DEFAULT_LENGTH_RANGES, length_mode: str = "words",
                  n_tokens: Sequence[int] | None = None, use_accuracy: bool = True, use_format: bool = True,
                  use_verification: bool = True, use_length: bool = True) -> list[dict]:
    """total_reward for the G completions of one group (Algorithm 2 lines 6-10), with the length
    reward computed group-wise (length_rewards_group) so that length_mode="authors" is available.
    second_completions: one per completion (None where the trim was degenerate), or None for no
    verification at all. Returns G dicts(accuracy, format, verification, length, total)."""
    seconds = list(second_completions) if second_completions is not None else [None] * len(completions)
    if len(seconds) != len(completions):
        raise ValueError(f"{len(seconds)} second completions for {len(completions)} completions")
    lengths = (length_rewards_group(completions, solution, ranges, length_mode, n_tokens)
               if use_length else [0.0] * len(completions))
    out = []
    for c, c2, r_len in zip(completions, seconds, lengths):
        r = total_reward(c, solution, c2, ranges, use_accuracy, use_format, use_verification, use_length=False)
        r["length"] = r_len
        r["total"] = r["accuracy"] + r["format"] + r["verification"] + r["length"]  # Alg. 2 line 10
        out.append(r)
    return out
