"""rewards.py -- the rewards of AVA-GRPO (paper Table 7) as pure functions: strings in, floats out.

    Type                              Value  here
    Accuracy                          1      accuracy_reward
    Format                            1      format_reward
    Anomaly verification: Abnormal    +0.5   verification_trim (Alg. 1 l. 3-9), verification_reward
    Anomaly verification: Normal      -0.2   (same, lines 11-16)
    Length                            0.2    length_reward, length_rewards_group (App. C.2-C.3)
and their sum, Algorithm 2 line 10 (total_reward, group_rewards; train_rl.py calls group_rewards).
No model, no video: train_rl.py samples, asks verification_trim what to keep, samples again on
the trimmed video and hands both texts back. Tests: python -m pytest tests/test_rewards.py -q

Decisions and departures (paper vs the authors' scripts, docs/paper-vs-authors.md s.2):
 1. Verification follows Algorithm 1 per completion: +0.5 for Abnormal -> Normal, -0.2 for
    Normal -> Abnormal, else 0. The authors' script compared every completion with a stale first
    label (a bug) and paid -0.2 only with accuracy or format; neither is in the paper.
 2. What is discarded (Alg. 1 lines 4-8): an Abnormal answer with a valid <when>[s, e]
    (0 <= s < e <= 1) loses [s, e]; anything else loses [0, 0.3] or [0.7, 1] with probability 1/2
    (the paper gives no length for "the beginning or the ending segment": 0.3 is the authors').
 3. A trim that leaves no frame ([0, 1]) skips the second pass: r_ano = 0 (Alg. 1 line 1); a
    head/tail trim instead would keep the "abnormal" segment and pay +0.5 for evidence against it.
    So is < 2 kept frames of total_frames (one temporal patch, as the authors' trims): [0.001, 1].
 4. The head/tail coin comes from the caller's seeded generator and is drawn on every call, so a
    completion's coin does not depend on what the ones before it predicted.
 5. Length counts WORDS of the whole completion with the tags stripped (vadr.count_words), the
    way the paper's ranges were measured on the SFT data (think + answer); bounds are inclusive.
 6. The PREDICTED class (<which>) chooses the range, as in the authors' script (the paper is
    silent): a Normal answer is a 2-step text, an Abnormal one a 4-step text. No label -> 0.
 7. length_rewards_group(mode="authors") is the authors' variant: completion TOKENS, paid only to
    completions with accuracy 1 and only when more than one completion of the group is correct.
 8. Labels: vadr.label_from_which for <which> (exactly 'Normal', 'Abnormal' or a known category;
    anything else earns nothing), vadr.weak_label for the row's `solution`; a solution that is
    no label (not a string, or 'Unknown') raises ValueError: data.py checks rows, so it is a bug.
"""
from __future__ import annotations

from typing import Sequence

import vadr

# Table 7 values.
ACCURACY_VALUE = 1.0
FORMAT_VALUE = 1.0
VERIFY_ABNORMAL_VALUE = 0.5   # Abnormal -> Normal once the predicted segment is gone (Alg. 1 l. 13)
VERIFY_NORMAL_VALUE = -0.2    # Normal -> Abnormal once the head or the tail is gone (Alg. 1 l. 15)
LENGTH_VALUE = 0.2

# App. C.3: [140, 261] words for normal videos, [233, 456] for abnormal ones (inclusive).
DEFAULT_LENGTH_RANGES = {"Normal": (140, 261), "Abnormal": (233, 456)}

# Alg. 1 line 5 discards "the beginning or the ending segment": the authors' 30% (decision 2).
HEAD_TAIL_FRACTION = 0.3


# ---- Labels, accuracy and format (Table 7 rows 1-2; Algorithm 2 lines 6-7) ---------------------

def predicted_label(completion: str) -> str | None:
    """'Abnormal' / 'Normal' from the completion's <which> (vadr.label_from_which), else None."""
    return vadr.parse_completion(completion)["label"]


def weak_label(solution) -> str:
    """The RL row's `solution` as 'Abnormal' / 'Normal' (vadr.weak_label); raises otherwise."""
    if not isinstance(solution, str):  # a caller bug, never str()-ed into a label (decision 8)
        raise ValueError(f"weak label must be a string, got {solution!r:.60}")
    label = vadr.weak_label(solution)
    if label is None:
        raise ValueError(f"weak label {solution!r} is not 'Abnormal' or 'Normal'")
    return label


def accuracy_reward(completion: str, solution: str) -> float:
    """1.0 if the label of <which> equals the weak label `solution`, else 0.0 (Table 7)."""
    return ACCURACY_VALUE if predicted_label(completion) == weak_label(solution) else 0.0


def format_reward(completion: str) -> float:
    """1.0 if the WHOLE completion has the 2-step normal or the 4-step abnormal layout
    (vadr.check_format), else 0.0 (Table 7). The layout need not agree with <which>."""
    return FORMAT_VALUE if vadr.check_format(completion) is not None else 0.0


# ---- Length (Table 7 row 5; App. C.2-C.3) ------------------------------------------------------

count_words = vadr.count_words  # the one word count (decision 5)


def _in_range(n: int, label: str | None, ranges: dict) -> bool:
    return label is not None and ranges[label][0] <= n <= ranges[label][1]  # inclusive (App. C.3)


def length_reward(completion: str, ranges: dict = DEFAULT_LENGTH_RANGES) -> float:
    """0.2 if count_words(completion) lies in ranges[predicted class], else 0.0 (App. C.2;
    decisions 5-6). ranges: {'Normal': (lo, hi), 'Abnormal': (lo, hi)}."""
    label = predicted_label(completion)
    return LENGTH_VALUE if _in_range(count_words(completion), label, ranges) else 0.0


def length_rewards_group(completions: Sequence[str], solution: str,
                         ranges: dict = DEFAULT_LENGTH_RANGES, mode: str = "words",
                         n_tokens: Sequence[int] | None = None) -> list[float]:
    """Length rewards of the G completions of one group.
    mode "words": length_reward of each (the paper). mode "authors" (decision 7): 0.2 only when
    the completion's accuracy is 1, more than one completion of the group is correct, and its
    n_tokens[i] lies in ranges[predicted class]."""
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


# ---- Anomaly verification (Algorithm 1) --------------------------------------------------------

def is_valid_when(when) -> bool:
    """A usable predicted interval: (s, e) with 0 <= s < e <= 1 (fractions of the video)."""
    return when is not None and 0.0 <= when[0] < when[1] <= 1.0


def verification_trim(completion: str, rng, total_frames: int | None = None) -> list:
    """The KEPT windows (a, b) of the video for the second pass (Algorithm 1 lines 3-9), to pass
    as vadr.read_video(keep=...). rng: anything with .random(), drawn once per call (decision 4).
      predicted Abnormal with a valid <when>[s, e] -> [(0, s), (e, 1)] minus empty windows (l. 7)
      anything else -> [(0.3, 1)] or [(0, 0.7)] with probability 1/2 each                (l. 5)
      nothing left (also: < 2 frames of a total_frames-long video) -> [], no 2nd pass (dec. 3)
    """
    coin = rng.random()  # drawn first, on every call (decision 4)
    p = vadr.parse_completion(completion)                        # line 3: extract the prediction
    if p["label"] == "Abnormal" and is_valid_when(p["when"]):    # lines 6-7: discard [s, e]
        s, e = p["when"]
        keep = [(a, b) for a, b in ((0.0, s), (e, 1.0)) if b > a]
    else:                                                        # lines 4-5: head or tail
        keep = [(HEAD_TAIL_FRACTION, 1.0)] if coin < 0.5 else [(0.0, 1.0 - HEAD_TAIL_FRACTION)]
    if not keep or (total_frames is not None and
                    len(vadr.kept_frames(total_frames, keep)) < vadr.TEMPORAL_PATCH_SIZE):
        return []                                                # degenerate (decision 3)
    return keep                                                  # line 9: the trimmed video


def verification_reward(first_label: str | None, second_label: str | None,
                        abnormal: bool = True, normal: bool = True) -> float:
    """Verification reward of one completion (Alg. 1 lines 12-16; Table 7) from its labels on the
    whole and the trimmed video (None: no label or no second pass): +0.5 if Abnormal -> Normal,
    -0.2 if Normal -> Abnormal, else 0; `abnormal` / `normal` switch either case off."""
    if abnormal and first_label == "Abnormal" and second_label == "Normal":
        return VERIFY_ABNORMAL_VALUE  # lines 12-13: the discarded part was the anomaly
    if normal and first_label == "Normal" and second_label == "Abnormal":
        return VERIFY_NORMAL_VALUE    # lines 14-15: "normal" rested on too few frames
    return 0.0                        # line 1: r_i = 0


def verification_reward_from_text(first_completion: str, second_completion: str | None,
                                  abnormal: bool = True, normal: bool = True) -> float:
    """verification_reward on the labels of the two completions' <which> (no second pass -> 0)."""
    if second_completion is None:
        return 0.0
    first, second = predicted_label(first_completion), predicted_label(second_completion)
    return verification_reward(first, second, abnormal, normal)


# ---- The sum (Algorithm 2 line 10) --------------------------------------------------------------

def total_reward(completion: str, solution: str, second_completion: str | None = None,
                 ranges: dict = DEFAULT_LENGTH_RANGES, use_accuracy: bool = True,
                 use_format: bool = True, use_verification: bool = True, use_length: bool = True,
                 verify_abnormal: bool = True, verify_normal: bool = True,
                 length: float | None = None) -> dict:
    """All rewards of one completion and their sum (Alg. 2 line 10: R = R_acc+R_f+R_ano+R_len).

    second_completion: the completion on the trimmed video (None: no second pass, R_ano = 0).
    The use_* switches give Table 10's rows (GRPO = accuracy + format, + length, + verification,
    AVA-GRPO = all four); a switched-off reward counts 0.0. length: the length reward when it is
    computed group-wise (group_rewards), else length_reward's. -> dict(accuracy, format,
    verification, length, total)."""
    v = verification_reward_from_text(completion, second_completion, verify_abnormal,
                                      verify_normal) if use_verification else 0.0
    r = dict(accuracy=accuracy_reward(completion, solution) if use_accuracy else 0.0,
             format=format_reward(completion) if use_format else 0.0, verification=v,
             length=length if length is not None else
             length_reward(completion, ranges) if use_length else 0.0)
    r["total"] = r["accuracy"] + r["format"] + r["verification"] + r["length"]  # Alg. 2 line 10
    return r


def group_rewards(completions: Sequence[str], solution: str,
                  second_completions: Sequence[str | None] | None = None,
                  ranges: dict = DEFAULT_LENGTH_RANGES, length_mode: str = "words",
                  n_tokens: Sequence[int] | None = None, **switches) -> list[dict]:
    """total_reward for the G completions of one group (Alg. 2 lines 6-10); the length reward is
    computed group-wise (length_rewards_group) so that length_mode="authors" works. switches:
    total_reward's use_* and verify_* flags. second_completions: one per completion (None where
    there was no second pass), or None for no verification at all."""
    G = len(completions)
    seconds = list(second_completions) if second_completions is not None else [None] * G
    if len(seconds) != G:
        raise ValueError(f"{len(seconds)} second completions for {G} completions")
    use_length = switches.pop("use_length", True)
    lengths = (length_rewards_group(completions, solution, ranges, length_mode, n_tokens)
               if use_length else [0.0] * G)
    return [total_reward(c, solution, c2, ranges, length=r_len, **switches)
            for c, c2, r_len in zip(completions, seconds, lengths)]
