"""What GRPO does, made visible (issue 38): `python -m extras.inspect` on a tiny run, checked
against rewards.py and Eq. 1 recomputed here; train_rl.py's end-of-run curves (content: every
panel, axis titles, the smoke-run note, flat curves' value) and progress bar; every log key of
train_rl.py and train_sft.py documented in docs/log-keys.md.
Run: pytest tests/test_inspect.py"""
import json
import os
import random
import re

import pytest
import torch
from conftest import ROOT, run_script

import data
import rewards
import vadr
from extras import report


@pytest.fixture(scope="module")
def sft_run(tiny_world, tmp_path_factory):
    """Two SFT steps on the tiny world: the model to inspect, and an SFT log."""
    out = tmp_path_factory.mktemp("sft")
    run_script("train_sft.py", ["--data", tiny_world["sft_train"], "--video-root", tiny_world["videos"],
                                "--frames", "4", "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1"], out)
    return str(out)


@pytest.fixture(scope="module")
def rl_run(tiny_world, sft_run, tmp_path_factory):
    """A 2-step RL smoke run from it -> (run dir, the finished process)."""
    out = tmp_path_factory.mktemp("rl")
    p = run_script("train_rl.py", ["--model", sft_run, "--data", tiny_world["rl"], "--video-root",
                                   tiny_world["videos"], "--frames", "4", "--max-new-tokens", "12",
                                   "--num-generations", "3", "--batch-size", "1", "--max-steps", "2",
                                   "--length-ranges-from", tiny_world["sft_train"], "--seed", "3"], out)
    return str(out), p


def _even_length_is_correct(completion, solution):
    """An accuracy stand-in with variance on an untrained model (whose rewards are all 0)."""
    return 1.0 if len(completion) % 2 == 0 else 0.0


def test_inspector_prints_each_reward_and_the_advantages_of_eq1(tiny_world, sft_run, tmp_path, monkeypatch,
                                                               capsys):
    from extras import inspect
    monkeypatch.setattr(rewards, "accuracy_reward", _even_length_is_correct)
    out = tmp_path / "groups.json"
    G, seed = 4, 5
    assert inspect.main(["--model", sft_run, "--data", tiny_world["rl"], "--video-root", tiny_world["videos"],
                         "--frames", "4", "--max-new-tokens", "16", "--num-generations", str(G),
                         "--videos", "2", "--length-ranges-from", tiny_world["sft_train"], "--seed", str(seed),
                         "--device", "cpu", "--chars", "60", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.load(open(out))
    ranges = {k: tuple(v) for k, v in res["length_ranges"].items()}
    assert ranges == data.length_ranges(data.read_length_manifest(tiny_world["sft_train"]))
    assert len(res["groups"]) == 2 and all(len(g["completions"]) == G for g in res["groups"])
    rl_rows = data.read_manifest(tiny_world["rl"], "rl", video_root=tiny_world["videos"])[:2]
    assert [g["video"] for g in res["groups"]] == [str(r["video"]) for r in rl_rows]  # the first N videos
    coin = random.Random(seed)  # Algorithm 1's coins: one per completion, in order (rewards.py decision 4)
    signal = 0
    for grp in res["groups"]:
        total = []
        for c in grp["completions"]:
            r, t, second = c["rewards"], c["text"], c["second"]
            # every term recomputed from rewards.py (accuracy: the stand-in's rule by hand)
            want = dict(accuracy=1.0 if len(t) % 2 == 0 else 0.0, format=rewards.format_reward(t),
                        verification=rewards.verification_reward_from_text(t, second),
                        length=rewards.length_reward(t, ranges))
            assert {k: r[k] for k in want} == want
            assert r["total"] == sum(want.values())
            total.append(r["total"])
            path = next(x["video_path"] for x in rl_rows if str(x["video"]) == grp["video"])
            keep = rewards.verification_trim(t, coin, total_frames=vadr.count_frames(path))
            assert c["trim"] == [list(w) for w in keep] and (second is None) == (keep == [])
            assert c["words"] == rewards.count_words(t) and 1 <= c["n_tokens"] <= 16
            # the printout: the trimmed text, each term, R and A as computed
            assert f"      {inspect.shorten(t, 60)}\n" in text
            assert (f"accuracy {r['accuracy']:g}  format {r['format']:g}  verification "
                    f"{inspect.signed(r['verification'])}  length {r['length']:g}  ->  R = {r['total']:g}, "
                    f"A = {c['advantage']:+.3f}") in text
        # Eq. 1 by hand: (R - mean) / (unbiased std + 1e-4); a group of equal R has A = 0
        R = torch.tensor(total)
        equal = bool(R.max() == R.min())
        want_adv = torch.zeros(G) if equal else (R - R.mean()) / (R.std() + 1e-4)
        assert torch.allclose(torch.tensor([c["advantage"] for c in grp["completions"]]), want_adv, atol=1e-6)
        assert grp["zero_std"] == equal
        signal += not equal
    assert signal >= 1  # the oracle above saw a nonzero advantage (seed 5: checked to hold)
    assert text.count("== video ") == 2 and text.count("second pass") == 2 * G


def test_inspector_refuses_bad_flags_in_one_line(tmp_path, monkeypatch):
    from extras import inspect
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    for argv, msg in ((["--videos", "0"], "--videos 0: the first N videos of the manifest: N >= 1"),
                      (["--num-generations", "1"],
                       "--num-generations 1: GRPO needs at least 2 completions per video (Eq. 1's std)"),
                      (["--chars", "5"], "--chars 5: characters shown of a completion: at least 20 (a "
                                         "longer one shows its start and its end)")):
        with pytest.raises(vadr.InputError) as e:
            inspect.main(["--model", "m"] + argv)
        assert str(e.value) == f"python -m extras.inspect: {msg}"
    with pytest.raises(vadr.InputError) as e:  # the default model before `make toy-sft`
        inspect.main([])
    assert str(e.value) == ("python -m extras.inspect: --model runs/toy/sft does not exist. Make the toy SFT model "
                            "first with `make toy-sft` (SFT from the shipped toy-base/, about 4 minutes), "
                            "or pass --model SFT_DIR")
    with pytest.raises(vadr.InputError) as e:
        inspect.main(["--model", "m", "--json", str(tmp_path)])
    assert str(e.value) == f"python -m extras.inspect: --json {tmp_path} is a directory; pass a file name"
    assert sorted(os.listdir(tmp_path)) == ["m"]  # nothing made: no toy world, no file


def test_inspector_shortens_long_texts_keeping_the_answer():
    from extras import inspect
    t = "<think>" + "word " * 100 + "</think>\n<answer><which>Normal</which></answer>"
    s = inspect.shorten(t, 90)
    assert s == t[:55] + " ... " + t[-30:]  # two thirds of the start, a third of the end (the answer)
    assert inspect.shorten("a  b\n c", 90) == "a b c"


def test_train_rl_draws_every_curve_with_axis_titles_and_says_smoke(rl_run):
    out, p = rl_run
    svg = open(os.path.join(out, "curves.svg")).read()
    assert f"curves: {os.path.join(out, 'curves.svg')}" in p.stdout
    titles = re.findall(r'font-weight="bold">([^<]*)</text>', svg)
    assert titles[0] == "AVA-GRPO training, 2 steps (a point: the step's mean over its completions)"
    assert titles[1:] == [t for t, _, _ in report._RL_PANELS]  # every reward term, KL, zero variance
    for _, key, unit in report._RL_PANELS:
        assert f"rotate(-90)\" text-anchor=\"middle\">{unit}</text>" in svg
    assert svg.count(">optimizer step</text>") == len(report._RL_PANELS)
    assert svg.count("<polyline") == len(report._RL_PANELS)
    assert "A smoke run (2 steps) checks the plumbing, not learning: flat curves are expected." in svg
    recs = [json.loads(x) for x in open(os.path.join(out, "log.jsonl"))]
    # an untrained model: every group has zero variance, a flat curve shows its value, never "1e-09"
    assert [r["zero_std_fraction"] for r in recs] == [1.0, 1.0] and "constant 1<" in svg and "1e-09" not in svg
    # every reward term, the zero-variance fraction and KL on the progress bar (its last state)
    r = recs[-1]
    for part in (f"R={r['reward']:.3f}", f"acc={r['reward_accuracy']:.2f}", f"fmt={r['reward_format']:.2f}",
                 f"ver={r['reward_verification']:+.2f}", f"len={r['reward_length']:.2f}",
                 f"zero_var={r['zero_std_fraction']:.2f}", f"kl={r['kl']:.4f}"):
        assert part in p.stderr, part


def test_svg_curves_flat_and_varying_panels(tmp_path):
    path = tmp_path / "c.svg"
    report.svg_curves(str(path), [("flat", [1, 2, 3], [0.0, 0.0, 0.0], "nats"),
                                  ("up", [1, 2, 3], [0.25, 0.5, 1.0], "reward"),
                                  ("none", [1, 2], [None, None])], title="T <1>", note="N", xlabel="step")
    svg = path.read_text()
    assert "constant 0<" in svg and ">0.25</text>" in svg and ">1</text>" in svg and ">not logged</text>" in svg
    assert "T &lt;1&gt;" in svg and ">N</text>" in svg and svg.count(">step</text>") == 3


def _documented_keys() -> dict:
    """docs/log-keys.md: its table rows `| \\`key\\` | script(s) | meaning |` -> {key: meaning}."""
    rows = re.findall(r"^\| `([a-z_0-9]+)` \| [^|]+ \| (.+) \|$", open(os.path.join(ROOT, "docs", "log-keys.md")).read(),
                      re.M)
    return dict(rows)


def test_every_log_key_of_a_tiny_run_is_documented(sft_run, rl_run):
    docs = _documented_keys()
    for log in (os.path.join(sft_run, "log.jsonl"), os.path.join(rl_run[0], "log.jsonl")):
        keys = set().union(*(json.loads(x) for x in open(log)))
        assert keys - set(docs) == set(), log
    assert all(len(m.strip()) > 10 for m in docs.values())  # a meaning, not a placeholder
