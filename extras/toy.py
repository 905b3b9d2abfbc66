"""extras/toy.py -- the toy anomaly world: "the MNIST of video anomaly reasoning" (docs/toy-world.md).

Procedurally rendered street scenes (walkway, one-way road, buildings) with the nine anomaly
categories of the paper's taxonomy this world can draw (Fighting, Falling, Fire, Wrong-Way
Driving, Falling Objects, Stealing, Pedestrian Jaywalking, Explosion, Flooding or Tsunami), each
with an exact temporal range and bounding box. They are written as real H.264 mp4 files plus
manifests in exactly the released Vad-Reasoning schema (data.py; docs/paper-vs-authors.md s.1),
with P2C-CoT texts (paper Sec. 3.1) filled in from the rendered facts, and optionally captions (the
caption split, off in the default world: the toy base is shipped, extras/toybase.py). It is the default data set of every script, so the whole method (SFT ->
AVA-GRPO -> evaluation) runs on a laptop CPU. Not part of the paper: a reader of the method can
skip this file.

Run it:
    python -m extras.toy --out data/toy            # the default world (TOY_DEFAULTS), 480 videos
    # --out: new, empty or a toy world's (toy_world.json); a folder of other files needs --overwrite
    python -m extras.toy --out /tmp/tiny --n-sft 14 --n-test 4 --n-rl 8 --n-caption 8 --frames 24 32
    python -m extras.toy --out /tmp/w7 --categories Fighting Falling Fire --sprite-scale 1 --text-variants 4
    python -m extras.toy preview --seed 3 --category Fire --out fire.png   # 16 sampled frames as a PNG
    python -m extras.toy caption-check --model toy-base   # does a captioner open with the event? (test split)

Departures from the released data (docs/toy-world.md has the details and the measured figures):
  * Synthetic cartoon anomalies replace surveillance videos; the P2C-CoT texts are generated from
    templates and are much shorter than the released ones, so the length reward takes its ranges
    from the toy SFT manifest (train_rl.py --length-ranges-from), not the paper's (App. C.2).
  * Events are drawn on frames start <= t < end (end exclusive), so that removing the window
    [round(start/T, 3), round(end/T, 3)] with vadr.kept_frames removes the event frames (AVA-GRPO's
    verification trim, Algorithm 1), up to one frame at each boundary that the 3-decimal rounding
    can shift.
  * SFT rows carry one extra field, `bbox` = [x1, y1, x2, y2] in pixels (x2, y2 exclusive): the
    union of the event's drawn pixels over [start, end). RL rows carry weak labels only.
  * PyAV writes the videos (decord, which reads them as in the authors' pipeline, only decodes);
    encoding is byte-deterministic on one machine (see write_video).
"""
from __future__ import annotations

import argparse
import fractions
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter

import numpy as np
import torch

import data
import grpo
import vadr
from extras import badvideos, checkpoint, lora, report, scoring, training

# ---- 1. The world: categories, defaults, palettes -----------------------------------------------
# A street seen from the side (top to bottom): sky with buildings, a walkway where people walk,
# a two-lane one-way road, a grass/curb strip. Normal videos: people walk along the walkway,
# cars drive in the road's direction (headlights at the front, taillights at the back, arrow-
# headed lane dashes). Abnormal videos add one event drawn on frames start <= t < end; outside
# that window the scene is normal (actors approach or leave like ordinary people), so removing
# the window leaves a normal video, as AVA-GRPO's verification reward assumes (Sec. 3.3).
#
# Honesty: the label and category are decidable only from pixels. Names are neutral (toy_00017,
# a random permutation), length is drawn independently of the label, the prompt is the same for
# every video, and colours, layout, counts, speeds and a horizontal mirror are randomised for
# every video whatever its label. Actors of an event replace ordinary walkers, so the number of
# people does not give the label away.

# Explosion and Flooding or Tsunami came last (appended, so that the others keep their order); like
# Fire they are large, uniform events (docs/toy-world.md "Why the default world is Fire").
TOY_CATEGORIES = ("Fighting", "Falling", "Fire", "Wrong-Way Driving", "Falling Objects", "Stealing",
                  "Pedestrian Jaywalking", "Explosion", "Flooding or Tsunami")
assert all(c in vadr.CATEGORIES for c in TOY_CATEGORIES)
_OFFSET_RANGE = 7  # the category rotation's draw (_toy_jobs): fixed, so old worlds keep their files
TOY_SOURCE = "TOY"
TOY_VERSION = 6  # bump when rendering or text changes, so ensure_toy_world regenerates
# The world `python -m extras.toy`, `make toy` and the scripts' no-argument runs make: the four
# categories the shipped toy base names from the pixels (docs/toy-base.md: the small-sprite ones it
# does not), sprites 2.5x larger, one template per text slot, split in the paper's proportions: RL
# 3.7x the SFT-train videos, with weak labels only (Sec. 3.2: 1,755 CoT-annotated, 6,448 weakly
# labelled). No caption split: the base is shipped (toy-base/). generate_toy_world's own keyword
# defaults draw all nine categories at scale 1 from every template (the tests' tiny worlds).
TOY_DEFAULTS = dict(seed=0, n_sft=90, n_test=60, n_rl=330, n_caption=0, size=(112, 112), frames=(48, 96), fps=8,
                    sprite_scale=2.5, categories=("Fire", "Explosion", "Flooding or Tsunami", "Falling Objects"),
                    text_variants=1, column_tint=0, frame_boxes=False)
MANIFEST_NAMES = dict(sft_train="Vad-Reasoning-SFT-train.jsonl", sft_test="Vad-Reasoning-SFT-test.jsonl",
                      rl="Vad-Reasoning-RL.jsonl", caption="Toy-Caption.jsonl")

# Named colours (RGB) so that the texts can name what the pixels show.
SKY = {"pale blue": (170, 200, 235), "light blue": (135, 185, 240), "grey": (178, 182, 188),
       "hazy white": (218, 218, 208), "dusky violet": (150, 135, 175)}
WALKWAY = {"grey": (150, 150, 150), "beige": (200, 185, 150), "light brown": (168, 138, 105),
           "pale pink": (205, 172, 168), "sandy": (212, 198, 140)}
ROAD = (72, 72, 76)
STRIP = {"green grass": (70, 140, 60), "grey curb": (125, 125, 120), "dark hedge": (40, 95, 50)}
BUILDING = [(140, 90, 75), (120, 120, 135), (175, 160, 130), (95, 105, 120), (160, 130, 110),
            (110, 95, 85)]
SHIRT = {"red": (205, 40, 40), "blue": (40, 70, 205), "green": (40, 150, 60), "yellow": (232, 212, 40),
         "white": (238, 238, 238), "black": (28, 28, 28), "purple": (135, 50, 165),
         "cyan": (40, 195, 205), "pink": (238, 120, 175)}
PANTS = [(40, 45, 90), (30, 30, 30), (100, 100, 105), (95, 70, 45)]
SKIN = [(232, 180, 130), (200, 140, 80), (145, 95, 55), (250, 215, 175)]
CAR = {"red": (200, 30, 35), "blue": (35, 80, 200), "white": (235, 235, 235), "silver": (175, 180, 185),
       "yellow": (235, 205, 30), "green": (40, 140, 70), "orange": (235, 130, 30)}
BAG = {"brown": (120, 75, 35), "black": (25, 25, 25), "red": (190, 30, 30), "blue": (30, 60, 180),
       "yellow": (230, 200, 40)}
BOX = {"brown": (140, 95, 50), "dark green": (35, 90, 45), "blue": (45, 75, 170), "purple": (120, 45, 140),
       "black": (35, 35, 35)}


def _jitter(rng, rgb, amount: int = 10) -> np.ndarray:
    """A colour varied a little per video (so that exact RGB values identify nothing)."""
    return np.clip(np.asarray(rgb, np.int64) + rng.integers(-amount, amount + 1, 3), 0, 255).astype(np.uint8)


def _pick_name(rng, palette: dict, avoid=(), min_dist: int = 110, exclude=()) -> str:
    """A colour name from the palette whose colour is at least min_dist (L1) from every colour in
    `avoid` (e.g. the walkway), so that actors stay visible against the ground."""
    names = [n for n in palette if n not in exclude and
             all(np.abs(np.asarray(palette[n]) - np.asarray(a, np.int64)).sum() >= min_dist for a in avoid)]
    if not names:
        names = [n for n in palette if n not in exclude]
    return names[int(rng.integers(len(names)))]


# ---- 2. Rendering: drawing primitives, the scene, the events -----------------------------------
# Drawing primitives. All draw in place on img (H, W, 3) uint8 and return the clipped boxes they drew,
# [x1, y1, x2, y2] with x2/y2 exclusive, so that an event's bbox is the union of what it drew.

def _rect(img, x, y, w, h, rgb) -> list:
    """Fill the w x h rectangle with top-left (x, y) (rounded to ints), clipped to the image."""
    H, W = img.shape[:2]
    x, y = int(round(x)), int(round(y))
    a, b, c, d = max(0, x), min(W, x + int(w)), max(0, y), min(H, y + int(h))
    if a >= b or c >= d:
        return []
    img[c:d, a:b] = rgb
    return [(a, c, b, d)]


def _around(img, cx, cy, r):
    """The clipped square window around (cx, cy) of half-side r (at least 1) -> (a, c, dx, dy, r):
    its top-left (a, c) and the offsets from the centre, dx (1, w) and dy (h, 1); None if empty."""
    H, W = img.shape[:2]
    r = max(1.0, float(r))
    a, b = max(0, int(math.floor(cx - r))), min(W, int(math.ceil(cx + r)) + 1)
    c, d = max(0, int(math.floor(cy - r))), min(H, int(math.ceil(cy + r)) + 1)
    if a >= b or c >= d:
        return None
    yy, xx = np.ogrid[c:d, a:b]
    return a, c, xx - cx, yy - cy, r


def _disc(img, cx, cy, r, rgb) -> list:
    """Fill a disc of radius r centred at (cx, cy)."""
    win = _around(img, cx, cy, r)
    if win is None:
        return []
    a, c, dx, dy, r = win
    return _fill_mask(img, a, c, dx ** 2 + dy ** 2 <= r * r, rgb)  # (h, w) bool


def _fill_mask(img, a, c, mask, rgb) -> list:
    """Fill the True pixels of mask (h, w) bool, whose top-left is (a, c) inside the image."""
    if not mask.any():
        return []
    img[c:c + mask.shape[0], a:a + mask.shape[1]][mask] = rgb
    ys, xs = np.nonzero(mask)
    return [(a + int(xs.min()), c + int(ys.min()), a + int(xs.max()) + 1, c + int(ys.max()) + 1)]


def _burst(img, cx, cy, r, rays, phase, rgb, spike: float = 0.3) -> list:
    """Fill a star with `rays` spikes centred at (cx, cy): radius r * (1 - spike + spike * cos(rays *
    angle + phase)), so the tips reach r and the notches between them 1 - 2 * spike of it."""
    win = _around(img, cx, cy, r)
    if win is None:
        return []
    a, c, dx, dy, r = win                                                     # (1, w), (h, 1)
    rad = r * (1 - spike + spike * np.cos(rays * np.arctan2(dy, dx) + phase))  # (h, w)
    return _fill_mask(img, a, c, dx ** 2 + dy ** 2 <= rad ** 2, rgb)


def _wave_band(img, x1, x2, y_bot, level, amp, period, phase, rgb) -> list:
    """Fill columns [x1, x2) (ints) from a wavy top edge, row level + amp * sin(2 pi x / period +
    phase), down to row y_bot (exclusive)."""
    H, W = img.shape[:2]
    a, b = max(0, int(x1)), min(W, int(x2))
    c, d = max(0, int(math.floor(level - abs(amp)))), min(H, int(y_bot))
    if a >= b or c >= d:
        return []
    yy, xx = np.ogrid[c:d, a:b]
    top = level + amp * np.sin(2 * np.pi * xx / period + phase)  # (1, w) the surface row per column
    return _fill_mask(img, a, c, yy >= top, rgb)


def _sizes(H: int, scale: float = 1.0) -> dict:
    """Sprite sizes in pixels for a frame of height H (designed at H = 112: figures 5 x 14 px),
    times `scale` (the world's sprite_scale: larger sprites = larger, more salient events)."""
    u = H / 112.0 * scale
    k = lambda v: max(1, int(round(v * u)))
    return dict(u=u, head=k(4), body_w=k(5), body_h=k(5), leg_w=k(2), leg_h=k(5), arm=k(2),
                punch=k(4), fig_h=k(4) + k(5) + k(5), car_len=k(18), car_h=k(5), cab_h=k(4),
                wheel=k(3), light=k(2), bag_w=k(5), bag_h=k(4), margin=k(8))


def _draw_figure(img, S, x, y, look, pose: str = "walk", t: int = 0, d: int = 1, bag=None) -> list:
    """A person with feet at row y (exclusive bottom) centred at column x, facing d (+1 right).
    Poses: walk, run (wider alternating stride), fight (arm punching towards d), tilt (falling
    over towards d), lie (flat on the ground, head towards d). bag: RGB of a carried bag."""
    hd, bw, bh, lw, lh = S["head"], S["body_w"], S["body_h"], S["leg_w"], S["leg_h"]
    x, y = int(round(x)), int(round(y))
    out = []
    if pose == "lie":  # legs, body, head laid out along d, all resting on row y
        L = lh + bh + hd
        x0 = x - L // 2
        parts = [(lh, lw * 2, look["pants"]), (bh, bw, look["shirt"]), (hd, hd, look["skin"])]
        if d < 0:
            parts = parts[::-1]
        for length, thick, col in parts:
            out += _rect(img, x0, y - thick, length, thick, col)
            x0 += length
        return out
    if pose == "tilt":  # half-way down: feet in place, body and head shifted towards d and lower
        out += _rect(img, x - bw // 2, y - lh + 1, bw, lh - 1, look["pants"])
        out += _rect(img, x - bw // 2 + d * bw // 2, y - lh - bh + 2, bw + 1, bh, look["shirt"])
        out += _rect(img, x - hd // 2 + d * (bw + 1), y - lh - bh - hd + 4, hd, hd, look["skin"])
        return out
    stride = {"walk": (t // 2) % 2, "run": 1 + t % 2}.get(pose, 0)  # leg spread in px
    out += _rect(img, x - bw // 2 - stride, y - lh, lw, lh, look["pants"])            # left leg
    out += _rect(img, x + bw - bw // 2 - lw + stride, y - lh, lw, lh, look["pants"])  # right leg
    lean = d if pose == "run" else 0
    out += _rect(img, x - bw // 2 + lean, y - lh - bh, bw, bh, look["shirt"])         # body
    out += _rect(img, x - hd // 2 + lean, y - lh - bh - hd, hd, hd, look["skin"])     # head
    if pose == "fight":  # an arm punching towards the opponent: long and short on alternate frames
        reach = S["punch"] if t % 2 == 0 else S["punch"] // 2 + 1
        ax = x + bw - bw // 2 if d > 0 else x - bw // 2 - reach
        out += _rect(img, ax, y - lh - bh + 1, reach, S["arm"], look["skin"])
    if bag is not None:  # carried at hip height on the front side
        bx = x + bw - bw // 2 + lean if d > 0 else x - bw // 2 + lean - S["bag_w"]
        out += _rect(img, bx, y - lh - S["bag_h"] + 2, S["bag_w"], S["bag_h"], bag)
    return out


def _draw_car(img, S, x, y, rgb, d: int) -> list:
    """A car seen from the side, wheels resting on row y, centred at column x, driving towards d:
    yellow headlight at the front, red taillight at the back, cabin shifted to the back."""
    L, ch, cab, wh, li = S["car_len"], S["car_h"], S["cab_h"], S["wheel"], S["light"]
    x, y = int(round(x)), int(round(y))
    x0, body_y = x - L // 2, y - wh // 2 - ch
    out = _rect(img, x0, body_y, L, ch, rgb)
    cab_x = x0 + L // 8 if d > 0 else x0 + L - L // 8 - L // 2
    out += _rect(img, cab_x, body_y - cab, L // 2, cab, rgb)
    out += _rect(img, cab_x + 1, body_y - cab + 1, L // 2 - 2, cab - 1, (160, 200, 220))  # windows
    for wx in (x0 + 1, x0 + L - wh - 1):
        out += _rect(img, wx, y - wh, wh, wh, (20, 20, 20))
    front, back = (x0 + L - li, x0) if d > 0 else (x0, x0 + L - li)
    out += _rect(img, front, body_y + 1, li, li, (255, 235, 90))
    out += _rect(img, back, body_y + 1, max(1, li // 2 + 1), li, (230, 30, 30))
    return out


def _wrap(x: float, W: int, margin: int) -> float:
    """Ordinary walkers and cars leave on one side and come back on the other."""
    period = W + 2 * margin
    return (x + margin) % period - margin


# The scene.

def _plan_scene(rng, H: int, W: int, sprite_scale: float = 1.0) -> dict:
    """Layout, colours and the static background (H, W, 3) uint8 of one video."""
    S = _sizes(H, sprite_scale)
    u = S["u"]
    hz = int(round(H * rng.uniform(0.22, 0.30)))            # sky/buildings above the walkway
    rt = hz + int(round(H * rng.uniform(0.28, 0.34)))       # walkway [hz, rt), road top rt
    rb = rt + int(round(H * rng.uniform(0.22, 0.27)))       # road [rt, rb), strip [rb, H)
    sky_n, walk_n, strip_n = (list(p)[int(rng.integers(len(p)))] for p in (SKY, WALKWAY, STRIP))
    sky, walk, strip = _jitter(rng, SKY[sky_n]), _jitter(rng, WALKWAY[walk_n]), _jitter(rng, STRIP[strip_n])
    road = _jitter(rng, ROAD, 6)
    d_car = int(rng.choice([-1, 1]))  # the one-way road's direction (before the mirror)
    bg = np.empty((H, W, 3), np.uint8)  # (H, W, 3)
    bg[:hz], bg[hz:rt], bg[rt:rb], bg[rb:] = sky, walk, road, strip
    bg[rt:rt + max(1, int(u))] = np.clip(walk.astype(int) + 30, 0, 255)  # kerb line
    nb = int(rng.integers(2, 5))
    slot, building_rgbs = W / nb, []
    for i in range(nb):  # buildings with a grid of lit windows
        bw = int(slot * rng.uniform(0.55, 0.9))
        bx = int(i * slot + rng.uniform(0, slot - bw))
        bh = int(hz * rng.uniform(0.5, 0.95))
        col = _jitter(rng, BUILDING[int(rng.integers(len(BUILDING)))])
        building_rgbs.append(col)
        _rect(bg, bx, hz - bh, bw, bh, col)
        win = np.clip(col.astype(int) + 55, 0, 255)
        step, ws = max(3, int(round(5 * u))), max(1, int(round(2 * u)))
        for wy in range(hz - bh + ws, hz - ws, step):
            for wx in range(bx + ws, bx + bw - ws, step):
                _rect(bg, wx, wy, ws, ws, win)
    y_mid = rt + (rb - rt) // 2  # lane dashes with an arrowhead at the front end: the direction
    dash, gap = max(4, int(round(8 * u))), max(4, int(round(8 * u)))
    for x0 in range(int(rng.integers(0, dash + gap)) - dash - gap, W, dash + gap):
        _rect(bg, x0, y_mid, dash, max(1, int(u)), (225, 225, 215))
        tip = x0 + dash - 1 if d_car > 0 else x0
        back = tip - d_car * max(1, int(round(2 * u)))
        _rect(bg, back, y_mid - max(1, int(u)), 1, 1, (225, 225, 215))
        _rect(bg, back, y_mid + max(1, int(u)), 1, 1, (225, 225, 215))
    for _ in range(int(rng.integers(0, 3))):  # lamp posts at the back of the walkway
        lx = int(rng.integers(2, W - 2))
        ph = int(hz * rng.uniform(0.4, 0.7))
        _rect(bg, lx, hz - ph, max(1, int(u)), ph + int(3 * u), (60, 60, 65))
        _rect(bg, lx - int(u), hz - ph - int(2 * u), int(3 * u) or 1, int(2 * u) or 1, (250, 240, 170))
    return dict(H=H, W=W, S=S, hz=hz, rt=rt, rb=rb, bg=bg, d_car=d_car, sky=sky_n, walk=walk_n,
                strip=strip_n, walk_rgb=walk, road_rgb=road, strip_rgb=strip, sky_rgb=sky,
                building_rgbs=building_rgbs, n_buildings=nb,
                feet=(hz + int(round(0.35 * (rt - hz))), rt - 1),  # rows where feet may stand
                lanes=(rt + int(round(0.45 * (rb - rt))), rb - 1))  # far and near lane wheel rows


def _new_look(rng, sc: dict, exclude=()) -> dict:
    # shirts stand out from every ground a person may stand on (walkway, road, strip)
    name = _pick_name(rng, SHIRT, avoid=[sc["walk_rgb"], sc["road_rgb"], sc["strip_rgb"]], exclude=exclude)
    return dict(shirt=_jitter(rng, SHIRT[name], 8), shirt_name=name,
                pants=_jitter(rng, PANTS[int(rng.integers(len(PANTS)))], 8),
                skin=_jitter(rng, SKIN[int(rng.integers(len(SKIN)))], 6))


def _feet_row(rng, sc: dict) -> int:
    return int(rng.integers(sc["feet"][0], sc["feet"][1] + 1))


def _plan_walkers(rng, sc: dict, n: int) -> list:
    W, u = sc["W"], sc["S"]["u"]
    return [dict(x0=rng.uniform(0, W), v=rng.uniform(0.4, 1.1) * u, d=int(rng.choice([-1, 1])),
                 y=_feet_row(rng, sc), look=_new_look(rng, sc)) for _ in range(n)]


def _plan_cars(rng, sc: dict) -> list:
    """2-3 cars sharing one speed (so that same-lane cars never overlap), evenly spaced."""
    W, S = sc["W"], sc["S"]
    n = int(rng.integers(2, 4))
    v = rng.uniform(1.2, 2.4) * S["u"]
    period = W + 2 * S["car_len"]
    base = rng.uniform(0, period)
    cars = []
    for i in range(n):
        name = _pick_name(rng, CAR, avoid=[sc["road_rgb"]], min_dist=150)
        cars.append(dict(x0=base + i * period / n + rng.uniform(-3, 3) * S["u"], v=v,
                         lane=int(rng.integers(2)), rgb=_jitter(rng, CAR[name], 8), name=name))
    return cars


def _plan_bags(rng, sc: dict, n: int) -> list:
    W = sc["W"]
    out = []
    for _ in range(n):
        name = _pick_name(rng, BAG, avoid=[sc["walk_rgb"]])
        out.append(dict(x=int(rng.integers(int(0.1 * W), int(0.9 * W))), y=_feet_row(rng, sc),
                        rgb=_jitter(rng, BAG[name], 8), name=name))
    return out


# The events.
# Each planner draws everything random up front (so that rendering with and without the event
# consumes the same random numbers) and returns dict(actors, items, facts): items(t) lists the
# event's sprites at frame t as (depth, draw) pairs, depth = the row its feet or wheels stand on
# (painter's order: further back first); facts feed the texts (directions before the mirror).

def _approach(x_goal: float, d: int, v: float, dt: float) -> float:
    """Where a walker heading d at speed v stands dt frames before reaching x_goal."""
    return x_goal - d * v * dt


def _plan_fighting(rng, sc, T, s, e):
    S, W = sc["S"], sc["W"]
    a = _new_look(rng, sc)
    b = _new_look(rng, sc, exclude=(a["shirt_name"],))  # two different shirts, so the text can tell them apart
    xm, y = rng.uniform(0.25, 0.75) * W, _feet_row(rng, sc)
    v = rng.uniform(0.5, 1.0) * S["u"]
    gap = S["body_w"] // 2 + S["punch"] // 2 + 1
    jit = rng.integers(-1, 2, size=(T, 2)) * max(1, int(S["u"]))   # (T, 2) shoving back and forth
    flash = rng.integers(0, 2, size=T)                              # (T,) flash colour choice

    def items(t):
        if t < s:      # walking towards each other
            xa, xb, pose, da, db = _approach(xm - gap, 1, v, s - t), _approach(xm + gap, -1, v, s - t), "walk", 1, -1
        elif t < e:    # fighting in place
            xa, xb, pose, da, db = xm - gap + jit[t, 0], xm + gap + jit[t, 1], "fight", 1, -1
        else:          # walking away from each other
            xa, xb, pose, da, db = xm - gap - v * (t - e + 1), xm + gap + v * (t - e + 1), "walk", -1, 1
        out = [(y, functools.partial(_draw_figure, S=S, x=xa, y=y, look=a, pose=pose, t=t, d=da)),
               (y, functools.partial(_draw_figure, S=S, x=xb, y=y, look=b, pose=pose, t=t + 1, d=db))]
        if s <= t < e:  # a bright flash of impact between them, every frame
            col = (255, 245, 120) if flash[t] else (255, 255, 255)
            cy = y - S["leg_h"] - S["body_h"]
            r = max(2, int(round(2 * S["u"])))
            out.append((y + 0.5, functools.partial(_star, cx=xm + (jit[t, 0] + jit[t, 1]) / 2, cy=cy, r=r, rgb=col)))
        return out

    return dict(actors=2, items=items, zone="walkway",
                facts=dict(shirt=a["shirt_name"], shirt2=b["shirt_name"]))


def _star(img, cx, cy, r, rgb) -> list:
    """A plus-shaped flash."""
    cx, cy = int(round(cx)), int(round(cy))
    return _rect(img, cx - r, cy, 2 * r + 1, 1, rgb) + _rect(img, cx, cy - r, 1, 2 * r + 1, rgb) + \
        _rect(img, cx - 1, cy - 1, 3, 3, rgb)


def _plan_falling(rng, sc, T, s, e):
    S, W = sc["S"], sc["W"]
    look, y = _new_look(rng, sc), _feet_row(rng, sc)
    xf, d = rng.uniform(0.2, 0.8) * W, int(rng.choice([-1, 1]))
    v = rng.uniform(0.4, 0.9) * S["u"]

    def items(t):
        if t < s:
            spr = dict(x=_approach(xf, d, v, s - t), pose="walk")
        elif t < min(e, s + 2):     # toppling over
            spr = dict(x=xf, pose="tilt")
        elif t < e:                 # lying on the ground
            spr = dict(x=xf + d * S["fig_h"] // 3, pose="lie")
        else:                       # back on their feet, walking on
            spr = dict(x=xf + d * v * (t - e + 1), pose="walk")
        return [(y, functools.partial(_draw_figure, S=S, y=y, look=look, t=t, d=d, **spr))]

    return dict(actors=1, items=items, zone="walkway", facts=dict(shirt=look["shirt_name"]))


def _plan_fire(rng, sc, T, s, e):
    S, W, u = sc["S"], sc["W"], sc["S"]["u"]
    cx = rng.uniform(0.15, 0.85) * W
    by = int(rng.integers(sc["hz"] + int(0.4 * (sc["rt"] - sc["hz"])), sc["rt"] - 1))
    r_max, r0 = rng.uniform(6, 9) * u, 3 * u
    grow = max(2, int(round(0.3 * (e - s))))
    flick = rng.uniform(0.85, 1.15, size=T)          # (T,) flame size flicker
    sway = rng.uniform(-1.5, 1.5, size=T) * u        # (T,) flame tip sway
    smoke = rng.integers(55, 95, size=T)             # (T,) smoke grey level

    def draw(img, t):
        r = (r0 + (r_max - r0) * min(1.0, (t - s + 1) / grow)) * flick[t]
        g = int(smoke[t])
        out = _disc(img, cx + sway[t] * 2, by - 2.6 * r - 0.3 * u * (t - s), 0.8 * r, (g, g, g + 5))
        out += _disc(img, cx, by - r, r, (225, 45, 15))                        # outer red
        out += _disc(img, cx + sway[t], by - 1.7 * r, 0.6 * r, (225, 45, 15))  # flame tip
        out += _disc(img, cx + sway[t] / 2, by - 0.8 * r, 0.65 * r, (250, 140, 20))  # orange
        out += _disc(img, cx, by - 0.55 * r, 0.35 * r, (255, 230, 90))          # yellow core
        return out

    def items(t):
        return [(by, functools.partial(draw, t=t))] if s <= t < e else []

    return dict(actors=0, items=items, zone="walkway", facts={})


def _plan_wrong_way(rng, sc, T, s, e):
    S, W = sc["S"], sc["W"]
    name = _pick_name(rng, CAR, avoid=[sc["road_rgb"]], min_dist=150)
    rgb = _jitter(rng, CAR[name], 8)
    # the lane with fewer ordinary cars (ties at random), so that it rarely drives through them
    busy = [sum(c["lane"] == k for c in sc["cars"]) for k in (0, 1)]
    k = int(rng.integers(2)) if busy[0] == busy[1] else int(np.argmin(busy))
    lane = sc["lanes"][k]
    dw = -sc["d_car"]                      # against the road's direction
    half, vis = S["car_len"] / 2, 6 * S["u"]
    xa, xb = (W + half - vis, -half + vis) if dw < 0 else (-half + vis, W + half - vis)

    def items(t):
        if not s <= t < e:
            return []
        x = xa + (xb - xa) * (t - s) / max(1, e - 1 - s)  # enters at s, leaving the frame at e-1
        return [(lane + 0.1, functools.partial(_draw_car, S=S, x=x, y=lane, rgb=rgb, d=dw))]

    return dict(actors=0, items=items, zone="road", facts=dict(car=name, dw=dw))


def _plan_falling_objects(rng, sc, T, s, e):
    S, W, u = sc["S"], sc["W"], sc["S"]["u"]
    # visible against everything it falls past: sky, buildings, walkway
    name = _pick_name(rng, BOX, avoid=[sc["walk_rgb"], sc["sky_rgb"], *sc["building_rgbs"]], min_dist=90)
    rgb = _jitter(rng, BOX[name], 8)
    size = int(round(rng.uniform(11, 15) * u))  # a crate about one vision token wide at sprite scale 2.5
    xo = rng.uniform(0.15, 0.85) * W
    y_land = int(rng.integers(sc["hz"] + int(0.3 * (sc["rt"] - sc["hz"])), sc["rt"]))
    fall = max(2, min(e - s - 2, int(round(0.35 * (e - s)))))   # frames in the air, >= 2 on the ground
    frag_v = rng.uniform(-2.5, 2.5, size=(5, 2)) * u              # (5, 2) fragment velocities
    frag_v[:, 1] = -np.abs(frag_v[:, 1]) * 0.3
    y0 = 0.8 * size                                               # bottom edge at the first frame

    def draw(img, t):
        k = t - s
        if k < fall:   # accelerating drop: y grows with k^2
            yb = y0 + (y_land - y0) * (k / fall) ** 2
            return _rect(img, xo - size / 2, yb - size, size, size, rgb)
        n = min(k - fall, 3)  # fragments slide for 3 frames after the impact, then rest
        dust = max(0.35, 1.2 - 0.15 * (k - fall)) * size
        out = _disc(img, xo, y_land - size / 3, dust, (222, 218, 205))
        for fx, fy in frag_v:
            fs = max(2, size // 2)
            out += _rect(img, xo + fx * (n + 1) - fs / 2, y_land + fy * n - fs, fs, fs, rgb)
        return out

    def items(t):
        if not s <= t < e:
            return []
        depth = 1e6 if t - s < fall else y_land  # in the air it is in front of everything
        return [(depth, functools.partial(draw, t=t))]

    return dict(actors=0, items=items, zone="walkway", facts=dict(box=name))


def _plan_stealing(rng, sc, T, s, e):
    S, W = sc["S"], sc["W"]
    look = _new_look(rng, sc)
    bag = _plan_bags(rng, sc, 1)[0]
    da, dr = int(rng.choice([-1, 1])), int(rng.choice([-1, 1]))   # approach and escape directions
    v = rng.uniform(0.5, 1.0) * S["u"]
    x_exit = W if dr > 0 else 0   # centre on the edge at e-1: half of the thief still visible
    # The thief runs at about twice walking speed and leaves the frame at e-1, so the bag lies
    # run * (e-1-s) pixels from the exit edge (at most 80% of the width away).
    run = rng.uniform(1.6, 2.4) * S["u"]
    bag["x"] = int(round(x_exit - dr * min(run * (e - 1 - s), 0.8 * W)))

    def items(t):
        if t < s:  # the bag lies there; the thief walks up to it
            xt = _approach(bag["x"] - da * 2 * S["u"], da, v, s - t)
            return [(bag["y"], functools.partial(_rect, x=bag["x"] - S["bag_w"] // 2, y=bag["y"] - S["bag_h"],
                                                 w=S["bag_w"], h=S["bag_h"], rgb=bag["rgb"])),
                    (bag["y"] + 0.1, functools.partial(_draw_figure, S=S, x=xt, y=bag["y"], look=look,
                                                       pose="walk", t=t, d=da))]
        if t < e:  # grabs it and runs off, out of the frame by e
            xt = bag["x"] + (x_exit - bag["x"]) * (t - s) / max(1, e - 1 - s)
            return [(bag["y"] + 0.1, functools.partial(_draw_figure, S=S, x=xt, y=bag["y"], look=look,
                                                       pose="run", t=t, d=dr, bag=bag["rgb"]))]
        return []  # gone, with the bag

    return dict(actors=1, items=items, zone="walkway", facts=dict(shirt=look["shirt_name"], bag=bag["name"],
                                                                   dr=dr))


def _plan_jaywalking(rng, sc, T, s, e):
    S, W, H = sc["S"], sc["W"], sc["H"]
    look = _new_look(rng, sc)
    xj, d = rng.uniform(0.2, 0.8) * W, int(rng.choice([-1, 1]))
    yw = sc["rt"] - 1                    # walking along the front edge of the walkway
    v = rng.uniform(0.5, 1.0) * S["u"]
    y_end = H + S["leg_h"]               # at e-1 the feet are off the bottom, body and head visible

    def items(t):
        if t < s:
            return [(yw, functools.partial(_draw_figure, S=S, x=_approach(xj, d, v, s - t), y=yw, look=look,
                                           pose="walk", t=t, d=d))]
        if t < e:  # straight across both lanes and out at the bottom
            y = yw + (y_end - yw) * (t - s) / max(1, e - 1 - s)
            return [(y, functools.partial(_draw_figure, S=S, x=xj, y=y, look=look, pose="walk", t=t, d=d))]
        return []

    return dict(actors=1, items=items, zone="road", facts=dict(shirt=look["shirt_name"]))


# Explosion and Flooding are sized like Fire (about the same changed pixels per event frame; docs/
# toy-world.md "What is rendered") but differ from it in colour (white/yellow, blue rather than red/
# orange), shape (a spiky star with a debris ring, a wide flat band rather than a round flame) and
# place (the road rather than the walkway). Both are drawn in front of everything else.

def _plan_explosion(rng, sc, T, s, e):
    W, u, rt, rb = sc["W"], sc["S"]["u"], sc["rt"], sc["rb"]
    cx = rng.uniform(0.2, 0.8) * W
    cy = rng.uniform(rt + 0.25 * (rb - rt), rt + 0.75 * (rb - rt))  # centred on the road's lanes
    r_max, rays = rng.uniform(10, 12) * u, int(rng.integers(7, 10))
    r0 = 0.3 * r_max
    grow = max(2, int(round(0.3 * (e - s))))           # swells over the first 30% of the window
    flick = rng.uniform(0.93, 1.07, size=T)            # (T,) size flicker
    spin = rng.uniform(0, 2 * np.pi) + rng.uniform(-0.3, 0.3, size=T)   # (T,) spike angles
    n = int(rng.integers(8, 12))                       # debris chunks in a ring around the flash
    ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n     # (n,)
    dist = rng.uniform(1.05, 1.3, n)                   # (n,) ring radius over r
    chunk = np.maximum(2, np.round(rng.uniform(1.8, 2.6, n) * u))        # (n,) chunk sides in px
    debris = _jitter(rng, (30, 28, 26), 4)             # charcoal: > 30 from the road's grey

    def draw(img, t):
        k = t - s
        g = min(1.0, (k + 1) / grow)                            # 0..1 while it swells
        fade = max(0.0, (k + 1 - grow) / max(1, e - s - grow))  # 0 at the peak -> 1 at the end
        r = (r0 + (r_max - r0) * g) * (1 - 0.2 * fade) * flick[t]
        out = []
        for a, dd, cs in zip(ang, dist, chunk):   # flying outward, then drifting on slowly
            rr = r_max * (dd * g + 0.15 * fade)
            out += _rect(img, cx + rr * math.cos(a) - cs / 2, cy + rr * math.sin(a) - cs / 2, cs, cs, debris)
        out += _burst(img, cx, cy, r, rays, spin[t], (255, 240, 150))          # pale yellow spikes
        out += _disc(img, cx, cy, (0.5 - 0.15 * fade) * r, (255, 255, 248))    # white-hot core
        return out

    def items(t):
        return [(rb + 0.5, functools.partial(draw, t=t))] if s <= t < e else []

    return dict(actors=0, items=items, zone="road", facts={})


def _plan_flooding(rng, sc, T, s, e):
    W, u, hz, rt, rb = sc["W"], sc["S"]["u"], sc["hz"], sc["rt"], sc["rb"]
    w = min(rng.uniform(14, 18) * u, 0.9 * W)
    lo = 0.05 * W
    x1 = int(round(rng.uniform(lo, max(lo, 0.95 * W - w))))
    x2 = x1 + int(round(w))
    h_max = min(rng.uniform(12, 15) * u, 0.8 * (rb - hz))   # up from the road's front edge, onto
    h0 = 0.35 * h_max                                          # the walkway, below the buildings
    grow = max(2, int(round(0.3 * (e - s))))                   # rises over the first 30% of the window
    amp, period = max(1.0, 0.8 * u), rng.uniform(9, 13) * u    # the wavy surface
    phase0 = rng.uniform(0, 2 * np.pi)
    bob = rng.uniform(-0.6, 0.6, size=T) * u                   # (T,) level bobbing
    water, ripple = _jitter(rng, (35, 90, 205), 12), _jitter(rng, (140, 190, 245), 8)
    dash, gap, thick = max(2, int(round(3 * u))), max(2, int(round(3 * u))), max(1, int(round(0.6 * u)))
    roff = rng.integers(0, dash + gap, size=2)                 # (2,) ripple dash offsets

    def draw(img, t):
        k = t - s
        level = rb - (h0 + (h_max - h0) * min(1.0, (k + 1) / grow)) + bob[t]
        out = _wave_band(img, x1, x2, rb, level, amp, period, phase0 + 0.7 * k, water)
        for j, frac in enumerate((0.35, 0.7)):  # lighter ripple lines below the surface, drifting
            yr = int(round(level + amp + frac * (rb - level - amp - thick)))
            if yr + thick > rb:
                continue
            off = int(roff[j] + (1 - 2 * j) * k * max(1, int(round(u)))) % (dash + gap)
            for xr in range(x1 - dash - gap + off, x2, dash + gap):
                a, b = max(xr, x1), min(xr + dash, x2)
                if b > a:
                    out += _rect(img, a, yr, b - a, thick, ripple)
        return out

    def items(t):
        return [(rb + 0.5, functools.partial(draw, t=t))] if s <= t < e else []

    # the texts say the walkway is flooded only when the whole surface rises above the kerb
    onto = rb - h_max + amp < rt
    return dict(actors=0, items=items, zone="road",
                facts=dict(flooded="the road and the walkway" if onto else "the road"))


_EVENT_PLANNERS = {"Fighting": _plan_fighting, "Falling": _plan_falling, "Fire": _plan_fire,
                   "Wrong-Way Driving": _plan_wrong_way, "Falling Objects": _plan_falling_objects,
                   "Stealing": _plan_stealing, "Pedestrian Jaywalking": _plan_jaywalking,
                   "Explosion": _plan_explosion, "Flooding or Tsunami": _plan_flooding}
assert set(_EVENT_PLANNERS) == set(TOY_CATEGORIES)


def _frames_range(frames) -> tuple[int, int]:
    lo, hi = (int(frames), int(frames)) if np.isscalar(frames) else (int(frames[0]), int(frames[-1]))
    if not 16 <= lo <= hi:
        raise vadr.InputError(f"frames must be 16 <= lo <= hi (16 sampled frames per video), got {frames}")
    return lo, hi


def _check_column_tint(tint) -> int:
    if isinstance(tint, bool) or int(tint) != tint or not 0 <= int(tint) <= 100:
        raise vadr.InputError(f"column_tint must be an integer in [0, 100], got {tint!r}")
    return int(tint)


def _check_sprite_scale(sprite_scale: float) -> float:
    if not 0.5 <= sprite_scale <= 4:
        raise vadr.InputError(f"sprite_scale must be in [0.5, 4], got {sprite_scale}")
    return float(sprite_scale)


def render_toy_video(seed: int, category: str | None = None, size=(112, 112), frames=(48, 96),
                     fps: float = 8.0, draw_event: bool = True, sprite_scale: float = 1.0,
                     column_tint: int = 0):
    """Render one toy video without writing anything.

    seed: everything random (layout, colours, length, event window) comes from it.
    category: one of TOY_CATEGORIES, or None for a normal video.
    size: (H, W), even numbers (H.264 yuv420p). frames: length, an int or an inclusive (lo, hi)
    range drawn per video. draw_event=False renders the same video without the event's sprites
    (a counterfactual for tests and previews). sprite_scale: people, cars, bags and every event's
    sprites drawn this many times larger (the layout of the street stays the same). column_tint:
    add this much red at the left edge and blue at the right, linear in between, to every pixel
    after the mirror (the same in every video: the fixed scenery that tells a column apart).
    -> frames uint8 (T, H, W, 3), meta dict(category, label, total_frames, fps, start, end, bbox,
       background (H, W, 3) uint8, facts, mirrored). start/end/bbox are None for normal videos.
    """
    if category is not None and category not in _EVENT_PLANNERS:
        raise ValueError(f"toy category must be one of {TOY_CATEGORIES} or None, got {category!r}")
    H, W = int(size[0]), int(size[1])
    if H % 2 or W % 2 or H < 48 or W < 48:
        raise ValueError(f"size must be even and at least 48 x 48 (H.264 yuv420p), got {size}")
    lo, hi = _frames_range(frames)
    tint = _check_column_tint(column_tint)
    rng = np.random.default_rng(seed)
    T = int(rng.integers(lo, hi + 1))           # independent of the label
    sc = _plan_scene(rng, H, W, _check_sprite_scale(sprite_scale))
    n_people = int(rng.integers(2, 6))          # actors replace ordinary walkers (honesty)
    event, s, e = None, None, None
    if category is not None:
        L = max(4, int(round(T * rng.uniform(0.25, 0.6))))   # 25-60% of the video
        s = int(rng.integers(0, T - L + 1))
        e = s + L
    cars = sc["cars"] = _plan_cars(rng, sc)
    if category is not None:
        event = _EVENT_PLANNERS[category](rng, sc, T, s, e)
    walkers = _plan_walkers(rng, sc, max(0, n_people - (event["actors"] if event else 0)))
    bags = _plan_bags(rng, sc, int(rng.integers(0, 3 if category != "Stealing" else 2)))
    mirror = bool(rng.integers(2))
    S, margin = sc["S"], sc["S"]["margin"]

    out = np.empty((T, H, W, 3), np.uint8)  # (T, H, W, 3)
    box = None  # union of the event's drawn boxes over [s, e)
    fboxes = {}  # t -> the event's drawn box on frame t (the toy base's dense labels, extras/toybase.py)
    for t in range(T):
        img = sc["bg"].copy()  # (H, W, 3) uint8
        items = [(b["y"], False, functools.partial(_rect, x=b["x"] - S["bag_w"] // 2, y=b["y"] - S["bag_h"],
                                                   w=S["bag_w"], h=S["bag_h"], rgb=b["rgb"])) for b in bags]
        for w in walkers:
            x = _wrap(w["x0"] + w["d"] * w["v"] * t, W, margin)
            items.append((w["y"], False, functools.partial(_draw_figure, S=S, x=x, y=w["y"], look=w["look"],
                                                           pose="walk", t=t + int(w["x0"]), d=w["d"])))
        for c in cars:
            x = _wrap(c["x0"] + sc["d_car"] * c["v"] * t, W, S["car_len"])
            y = sc["lanes"][c["lane"]]
            items.append((y, False, functools.partial(_draw_car, S=S, x=x, y=y, rgb=c["rgb"], d=sc["d_car"])))
        if event is not None and draw_event:
            items += [(dep, True, fn) for dep, fn in event["items"](t)]
        items.sort(key=lambda it: it[0])  # painter's order; stable, so ties keep insertion order
        for _, is_event, fn in items:
            drawn = fn(img)
            if is_event and s <= t < e:
                for b in drawn:
                    box = b if box is None else (min(box[0], b[0]), min(box[1], b[1]),
                                                 max(box[2], b[2]), max(box[3], b[3]))
                    f = fboxes.get(t)
                    fboxes[t] = b if f is None else (min(f[0], b[0]), min(f[1], b[1]), max(f[2], b[2]), max(f[3], b[3]))
        out[t] = img
    bg = sc["bg"]
    if mirror:  # left/right randomised for every video; facts below use the final coordinates
        out, bg = np.ascontiguousarray(out[:, :, ::-1]), np.ascontiguousarray(bg[:, ::-1])
        if box is not None:
            box = (W - box[2], box[1], W - box[0], box[3])
        fboxes = {t: (W - b[2], b[1], W - b[0], b[3]) for t, b in fboxes.items()}
    if tint:  # after the mirror, so the left edge is always the red one (docs/toy-world.md)
        ramp = (np.linspace(tint, -tint, W)[:, None] * np.array([1, 0, -1])).round().astype(np.int16)  # (W, 3)
        out = np.clip(out + ramp, 0, 255).astype(np.uint8)   # (T, H, W, 3)
        bg = np.clip(bg + ramp, 0, 255).astype(np.uint8)     # (H, W, 3)
    flip = -1 if mirror else 1
    facts = dict(sky=sc["sky"], walk=sc["walk"], strip=sc["strip"], n_buildings=sc["n_buildings"],
                 n_people=n_people, n_cars=len(cars), d_car=sc["d_car"] * flip)
    if event is not None:
        ef = dict(event["facts"])
        for k in ("dw", "dr"):
            if k in ef:
                ef[k] *= flip
        facts.update(ef, zone=event["zone"])
    meta = dict(category=category or "Normal", label="Abnormal" if category else "Normal", total_frames=T,
                fps=float(fps), start=s, end=e, bbox=list(box) if box is not None else None,
                frame_boxes={int(t): [int(v) for v in b] for t, b in sorted(fboxes.items())},
                background=bg, facts=facts, mirrored=mirror)
    if category is not None and box is None and draw_event:
        raise RuntimeError(f"toy video seed={seed} {category}: the event drew nothing (a bug)")
    return out, meta


# ---- 3. P2C-CoT texts (Sec. 3.1) ----------------------------------------------------------------
# Templates filled with scene facts; each slot has 2-4 options (text_variants = how many of them a
# world draws from; the default world takes the first of each, docs/toy-world.md "Knobs").
# Perception steps describe what is seen (global: the normal scene only, App. B.1; local: the
# event, when and where); cognition steps judge it (shallow: is it abnormal and which cues; deep:
# causes, broken rules, consequences).

_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

_GLOBAL = [
    "A street seen from the side: {nb} buildings under a {sky} sky, a {walk} walkway with {np} people, "
    "and a road where {nc} cars drive {cdir}.",
    "A fixed camera shows {nb} buildings, a {walk} walkway with {np} people, and a one-way road where "
    "{nc} cars drive {cdir}.",
    "A city street under a {sky} sky. {NP} people walk on the {walk} walkway and {nc} cars travel {cdir} "
    "on the road.",
    "A walkway in front of {nb} buildings, with {np} pedestrians on it and {nc} cars driving {cdir} on "
    "the road beside a {strip}.",
]
_NORMAL_STEP2 = [
    "Everyone walks at an ordinary pace and all cars drive {cdir}. Nobody falls, fights or runs, and "
    "nothing burns or drops.",
    "The pedestrians stay on the walkway and the traffic flows {cdir} without incident. Nothing is out "
    "of place.",
    "People move calmly, the cars follow the direction of the road, and the street looks the same from "
    "start to end.",
]
# The first answer of each list is the labelled "Category: ... Event: ..." layout, whose every tag
# follows its own cue word; a world with text_variants=1 (the default world) uses only it.
_NORMAL_ANSWER = [
    "<answer>Category: <which>Normal</which>. Event: <what>ordinary street activity</what>. Reason: "
    "<why>people walk calmly and the traffic flows one way</why>.</answer>",
    "<answer>The video is <which>Normal</which>: <what>people walk along a walkway while cars drive "
    "{cdir}</what>. It is normal because <why>nothing unusual happens</why>.</answer>",
    "<answer>I judge the video as <which>Normal</which>: <what>pedestrians walk on the {walk} walkway "
    "and cars pass {cdir}</what>, and <why>no one breaks a rule</why>.</answer>",
]
_ABNORMAL_ANSWER = [
    "<answer>Category: <which>{cat}</which>. Event: <what>{what}</what>. Time: <when>{when}</when>. "
    "Place: <where>{where}</where>. Reason: <why>{why}</why>. Impact: <how>{how}</how>.</answer>",
    "<answer>The video shows <which>{cat}</which>: <what>{what}</what> during <when>{when}</when> at "
    "<where>{where}</where>. It is abnormal because <why>{why}</why>, and <how>{how}</how>.</answer>",
    "<answer>Anomaly <which>{cat}</which>: <what>{what}</what>, in <when>{when}</when>, at "
    "<where>{where}</where>. Why: <why>{why}</why>. Impact: <how>{how}</how>.</answer>",
]
assert len(_NORMAL_ANSWER) == len(_ABNORMAL_ANSWER)
# Per category: local perception (step2), shallow (step3) and deep cognition (step4), and the
# what / why / how of the answer. {t0}/{t1}: seconds; {at}: 'on the left side of the walkway'.
_EVENT_TEXT = {
    "Fighting": dict(
        local=["From {t0} s to {t1} s, a person in {shirt} and a person in {shirt2} stand face to face "
               "{at}, punching each other amid flashes.",
               "{Phase} two people in {shirt} and {shirt2} meet {at} and keep "
               "hitting each other until {t1} s."],
        shallow=["They exchange blows instead of walking past each other; the punches and flashes show "
                 "a fight.",
                 "Quick punches and flashes of impact are clear signs of a physical fight."],
        deep=["An argument probably turned violent. Fighting in public breaks the law and can injure "
              "both people.",
              "Such violence threatens public safety, and someone may get hurt."],
        what=["two people fight on the walkway", "a person in {shirt} and a person in {shirt2} hit each other"],
        why=["people are hitting each other in public", "a violent fight breaks the calm walking"],
        how=["someone may be injured", "it can cause injuries and panic"]),
    "Falling": dict(
        local=["From {t0} s to {t1} s, a person in {shirt} walking {at} suddenly topples over and lies "
               "flat on the ground.",
               "{Phase} the walker in {shirt} falls down {at} and lies there "
               "until {t1} s, then gets up."],
        shallow=["A person lying flat on the walkway is not walking normally; the sudden collapse shows "
                 "a fall.",
                 "The body goes from upright to flat within a moment, a clear sign of a fall."],
        deep=["The person may have tripped or felt unwell. A fall can cause injuries and the person may "
              "need help.",
              "Falls often come from uneven ground or sudden illness; medical help may be needed."],
        what=["a person falls down and lies on the walkway", "the walker in {shirt} collapses"],
        why=["a person collapses instead of walking", "a sudden fall is an accident"],
        how=["the person may be injured", "it may cause injury and block the walkway"]),
    "Fire": dict(
        local=["From {t0} s to {t1} s, flickering red and orange flames appear {at}, grow larger and "
               "give off grey smoke.",
               "{Phase} a fire starts {at}; it flickers and smoke rises above "
               "it until {t1} s."],
        shallow=["Open flames and smoke do not belong on a street; the bright flickering colours show a "
                 "fire.",
                 "The growing orange blaze and rising smoke show an uncontrolled fire."],
        deep=["It may come from a cigarette or burning rubbish, and it can spread and hurt people.",
              "An uncontrolled fire endangers people and property; firefighters should be called."],
        what=["a fire burns on the walkway", "flames and smoke appear on the walkway"],
        why=["open fire is dangerous on a street", "an uncontrolled fire threatens people"],
        how=["it may spread and injure people", "people nearby may be burned"]),
    "Wrong-Way Driving": dict(
        local=["From {t0} s to {t1} s, a {car} car drives {wdir} {at}, against the other cars, which "
               "travel {cdir}.",
               "{Phase} a {car} car moves {wdir}, opposite to the traffic, "
               "until it leaves at {t1} s."],
        shallow=["Its headlights point the wrong way and it moves against the flow shown by the other "
                 "cars and the lane arrows.",
                 "Every other car moves {cdir}, so this car is driving the wrong way."],
        deep=["The driver may be lost or careless. Driving against traffic breaks the rules and can "
              "cause a head-on crash.",
              "Wrong-way driving leaves other drivers little time to react, so a crash may follow."],
        what=["a {car} car drives against the traffic", "a car travels {wdir} while traffic goes {cdir}"],
        why=["it drives opposite to the other cars", "wrong-way driving breaks traffic rules"],
        how=["it may cause a head-on collision", "other drivers may crash"]),
    "Falling Objects": dict(
        local=["From {t0} s to {t1} s, a {box} box drops from the top of the frame, lands {at} and breaks "
               "into pieces.",
               "{Phase} a {box} object falls from above, hits the ground {at} "
               "and shatters."],
        shallow=["Objects should not fall onto a walkway; the fast drop and scattered fragments show a "
                 "falling object.",
                 "The box speeds up as it drops and bursts on impact, a sign of an object falling from "
                 "a height."],
        deep=["It may have slipped from a window or roof. Falling objects can hurt people below.",
              "Loose items on buildings are a hazard; anyone underneath could be struck."],
        what=["a {box} box falls and breaks on the walkway", "an object drops and shatters"],
        why=["a falling object endangers people below", "objects do not normally fall onto a walkway"],
        how=["it could injure pedestrians", "people nearby may be hit by fragments"]),
    "Stealing": dict(
        local=["From {t0} s to {t1} s, a person in {shirt} picks up a {bag} bag lying {at} and runs off "
               "{rdir} with it.",
               "{Phase} the person in {shirt} grabs the {bag} bag left {at} and "
               "hurries {rdir} out of the frame."],
        shallow=["The person takes a bag that is not theirs and runs away fast, which points to theft.",
                 "Grabbing an unattended bag and sprinting off are typical signs of stealing."],
        deep=["The thief saw the bag unattended and took the chance. Stealing breaks the law and causes "
              "a loss.",
              "Taking other people's property violates the law; the owner should report it."],
        what=["a person grabs a {bag} bag and runs away", "someone steals a bag from the walkway"],
        why=["the person takes a bag that is not theirs", "taking unattended property is theft"],
        how=["the owner loses the bag", "it causes a loss and may need the police"]),
    "Pedestrian Jaywalking": dict(
        local=["From {t0} s to {t1} s, a person in {shirt} leaves the walkway and walks straight across "
               "the road {at}.",
               "{Phase} the person in {shirt} steps off the walkway and crosses "
               "the road until {t1} s."],
        shallow=["Pedestrians stay on the walkway; crossing where there is no crossing puts the person "
                 "among moving cars.",
                 "A person walking across the traffic lanes away from a crossing is jaywalking."],
        deep=["The person may be in a hurry. Jaywalking breaks traffic rules and drivers may not stop in "
              "time.",
              "Crossing outside a crossing surprises drivers and can lead to a collision."],
        what=["a person in {shirt} crosses the road", "a pedestrian walks across the road"],
        why=["the person crosses where pedestrians should not", "jaywalking breaks traffic rules"],
        how=["the person may be hit by a car", "cars may brake suddenly and crash"]),
    "Explosion": dict(
        local=["From {t0} s to {t1} s, a bright white and yellow burst flashes {at}, swells quickly and "
               "throws dark debris outward in a ring.",
               "{Phase} a blast goes off {at}; the white flash spreads and debris flies out until "
               "{t1} s."],
        shallow=["A sudden blinding burst with debris flying out in all directions does not belong on a "
                 "street; it shows an explosion.",
                 "The flash that swells in a moment and the ring of scattered debris are clear signs of "
                 "an explosion."],
        deep=["A gas leak or a device may have blown up. An explosion can injure people nearby and "
              "damage cars and buildings.",
              "A blast endangers everyone around and may start fires; the area should be cleared and help "
              "called."],
        what=["an explosion bursts on the road", "a bright blast throws debris across the road"],
        why=["an explosion is violent and dangerous", "a blast in a street threatens everyone nearby"],
        how=["people and cars nearby may be hurt", "it may injure people and start fires"]),
    "Flooding or Tsunami": dict(
        local=["From {t0} s to {t1} s, blue water spreads {at} and rises over {flooded}, with ripples "
               "on its surface.",
               "{Phase} water floods {at}, rises over {flooded} and stays "
               "there until {t1} s."],
        shallow=["Deep water covering {flooded} is not normal; the rising level and the ripples show a "
                 "flood.",
                 "The water level climbs over {flooded}, a clear sign of flooding."],
        deep=["Heavy rain or a burst water main may have caused it. Flood water can sweep people and cars "
              "away and damage buildings.",
              "Flooding cuts off the street and makes driving and walking dangerous; people should move "
              "to higher ground."],
        what=["water floods {flooded}", "a rising flood covers the street"],
        why=["flood water covers the street", "a flood makes the street dangerous"],
        how=["people and cars may be swept away", "it may trap people and damage property"]),
}
assert set(_EVENT_TEXT) == set(TOY_CATEGORIES)
# The most options any text slot has: text_variants at this value draws from every option.
TEXT_VARIANTS = max(len(o) for o in [_GLOBAL, _NORMAL_STEP2, _NORMAL_ANSWER, _ABNORMAL_ANSWER]
                    + [o for tx in _EVENT_TEXT.values() for o in tx.values()])


def format_when(start: int, end: int, total: int) -> str:
    """'[s, e]' exactly as in the released answers: [round(start/T, 3), round(end/T, 3)] printed
    as Python floats, e.g. '[0.25, 0.5]' (docs/paper-vs-authors.md s.1)."""
    return f"[{round(start / total, 3)}, {round(end / total, 3)}]"


def _dir_words(d: int) -> tuple[str, str]:
    return ("from left to right", "to the right") if d > 0 else ("from right to left", "to the left")


def _fact_words(meta: dict) -> dict:
    """The words that fill the templates, from the rendered facts (scene, and the event's when,
    where and who on abnormal videos). Shared by the P2C-CoT texts and the captions."""
    f = meta["facts"]
    v = dict(sky=f["sky"], walk=f["walk"], strip=f["strip"], nb=_NUM[f["n_buildings"]],
             NB=_NUM[f["n_buildings"]].capitalize(), np=_NUM[f["n_people"]],
             NP=_NUM[f["n_people"]].capitalize(), nc=_NUM[f["n_cars"]], cdir=_dir_words(f["d_car"])[0])
    if meta["label"] == "Normal":
        return v
    H, W = meta["background"].shape[:2]
    x1, y1, x2, y2 = meta["bbox"]
    cx, cy = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H
    h = "left" if cx < 1 / 3 else "center" if cx < 2 / 3 else "right"
    vert = "upper" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "lower"
    zone = f["zone"]
    at = f"in the middle of the {zone}" if h == "center" else f"on the {h} side of the {zone}"
    T, s, e, fps = meta["total_frames"], meta["start"], meta["end"], meta["fps"]
    mid = (s + e) / 2 / T
    v.update(t0=f"{s / fps:.1f}", t1=f"{e / fps:.1f}", at=at, h=h, vert=vert, when=format_when(s, e, T),
             Phase="Early in the video," if mid < 0.4 else "Midway through the video," if mid < 0.65
             else "Late in the video,",
             shirt=f.get("shirt", ""), shirt2=f.get("shirt2", ""), car=f.get("car", ""),
             bag=f.get("bag", ""), box=f.get("box", ""), flooded=f.get("flooded", ""), cat=meta["category"],
             wdir=_dir_words(f.get("dw", 1))[0], rdir=_dir_words(f.get("dr", 1))[1])
    return v


def toy_texts(meta: dict, rng, text_variants: int = TEXT_VARIANTS) -> tuple[str, str]:
    """(think, answer) in P2C-CoT form for one rendered toy video (meta of render_toy_video).
    text_variants: every slot (step texts, answer layout, what/where/why/how) is drawn from its first
    this many options; 1 makes the text a function of the rendered facts alone (the default world)."""
    n = _check_text_variants(text_variants)
    pick = lambda options: options[int(rng.integers(min(n, len(options))))]
    v = _fact_words(meta)
    step1 = pick(_GLOBAL).format(**v)
    if meta["label"] == "Normal":
        think = f"<think><step1>{step1}</step1><step2>{pick(_NORMAL_STEP2).format(**v)}</step2></think>"
        return think, pick(_NORMAL_ANSWER).format(**v)
    tx = _EVENT_TEXT[meta["category"]]
    v.update(what=pick(tx["what"]).format(**v), why=pick(tx["why"]).format(**v), how=pick(tx["how"]).format(**v),
             where=pick([f"the {v['vert']} {v['h']} of the frame", v['at'].split(" ", 1)[1]]))
    think = (f"<think><step1>{step1}</step1><step2>{pick(tx['local']).format(**v)}</step2>"
             f"<step3>{pick(tx['shallow']).format(**v)}</step3><step4>{pick(tx['deep']).format(**v)}</step4></think>")
    return think, pick(_ABNORMAL_ANSWER).format(**v)


# ---- 4. Captions: the toy pipeline's stage 0 (not in the paper) --------------------------------
# The random toy model has none of the pretraining Qwen2.5-VL has, and behind the long P2C-CoT
# prompt it never learns to look, so stage 0 first teaches it to caption its own videos with a
# one-line prompt (docs/toy-world.md "Stage 0"). Captions describe the pixels and never judge: no
# "anomaly", no category name, no P2C-CoT tag. The event comes FIRST, so that the caption's first
# token is decided by the pixels alone (with the scene first the captioner never learned it).
CAPTION_PROMPT = "Describe the video."
_CAPTION_QUIET = "People walk and cars drive as usual."  # the first sentence when nothing happens
_CAPTION_SCENE = [
    "A street under a {sky} sky with {nb} buildings. {NP} people walk on the {walk} walkway and {nc} cars "
    "drive {cdir} on the road beside a {strip}.",
    "{NB} buildings under a {sky} sky, a {walk} walkway with {np} people, and {nc} cars driving {cdir} "
    "next to a {strip}.",
]
_CAPTION_EVENT = {
    "Fighting": "a person in {shirt} and a person in {shirt2} punch each other {at}",
    "Falling": "a person in {shirt} falls over {at} and lies on the ground",
    "Fire": "flames and grey smoke rise {at}",
    "Wrong-Way Driving": "a {car} car drives {wdir} while the other cars drive {cdir}",
    "Falling Objects": "a {box} box drops from above and breaks {at}",
    "Stealing": "a person in {shirt} picks up a {bag} bag {at} and runs {rdir}",
    "Pedestrian Jaywalking": "a person in {shirt} walks across the road {at}",
    "Explosion": "a bright white and yellow burst swells {at} and throws dark debris outward",
    "Flooding or Tsunami": "blue water with light ripples rises {at} and covers {flooded}",
}
assert set(_CAPTION_EVENT) == set(TOY_CATEGORIES)


def toy_caption(meta: dict, rng) -> str:
    """A plain caption of one rendered toy video: what happens and when (or _CAPTION_QUIET), then
    the scene. 'Flames and grey smoke rise on the left side of the walkway from 1.6 s to 5.0 s. A
    street under a pale blue sky with ...'"""
    v = _fact_words(meta)
    scene = _CAPTION_SCENE[int(rng.integers(len(_CAPTION_SCENE)))].format(**v)
    if meta["label"] == "Abnormal":
        event = _CAPTION_EVENT[meta["category"]].format(**v)
        return f"{event[0].upper()}{event[1:]} from {v['t0']} s to {v['t1']} s. {scene}"
    return f"{_CAPTION_QUIET} {scene}"




class CaptionDataset(data.SFTDataset):
    """Stage 0: one item per caption row, dict(video, prompt=CAPTION_PROMPT, target=caption,
    row). data.SFTDataset's item layout and decoding, so the same collate and loss train on it."""
    target_fields = ("caption",)

    def __init__(self, rows: list[dict], cache_videos: bool = False, **video):
        super().__init__(rows, "fine", cache_videos, **video)  # vadr.encode_video's keywords
        self.prompt = CAPTION_PROMPT

    def target(self, row: dict) -> str:
        return row["caption"]


def caption_says_event(caption: str) -> bool:
    """Stage 0's detection, read off a caption: an event is described first, the quiet sentence
    only when nothing happens (toy_caption), so any other opening counts as 'an event was seen'."""
    return not caption.strip().startswith(_CAPTION_QUIET)


def greedy_captions(model, tok, rows: list[dict], manifest: str, frames: int = 16, batch_size: int = 8,
                    max_new_tokens: int = 24) -> list[str]:
    """Greedy captions behind CAPTION_PROMPT of manifest rows (the toy preset's pixels and frame
    rule, as the captioners train): caption_check's and the toy base's check (extras/toybase.py)."""
    class _Prompts(CaptionDataset):  # the caption prompt on rows that carry no caption
        target_fields = ()

        def target(self, row):
            return ""

    ds = _Prompts(rows, **vadr.video_args(argparse.Namespace(**dict(training.VIDEO_TOY, frames=frames))))
    collate = data.make_collate(tok, with_targets=False)
    captions = []
    with torch.no_grad():
        for b0 in range(0, len(rows), batch_size):
            items = []
            for i in range(b0, min(b0 + batch_size, len(rows))):
                with badvideos.at_line(manifest, rows[i]):  # a bad video: manifest file:line
                    items.append(ds[i])
            batch = collate(items)
            out = grpo.sample_group(model, {k: batch[k] for k in vadr.MODEL_INPUT_KEYS},
                                    num_samples=1, max_new_tokens=max_new_tokens, greedy=True,
                                    end_ids=vadr.end_token_ids(tok), pad_id=vadr.pad_token_id(tok))
            captions += grpo.decode_completions(tok, out["completion_ids"], out["completion_mask"])
    return captions


def caption_check(model_dir: str, manifest: str, video_root: str | None = None, frames: int = 16,
                  batch_size: int = 8, max_new_tokens: int = 24) -> dict:
    """How well a stage-0 captioner sees the event: caption each video of an SFT manifest
    (greedy, CAPTION_PROMPT) and score caption_says_event against the row's label. The SFT
    model's detection is bounded by it (docs/experiments.md) -> score_captions's dict plus
    videos: each row's video, label and caption."""
    rows = data.read_manifest(manifest, "sft", video_root=video_root)
    model, tok = lora.load_merged(model_dir)
    model.eval()
    captions = greedy_captions(model, tok, rows, manifest, frames, batch_size, max_new_tokens)
    videos = [dict(video=r["video"], label=r["label"], caption=c) for r, c in zip(rows, captions)]
    return dict(score_captions(rows, captions), videos=videos)


def score_captions(rows: list[dict], captions: list[str]) -> dict:
    """caption_says_event against each row's label -> dict(n, accuracy, tpr (abnormal videos
    captioned with an event), tnr (normal ones captioned quiet), per_category: the same rate per
    category, 'Normal' for the normal videos)."""
    right, by_cat = [], {}
    for r, c in zip(rows, captions, strict=True):
        ok = (r["label"] == "Abnormal") == caption_says_event(c)
        right.append(ok)
        by_cat.setdefault(r["anomaly_type"] if r["label"] == "Abnormal" else "Normal", []).append(ok)
    rate = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    ab = [ok for r, ok in zip(rows, right) if r["label"] == "Abnormal"]
    no = [ok for r, ok in zip(rows, right) if r["label"] != "Abnormal"]
    return dict(n=len(right), accuracy=rate(right), tpr=rate(ab), tnr=rate(no),
                per_category={c: rate(v) for c, v in sorted(by_cat.items())})


# ---- 5. Writing videos and manifests ------------------------------------------------------------

def write_video(path: str, frames, fps: float = 8.0, crf: int = 18):
    """frames uint8 (T, H, W, 3) -> H.264 mp4 (yuv420p, crf 18) with PyAV. Deterministic: x264
    runs single-threaded and without mb-tree, so the same frames give the same bytes (on one
    machine; other FFmpeg/x264 builds may encode differently). Written to a temporary name, then
    renamed. H and W must be even (yuv420p)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.shape} {frames.dtype}")
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sides, got {H} x {W}")
    tmp = path + ".tmp.mp4"
    with av.open(tmp, "w") as container:
        # PyAV takes a rational rate: 7.5 -> 15/2, 29.97 -> 2997/100
        rate = int(fps) if float(fps).is_integer() else fractions.Fraction(fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        # threads=1 and no-mbtree make the bytes repeatable; preset veryfast trades a little file
        # size for speed at the same quality (crf). The measurements: docs/toy-world.md "Videos".
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "no-mbtree=1"}
        for f in frames:  # (H, W, 3) uint8; PyAV converts to yuv420p (BT.601) for the encoder
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    os.replace(tmp, path)


def _toy_job(job: dict) -> dict:
    """Render, encode and describe one video (runs in a worker process)."""
    frames, meta = render_toy_video(job["seed"], job["category"], job["size"], job["frames"], job["fps"],
                                    sprite_scale=job["sprite_scale"], column_tint=job["column_tint"])
    write_video(job["path"], frames, job["fps"])
    row = dict(source=TOY_SOURCE, video=job["name"])
    if job["split"] == "rl":  # weak labels only (App. B.1)
        return dict(row, anomaly_type=meta["label"], path=job["path"], data_type="video", solution=meta["label"])
    row.update(anomaly_type=meta["category"], path=job["path"], total_frames=meta["total_frames"])
    if job["split"] == "caption":  # toy stage 0 (see CAPTION_PROMPT): a plain description
        return dict(row, caption=toy_caption(meta, np.random.default_rng([job["seed"], 7])))
    if meta["label"] == "Abnormal":
        row.update(start=meta["start"], end=meta["end"])
    think, answer = toy_texts(meta, np.random.default_rng([job["seed"], 7]), job["text_variants"])
    row.update(think=think, answer=answer)
    if meta["label"] == "Abnormal":
        row["bbox"] = meta["bbox"]
        if job["frame_boxes"]:  # the toy pretraining's dense labels (extras/toybase.py), off in the released schema
            row["frame_boxes"] = meta["frame_boxes"]
    return row


def _toy_jobs(out_dir: str, seed: int, n_sft: int, n_test: int, n_rl: int, n_caption: int, size, frames,
              fps, sprite_scale: float = 1.0, categories=TOY_CATEGORIES,
              text_variants: int = TEXT_VARIANTS, column_tint: int = 0, frame_boxes: bool = False) -> list:
    """The list of videos to make: per split about half abnormal, spread evenly over the
    categories, in a random order; neutral names from a random permutation of all videos."""
    rng = np.random.default_rng(seed)
    specs = []
    for split, n in (("sft_train", n_sft), ("sft_test", n_test), ("rl", n_rl), ("caption", n_caption)):
        n_abn = n // 2
        # drawn over the count of the first seven categories whatever `categories` is, so the
        # default world's random stream (and hence its files) is as before the later categories
        offset = int(rng.integers(_OFFSET_RANGE)) % len(categories)
        cats = [categories[(offset + i) % len(categories)] for i in range(n_abn)] + [None] * (n - n_abn)
        order = rng.permutation(n)
        specs += [(split, cats[i]) for i in order]
    names = rng.permutation(len(specs))
    seeds = rng.integers(0, 2 ** 31 - 1, size=len(specs))
    vdir = os.path.join(os.path.abspath(out_dir), "videos")
    jobs = []
    for (split, cat), num, vs in zip(specs, names, seeds):
        name = f"toy_{int(num):05d}"
        jobs.append(dict(split=split, category=cat, seed=int(vs), name=name, size=tuple(size),
                         frames=tuple(_frames_range(frames)), fps=fps, sprite_scale=float(sprite_scale),
                         text_variants=int(text_variants), column_tint=int(column_tint),
                         frame_boxes=bool(frame_boxes), path=os.path.join(vdir, name + ".mp4")))
    return jobs


def manifest_paths(out_dir: str) -> dict:
    return {k: os.path.join(out_dir, v) for k, v in MANIFEST_NAMES.items()}


def generate_toy_world(out_dir: str, seed: int = 0, n_sft: int = 240, n_test: int = 60, n_rl: int = 240,
                       n_caption: int = 2000, size=(112, 112), frames=(48, 96), fps: float = 8,
                       sprite_scale: float = 1.0, categories=TOY_CATEGORIES,
                       text_variants: int = TEXT_VARIANTS, column_tint: int = 0, frame_boxes: bool = False,
                       workers: int | None = None, quiet: bool = False, overwrite: bool = False) -> dict:
    """Write the toy world: out_dir/videos/toy_NNNNN.mp4, the three manifests in the
    Vad-Reasoning schema and Toy-Caption.jsonl (rows source, video, anomaly_type, path,
    total_frames, caption: the captioning stage 0 of the toy pipeline, see CAPTION_PROMPT).
    Deterministic by seed: same arguments and out_dir -> byte-identical manifests and identical
    decoded frames (only the absolute `path` field depends on out_dir).
    out_dir must be new, empty or a toy world's (_claim_out_dir); overwrite: write among other files
    (still only the toy world's own names are replaced).
    Returns manifest_paths(out_dir) plus 'videos'."""
    t0 = time.time()
    # every parameter is checked here, before a worker starts (bad values: an InputError, no traceback)
    params = _world_params(dict(seed=seed, n_sft=n_sft, n_test=n_test, n_rl=n_rl, n_caption=n_caption, size=size,
                                frames=frames, fps=fps, sprite_scale=sprite_scale, categories=categories,
                                text_variants=text_variants, column_tint=column_tint, frame_boxes=frame_boxes))
    categories = tuple(params["categories"])
    out_dir = os.path.abspath(out_dir)
    _claim_out_dir(out_dir, overwrite)  # a folder of the user's is refused before anything is written
    os.makedirs(out_dir, exist_ok=True)
    writing = os.path.join(out_dir, WRITING_MARK)  # claims the folder until the stamp is written
    with open(writing, "w") as f:
        json.dump(dict(params=params), f)
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    paths = manifest_paths(out_dir)
    for p in list(paths.values()) + [os.path.join(out_dir, "toy_world.json")]:
        if os.path.exists(p):  # manifests last-written = complete; remove first so a crash leaves none
            os.remove(p)
    jobs = _toy_jobs(out_dir, seed, n_sft, n_test, n_rl, n_caption, size, frames, fps, sprite_scale, categories,
                     text_variants, column_tint, frame_boxes)
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            rows = pool.map(_toy_job, jobs, chunksize=4)  # ordered: determinism does not depend on workers
    else:
        rows = [_toy_job(j) for j in jobs]
    for key in ("sft_train", "sft_test", "rl", "caption"):
        part = [r for j, r in zip(jobs, rows) if j["split"] == key]
        tmp = paths[key] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, paths[key])
    with open(os.path.join(out_dir, "toy_world.json"), "w") as f:
        json.dump(dict(params=params), f, indent=1)
    os.remove(writing)
    if not quiet:
        print(f"toy world: {len(jobs)} videos ({n_sft} SFT-train, {n_test} SFT-test, {n_rl} RL, {n_caption} caption) "
              f"in {out_dir} "
              f"[{time.time() - t0:.1f} s]", file=sys.stderr)
    return dict(paths, videos=os.path.join(out_dir, "videos"))


def _check_categories(categories) -> tuple:
    cats = tuple(categories)
    bad = [c for c in cats if c not in TOY_CATEGORIES]
    if not cats or bad or len(set(cats)) != len(cats):
        raise vadr.InputError(f"toy categories must be distinct names from {TOY_CATEGORIES}, got {list(cats)}")
    return cats


def _check_text_variants(n) -> int:
    if isinstance(n, bool) or int(n) != n or not 1 <= int(n) <= TEXT_VARIANTS:
        raise vadr.InputError(f"text_variants must be an integer in [1, {TEXT_VARIANTS}], got {n!r}")
    return int(n)


def _world_params(a: dict) -> dict:
    """The parameters that define a toy world, as stored in toy_world.json (ensure_toy_world
    regenerates when they differ)."""
    return dict(version=TOY_VERSION, seed=int(a["seed"]), n_sft=int(a["n_sft"]), n_test=int(a["n_test"]),
                n_rl=int(a["n_rl"]), n_caption=int(a["n_caption"]), size=[int(a["size"][0]), int(a["size"][1])],
                frames=list(_frames_range(a["frames"])), fps=float(a["fps"]),
                sprite_scale=_check_sprite_scale(a["sprite_scale"]),
                categories=list(_check_categories(a["categories"])),
                text_variants=_check_text_variants(a["text_variants"]),
                column_tint=_check_column_tint(a["column_tint"]), frame_boxes=bool(a["frame_boxes"]))


WRITING_MARK = "toy_world.writing"  # generate_toy_world's claim on its folder while it writes


def _read_stamp(out_dir: str) -> dict | None:
    """The params of out_dir/toy_world.json, or None where there is no toy world's stamp (missing,
    unreadable, corrupt, or some other JSON)."""
    try:
        with open(os.path.join(out_dir, "toy_world.json"), encoding="utf-8") as f:
            params = json.load(f)["params"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return params if isinstance(params, dict) else None


def _claim_out_dir(out_dir: str, overwrite: bool):
    """Refuse (vadr.InputError, one line) a folder the toy world may not write into: a file, an
    unwritable path, or a folder that holds files no toy world wrote (no toy_world.json stamp, nor
    the mark of a toy world being written), such as a user's released manifests, unless overwrite.
    Even then only the toy world's own names are replaced, and none of them may be a folder (or
    videos/ a file): those are never deleted."""
    scoring.check_writable(out_dir, "--out", "python -m extras.toy", is_dir=True)
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    ours = _read_stamp(out_dir) is not None or os.path.isfile(os.path.join(out_dir, WRITING_MARK))
    if names and not ours and not overwrite:
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise vadr.InputError(f"{out_dir} holds files that no toy world wrote ({shown}; no toy world's "
                              "toy_world.json): pass a new or empty --out, or write the toy world among them with "
                              f"`python -m extras.toy --out {out_dir} --overwrite` (it replaces only its own names: "
                              f"videos/toy_NNNNN.mp4, {', '.join(MANIFEST_NAMES.values())}, toy_world.json)")
    for name in list(MANIFEST_NAMES.values()) + ["toy_world.json", WRITING_MARK, "videos"]:
        path = os.path.join(out_dir, name)
        if os.path.lexists(path) and (name == "videos") != os.path.isdir(path):
            want = "a folder" if name == "videos" else "a file"
            raise vadr.InputError(f"{path}: the toy world writes {want} of this name and deletes nothing else; "
                                  "move it away or pass another --out")


def ensure_toy_world(out_dir: str, **kw) -> dict:
    """Generate the toy world into out_dir unless it is already there with the same parameters
    (toy_world.json). kw: generate_toy_world's arguments. Under torchrun call it on rank 0 only,
    then barrier."""
    args = dict(TOY_DEFAULTS, **{k: v for k, v in kw.items() if k not in ("workers", "quiet")})
    want = _world_params(args)
    stamp = os.path.join(out_dir, "toy_world.json")
    paths = manifest_paths(os.path.abspath(out_dir))
    if os.path.isfile(stamp) and all(os.path.isfile(p) for p in paths.values()):
        if _read_stamp(out_dir) == want:
            return dict(paths, videos=os.path.join(os.path.abspath(out_dir), "videos"))
        print(f"{out_dir}: toy world parameters differ from the request; regenerating", file=sys.stderr)
    return generate_toy_world(out_dir, **dict(args, **{k: kw[k] for k in ("workers", "quiet") if k in kw}))


def toy_corpus(out_dir: str) -> list[str]:
    """All think and answer strings of the toy SFT-train manifest and the captions (to train the
    toy tokenizer)."""
    return manifest_texts([p for k, p in manifest_paths(out_dir).items() if k in ("sft_train", "caption")])


def manifest_texts(paths: list[str]) -> list[str]:
    """The text fields (think, answer, caption) of every row of these manifests, in order: the
    corpus the toy tokenizer is trained on. A missing file is an error."""
    out = []
    for p in paths:
        kind = "caption" if os.path.basename(p) == MANIFEST_NAMES["caption"] else "sft"
        out += row_texts(data.read_manifest(p, kind, check_videos=False))
    return out


def row_texts(rows: list[dict]) -> list[str]:
    """The text fields (think, answer, caption) of manifest rows, in order."""
    return [r[k] for r in rows for k in ("think", "answer", "caption") if k in r]


def toy_tokenizer_corpus(args, rows):
    """The texts the toy tokenizer is trained on (--tokenizer-corpus's manifests, else the rows'
    own); None for a real model, whose tokenizer is its own."""
    if args.model != "toy":
        return None
    if args.tokenizer_corpus:
        return manifest_texts(args.tokenizer_corpus)
    return row_texts(rows)


# ---- 6. The command line: generate a world, preview a video -------------------------------------

# The command line's bounds on its numbers (the functions above take whatever size a test needs):
# a mistyped value fails in one line before anything is written, not after filling memory or disk.
MAX_SPLIT = 100_000        # videos per split
MAX_SIDE = 1024            # pixels per frame side
MAX_FRAMES = 2048          # frames per video
MAX_VIDEO_BYTES = 2 ** 30  # one rendered video, (T, H, W, 3) uint8, in a worker's memory
UNREADABLE_WIDTHS = (48, 72)  # decord.VideoReader gives 4 channels for these (every H 48-128 measured)


def _check_numbers(a, prog: str):
    """Every numeric flag of `python -m extras.toy` and `preview` (a: their argparse.Namespace),
    before anything is rendered or written -> vadr.InputError naming the flag. sprite_scale and
    column_tint are checked where they are used (_world_params, render_toy_video); caption-check's
    --frames by _cmd_caption_check."""
    def bad(flag, value, why):
        value = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        raise vadr.InputError(f"{prog}: {flag} {value}: {why}")

    if getattr(a, "seed", None) is not None and a.seed < 0:
        bad("--seed", a.seed, "seeds are >= 0")
    for dest in ("n_sft", "n_test", "n_rl", "n_caption"):
        v = getattr(a, dest, None)
        if dest == "n_caption" and v == 0:  # no caption split: the default (the base is shipped)
            continue
        if v is not None and not 2 <= v <= MAX_SPLIT:
            bad("--" + dest.replace("_", "-"), v,
                f"each split holds a normal and an abnormal video: 2 to {MAX_SPLIT}"
                + (" (or 0 for none)" if dest == "n_caption" else ""))
    if getattr(a, "size", None) is not None:
        H, W = a.size
        if H % 2 or W % 2 or not (48 <= H <= MAX_SIDE and 48 <= W <= MAX_SIDE):
            bad("--size", a.size, f"H W are even numbers of pixels from 48 to {MAX_SIDE} (H.264 yuv420p)")
        if hasattr(a, "n_sft") and W in UNREADABLE_WIDTHS:  # a world's videos are read back by every script
            bad("--size", a.size, f"decord 0.6 cannot read back frames {W} pixels wide (measured: of the even widths "
                f"from 48 to {MAX_SIDE}, {' and '.join(map(str, UNREADABLE_WIDTHS))} fail); pass another W")
    if hasattr(a, "size") and getattr(a, "frames", None) is not None:  # a world's or a preview's lengths
        if len(a.frames) > 2:
            bad("--frames", a.frames, "one length, or LO HI for a random length per video")
        lo, hi = a.frames[0], a.frames[-1]
        if not 16 <= lo <= hi <= MAX_FRAMES:
            bad("--frames", a.frames, f"16 <= LO <= HI <= {MAX_FRAMES} (16 frames are sampled per video)")
        if hi * a.size[0] * a.size[1] * 3 > MAX_VIDEO_BYTES:
            gib = hi * a.size[0] * a.size[1] * 3 / 2 ** 30
            bad("--frames", a.frames, f"{hi} frames of {a.size[0]} x {a.size[1]} take {gib:.1f} GiB to render, "
                "more than 1 GiB: fewer or smaller frames")
    if getattr(a, "fps", None) is not None and not 1 <= a.fps <= 240:
        bad("--fps", a.fps, "frames per second in [1, 240]")
    if getattr(a, "workers", None) is not None and not 1 <= a.workers <= 64:
        bad("--workers", a.workers, "processes: 1 to 64 (leave it out for the CPU count, at most 8)")
    if getattr(a, "num_frames", None) is not None and not 1 <= a.num_frames <= 64:
        bad("--num-frames", a.num_frames, "frames in the sheet: 1 to 64")
    if getattr(a, "text_variants", None) is not None:
        _check_text_variants(a.text_variants)


def _cmd_toy(a):
    _check_numbers(a, "python -m extras.toy")
    if not a.out.strip():
        raise vadr.InputError(f"python -m extras.toy: --out {a.out!r}: pass a folder")
    generate_toy_world(a.out, seed=a.seed, n_sft=a.n_sft, n_test=a.n_test, n_rl=a.n_rl, n_caption=a.n_caption,
                       size=tuple(a.size),
                       frames=tuple(a.frames), fps=a.fps, sprite_scale=a.sprite_scale,
                       categories=tuple(a.categories), text_variants=a.text_variants,
                       column_tint=a.column_tint, workers=a.workers, overwrite=a.overwrite)
    counts = dict(sft_train=a.n_sft, sft_test=a.n_test, rl=a.n_rl, caption=a.n_caption)
    for key, p in manifest_paths(a.out).items():
        if not counts[key]:  # an empty split (--n-caption 0, the default): its manifest is empty
            continue
        rows = data.read_manifest(p, {"rl": "rl", "caption": "caption"}.get(key, "sft"))
        c = Counter(r["label"] for r in rows)
        print(f"{p}: {len(rows)} rows ({c['Abnormal']} abnormal, {c['Normal']} normal)")
        if key == "sft_train":
            print(f"  reasoning length ranges (words): {data.length_ranges(rows)}")


def _cmd_preview(a):
    _check_numbers(a, "python -m extras.toy preview")
    scoring.check_output("python -m extras.toy preview", "--out", a.out, {"--video": a.video})
    if a.video:
        v = vadr.read_video(a.video, a.num_frames)
        sheet = report.contact_sheet(v["frames"], list(range(len(v["frames"]))))
        print(f"{a.video}: {v['total_frames']} frames at {v['fps']:.2f} fps")
    else:
        frames, meta = render_toy_video(a.seed, a.category, tuple(a.size), tuple(a.frames), a.fps,
                                        draw_event=not a.counterfactual, sprite_scale=a.sprite_scale,
                                        column_tint=a.column_tint)
        idx = vadr.sample_frame_indices(len(frames), a.num_frames)
        sheet = report.contact_sheet(frames, idx, meta["start"], meta["end"], meta["bbox"])
        # a counterfactual draws no event, so there is no box for the texts to describe
        think, answer = ("(counterfactual: the event is not drawn, no texts)", "") if meta["bbox"] is None \
            and meta["category"] is not None else toy_texts(meta, np.random.default_rng([a.seed, 7]), a.text_variants)
        print(f"{meta['category']}: T={meta['total_frames']} start={meta['start']} end={meta['end']} "
              f"bbox={meta['bbox']}\n{think}\n{answer}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    report.write_png(a.out, sheet)
    print(f"wrote {a.out}")


def _world_parser() -> argparse.ArgumentParser:
    t = argparse.ArgumentParser(prog="python -m extras.toy",
                                description="Generate the toy anomaly world (videos + Vad-Reasoning "
                                            "manifests). `python -m extras.toy preview --help`: the preview.")
    t.add_argument("--out", required=True, help="output folder (videos/ and the .jsonl manifests)")
    t.add_argument("--seed", type=int, default=TOY_DEFAULTS["seed"], help="master seed (same seed -> same data)")
    t.add_argument("--n-sft", type=int, default=TOY_DEFAULTS["n_sft"], help="SFT-train videos (half abnormal)")
    t.add_argument("--n-test", type=int, default=TOY_DEFAULTS["n_test"], help="SFT-test videos (half abnormal)")
    t.add_argument("--n-rl", type=int, default=TOY_DEFAULTS["n_rl"], help="RL videos, weak labels (half abnormal)")
    t.add_argument("--n-caption", type=int, default=TOY_DEFAULTS["n_caption"],
                   help="captioned videos for the toy model's stage 0 (half with an event)")
    t.add_argument("--size", type=int, nargs=2, default=TOY_DEFAULTS["size"], metavar=("H", "W"),
                   help="frame height and width in pixels (even)")
    t.add_argument("--frames", type=int, nargs="+", default=TOY_DEFAULTS["frames"], metavar="F",
                   help="frames per video: one number, or LO HI for a per-video random length (>= 16)")
    t.add_argument("--fps", type=float, default=TOY_DEFAULTS["fps"], help="frame rate written to the files")
    t.add_argument("--sprite-scale", type=float, default=TOY_DEFAULTS["sprite_scale"],
                   help="draw people, cars and events this many times larger, 0.5-4 (event salience; "
                        "docs/toy-world.md)")
    t.add_argument("--categories", nargs="+", default=list(TOY_DEFAULTS["categories"]), choices=TOY_CATEGORIES,
                   metavar="CATEGORY", help=f"the anomaly categories the world uses, any of {TOY_CATEGORIES} "
                                            f"(default: {' '.join(TOY_DEFAULTS['categories'])})")
    t.add_argument("--text-variants", type=int, default=TOY_DEFAULTS["text_variants"],
                   help=f"options each P2C-CoT text slot (step sentences, answer layout, what/where/why/how) "
                        f"is drawn from, 1-{TEXT_VARIANTS} (1: the text follows from the rendered facts alone; "
                        f"docs/toy-world.md)")
    t.add_argument("--column-tint", type=int, default=TOY_DEFAULTS["column_tint"],
                   help="fixed scenery: add this much red at the left edge and blue at the right of every "
                        "frame, 0-100, so that a patch's colour tells its column (0: off; docs/toy-world.md)")
    t.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    t.add_argument("--overwrite", action="store_true",
                   help="write into an --out that holds files no toy world wrote (only the toy world's own "
                        "names are replaced: videos/toy_NNNNN.mp4, the manifests, toy_world.json)")
    return t


def _preview_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m extras.toy preview",
                                description="Write a PNG of 16 sampled frames of a toy video (or of --video).")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="toy video seed")
    p.add_argument("--category", default=None, choices=TOY_CATEGORIES, help="toy anomaly (default: normal)")
    p.add_argument("--size", type=int, nargs=2, default=TOY_DEFAULTS["size"], metavar=("H", "W"), help="frame size")
    p.add_argument("--frames", type=int, nargs="+", default=TOY_DEFAULTS["frames"], help="length or LO HI")
    p.add_argument("--fps", type=float, default=TOY_DEFAULTS["fps"], help="frame rate")
    p.add_argument("--sprite-scale", type=float, default=TOY_DEFAULTS["sprite_scale"], help="sprite size factor")
    p.add_argument("--text-variants", type=int, default=TOY_DEFAULTS["text_variants"],
                   help=f"options per P2C-CoT text slot to draw from, 1-{TEXT_VARIANTS}")
    p.add_argument("--column-tint", type=int, default=TOY_DEFAULTS["column_tint"],
                   help="red at the left edge and blue at the right, 0-100 (the world flag)")
    p.add_argument("--num-frames", type=int, default=16, help="frames sampled into the sheet")
    p.add_argument("--counterfactual", action="store_true", help="render without the event's sprites")
    p.add_argument("--video", default=None, help="preview this video file instead of a toy render")
    return p


def _caption_check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m extras.toy caption-check",
                                description="Caption an SFT manifest's videos with a stage-0 model and "
                                            "score 'the caption opens with an event' against the labels.")
    p.add_argument("--model", required=True, help="stage-0 run or checkpoint directory (runs/toy/base)")
    p.add_argument("--data", default="data/toy/Vad-Reasoning-SFT-test.jsonl", help="SFT manifest (labels)")
    p.add_argument("--video-root", default=None, help="folder the manifest's video paths are under")
    p.add_argument("--frames", type=int, default=16, help="frames sampled per video (stage 0's: the toy preset's)")
    p.add_argument("--json", default=None, help="also write the result here as JSON")
    return p


def _cmd_caption_check(a):
    if not 2 <= a.frames <= MAX_FRAMES:  # every flag before the model loads
        raise vadr.InputError(f"caption-check: --frames must be >= 2 (Qwen2.5-VL's temporal patch) and at most "
                              f"{MAX_FRAMES} (the longest toy video), got {a.frames}")
    for flag, path in (("--model", a.model), ("--data", a.data)):
        if not os.path.exists(path):
            raise vadr.InputError(f"caption-check: {flag} {path} does not exist (a stage-0 run such as "
                                  f"runs/toy/base, and an SFT manifest with labels)")
    if not os.path.isdir(a.model):
        raise vadr.InputError(f"caption-check: --model {a.model} is a file; pass a stage-0 run or checkpoint "
                              "folder such as runs/toy/base")
    if os.path.isdir(a.data):
        raise vadr.InputError(f"caption-check: --data {a.data} is a folder; pass an SFT manifest (.jsonl)")
    if a.json:
        if os.path.realpath(a.json).startswith(os.path.realpath(a.model) + os.sep):
            raise vadr.InputError(f"caption-check: --json {a.json} is inside --model {a.model}; pass a file "
                                  "outside the checkpoint")
        scoring.check_output("caption-check", "--json", a.json, {"--data": a.data})
    res = caption_check(a.model, a.data, a.video_root, frames=a.frames)
    cats = ", ".join(f"{c} {v:.3f}" for c, v in res["per_category"].items())
    print(f"stage-0 caption check on {a.data} ({res['n']} videos): accuracy {res['accuracy']:.3f} "
          f"(events seen {res['tpr']:.3f}, quiet videos called quiet {res['tnr']:.3f}; {cats})")
    if a.json:  # in one step: a killed check leaves no half file for make to take as done
        checkpoint.atomic_write(a.json, json.dumps(dict(res, model=a.model, data=a.data), indent=1))


def main(argv=None):
    """`python -m extras.toy --out DIR [knobs]` generates a world; `... preview [flags]` a PNG;
    `... caption-check --model RUN` scores a stage-0 captioner's event detection."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["preview"]:
        _cmd_preview(_preview_parser().parse_args(argv[1:]))
    elif argv[:1] == ["caption-check"]:
        _cmd_caption_check(_caption_check_parser().parse_args(argv[1:]))
    else:
        _cmd_toy(_world_parser().parse_args(argv))


if __name__ == "__main__":
    vadr.run_main(main)


def use_toy_world(args, manifest: str, out_dir: str = "data/toy"):
    """The scripts' no-argument default: make the toy world (rank 0, once) and point args.data at
    its `manifest` (a MANIFEST_NAMES key) and args.video_root at its videos, unless given."""
    if vadr.is_main():
        ensure_toy_world(out_dir)
    vadr.barrier()
    args.data = manifest_paths(out_dir)[manifest]
    args.video_root = args.video_root or os.path.join(out_dir, "videos")
