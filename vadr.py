"""vadr.py -- the model side of Vad-R1: what the model sees and what it says.

One video from its file to the model's answer, in one file:
  1. the Perception-to-Cognition chain-of-thought prompt (paper Sec. 3.1, App. C.1, Fig. 9);
  2. the completion parser, the format check and the one weak-label rule;
  3. frame sampling with decord: N frames at linspace over a *kept window*, so that AVA-GRPO's
     trimmed videos (Algorithm 1) re-sample N frames from what remains (App. C.3);
  4. Qwen2.5-VL's video front end in plain torch (smart_resize, bicubic antialiased resize, CLIP
     normalisation, patchify), bit-exact against the reference processor (tests/golden);
  5. the chat layout with <|video_pad|> placeholders (docs/paper-vs-authors.md s.4);
  6. model loading: a local checkpoint directory, or `toy`, a tiny random Qwen2.5-VL with a
     locally trained byte-level BPE tokenizer, so the whole method runs on a laptop CPU;
  7. the small distributed block (one process, DDP or FSDP2 under torchrun) and the training
     helpers both scripts share.
This file imports no other project file.

Run it:
    python vadr.py                       # the toy model, one forward on a rendered toy video
    python vadr.py --model /path/to/Qwen2.5-VL-7B-Instruct --video clip.mp4

Departures from the paper / the authors' scripts (docs/paper-vs-authors.md):
  * Frame indices are rounded from linspace(0, K-1, N) over the K kept frames; the authors'
    evaluation uses linspace(0, total-1, 16) over the whole video, the case keep=[(0, 1)].
  * The completion ends with <|im_end|>; the "\n" the chat template writes after it is not part
    of the target (generation stops at <|im_end|>, so it would never be sampled).
  * Batches are LEFT-padded everywhere (training, generation, scoring): a completion then starts
    at the same column in every row, which keeps sampling and log-prob gathering simple.
  * <which> is read with one strict rule (label_from_which): 'Normal', 'Abnormal' or a known
    category; anything else is no label. The authors' reward is an exact match on the binary
    label; eval.py also reports their looser evaluation rule (docs/paper-vs-authors.md s.3).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import re
import shutil
import time
from typing import Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

class InputError(ValueError):
    """Bad input from the user (a manifest row, a predictions line, a flag): the message names the
    file and line. Entry points print it without a traceback (run_main); a bug still gets one."""


def run_main(main, argv=None):
    """Run a script's main(); an InputError ends the process with its message and exit code 1.
    A process-group member (torchrun) ends with os._exit after flushing stdio, skipping the
    interpreter teardown that gloo's worker threads can abort (docs/engineering-notes.md)."""
    import gc
    import sys
    try:
        rc = main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if _STARTED_PROCESS_GROUP:
        code = rc if isinstance(rc, int) else 0
        gc.collect()  # DataLoader iterators caught in reference cycles shut their workers down now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return rc


# ---- 1. Categories and the P2C-CoT prompt (paper Sec. 3.1, App. C.1 / Fig. 9) --------------------

# The paper's 37 fine-grained categories (docs/paper-vs-authors.md s.1).
CATEGORIES = [
    "Abuse", "Air Pollution", "Animals Hurt Human", "Animals Obstructing Traffic",
    "Animals in Urban Areas", "Arson", "Avalanche and Landslide", "Building Collapse",
    "Dangerous Items", "Drowning", "Electrical Failures", "Explosion", "Falling",
    "Falling Objects", "Fighting", "Fire", "Flooding or Tsunami", "Hurt", "Illegal Lane Changing",
    "Illegal Parking", "Obstacles on Railway", "Obstacles on Road", "Obstructing Tactile Paving",
    "Parade", "Pedestrian Jaywalking", "Red Light Violation", "Riot", "Robbery", "Sandstorm",
    "Shooting", "Stealing", "Tornado", "Traffic Accidents", "Tread", "Vandalism",
    "Water Pollution", "Wrong-Way Driving",
]
assert len(CATEGORIES) == 37

# The released files spell five categories two ways (docs/paper-vs-authors.md s.1); keys are
# compared after _category_key() (zero-width characters removed, case and spaces folded).
_CATEGORY_VARIANTS = {
    "animal hurts human": "Animals Hurt Human",
    "drown": "Drowning",
    "red lgiht violation": "Red Light Violation",
}


def _category_key(name: str) -> str:
    # zero-width characters (the released 'Avalanche and Landslide' carries one) count as a space,
    # then runs of whitespace collapse, so 'Avalanche\u200band' and 'Avalanche\u200b and' both match
    name = re.sub(r"[\u200b\u200c\u200d\u2060\ufeff]", " ", name)
    return " ".join(name.strip().lower().split())


_CATEGORY_LOOKUP = {_category_key(c): c for c in CATEGORIES}
_CATEGORY_LOOKUP.update(_CATEGORY_VARIANTS)


def normalize_category(name: str) -> str | None:
    """Map any spelling in the released files to one of the 37 categories; None if unknown.
    ('Falling objects' -> 'Falling Objects', 'Drown' -> 'Drowning', zero-width spaces dropped.)"""
    if not isinstance(name, str):
        return None
    return _CATEGORY_LOOKUP.get(_category_key(name))


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The three parts of App. C.1 (task, output specification, format with an example each), in our
# own words. The variants differ in <which>: the SFT data's category, or the binary label that
# RL's weak labels can check (docs/paper-vs-authors.md s.2).
_PROMPT_TASK = (
    "Task: watch the video and decide whether it contains an anomaly, an event that departs "
    "from what normally happens in this scene. Think before you answer: write your reasoning "
    "inside <think></think>, then your answer inside <answer></answer>."
)
_PROMPT_SPEC = (
    "Reasoning: if the video is abnormal, reason in four steps. <step1> global perception: "
    "describe the scene, the environment and the objects in it. </step1> <step2> local "
    "perception: describe the event that departs from the normal scene, what happens, when and "
    "where. </step2> <step3> shallow cognition: judge whether the event is abnormal and say "
    "which visual cues show it. </step3> <step4> deep cognition: reason about its causes, the "
    "rules or expectations it breaks, and its likely consequences. </step4> If the video is "
    "normal, reason in two steps: <step1> global perception </step1> <step2> why nothing in the "
    "video departs from normal activity. </step2>\n"
    "Answer: for an abnormal video give <which> the category </which>, <what> a one-sentence "
    "description of the event </what>, <when> [start, end] as fractions of the video length "
    "between 0 and 1 </when>, <where> where in the frame it happens </where>, <why> why it is "
    "abnormal </why> and <how> its possible impact </how>. For a normal video give only <which>, "
    "<what> and <why>."
)
_WHICH_FINE = ("In <which>, write Normal for a normal video, otherwise exactly one of these "
               "categories: " + ", ".join(CATEGORIES) + ".")
_WHICH_BINARY = "In <which>, write exactly Abnormal or Normal."
_EXAMPLE_ABNORMAL = (
    "<think><step1>A street with parked cars and people walking.</step1><step2>Near the middle of "
    "the video a man pushes another man to the ground on the left side.</step2><step3>Pushing "
    "someone down is violent, so this is abnormal.</step3><step4>A quarrel may have escalated; "
    "the fallen man could be hurt.</step4></think>\n<answer>The video shows <which>{which}</which> "
    "where <what>a man knocks another man down</what> during <when>[0.4, 0.7]</when> at "
    "<where>the left side of the street</where>. It is abnormal because <why>it is a violent "
    "attack</why>, and <how>the victim may be injured</how>.</answer>"
)
_EXAMPLE_NORMAL = (
    "<think><step1>A park path with a few people strolling.</step1><step2>Everyone walks at an "
    "ordinary pace and nothing unusual happens.</step2></think>\n<answer>The video is "
    "<which>Normal</which>: <what>people stroll along a park path</what>. It is normal because "
    "<why>all activity is ordinary and nothing is disrupted</why>.</answer>"
)


def build_prompt(variant: str = "fine") -> str:
    """The P2C-CoT user prompt (App. C.1). variant 'fine': <which> holds one of the 37
    categories (SFT data, evaluation); 'binary': <which> holds Abnormal or Normal (RL)."""
    if variant not in ("fine", "binary"):
        raise ValueError(f"prompt variant must be 'fine' or 'binary', got {variant!r}")
    which_rule = _WHICH_FINE if variant == "fine" else _WHICH_BINARY
    example_which = "Fighting" if variant == "fine" else "Abnormal"
    fmt = ("Format: use the tags exactly as below, each opened and closed once, in this order.\n"
           "Abnormal example:\n" + _EXAMPLE_ABNORMAL.format(which=example_which) +
           "\nNormal example:\n" + _EXAMPLE_NORMAL)
    return "\n".join([_PROMPT_TASK, _PROMPT_SPEC, which_rule, fmt])


# ---- 2. Parsing, the format check and the label rule (docs/paper-vs-authors.md s.1-2) ------------

_TAGS = ("think", "answer", "step1", "step2", "step3", "step4", "which", "what", "when", "where",
         "why", "how")
_ANY_TAG = r"</?(?:think|answer|step[1-4]|which|what|when|where|why|how)>"
TAG_RE = re.compile(_ANY_TAG)  # the one tag pattern: parsing, validation, word counts
# Tag content: text holding no project tag (a tempered dot), so that `<step1>` used as a closing
# tag by mistake (SFT-train video 2088, docs/paper-vs-authors.md s.1) breaks the match.
_C = r"(?:(?!" + _ANY_TAG + r").)*?"


def _layout(steps: int, answer_tags: tuple[str, ...]) -> re.Pattern:
    think = r"<think>\s*" + r"\s*".join(rf"<step{i}>{_C}</step{i}>" for i in range(1, steps + 1)) \
        + r"\s*</think>"
    tags = _C.join(rf"<{t}>{_C}</{t}>" for t in answer_tags)
    answer = r"<answer>" + _C + tags + _C + r"</answer>"
    return re.compile(r"\s*" + think + r"\s*" + answer + r"\s*", re.DOTALL)


# The two layouts of the released data: 4 steps + six answer tags (abnormal), 2 steps + which,
# what, why (normal). Between answer tags any tag-free text is allowed ("It is normal because
# <why>..</why>", paper Fig. 8); between think blocks only whitespace.
_ABNORMAL_LAYOUT = _layout(4, ("which", "what", "when", "where", "why", "how"))
_NORMAL_LAYOUT = _layout(2, ("which", "what", "why"))


def check_format(text: str) -> str | None:
    """'abnormal' if the whole text matches the 4-step layout, 'normal' for the 2-step layout,
    None otherwise (the format reward of Table 7 is 1 exactly when this is not None)."""
    if not isinstance(text, str):
        return None
    if _ABNORMAL_LAYOUT.fullmatch(text):
        return "abnormal"
    if _NORMAL_LAYOUT.fullmatch(text):
        return "normal"
    return None


_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_WHEN = re.compile(r"\[\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\]")


def _first_tag(text: str, tag: str) -> str | None:
    """Inner text of the first <tag>..</tag>; str.find keeps it linear in len(text)."""
    i = text.find(f"<{tag}>")
    j = text.find(f"</{tag}>", i + len(tag) + 2) if i >= 0 else -1
    return text[i + len(tag) + 2:j].strip() if j >= 0 else None


def parse_when(s: str | None) -> tuple[float, float] | None:
    """'[0.25, 0.5]' -> (0.25, 0.5); also '[.3, 1]'. Returned as written, even reversed
    (validity is for the caller to judge: rewards.verification_trim, eval's IoU rules)."""
    if not s:
        return None
    m = _WHEN.search(s)
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a, b


def label_from_which(which: str | None) -> str | None:
    """The one weak-label rule (training's rewards, eval's strict mode, manifest checks).
    'Normal' -> Normal; 'Abnormal' or one of the 37 categories (any released spelling, so the
    fine-grained prompt works) -> Abnormal; anything else ('normal', 'Normal.', 'Unknown',
    'Abnormal or Normal', empty, not a string) -> None, which earns no accuracy reward. The
    authors' reward is an exact string match (docs/paper-vs-authors.md s.2)."""
    if not isinstance(which, str):
        return None
    w = which.strip()
    if w == "Normal":
        return "Normal"
    if w == "Abnormal" or normalize_category(w) is not None:
        return "Abnormal"
    return None


def weak_label(text) -> str | None:
    """A manifest's weak label (RL `solution` or `anomaly_type`) -> 'Abnormal' / 'Normal', or None.
    Tags such as <answer> around it are dropped; case and a trailing period are forgiven here
    (a manifest is checked once, a model's output is not)."""
    if not isinstance(text, str):
        return None
    w = TAG_RE.sub(" ", text).strip().rstrip(".").strip()
    return label_from_which({"normal": "Normal", "abnormal": "Abnormal"}.get(w.lower(), w))


def strip_tags(text: str | None) -> str:
    """Each project tag -> one space (App. C.2's length counts words of the text without tags)."""
    return TAG_RE.sub(" ", text or "")


def count_words(text: str | None) -> int:
    """Words of `text` without its tags, split on whitespace: the one word count behind App. C.2's
    length ranges, used for SFT statistics and for completions alike."""
    return len(strip_tags(text).split())


def parse_completion(text) -> dict:
    """A completion's parts; never raises, whatever the input. -> dict(think, steps, answer,
    which, what, when, where, why, how, label): the first <think>/<answer> block's text (None if
    absent or unclosed); the step texts inside think (else anywhere), in order; the first of each
    answer tag inside the answer (else anywhere); when as (s, e) floats as written, or None;
    label = label_from_which(which)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    think = _first_tag(text, "think")
    answer = _first_tag(text, "answer")
    scope_t = think if think is not None else text
    steps = []
    for i in range(1, 5):
        s = _first_tag(scope_t, f"step{i}")
        if s is not None:
            steps.append(s)
    scope_a = answer if answer is not None else text
    out = dict(think=think, steps=steps, answer=answer)
    for t in ("which", "what", "when", "where", "why", "how"):
        out[t] = _first_tag(scope_a, t)
    out["when"] = parse_when(out["when"])
    out["label"] = label_from_which(out["which"])
    return out


# ---- 3. Reading a video (decord), uniform sampling over a kept window ----------------------------

def kept_frames(total_frames: int, keep=((0.0, 1.0),)) -> np.ndarray:
    """Frame indices kept by a list of (a, b) fraction windows: frame i is kept when
    a*total <= i < b*total for some window (b = 1 keeps the last frame).
    A trim "remove [s, e]" is keep=[(0, s), (e, 1)]; "drop the head" is keep=[(0.3, 1)]."""
    if total_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got total_frames={total_frames}")
    parts = []
    for a, b in keep:
        if not (0.0 <= a <= b <= 1.0):
            raise ValueError(f"kept window ({a}, {b}) is not inside [0, 1] with a <= b")
        lo, hi = math.ceil(a * total_frames - 1e-9), math.ceil(b * total_frames - 1e-9)
        parts.append(np.arange(lo, hi, dtype=np.int64))
    idx = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # sorted, no repeats
    return idx


def sample_frame_indices(total_frames: int, num_frames: int = 16, keep=((0.0, 1.0),)) -> np.ndarray:
    """N frame indices at linspace(0, K-1, N) over the K kept frames (paper App. C.3: 16 frames;
    docs/paper-vs-authors.md s.3: linspace(0, total-1, 16) over a whole video). Raises if the kept
    window holds no frame, so a degenerate trim is an error, never a silent empty video."""
    kept = kept_frames(total_frames, keep)  # (K,)
    if len(kept) == 0:
        raise ValueError(f"the kept windows {list(keep)} leave no frame of a "
                         f"{total_frames}-frame video")
    pos = np.linspace(0, len(kept) - 1, num_frames).round().astype(np.int64)  # (N,) into kept
    return kept[pos]  # (N,) frame indices


def _open_video(path: str):
    import decord  # imported here so that modules that never read video do not need it
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except decord.DECORDError as e:  # a corrupt or unsupported file: name it, do not traceback deep
        raise RuntimeError(f"cannot decode video {path}: {e}") from e


def count_frames(path: str) -> int:
    """Number of decodable frames (RL rows carry no total_frames; the trims need it)."""
    return len(_open_video(path))


def read_video(path: str, num_frames: int = 16, keep=None) -> dict:
    """Decode N uniformly sampled frames with decord.

    Returns dict(frames uint8 (N, H, W, 3), indices (N,), timestamps (N,) seconds, fps (native),
    sampled_fps, total_frames). sampled_fps = N / K * fps for K kept frames: the frame rate the
    model sees; second_per_grid_ts = temporal_patch_size / sampled_fps (docs/paper-vs-authors.md
    s.4).
    """
    keep = ((0.0, 1.0),) if keep is None else tuple(keep)
    vr = _open_video(path)
    total = len(vr)
    fps = float(vr.get_avg_fps()) or 1.0
    idx = sample_frame_indices(total, num_frames, keep)  # (N,)
    frames = vr.get_batch(idx.tolist()).asnumpy()  # (N, H, W, 3) uint8
    n_kept = len(kept_frames(total, keep))
    return dict(frames=frames, indices=idx, timestamps=idx / fps, fps=fps,
                sampled_fps=num_frames / n_kept * fps, total_frames=total)


# ---- 4. Qwen2.5-VL video preprocessing from scratch (bit-exact vs the reference, tests/golden) ---

PATCH_SIZE = 14            # ViT patch side
TEMPORAL_PATCH_SIZE = 2    # frames per 3D patch
MERGE_SIZE = 2             # 2x2 patches merged into one LLM token
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: resized sides are multiples of this
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 128 * 28 * 28  # paper App. C.3 / D.2


def smart_resize(height: int, width: int, factor: int = IMAGE_FACTOR,
                 min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Qwen2-VL's resize rule: both sides multiples of `factor`, area within
    [min_pixels, max_pixels], aspect ratio kept as closely as rounding allows."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:    # too big: shrink by sqrt of the area ratio, round down
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:  # too small: grow, round up
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def preprocess_frames(frames, min_pixels: int = DEFAULT_MIN_PIXELS,
                      max_pixels: int = DEFAULT_MAX_PIXELS):
    """uint8 frames (T, H, W, 3) -> (pixel_values_videos float32 (N, 1176), video_grid_thw (1, 3)).

    N = grid_t * grid_h * grid_w 3D patches of 3 x 2 x 14 x 14 = 1176 values each, in the order
    the vision tower expects (2x2 merge groups contiguous). Exactness (tests/golden):
    resize the uint8 tensor itself (bicubic, antialias), then rescale and normalise in ONE step
    (x - 255*mean) / (255*std) in float32.
    """
    x = torch.as_tensor(np.asarray(frames))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    T, H, W, _ = x.shape
    rh, rw = smart_resize(H, W, IMAGE_FACTOR, min_pixels, max_pixels)
    x = x.permute(0, 3, 1, 2).contiguous()  # (T, 3, H, W) uint8
    if (rh, rw) != (H, W):
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    x = (x.to(torch.float32) - mean) / std  # (T, 3, rh, rw) float32, fused rescale+normalise
    if T % TEMPORAL_PATCH_SIZE:  # pad time to a multiple of 2 by repeating the last frame
        pad = TEMPORAL_PATCH_SIZE - T % TEMPORAL_PATCH_SIZE
        x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)], dim=0)
    gt, gh, gw = x.shape[0] // TEMPORAL_PATCH_SIZE, rh // PATCH_SIZE, rw // PATCH_SIZE
    m, p, tp = MERGE_SIZE, PATCH_SIZE, TEMPORAL_PATCH_SIZE
    x = x.view(gt, tp, 3, gh // m, m, p, gw // m, m, p)  # (gt, tp, C, gh/m, m, p, gw/m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)            # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    pixel_values = x.reshape(gt * gh * gw, 3 * tp * p * p)  # (N, 1176)
    grid_thw = torch.tensor([[gt, gh, gw]], dtype=torch.int64)  # (1, 3)
    return pixel_values, grid_thw


def video_token_count(video_grid_thw) -> int:
    """Number of <|video_pad|> tokens for one video: grid_t*grid_h*grid_w / merge_size**2."""
    t, h, w = (int(v) for v in torch.as_tensor(video_grid_thw).reshape(-1)[:3])
    return t * h * w // (MERGE_SIZE ** 2)


def encode_frames(frames, sampled_fps: float, min_pixels=DEFAULT_MIN_PIXELS,
                  max_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """Frames -> the three vision inputs of one video for the model's forward."""
    pv, thw = preprocess_frames(frames, min_pixels, max_pixels)
    # second_per_grid_ts: seconds spanned by one temporal patch (2 frames) -> mRoPE time ids.
    spg = torch.tensor([TEMPORAL_PATCH_SIZE / sampled_fps], dtype=torch.float32)  # (1,)
    return dict(pixel_values_videos=pv, video_grid_thw=thw, second_per_grid_ts=spg)


def encode_video(path: str, num_frames: int = 16, keep=None, min_pixels=DEFAULT_MIN_PIXELS,
                 max_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """read_video + preprocess_frames: dict(pixel_values_videos (N, 1176), video_grid_thw (1, 3),
    second_per_grid_ts (1,))."""
    v = read_video(path, num_frames, keep)
    return encode_frames(v["frames"], v["sampled_fps"], min_pixels, max_pixels)


def collate_videos(videos: list[dict]) -> dict:
    """Batch several videos of different sizes: patches are concatenated along dim 0 (the vision
    tower splits them back with video_grid_thw), one grid row and one time step per video."""
    return dict(
        # (sum N_i, 1176)
        pixel_values_videos=torch.cat([v["pixel_values_videos"] for v in videos], 0),
        video_grid_thw=torch.cat([v["video_grid_thw"] for v in videos], 0),           # (B, 3)
        second_per_grid_ts=torch.cat([v["second_per_grid_ts"] for v in videos], 0),   # (B,)
    )


# ---- 5. The chat layout (docs/paper-vs-authors.md s.4), without AutoProcessor --------------------

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>"]  # Qwen2.5-VL's, in Qwen's id order


def _tok_id(tokenizer, token: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (tokenizer.unk_token_id is not None and i == tokenizer.unk_token_id):
        raise ValueError(f"tokenizer has no {token} token: is it a Qwen2.5-VL tokenizer?")
    return int(i)


def end_token_ids(tokenizer) -> list[int]:
    """Ids that end a completion: <|im_end|> (end of turn) and <|endoftext|> (Qwen's pad/eos)."""
    return [_tok_id(tokenizer, "<|im_end|>"), _tok_id(tokenizer, "<|endoftext|>")]


def pad_token_id(tokenizer) -> int:
    return _tok_id(tokenizer, "<|endoftext|>")  # Qwen pads with <|endoftext|>


def chat_prompt_ids(tokenizer, prompt: str, n_video_tokens: int,
                    system: str = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """Token ids of
    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<|vision_start|><|video_pad|>*n
    <|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n
    Text pieces are tokenized separately around the placeholders; every boundary is a special
    token, where Qwen's pre-tokenizer splits anyway, so this equals tokenizing the whole string."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    tail = f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    return enc(head) + [_tok_id(tokenizer, "<|video_pad|>")] * n_video_tokens + enc(tail)


def build_chat_inputs(tokenizer, prompts: list[str], video_grid_thw,
                      system: str = DEFAULT_SYSTEM_PROMPT,
                      targets: list[str] | None = None) -> dict:
    """A LEFT-padded batch of chat inputs, one video per row.

    Returns input_ids (B, L), attention_mask (B, L), mm_token_type_ids (B, L) (2 on video
    placeholders, 0 elsewhere: transformers computes Qwen2.5-VL's 3D mRoPE positions only when
    it is given), and with targets also labels (B, L): -100 everywhere except the target tokens
    and the <|im_end|> that closes the assistant turn (SFT trains on the answer only).
    Left padding: every row's last prompt token sits in the last column, so generation appends
    completions at the same place for all rows; the attention mask hides the padding and
    get_rope_index skips it when it assigns positions.
    """
    grids = torch.as_tensor(video_grid_thw).reshape(-1, 3)
    if len(prompts) != grids.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but {grids.shape[0]} videos")
    if targets is not None and len(targets) != len(prompts):
        raise ValueError(f"{len(targets)} targets for {len(prompts)} prompts")
    video_id, pad_id = _tok_id(tokenizer, "<|video_pad|>"), pad_token_id(tokenizer)
    im_end = _tok_id(tokenizer, "<|im_end|>")
    rows, labels = [], []
    for i, prompt in enumerate(prompts):
        ids = chat_prompt_ids(tokenizer, prompt, video_token_count(grids[i]), system)
        lab = [-100] * len(ids)
        if targets is not None:
            t = tokenizer(targets[i], add_special_tokens=False)["input_ids"] + [im_end]
            ids, lab = ids + t, lab + t
        rows.append(ids)
        labels.append(lab)
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)      # (B, L)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)        # (B, L)
    label_t = torch.full((len(rows), L), -100, dtype=torch.long)          # (B, L)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, L - len(r):] = torch.tensor(r)
        attention_mask[i, L - len(r):] = 1
        label_t[i, L - len(r):] = torch.tensor(lab)
    out = dict(input_ids=input_ids, attention_mask=attention_mask,
               mm_token_type_ids=(input_ids == video_id).to(torch.int32) * 2)  # (B, L)
    if targets is not None:
        out["labels"] = label_t
    return out


# ---- 6. Models: a local checkpoint, or the toy preset --------------------------------------------

# The toy preset: a Qwen2.5-VL with the real architecture (window-attention ViT, 2x2 patch
# merger, mRoPE decoder) but tiny widths, so the whole method trains on a laptop CPU. Only sizes
# differ from Qwen2.5-VL-7B; the code path is the same.
TOY_TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[4, 6, 6]))  # sums to head_dim/2 = 16
TOY_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                  patch_size=14, temporal_patch_size=2, spatial_merge_size=2, tokens_per_second=2,
                  window_size=112, fullatt_block_indexes=[1])
TOY_VOCAB = 2048  # BPE vocabulary cap (byte-level BPE on the toy text stays below it)


def train_toy_tokenizer(corpus: Iterable[str], vocab_size: int = TOY_VOCAB):
    """A byte-level BPE tokenizer trained locally (tokenizers library) with Qwen's special tokens
    at the front, wrapped so that save_pretrained / AutoTokenizer round-trip it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = [build_prompt("fine"), build_prompt("binary"), DEFAULT_SYSTEM_PROMPT, *corpus]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], clean_up_tokenization_spaces=False,
        model_max_length=32768)


def toy_config(tokenizer):
    """Qwen2_5_VLConfig for the toy preset, with the special-token ids of `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    ids = {t: _tok_id(tokenizer, t) for t in SPECIAL_TOKENS}
    text = dict(TOY_TEXT, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(TOY_VISION), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a run directory's `latest` file names (the one copy of that rule), or None."""
    try:
        with open(os.path.join(run_dir, "latest")) as f:
            name = f.read().strip()
    except OSError:
        return None
    return os.path.join(run_dir, name) if name else None


def load_model(name_or_dir: str = "toy", dtype=None, device=None, corpus: list[str] | None = None,
               seed: int = 0):
    """-> (Qwen2_5_VLForConditionalGeneration, tokenizer).

    name_or_dir: a local Hugging Face checkpoint directory (e.g. Qwen2.5-VL-7B-Instruct, or one
    written by our scripts), or 'toy': a tiny random model (seeded) and a BPE tokenizer trained
    on `corpus` (the toy world's SFT text) plus the prompts. Nothing is downloaded, ever.
    """
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    dtype = dtype or torch.float32
    if name_or_dir == "toy":
        tokenizer = train_toy_tokenizer(corpus or [])
        config = toy_config(tokenizer)
        devnull = torch.random.fork_rng(devices=[])  # seeded init without disturbing global RNG
        with devnull:
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
        model.generation_config.eos_token_id = end_token_ids(tokenizer)
        model.generation_config.pad_token_id = pad_token_id(tokenizer)
        model.generation_config.bos_token_id = pad_token_id(tokenizer)
        model.to(dtype)
    else:
        if not os.path.isfile(os.path.join(name_or_dir, "config.json")):
            name_or_dir = latest_checkpoint(name_or_dir) or name_or_dir  # a run directory
        if not os.path.isdir(name_or_dir):
            raise FileNotFoundError(
                f"--model {name_or_dir!r} is neither 'toy' nor a local checkpoint directory "
                "(nothing is downloaded: point it at a directory holding config.json and weights)")
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_dir, dtype=dtype)
    tokenizer.padding_side = "left"  # documented in build_chat_inputs
    if device is not None:
        model.to(device)
    return model, tokenizer


# ---- 7. Distributed block: one process, DDP, or FSDP2 (torchrun), gloo on CPU and nccl on GPU ----
# All three entry points use exactly these few functions. Without torchrun (no RANK in the
# environment) everything is a single process and every helper degrades to a no-op.

_STARTED_PROCESS_GROUP = False  # set by setup_distributed, read by run_main


def setup_distributed(device: str | None = None) -> dict:
    """Initialise torch.distributed when launched by torchrun. Returns dict(rank, world_size,
    local_rank, device, distributed). nccl on CUDA, gloo on CPU. `device`: 'cpu', 'cuda' or
    None (cuda if available)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world, local = (int(os.environ.get(k, d)) for k, d in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    distributed = "RANK" in os.environ and world > 1
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
        global _STARTED_PROCESS_GROUP
        _STARTED_PROCESS_GROUP = True  # run_main ends this process with os._exit (see there)
    return dict(rank=rank, world_size=world, local_rank=local, device=dev, distributed=distributed)


def is_main() -> bool:
    """Rank 0 logs and saves."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(metrics: dict, device=None) -> dict:
    """Mean of each float over ranks (what rank 0 logs is the global value, not its shard's)."""
    if not dist.is_initialized() or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)  # (K,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def gather_objects(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_for_rank(items: list, rank: int, world: int) -> list:
    """Data strided by rank: rank r takes items r, r+W, r+2W, ..."""
    return items[rank::world]


def wrap_model(model, mode: str = "none", device=None, bf16: bool = False):
    """'none' (one process), 'ddp' (DistributedDataParallel) or 'fsdp' (FSDP2 fully_shard on every
    decoder layer and vision block, then the root: so that Qwen2.5-VL-7B trains full-parameter on
    4 x 80 GB). On GPU with bf16, FSDP2 keeps fp32 master weights and computes in bf16
    (MixedPrecisionPolicy); gradients are reduced in fp32."""
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [device.index] if device is not None and device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        for layer in model.model.language_model.layers:
            fully_shard(layer, mp_policy=mp)
        for block in model.model.visual.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"unknown parallel mode {mode!r}")


def unwrap(model):
    """The Qwen2_5_VLForConditionalGeneration inside a DDP wrapper (FSDP2 wraps in place)."""
    return getattr(model, "module", model)


def full_state_dict(model) -> dict:
    """The full (unsharded) model state dict on CPU. Under FSDP2 this is a collective: every rank
    must call it; rank 0 gets the tensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(unwrap(model),
                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# ---- 8. Training helpers both scripts share -----------------

def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos",
                    "video_grid_thw", "second_per_grid_ts")


def model_inputs(batch: dict) -> dict:
    """The tensors the Qwen2.5-VL forward takes; always with the vision inputs (never a text-only
    forward by accident: the placeholder tokens would then be embedded as plain tokens)."""
    missing = [k for k in MODEL_INPUT_KEYS if batch.get(k) is None]
    if missing:
        raise ValueError(f"model inputs lack {missing}")
    return {k: batch[k] for k in MODEL_INPUT_KEYS}


def _demo(argv=None):
    ap = argparse.ArgumentParser(description="One forward of a Qwen2.5-VL on one video.")
    ap.add_argument("--model", default="toy", help="'toy' or a local checkpoint directory")
    ap.add_argument("--video", default=None,
                    help="video file (default: the first video in data/toy/videos)")
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video (paper: 16)")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="max pixels per frame")
    args = ap.parse_args(argv)
    if args.video is None:
        root = "data/toy/videos"
        vids = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if not vids:
            raise InputError("no --video given and no toy world in data/toy: run "
                             "`python -m extras.toy --out data/toy` first, or pass --video FILE")
        args.video = os.path.join(root, vids[0])
    model, tok = load_model(args.model)
    v = read_video(args.video, args.frames)
    vid = encode_frames(v["frames"], v["sampled_fps"], max_pixels=args.max_pixels)
    batch = build_chat_inputs(tok, [build_prompt("fine")], vid["video_grid_thw"])
    with torch.no_grad():
        out = model(**batch, **vid)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.video}: {v['total_frames']} frames at {v['fps']:.1f} fps, "
          f"sampled {v['indices'].tolist()}")
    print(f"grid {vid['video_grid_thw'].tolist()} -> {video_token_count(vid['video_grid_thw'])} "
          f"video tokens; input_ids {tuple(batch['input_ids'].shape)}; "
          f"logits {tuple(out.logits.shape)}; params {n:,}")


if __name__ == "__main__":
    run_main(_demo)
