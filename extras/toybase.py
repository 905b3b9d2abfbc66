"""extras/toybase.py -- the toy base model's pretraining: the stand-in for what Qwen2.5-VL already
knows when Vad-R1 starts from it (captions, temporal grounding in absolute time, boxes).

Vad-R1 (Sec. 4.1) fine-tunes a pretrained Qwen2.5-VL that already sees, places events in time and
draws boxes. The toy model must start from such a model too, so this file pretrains one on a toy
world of its own (never the SFT, RL or test videos: a different seed, checked by a test), in two
stages (docs/toy-base.md has the recipe and the measured choices):

  A. tower: the vision encoder alone, densely supervised on every merged vision token: which event
     category covers it (from the renderer's exact window and box), plus its row and column index
     (without that auxiliary loss the tokens do not say where they are, and no box can be read).
  B. caption: the whole model (train_sft.py --task caption, tower frozen) writes one grounded
     caption per video: "Fire during [0.25, 0.6] at [0.125, 0.411, 0.536, 0.821]." or the quiet
     sentence. Category, window (the answer's <when> form) and box (3 decimals of the frame).

`make toy-base` runs all of it and writes the shipped directory toy-base/ (a Hugging Face model
directory with its model card); `make toy` starts from that directory. Commands:
    python -m extras.toybase world --out data/toy-pretrain          # the pretraining world
    python -m extras.toybase tower --data data/toy-pretrain --out runs/toy-base/tower
    python train_sft.py --task caption --preset toy --model runs/toy-base/tower \
        --data data/toy-pretrain/Toy-Pretrain.jsonl --out runs/toy-base/caption --freeze-vision
    python -m extras.toybase check --model toy-base                 # perception on the toy test split
Not part of the paper: a reader of the method can skip this file.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import time

import numpy as np
import torch
import torch.nn.functional as F

import data
import vadr
from extras import checkpoint, lora, scoring, toy, toymodel

PRETRAIN_SEED = 1_000_003  # the pretraining world's seed: its videos share nothing with data/toy (test)
PRETRAIN_CAPTIONS = "Toy-Pretrain.jsonl"  # caption-kind manifest of grounded captions (stage B)
PRETRAIN_DEFAULTS = dict(seed=PRETRAIN_SEED, n_sft=2400, n_test=0, n_rl=0, n_caption=0, frame_boxes=True)


# ---- grounded captions ----------------------------------------------------------------------------

def format_box(bbox, size) -> str:
    """bbox [x1, y1, x2, y2] in pixels (x2, y2 exclusive) of a (H, W) frame -> '[0.125, 0.411, ...]'
    as fractions of the frame with 3 decimals (VANGUARD's box form)."""
    H, W = size
    x1, y1, x2, y2 = bbox
    return "[" + ", ".join(f"{v:.3f}" for v in (x1 / W, y1 / H, x2 / W, y2 / H)) + "]"


def parse_box(text: str | None):
    """The first '[a, b, c, d]' after ' at ' in a grounded caption -> 4 floats, or None."""
    if not text or " at [" not in text:
        return None
    body = text.split(" at [", 1)[1].split("]", 1)[0]
    try:
        v = [float(x) for x in body.split(",")]
    except ValueError:
        return None
    return v if len(v) == 4 and all(math.isfinite(x) for x in v) else None


def grounded_caption(row: dict, size) -> str:
    """Stage B's target for one SFT-kind row of the pretraining world: what (the category name),
    when (toy.format_when, the answer's form) and where (format_box), or the quiet sentence."""
    if row["label"] != "Abnormal":
        return toy._CAPTION_QUIET
    when = toy.format_when(row["start"], row["end"], row["total_frames"])
    return f"{row['anomaly_type']} during {when} at {format_box(row['bbox'], size)}."


def parse_grounded(text: str) -> dict:
    """A grounded caption -> dict(category or None (quiet), when (s, e) or None, box or None)."""
    text = text.strip()
    if text.startswith(toy._CAPTION_QUIET) or " during " not in text:
        cat = None if text.startswith(toy._CAPTION_QUIET) else vadr.normalize_category(text.split(" during ")[0])
        return dict(category=cat, when=None, box=None)
    head, rest = text.split(" during ", 1)
    return dict(category=vadr.normalize_category(head.strip()),
                when=vadr.parse_when(rest.split(" at ")[0].strip().rstrip(".")), box=parse_box(text))


def write_pretrain_world(out: str, categories=None, n: int | None = None, workers=None, quiet=False,
                         frames=None) -> dict:
    """Render the pretraining world into `out` (toy.generate_toy_world's SFT split only, under its
    own seed) and write Toy-Pretrain.jsonl: the same rows with `caption` = grounded_caption."""
    kw = dict(toy.TOY_DEFAULTS, **PRETRAIN_DEFAULTS)
    if categories:
        kw["categories"] = tuple(categories)
    if n:
        kw["n_sft"] = int(n)
    if frames:
        kw["frames"] = tuple(frames)
    paths = toy.ensure_toy_world(out, workers=workers, quiet=quiet, **kw)
    rows = data.read_manifest(paths["sft_train"], "sft", check_videos=False)  # bbox passed through
    size = tuple(kw["size"])
    cap_path = os.path.join(out, PRETRAIN_CAPTIONS)
    with open(cap_path + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(dict(source=r["source"], video=r["video"], anomaly_type=r["anomaly_type"],
                                    path=r["path"], total_frames=r["total_frames"],
                                    caption=grounded_caption(r, size))) + "\n")
    os.replace(cap_path + ".tmp", cap_path)
    return dict(paths, captions=cap_path)


def pretrain_corpus(out: str) -> list[str]:
    """The base tokenizer's text: the pretraining world's P2C-CoT texts and grounded captions."""
    return toy.manifest_texts([toy.manifest_paths(out)["sft_train"]]) + \
        toy.row_texts(data.read_manifest(os.path.join(out, PRETRAIN_CAPTIONS), "caption", check_videos=False))


# ---- stage A: dense supervision of the vision tower ------------------------------------------------

def token_labels(row: dict, indices, grid_thw, frame_hw, min_cover: float = 0.5) -> torch.Tensor:
    """Per merged vision token, (t, row, col) raster order: row['_cls'] (1 + the category's index)
    where the event covers at least min_cover of the token's 28 x 28 cell in x and in y on one of
    the token's two frames, else 0 (background). The event's place on a frame is the renderer's
    exact box of that frame (row['frame_boxes']); rows without them use the union bbox over
    [start, end). -> (t * h/2 * w/2,) long."""
    t, h, w = (int(v) for v in grid_thw)                     # patches: (T/2, H/14, W/14)
    gh, gw = h // 2, w // 2                                  # merged grid
    lab = torch.zeros(t, gh, gw, dtype=torch.long)           # (t, gh, gw)
    if row["label"] != "Abnormal" or not row.get("bbox"):
        return lab.flatten()
    H0, W0 = frame_hw
    sy, sx = h * 14 / H0, w * 14 / W0                        # original -> resized pixels
    cell = 28
    fb = row.get("frame_boxes")
    idx = np.asarray(indices).reshape(t, 2)                  # (t, 2) frame indices per temporal patch
    for k in range(t):
        if fb is not None:
            boxes = [fb[str(int(i))] for i in idx[k] if str(int(i)) in fb]
        else:
            boxes = [row["bbox"]] if ((idx[k] >= row["start"]) & (idx[k] < row["end"])).any() else []
        for x1, y1, x2, y2 in boxes:
            x1, x2, y1, y2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy
            cx = torch.tensor([min(x2, (c + 1) * cell) - max(x1, c * cell) for c in range(gw)]) >= cell * min_cover
            cy = torch.tensor([min(y2, (r + 1) * cell) - max(y1, r * cell) for r in range(gh)]) >= cell * min_cover
            lab[k][cy[:, None] & cx[None, :]] = row["_cls"]
    return lab.flatten()                                     # (t * gh * gw,)


def train_tower(model, rows, categories, steps: int, batch: int = 8, lr: float = 2e-3, seed: int = 0,
                pos_weight: float = 0.3, min_cover: float = 0.5, log=print) -> dict:
    """Stage A: AdamW on the vision tower with three linear heads on each merged token: category
    (background + categories, event classes weighted x2), row and column index (weight pos_weight).
    Returns the last 50 steps' mean losses. The heads are thrown away afterwards."""
    visual = model.model.visual
    dim = visual.merger.mlp[-1].out_features
    cls = {c: i + 1 for i, c in enumerate(categories)}
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = torch.nn.ModuleDict(dict(cat=torch.nn.Linear(dim, len(categories) + 1),
                                         row=torch.nn.Linear(dim, 16), col=torch.nn.Linear(dim, 16)))
    params = list(visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) *
                                              (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    wts = torch.tensor([1.0] + [2.0] * len(categories))
    cache: dict[int, dict] = {}
    hist = []
    visual.train()
    t0 = time.time()
    for step in range(steps):
        pick = torch.randint(len(rows), (batch,), generator=g).tolist()
        vids, labs, rws, cols = [], [], [], []
        for i in pick:
            if i not in cache:  # decode each video once (uint8 frames + indices)
                v = vadr.read_video(rows[i]["video_path"], 16)
                cache[i] = dict(frames=v["frames"], indices=v["indices"], fps=v["sampled_fps"])
            v = cache[i]
            enc = vadr.encode_frames(v["frames"], v["fps"])
            thw = enc["video_grid_thw"][0]
            r = dict(rows[i], _cls=cls.get(rows[i]["anomaly_type"], 0))
            labs.append(token_labels(r, v["indices"], thw, v["frames"].shape[1:3], min_cover))
            t, h, w = (int(x) for x in thw)
            rr = torch.arange(h // 2).repeat_interleave(w // 2).repeat(t)          # (t*gh*gw,)
            cc = torch.arange(w // 2).repeat(h // 2).repeat(t)                      # (t*gh*gw,)
            rws.append(rr)
            cols.append(cc)
            vids.append(enc)
        pv = torch.cat([e["pixel_values_videos"] for e in vids])                   # (sum patches, C*2*14*14)
        thw = torch.cat([e["video_grid_thw"] for e in vids])                      # (B, 3)
        tokens = visual(pv, grid_thw=thw).pooler_output                           # (sum merged, dim)
        lab, rr, cc = torch.cat(labs), torch.cat(rws), torch.cat(cols)           # (sum merged,)
        l_cat = F.cross_entropy(heads["cat"](tokens), lab, weight=wts)
        l_pos = F.cross_entropy(heads["row"](tokens), rr) + F.cross_entropy(heads["col"](tokens), cc)
        loss = l_cat + pos_weight * l_pos
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        hist.append((l_cat.item(), l_pos.item()))
        if step % 50 == 0 or step == steps - 1:
            log(f"tower step {step}/{steps}: cat {l_cat.item():.4f} pos {l_pos.item():.4f} "
                f"[{time.time() - t0:.0f} s]")
    visual.eval()
    tail = hist[-50:]
    return dict(cat_loss=float(np.mean([a for a, _ in tail])), pos_loss=float(np.mean([b for _, b in tail])),
                seconds=time.time() - t0, heads=heads)


# ---- perception check ------------------------------------------------------------------------------

def iou_1d(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def iou_box(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda z: max(0.0, z[2] - z[0]) * max(0.0, z[3] - z[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def score_grounded(rows: list[dict], captions: list[str], size) -> dict:
    """Per category of the ground truth: named (abnormal: the caption names its category; Normal:
    the caption is quiet), and over abnormal videos the window's mIoU (against the <when> the SFT
    answer would hold) and the share whose box has IoU >= 0.5 (a missing one counts 0)."""
    H, W = size
    per, ious_t, ious_b = {}, {}, {}
    for r, c in zip(rows, captions, strict=True):
        p = parse_grounded(c)
        cat = r["anomaly_type"] if r["label"] == "Abnormal" else "Normal"
        per.setdefault(cat, []).append(p["category"] == (cat if cat != "Normal" else None))
        if cat == "Normal":
            continue
        gt_when = vadr.parse_when(toy.format_when(r["start"], r["end"], r["total_frames"]))
        ious_t.setdefault(cat, []).append(iou_1d(p["when"], gt_when) if p["when"] else 0.0)
        x1, y1, x2, y2 = r["bbox"]
        gt_box = (x1 / W, y1 / H, x2 / W, y2 / H)
        ious_b.setdefault(cat, []).append(iou_box(p["box"], gt_box) if p["box"] else 0.0)
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    allt = [x for v in ious_t.values() for x in v]
    allb = [x for v in ious_b.values() for x in v]
    return dict(n=len(rows), named={k: mean(v) for k, v in sorted(per.items())},
                when_miou={k: mean(v) for k, v in sorted(ious_t.items())},
                box_acc50={k: mean([x >= 0.5 for x in v]) for k, v in sorted(ious_b.items())},
                when_miou_all=mean(allt), box_acc50_all=mean([x >= 0.5 for x in allb]),
                box_miou_all=mean(allb))


# ---- the shipped directory -------------------------------------------------------------------------
SHIP_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SHIP_LIMIT_MB = 12  # the base travels with the repository


def write_corpus(path: str, texts: list[str]):
    """The tokenizer's training text, one JSON string a line, gzipped without a timestamp (so the
    same texts give the same bytes): shipped beside the tokenizer so a test can retrain it."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(json.dumps(t) + "\n" for t in texts).encode("utf-8"))


def read_corpus(path: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ship(caption_run: str, tower_dir: str, world: str, check: dict, out: str, card: dict):
    """Copy the caption run's final weights and tokenizer into `out` (a plain Hugging Face
    directory), with the tokenizer's corpus and a model card (README.md) built from `card`."""
    src = checkpoint.latest_checkpoint(caption_run) or caption_run
    os.makedirs(out, exist_ok=True)
    for name in SHIP_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    write_corpus(os.path.join(out, "tokenizer_corpus.jsonl.gz"), pretrain_corpus(world))
    json.dump(dict(card, perception=check), open(os.path.join(out, "recipe.json"), "w"), indent=1)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(card, check))
    mb = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)) / 2 ** 20
    if mb > SHIP_LIMIT_MB:
        raise vadr.InputError(f"{out}: {mb:.1f} MB, over the {SHIP_LIMIT_MB} MB the repository carries")
    return mb


def model_card(card: dict, check: dict) -> str:
    """The shipped base's README.md: what it is, the recipe, and its perception figures."""
    pct = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    cats = [c for c in check["named"] if c != "Normal"]
    lines = ["# toy-base: the toy Qwen2.5-VL that sees (vadr)", "",
             "A Qwen2.5-VL with the real architecture and tiny widths (extras/toymodel.py), pretrained on a toy "
             "world of its own to name, time and box the toy anomalies: the stand-in for the pretrained "
             "Qwen2.5-VL that Vad-R1 starts from. `make toy` starts from this directory; `make toy-base` "
             "rebuilds it (docs/toy-base.md).", "",
             "## Recipe", ""]
    lines += [f"- {k}: `{v}`" for k, v in card.items()]
    lines += ["", "## Perception on the toy test split (greedy grounded captions)", "",
              "| category | named (quiet for Normal) | window mIoU | box IoU >= 0.5 |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {c} | {pct(check['named'][c])} | {pct(check['when_miou'].get(c))} | {pct(check['box_acc50'].get(c))} |"
              for c in cats + ["Normal"]]
    lines += [f"| all abnormal | | {pct(check['when_miou_all'])} | {pct(check['box_acc50_all'])} |", ""]
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------------

_read = scoring.read_json_object  # a JSON object the recipe wrote, or one line naming the file


def main(argv=None):
    ap = argparse.ArgumentParser(description="The toy base model's pretraining (stand-in for Qwen2.5-VL's).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="render the pretraining world and its grounded captions")
    w.add_argument("--out", default="data/toy-pretrain", help="directory for the pretraining world")
    w.add_argument("--n", type=int, default=PRETRAIN_DEFAULTS["n_sft"], help="videos (half abnormal)")
    w.add_argument("--categories", nargs="+", default=None, help="event categories (default: the default world's)")
    w.add_argument("--frames", type=int, nargs=2, default=None, help="video length range (default: the toy world's)")
    w.add_argument("--workers", type=int, default=None, help="render processes")
    t = sub.add_parser("tower", help="stage A: a toy model whose vision tower is densely pretrained")
    t.add_argument("--data", default="data/toy-pretrain", help="the pretraining world (world's --out)")
    t.add_argument("--out", default="runs/toy-base/tower", help="model directory to write")
    t.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=8, help="videos per step")
    t.add_argument("--lr", type=float, default=2e-3, help="peak lr (cosine to 10%%, 5%% warm-up)")
    t.add_argument("--pos-weight", type=float, default=0.3, help="weight of the row/column auxiliary loss")
    t.add_argument("--min-cover", type=float, default=0.25,
                   help="a token is labelled with the event when the event's box on one of its frames covers this "
                        "share of the token's cell in x and in y")
    t.add_argument("--seed", type=int, default=0, help="init and batch order")
    c = sub.add_parser("check", help="a base's grounded captions on an SFT manifest, scored per category")
    c.add_argument("--model", default="toy-base", help="model directory")
    c.add_argument("--data", default="data/toy/Vad-Reasoning-SFT-test.jsonl", help="SFT-kind manifest")
    c.add_argument("--video-root", default=None, help="where the manifest's videos are")
    c.add_argument("--json", default=None, help="write the figures here")
    c.add_argument("--max-new-tokens", type=int, default=48, help="caption length cap")
    s = sub.add_parser("ship", help="write the shipped base directory with its model card")
    s.add_argument("--caption-run", default="runs/toy-base/caption", help="stage B's run directory")
    s.add_argument("--tower", default="runs/toy-base/tower", help="stage A's directory (tower.json)")
    s.add_argument("--world", default="data/toy-pretrain", help="the pretraining world")
    s.add_argument("--check", required=True, help="check's --json of the stage B model")
    s.add_argument("--seconds", type=float, default=None, help="wall-clock of the whole recipe, for the card")
    s.add_argument("--out", default="toy-base", help="the shipped directory")
    a = ap.parse_args(argv)
    if a.cmd == "world":
        p = write_pretrain_world(a.out, a.categories, a.n, a.workers, frames=a.frames)
        print(f"pretraining world: {p['captions']}")
    elif a.cmd == "tower":
        world = _read(os.path.join(a.data, "toy_world.json"), "a toy world's stamp")["params"]
        rows = data.read_manifest(toy.manifest_paths(a.data)["sft_train"], "sft")  # bbox, frame_boxes
        model, tok = toymodel.load_model("toy", corpus=pretrain_corpus(a.data), seed=a.seed)
        stats = train_tower(model, rows, world["categories"], a.steps, a.batch_size, a.lr, a.seed, a.pos_weight,
                            a.min_cover)
        heads = stats.pop("heads")
        os.makedirs(a.out, exist_ok=True)
        model.save_pretrained(a.out)
        tok.save_pretrained(a.out)
        torch.save(heads.state_dict(), os.path.join(a.out, "tower_heads.pt"))
        json.dump(dict(stats, args=vars(a), categories=world["categories"]),
                  open(os.path.join(a.out, "tower.json"), "w"), indent=1)
        print(json.dumps(stats))
    elif a.cmd == "check":
        rows = data.read_manifest(a.data, "sft", video_root=a.video_root)  # bbox passed through
        model, tok = lora.load_merged(a.model)
        model.eval()
        size = vadr.read_video(rows[0]["video_path"], 2)["frames"].shape[1:3]
        caps = toy.greedy_captions(model, tok, rows, a.data, max_new_tokens=a.max_new_tokens)
        res = score_grounded(rows, caps, size)
        res["examples"] = [dict(video=r["video"], gt=r["anomaly_type"], caption=c) for r, c in zip(rows, caps)][:12]
        print(json.dumps({k: v for k, v in res.items() if k != "examples"}, indent=1))
        if a.json:
            json.dump(res, open(a.json, "w"), indent=1)
    elif a.cmd == "ship":
        tower = _read(os.path.join(a.tower, "tower.json"), "stage A's record (extras.toybase tower)")
        cap_cfg = _read(os.path.join(a.caption_run, "run_config.json"), "stage B's run config")
        world = _read(os.path.join(a.world, "toy_world.json"), "a toy world's stamp")["params"]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        commit += "-dirty (the tree committed with this directory)" if commit and dirty else ""
        card = dict(world=dict(seed=world["seed"], videos=world["n_sft"], categories=world["categories"],
                               size=world["size"], sprite_scale=world["sprite_scale"]),
                    tower=dict(steps=tower["args"]["steps"], batch=tower["args"]["batch_size"],
                               lr=tower["args"]["lr"], pos_weight=tower["args"]["pos_weight"],
                               seed=tower["args"]["seed"], seconds=round(tower["seconds"])),
                    caption={k: cap_cfg.get(k) for k in ("epochs", "lr", "batch_size", "total_steps", "seed",
                                                          "freeze_vision", "schedule")},
                    commit=commit or "unknown", recipe_seconds=a.seconds)
        check = _read(a.check, "the check's figures (extras.toybase check --json)")
        check.pop("examples", None)
        mb = ship(a.caption_run, a.tower, a.world, check, a.out, card)
        print(f"{a.out}: {mb:.1f} MB")


if __name__ == "__main__":
    vadr.run_main(main)
