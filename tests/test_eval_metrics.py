"""Oracles for the scoring half of eval.py and extras/textmetrics.py, extras/vane.py (CPU, a
few seconds).

1. Hand-computed values on tiny cases, the arithmetic written beside each assertion.
2. Agreement (1e-6) with the reference packages on a deterministic corpus of >= 50
   (prediction, reference) pairs: nltk sentence_bleu and meteor_score (with a WordNet stand-in
   whose synsets() is empty), nltk PorterStemmer, the `rouge` package, `rouge-score`,
   scikit-learn. These packages are test-only extras, imported normally: the tests FAIL if they
   are missing (CI installs them).
3. Edge cases of the authors' protocol (docs/paper-vs-authors.md s.3) and the CLI round trip.

Run: pytest tests/test_eval_metrics.py -q
"""
import json
import math
import random
import re
import warnings

import numpy as np
import pytest
from nltk.stem.porter import PorterStemmer
from nltk.translate.bleu_score import sentence_bleu
from nltk.translate.meteor_score import meteor_score as nltk_meteor
from rouge import Rouge
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

import eval as E
from extras import paper_tables, textmetrics, vane

TOL = 1e-6


# ------------------------------------------------------------------------------------------------
# a deterministic corpus of (prediction, reference) pairs
# ------------------------------------------------------------------------------------------------

SUBJECTS = ["a man", "the driver", "two pedestrians", "several people", "the police officer",
            "a white car", "the cars", "a dog", "the workers", "children"]
VERBS = ["is running", "runs", "ran", "was fighting", "fights", "fought", "collided", "collides",
         "is crossing", "crossed", "hurried", "happily walked", "walks", "attacked", "is stealing",
         "stole", "parks", "parked illegally", "was driving", "drives"]
OBJECTS = ["across the road", "into the intersection", "near the building", "on the sidewalk",
           "with another vehicle", "against the traffic light", "in the crowded street",
           "towards the railway", "at the entrance", "behind the fence"]
EXTRA = ["suddenly", "carefully", "repeatedly", "at night", "in the rain", "without hesitation",
         "causing a collision", "which is dangerous", "and the situation escalates",
         "while others watch", "generalization", "relational", "hopefulness", "conditionally"]


def _sentence(rng):
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    if rng.random() < 0.6:
        s += " " + rng.choice(EXTRA)
    return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", ", and"])


def _text(rng, k):
    return " ".join(_sentence(rng) for _ in range(k))


# morphological variants, so that METEOR's Porter-stem stage has work to do
VARIANTS = {"running": "run", "runs": "running", "ran": "runs", "fighting": "fights", "fought": "fight",
            "fights": "fighting", "collided": "colliding", "collides": "collided", "crossing": "crosses",
            "crossed": "crossing", "cars": "car", "car": "cars", "vehicle": "vehicles", "workers": "worker",
            "walks": "walking", "walked": "walks", "parked": "parking", "parks": "parked",
            "pedestrians": "pedestrian", "stealing": "steals", "stole": "steals", "attacked": "attacking",
            "driving": "drives", "drives": "driven", "happily": "happy", "dangerous": "danger",
            "building": "buildings", "collision": "collisions", "hesitation": "hesitating",
            "carefully": "careful", "repeatedly": "repeated", "escalates": "escalating", "watch": "watching",
            "generalization": "generalize", "relational": "relations", "hopefulness": "hopeful",
            "conditionally": "conditional", "road": "roads", "street": "streets", "railway": "railways",
            "entrance": "entrances", "intersection": "intersections", "hurried": "hurries",
            "illegally": "illegal", "crowded": "crowds", "officer": "officers", "traffic": "traffics"}


def _perturb(rng, text):
    words = text.split()
    out = []
    for w in words:
        core, tail = re.match(r"(.*?)([.,!]*)$", w).groups()
        if core.lower() in VARIANTS and rng.random() < 0.35:
            w = VARIANTS[core.lower()] + tail                 # inflectional variant
        r = rng.random()
        if r < 0.12:
            continue                                         # drop
        if r < 0.22:
            out.append(rng.choice(VERBS).split()[-1])        # substitute (often a stem variant)
        elif r < 0.27:
            out.extend([w, w])                               # repeat
        else:
            out.append(w)
    if rng.random() < 0.3 and len(out) > 4:                  # local shuffle
        i = rng.randrange(len(out) - 3)
        out[i:i + 3] = out[i:i + 3][::-1]
    return " ".join(out)


def make_corpus(n=80, seed=1234):
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        ref = _text(rng, rng.randint(1, 4))
        kind = i % 5
        if kind == 0:
            pred = ref                                        # identical
        elif kind in (1, 2):
            pred = _perturb(rng, ref)                         # shares words and stems
        elif kind == 3:
            pred = _text(rng, rng.randint(1, 3))              # unrelated (shared vocabulary)
        else:
            pred = rng.choice(["", " ", "a", "ok.", "...", "Normal.", "A. b. c", "the the the",
                               "Running runs ran.", "cars", ". .", "x y"])   # empty-ish
        pairs.append((pred, ref))
    return pairs


CORPUS = make_corpus()


class _NoWordNet:
    """WordNet stand-in for nltk's meteor_score: no synonyms, as in textmetrics.meteor."""

    @staticmethod
    def synsets(word):
        return []


# ------------------------------------------------------------------------------------------------
# hand-computed values
# ------------------------------------------------------------------------------------------------

def test_bleu_hand():
    ref = "the cat sat on the mat".split()
    hyp = "the cat on the mat".split()
    # c = 5 < r = 6 -> BP = exp(1 - 6/5) = exp(-0.2)
    # bigrams of hyp: (the cat) (cat on) (on the) (the mat); in ref: the cat, on the, the mat -> p2 = 3/4
    assert textmetrics.bleu(ref, hyp, (0, 1, 0, 0)) == pytest.approx(0.75 * math.exp(-0.2), abs=1e-12)
    # cumulative BLEU-2: p1 = 5/5 -> BP * sqrt(1 * 3/4) = exp(-0.2) * 0.8660254
    assert textmetrics.bleu(ref, hyp, (0.5, 0.5)) == pytest.approx(math.exp(-0.2) * math.sqrt(0.75), abs=1e-12)
    # clipping: hyp "the the the" -> p1 = min(3, 2)/3 = 2/3; bigram (the the) absent -> 0
    assert textmetrics.bleu(ref, "the the the".split(), (0, 1, 0, 0)) == 0.0
    # no unigram match -> 0; empty hypothesis -> 0
    assert textmetrics.bleu(ref, ["dog"], (0.5, 0.5)) == 0.0 and textmetrics.bleu(ref, [], (0, 1)) == 0.0
    # c > r -> BP = 1: hyp = ref + "again": p2 = 5/6
    assert textmetrics.bleu(ref, ref + ["again"], (0, 1, 0, 0)) == pytest.approx(5 / 6, abs=1e-12)


def test_meteor_hand():
    ref = "the cat sat on the mat".split()
    # all six words match exactly but in an order with no adjacent pair:
    # greedy from the hyp's end: cat->1, the->4 (right-most), sat->2, mat->5, the->0, on->3
    # sorted (h, r): (0,3) (1,0) (2,5) (3,2) (4,4) (5,1) -> 6 chunks; P = R = 1 -> Fmean = 1
    # penalty = 0.5 * (6/6)^3 = 0.5 -> METEOR = 0.5
    assert textmetrics.meteor(ref, "on the mat sat the cat".split()) == pytest.approx(0.5, abs=1e-12)
    # identical: 1 chunk of 6 -> penalty 0.5 * (1/6)^3 = 1/432 -> 1 - 1/432
    assert textmetrics.meteor(ref, ref) == pytest.approx(1 - 1 / 432, abs=1e-12)
    # stem stage: "the cat was running" vs "the cats were running"
    # exact: running(3->3), the(0->0); stem: cat ~ cats; was/were differ (wa vs were)
    # m = 3, P = R = 3/4, Fmean = 0.75; chunks: (0,0)(1,1) | (3,3) = 2
    # penalty = 0.5 * (2/3)^3 = 4/27 -> 0.75 * (1 - 4/27) = 0.6388889
    got = textmetrics.meteor("the cats were running".split(), "the cat was running".split())
    assert got == pytest.approx(0.75 * (1 - 4 / 27), abs=1e-12)
    assert textmetrics.meteor(ref, []) == 0.0 and textmetrics.meteor(ref, ["dog"]) == 0.0


def test_rouge_hand():
    hyp, ref = "the cat sat. the dog ran", "the cat ran. a dog sat"
    # `rouge` package: unique unigrams hyp {the cat sat dog ran} (5), ref {the cat ran a dog sat} (6)
    # overlap 5 -> P = 1, R = 5/6, F = 2PR/(P+R+1e-8) ~= 10/11
    r1 = textmetrics.rouge_n(hyp, ref, 1)
    assert r1["p"] == 1.0 and r1["r"] == pytest.approx(5 / 6) and r1["f"] == pytest.approx(10 / 11, abs=1e-7)
    # bigrams (across the '.' boundary too): hyp {the cat, cat sat, sat the, the dog, dog ran},
    # ref {the cat, cat ran, ran a, a dog, dog sat} -> overlap {the cat} -> P = R = F = 1/5
    assert textmetrics.rouge_n(hyp, ref, 2)["f"] == pytest.approx(0.2, abs=1e-7)
    # union LCS: ref "the cat ran" x hyp sents -> {the, cat} and {the, ran}; "a dog sat" -> {sat},
    # {dog}: |U| = 5, m = 6 distinct ref words, n = 5 distinct hyp words -> R = 5/6, P = 1
    rl = textmetrics.rouge_l(hyp, ref)
    assert rl["p"] == 1.0 and rl["r"] == pytest.approx(5 / 6)
    # rouge-score: counts, 6 tokens each; R1 overlap the(1)+cat+sat+dog+ran = 5 -> F = 5/6;
    # R2 overlap 1 of 5 -> 0.2; LCS("the cat sat the dog ran", "the cat ran a dog sat") = 3 -> 0.5
    assert textmetrics.rouge_n(hyp, ref, 1, "rouge_score")["f"] == pytest.approx(5 / 6)
    assert textmetrics.rouge_n(hyp, ref, 2, "rouge_score")["f"] == pytest.approx(0.2)
    assert textmetrics.rouge_l(hyp, ref, "rouge_score")["f"] == pytest.approx(0.5)
    # a hypothesis the `rouge` package refuses (no sentence) scores 0 here
    assert textmetrics.rouge_n("...", ref, 1)["f"] == 0.0 and textmetrics.rouge_l("", ref)["f"] == 0.0


def test_porter_hand():
    # examples from Porter (1980) and NLTK's extensions (irregular forms, 'ies' on 4 letters)
    cases = {"caresses": "caress", "ponies": "poni", "ties": "tie", "cats": "cat", "feed": "feed",
             "agreed": "agre", "plastered": "plaster", "motoring": "motor", "sing": "sing",
             "conflated": "conflat", "hopping": "hop", "falling": "fall", "filing": "file",
             "happy": "happi", "relational": "relat", "conditional": "condit", "generalization": "gener",
             "dying": "die", "skies": "sky", "news": "news", "running": "run", "vehicles": "vehicl",
             "is": "is", "by": "by", "enjoy": "enjoy", "radically": "radic", "analogous": "analog"}
    for w, s in cases.items():
        assert textmetrics.porter_stem(w) == s, (w, textmetrics.porter_stem(w), s)


def test_interval_iou_hand():
    # [0.2,0.6] vs [0.4,0.8]: inter = 0.6-0.4 = 0.2, union = 0.8-0.2 = 0.6 -> 1/3
    assert E.interval_iou((0.2, 0.6), (0.4, 0.8)) == pytest.approx(1 / 3)
    assert E.interval_iou((0, 1), (0, 1)) == 1.0
    # reversed [0.6, 0.2] vs [0.1, 0.5]: min(e)-max(s) = 0.2-0.6 < 0 -> inter 0 -> IoU 0
    assert E.interval_iou((0.6, 0.2), (0.1, 0.5)) == 0.0
    assert E.interval_iou((0.0, 0.0), (0.0, 0.0)) == 0.0      # union 0 -> 0 by definition
    assert E.interval_iou((0.0, 0.0), (0.2, 0.6)) == 0.0


def test_frame_auc_and_best_f1_hand():
    # scores 0.1 0.4 (neg) 0.35 0.8 (pos): pairs pos>neg: 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert E.frame_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # full tie: every pos/neg pair counts 1/2 -> 0.5
    assert E.frame_auc([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx(0.5)
    assert E.frame_auc([1, 1], [0.2, 0.3]) is None             # one class only
    # best F1: t = 0.8 -> TP1 FP0 FN1 -> 2/3; t = 0.35 -> TP2 FP1 -> 4/5; t = 0.1 -> 4/6
    f1, t = E.best_f1([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert f1 == pytest.approx(0.8) and t == pytest.approx(0.35)


def _gt(video, cat, start=None, end=None, total=100, source="UCF"):
    row = {"source": source, "video": video, "anomaly_type": cat, "path": f"/x/{video}.mp4",
           "total_frames": total,
           "think": "<think><step1>A man walks on the road.</step1><step2>Nothing unusual.</step2></think>",
           "answer": f"<answer><which>{cat}</which><what>a man walks</what><why>fine</why></answer>"}
    if start is not None:
        row.update(start=start, end=end)
    return row


def _out(which, when=None, text="A man walks on the road."):
    w = f"<when>{when}</when>" if when is not None else ""
    return f"<think><step1>{text}</step1><step2>ok</step2></think><answer><which>{which}</which>{w}</answer>"


def test_detection_hand():
    gts = [_gt("v1", "Fighting", 20, 60), _gt("v2", "Drown", 10, 50), _gt("v3", "Normal"), _gt("v4", "Normal")]
    preds = [
        {"source": "UCF", "video": "v1", "output": _out("fighting ", "[0.4, 0.8]")},  # TP, IoU 1/3
        {"source": "UCF", "video": "v2", "output": _out("Normal")},                    # FN, IoU 0
        {"source": "UCF", "video": "v3", "output": _out("Normal")},                    # TN, IoU 1
        {"source": "UCF", "video": "v4", "output": _out("Fire", "[0.0, 0.5]")},        # FP, IoU 0
    ]
    m = E.score_predictions(preds, gts)
    d = m["detection"]
    # TP = FN = TN = FP = 1 -> acc = P = R = F1 = 0.5
    assert (d["accuracy"], d["precision"], d["recall"], d["f1"]) == (0.5, 0.5, 0.5, 0.5)
    # IoUs 1/3, 0, 1, 0 -> mIoU 1/3; R@0.3 = 2/4; R@0.5 = R@0.7 = 1/4
    assert d["miou"] == pytest.approx(1 / 3) and d["r@0.3"] == 0.5 and d["r@0.5"] == 0.25 and d["r@0.7"] == 0.25
    # common convention, abnormal GT only, label ignored: v1 1/3, v2 no <when> -> 0
    a = m["detection_abnormal_only"]
    assert a["miou"] == pytest.approx(1 / 6) and a["r@0.3"] == 0.5 and a["r@0.5"] == 0.0 and a["n"] == 2
    # category over abnormal GT: v1 "fighting " == "Fighting" (case/space-insensitive); v2 wrong
    assert m["category"]["accuracy"] == 0.5 and m["category"]["n"] == 2
    assert m["category"]["per_category"] == {"Drown": 0.0, "Fighting": 1.0}   # per GT category, sorted
    # frames (400): GT pos v1 20..60 (41) + v2 10..50 (41) = 82; predicted 1: v1 f/100 in
    # [0.4, 0.8] -> 40..80 (41), v4 0..50 (51); TP = 40..60 = 21, FP = 71, FN = 61, TN = 247
    # binary scores -> AUC = (TPR + TNR) / 2 = (21/82 + 247/318) / 2
    f = m["frame"]
    assert f["n_frames"] == 400
    assert f["auc"] == pytest.approx((21 / 82 + 247 / 318) / 2, abs=1e-12)
    # best F1: t=1 -> 42/(42+71+61) = 0.2414; t=0 (all positive) -> 164/(164+318) = 0.3402
    assert f["best_f1"] == pytest.approx(164 / 482) and f["best_threshold"] == 0.0
    assert m["counts"]["n_matched"] == 4 and m["counts"]["n_missing"] == 0


def test_multiple_choice_hand():
    assert vane.extract_choice("<think>maybe A or C</think><answer>(B) the car</answer>") == "B"
    assert vane.extract_choice("The answer is C.") == "C"
    assert vane.extract_choice("Bus and AD only") is None
    assert vane.extract_choice("") is None
    rows = [
        {"id": 1, "category": "SORA", "question": "q A. x B. y C. z D. w", "answer": "B", "output": "<answer>B</answer>"},
        {"id": 2, "category": "SORA", "question": "q", "answer": "A", "output": "<answer>D</answer>"},
        {"id": 3, "category": "Ped1", "question": "q", "answer": "C", "output": "Option C."},
        {"id": 4, "category": "Ped1", "question": "q", "answer": "D", "output": "I am not sure"},
    ]
    r = vane.score_multiple_choice(rows)
    # SORA 1/2, Ped1 1/2, overall 2/4; one answer without any letter
    assert r["accuracy"] == 0.5 and r["per_category"]["SORA"]["accuracy"] == 0.5
    assert r["per_category"]["Ped1"] == {"accuracy": 0.5, "n": 2} and r["n_unanswered"] == 1
    # separate GT file: a GT question without prediction counts as wrong
    preds = [{"id": 1, "output": "B"}]
    gts = [{k: v for k, v in x.items() if k != "output"} for x in rows[:2]]
    r2 = vane.score_multiple_choice(preds, gts)
    assert r2["accuracy"] == 0.5 and r2["n_missing_output"] == 1
    # a repeated id: once if the output is the same (counted), an error if it differs
    r3 = vane.score_multiple_choice(preds + preds, gts)
    assert r3["accuracy"] == 0.5 and r3["n_duplicate"] == 1
    with pytest.raises(ValueError, match="prediction id '1' appears twice with different outputs"):
        vane.score_multiple_choice(preds + [{"id": 1, "output": "A"}], gts)


def test_text_normalisation():
    assert textmetrics.strip_tags("<think><step1>A b.</step1>\n<step2>C</step2></think>") == "A b. C"
    assert textmetrics.word_tokens("The car's speed: 0.5!") == ["the", "car", "'", "s", "speed", ":", "0", ".", "5", "!"]
    assert textmetrics.rouge_score_tokens("Hello, World! x_y") == ["hello", "world", "x", "y"]


# ------------------------------------------------------------------------------------------------
# reference packages (agreement within 1e-6)
# ------------------------------------------------------------------------------------------------

def test_corpus_is_big_and_varied():
    assert len(CORPUS) >= 50
    assert sum(p == r for p, r in CORPUS) >= 10 and sum(len(p) < 5 for p, _ in CORPUS) >= 5
    # the METEOR stem stage must be exercised: count matches made only after exact matching
    stem_hits = 0
    for pred, ref in CORPUS:
        h, r = list(enumerate(textmetrics.word_tokens(pred))), list(enumerate(textmetrics.word_tokens(ref)))
        _, hl, rl = textmetrics._align_stage(h, r, lambda w: w)
        stem_hits += len(textmetrics._align_stage(hl, rl, textmetrics.porter_stem)[0])
    assert stem_hits >= 30


def test_bleu_vs_nltk():
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pred, ref in CORPUS:
            h, r = textmetrics.word_tokens(pred), textmetrics.word_tokens(ref)
            for w in ((0, 1, 0, 0), (0.5, 0.5)):
                worst = max(worst, abs(textmetrics.bleu(r, h, w) - sentence_bleu([r], h, weights=w)))
    assert worst < TOL


def test_meteor_vs_nltk():
    worst = 0.0
    for pred, ref in CORPUS:
        h, r = textmetrics.word_tokens(pred.lower()), textmetrics.word_tokens(ref.lower())
        worst = max(worst, abs(textmetrics.meteor(r, h) - nltk_meteor([r], h, wordnet=_NoWordNet())))
    assert worst < TOL


def _porter_vocab():
    words = {w for p, r in CORPUS for w in textmetrics.word_tokens(p + " " + r)}
    roots = ["relat", "condit", "gener", "hope", "run", "fight", "cross", "happ", "digit", "radic",
             "sensib", "formal", "electr", "adjust", "depend", "adopt", "commun", "activ", "effect",
             "bowdler", "cease", "control", "roll", "troubl", "siz", "hop", "fil", "fail", "agre",
             "feed", "motor", "plaster", "conflat", "vietnam", "oper", "feud", "decis", "callous",
             "archaeo", "geo", "theo", "y", "sky", "fl", "sp", "tr", "di", "l", "t", "ow", "at"]
    suffixes = ["", "s", "es", "ies", "ied", "ed", "ing", "eed", "y", "ly", "ational", "tional",
                "enci", "anci", "izer", "abli", "bli", "alli", "entli", "eli", "ousli", "ization",
                "ation", "ator", "alism", "iveness", "fulness", "ousness", "aliti", "iviti", "biliti",
                "fulli", "logi", "icate", "ative", "alize", "iciti", "ical", "ful", "ness", "al",
                "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent", "sion",
                "tion", "ou", "ism", "ate", "iti", "ous", "ive", "ize", "e", "ll", "ingly", "ements"]
    words |= {r + s for r in roots for s in suffixes}
    words |= {"caresses", "ponies", "ties", "dies", "flies", "died", "spied", "dying", "lying",
              "tying", "skies", "news", "innings", "outings", "cannings", "howe", "proceed",
              "exceed", "succeed", "enjoy", "toy", "syzygy", "yyyy", "oaten", "orrery", "trees",
              "ivy", "by", "is", "a", "generously", "vileli", "allowance", "airliner", "gyroscopic",
              "defensible", "irritant", "replacement", "homologou", "angulariti", "probate", "rate",
              "controlling", "rolling", "hissing", "fizzed", "tanned", "fallen", "sensibilities"}
    return sorted(words)


def test_porter_vs_nltk():
    ps = PorterStemmer()   # default mode: NLTK_EXTENSIONS
    vocab = _porter_vocab()
    assert len(vocab) > 3000
    bad = [(w, textmetrics.porter_stem(w), ps.stem(w)) for w in vocab if textmetrics.porter_stem(w) != ps.stem(w)]
    assert not bad, bad[:20]


def test_rouge_vs_rouge_package():
    rouge = Rouge()
    worst, compared = 0.0, 0
    for pred, ref in CORPUS:
        p, r = pred.lower(), ref.lower()
        try:
            sc = rouge.get_scores(p, r)[0]
        except ValueError:   # the package refuses a hypothesis with no sentence; ours scores 0
            assert textmetrics.rouge_n(p, r, 1)["f"] == 0.0 and textmetrics.rouge_l(p, r)["f"] == 0.0
            continue
        compared += 1
        for key, ours in (("rouge-1", textmetrics.rouge_n(p, r, 1)), ("rouge-2", textmetrics.rouge_n(p, r, 2)),
                          ("rouge-l", textmetrics.rouge_l(p, r))):
            for s in ("p", "r", "f"):
                worst = max(worst, abs(ours[s] - sc[key][s]))
    assert compared >= 50 and worst < TOL


def test_rouge_vs_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    worst = 0.0
    for pred, ref in CORPUS:
        sc = scorer.score(ref, pred)
        for key, ours in (("rouge1", textmetrics.rouge_n(pred, ref, 1, "rouge_score")),
                          ("rouge2", textmetrics.rouge_n(pred, ref, 2, "rouge_score")),
                          ("rougeL", textmetrics.rouge_l(pred, ref, "rouge_score"))):
            worst = max(worst, abs(ours["p"] - sc[key].precision), abs(ours["r"] - sc[key].recall),
                        abs(ours["f"] - sc[key].fmeasure))
    assert worst < TOL


def test_reasoning_pipeline_vs_packages():
    """The per-video authors' protocol wired end to end (tags, lowercasing, tokens) equals the
    packages applied to the same normalised texts."""
    rouge = Rouge()
    rng = random.Random(7)
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for pred, ref in CORPUS:
            if len(pred) < 5:
                continue
            row = {"think": f"<think><step1>{ref}</step1>\n<step2>{_sentence(rng)}</step2></think>",
                   "answer": "<answer><which>Fighting</which><what>x</what></answer>"}
            out = f"<think><step1>{pred}</step1></think>"
            s = textmetrics.reasoning_scores_authors(out, row)
            pl = textmetrics.strip_tags(out).lower()
            rl = textmetrics.strip_tags(row["think"] + " " + row["answer"]).lower()
            ht, rt = textmetrics.word_tokens(pl), textmetrics.word_tokens(rl)
            assert abs(s["bleu2"] - sentence_bleu([rt], ht, weights=(0, 1, 0, 0))) < TOL
            assert abs(s["meteor"] - nltk_meteor([rt], ht, wordnet=_NoWordNet())) < TOL
            try:
                sc = rouge.get_scores(pl, rl)[0]
            except ValueError:
                continue
            assert abs(s["rouge1"] - sc["rouge-1"]["f"]) < TOL
            assert abs(s["rouge2"] - sc["rouge-2"]["f"]) < TOL
            assert abs(s["rouge_l"] - sc["rouge-l"]["f"]) < TOL
            checked += 1
    assert checked >= 40


def test_binary_prf_vs_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        gold = rng.choice(["Abnormal", "Normal"], n).tolist()
        pred = rng.choice(["Abnormal", "Normal"], n).tolist()
        ours = E.binary_prf(pred, gold)
        kw = dict(pos_label="Abnormal", zero_division=0)
        assert abs(ours["accuracy"] - accuracy_score(gold, pred)) < TOL
        assert abs(ours["precision"] - precision_score(gold, pred, **kw)) < TOL
        assert abs(ours["recall"] - recall_score(gold, pred, **kw)) < TOL
        assert abs(ours["f1"] - f1_score(gold, pred, **kw)) < TOL


def test_auc_and_best_f1_vs_sklearn():
    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(2, 300))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        # many ties on purpose: scores from a small set, or binary
        s = rng.integers(0, 2 if trial % 3 == 0 else 7, n) / 6.0
        assert abs(E.frame_auc(y, s) - roc_auc_score(y, s)) < TOL
        brute = max(f1_score(y, (s >= t).astype(int), zero_division=0) for t in np.unique(s))
        assert abs(E.best_f1(y, s)[0] - brute) < TOL


# ------------------------------------------------------------------------------------------------
# edge cases of the authors' protocol
# ------------------------------------------------------------------------------------------------

def test_edge_cases():
    gts = [_gt("a", "Fighting", 20, 60), _gt("b", "Normal"), _gt("c", "Fire", 0, 50),
           _gt("d", "Robbery", 30, 90), _gt("e", "Normal"), _gt("f", "Normal"), _gt("g", "Arson", 10, 20)]
    preds = [
        {"source": "UCF", "video": "a", "output": ""},                                   # empty
        {"source": "UCF", "video": "b", "output": _out("Normal.")},                      # trailing period
        {"source": "UCF", "video": "c", "output": _out("Fire", "soon")},                 # unparseable when
        {"source": "UCF", "video": "d", "output": _out("Robbery", "[0.9, 0.3]")},        # reversed when
        {"source": "UCF", "video": "e", "output": "The street looks normal today."},     # no tags
        {"video": "f", "output": _out("Normal")},                                        # no source: by video
        {"source": "XD", "video": "zzz", "output": _out("Normal")},                      # not in GT
        {"source": "UCF", "video": "f", "output": _out("Normal")},                       # same again
    ]                                                                                    # g: no row
    m = E.score_predictions(preds, gts)
    c = m["counts"]
    assert (c["n_gt"], c["n_pred"], c["n_matched"], c["n_missing"]) == (7, 8, 6, 1)
    assert c["n_unknown_pred"] == 1 and m["unmatched"]["unknown_pred"] == ["XD/zzz"]
    assert m["unmatched"]["missing"] == ["UCF/g"] and c["n_duplicate_pred"] == 1
    assert c["n_empty"] == 1 and c["n_label_rule_disagree"] == 1     # only "Normal." disagrees
    d = m["detection"]
    # labels (authors): a Abn (empty), b Abn ("Normal."), c Abn, d Abn, e Abn (no which), f Normal
    # gold:             a Abn,         b Nor,              c Abn, d Abn, e Nor,              f Nor
    # TP = 3 (a c d), FP = 2 (b e), TN = 1 (f), FN = 0 -- over the 6 videos with a row (authors)
    dm = m["detection_matched_only"]
    assert dm["n"] == 6 and dm["accuracy"] == pytest.approx(4 / 6) and dm["precision"] == pytest.approx(3 / 5)
    assert dm["recall"] == 1.0
    # IoU: a [0,0] vs [0.2,0.6] -> 0; b, e wrong -> 0; c unparseable -> [0,0] vs [0,0.5] -> 0;
    # d reversed -> 0; f right Normal -> 1  => mIoU = 1/6
    assert dm["miou"] == pytest.approx(1 / 6)
    # the headline counts g (no row) wrong: no label, so a false negative, IoU 0 -> over 7 videos
    assert d["n"] == 7 and d["accuracy"] == pytest.approx(4 / 7) and d["precision"] == pytest.approx(3 / 5)
    assert d["recall"] == pytest.approx(3 / 4) and d["miou"] == pytest.approx(1 / 7)
    # abnormal-only: a 0, c 0, d 0, g (no row) 0 -> 0 over 4 videos
    assert m["detection_abnormal_only"]["n"] == 4 and m["detection_abnormal_only"]["miou"] == 0.0
    # reasoning: the empty output is skipped (authors), scored 0 in the common convention; the
    # video without a row (g) scores 0 in both
    r, rc = m["reasoning"], m["reasoning_common"]
    assert r["n"] == 6 and r["n_skipped_empty"] == 1 and r["n_missing"] == 1 and rc["n"] == 7
    # reversed <when> gives no positive frame; all frames scored 0 except none -> AUC 0.5
    assert m["frame"]["auc"] == pytest.approx(0.5)
    json.dumps(m)   # serialisable


def test_short_prediction_scores_zero():
    row = _gt("a", "Normal")
    s = textmetrics.reasoning_scores_authors("<which>ok</which>", row)      # "ok": 2 chars after stripping
    assert s["short"] and s["bleu2"] == s["meteor"] == s["rouge1"] == s["rouge_l"] == 0.0
    assert textmetrics.reasoning_scores_authors("   \n", row) is None       # empty -> skipped


def test_fallback_to_video_only_when_unique():
    gts = [_gt("1", "Normal", source="UCF"), _gt("1", "Normal", source="XD"), _gt("2", "Normal")]
    m = E.match_predictions([{"video": "1", "output": "x"}, {"video": 2, "output": "y"}], gts)
    # video "1" is ambiguous (two sources) -> unknown; video 2 (int) matches "2"
    assert m["unknown"] == ["/1"] and [i for i, _ in m["matched"]] == [2]


# ------------------------------------------------------------------------------------------------
# files and the CLI
# ------------------------------------------------------------------------------------------------

def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_malformed_jsonl_names_the_line(tmp_path):
    p = tmp_path / "preds.jsonl"
    p.write_text('{"video": "a", "output": ""}\n{"video": "b", "output": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"preds\.jsonl:2"):
        E.load_jsonl(str(p))


def test_cli_round_trip(tmp_path, capsys):
    gts = [_gt("v1", "Fighting", 20, 60), _gt("v2", "Normal")]
    preds = [{"source": "UCF", "video": "v1", "anomaly_type": "Fighting", "output": _out("Fighting", "[0.2, 0.6]")},
             {"source": "UCF", "video": "v2", "anomaly_type": "Normal", "output": _out("Normal")}]
    pp, gp, jp = tmp_path / "p.jsonl", tmp_path / "g.jsonl", tmp_path / "out" / "m.json"
    _write_jsonl(pp, preds)
    _write_jsonl(gp, gts)
    assert E.main(["--score", str(pp), "--gt", str(gp), "--json", str(jp), "--with-paper"]) == 0
    m = json.loads(jp.read_text())
    required = {
        "detection": ["accuracy", "precision", "recall", "f1", "miou", "r@0.3", "r@0.5", "r@0.7"],
        "detection_abnormal_only": ["miou", "r@0.3", "r@0.5", "r@0.7"],
        "category": ["accuracy"],
        "reasoning": ["bleu2", "meteor", "rouge1", "rouge2", "rouge_l"],
        "reasoning_common": ["bleu2", "rouge1", "rouge2", "rouge_l"],
        "frame": ["auc", "best_f1"],
        "counts": ["n_gt", "n_pred", "n_matched", "n_missing", "n_unknown_pred", "n_empty"],
    }
    for sec, keys in required.items():
        for k in keys:
            assert k in m[sec], f"{sec}.{k}"
    assert m["detection"]["accuracy"] == 1.0 and m["detection"]["miou"] == 1.0
    printed = capsys.readouterr().out
    assert "| Method | BLEU-2 | METEOR | ROUGE-2 | Acc | F1 | mIoU | R@0.3 | R@0.5 |" in printed
    assert "Vad-R1 (paper, Table 2)" in printed and "0.862" in printed
    assert "+SFT+AVA-GRPO (paper, Table 4)" in printed


def test_format_table_table4_reuse():
    named = {"base": {"reasoning": {"bleu2": 0.1}, "detection": {"precision": 0.5}},
             "+SFT": {"reasoning.bleu2": 0.2, "detection.precision": 0.6}}       # flat dotted keys too
    t = paper_tables.format_table(named, with_paper=False, layout="table4")
    lines = t.splitlines()
    assert lines[0] == "| Method | BLEU-2 | ROUGE-1 | ROUGE-2 | ROUGE-L | Prec. | mIoU | R@0.3 | R@0.5 | R@0.7 |"
    assert lines[2] == "| base | 0.100 | - | - | - | 0.500 | - | - | - | - |"
    assert lines[3].startswith("| +SFT | 0.200 |")


def test_cli_multiple_choice(tmp_path):
    rows = [{"id": 1, "category": "SORA", "question": "q", "answer": "B", "output": "<answer>B</answer>"}]
    pp, jp = tmp_path / "mc.jsonl", tmp_path / "mc.json"
    _write_jsonl(pp, rows)
    assert E.main(["--mc", str(pp), "--json", str(jp)]) == 0
    assert json.loads(jp.read_text())["multiple_choice"]["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------------
# RL minus SFT: the paired bootstrap of extras/report.py (eval.py --report)
# ------------------------------------------------------------------------------------------------

def test_paired_bootstrap_exact_quantiles_and_scipy():
    from scipy.stats import bootstrap
    from extras import report
    # d = b - a is one 1 and nine 0s: a draw's mean is k/10, k ~ Binomial(10, 0.1).
    # P(k = 0) = 0.349 > 0.025 -> lower bound 0; P(k <= 2) = 0.930 < 0.975 <= P(k <= 3) = 0.987
    # -> upper bound 0.3. Both hold for any seed at 20,000 draws (sampling error ~0.001).
    a, b = [0.0] * 10, [1.0] + [0.0] * 9
    r = report.paired_bootstrap(a, b, n_boot=20000, seed=3)
    assert (r["diff"], r["lo"], r["hi"], r["n"]) == (0.1, 0.0, 0.3, 10)
    ref = bootstrap((np.array(a), np.array(b)), lambda x, y, axis=-1: np.mean(y - x, axis=axis),
                    paired=True, vectorized=True, n_resamples=20000, method="percentile",
                    confidence_level=0.95, rng=np.random.default_rng(7)).confidence_interval
    assert (ref.low, ref.high) == (0.0, 0.3)
    # a continuous case: the same interval as scipy's up to sampling error
    rng = np.random.default_rng(0)
    a, b = rng.random(40), rng.random(40) + 0.1
    r = report.paired_bootstrap(a, b, n_boot=50000, seed=1)
    ref = bootstrap((a, b), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True,
                    vectorized=True, n_resamples=50000, method="percentile",
                    rng=np.random.default_rng(2)).confidence_interval
    assert r["diff"] == pytest.approx(np.mean(b - a), abs=1e-12)
    assert r["lo"] == pytest.approx(ref.low, abs=0.005) and r["hi"] == pytest.approx(ref.high, abs=0.005)
    # no difference at all -> [0, 0]; nothing to compare -> None
    r = report.paired_bootstrap([1, 0, 1], [1, 0, 1])
    assert (r["diff"], r["lo"], r["hi"]) == (0.0, 0.0, 0.0)
    assert report.paired_bootstrap([], [])["diff"] is None


def test_compare_predictions_hand(tmp_path):
    from extras import report
    gts = [_gt("v1", "Fighting", 20, 60), _gt("v2", "Drown", 10, 50), _gt("v3", "Normal"), _gt("v4", "Normal")]
    sft = [{"source": "UCF", "video": "v1", "output": _out("Fighting", "[0.4, 0.8]")},  # right, IoU 1/3
           {"source": "UCF", "video": "v2", "output": _out("Normal")},                 # wrong, IoU 0
           {"source": "UCF", "video": "v3", "output": _out("Normal")}]                 # right, IoU 1; v4 missing
    rl = [{"source": "UCF", "video": "v1", "output": _out("Fighting", "[0.2, 0.6]")},  # right, IoU 1
          {"source": "UCF", "video": "v2", "output": _out("Drown", "[0.1, 0.3]")},     # right, IoU 0.5
          {"source": "UCF", "video": "v3", "output": _out("Fire", "[0.0, 1.0]")},      # wrong, IoU 0
          {"source": "UCF", "video": "v4", "output": _out("Normal")}]                  # right, IoU 1
    for name, rows in (("gt", gts), ("sft", sft), ("rl", rl)):
        _write_jsonl(tmp_path / f"{name}.jsonl", rows)
    pv = report.per_video([r["output"] for r in sft] + [None], gts, E.detection_metrics)
    assert pv == {"accuracy": [1.0, 0.0, 1.0, 0.0], "iou": [pytest.approx(1 / 3), 0.0, 1.0, 0.0]}
    res = report.compare_predictions(str(tmp_path / "sft.jsonl"), str(tmp_path / "rl.jsonl"),
                                     str(tmp_path / "gt.jsonl"), E.detection_metrics, n_boot=2000)
    # accuracy 2/4 -> 3/4; per-video IoU (1/3, 0, 1, 0) -> (1, 0.5, 0, 1): mean diff (2/3 + 0.5 - 1 + 1) / 4
    assert res["accuracy"]["diff"] == pytest.approx(0.25) and res["accuracy"]["n"] == 4
    assert res["miou"]["diff"] == pytest.approx((2 / 3 + 0.5 - 1 + 1) / 4)
    # the interval brackets the difference and lies within the per-video extremes (-1 .. +1)
    for r in res.values():
        assert -1 <= r["lo"] <= r["diff"] <= r["hi"] <= 1
    # the report's lines, written beside table.md
    run = tmp_path / "run"
    run.mkdir()
    for s in ("sft", "rl"):
        (run / f"preds_{s}.jsonl").write_text((tmp_path / f"{s}.jsonl").read_text())
    lines = report.compare_lines(str(run), str(tmp_path / "gt.jsonl"), E.detection_metrics)
    assert "| accuracy | +0.250 [" in "\n".join(lines)
    assert json.load(open(run / "compare_rl_vs_sft.json"))["accuracy"]["diff"] == pytest.approx(0.25)
    assert report.compare_lines(str(tmp_path), str(tmp_path / "gt.jsonl"), E.detection_metrics) == []


def test_pooled_compare_hand(tmp_path):
    """Two runs (seeds) holding the hand case of test_compare_predictions_hand: the pooled figures
    are each run's (precision: SFT predicts Abnormal on v1 only -> 1/1; RL on v1, v2, v3 -> 2/3; the
    missing v4 predicts nothing), and the bootstrap over videos keeps both runs of a video together."""
    from extras import report
    gts = [_gt("v1", "Fighting", 20, 60), _gt("v2", "Drown", 10, 50), _gt("v3", "Normal"), _gt("v4", "Normal")]
    sft = [{"source": "UCF", "video": "v1", "output": _out("Fighting", "[0.4, 0.8]")},
           {"source": "UCF", "video": "v2", "output": _out("Normal")},
           {"source": "UCF", "video": "v3", "output": _out("Normal")}]
    rl = [{"source": "UCF", "video": "v1", "output": _out("Fighting", "[0.2, 0.6]")},
          {"source": "UCF", "video": "v2", "output": _out("Drown", "[0.1, 0.3]")},
          {"source": "UCF", "video": "v3", "output": _out("Fire", "[0.0, 1.0]")},
          {"source": "UCF", "video": "v4", "output": _out("Normal")}]
    _write_jsonl(tmp_path / "gt.jsonl", gts)
    runs = []
    for k in range(2):
        run = tmp_path / f"run{k}"
        run.mkdir()
        _write_jsonl(run / "preds_sft.jsonl", sft)
        _write_jsonl(run / "preds_rl.jsonl", rl)
        runs.append(str(run))
    res = report.pooled_compare(runs, str(tmp_path / "gt.jsonl"), E.detection_metrics, n_boot=3000)
    assert (res["accuracy"]["sft"], res["accuracy"]["rl"]) == (0.5, 0.75)
    assert (res["precision"]["sft"], res["precision"]["rl"]) == (1.0, pytest.approx(2 / 3))
    assert res["miou"]["sft"] == pytest.approx(1 / 3) and res["miou"]["rl"] == pytest.approx(2.5 / 4)
    assert res["miou"]["diff"] == pytest.approx(2.5 / 4 - 1 / 3) and res["n_videos"] == 4
    for k in ("accuracy", "precision", "miou"):
        assert -1 <= res[k]["lo"] <= res[k]["diff"] <= res[k]["hi"] <= 1
    assert report.pooled_lines(res)[-3].startswith("| accuracy | 0.500 | 0.750 | +0.250 [")
    # the same as one run's figures: pooling identical seeds changes no point estimate
    one = report.pooled_compare(runs[:1], str(tmp_path / "gt.jsonl"), E.detection_metrics, n_boot=3000)
    assert all(one[k]["diff"] == pytest.approx(res[k]["diff"]) for k in ("accuracy", "precision", "miou"))
