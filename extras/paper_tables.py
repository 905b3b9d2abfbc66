"""extras/paper_tables.py -- the paper's published numbers, copied as printed, and the tables that
print ours beside them (eval.py --score's printout: format_report, format_table).

Paper: Table 2 (reasoning and detection on the Vad-Reasoning test set), Table 3 (VANE
per-category accuracy, %) and Table 4 (training strategies on Qwen2.5-VL-7B). `--with-paper`
prints these rows beside ours:
    python eval.py --score preds.jsonl --gt test.jsonl --with-paper
    python eval.py --mc vane_preds.jsonl --with-paper
Each table's numbers are copied as printed, even where the paper disagrees with itself
(docs/eval.md: Vad-R1's ROUGE-2 is 0.194 in Table 2 and 0.238 in Table 4).
"""
from __future__ import annotations

from extras import scoring
from extras.metrics import fmt, get_metric

# Table 2, in TABLE2_COLUMNS order: BLEU-2, METEOR, ROUGE-2, Acc, F1, mIoU, R@0.3, R@0.5.
TABLE2 = {
    "Qwen2.5-VL-7B (paper, Table 2)": [0.113, 0.264, 0.116, 0.761, 0.730, 0.567, 0.610, 0.563],
    "Vad-R1 (paper, Table 2)": [0.233, 0.406, 0.194, 0.875, 0.862, 0.713, 0.770, 0.706],
}

# Table 4, in TABLE4_COLUMNS order: BLEU-2, ROUGE-1, ROUGE-2, ROUGE-L, Prec., mIoU,
# R@0.3, R@0.5, R@0.7.
TABLE4 = {
    "Qwen2.5-VL (paper, Table 4)": [0.113, 0.505, 0.199, 0.477, 0.768, 0.567, 0.610, 0.563, 0.526],
    "+SFT (paper, Table 4)": [0.219, 0.456, 0.196, 0.429, 0.712, 0.612, 0.677, 0.599, 0.535],
    "+AVA-GRPO (paper, Table 4)": [0.143, 0.513, 0.207, 0.486, 0.810, 0.675, 0.736, 0.661, 0.606],
    "+SFT+AVA-GRPO (paper, Table 4)": [0.233, 0.530, 0.238, 0.501, 0.882, 0.713, 0.770, 0.706,
                                       0.651],
}

# Table 3: VANE per-category accuracy (%), the Vad-R1 row.
TABLE3_VAD_R1 = {"SORA": 41.30, "OpenSORA": 78.00, "RG2": 56.00, "VideoLCM": 63.46,
                 "MS-T2": 60.42, "Avenue": 75.76, "Ped1": 60.00, "Ped2": 63.89}

# Table 10, 16-frame rows, in extras.report.TABLE10_COLUMNS order: ROUGE-L, ROUGE-2, Precision,
# mIoU, R@0.3, R@0.5, R@0.7.
TABLE10 = {
    "GRPO (paper, Table 10)": [0.502, 0.475, 0.861, 0.712, 0.770, 0.699, 0.640],
    "GRPO+len_reward (paper, Table 10)": [0.529, 0.501, 0.856, 0.710, 0.770, 0.697, 0.642],
    "GRPO+ano_reward (paper, Table 10)": [0.496, 0.467, 0.866, 0.707, 0.765, 0.695, 0.638],
    "AVA-GRPO (paper, Table 10)": [0.530, 0.501, 0.882, 0.713, 0.770, 0.706, 0.651],
}


# ---- Our tables (paper Table 2 / Table 4 layouts), with the paper's published rows ------------

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


# The paper's published rows (above, as printed), keyed like our metrics.
_T2, _T4 = [k for _, k in TABLE2_COLUMNS], [k for _, k in TABLE4_COLUMNS]
PAPER_TABLE2 = {name: dict(zip(_T2, v)) for name, v in TABLE2.items()}
PAPER_TABLE4 = {name: dict(zip(_T4, v)) for name, v in TABLE4.items()}


def format_table(named_metrics: dict[str, dict], with_paper: bool = False,
                 layout: str = "table2") -> str:
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
        cells = [fmt(get_metric(met, key)) for _, key in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(metrics: dict, name: str = "ours", with_paper: bool = False) -> str:
    """The CLI's printout: Table 2 and Table 4 layouts, the common-convention figures, counts."""
    c = metrics["counts"]
    rc, da = metrics["reasoning_common"], metrics["detection_abnormal_only"]
    parts = [
        "Authors' protocol (docs/paper-vs-authors.md s.3), Table 2 layout:",
        format_table({name: metrics}, with_paper, "table2"),
        "", "Table 4 layout:", format_table({name: metrics}, with_paper, "table4"), "",
        f"Common conventions: cumulative BLEU-2 {fmt(rc['bleu2'])}, rouge-score R-1/R-2/R-L "
        f"{fmt(rc['rouge1'])}/{fmt(rc['rouge2'])}/{fmt(rc['rouge_l'])}; abnormal-only mIoU "
        f"{fmt(da['miou'])}, R@0.3/0.5/0.7 "
        f"{fmt(da['r@0.3'])}/{fmt(da['r@0.5'])}/{fmt(da['r@0.7'])} "
        f"(n={da['n']}); category acc {fmt(metrics['category']['accuracy'])}; "
        f"frame AUC {fmt(metrics['frame']['auc'])}, best F1 {fmt(metrics['frame']['best_f1'])}",
        "Counts: " + ", ".join(f"{k}={v}" for k, v in c.items()),
    ]
    return "\n".join(parts + scoring.warnings(metrics, fmt))
