"""extras/vanguard.py -- VANGUARD's pieces on vadr's code (the VANGUARD summary in the project's
sources; no code of it is public; docs/vanguard.md): stage 1, an anomaly classifier warmed up on
frozen features; stage 2, SFT whose target is the answer with the anomalous object's box inside
<where> (LoRA with --lora-rank); stage 3, P2C-CoT SFT with the box, continuing from stage 2; the
curriculum's table (make toy-vanguard); the box utilities eval.py's box scores share; and the
spatial verification reward of train_rl.py --spatial-verification.

Stage 1 (classifier warm-up). The whole VLM is frozen; a two-layer head reads, for each temporal
slot of the video (Qwen2.5-VL merges 2 frames into one slot, vadr.TEMPORAL_PATCH_SIZE), the mean
and the max of that slot's merged vision tokens, and predicts normal vs abnormal (logit 0) and,
on abnormal slots, the category (logits 1..). Why these features and not the decoder's hidden states at the
video tokens: they are one vision-tower pass per video (no language-model forward), they are
what the decoder receives, and a slot lines up with two sampled frames, so slot labels come
straight from the event interval and slot scores go straight back to frames. The features are
computed once per video under torch.no_grad, so no gradient can reach the VLM (tested).

Labels per slot (slot_labels): 1 when one of its sampled frames f has start <= f <= end, the
manifest's own frame numbers; the frame AUC is judged against metrics.frame_labels instead
(metrics.frames_inside on start/total and end/total rounded to 3 places, as every <when>), which can
differ from start..end by up to total_frames / 2000 frames at each edge. Per-frame scores: each
frame of the video takes the score of the slot of its nearest sampled frame.

Run it:
    python -m extras.vanguard stage1 --model toy-base \
        --data data/toy/Vad-Reasoning-SFT-train.jsonl \
        --video-root data/toy/videos --out runs/toy-vanguard/stage1
    python -m extras.vanguard scores --model toy-base --head runs/toy-vanguard/stage1 \
        --data data/toy/Vad-Reasoning-SFT-test.jsonl --video-root data/toy/videos \
        --out runs/toy-vanguard/frame_scores.jsonl     # prints frame ROC-AUC and best F1
    python -m extras.vanguard boxes --data data/toy/Vad-Reasoning-SFT-train.jsonl \
        --video-root data/toy/videos --out runs/toy-vanguard/boxes_train.jsonl   # and -test -> boxes_test
    python eval.py --score PREDS --gt TEST --boxes boxes_test.jsonl --frame-scores frame_scores.jsonl
    python -m extras.vanguard stage2 --boxes runs/toy-vanguard/boxes_train.jsonl \
        --model toy-base --data data/toy/Vad-Reasoning-SFT-train.jsonl --video-root \
        data/toy/videos --preset toy --lora-rank 16 --lora-train-embeddings \
        --out runs/toy-vanguard/stage2                 # any train_sft.py flags after --boxes
    # = python train_sft.py --boxes B --target grounding ... (--out required), which stage2 runs
    python -m extras.vanguard stage3 --boxes runs/toy-vanguard/boxes_train.jsonl \
        --model runs/toy-vanguard/stage2 ... --out runs/toy-vanguard/stage3   # [--target label]
    python -m extras.vanguard table --data data/toy/Vad-Reasoning-SFT-test.jsonl \
        --out runs/toy-vanguard                        # table.md from eval_<stem>.json
    make toy-vanguard                                  # all of it, with the baselines

Tests: tests/test_vanguard.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

import data
import grpo
import vadr
from extras import badvideos, checkpoint, flagcheck, lora, metrics, scoring

# ---- boxes: [x1, y1, x2, y2] normalised to 0-1, 3 decimals (the grounding stage's target) -------

_BOX = re.compile(r"\[\s*(" + r")\s*,\s*(".join([vadr._NUM] * 4) + r")\s*\]")  # vadr's number


def box_text(box) -> str:
    """A normalised box as the targets write it: '[0.125, 0.300, 0.406, 0.650]' (3 decimals)."""
    return "[" + ", ".join(f"{v:.3f}" for v in box) + "]"


def format_box(bbox_px, width: int, height: int) -> str:
    """Pixel box [x1, y1, x2, y2] (the toy world's `bbox`) -> '[0.125, 0.300, 0.406, 0.650]'."""
    x1, y1, x2, y2 = bbox_px
    return box_text((x1 / width, y1 / height, x2 / width, y2 / height))


def parse_box(text) -> tuple[float, float, float, float] | None:
    """The first four-number list in text, as written (validity is box_iou's to judge)."""
    m = _BOX.search(text) if isinstance(text, str) else None
    if not m:
        return None
    box = tuple(float(v) for v in m.groups())
    return box if all(math.isfinite(v) for v in box) else None


def valid_box(b) -> bool:
    """0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1: reversed, empty or out-of-range boxes are not."""
    return (b is not None and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
            and 0.0 <= b[0] < b[2] <= 1.0 and 0.0 <= b[1] < b[3] <= 1.0)


def box_iou(pred, gt) -> float:
    """Intersection over union of two normalised boxes; 0 when either is not valid_box."""
    if not (valid_box(pred) and valid_box(gt)):
        return 0.0
    iw = max(0.0, min(pred[2], gt[2]) - max(pred[0], gt[0]))
    ih = max(0.0, min(pred[3], gt[3]) - max(pred[1], gt[1]))
    inter = iw * ih
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area(pred) + area(gt) - inter)


class BoxFile(dict):
    """load_boxes' {(source, video): box}, knowing its file (for the messages of check_boxes_cover
    and box_metrics)."""
    path = "the box file"


def load_boxes(path: str) -> BoxFile:
    """A box JSONL (rows {source, video, box: [x1, y1, x2, y2] normalised}, as `boxes` writes it
    or a box detector would offline) -> {(source, video): box}. Every problem is one line naming
    the file (and line): missing, a folder, not UTF-8, a line that is not a JSON object
    (extras/scoring.read_jsonl), a row without source/video/box, a box that is not valid_box, and
    two different boxes for one video."""
    if not os.path.isfile(path):
        what = "is a folder, not a box file" if os.path.isdir(path) else "no such box file"
        raise vadr.InputError(f"{path}: {what} (python -m extras.vanguard boxes writes one from a "
                              "manifest's bbox fields)")
    rows, where = scoring.read_jsonl(path)
    out, first = BoxFile(), {}
    for r, at in zip(rows, where):
        b = r.get("box")
        if scoring.key_problem(r) or "source" not in r or not (
                isinstance(b, list) and len(b) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
            raise vadr.InputError(f"{at}: expected {{source, video, box: [x1, y1, x2, y2]}} with "
                                  f"4 numbers in the box, got {json.dumps(r)[:120]}")
        box, key = tuple(float(v) for v in b), scoring.key(r)
        if not valid_box(box):
            raise vadr.InputError(f"{at}: box {list(box)} is not inside [0, 1] with x1 < x2 and "
                                  "y1 < y2")
        if key in out and out[key] != box:
            raise vadr.InputError(f"{at}: a second box for {key[0]}/{key[1]}, unlike the one at "
                                  f"{first[key]}; keep one")
        out[key] = box
        first.setdefault(key, at)
    out.path = path
    return out


def check_boxes_cover(boxes: dict, rows: list[dict], manifest: str):
    """A box file with no box for an abnormal row of the manifest (data.read_manifest's rows)
    would train every target without its box: refuse it, naming both files."""
    keys = {(str(r["source"]), str(r["video"])) for r in rows if r.get("label") == "Abnormal"}
    if not any(k in keys for k in boxes):
        what = f"none of its {len(boxes)} boxes is" if boxes else "it holds no box, none is"
        raise vadr.InputError(f"{getattr(boxes, 'path', 'the box file')}: {what} for an abnormal "
                              f"video of {manifest}; pass the box file made from it (python -m "
                              f"extras.vanguard boxes --data {manifest})")


def box_metrics(outputs: list, gt_rows: list[dict], boxes: dict) -> dict:
    """Grounding over the abnormal GT videos that have a box: the box written in the output's
    <where> (parse_box) against it; a missing output or box scores IoU 0. -> dict(miou,
    acc@0.5 (share with IoU >= 0.5), n, n_no_box (outputs without a parseable box)). Boxes for
    no GT video at all are an InputError."""
    ious, no_box = [], 0
    for out, g in zip(outputs, gt_rows):
        gt_box = boxes.get(scoring.key(g))
        if gt_box is None:  # the box file holds the abnormal videos that have a box
            continue
        pred = parse_box(vadr.parse_completion(out)["where"]) if out is not None else None
        no_box += pred is None
        ious.append(box_iou(pred, gt_box))
    n = len(ious)
    if not n:  # a box file of another manifest (or an empty one): no figure, not a silent None
        raise vadr.InputError(f"{getattr(boxes, 'path', 'the box file')}: none of its {len(boxes)} "
                              "boxes is for a video of the ground truth; pass the box file made "
                              "from the --gt manifest (python -m extras.vanguard boxes --data GT)")
    return {"miou": float(np.mean(ious)), "n": n, "n_no_box": no_box,
            "acc@0.5": float(np.mean([i >= 0.5 for i in ious]))}


def head_frame_metrics(score_rows: list[dict], score_where: list[str], gt_rows: list[dict]) -> dict:
    """Frame ROC-AUC and best F1 of a head's per-frame scores (`scores`' JSONL rows and the
    "PATH:LINE" of each, which every error names), the UCF-Crime convention: per-frame 0/1 truth,
    all frames of all GT videos concatenated; a GT video without scores gets 0 on every frame
    (counted in n_missing); the truth, ROC-AUC and best F1 are eval.py's (extras/metrics.py)."""
    by_key = {}  # (source, video) -> (scores, "PATH:LINE")
    for r, w in zip(score_rows, score_where):
        why = scoring.key_problem(r) or (None if "frame_scores" in r else "no 'frame_scores'")
        if why:
            raise vadr.InputError(f"{w}: a row with {why} (python -m extras.vanguard scores "
                                  "writes {source, video, frame_scores})")
        k = scoring.key(r)
        if k in by_key and by_key[k][0] != r["frame_scores"]:
            raise vadr.InputError(f"{w}: frame scores of {k[0]}/{k[1]} differ from those at "
                                  f"{by_key[k][1]}; keep one")
        by_key.setdefault(k, (r["frame_scores"], w))
    ys, ss, missing = [], [], 0
    for g in gt_rows:
        y = metrics.frame_labels(g)
        if y is None:
            continue
        s, w = by_key.get(scoring.key(g), (None, None))
        missing += s is None
        try:
            s = np.zeros(len(y)) if s is None else np.asarray(s, dtype=np.float64)
        except (TypeError, ValueError):
            s = None
        if s is None or s.ndim != 1 or not np.isfinite(s).all():
            raise vadr.InputError(f"{w}: frame scores of {g['source']}/{g['video']}: expected a "
                                  "list of finite numbers (python -m extras.vanguard scores "
                                  "writes them)")
        if len(s) != len(y):
            raise vadr.InputError(f"{w}: frame scores of {g['source']}/{g['video']}: {len(s)} "
                                  f"values for {len(y)} frames")
        ys.append(y), ss.append(s)
    if not ys:
        return {"auc": None, "best_f1": None, "best_threshold": None, "n_videos": 0,
                "n_missing": missing}
    y, s = np.concatenate(ys), np.concatenate(ss)
    f1, thr = metrics.best_f1(y, s)
    return {"auc": metrics.frame_auc(y, s), "best_f1": f1, "best_threshold": thr, "n_videos": len(ys),
            "n_missing": missing}


def _check_output(cmd: str, args, is_dir: bool = False):
    """--out is written (scoring.check_output): it must not be one of the command's inputs
    (--data, --model, --head, --video-root; stage1's head files must not be one either), a file
    output must not be a directory, it must be writable, and an existing file is replaced only when
    it is one this command writes (rows with `box` / `frame_scores`)."""
    out, prog = args.out, f"python -m extras.vanguard {cmd}"
    inputs = {f: getattr(args, f[2:].replace("-", "_"), None)
              for f in ("--data", "--model", "--head", "--video-root")}
    scoring.check_output(prog, "--out", out, inputs, is_dir=is_dir)
    for name in HEAD_FILES if is_dir else ():  # stage1 writes these into the folder --out
        scoring.check_output(prog, "--out", os.path.join(out, name), inputs)
    field = {"boxes": "box", "scores": "frame_scores"}.get(cmd)
    if field and os.path.isfile(out) and os.path.getsize(out):
        try:
            ours = all(field in r for r in scoring.read_jsonl(out)[0])
        except vadr.InputError:
            ours = False
        if not ours:
            raise vadr.InputError(f"{prog}: --out {out} exists and is not a file of `{cmd}` (rows "
                                  f"with '{field}'), so it is not replaced; pass another --out")


def write_boxes(args) -> int:
    """The `boxes` command: a manifest's pixel `bbox` fields (the toy world's) -> a box JSONL,
    normalised by each video's frame size. A bbox outside its frame, or a manifest without one,
    is an error naming the manifest (and line); nothing is written then."""
    rows = data.read_manifest(args.data, "sft", video_root=args.video_root, skip_bad=args.skip_bad)
    lines = []  # every video is read before anything is written: a bad one leaves no half file
    for r in rows:
        if r.get("bbox") and r["label"] == "Abnormal":
            with badvideos.at_line(args.data, r):
                h, w = vadr.read_video(r["video_path"], 1)["frames"].shape[1:3]
            box = parse_box(format_box(r["bbox"], w, h))
            if not valid_box(box):
                raise vadr.InputError(f"{args.data}:{r['line']}: bbox {r['bbox']} is not inside "
                                      f"the video's {w} x {h} frame with x1 < x2 and y1 < y2")
            lines.append(json.dumps(dict(source=r["source"], video=r["video"], box=box)) + "\n")
    if not lines:
        raise vadr.InputError(f"{args.data}: no abnormal row carries a bbox (the toy world's SFT "
                              "manifests do); no box file written")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    checkpoint.atomic_write(args.out, "".join(lines))
    print(f"{args.out}: {len(lines)} boxes")
    return len(lines)


# ---- stage 2: box grounding, the SFT target with the box inside <where> --------------------------

# The three targets of the curriculum and its baselines. The prompt stays the P2C-CoT prompt, so
# eval.py and train_rl.py ask the question the model was trained on; the box is taught by the
# target alone. An SFT'd model writes what its targets wrote.
#   cot:       think + "\n" + answer with the box (stage 3; the monolithic baseline)
#   grounding: the answer with the box, no think (stage 2: classification and grounding)
#   label:     '<answer>Category: <which>X</which>.</answer>' (the classification-only baseline)
TARGETS = ("cot", "grounding", "label")


def with_box(answer: str, box) -> str:
    """The answer with ' [x1, y1, x2, y2]' (box_text) before its first </where>."""
    i = answer.find("</where>")
    return answer if i < 0 else answer[:i].rstrip() + " " + box_text(box) + answer[i:]


def label_answer(row: dict) -> str:
    """The classification-only target: the answer's category and nothing else."""
    which = vadr.parse_completion(row["answer"])["which"] or row["anomaly_type"]
    return f"<answer>Category: <which>{which}</which>.</answer>"


class BoxSFTDataset(data.SFTDataset):
    """SFT items whose target (TARGETS) writes the box of an abnormal video (boxes: load_boxes)
    inside <where>, beside the place phrase; rows without a box keep today's answer."""

    def __init__(self, rows: list[dict], boxes: dict, prompt_variant: str = "fine",
                 target: str = "cot", **video):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        super().__init__(rows, prompt_variant, **video)
        self.boxes, self.kind = boxes, target

    def target(self, row: dict) -> str:
        if self.kind == "label":
            return label_answer(row)
        box = self.boxes.get((str(row["source"]), str(row["video"])))
        abnormal = box and row["label"] == "Abnormal"
        answer = with_box(row["answer"], box) if abnormal else row["answer"]
        return answer if self.kind == "grounding" else row["think"] + "\n" + answer


def sft_boxes(args, rows: list[dict]) -> dict | None:
    """train_sft.py --boxes: the box file (load_boxes), refused unless it holds a box for an
    abnormal row of the manifest; args.target defaults to cot. None without --boxes."""
    if args.boxes is None:
        if args.target is not None:
            raise vadr.InputError(f"train_sft.py: --target {args.target} needs --boxes "
                                  "BOXES.jsonl (python -m extras.vanguard boxes writes one)")
        return None
    boxes = load_boxes(args.boxes)
    check_boxes_cover(boxes, rows, args.data)
    args.target = args.target or "cot"
    return boxes


TRAIN_SFT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "train_sft.py")


def train_stage(argv: list[str], boxes_path: str, target: str, stage: str):
    """train_sft.py --boxes BOXES --target TARGET with the other flags (--model, --data,
    --lora-rank, --out, ...), run as its own process (extras never import an entry script);
    then <out>/vanguard_config.json records the stage, its target and the box file."""
    outs = [a.partition("=")[2] for a in argv if a.startswith("--out=")] + \
        [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"]
    if not outs:
        raise vadr.InputError(f"{stage} needs --out RUN_DIR (the stage's run directory)")
    rc = subprocess.call([sys.executable, TRAIN_SFT, *argv, "--boxes", boxes_path,
                          "--target", target])
    if rc:
        raise SystemExit(rc)  # train_sft.py printed why
    if int(os.environ.get("RANK", "0")) == 0 and os.path.isdir(outs[-1]):  # the group is gone
        with open(os.path.join(outs[-1], "vanguard_config.json"), "w") as f:
            json.dump(dict(stage=stage, target=target, boxes=boxes_path), f, indent=1)


# ---- beyond both papers: spatial verification (Algorithm 1 for *where*) ---------------------
# Algorithm 1 checks *when* by cutting the predicted interval out and asking again. The spatial
# check blanks the predicted box over the predicted interval instead: if the video then reads as
# Normal, the evidence was in that box (+0.5, Algorithm 1's value for Abnormal -> Normal); if it
# still reads Abnormal, the box did not hold what made the answer abnormal (0). Only an Abnormal
# completion with a valid <when> and a valid box gets the pass. The blank is CLIP's mean colour,
# which the processor normalises to about 0: no signal, rather than a black patch that is one.
# Algorithm 1's own skip (rewards.py, decision 3: a trim that cuts nothing useful gets no second
# pass) holds here too: when the blanking changes no pixel of the sampled frames (the <when>
# holds no sampled frame, the box covers no pixel, or it is already the blank colour), the video
# is the one already answered, so there is no second pass and no spatial reward (0, as without a
# trim), else a Normal answer would be paid for evidence never removed. Logged per step as
# spatial_passes and spatial_skipped (docs/log-keys.md).

BLANK_RGB = tuple(round(255 * m) for m in vadr.CLIP_MEAN)  # (124, 117, 104)


def spatial_trim(completion: str) -> tuple[tuple[float, float], tuple] | None:
    """-> ((s, e), box) to blank, or None (no spatial pass): an Abnormal <which>, a <when> with
    0 <= s < e <= 1 and a valid box in <where>."""
    p = vadr.parse_completion(completion)
    when, box = p["when"], parse_box(p["where"])
    if p["label"] != "Abnormal" or when is None or not (0.0 <= when[0] < when[1] <= 1.0):
        return None
    return (when, box) if valid_box(box) else None


def blank_box(frames: np.ndarray, indices, total_frames: int, when, box) -> np.ndarray:
    """A copy of the sampled frames (n, H, W, 3) with the box (normalised, outward to whole
    pixels) set to BLANK_RGB on exactly the frames inside the interval: frame index i with
    s*total <= i < e*total, the same window rule as vadr.kept_frames."""
    out = np.array(frames, copy=True)
    H, W = out.shape[1:3]
    x1, y1 = math.floor(box[0] * W), math.floor(box[1] * H)
    x2, y2 = math.ceil(box[2] * W), math.ceil(box[3] * H)
    lo, hi = math.ceil(when[0] * total_frames - 1e-9), math.ceil(when[1] * total_frames - 1e-9)
    inside = [k for k, i in enumerate(indices) if lo <= i < hi]
    out[np.ix_(inside, range(y1, y2), range(x1, x2))] = BLANK_RGB
    return out


def spatial_reward(first_completion: str, second_completion: str | None,
                   value: float = 0.5) -> float:
    """value if the blanked video's completion reads Normal where the first read Abnormal, else 0
    (no second pass: 0). value defaults to Algorithm 1's +0.5 (rewards.VERIFY_ABNORMAL_VALUE)."""
    if second_completion is None:
        return 0.0
    first = vadr.parse_completion(first_completion)["label"]
    second = vadr.parse_completion(second_completion)["label"]
    return value if first == "Abnormal" and second == "Normal" else 0.0


def add_spatial_rewards(parts: list[dict], model, tok, rows: list[dict], texts: list[str], args,
                        prompt: str, device, sample_kw: dict) -> list[dict]:
    """train_rl.py --spatial-verification: for each of the B*G completions with a spatial_trim,
    the video re-read, the box blanked over the interval, one new completion sampled (one batch);
    parts[i]["spatial"] = spatial_reward(...) is added to parts[i]["total"]. A blanking that
    changes no pixel is skipped (no pass, reward 0). -> {"spatial_passes": completions given the
    pass, "spatial_skipped": completions with a spatial_trim whose blanking changed nothing}."""
    G, vids, which, decoded, skipped = args.num_generations, [], [], {}, 0
    for i, c in enumerate(texts):
        trim = spatial_trim(c)
        if trim is None:
            continue
        path = rows[i // G]["video_path"]  # a video's G completions share one decode
        if path not in decoded:
            decoded[path] = vadr.read_video(path, args.frames, rule=args.frame_rule)
        v = decoded[path]
        frames = blank_box(v["frames"], v["indices"], v["total_frames"], *trim)
        if np.array_equal(frames, v["frames"]):  # nothing blanked: Algorithm 1's own skip (above)
            skipped += 1
            continue
        vids.append(vadr.encode_frames(frames, v["sampled_fps"], args.min_pixels, args.max_pixels,
                                       args.grid_time))
        which.append(i)
    seconds = [None] * len(texts)
    if vids:
        vv = vadr.collate_videos(vids)
        batch = {**vadr.build_chat_inputs(tok, [prompt] * len(vids), vv["video_grid_thw"]), **vv}
        out = grpo.sample_group(model, vadr.to_device(batch, device), num_samples=1,
                                **sample_kw)
        for i, s in zip(which, grpo.decode_completions(tok, out["completion_ids"],
                                                       out["completion_mask"])):
            seconds[i] = s
    for i, p in enumerate(parts):
        p["spatial"] = spatial_reward(texts[i], seconds[i], args.spatial_value)
        p["total"] += p["spatial"]
    return {"spatial_passes": len(which), "spatial_skipped": skipped}


# ---- stage 1: slot features, labels, the head ----------------------------------------------------

def slot_features(model, batch: dict) -> list[torch.Tensor]:
    """Mean and max of the merged vision tokens per temporal slot, per video -> [ (t_i, 2D) ],
    no gradient.
    The tower returns each video's merged tokens in (t, h/2, w/2) order (tests/golden layout)."""
    visual = vadr.unwrap(model).model.visual
    grid = batch["video_grid_thw"]                                                 # (B, 3)
    with torch.no_grad():
        out = visual(batch["pixel_values_videos"], grid_thw=grid)
        tokens = out.pooler_output if hasattr(out, "pooler_output") else out       # (sum, D)
    m2 = visual.spatial_merge_size ** 2
    per_video = torch.split(tokens, (grid.prod(-1) // m2).tolist())                # B x (n_i, D)
    slots = [v.reshape(int(g[0]), -1, v.shape[-1]).float() for v, g in zip(per_video, grid)]
    # mean and max over the slot's tokens: the mean sees the scene, the max a small local event
    return [torch.cat([x.mean(1), x.amax(1)], -1) for x in slots]                # (t_i, 2D)


def slot_labels(row: dict, indices) -> np.ndarray:
    """(t,) 0/1: slot j holds sampled frames indices[2j], indices[2j+1] (the last one repeated
    when odd, as the processor pads); 1 if one of them is in start..end of an abnormal row."""
    idx = np.asarray(indices)
    if len(idx) % vadr.TEMPORAL_PATCH_SIZE:
        idx = np.concatenate([idx, idx[-1:]])
    pairs = idx.reshape(-1, vadr.TEMPORAL_PATCH_SIZE)                              # (t, 2)
    if row.get("label") != "Abnormal" or row.get("start") is None:
        return np.zeros(len(pairs), dtype=np.int64)
    inside = (pairs >= row["start"]) & (pairs <= row["end"])
    return inside.any(1).astype(np.int64)


def frame_scores(slot_scores, indices, total_frames: int) -> np.ndarray:
    """(total,) per-frame scores: frame f takes the score of the slot of its nearest sampled
    frame (ties: the earlier one)."""
    idx = np.asarray(indices, dtype=np.float64)                                    # (n,)
    f = np.arange(int(total_frames), dtype=np.float64)[:, None]                    # (total, 1)
    nearest = np.abs(f - idx[None]).argmin(1)                                      # (total,)
    return np.asarray(slot_scores, dtype=np.float64)[nearest // vadr.TEMPORAL_PATCH_SIZE]


def make_head(dim: int, n_categories: int, hidden: int = 128, seed: int = 0) -> torch.nn.Module:
    """Two layers: logit 0 is abnormal vs normal, logits 1.. the category of an abnormal slot."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                               torch.nn.Linear(hidden, 1 + n_categories))


def head_loss(head, feats: torch.Tensor, labels: torch.Tensor, cats: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on every slot + cross-entropy of the category on abnormal slots with a
    known category (cats >= 0). feats (N, D), labels (N,) 0/1, cats (N,) category index or -1."""
    out = head(feats)                                                              # (N, 1+C)
    loss = F.binary_cross_entropy_with_logits(out[:, 0], labels.float())
    has = (labels == 1) & (cats >= 0)
    if out.shape[1] > 1 and bool(has.any()):
        loss = loss + F.cross_entropy(out[has, 1:], cats[has])
    return loss


# ---- the commands -------------------------------------------------------------------------------

def _features_of(model, rows: list[dict], args) -> list[dict]:
    """Each row's slot features, slot labels and sampled frame indices (one tower pass a video)."""
    items = []
    for row in rows:
        with badvideos.at_line(args.data, row):
            v = vadr.read_video(row["video_path"], args.frames)
        enc = vadr.encode_frames(v["frames"], v["sampled_fps"], args.min_pixels, args.max_pixels)
        (feat,) = slot_features(model, enc)
        items.append(dict(row=row, feat=feat, indices=v["indices"],
                          labels=torch.as_tensor(slot_labels(row, v["indices"]))))
    return items


def _load_backbone(path: str):
    model, _ = lora.load_merged(path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # stage 1: the whole VLM frozen
    return model


def train_stage1(args) -> dict:
    """Fit the head on the SFT rows' slot features; save head.pt and head_config.json."""
    model = _load_backbone(args.model)
    rows = data.read_manifest(args.data, "sft", video_root=args.video_root, skip_bad=args.skip_bad)
    items = _features_of(model, rows, args)
    cat_index = {c: i for i, c in enumerate(vadr.CATEGORIES)}
    feats = torch.cat([it["feat"] for it in items])                               # (N, D)
    labels = torch.cat([it["labels"] for it in items])                            # (N,)
    cats = torch.cat([torch.full((len(it["labels"]),), cat_index.get(it["row"]["anomaly_type"], -1))
                      for it in items])                                           # (N,)
    head = make_head(feats.shape[1], len(vadr.CATEGORIES), args.hidden, args.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    log = []
    for epoch in range(args.epochs):
        perm = torch.randperm(len(feats), generator=g)
        for i in range(0, len(perm), args.batch_size):
            b = perm[i:i + args.batch_size]
            loss = head_loss(head, feats[b], labels[b], cats[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            log.append(dict(epoch=epoch + 1, loss=float(head_loss(head, feats, labels, cats))))
    os.makedirs(args.out, exist_ok=True)
    torch.save(head.state_dict(), os.path.join(args.out, "head.pt"))
    cfg = dict(dim=int(feats.shape[1]), hidden=args.hidden, categories=list(vadr.CATEGORIES),
               frames=args.frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
               backbone=args.model, n_slots=int(len(feats)), positive_slots=int(labels.sum()),
               seed=args.seed, epochs=args.epochs, lr=args.lr, log=log)
    with open(os.path.join(args.out, "head_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    return cfg


HEAD_FILES = ("head.pt", "head_config.json")  # what stage1 writes into its --out


def load_head(head_dir: str) -> tuple[torch.nn.Module, dict]:
    """A stage1 --out directory -> (the head, its head_config.json); a missing, corrupt or foreign
    file is one line naming it."""
    what = "a stage-1 head's head_config.json (python -m extras.vanguard stage1 writes it)"
    path = os.path.join(head_dir, "head_config.json")
    cfg = scoring.read_json_object(path, what)
    missing = [k for k in ("dim", "hidden", "categories", "frames", "min_pixels", "max_pixels")
               if k not in cfg]
    if missing:
        raise vadr.InputError(f"{path}: no {', '.join(missing)}; expected {what}")
    weights = os.path.join(head_dir, "head.pt")
    try:
        head = make_head(cfg["dim"], len(cfg["categories"]), cfg["hidden"])
        head.load_state_dict(torch.load(weights, weights_only=True))
    except (OSError, RuntimeError, TypeError, ValueError, KeyError, EOFError,
            pickle.UnpicklingError) as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise vadr.InputError(f"{weights}: not the weights of the head {path} describes ({why}); "
                              "run python -m extras.vanguard stage1 again") from None
    return head.eval(), cfg


def score_frames(args) -> list[dict]:
    """Per-frame abnormal probabilities of every test row -> JSONL rows {source, video,
    frame_scores}; prints the frame ROC-AUC and best F1 (eval.py's UCF-Crime convention)."""
    head, cfg = load_head(args.head)
    for k in ("frames", "min_pixels", "max_pixels"):
        setattr(args, k, cfg[k])  # the settings the head was trained with
    model = _load_backbone(args.model)
    rows = data.read_manifest(args.data, "sft", video_root=args.video_root, skip_bad=args.skip_bad)
    out = []
    for it in _features_of(model, rows, args):
        if it["feat"].shape[-1] != cfg["dim"]:
            raise vadr.InputError(f"--head {args.head} reads {cfg['dim']}-wide features, --model "
                                  f"{args.model} gives {it['feat'].shape[-1]}: pass the backbone "
                                  f"it was trained on ({cfg.get('backbone')})")
        with torch.no_grad():
            p = torch.sigmoid(head(it["feat"])[:, 0]).numpy()                     # (t,)
        r = it["row"]
        out.append(dict(source=r["source"], video=r["video"],
                        frame_scores=[round(float(s), 6) for s in
                                      frame_scores(p, it["indices"], r["total_frames"])]))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    checkpoint.atomic_write(args.out, "".join(json.dumps(o) + "\n" for o in out))
    labels = [metrics.frame_labels(r) for r in rows]
    y = np.concatenate([lab for lab in labels])
    s = np.concatenate([np.asarray(o["frame_scores"]) for o in out])
    auc = metrics.frame_auc(y, s)
    f1, thr = metrics.best_f1(y, s)
    print(f"{args.out}: {len(out)} videos, {len(y)} frames; frame ROC-AUC {auc:.3f}, "
          f"best F1 {f1:.3f} at {thr:.3f}")
    return out


# ---- the curriculum's table (make toy-vanguard) --------------------------------------------------

# (stem of eval_<stem>.json / preds_<stem>.jsonl, row): the staged run, its stage-2 checkpoint
# alone, the two baselines, and RL (make toy-vanguard-spatial; the row names the run it started
# from, its run_config's --model); the stage-1 head's frame scores go with the staged SFT rows.
VANGUARD_ROWS = [("stage3", "staged: head -> grounding -> CoT"),
                 ("stage2", "after stage 2 (grounding, no CoT)"),
                 ("mono", "monolithic: CoT + boxes from the start"),
                 ("cls", "classification-only"),
                 ("rl", "{} + AVA-GRPO"),
                 ("rl_spatial", "{} + AVA-GRPO + spatial verification")]
VANGUARD_COLUMNS = [("frame AUC (head)", "frame_head.auc"), ("frame AUC (<when>)", "frame.auc"),
                    ("video F1", "detection.f1"), ("box mIoU", "box.miou"),
                    ("box acc@0.5", "box.acc@0.5"), ("format", "format.pass_rate")]


def vanguard_table(run_dir: str, gt_path: str, seeds: list[int] | None = None) -> str:
    """RUN_DIR/table.md: one row per model of VANGUARD_ROWS and seed (RUN_DIR/seed<N>/eval_<stem>.json;
    without seeds, RUN_DIR/eval_<stem>.json), the columns above plus the share of predictions that
    are Abnormal (eval.py's authors' label rule) against the truth."""
    gt = scoring.read_jsonl(gt_path)[0]
    true_rate = float(np.mean([metrics.gt_label(g) == "Abnormal" for g in gt]))
    head = [h for h, _ in VANGUARD_COLUMNS] + ["predicted Abnormal (true %.3f)" % true_rate]
    dirs = [(str(s), os.path.join(run_dir, f"seed{s}")) for s in seeds] if seeds else [("-", run_dir)]
    lines = ["# VANGUARD's curriculum on the toy world", "",
             f"Test set: {gt_path} ({len(gt)} videos). The head's frame AUC is the stage-1 "
             "classifier on the frozen backbone (LoRA leaves the vision tower as it is).", "",
             "| model | seed | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(head)]
    for stem, name in VANGUARD_ROWS:
        for seed, d in dirs:
            path = os.path.join(d, f"eval_{stem}.json")
            if not os.path.isfile(path):
                continue
            m = scoring.read_json_object(path, "eval.py's metrics JSON (--json)")
            preds = scoring.read_jsonl(os.path.join(d, f"preds_{stem}.jsonl"))[0]
            labels = [metrics.authors_label(vadr.parse_completion(r.get("output") or "")["which"])
                      for r in preds]
            rate = float(np.mean([lab == "Abnormal" for lab in labels])) if labels else None
            cells = [metrics.fmt(metrics.get_metric(m, k)) for _, k in VANGUARD_COLUMNS]
            if "{}" in name:  # RL: from which run (its run_config.json's --model)
                cfg = os.path.join(d, stem, "run_config.json")
                src = scoring.read_json_object(cfg, "train_rl.py's run_config.json").get("model", "?")
                row = name.format(os.path.basename(os.path.normpath(str(src))))
            else:
                row = name
            lines.append(f"| {row} | {seed} | " + " | ".join(cells + [metrics.fmt(rate)]) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(run_dir, "table.md"), "w") as f:
        f.write(text)
    return text


def _check_stage1_flags(args):
    """stage1's numbers by the training scripts' rules (extras/flagcheck.RULES: --frames,
    --min-pixels, --max-pixels, --epochs, --lr, --seed), NaN/inf anywhere, --batch-size and
    --hidden >= 1."""
    prog = "python -m extras.vanguard stage1"
    for dest, value in sorted(vars(args).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise vadr.InputError(f"{prog}: --{dest.replace('_', '-')} {value}: must be a finite "
                                  "number")
    for dest, ok, why in flagcheck.RULES:
        value = getattr(args, dest, None)
        if dest == "batch_size" or value is None or isinstance(value, bool) or ok(value, args):
            continue  # stage1's batch is slots, not videos: below
        raise vadr.InputError(f"{prog}: --{dest.replace('_', '-')} {value}: "
                              f"{why.format(**vars(args))}")
    for flag, value, what in (("--batch-size", args.batch_size, "slots per step"),
                              ("--hidden", args.hidden, "the head's hidden width")):
        if value < 1:
            raise vadr.InputError(f"{prog}: {flag} {value}: {what}: at least 1")


def _pop_flag(rest: list[str], flag: str, cmd: str) -> str | None:
    """Remove `flag VALUE` from rest and return VALUE (None when absent)."""
    if flag not in rest:
        return None
    i = rest.index(flag)
    if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
        raise vadr.InputError(f"{cmd}: {flag} needs a value")
    value = rest[i + 1]
    del rest[i:i + 2]
    return value


def _stage_flags(cmd: str, rest: list[str]) -> tuple[list[str], str, str, str]:
    """stage2 / stage3 argv -> (train_sft.py argv, boxes path, target, cmd). stage2 defaults to the
    grounding target, stage3 to the chain of thought; --target overrides (the baselines)."""
    rest = list(rest)
    boxes = _pop_flag(rest, "--boxes", cmd)
    if boxes is None:
        raise vadr.InputError(f"{cmd} needs --boxes BOXES.jsonl "
                              "(python -m extras.vanguard boxes writes one)")
    target = _pop_flag(rest, "--target", cmd) or {"stage2": "grounding", "stage3": "cot"}[cmd]
    if target not in TARGETS:
        raise vadr.InputError(f"{cmd}: --target must be one of {', '.join(TARGETS)}, "
                              f"got {target!r}")
    return rest, boxes, target, cmd


def main(argv=None):
    argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if argv[:1] in (["stage2"], ["stage3"]):  # --boxes and --target here, the rest to train_sft
        return train_stage(*_stage_flags(argv[0], argv[1:]))
    ap = argparse.ArgumentParser(description="VANGUARD stages 1-2 on vadr (the module docstring)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, what in (("stage1", "train the head on frozen features"),
                       ("scores", "per-frame scores of a test manifest with a trained head"),
                       ("boxes", "a manifest's pixel bbox fields -> a normalised box JSONL"),
                       ("table", "RUN/table.md from RUN/eval_<stem>.json (make toy-vanguard)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--model", required=name in ("stage1", "scores"),
                       help="the frozen backbone checkpoint directory")
        p.add_argument("--data", required=True, help="an SFT manifest (rows with start/end)")
        p.add_argument("--video-root", default=None, help="folder the videos resolve under")
        p.add_argument("--out", required=True,
                       help="stage1: the head's directory; scores, boxes: the JSONL to "
                       "write; table: the run directory holding eval_<stem>.json")
        p.add_argument("--skip-bad", action="store_true", help="skip and count bad rows")
    s1 = sub.choices["stage1"]
    s1.add_argument("--frames", type=int, default=16, help="frames per video (8 slots)")
    s1.add_argument("--min-pixels", type=int, default=vadr.DEFAULT_MIN_PIXELS, help="per frame")
    s1.add_argument("--max-pixels", type=int, default=vadr.DEFAULT_MAX_PIXELS, help="per frame")
    s1.add_argument("--epochs", type=int, default=60, help="passes over the cached slot features")
    s1.add_argument("--batch-size", type=int, default=64, help="slots per step")
    s1.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the head")
    s1.add_argument("--hidden", type=int, default=128, help="the head's hidden width")
    s1.add_argument("--seed", type=int, default=0, help="head init and slot order")
    sub.choices["scores"].add_argument("--head", required=True, help="a stage1 --out directory")
    sub.choices["table"].add_argument("--seeds", type=int, nargs="+", default=None,
                                      help="one row per seed, from RUN/seed<N>/ (make toy-vanguard)")
    args = ap.parse_args(argv)
    if args.cmd == "stage1":
        _check_stage1_flags(args)
        _check_output("stage1", args, is_dir=True)
        cfg = train_stage1(args)
        print(f"{args.out}: head on {cfg['n_slots']} slots ({cfg['positive_slots']} abnormal), "
              f"final loss {cfg['log'][-1]['loss']:.4f}")
    elif args.cmd == "boxes":
        _check_output("boxes", args)
        write_boxes(args)
    elif args.cmd == "table":
        if not os.path.isdir(args.out):
            raise vadr.InputError(f"table: {args.out} is not a directory (make toy-vanguard)")
        if os.path.realpath(os.path.join(args.out, "table.md")) == os.path.realpath(args.data):
            raise vadr.InputError(f"table: --data {args.data} is {args.out}/table.md, which the "
                                  "table would replace; pass the test manifest")
        print(vanguard_table(args.out, args.data, args.seeds))
    else:
        _check_output("scores", args)
        score_frames(args)


if __name__ == "__main__":
    vadr.run_main(main)
