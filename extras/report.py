"""extras/report.py -- the toy pipeline's reports: table.md, training curves (SVG), frame strips,
PNG files, RL minus SFT (pooled over seeds) and the Table 10 ablation.

Not part of the method: what `python eval.py --report RUN_DIR` writes (write_report) and draws
beside its table, --pooled and --ablation-report (report_main), and the PNG writer behind
`python -m extras.toy preview`. No plotting or imaging library: SVG is text and a
PNG is written with zlib.

    python eval.py --report runs/toy [--data data/toy/Vad-Reasoning-SFT-test.jsonl \
        --video-root data/toy/videos]

reads runs/toy/eval_{base,sft,rl,rl_only}.json (write_report turns them into table.md),
sft/log.jsonl and rl/log.jsonl, and writes sft_curves.svg, rl_curves.svg (the paper's Figure 10:
total reward, its std, completion length, plus each reward's mean, KL and the zero-variance
groups) and strips/<video>.png (the 16 sampled frames with the ground-truth interval in green and
the predicted one in red under them). train_rl.py draws the same RL curves into OUT/curves.svg at
the end of its run (draw_rl_log). Every log key: docs/log-keys.md.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib

import numpy as np

import data
import vadr
from extras import paper_tables, scoring
from extras.metrics import fmt, get_metric

# (stem of eval_<stem>.json, row name): the stages of the toy pipeline, in Table 4's order.
REPORT_ROWS = [("base", "Toy Qwen2.5-VL (stage-0 captioner)"), ("rl_only", "+AVA-GRPO"),
               ("sft", "+SFT"), ("rl", "+SFT+AVA-GRPO")]


# ================================================================================================
# 1. PNG files and contact sheets
# ================================================================================================

def write_png(path: str, img):
    """img uint8 (H, W, 3) -> PNG, with zlib only (no imaging library needed)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))  # filter type 0 per scanline

    def chunk(tag, data):
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))  # 8-bit RGB
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw, 6)) +
                chunk(b"IEND", b""))


def contact_sheet(frames, indices, start=None, end=None, bbox=None, cols: int = 4, scale: int = 2):
    """The sampled frames in a grid (H*rows, W*cols, 3) uint8; frames inside [start, end) get a
    red border and the bbox outlined in yellow."""
    T, H, W, _ = frames.shape
    rows = math.ceil(len(indices) / cols)
    sheet = np.full((rows * (H + 4), cols * (W + 4), 3), 255, np.uint8)
    for k, i in enumerate(indices):
        f = frames[i].copy()
        inside = start is not None and start <= i < end
        if inside and bbox is not None:
            x1, y1, x2, y2 = bbox
            f[y1, x1:x2] = f[y2 - 1, x1:x2] = f[y1:y2, x1] = f[y1:y2, x2 - 1] = (255, 255, 0)
        r, c = divmod(k, cols)
        y0, x0 = r * (H + 4), c * (W + 4)
        sheet[y0:y0 + H + 4, x0:x0 + W + 4] = (220, 30, 30) if inside else (255, 255, 255)
        sheet[y0 + 2:y0 + 2 + H, x0 + 2:x0 + 2 + W] = f
    return sheet.repeat(scale, 0).repeat(scale, 1)


# ================================================================================================
# 2. Training curves (SVG small multiples)
# ================================================================================================

def svg_curves(path: str, panels: list[tuple], cols: int = 3, w: int = 320, h: int = 220,
               title: str | None = None, note: str | None = None, xlabel: str = "step"):
    """Small multiples: one line chart per (title, xs, ys, y-axis title) panel (a 3-tuple: no
    y-axis title), with the x-axis title `xlabel`, the lowest and highest value on the y axis, and
    the figure's `title` and `note` above the panels. A flat curve says its value ("constant 0")
    rather than spanning an invented range."""
    rows = max(1, math.ceil(len(panels) / cols))
    top = (22 if title else 0) + (18 if note else 0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * w}" height="{top + rows * h}" '
           f'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    if title:
        out.append(f'<text x="8" y="16" font-size="14" font-weight="bold">{_esc(title)}</text>')
    if note:
        out.append(f'<text x="8" y="{top - 5}" fill="#b03000">{_esc(note)}</text>')
    for k, panel in enumerate(panels):
        name, xs, ys = panel[:3]
        ylabel = panel[3] if len(panel) > 3 else None
        ox, oy = (k % cols) * w, top + (k // cols) * h
        L, R, T, B = ox + 62, ox + w - 12, oy + 22, oy + h - 34   # plot box
        out.append(f'<text x="{ox + w / 2}" y="{oy + 14}" text-anchor="middle" '
                   f'font-weight="bold">{_esc(name)}</text>')
        out.append(f'<rect x="{L}" y="{T}" width="{R - L}" height="{B - T}" fill="none" '
                   f'stroke="#999"/>')
        out.append(f'<text x="{(L + R) / 2}" y="{B + 28}" text-anchor="middle">{_esc(xlabel)}'
                   '</text>')
        if ylabel:
            out.append(f'<text transform="translate({ox + 12},{(T + B) / 2}) rotate(-90)" '
                       f'text-anchor="middle">{_esc(ylabel)}</text>')
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        if not pts:
            out.append(f'<text x="{(L + R) / 2}" y="{(T + B) / 2}" text-anchor="middle" '
                       'fill="#888">not logged</text>')
            continue
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        flat = y1 == y0
        x1 = x1 if x1 > x0 else x0 + 1
        ypix = (lambda y: (T + B) / 2) if flat else (lambda y: B - (y - y0) / (y1 - y0) * (B - T))
        poly = " ".join(f"{L + (x - x0) / (x1 - x0) * (R - L):.1f},{ypix(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{poly}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
        if flat:
            out.append(f'<text x="{L - 3}" y="{(T + B) / 2 + 4}" text-anchor="end">{y0:.4g}</text>')
            out.append(f'<text x="{(L + R) / 2}" y="{(T + B) / 2 - 6}" text-anchor="middle" '
                       f'fill="#555">constant {y0:.4g}</text>')
        else:
            out.append(f'<text x="{L - 3}" y="{T + 8}" text-anchor="end">{y1:.4g}</text>')
            out.append(f'<text x="{L - 3}" y="{B}" text-anchor="end">{y0:.4g}</text>')
        out.append(f'<text x="{L}" y="{B + 14}">{x0:g}</text><text x="{R}" y="{B + 14}" '
                   f'text-anchor="end">{x1:g}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _smooth(ys: list, k: int) -> list:
    """Trailing moving average over k steps (RL rewards are noisy at 2 videos per step); a step
    without the value (None) stays None."""
    return [None if ys[i] is None else
            float(np.mean([y for y in ys[max(0, i - k + 1):i + 1] if y is not None]))
            for i in range(len(ys))]


# The RL panels (title, log key, y-axis title): the paper's Figure 10 curves, then each reward of
# Table 7 (its values in the title), KL and the groups without signal (docs/log-keys.md).
_RL_PANELS = [("total reward R", "reward", "reward (sum of the four)"),
              ("reward std within a group", "reward_std", "reward"),
              ("completion length", "completion_length", "tokens"),
              ("accuracy reward (0 / 1)", "reward_accuracy", "mean reward"),
              ("format reward (0 / 1)", "reward_format", "mean reward"),
              ("verification reward (+0.5 / -0.2)", "reward_verification", "mean reward"),
              ("length reward (0 / 0.2)", "reward_length", "mean reward"),
              ("KL to the reference (k3)", "kl", "nats per token"),
              ("zero-variance groups", "zero_std_fraction", "fraction of groups")]

# Fewer logged steps than this: the figure says it is a smoke run (its curves show no learning).
SMOKE_STEPS = 20


def rl_curves(run_dir: str, recs: list[dict], name: str = "rl_curves.svg") -> list[str]:
    """RUN_DIR/<name> from the RL log records; returns the report's line on the reward."""
    n = max(1, len(recs) // 10)
    first = np.mean([r["reward"] for r in recs[:n]])
    last = np.mean([r["reward"] for r in recs[-n:]])
    lines = ["", f"RL: mean total reward over the first tenth of steps {first:.3f}, over the last "
             f"tenth {last:.3f} ({len(recs)} steps)."]
    xs = [r["step"] for r in recs]
    k = max(1, len(recs) // 20)
    avg = f", averaged over {k} steps" if k > 1 else ""
    panels = [(t, xs, _smooth([r.get(key) for r in recs], k), unit) for t, key, unit in _RL_PANELS]
    note = (f"A smoke run ({len(recs)} steps) checks the plumbing, not learning: flat curves are "
            "expected." if len(recs) < SMOKE_STEPS else None)
    svg_curves(os.path.join(run_dir, name), panels,
               title=f"AVA-GRPO training, {len(recs)} steps (a point: the step's mean over its "
                     f"completions{avg})", note=note, xlabel="optimizer step")
    return lines


def read_log(path: str) -> list[dict]:
    """A training run's log.jsonl -> its records; a line that is not a JSON object is one error
    naming the file and line (the record a killed run was writing, its last line, is dropped)."""
    recs = []
    for i, rec, problem, _, _, torn in data.read_jsonl(path, "log", max_chars=None,
                                                       bad_utf8="yield"):
        if problem or not isinstance(rec, dict):
            if torn:
                break
            raise vadr.InputError(f"{path}:{i}: not a log record (a JSON object); fix or delete "
                                  "the line")
        recs.append(rec)
    return recs


def draw_rl_log(out_dir: str) -> str | None:
    """train_rl.py's last act (rank 0): OUT/curves.svg from OUT/log.jsonl (the whole run, resumed
    parts included). Returns its path, or None when the log has no step."""
    recs = [r for r in read_log(os.path.join(out_dir, "log.jsonl")) if "reward" in r]
    if not recs:
        return None
    rl_curves(out_dir, recs, name="curves.svg")
    return os.path.join(out_dir, "curves.svg")


def sft_curves(run_dir: str, recs: list[dict]):
    """RUN_DIR/sft_curves.svg: loss, learning rate and gradient norm per step."""
    xs = [r["step"] for r in recs]
    svg_curves(os.path.join(run_dir, "sft_curves.svg"),
               [("SFT loss", xs, [r["loss"] for r in recs], "nats per target token"),
                ("learning rate", xs, [r["lr"] for r in recs], "learning rate"),
                ("gradient norm (before clipping)", xs, [r["grad_norm"] for r in recs], "L2 norm")],
               title=f"SFT training, {len(recs)} steps", xlabel="optimizer step")


# ================================================================================================
# 3. Frame strips: the sampled frames over the true and the predicted interval
# ================================================================================================

def frame_strip(frames, total: int, indices, gt: tuple | None, pred: tuple | None,
                scale: int = 1):
    """The sampled frames side by side over two timeline bars (fractions of the video):
    ground truth in green, prediction in red; a normal video / prediction leaves its bar grey."""
    T, H, W, _ = frames.shape
    strip = np.concatenate([np.pad(f, ((0, 0), (1, 1), (0, 0)), constant_values=255)
                            for f in frames], 1)
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


def write_strips(run_dir: str, preds_path: str, data_path: str, video_root: str | None,
                 read_jsonl, n_strips: int = 8) -> list[str]:
    """RUN_DIR/strips/<video>.png for the first n_strips/2 abnormal and then normal test videos
    that have a prediction; returns the report's line naming the folder."""
    os.makedirs(os.path.join(run_dir, "strips"), exist_ok=True)
    gt = data.read_manifest(data_path, "sft", video_root=video_root)
    preds = {(str(r.get("source")), str(r.get("video"))): r["output"]  # error rows: no strip
             for r in read_jsonl(preds_path)
             if isinstance(r.get("output"), str) and not r.get("error")}
    ab = [r for r in gt if r["label"] == "Abnormal"][: n_strips // 2]
    no = [r for r in gt if r["label"] == "Normal"][: n_strips - len(ab)]
    for r in ab + no:
        out = preds.get((str(r["source"]), str(r["video"])))
        if out is None:
            continue
        p = vadr.parse_completion(out)
        v = vadr.read_video(r["video_path"], 16)
        pred_iv = p["when"] if p["label"] == "Abnormal" else None
        img = frame_strip(v["frames"], v["total_frames"], v["indices"], r["when"], pred_iv)
        write_png(os.path.join(run_dir, "strips", f"{r['video']}.png"), img)
    return ["", f"Frame strips ({os.path.basename(preds_path)}): "
            f"{os.path.join(run_dir, 'strips')}/ (green = ground truth, red = predicted interval)."]


def draw_run(run_dir: str, data_path: str | None, video_root: str | None, read_jsonl,
             n_strips: int = 8) -> list[str]:
    """Everything `eval.py --report` draws: the RL and SFT curves from their logs, and frame
    strips of the latest stage's predictions (needs data_path). read_jsonl(path) -> rows
    (write_report's: scoring.read_jsonl's rows). Returns the lines for table.md."""
    lines = []
    # a file present but unreadable (a directory, corrupt JSON) is read_jsonl's error, not skipped
    rl_log = os.path.join(run_dir, "rl", "log.jsonl")
    if os.path.exists(rl_log):
        lines += rl_curves(run_dir, read_jsonl(rl_log))
    sft_log = os.path.join(run_dir, "sft", "log.jsonl")
    if os.path.exists(sft_log):
        sft_curves(run_dir, read_jsonl(sft_log))
    preds_path = next((os.path.join(run_dir, f"preds_{k}.jsonl") for k in ("rl", "sft", "base")
                       if os.path.exists(os.path.join(run_dir, f"preds_{k}.jsonl"))), None)
    if preds_path and data_path:
        lines += write_strips(run_dir, preds_path, data_path, video_root, read_jsonl, n_strips)
    return lines


def write_report(run_dir: str, data_path: str | None, video_root: str | None, detection_metrics,
                 n_strips: int = 8) -> str:
    """`eval.py --report RUN_DIR` (the Makefile's last step): RUN_DIR/table.md, one row per stage
    in Table 4's layout, a detection/format table, RL - SFT with bootstrap intervals (eval's
    detection_metrics, passed in: extras never import an entry script), curves and strips."""
    if not os.path.isdir(run_dir):
        raise vadr.InputError(f"--report {run_dir}: "
                              f"{'not a directory' if os.path.exists(run_dir) else 'not found'};"
                              f" pass the run directory holding eval_*.json (`make toy RUN="
                              f"{run_dir}` makes one)")
    table = os.path.join(run_dir, "table.md")
    if os.path.isdir(table):
        raise vadr.InputError(f"{table}: is a directory where --report writes its table; "
                              "remove it")
    named = {}
    for key, label in REPORT_ROWS:
        p = os.path.join(run_dir, f"eval_{key}.json")
        if os.path.exists(p):  # a directory or a corrupt file there: an error, not a missing row
            named[label] = scoring.read_json_object(p, "a metrics JSON (eval.py --json)")
    if not named:  # empty tables that exit 0 would look like a report
        raise vadr.InputError(f"--report {run_dir}: nothing to report (no eval_<stage>.json for a "
                              f"stage of {', '.join(k for k, _ in REPORT_ROWS)}); `make toy "
                              f"RUN={run_dir}` writes them, or eval.py --model M ... --json "
                              f"{os.path.join(run_dir, 'eval_sft.json')}")
    lines = ["# Toy Vad-R1: what each stage adds (layout of the paper's Table 4)", "",
             paper_tables.format_table(named, layout="table4"), "",
             "Detection and format (authors' protocol):", "",
             "| Model | Acc | F1 | mIoU | format pass rate | category acc |",
             "|---|---:|---:|---:|---:|---:|"]
    keys = ("detection.accuracy", "detection.f1", "detection.miou", "format.pass_rate",
            "category.accuracy")
    for name, m in named.items():
        lines.append(f"| {name} | " + " | ".join(fmt(get_metric(m, k)) for k in keys) + " |")
    lines += compare_lines(run_dir, data_path, detection_metrics)  # RL - SFT, bootstrap
    lines += draw_run(run_dir, data_path, video_root, lambda p: scoring.read_jsonl(p)[0],
                      n_strips)
    text = "\n".join(lines) + "\n"
    with open(table, "w") as f:
        f.write(text)
    return text


def report_main(args, detection_metrics) -> int:
    """What eval.py --report, --pooled and --ablation-report do (detection_metrics: eval's)."""
    if args.report:
        print(write_report(args.report, args.data, args.video_root, detection_metrics))
    elif args.pooled:
        if not args.data:
            raise vadr.InputError("--pooled needs --data, the test manifest the runs were scored on")
        res = pooled_compare(args.pooled, args.data, detection_metrics, *args.pooled_stages)
        print("\n".join(pooled_lines(res)))
        if args.json:
            scoring.write_json(args.json, res)
    else:
        print(ablation_report(args.ablation_report, lambda p: scoring.read_jsonl(p)[0], get_metric,
                              fmt, paper_tables.TABLE10 if args.with_paper else None))
    return 0


# ================================================================================================
# 4. The reward ablation of the paper's Table 10 (`make toy-ablation`)
# ================================================================================================

# (stem, row name, the reward switches of train_rl.py): the same SFT model, seed and steps.
ABLATION_ROWS = [("grpo", "GRPO (accuracy + format)",
                  "--no-verification-reward --no-length-reward"),
                 ("grpo_len", "GRPO + length", "--no-verification-reward"),
                 ("grpo_ano", "GRPO + verification", "--no-length-reward"),
                 ("ava_grpo", "AVA-GRPO (all four)", "")]
TABLE10_COLUMNS = [("ROUGE-L", "reasoning.rouge_l"), ("ROUGE-2", "reasoning.rouge2"),
                   ("Precision", "detection.precision"), ("mIoU", "detection.miou"),
                   ("R@0.3", "detection.r@0.3"), ("R@0.5", "detection.r@0.5"),
                   ("R@0.7", "detection.r@0.7")]
_REWARD_KEYS = ("reward", "reward_accuracy", "reward_format", "reward_verification",
                "reward_length", "zero_std_fraction")


def ablation_report(abl_dir: str, read_jsonl, get_metric, fmt,
                    paper_rows: dict | None = None) -> str:
    """ABL_DIR/table10.md: one row per ablation run that has ABL_DIR/eval_<stem>.json, in
    Table 10's columns (paper_rows: the paper's 16-frame rows, appended), then each run's
    rewards over the first and last tenth of its steps, and its curves (<stem>/rl_curves.svg,
    written here). read_jsonl, get_metric, fmt: passed in by eval.py."""
    if not os.path.isdir(abl_dir):
        raise vadr.InputError(f"--ablation-report {abl_dir}: not a directory; pass the folder "
                              "holding eval_<stem>.json")
    head = "| Strategy | " + " | ".join(h for h, _ in TABLE10_COLUMNS) + " |"
    lines = ["# Toy reward ablation (layout of the paper's Table 10)", "",
             "Each row trains RL from the same SFT model, seed and steps, with the reward switches "
             "shown (train_rl.py).", "", head, "|---|" + "---:|" * len(TABLE10_COLUMNS)]
    curves = ["", "Rewards per step, mean over the first / last tenth of the run:", "",
              "| Strategy | flags | " + " | ".join(_REWARD_KEYS) + " |",
              "|---|---|" + "---:|" * len(_REWARD_KEYS)]
    for stem, name, flags in ABLATION_ROWS:
        path = os.path.join(abl_dir, f"eval_{stem}.json")
        if not os.path.exists(path):
            continue
        m = scoring.read_json_object(path, "a metrics JSON (eval.py --json)")
        lines.append(f"| {name} | " + " | ".join(fmt(get_metric(m, k)) for _, k in TABLE10_COLUMNS)
                     + " |")
        log = os.path.join(abl_dir, stem, "log.jsonl")
        if os.path.exists(log):
            recs = read_jsonl(log)
            rl_curves(os.path.join(abl_dir, stem), recs)
            n = max(1, len(recs) // 10)
            cell = lambda k: (f"{np.mean([r.get(k, 0.0) for r in recs[:n]]):.3f} / "
                              f"{np.mean([r.get(k, 0.0) for r in recs[-n:]]):.3f}")
            curves.append(f"| {name} | `{flags or '(none)'}` | "
                          + " | ".join(cell(k) for k in _REWARD_KEYS) + " |")
    for name, row in (paper_rows or {}).items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in row) + " |")
    curves += ["", "Curves: <stem>/rl_curves.svg for each stem of "
               + ", ".join(s for s, _, _ in ABLATION_ROWS) + "."]
    text = "\n".join(lines + curves) + "\n"
    with open(os.path.join(abl_dir, "table10.md"), "w") as f:
        f.write(text)
    return text


# ================================================================================================
# 5. Does RL add to SFT? A paired bootstrap over the test videos (`eval.py --report`)
# ================================================================================================

def paired_bootstrap(a, b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap of mean(b) - mean(a) over paired per-video values (Efron and
    Tibshirani 1993, ch. 13): draw the N videos with replacement n_boot times, take each draw's
    mean difference, report the (1 - level)/2 and (1 + level)/2 quantiles as the interval. Pairing
    keeps each video's two scores together, so the interval reflects the test set's size only."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)  # (N,) per-video difference
    if d.size == 0:
        return {"diff": None, "lo": None, "hi": None, "n": 0, "n_boot": n_boot}
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))  # (n_boot, N)
    means = d[idx].mean(axis=1)  # (n_boot,) mean difference of each draw
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(d.size),
            "n_boot": n_boot}


def per_video(outputs: list, gt_rows: list[dict], detection_metrics) -> dict:
    """Each GT video's accuracy (0/1) and IoU under eval.py's detection rule, called on one video
    at a time so the rule exists once (detection_metrics: eval.py's, passed in). IoU is None where
    the GT row has no interval; an output None (no prediction) is wrong with IoU 0, as in eval."""
    one = [detection_metrics([o], [r]) for o, r in zip(outputs, gt_rows)]
    return {"accuracy": [m["accuracy"] for m in one], "iou": [m["miou"] for m in one]}


def compare_predictions(pred_a: str, pred_b: str, gt_path: str, detection_metrics,
                        n_boot: int = 10000, seed: int = 0) -> dict:
    """b - a in accuracy and mIoU over every GT video, each with its paired bootstrap interval.
    Rows are paired with the GT by extras/scoring.py's rule (unmatched GT videos count wrong)."""
    gt, gw = scoring.read_gt(gt_path)
    vals = []
    for path in (pred_a, pred_b):
        rows, where = scoring.read_jsonl(path)
        got = dict(scoring.pair_rows(rows, gt, where, gw)["matched"])
        vals.append(per_video([got.get(i) for i in range(len(gt))], gt, detection_metrics))
    a, b = vals
    both = [i for i, v in enumerate(a["iou"]) if v is not None]  # rows with a GT interval
    return {"accuracy": paired_bootstrap(a["accuracy"], b["accuracy"], n_boot, seed),
            "miou": paired_bootstrap([a["iou"][i] for i in both], [b["iou"][i] for i in both],
                                     n_boot, seed)}


def pooled_compare(run_dirs: list[str], gt_path: str, detection_metrics, a: str = "sft", b: str = "rl",
                   n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """b - a pooled over several runs of one world (seeds: RUN/preds_<a>.jsonl, RUN/preds_<b>.jsonl),
    with a paired bootstrap over the test videos: each draw takes N videos with replacement and
    every run's two predictions of each (the seeds stay paired with their video). Figures: accuracy,
    precision (Abnormal positive: TP / predicted Abnormal, over all runs) and mIoU (videos with an
    interval), each with b's and a's pooled value, the difference and its interval."""
    gt, gw = scoring.read_gt(gt_path)
    gold = np.array([str(r.get("anomaly_type", "")).strip().lower() != "normal" for r in gt])  # (N,) data.py's rule
    acc, iou, has = {a: [], b: []}, {a: [], b: []}, {a: [], b: []}
    for run in run_dirs:
        for stage in (a, b):
            rows, where = scoring.read_jsonl(os.path.join(run, f"preds_{stage}.jsonl"))
            got = dict(scoring.pair_rows(rows, gt, where, gw)["matched"])
            pv = per_video([got.get(i) for i in range(len(gt))], gt, detection_metrics)
            acc[stage].append(pv["accuracy"])
            iou[stage].append([np.nan if v is None else v for v in pv["iou"]])
            has[stage].append([i in got for i in range(len(gt))])  # no prediction: no label (eval's rule)
    A = {k: np.array(v, dtype=float) for k, v in acc.items()}                        # (R, N) 0/1
    I = {k: np.array(v, dtype=float) for k, v in iou.items()}                        # (R, N), nan: no interval
    pred = {k: np.where(A[k] == 1, gold[None], ~gold[None] & np.array(has[k])) for k in A}  # (R, N) predicted Abnormal

    def figures(idx):  # idx (M,) video indices -> {stage: (accuracy, precision, miou)}
        out = {}
        for k in (a, b):
            p, g = pred[k][:, idx], np.broadcast_to(gold[idx][None], pred[k][:, idx].shape)
            tp, pp = (p & g).sum(), p.sum()
            out[k] = (A[k][:, idx].mean(), tp / pp if pp else np.nan, np.nanmean(I[k][:, idx]))
        return out

    N = len(gt)
    full = figures(np.arange(N))
    rng = np.random.default_rng(seed)
    draws = np.array([[fb - fa for fa, fb in zip(f[a], f[b])]
                      for f in (figures(rng.integers(0, N, N)) for _ in range(n_boot))])  # (n_boot, 3)
    res = {}
    for j, name in enumerate(("accuracy", "precision", "miou")):
        lo, hi = np.nanquantile(draws[:, j], [(1 - level) / 2, (1 + level) / 2])
        res[name] = {a: float(full[a][j]), b: float(full[b][j]), "diff": float(full[b][j] - full[a][j]),
                     "lo": float(lo), "hi": float(hi)}
    return dict(res, runs=list(run_dirs), n_videos=N, n_boot=n_boot, a=a, b=b)


def pooled_lines(res: dict) -> list[str]:
    """pooled_compare's figures as a markdown table with its heading."""
    a, b = res["a"], res["b"]
    return [f"{b} minus {a}, pooled over {len(res['runs'])} runs x {res['n_videos']} test videos "
            f"(95% paired bootstrap over videos, {res['n_boot']:,} draws):", "",
            f"| | {a} | {b} | difference [95% interval] |", "|---|---:|---:|---:|"] + [
        f"| {k} | {res[k][a]:.3f} | {res[k][b]:.3f} | {res[k]['diff']:+.3f} [{res[k]['lo']:+.3f}, "
        f"{res[k]['hi']:+.3f}] |" for k in ("accuracy", "precision", "miou")]


def compare_lines(run_dir: str, data_path: str | None, detection_metrics,
                  a: str = "sft", b: str = "rl") -> list[str]:
    """table.md's lines below the stage tables: stage 0's caption check (stage0_lines), then
    RUN_DIR/preds_<b>.jsonl against preds_<a>.jsonl (both needed, and the test manifest), also
    written to RUN_DIR/compare_<b>_vs_<a>.json."""
    pa, pb = (os.path.join(run_dir, f"preds_{s}.jsonl") for s in (a, b))
    if not (data_path and os.path.exists(pa) and os.path.exists(pb)):
        return stage0_lines(run_dir)
    res = compare_predictions(pa, pb, data_path, detection_metrics)
    with open(os.path.join(run_dir, f"compare_{b}_vs_{a}.json"), "w") as f:
        json.dump(res, f, indent=2)
    cell = lambda r: ("n/a" if r["diff"] is None else
                      f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
    n = res["accuracy"]
    return stage0_lines(run_dir) + [
        "", f"{b} minus {a} over the {n['n']} test videos (95% paired bootstrap interval, "
            f"{n['n_boot']:,} draws; an interval above 0 means {b} is better beyond the "
            f"test set's noise):", "", "| | difference [95% interval] |", "|---|---:|",
        f"| accuracy | {cell(res['accuracy'])} |", f"| mIoU | {cell(res['miou'])} |"]


def stage0_lines(run_dir: str) -> list[str]:
    """table.md's line for RUN_DIR/caption_check.json (`python -m extras.toy caption-check`):
    how often the stage-0 captioner's caption opens with an event exactly when there is one."""
    p = os.path.join(run_dir, "caption_check.json")
    if not os.path.exists(p):
        return []
    c = scoring.read_json_object(p, "caption-check JSON (python -m extras.toy caption-check)")
    if not all(isinstance(c.get(k), (int, float)) for k in ("accuracy", "n", "tpr", "tnr")):
        raise vadr.InputError(f"{p}: lacks a number for accuracy, n, tpr or tnr; rerun "
                              "`python -m extras.toy caption-check` or remove it")
    return ["", f"Stage 0 sees the event (its greedy caption opens with an event exactly when the "
                f"video has one) in {c['accuracy']:.3f} of the {c['n']} test videos: events "
                f"captioned {c['tpr']:.3f}, quiet videos captioned quiet {c['tnr']:.3f} (the first "
                f"word of a caption; SFT on the frozen encoder can read more: docs/experiments.md)."]
