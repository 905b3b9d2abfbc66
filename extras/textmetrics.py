"""extras/textmetrics.py -- the reasoning-text metrics of the paper's tables, from definitions.

Paper: Sec. 4.1 "Evaluation Metrics" scores the reasoning text with BLEU-2, METEOR and
ROUGE-1/2/L (Table 2, Table 4, Tables 9-10). The authors compute them with nltk (sentence_bleu,
meteor_score, PorterStemmer) and the `rouge` package (docs/paper-vs-authors.md s.3); this module
writes each one from its published definition with the standard library and numpy, in those
packages' conventions, plus the common conventions (cumulative BLEU-2, `rouge-score`):

  * text normalisation and the two tokenisers            (section 1)
  * BLEU (Papineni et al. 2002)                           (section 2)
  * the Porter stemmer (Porter 1980), NLTK's variant      (section 3)
  * METEOR (Banerjee & Lavie 2005), no WordNet stage      (section 4)
  * ROUGE-N and ROUGE-L (Lin 2004), both conventions      (section 5)
  * per-video scores and their means, as eval.py reports  (section 6)

The reference packages are test oracles only. Where this departs from the authors' scripts
(no WordNet synonyms, the tokenizer, tag stripping): docs/eval.md.

Used by eval.py (reasoning.* and reasoning_common.* of the metrics JSON). Checked by:
    pytest tests/test_eval_metrics.py -q
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from functools import lru_cache

import numpy as np


# ================================================================================================
# 1. Text normalisation and tokenisers
# ================================================================================================

# The protocol strips ANY XML-like tag from both texts (docs/paper-vs-authors.md s.3: "all tags
# removed"), not only the project tags of vadr.TAG_RE: a stray <br> or <step5> is not scored.
_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*>")   # <think>, </step1>, <when>, <br>, ...
_WORD_RE = re.compile(r"\w+|[^\w\s]")                 # words, and each punctuation mark alone
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")            # rouge-score's default tokenizer


def strip_tags(text: str | None) -> str:
    """docs/paper-vs-authors.md s.3: "all tags removed and newlines dropped". Each tag -> one
    space, each newline -> one space, whitespace runs -> one space, ends trimmed (a space, not
    the empty string, so that `<which>Fighting</which><what>A man` does not glue into
    "fightinga"; docs/eval.md)."""
    text = _TAG_RE.sub(" ", text or "")
    return " ".join(text.split())


def word_tokens(text: str) -> list[str]:
    """The BLEU/METEOR tokenizer ("lowercased word tokens", docs/paper-vs-authors.md s.3):
    lowercase, then re.findall(r"\\w+|[^\\w\\s]"): maximal runs of Unicode word characters
    (letters, digits, _) and every other non-space character as a token of its own.
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
# 2. BLEU (Papineni et al. 2002) in nltk's sentence_bleu conventions, single reference
# ================================================================================================

def bleu(reference: list[str], hypothesis: list[str], weights=(0.25, 0.25, 0.25, 0.25)) -> float:
    """Sentence BLEU against ONE reference, no smoothing (nltk sentence_bleu, method0):

      p_n  = sum_g min(count_hyp(g), count_ref(g)) / max(1, sum_g count_hyp(g))   (clipped
             n-gram precision; n-grams g of order n)
      BP   = 1 if c > r, 0 if c == 0, else exp(1 - r / c)    (c = len(hyp), r = len(ref))
      BLEU = BP * exp( sum_n w_n * log p_n )   over the n with w_n > 0

    Authors' "BLEU-2" (docs/paper-vs-authors.md s.3) is weights (0, 1, 0, 0): BP * p_2
    (NOT cumulative).
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
# 3. Porter stemmer (Porter 1980), NLTK_EXTENSIONS variant, written from the algorithm
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
# 4. METEOR (Banerjee & Lavie 2005; Lavie & Agarwal 2007) in nltk's meteor_score conventions
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
    chunks = 1 + sum(not (b[0] == a[0] + 1 and b[1] == a[1] + 1)
                     for a, b in zip(matches, matches[1:]))
    penalty = gamma * (chunks / m) ** beta
    return (1 - penalty) * fmean


# ================================================================================================
# 5. ROUGE (Lin 2004) in two conventions: the `rouge` package (authors) and `rouge-score` (common)
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


def _lcs_columns(x: list, y: list) -> list[int]:
    """Every column of _lcs_table, bit-parallel (Allison & Dix 1986; Hyyro 2004): bit i-1 of
    cols[j] is 0 exactly where T[i][j] = T[i-1][j] + 1, so T[i][j] = i - popcount(the low i bits
    of cols[j]). One big-integer update per token of y: a long y (an untrusted output) costs
    len(y) * len(x) / 64 machine words, not len(y) * len(x) Python steps."""
    match = {}
    for i, w in enumerate(x):
        match[w] = match.get(w, 0) | (1 << i)
    full = (1 << len(x)) - 1
    cols = [full]
    for w in y:
        v = cols[-1]
        u = v & match.get(w, 0)
        cols.append(((v + u) | (v - u)) & full)
    return cols


def _lcs_length(x: list, y: list) -> int:
    """T[len(x)][len(y)] of _lcs_table."""
    return len(x) - _lcs_columns(x, y)[-1].bit_count()


def _lcs_words(x: list, y: list) -> list:
    """One LCS of x and y read back from the end of the table; on a tie the step goes to
    (i, j-1) unless T[i-1][j] > T[i][j-1] (the `rouge` package's choice, which matters because
    that package keeps the LCS as a SET of words). T from _lcs_columns: the same table."""
    cols, low = _lcs_columns(x, y), [(1 << i) - 1 for i in range(len(x) + 1)]
    i, j, out = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            out.append(x[i - 1])
            i, j = i - 1, j - 1
        elif i - 1 - (cols[j] & low[i - 1]).bit_count() > i - (cols[j - 1] & low[i]).bit_count():
            i -= 1   # T[i-1][j] > T[i][j-1]
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

    convention="rouge" (the `rouge` package, authors' protocol, docs/paper-vs-authors.md s.3):
      tokens from _rouge_pkg_sentences flattened across sentences; n-grams as SETS (each
      distinct n-gram once):
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
        ch = ngram_counts(rouge_score_tokens(prediction), n)
        cr = ngram_counts(rouge_score_tokens(reference), n)
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
            vocab = set(rsent)
            for hsent in hs:
                # a word absent from rsent is in no LCS, and the read-back steps over it (its
                # column repeats the one before): dropping it changes nothing, and saves the
                # time of long junk predictions
                h = [w for w in hsent if w in vocab]
                if h:
                    union.update(_lcs_words(rsent, h))
        m = len({w for s in rs for w in s})
        n = len({w for s in hs for w in s})
        r, p = len(union) / m, len(union) / n
        return {"p": p, "r": r, "f": _f_pkg(p, r)}
    if convention == "rouge_score":
        th, tr = rouge_score_tokens(prediction), rouge_score_tokens(reference)
        if not th or not tr:
            return {"p": 0.0, "r": 0.0, "f": 0.0}
        vocab = set(tr)
        lcs = _lcs_length(tr, [w for w in th if w in vocab])  # same LCS (see the rouge branch)
        p, r = lcs / len(th), lcs / len(tr)
        return {"p": p, "r": r, "f": _f_score(p, r)}
    raise ValueError(f"unknown ROUGE convention {convention!r} (use 'rouge' or 'rouge_score')")


# ================================================================================================
# 6. Reasoning-text metrics per video and their means
# ================================================================================================

# A prediction is scored on its first MAX_SCORED_CHARS characters (tags stripped; counted as
# reasoning.n_truncated; docs/eval.md). ROUGE-L's LCS costs len(prediction) x len(reference), so a
# runaway output of megabytes (untrusted input) would take minutes per video; 20,000 characters is
# several times the longest reference (~3,500) and a 512-token output (~2,500).
MAX_SCORED_CHARS = 20_000


def reasoning_texts(output: str | None, gt_row: dict) -> tuple[str, str]:
    """(prediction text, reference text), docs/paper-vs-authors.md s.3: reference = think +
    answer with all tags removed and newlines dropped; prediction = the whole output with tags
    removed, cut to its first MAX_SCORED_CHARS characters."""
    ref = strip_tags(str(gt_row.get("think") or "") + " " + str(gt_row.get("answer") or ""))
    return strip_tags(output)[:MAX_SCORED_CHARS], ref


def reasoning_scores_authors(output: str | None, gt_row: dict) -> dict | None:
    """One video's scores in the authors' protocol (docs/paper-vs-authors.md s.3); None = skipped.

    Empty output (empty / whitespace only) -> skipped (None). Tag-stripped text shorter than 5
    characters -> every score 0 (flag short=True). Otherwise, on lowercased texts:
      bleu2  = bleu(ref_tokens, hyp_tokens, weights=(0, 1, 0, 0))        (BP x bigram precision)
      meteor = meteor(ref_tokens, hyp_tokens)                            (no WordNet stage)
      rouge1/rouge2/rouge_l = F of the `rouge` package convention on the lowercased strings."""
    if output is None or not str(output).strip():
        return None
    pred, ref = reasoning_texts(output, gt_row)
    if len(pred) < 5:
        return {"bleu2": 0.0, "meteor": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rouge_l": 0.0,
                "short": True}
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


def reasoning_metrics(outputs: list[str | None], gt_rows: list[dict]) -> dict:
    """Means over videos of reasoning_scores_authors (-> "reasoning") and
    reasoning_scores_common (-> "reasoning_common"). GT rows with neither think nor answer are
    left out of both. An output None is a video WITHOUT a prediction: it scores 0 in both
    (counted as reasoning.n_missing), unlike an empty output, which the authors skip."""
    auth, comm, n_skip, n_short, n_miss, n_trunc = [], [], 0, 0, 0, 0
    zeros = dict.fromkeys(("bleu2", "meteor", "rouge1", "rouge2", "rouge_l"), 0.0)
    for out, row in zip(outputs, gt_rows):
        if not (row.get("think") or row.get("answer")):
            continue
        if out is None:
            n_miss += 1
            auth.append(zeros)
            comm.append(zeros)
            continue
        n_trunc += len(strip_tags(out)) > MAX_SCORED_CHARS
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
    reasoning.update(n=len(auth), n_skipped_empty=n_skip, n_short=n_short, n_missing=n_miss,
                     n_truncated=n_trunc)
    common = {k: _mean([s[k] for s in comm]) for k in keys_c}
    common["n"] = len(comm)
    return {"reasoning": reasoning, "reasoning_common": common}

