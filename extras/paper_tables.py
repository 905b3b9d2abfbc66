"""extras/paper_tables.py -- the paper's published numbers, copied as printed.

Paper: Table 2 (reasoning and detection on the Vad-Reasoning test set), Table 3 (VANE
per-category accuracy, %) and Table 4 (training strategies on Qwen2.5-VL-7B). `--with-paper`
prints these rows beside ours:
    python eval.py --score preds.jsonl --gt test.jsonl --with-paper
    python eval.py --mc vane_preds.jsonl --with-paper
Each table's numbers are copied as printed, even where the paper disagrees with itself
(docs/eval.md: Vad-R1's ROUGE-2 is 0.194 in Table 2 and 0.238 in Table 4).
"""

# Table 2, in eval.TABLE2_COLUMNS order: BLEU-2, METEOR, ROUGE-2, Acc, F1, mIoU, R@0.3, R@0.5.
TABLE2 = {
    "Qwen2.5-VL-7B (paper, Table 2)": [0.113, 0.264, 0.116, 0.761, 0.730, 0.567, 0.610, 0.563],
    "Vad-R1 (paper, Table 2)": [0.233, 0.406, 0.194, 0.875, 0.862, 0.713, 0.770, 0.706],
}

# Table 4, in eval.TABLE4_COLUMNS order: BLEU-2, ROUGE-1, ROUGE-2, ROUGE-L, Prec., mIoU,
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
