"""extras/vane.py -- multiple-choice scoring on VANE (paper Table 3) and its table.

Paper: Table 3 reports per-category accuracy (%) on the VANE benchmark's 559
multiple-choice questions (choices A-D in the question text); a question counts only when the
predicted letter is exactly the answer letter (docs/paper-vs-authors.md s.3). Not needed to read
the method: it is a second benchmark scored from the model's completions.

JSONL format, one question per line:
  {"id": "sora_012", "category": "SORA", "question": "... A. ... B. ... C. ... D. ...",
   "answer": "B", "output": "<think>...</think><answer>B</answer>"}
"answer" is the correct letter (a longer string is read with the same extraction rule); "output"
is the model's completion. The GT may also come from a separate file of the same rows without
"output", matched by id.

Run through eval.py (run_mc_scoring reads the files and writes the JSON):
    python eval.py --mc vane_preds.jsonl [--gt vane_gt.jsonl] --json vane.json [--with-paper]
"""
from __future__ import annotations

import re
from collections import defaultdict

import vadr
from extras import paper_tables, scoring

PAPER_TABLE3_VAD_R1 = paper_tables.TABLE3_VAD_R1   # the paper's Vad-R1 row, % per category

_CHOICE_RE = re.compile(r"(?<![A-Za-z0-9])([A-D])(?![A-Za-z0-9])")


def extract_choice(text: str | None) -> str | None:
    """The predicted letter: the FIRST standalone capital A, B, C or D (not touching another
    letter or digit: "B", "(B)", "B.", "Answer: B" match; "Bus", "AD" do not) in the <answer>
    block when there is one, else in the output with any <think>...</think> removed.
    Caveat of this simple rule: the article "A" in "A man ..." is read as choice A."""
    if not isinstance(text, str) or not text:  # a missing or non-string output: no answer
        return None
    answer = vadr.parse_completion(text)["answer"]  # the first <answer> block, as training reads it
    scope = answer if answer is not None else re.sub(r"<think>.*?(</think>|$)", " ", text,
                                                     flags=re.DOTALL)
    c = _CHOICE_RE.search(scope)
    return c.group(1) if c else None


def score_multiple_choice(preds: list[dict], gts: list[dict] | None = None) -> dict:
    """Accuracy overall and per category (paper Table 3: per-category accuracy, in %). A question
    is correct only when the extracted letter equals the answer letter
    (docs/paper-vs-authors.md s.3). gts=None: the prediction rows carry category and answer
    themselves; otherwise GT rows are matched by str(id) and every GT question counts (no
    output -> wrong). JSON: accuracy, n, n_unanswered, n_missing_output, n_duplicate,
    per_category.{CATEGORY}.{accuracy, n}."""
    if gts is None:
        gts = preds
    out_by_id, n_dup = {}, 0
    for p in preds:  # a repeated id: counted once if its output is the same, else an error
        pid = str(p.get("id"))
        if pid in out_by_id and out_by_id[pid] != p.get("output"):
            raise vadr.InputError(f"prediction id {pid!r} appears twice with different outputs; "
                                  "keep one row per question")
        n_dup += pid in out_by_id
        out_by_id.setdefault(pid, p.get("output"))
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
    per_category = {c: {"accuracy": v[0] / v[1], "n": v[1]} for c, v in sorted(per.items())}
    return {"accuracy": sum(v[0] for v in per.values()) / n if n else None, "n": n,
            "n_unanswered": n_unans, "n_missing_output": n_missing, "n_duplicate": n_dup,
            "per_category": per_category}


def format_mc_table(named: dict[str, dict], with_paper: bool = False) -> str:
    """Table-3-style Markdown: per-category accuracy in %, one row per named MC result;
    with_paper=True puts the paper's categories first and appends its Vad-R1 row."""
    cats = sorted({c for r in named.values() for c in r.get("per_category", {})})
    if with_paper:
        cats = list(PAPER_TABLE3_VAD_R1) + [c for c in cats if c not in PAPER_TABLE3_VAD_R1]
    lines = ["| Method | " + " | ".join(cats) + " | All |", "|---|" + "---:|" * (len(cats) + 1)]
    for name, r in named.items():
        pc = r.get("per_category", {})
        cells = [f"{100 * pc[c]['accuracy']:.2f}" if c in pc else "-" for c in cats]
        allv = r.get("accuracy")
        all_cell = "-" if allv is None else f"{100 * allv:.2f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {all_cell} |")
    if with_paper:
        paper = [f"{PAPER_TABLE3_VAD_R1[c]:.2f}" if c in PAPER_TABLE3_VAD_R1 else "-" for c in cats]
        lines.append("| Vad-R1 (paper, Table 3) | " + " | ".join(paper) + " | - |")
    return "\n".join(lines)


def run_mc_scoring(pred_path: str, gt_path: str | None = None, json_path: str | None = None,
                   with_paper: bool = False, name: str = "ours") -> dict:
    """What `eval.py --mc` does: multiple-choice accuracy, printed, and the JSON if asked."""
    scoring.check_output("eval.py", "--json", json_path, {"--mc": pred_path, "--gt": gt_path})
    preds = scoring.read_jsonl(pred_path)[0]
    res = score_multiple_choice(preds, scoring.read_jsonl(gt_path)[0] if gt_path else None)
    if json_path:
        scoring.write_json(json_path, {"multiple_choice": res})
    print(format_mc_table({name: res}, with_paper))
    return res
