"""Oracles for rewards.py (paper Table 7, Algorithm 1, App. C.2-C.3): hand-counted values, every boundary.
Run: python -m pytest tests/test_rewards.py -q"""
import json
import random

import numpy as np
import pytest

import data
import rewards as R
import vadr


# ---------------------------------------------------------------- completions with an exact word count

def normal_text(n_words: int) -> str:
    """A valid 2-step normal completion of exactly n_words words (tags stripped). Fixed words:
    step2 'fine' (1), which 'Normal' (1), what 'people walk' (2), why 'nothing odd' (2) = 6."""
    assert n_words >= 7
    filler = " ".join(["word"] * (n_words - 6))
    return (f"<think><step1>{filler}</step1>\n<step2>fine</step2></think>\n<answer><which>Normal</which>"
            f"<what>people walk</what><why>nothing odd</why></answer>")


def abnormal_text(n_words: int, when: str = "[0.25, 0.5]", which: str = "Fighting") -> str:
    """A valid 4-step abnormal completion of exactly n_words words. Fixed words: step2..4 (3),
    which (1 for 'Fighting'), what 'two men' (2), when (2 for '[0.25, 0.5]'), where 'left' (1),
    why 'violence' (1), how 'injury' (1) = 11."""
    fixed = 3 + len(which.split()) + 2 + len(when.split()) + 3
    assert n_words > fixed
    filler = " ".join(["word"] * (n_words - fixed))
    return (f"<think><step1>{filler}</step1><step2>l</step2><step3>s</step3><step4>d</step4></think>"
            f"<answer><which>{which}</which><what>two men</what><when>{when}</when><where>left</where>"
            f"<why>violence</why><how>injury</how></answer>")


@pytest.mark.parametrize("n", [7, 139, 140, 261, 262])
def test_helper_normal_has_n_words_and_valid_format(n):
    t = normal_text(n)
    assert len(t.replace("<", " <").replace(">", "> ").split()) - t.count("<") == n  # independent count
    assert R.count_words(t) == n and vadr.check_format(t) == "normal"


@pytest.mark.parametrize("n", [12, 232, 233, 456, 457])
def test_helper_abnormal_has_n_words_and_valid_format(n):
    t = abnormal_text(n)
    assert len(t.replace("<", " <").replace(">", "> ").split()) - t.count("<") == n
    assert R.count_words(t) == n and vadr.check_format(t) == "abnormal"


@pytest.mark.parametrize("text,n", [
    ("", 0),
    ("<think></think><answer></answer>", 0),
    ("<think><step1>a b</step1></think>", 2),
    ("It is<which>Fighting</which>now", 4),             # tags separate words: It is Fighting now
    ("<when>[0.2, 0.5]</when>", 2),                     # '[0.2,' '0.5]'
    ("a\n\tb  c", 3),
    ("<foo>a</foo>", 1),                                # only the project's tags are stripped
    ("<step12>x</step12> <STEP1>y", 2),                 # step\d+ is a tag; case matters
])
def test_count_words(text, n):
    assert R.count_words(text) == n


# ---------------------------------------------------------------- accuracy and format (Table 7: 1, 1)

ABN = abnormal_text(300)
NOR = normal_text(200)


@pytest.mark.parametrize("completion,solution,want", [
    (ABN, "Abnormal", 1.0),
    (ABN, "Normal", 0.0),
    (NOR, "Normal", 1.0),
    (NOR, "Abnormal", 0.0),
    (NOR, "<answer>Normal</answer>", 1.0),           # Video-R1 style wrapped solution
    (NOR, " normal ", 1.0),
    (ABN, "Fighting", 1.0),                           # a category is Abnormal
    # one strict label rule (vadr.label_from_which): only 'Normal', 'Abnormal' or a known category
    ("<which>Normal.</which>", "Normal", 0.0),
    ("<which>normal</which>", "Normal", 0.0),
    ("<which>Unknown</which>", "Abnormal", 0.0),
    ("<which>Abnormal or Normal</which>", "Abnormal", 0.0),
    ("<which>Normal event</which>", "Normal", 0.0),
    ("<which>Normal event</which>", "Abnormal", 0.0),
    ("<which>Fire</which>", "Abnormal", 1.0),
    ("<which>Abnormal</which>", "Abnormal", 1.0),    # accuracy does not need the format
    ("no tags at all", "Normal", 0.0),
    ("no tags at all", "Abnormal", 0.0),             # no label is never right
    ("<which></which>", "Abnormal", 0.0),
    ("", "Normal", 0.0),
])
def test_accuracy_reward(completion, solution, want):
    assert R.accuracy_reward(completion, solution) == want


@pytest.mark.parametrize("solution", ["  ", "Unknown", None, 1, ["Normal"]])
def test_accuracy_rejects_a_weak_label_that_is_not_one(solution):
    with pytest.raises(ValueError):
        R.accuracy_reward(NOR, solution)


@pytest.mark.parametrize("completion,want", [
    (ABN, 1.0),
    (NOR, 1.0),
    (ABN.replace("</step1>", "<step1>"), 0.0),                # SFT video 2088's typo
    (ABN.replace("<how>injury</how>", ""), 0.0),              # a missing tag
    (NOR + " trailing", 0.0),                                 # the WHOLE completion must match
    ("<which>Normal</which>", 0.0),
    (normal_text(20).replace("Normal", "Fighting"), 1.0),     # layout need not agree with <which>
    ("", 0.0),
])
def test_format_reward(completion, want):
    assert R.format_reward(completion) == want


# ---------------------------------------------------------------- length (Table 7: 0.2; App. C.3 ranges)

@pytest.mark.parametrize("text,want", [
    (normal_text(139), 0.0), (normal_text(140), 0.2), (normal_text(261), 0.2), (normal_text(262), 0.0),
    (abnormal_text(232), 0.0), (abnormal_text(233), 0.2), (abnormal_text(456), 0.2), (abnormal_text(457), 0.0),
    # the PREDICTED class chooses the range: a 240-word text is in both ranges, a 300-word one only abnormal's
    (normal_text(300), 0.0), (abnormal_text(150), 0.0), (normal_text(240), 0.2), (abnormal_text(240), 0.2),
    (normal_text(200).replace("<which>Normal</which>", "<which>Abnormal</which>"), 0.0),   # 200 < 233
    (normal_text(200).replace("<which>Normal</which>", "<which>nope"), 0.0),              # no label -> 0
    (" ".join(["w"] * 199) + " <which>Normal</which>", 0.2),                               # format not needed
])
def test_length_reward_boundaries(text, want):
    assert R.length_reward(text) == want


def test_length_reward_custom_ranges():
    ranges = {"Normal": (7, 7), "Abnormal": (500, 600)}
    assert R.length_reward(normal_text(7), ranges) == 0.2
    assert R.length_reward(normal_text(8), ranges) == 0.0


def test_length_rewards_group_words_mode_is_elementwise():
    cs = [normal_text(139), normal_text(140), abnormal_text(456), "junk"]
    assert R.length_rewards_group(cs, "Normal") == [0.0, 0.2, 0.2, 0.0]


@pytest.mark.parametrize("solution,completions,n_tokens,want", [
    # two correct Normal answers in range -> both paid; the wrong one is not, even in range
    ("Normal", [NOR, NOR, ABN, ABN], [200, 140, 300, 300], [0.2, 0.2, 0.0, 0.0]),
    # only one correct answer in the group -> nobody is paid
    ("Normal", [NOR, ABN, ABN, ABN], [200, 300, 300, 300], [0.0, 0.0, 0.0, 0.0]),
    # correct but out of range in TOKENS (word count is irrelevant here), inclusive bounds
    ("Abnormal", [ABN, ABN, ABN, NOR], [232, 233, 457, 200], [0.0, 0.2, 0.0, 0.0]),
    ("Abnormal", [ABN, ABN, ABN, ABN], [456, 456, 100, 233], [0.2, 0.2, 0.0, 0.2]),
])
def test_length_rewards_group_authors_mode(solution, completions, n_tokens, want):
    assert R.length_rewards_group(completions, solution, mode="authors", n_tokens=n_tokens) == want


def test_length_rewards_group_authors_needs_tokens():
    with pytest.raises(ValueError):
        R.length_rewards_group([NOR, NOR], "Normal", mode="authors")
    with pytest.raises(ValueError):
        R.length_rewards_group([NOR, NOR], "Normal", mode="characters")


def test_length_ranges(tiny_world):
    """App. C.2's ranges: one statistic (data.length_ranges), over rows read through
    read_manifest's checks (data.read_length_manifest, train_rl.py --length-ranges-from; its bad
    files: tests/test_bad_input_flags.py)."""
    def row(text, label):
        i = text.index("<answer>")
        return dict(think=text[:i].strip(), answer=text[i:], label=label)
    rows = [row(normal_text(151), "Normal"), row(normal_text(252), "Normal"), row(normal_text(199), "Normal"),
            row(abnormal_text(252), "Abnormal"), row(abnormal_text(441), "Abnormal"),
            row(abnormal_text(300).replace("</step1>", "<step1>"), "Abnormal")]  # words, not layout, count
    assert data.length_ranges(rows) == {"Normal": (151, 252), "Abnormal": (252, 441)}
    assert data.length_ranges(rows[:3]) == {"Normal": (151, 252)}
    m = tiny_world["sft_train"]
    want = data.length_ranges(data.read_manifest(m, "sft", check_videos=False))
    assert data.length_ranges(data.read_length_manifest(m)) == want and set(want) == {"Normal", "Abnormal"}


# ---------------------------------------------------------------- verification trim (Algorithm 1 lines 3-9)

class Coin:
    """A generator stub returning a fixed draw (0.1 -> head removed, 0.9 -> tail removed)."""
    def __init__(self, value):
        self.value, self.calls = value, 0

    def random(self):
        self.calls += 1
        return self.value


def _abn(when):
    return f"<answer><which>Fighting</which><when>{when}</when></answer>"


@pytest.mark.parametrize("completion,coin,want", [
    (_abn("[0.25, 0.5]"), 0.1, [(0.0, 0.25), (0.5, 1.0)]),     # discard [s, e] (line 7); coin unused
    (_abn("[0.25, 0.5]"), 0.9, [(0.0, 0.25), (0.5, 1.0)]),
    (_abn("[.3, 1]"), 0.1, [(0.0, 0.3)]),                       # e == 1: the empty (1, 1) window is dropped
    (_abn("[0, 0.4]"), 0.9, [(0.4, 1.0)]),                      # s == 0: the empty (0, 0) window is dropped
    (_abn("[0.0, 1.0]"), 0.1, []),                              # degenerate: nothing left -> skip (r_ano = 0)
    (_abn("[0, 1]"), 0.9, []),
    (_abn("[0.5, 0.2]"), 0.1, [(0.3, 1.0)]),                    # reversed -> invalid -> head/tail (line 5)
    (_abn("[0.5, 0.2]"), 0.9, [(0.0, 0.7)]),
    (_abn("[0.4, 0.4]"), 0.1, [(0.3, 1.0)]),                    # empty interval -> invalid
    (_abn("[0.2, 1.5]"), 0.9, [(0.0, 0.7)]),                    # out of range -> invalid
    (_abn("[-0.1, 0.5]"), 0.1, [(0.3, 1.0)]),
    (_abn("from 0.2 to 0.5"), 0.1, [(0.3, 1.0)]),               # unparseable -> invalid
    ("<which>Fighting</which>", 0.9, [(0.0, 0.7)]),             # Abnormal without <when>
    (normal_text(150), 0.1, [(0.3, 1.0)]),                      # Normal: head removed
    (normal_text(150), 0.9, [(0.0, 0.7)]),                      # Normal: tail removed
    (normal_text(150), 0.5, [(0.0, 0.7)]),                      # the coin is "< 0.5 -> head"
    ("garbage", 0.1, [(0.3, 1.0)]),                             # no label -> head/tail
    ("<which>Normal</which><when>[0.2, 0.5]</when>", 0.9, [(0.0, 0.7)]),  # Normal ignores <when>
])
def test_verification_trim_table(completion, coin, want):
    c = Coin(coin)
    assert R.verification_trim(completion, c) == want
    assert c.calls == 1   # exactly one draw, whatever the branch


def test_verification_trim_windows_are_frame_windows():
    keep = R.verification_trim(_abn("[0.25, 0.5]"), Coin(0.1))
    assert vadr.kept_frames(8, keep).tolist() == [0, 1, 4, 5, 6, 7]   # frames 2, 3 = [0.25, 0.5) discarded
    assert vadr.kept_frames(10, R.verification_trim(NOR, Coin(0.1))).tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert vadr.kept_frames(10, R.verification_trim(NOR, Coin(0.9))).tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_verification_trim_degenerate_by_frame_count():
    # [0, 0.95] leaves (0.95, 1): frames 38, 39 of 40 survive; one frame (19 of 20) is too few
    # (a second pass needs one temporal patch, 2 frames), and no frame of a 10-frame video does
    assert R.verification_trim(_abn("[0, 0.95]"), Coin(0.1), total_frames=40) == [(0.95, 1.0)]
    assert R.verification_trim(_abn("[0, 0.95]"), Coin(0.1), total_frames=20) == []
    assert R.verification_trim(_abn("[0, 0.95]"), Coin(0.1), total_frames=10) == []
    assert R.verification_trim(NOR, Coin(0.1), total_frames=1) == []          # 1 frame at 0 < 0.3
    assert R.verification_trim(NOR, Coin(0.9), total_frames=1) == []          # frame 0 alone
    assert R.verification_trim(NOR, Coin(0.9), total_frames=3) == [(0.0, 0.7)]  # frames 0-2


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_verification_trim_seeded_reaches_both_branches_reproducibly(make_rng):
    draws = [R.verification_trim(NOR, make_rng(seed)) for seed in range(200)]
    assert draws == [R.verification_trim(NOR, make_rng(seed)) for seed in range(200)]   # reproducible
    n_head = sum(d == [(0.3, 1.0)] for d in draws)
    n_tail = sum(d == [(0.0, 0.7)] for d in draws)
    assert n_head + n_tail == 200 and 70 < n_head < 130      # both branches, about half each
    rng = make_rng(0)
    seq = [R.verification_trim(NOR, rng) for _ in range(100)]
    assert {tuple(s) for s in seq} == {((0.3, 1.0),), ((0.0, 0.7),)}


def test_verification_trim_coin_independent_of_other_predictions():
    # the i-th coin is the i-th draw whatever the earlier completions predicted (decision 4)
    a, b = random.Random(7), random.Random(7)
    first = [_abn("[0.1, 0.2]"), NOR, NOR, NOR]
    second = [NOR, NOR, NOR, NOR]
    ra = [R.verification_trim(c, a) for c in first]
    rb = [R.verification_trim(c, b) for c in second]
    assert ra[1:] == rb[1:]


# ---------------------------------------------------------------- verification reward (Algorithm 1 lines 12-16)

@pytest.mark.parametrize("first,second,want", [
    ("Abnormal", "Normal", 0.5),
    ("Normal", "Abnormal", -0.2),
    ("Abnormal", "Abnormal", 0.0),
    ("Normal", "Normal", 0.0),
    (None, "Normal", 0.0), (None, "Abnormal", 0.0),
    ("Abnormal", None, 0.0), ("Normal", None, 0.0), (None, None, 0.0),
])
def test_verification_reward(first, second, want):
    assert R.verification_reward(first, second) == want


@pytest.mark.parametrize("first,second,want", [
    (ABN, NOR, 0.5), (NOR, ABN, -0.2), (ABN, ABN, 0.0), (NOR, NOR, 0.0),
    ("<which>Fire</which>", "<which>Normal</which>", 0.5),      # no format needed, categories are Abnormal
    ("garbage", NOR, 0.0), (NOR, "garbage", 0.0), (ABN, None, 0.0),
])
def test_verification_reward_from_text(first, second, want):
    assert R.verification_reward_from_text(first, second) == want


# ---------------------------------------------------------------- the sum (Algorithm 2 line 10) and Table 10 switches

def test_total_reward_all_components():
    r = R.total_reward(ABN, "Abnormal", second_completion=NOR)
    assert r == dict(accuracy=1.0, format=1.0, verification=0.5, length=0.2, total=2.7)
    r = R.total_reward(NOR, "Abnormal", second_completion=ABN)
    assert r == dict(accuracy=0.0, format=1.0, verification=-0.2, length=0.2, total=pytest.approx(1.0))
    r = R.total_reward("garbage", "Normal")
    assert r == dict(accuracy=0.0, format=0.0, verification=0.0, length=0.0, total=0.0)


@pytest.mark.parametrize("switches,total", [
    (dict(use_verification=False, use_length=False), 2.0),    # GRPO
    (dict(use_verification=False), 2.2),                      # GRPO + len_reward
    (dict(use_length=False), 2.5),                            # GRPO + ano_reward
    (dict(), 2.7),                                            # AVA-GRPO
    (dict(use_accuracy=False, use_format=False), 0.7),
])
def test_total_reward_ablation_switches(switches, total):
    r = R.total_reward(ABN, "Abnormal", second_completion=NOR, **switches)
    assert r["total"] == pytest.approx(total)
    assert r["total"] == pytest.approx(r["accuracy"] + r["format"] + r["verification"] + r["length"])


def test_group_rewards_matches_total_reward_and_authors_length():
    cs, seconds = [ABN, NOR, ABN, "junk"], [NOR, ABN, None, NOR]
    got = R.group_rewards(cs, "Abnormal", seconds)
    assert got == [R.total_reward(c, "Abnormal", s) for c, s in zip(cs, seconds)]
    assert [g["total"] for g in got] == pytest.approx([2.7, 1.0, 2.2, 0.0])
    got = R.group_rewards(cs, "Abnormal", seconds, length_mode="authors", n_tokens=[300, 300, 100, 300])
    assert [g["length"] for g in got] == [0.2, 0.0, 0.0, 0.0]
    assert [g["total"] for g in got] == pytest.approx([2.7, 0.8, 2.0, 0.0])
    assert [g["verification"] for g in R.group_rewards(cs, "Abnormal")] == [0.0] * 4


# ---------------------------------------------------------------- format edge cases (issue: authors' regexes)
# Each is a documented choice (docs/paper-vs-authors.md s.2, "Format reward: edge cases").

def test_format_abnormal_answer_after_two_step_think_scores_zero():
    # the normal layout's answer holds which, what, why only; the abnormal one needs four steps
    two_step_think = "<think><step1>a</step1><step2>b</step2></think>"
    six_tag_answer = ABN[ABN.index("<answer>"):]
    assert R.format_reward(two_step_think + six_tag_answer) == 0.0
    assert vadr.check_format(two_step_think + six_tag_answer) is None


@pytest.mark.parametrize("inside", ["<which>", "</step2>", "<answer>", "<step3>"])
def test_format_tag_inside_step_text_scores_zero(inside):
    t = NOR.replace("<step2>fine</step2>", f"<step2>fine {inside} here</step2>")
    assert R.format_reward(t) == 0.0


def test_format_duplicated_which_scores_zero():
    t = NOR.replace("<which>Normal</which>", "<which>Normal</which><which>Normal</which>")
    assert R.format_reward(t) == 0.0
    t = ABN.replace("<which>Fighting</which>", "<which>Fighting</which> and <which>Fire</which>")
    assert R.format_reward(t) == 0.0


@pytest.mark.parametrize("pad", [" ", "\n", "\n\n  \t", ""])
def test_format_surrounding_whitespace_is_allowed(pad):
    assert R.format_reward(pad + NOR + pad) == 1.0
    assert R.format_reward(pad + ABN + pad) == 1.0
    # whitespace only: any other text around the blocks fails
    assert R.format_reward("ok " + NOR) == 0.0


# ---------------------------------------------------------------- extras/rewardcheck.py

def test_rewardcheck_scores_groups_by_hand():
    """Accuracy, format, length and their sum over hand-made groups (values worked out by hand)."""
    from extras import rewardcheck
    groups = [[abnormal_text(300), normal_text(150)], ["garbage", normal_text(100)]]
    cfg = dict(length_ranges={k: list(v) for k, v in R.DEFAULT_LENGTH_RANGES.items()})
    # per completion (acc, fmt, len): (1, 1, 0.2), (0, 1, 0.2), (0, 0, 0), (1, 1, 0: 100 < 140)
    r = rewardcheck.score_groups(groups, ["Abnormal", "Normal"], cfg)
    assert r["n_videos"] == 2 and r["n_completions"] == 4
    assert (r["accuracy"], r["format"]) == (0.5, 0.75)
    assert r["length"] == pytest.approx(0.1) and r["total"] == pytest.approx(5.4 / 4)
    off = rewardcheck.score_groups(groups, ["Abnormal", "Normal"], dict(cfg, no_length_reward=True))
    assert off["length"] == 0.0 and off["total"] == pytest.approx(5.0 / 4)
    with pytest.raises(ValueError):  # one weak label per group
        rewardcheck.score_groups(groups, ["Abnormal"], cfg)


def test_rewardcheck_tenths_follow_the_runs_data_order():
    """The first / last tenth's rows are the global batches train_rl.py draws at those steps:
    step k is batch k % steps_per_epoch of extras/training.epoch_order for epoch k // spe."""
    from extras import rewardcheck, training
    o = lambda n, e: training.epoch_order(n, e, 3, 2, 0, 1)  # noqa: E731  seed 3, global batch 2
    # 7 rows, batch 2: 3 steps per epoch (the odd row dropped); 6 steps -> one step per tenth
    assert rewardcheck.tenth_rows(7, 3, 2, 6) == dict(first=o(7, 0)[0:2], last=o(7, 1)[4:6])
    # 20 rows: 10 steps per epoch; 25 steps -> 2 per tenth, the last two in epoch 2 (steps 23, 24)
    assert rewardcheck.tenth_rows(20, 3, 2, 25) == dict(first=o(20, 0)[0:4], last=o(20, 2)[6:10])
    assert o(20, 0) != o(20, 2)  # epochs are reshuffled, so the epoch index matters
    with pytest.raises(vadr.InputError):
        rewardcheck.tenth_rows(1, 3, 2, 5)


def test_rewardcheck_bad_run_one_line(tmp_path):
    """--run without an RL run's config, or a missing --models path: exit 1, one line, no traceback."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "run_config.json").write_text('{"lr": 0.002}')
    for run, models, msg in ((tmp_path, [str(tmp_path)], "has no run_config.json"),
                             (tmp_path / "sft", [str(tmp_path / "x")], "--models"),
                             (tmp_path / "sft", [str(tmp_path)], "is not an RL run's config")):
        p = subprocess.run([sys.executable, "-m", "extras.rewardcheck", "--run", str(run), "--models", *models],
                           cwd=root, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "Traceback" not in p.stderr and msg in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
