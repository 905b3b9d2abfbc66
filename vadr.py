"""vadr.py -- the model side of Vad-R1: what the model sees and what it says.

Everything the scripts share about Qwen2.5-VL lives here, so that a reader can follow one
video from its file to the model's answer in a single file:

  1. The Perception-to-Cognition chain-of-thought prompt (paper Sec. 3.1, App. C.1 / Fig. 9).
  2. Video reading with decord: N frames at linspace over a *kept window* of the video, so
     that AVA-GRPO's trimmed videos (Algorithm 1) re-sample N frames from what remains.
  3. Qwen2.5-VL video preprocessing written from scratch in plain torch (no torchvision, no
     AutoProcessor): smart_resize, bicubic antialiased resize, CLIP normalisation, patchify.
     Bit-exact against the reference processor (tests/golden, from ../shared/golden).
  4. The chat layout with <|video_pad|> placeholders (facts note, section 4).
  5. Model loading: a local Qwen2.5-VL checkpoint directory, or the `toy` preset (a tiny random
     Qwen2.5-VL plus a byte-level BPE tokenizer trained locally), which every script uses by
     default so the whole method runs on a laptop CPU.
  6. Parsing and format checking of completions (`<think><step1>..</think><answer>..</answer>`).
  7. Shared plumbing for the three entry points: the distributed block (single process, DDP,
     FSDP2), atomic checkpoints with exact resume, and the JSONL logger.

Imports point one way: this file imports no other project file.

Run it:
    python vadr.py                       # builds the toy model, runs one forward on a rendered video
    python vadr.py --model /path/to/Qwen2.5-VL-7B-Instruct --video clip.mp4

Departures from the paper / the authors' scripts (each one is a flag or an argument where cheap):
  * Frame indices are rounded from linspace(0, K-1, N) over the K kept frames; the authors'
    evaluation uses linspace(0, total-1, 16) over the whole video, which is the special case
    keep=[(0, 1)].
  * The completion ends with <|im_end|>; the trailing "\n" the chat template writes after it is
    not part of the target (generation stops at <|im_end|>, so it would never be sampled).
  * Batches are LEFT-padded everywhere (training, generation, scoring): a completion then starts
    at the same column for every row, which makes sampling and log-prob gathering simple.
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
import torch.nn.functional as F

class InputError(ValueError):
    """Bad input from the user (a manifest row, a predictions line, a flag): the message names the
    file and line. Entry points print it without a traceback (run_main); a bug still gets one."""


def run_main(main, argv=None):
    """Run a script's main(); an InputError ends the process with its message and exit code 1.

    A process that started a process group (torchrun: setup_distributed) ends with os._exit once
    main() has returned, after flushing stdout and stderr and collecting garbage: Python's own
    interpreter teardown (Py_FinalizeEx) is skipped. Why (a core dump of a 2-rank gloo FSDP train_rl
    run that aborted, 1 of 48 two-rank runs on a loaded 2-core machine; with this exit, 0 of 80):
    the process group outlives destroy_process_group (FSDP2's device mesh and DTensor's sharding
    caches still hold it), so its gloo worker threads are alive at exit. A worker frees the work it
    ran a moment after the collective has returned to Python (in the dump: the final barrier,
    holding the rank-checksum all-gather, whose tensors' Python objects must be released under the
    GIL). If the main thread has meanwhile entered Py_FinalizeEx, taking the GIL ends the worker
    thread (pthread_exit), the forced unwind crosses a C++ destructor and the process aborts
    ("terminate called without an active exception", SIGABRT) although every file was already
    written. Skipping the teardown removes the race; errors still end the normal way, with their
    traceback. Files are all written through `with` blocks, so nothing is left in a buffer but
    stdio."""
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


# ------------------------------------------------------------------------------------------------
# 1. Categories and the P2C-CoT prompt (paper Sec. 3.1, App. C.1 / Fig. 9)
# ------------------------------------------------------------------------------------------------

# The paper's 37 fine-grained categories (facts note, section 1).
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

# The released files spell five categories two ways (facts note, section 1). Keys are compared
# after _category_key() (zero-width characters removed, case and spaces folded).
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

# The prompt has the three parts of App. C.1: task definition, output specification, format
# requirements with a short example each. Written in our own words. The two variants differ only
# in what <which> must hold: the SFT data's fine-grained category, or the binary label that RL's
# weak labels can check (facts note, section 2: "The RL prompt asks the model to write Abnormal
# or Normal in <which>").
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


# ------------------------------------------------------------------------------------------------
# 2. Parsing and the format check (facts note, sections 1-2)
# ------------------------------------------------------------------------------------------------

_TAGS = ("think", "answer", "step1", "step2", "step3", "step4", "which", "what", "when", "where",
         "why", "how")
_ANY_TAG = r"</?(?:think|answer|step[1-4]|which|what|when|where|why|how)>"
# Tag content: any text that contains no project tag (a tempered dot), so that `<step1>` used as a
# closing tag by mistake (SFT-train video 2088, facts note) breaks the match instead of being eaten.
_C = r"(?:(?!" + _ANY_TAG + r").)*?"


def _layout(steps: int, answer_tags: tuple[str, ...]) -> re.Pattern:
    think = r"<think>\s*" + r"\s*".join(rf"<step{i}>{_C}</step{i}>" for i in range(1, steps + 1)) \
        + r"\s*</think>"
    answer = r"<answer>" + _C + _C.join(rf"<{t}>{_C}</{t}>" for t in answer_tags) + _C + r"</answer>"
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
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
    return m.group(1).strip() if m else None


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
    """Binary label from <which>: 'Normal' -> Normal, any other non-empty text -> Abnormal
    (the authors' rule, facts note s.3; we also accept case and a trailing period, 'Normal.')."""
    if which is None:
        return None
    w = which.strip().rstrip(".").strip()
    if not w:
        return None
    return "Normal" if w.lower() == "normal" else "Abnormal"


def parse_completion(text) -> dict:
    """Split a completion into its parts. Never raises, whatever the input.

    Returns dict(think, steps, answer, which, what, when, where, why, how, label):
      think/answer: inner text of the first <think>/<answer> block (None if absent or unclosed);
      steps: inner texts of <step1>..<step4> found inside think (or the whole text) in order;
      which..how: inner text of the first such tag in the answer (or anywhere if no answer block);
      when: (s, e) floats parsed from <when>, as written, or None;
      label: 'Normal' / 'Abnormal' from <which> (label_from_which), None if no <which>.
    """
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


# ------------------------------------------------------------------------------------------------
# 3. Reading a video (decord), uniform sampling over a kept window
# ------------------------------------------------------------------------------------------------

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
    facts note s.3: linspace(0, total-1, 16) when the whole video is kept). Raises if the kept
    window holds no frame, so a degenerate trim is an error, never a silent empty video."""
    kept = kept_frames(total_frames, keep)  # (K,)
    if len(kept) == 0:
        raise ValueError(f"the kept windows {list(keep)} leave no frame of a {total_frames}-frame video")
    pos = np.linspace(0, len(kept) - 1, num_frames).round().astype(np.int64)  # (N,) positions in kept
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
    model sees, from which second_per_grid_ts = temporal_patch_size / sampled_fps (facts note s.4).
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


# ------------------------------------------------------------------------------------------------
# 4. Qwen2.5-VL video preprocessing from scratch (bit-exact vs the reference, tests/golden)
# ------------------------------------------------------------------------------------------------

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
    the vision tower expects (2x2 merge groups contiguous). Exactness notes (../shared/golden):
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
        pixel_values_videos=torch.cat([v["pixel_values_videos"] for v in videos], 0),  # (sum N_i, 1176)
        video_grid_thw=torch.cat([v["video_grid_thw"] for v in videos], 0),           # (B, 3)
        second_per_grid_ts=torch.cat([v["second_per_grid_ts"] for v in videos], 0),   # (B,)
    )


# ------------------------------------------------------------------------------------------------
# 5. The chat layout (facts note, section 4), without AutoProcessor
# ------------------------------------------------------------------------------------------------

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


def build_chat_inputs(tokenizer, prompts: list[str], video_grid_thw, system: str = DEFAULT_SYSTEM_PROMPT,
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


# ------------------------------------------------------------------------------------------------
# 6. Models: a local checkpoint, or the toy preset
# ------------------------------------------------------------------------------------------------

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
TOY_VOCAB = 2048  # BPE vocabulary cap; byte-level BPE on the toy text saturates near 1.8k (no merges across words)


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
        if os.path.isfile(os.path.join(name_or_dir, "latest")) and \
                not os.path.isfile(os.path.join(name_or_dir, "config.json")):
            name_or_dir = os.path.join(name_or_dir, open(os.path.join(name_or_dir, "latest")).read().strip())
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


# ------------------------------------------------------------------------------------------------
# 7. Distributed block: one process, DDP, or FSDP2 (torchrun), gloo on CPU and nccl on GPU
# ------------------------------------------------------------------------------------------------
# All three entry points use exactly these few functions. Without torchrun (no RANK in the
# environment) everything is a single process and every helper degrades to a no-op.

_STARTED_PROCESS_GROUP = False  # set by setup_distributed, read by run_main


def setup_distributed(device: str | None = None) -> dict:
    """Initialise torch.distributed when launched by torchrun. Returns dict(rank, world_size,
    local_rank, device, distributed). nccl on CUDA, gloo on CPU. `device`: 'cpu', 'cuda' or
    None (cuda if available)."""
    import torch.distributed as dist

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
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(metrics: dict, device=None) -> dict:
    """Mean of each float over ranks (what rank 0 logs is the global value, not its shard's)."""
    import torch.distributed as dist
    if not dist.is_initialized() or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)  # (K,)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def write_rank_checksums(model, path: str):
    """Every rank's float64 sum of its parameters, gathered into one JSON on rank 0: under DDP
    all ranks must hold identical weights (a cheap check that no rank drifted). Under FSDP each
    rank holds a different shard, so the sums differ by design."""
    s = sum(float(p.detach().to_local().double().sum()) if hasattr(p, "to_local") else float(p.detach().double().sum())
            for p in unwrap(model).parameters())
    sums = _gather_objects(s)
    if is_main():
        with open(path, "w") as f:
            json.dump(sums, f)


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


# ------------------------------------------------------------------------------------------------
# 8. Checkpoints with exact resume, and the JSONL log
# ------------------------------------------------------------------------------------------------
# A checkpoint is a Hugging Face directory (config.json, model*.safetensors, tokenizer files,
# generation_config.json) that from_pretrained / AutoTokenizer load, plus training_state.pt
# (optimizer, scheduler, step, data position, every rank's RNG states, resolved config) and
# run_config.json. It is written to a temporary directory and renamed into place, so a crash
# mid-save never leaves a half checkpoint; `latest` names the newest complete one.

def rng_state() -> dict:
    st = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _gather_objects(obj) -> list:
    import torch.distributed as dist
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None, scheduler=None,
                    train_state: dict | None = None, config: dict | None = None,
                    max_shard_size: str = "5GB", keep_last: int | None = None) -> str | None:
    """Write out_dir/name atomically. Collective under torch.distributed (call on every rank);
    only rank 0 writes. Returns the final path on rank 0."""
    if lora_config(model) is not None:  # section 10: a LoRA run's checkpoint holds its adapters alone
        return save_lora_checkpoint(out_dir, name, model, tokenizer, optimizer, scheduler, train_state,
                                    config, keep_last)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in our logs
    sd = full_state_dict(model)        # collective under FSDP
    write = lambda tmp: unwrap(model).save_pretrained(tmp, state_dict=sd, safe_serialization=True,
                                                      max_shard_size=max_shard_size)
    return _write_checkpoint(out_dir, name, write, model, tokenizer, optimizer, scheduler, train_state,
                             config, keep_last)


def _write_checkpoint(out_dir: str, name: str, write_weights, model, tokenizer, optimizer, scheduler,
                      train_state, config, keep_last) -> str | None:
    """The part every checkpoint shares: gather the optimizer state and every rank's RNG streams
    (collectives), then on rank 0 write weights (write_weights(tmp_dir)), tokenizer,
    training_state.pt and run_config.json into a temporary directory, rename it into place, point
    `latest` at it and prune old step-N directories."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    opt_sd = None
    if optimizer is not None:
        opt_sd = get_optimizer_state_dict(unwrap(model), optimizer,
                                          options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rngs = _gather_objects(rng_state())  # one per rank: each rank resumes its own streams
    final = os.path.join(out_dir, name)
    if is_main():
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_weights(tmp)
        tokenizer.save_pretrained(tmp)
        state = dict(train_state or {}, rng=rngs, config=config or {},
                     optimizer=opt_sd, scheduler=scheduler.state_dict() if scheduler else None)
        torch.save(state, os.path.join(tmp, "training_state.pt"))
        with open(os.path.join(tmp, "run_config.json"), "w") as f:
            json.dump(config or {}, f, indent=1, default=str)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic on one file system
        _atomic_write(os.path.join(out_dir, "latest"), name)
        if keep_last:
            _prune_checkpoints(out_dir, keep_last, protect=name)
    barrier()
    return final if is_main() else None


def _atomic_write(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune_checkpoints(out_dir: str, keep_last: int, protect: str):
    steps = sorted((d for d in os.listdir(out_dir) if re.fullmatch(r"step-\d+", d)),
                   key=lambda d: int(d.split("-")[1]))
    for d in steps[:-keep_last]:
        if d != protect:
            shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)


def resolve_resume(path: str) -> str:
    """--resume accepts a checkpoint directory or a run directory (then its `latest`)."""
    if os.path.isfile(os.path.join(path, "training_state.pt")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        return os.path.join(path, open(latest).read().strip())
    # no `latest` (e.g. deleted by an interrupted make): the newest complete step-N checkpoint
    steps = sorted((d for d in os.listdir(path) if re.fullmatch(r"step-\d+", d)
                    and os.path.isfile(os.path.join(path, d, "training_state.pt"))) if os.path.isdir(path) else [],
                   key=lambda d: int(d.split("-")[1]))
    if steps:
        return os.path.join(path, steps[-1])
    raise FileNotFoundError(f"--resume {path}: no training_state.pt, no 'latest' file and no step-N checkpoint there")


def load_training_state(ckpt_dir: str, model, optimizer=None, scheduler=None, rank: int = 0) -> dict:
    """Restore optimizer, scheduler and this rank's RNG streams from a checkpoint whose weights
    were already loaded into `model` (load_model(ckpt_dir) before wrapping). Returns the state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(os.path.join(ckpt_dir, "training_state.pt"), map_location="cpu",
                       weights_only=False)
    if optimizer is not None and state.get("optimizer") is not None:
        set_optimizer_state_dict(unwrap(model), optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if len(rngs) != world_size():
        raise RuntimeError(f"{ckpt_dir} was saved by {len(rngs)} ranks; resuming on {world_size()} "
                           "would not continue the same run exactly")
    set_rng_state(rngs[rank])
    return state


def log_jsonl(path: str, record: dict):
    """Append one record (one line) and flush, so a killed run keeps every finished step."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")


def truncate_jsonl(path: str, max_step: int):
    """On resume, drop log lines of steps after the checkpoint (they will be redone)."""
    if not os.path.isfile(path):
        return
    keep = [ln for ln in open(path) if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
    _atomic_write(path, "".join(keep))


def save_run_config(out_dir: str, config: dict):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "run_config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)



# ------------------------------------------------------------------------------------------------
# 9. Training helpers shared by train_sft.py and train_rl.py (one copy, here)
# ------------------------------------------------------------------------------------------------

def add_video_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("video input (paper App. C.3)")
    g.add_argument("--frames", type=int, default=16, help="frames sampled uniformly per video (paper: 16)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="max pixels per frame after smart_resize (paper: 128*28*28)")
    g.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS, help="min pixels per frame")
    return g


def add_run_args(ap: argparse.ArgumentParser, default_out: str):
    g = ap.add_argument_group("run, checkpoints, distributed")
    g.add_argument("--out", default=default_out, help="run directory: checkpoints, log.jsonl, run_config.json")
    g.add_argument("--save-every", type=int, default=None, help="checkpoint every N optimizer steps (and at the end)")
    g.add_argument("--keep-last", type=int, default=2, help="keep only the newest N step checkpoints")
    g.add_argument("--resume", default=None, help="checkpoint or run directory to continue exactly")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 fully_shard (under torchrun); default DDP")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="seed for init, data order, sampling")
    g.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (saves activation memory)")
    g.add_argument("--freeze-vision", action="store_true", help="train the language model only")
    return g


def apply_preset(args, preset: dict, name: str) -> list[str]:
    """Fill every flag the user left unset (None) from a preset; returns what was filled, so the
    scripts can print it. Paper defaults apply to real models; the toy preset scales them to a
    model 5000x smaller that must learn in minutes (values and reasons in the scripts)."""
    filled = []
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
            filled.append(f"{k}={v}")
    return filled


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    """AdamW over trainable parameters; no decay on biases and norms (the usual convention)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return torch.optim.AdamW([dict(params=decay, weight_decay=weight_decay),
                              dict(params=no_decay, weight_decay=0.0)], lr=lr, betas=betas)


def cosine_schedule(optimizer, total_steps: int, warmup_steps: int):
    """Linear warmup then cosine decay to 0 (the authors' cosine schedule)."""
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def prepare_model(model, args, dist_info: dict):
    """Freeze / checkpoint / move / wrap, in the order FSDP2 needs (optimizer after wrapping)."""
    if getattr(args, "freeze_vision", False):
        model.model.visual.requires_grad_(False)
    if getattr(args, "grad_ckpt", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.to(dist_info["device"])
    mode = ("fsdp" if args.fsdp else "ddp") if dist_info["distributed"] else "none"
    if args.fsdp and not dist_info["distributed"]:
        print("--fsdp has no effect without torchrun: running one process")
    bf16 = dist_info["device"].type == "cuda"
    return wrap_model(model, mode, dist_info["device"], bf16=bf16), mode


def autocast(device):
    """bf16 autocast on GPU (paper: bf16), plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def epoch_order(n_rows: int, epoch: int, seed: int, global_batch: int, rank: int, world: int) -> list[int]:
    """This rank's row indices for one epoch, in micro-batch order. The epoch's permutation is the
    same on every rank (seeded by seed and epoch); global batch s = perm[s*GB:(s+1)*GB] and rank r
    takes its items r, r+W, ... (data strided by rank). Incomplete last global batch dropped."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n_rows, generator=g).tolist()  # (n_rows,)
    order = []
    for s in range(n_rows // global_batch):
        order += shard_for_rank(perm[s * global_batch:(s + 1) * global_batch], rank, world)
    return order


def save_if_due(args, step: int, total_steps: int, epoch: int, s: int, steps_per_epoch: int, model, tok, opt,
                sched, config) -> bool:
    """Checkpoint every --save-every steps and at the last step, recording where the data order
    resumes (the next batch of this epoch, or the next epoch). Returns True at the last step."""
    last = step >= total_steps
    if last or (args.save_every and step % args.save_every == 0):
        nxt = (epoch, s + 1) if s + 1 < steps_per_epoch else (epoch + 1, 0)
        save_checkpoint(args.out, f"step-{step}", model, tok, opt, sched,
                        dict(step=step, epoch=nxt[0], step_in_epoch=nxt[1]), config, keep_last=args.keep_last)
    return last


def finish_run(args, model, dist_info: dict, step: int):
    """Print where the last checkpoint is, check the ranks agree (DDP) and leave the process group."""
    latest = os.path.join(args.out, "latest")
    if is_main() and os.path.exists(latest):
        print(f"done: {step} steps, checkpoint {os.path.join(args.out, open(latest).read().strip())}")
    if dist_info["distributed"]:
        write_rank_checksums(model, os.path.join(args.out, "rank_checksums.json"))
    barrier()
    if dist_info["distributed"]:
        torch.distributed.destroy_process_group()


MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values_videos",
                    "video_grid_thw", "second_per_grid_ts")


def model_inputs(batch: dict) -> dict:
    """The tensors the Qwen2.5-VL forward takes; always with the vision inputs (never a text-only
    forward by accident: the placeholder tokens would then be embedded as plain tokens)."""
    missing = [k for k in MODEL_INPUT_KEYS if batch.get(k) is None]
    if missing:
        raise ValueError(f"model inputs lack {missing}")
    return {k: batch[k] for k in MODEL_INPUT_KEYS}


# ------------------------------------------------------------------------------------------------
# 10. LoRA, rollout weights under FSDP, memory estimates
# ------------------------------------------------------------------------------------------------
# The same two scripts serve three machines (README "tiers"): a laptop CPU (toy preset), one GPU
# (Qwen2.5-VL-7B with LoRA adapters), and 4+ GPUs (full fine-tuning with FSDP2). This section holds
# what the last two need beyond the plain loop:
#   10a. LoRA written from scratch: LoRALinear, apply / disable / merge, adapter-only checkpoints,
#        the reference model of RL as "the policy with its adapters off".
#   10b. A guard that every training forward runs the vision tower (FSDP collectives).
#   10c. rollout_weights: under FSDP, gather the full weights once per RL step for sampling.
#   10d. Memory estimates from a config alone (--dry-run), checked against the toy's measured memory
#        (tests/test_scale.py).

import contextlib  # (this section's own imports, kept here so the section reads on its own)

import torch.nn as nn

# ---- 10a. LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") ----------
#
# A frozen weight W (out, in) gets a trainable low-rank update:
#     y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,    A (r, in), B (out, r), r << min(in, out)
# i.e. the effective weight is W + (alpha / r) B A. B starts at ZERO, so at step 0 the adapted model
# computes exactly what the base computes (the update B A is 0), while A starts random so that the
# gradient of B, (alpha / r) g^T (x A^T), is non-zero from the first step. alpha / r keeps the size of
# the update comparable when r changes (the LoRA paper's scaling). Only A and B train: for
# Qwen2.5-VL-7B with r = 64 on the 7 projections of the 28 decoder layers that is 161M parameters
# (1.9% of 8.29B), so gradients and AdamW state shrink ~50x, and the frozen base can be held in
# bf16 (2 bytes per weight instead of fp32's 4).

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_FORMAT = "vadr-lora-v1"       # adapter_config.json "format": what wrote the adapter checkpoint
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    """nn.Linear + a low-rank adapter: y = base(x) + scale * dropout(x) A^T B^T, scale = alpha / r.

    base: the wrapped nn.Linear (kept as a child, frozen). lora_A (r, in) ~ N(0, 1/in) (the LoRA
    paper's random Gaussian A, scaled like a default nn.Linear init), lora_B (out, r) = 0 (so the
    module starts exactly equal to `base`). `enabled = False` switches the adapter path off: the
    module then IS the base layer (RL's reference model, no second copy of the weights).
    The adapter path runs in the adapters' dtype (fp32) and is cast back to the base output's dtype,
    so a bf16 base with fp32 adapters works with or without autocast."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        self.enabled = True
        dev = base.weight.device
        A = torch.empty(rank, base.in_features, dtype=torch.float32, device=dev)  # (r, in)
        if dev.type != "meta":  # the dry run builds on the meta device: nothing to initialise there
            # drawn on CPU from an explicit generator: the same adapters on every rank and device
            a = torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
            A.copy_(a)
        self.lora_A = nn.Parameter(A)                                               # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=torch.float32,
                                               device=dev))                         # (out, r)

    def forward(self, x):                                                           # x (..., in)
        y = self.base(x)                                                            # (..., out)
        if not self.enabled:
            return y
        h = F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x
        h = h.to(self.lora_A.dtype) @ self.lora_A.t()                               # (..., r)
        return y + (h @ self.lora_B.t() * self.scale).to(y.dtype)                   # (..., out)

    def merged_weight(self) -> torch.Tensor:
        """W + scale * B A in fp32, cast to the base weight's dtype: (out, in)."""
        W = self.base.weight
        return (W.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())).to(W.dtype)

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}, enabled={self.enabled}"


def lora_modules(model) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)]


def lora_config(model) -> dict | None:
    """The LoRA settings recorded by apply_lora (rank, alpha, dropout, targets, base_model), or None
    for a model without adapters."""
    return getattr(unwrap(model), "vadr_lora", None)


def apply_lora(model, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets=LORA_TARGETS, seed: int = 0) -> int:
    """Wrap every nn.Linear named in `targets` inside the LANGUAGE model (model.model.language_model)
    in a LoRALinear, and freeze every other parameter (vision tower, embeddings, norms, lm_head, the
    wrapped weights themselves). Returns the number of wrapped layers. Adapters are initialised from
    a generator seeded with `seed`: identical on every rank (FSDP2 does not broadcast weights)."""
    if lora_config(model) is not None:
        raise RuntimeError("apply_lora: the model already has LoRA adapters")
    alpha = float(2 * rank if alpha is None else alpha)
    targets = tuple(targets)
    inner = unwrap(model)
    lm = inner.model.language_model
    inner.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    wrapped = 0
    for name, module in list(lm.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and type(child) is nn.Linear:
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout, generator=gen))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"--lora-targets {','.join(targets)} matched no nn.Linear in the language model "
                         f"(its projections are {sorted({n.split('.')[-1] for n, m in lm.named_modules() if isinstance(m, nn.Linear)})})")
    inner.vadr_lora = dict(rank=int(rank), alpha=alpha, dropout=float(dropout), targets=list(targets))
    return wrapped


@contextlib.contextmanager
def lora_disabled(model):
    """Inside: every adapter is off, so the model computes exactly its base weights (RL's pi_ref)."""
    mods = [m for _, m in lora_modules(model)]
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield model
    finally:
        for m, e in zip(mods, before):
            m.enabled = e


def lora_state_dict(model) -> dict:
    """Adapters only: {fully qualified name: fp32 CPU tensor}, names as in the unwrapped model
    ('model.language_model.layers.0.self_attn.q_proj.lora_A'). Under FSDP2 each adapter is a
    sharded DTensor: full_tensor() all-gathers it, so every rank must call this (same order)."""
    out = {}
    for n, p in unwrap(model).named_parameters():
        if n.endswith(".lora_A") or n.endswith(".lora_B"):
            t = p.detach()
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[n] = t.to("cpu", copy=True).contiguous()
    return out


def load_lora_state_dict(model, sd: dict):
    """Copy saved adapters into a model that apply_lora prepared with the same settings (strict)."""
    params = {n: p for n, p in unwrap(model).named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    missing, extra = sorted(set(params) - set(sd)), sorted(set(sd) - set(params))
    if missing or extra:
        raise RuntimeError(f"adapter weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]} "
                           "(different --lora-rank / --lora-targets than the checkpoint?)")
    with torch.no_grad():
        for n, p in params.items():
            if tuple(sd[n].shape) != tuple(p.shape):
                raise RuntimeError(f"adapter {n}: saved shape {tuple(sd[n].shape)} != model {tuple(p.shape)}")
            p.copy_(sd[n])


def merge_lora(model):
    """Fold every adapter into its base weight (W <- W + scale * B A, computed in fp32) and put the
    plain nn.Linear back, so that save_pretrained writes an ordinary Hugging Face checkpoint."""
    inner = unwrap(model)
    for name, m in lora_modules(inner):
        parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
        with torch.no_grad():
            m.base.weight.copy_(m.merged_weight())
        setattr(parent, name.rsplit(".", 1)[-1], m.base)
    if hasattr(inner, "vadr_lora"):
        del inner.vadr_lora
    return model


def is_adapter_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a run directory resolved through its `latest` file."""
    if path == "toy":
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither 'toy' nor a directory (nothing is downloaded)")
    if not os.path.isfile(os.path.join(path, "config.json")) and not is_adapter_checkpoint(path) \
            and os.path.isfile(os.path.join(path, "latest")):
        path = os.path.join(path, open(os.path.join(path, "latest")).read().strip())
    return path


def read_adapter_config(path: str) -> dict:
    cfg = json.load(open(os.path.join(path, ADAPTER_CONFIG)))
    if cfg.get("format") != LORA_FORMAT:
        raise ValueError(f"{path}/{ADAPTER_CONFIG}: format {cfg.get('format')!r}, expected {LORA_FORMAT!r}")
    return cfg


def load_merged(path: str, dtype=None, device=None, corpus=None, seed: int = 0):
    """-> (plain Qwen2_5_VLForConditionalGeneration, tokenizer) from any checkpoint: 'toy', a Hugging
    Face directory, or an adapter checkpoint, whose base (itself possibly an adapter checkpoint: an
    RL LoRA run on top of an SFT LoRA run) is loaded recursively and gets the adapters folded in."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    path = resolve_checkpoint(path)
    if path == "toy" or not is_adapter_checkpoint(path):
        return load_model(path, dtype=dtype, device=device, corpus=corpus, seed=seed)
    cfg = read_adapter_config(path)
    model, _ = load_merged(cfg["base_model"], dtype=dtype)
    apply_lora(model, cfg["rank"], cfg["alpha"], 0.0, cfg["targets"])
    load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
    merge_lora(model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if device is not None:
        model.to(device)
    return model, tok


def _save_hf_dir(path: str, model, tokenizer):
    """A plain Hugging Face directory (config, safetensors, tokenizer), written atomically, rank 0."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.path.basename(path)}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrap(model).save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_lora_checkpoint(out_dir: str, name: str, model, tokenizer, optimizer=None, scheduler=None,
                         train_state: dict | None = None, config: dict | None = None,
                         keep_last: int | None = None) -> str | None:
    """save_checkpoint for a LoRA run (it dispatches here): the ADAPTERS alone
    (adapter_model.safetensors + adapter_config.json naming the base checkpoint), the tokenizer,
    and the same training_state.pt / run_config.json / `latest` as a full checkpoint, so --resume
    continues exactly. A few hundred MB for the 7B instead of 17 GB; `--merge` makes a full HF dir.
    Collective under torch.distributed (adapters and optimizer state are gathered); rank 0 writes."""
    from safetensors.torch import save_file

    lcfg = lora_config(model)
    if not lcfg.get("base_model"):
        raise RuntimeError("this LoRA model does not record its base checkpoint (use vadr.load_for_training)")
    sd = lora_state_dict(model)

    def write(tmp):
        save_file(sd, os.path.join(tmp, ADAPTER_WEIGHTS))
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w") as f:
            json.dump(dict(format=LORA_FORMAT, scope="model.language_model", **lcfg,
                           adapter_parameters=sum(t.numel() for t in sd.values())), f, indent=1)

    return _write_checkpoint(out_dir, name, write, model, tokenizer, optimizer, scheduler, train_state,
                             config, keep_last)


def merge_checkpoint(src: str, out: str) -> str:
    """`--merge SRC --out DIR`: the adapters of SRC (a LoRA checkpoint or run directory) folded into
    their base, written as a full Hugging Face directory that from_pretrained loads and eval.py scores.
    The merged weights keep the dtype of the root base checkpoint (bf16 for Qwen2.5-VL-7B)."""
    src = resolve_checkpoint(src)
    if not is_adapter_checkpoint(src):
        raise SystemExit(f"--merge {src}: no {ADAPTER_CONFIG} there; only LoRA checkpoints need merging "
                         "(a full checkpoint already is a Hugging Face directory)")
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"--merge: output directory {out} exists and is not empty; pass a new --out")
    root = src
    while is_adapter_checkpoint(root):
        root = resolve_checkpoint(read_adapter_config(root)["base_model"])
    dtype = None
    if root != "toy":
        root_cfg = json.load(open(os.path.join(root, "config.json")))
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            root_cfg.get("dtype") or root_cfg.get("torch_dtype"), torch.float32)
    model, tok = load_merged(src, dtype=dtype)
    _save_hf_dir(out, model, tok)
    print(f"merged {src} (base {root}) -> {out} [{dtype or torch.float32}]")
    return out


def _lora_base_dtype(args, device_type: str):
    choice = getattr(args, "lora_base_dtype", "auto")
    if choice == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return dict(bf16=torch.bfloat16, fp32=torch.float32)[choice]


def load_for_training(path: str, args, resume: bool, corpus=None, seed: int = 0):
    """The training scripts' model loading (replaces a bare load_model): -> (model, tokenizer).

      * path 'toy', a Hugging Face directory, or an adapter checkpoint (folded into its base);
      * resume from a LoRA checkpoint: the base is rebuilt and the saved adapters loaded into it
        (the run's LoRA settings come from the checkpoint);
      * --lora-rank R: adapters are added (apply_lora) and the model records its base checkpoint;
        a toy base is first saved to <out>/lora-base, since a random toy model is not on disk;
      * gradient checkpointing is switched on for a real (non-toy) model unless --no-grad-ckpt;
      * the vision-tower guard is installed (install_vision_guard).
    Call it before prepare_model (which moves and wraps the model)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    device_type = (getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    device_type = torch.device(device_type).type
    path = resolve_checkpoint(path)
    if resume and path != "toy" and is_adapter_checkpoint(path):
        cfg = read_adapter_config(path)
        if args.lora_rank not in (None, cfg["rank"]):
            raise SystemExit(f"--resume {path}: the checkpoint has rank-{cfg['rank']} adapters, "
                             f"not --lora-rank {args.lora_rank}")
        args.lora_rank, args.lora_alpha, args.lora_dropout = cfg["rank"], cfg["alpha"], cfg["dropout"]
        args.lora_targets = ",".join(cfg["targets"])
        model, _ = load_merged(cfg["base_model"])
        tok = AutoTokenizer.from_pretrained(path)
        tok.padding_side = "left"
        model.to(_lora_base_dtype(args, device_type))
        apply_lora(model, cfg["rank"], cfg["alpha"], cfg["dropout"], cfg["targets"], seed=seed)
        load_lora_state_dict(model, load_file(os.path.join(path, ADAPTER_WEIGHTS)))
        model.vadr_lora["base_model"] = cfg["base_model"]
    else:
        if resume and getattr(args, "lora_rank", None):
            raise SystemExit(f"--resume {path} is a full checkpoint (no adapters): drop --lora-rank")
        model, tok = load_merged(path, corpus=corpus, seed=seed)
        if getattr(args, "lora_rank", None):
            if path == "toy":
                base = os.path.abspath(os.path.join(args.out, "lora-base"))
                if is_main():
                    _save_hf_dir(base, model, tok)
                barrier()
            else:
                base = os.path.abspath(path)
            model.to(_lora_base_dtype(args, device_type))
            apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout,
                       [t for t in args.lora_targets.split(",") if t], seed=seed)
            model.vadr_lora["base_model"] = base
    if lora_config(model) is not None and is_main():
        n_ad = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        lc = lora_config(model)
        print(f"[lora] rank {lc['rank']} alpha {lc['alpha']:g} dropout {lc['dropout']:g} on "
              f"{','.join(lc['targets'])}: {n_ad:,} trainable of {n_all:,} parameters; base {lc['base_model']}")
    if not is_toy_config(model.config) and not getattr(args, "no_grad_ckpt", False) and not args.grad_ckpt:
        args.grad_ckpt = True  # real model: activations of 28 layers x thousands of tokens (see estimate_memory)
        if is_main():
            print("[memory] gradient checkpointing on (real model; --no-grad-ckpt turns it off)")
    install_vision_guard(model)
    return model, tok


def make_reference_model(model, args, resume: bool, dist_info: dict):
    """The KL reference pi_ref of RL (Alg. 2 lines 1-2: pi_ref <- pi_theta at the start).
    With LoRA: None -- the reference is the policy itself with its adapters switched off
    (reference_policy), exactly the starting weights, with no second copy of the 7B weights.
    Without LoRA: a frozen copy of the starting checkpoint (on resume, reloaded from args.model),
    sharded like the policy under FSDP. None as well when beta = 0 (no KL term)."""
    import copy

    if args.beta <= 0 or lora_config(model) is not None:
        return None
    ref = load_merged(args.model)[0] if resume else copy.deepcopy(model)
    ref.requires_grad_(False).eval().to(dist_info["device"])
    if dist_info["distributed"] and args.fsdp:
        ref = wrap_model(ref, "fsdp", dist_info["device"], bf16=dist_info["device"].type == "cuda")
    return ref


@contextlib.contextmanager
def reference_policy(model, ref_model):
    """Yields the module that computes log pi_ref: ref_model when there is one, else (LoRA) the
    policy with every adapter switched off for the duration of the block."""
    if ref_model is not None:
        yield ref_model
    elif lora_config(model) is not None:
        with lora_disabled(model):
            yield model
    else:
        raise RuntimeError("no reference model: beta > 0 needs a frozen copy or LoRA adapters to switch off")


# ---- 10b. Every rank runs the vision tower in every training forward -----------------------------
# Under FSDP2 every vision block is sharded: its forward all-gathers its weights, a collective that
# every rank must join. A rank whose forward skipped the vision tower (no pixel_values_videos) would
# issue the language model's all-gathers while the others issue the vision blocks': the run hangs
# until the 30-minute timeout, or silently pairs the wrong tensors. Different video SIZES on
# different ranks are fine (each all-gather moves parameters, whose shapes do not depend on the
# input). So the rule, checked before every forward of the inner Qwen2_5_VLModel: a forward that
# starts a sequence (no KV cache yet: training, scoring, the prefill of sampling) must carry a
# non-empty video. Decode steps (a KV cache is given) skip the vision tower on every rank alike,
# kept in lockstep by grpo.sample_group(sync_ranks=True). A failing rank raises, and torchrun then
# stops every rank: a clear error instead of a hang.

def _vision_guard_hook(module, args, kwargs):
    cache = kwargs.get("past_key_values")
    decoding = cache is not None and cache.get_seq_length() > 0
    pv = kwargs.get("pixel_values_videos")
    if not decoding and (pv is None or pv.numel() == 0) and kwargs.get("pixel_values") is None:
        raise RuntimeError(
            "a Qwen2.5-VL forward without video: every training/scoring forward must run the vision "
            "tower (under FSDP its sharded blocks are collectives every rank must join, or the run "
            "hangs). Pass pixel_values_videos / video_grid_thw (vadr.model_inputs).")


def install_vision_guard(model):
    """Register _vision_guard_hook on the inner Qwen2_5_VLModel (once)."""
    inner = unwrap(model).model
    if not getattr(inner, "_vadr_vision_guard", False):
        inner.register_forward_pre_hook(_vision_guard_hook, with_kwargs=True)
        inner._vadr_vision_guard = True
    return model


# ---- 10c. Rollouts on gathered weights under FSDP ---------------------------------------------
# FSDP2 keeps 1/N of every weight on each rank and all-gathers a layer just before its forward.
# Training does one forward per layer per step, so that is cheap. Sampling is not: each of up to 768
# decode steps runs every layer, so the sharded model would all-gather the whole model 768 times per
# rollout (for the 7B, 768 x 16.6 GB of bf16 traffic per GPU) for a one-token forward each time.
# rollout_weights() instead all-gathers every FSDP module ONCE, keeps the full weights (in the compute
# dtype: bf16 on GPU under the MixedPrecisionPolicy, fp32 on CPU) resident for the whole sampling
# phase, and reshards after it. Decode steps then run with no parameter collective, at single-GPU
# speed. The price is memory: one full copy of the weights per GPU, 2 bytes x 8.29B = 15.4 GiB for
# the 7B, on top of the sharded training state (estimate_memory's "rollout copy"; measured here and
# logged by train_rl as rollout_copy_gb). Gradients are None during sampling (zero_grad(set_to_none)),
# so the copy competes only with weights, optimizer state and the KV cache.

@contextlib.contextmanager
def rollout_weights(model, enabled: bool = True):
    """Inside: under FSDP2 every module's full weights are gathered and stay resident (no
    all-gather per decode step); outside, the model is sharded again. Without FSDP (or enabled=False)
    a no-op. Collective: every rank enters and leaves together. Yields dict(gathered, bytes = the
    size of the gathered copy measured from the unsharded parameters, cuda_bytes = the CUDA
    allocation it caused, or None on CPU)."""
    from torch.distributed.fsdp import FSDPModule

    info = dict(gathered=False, bytes=0, cuda_bytes=None)
    mods = [m for m in unwrap(model).modules() if isinstance(m, FSDPModule)]
    if not enabled or not mods:
        yield info
        return
    # Make the root's lazy init happen now (it normally happens in its first forward): it decides
    # which module is the root and sets the root's own "do not reshard after forward" flag, which
    # we are about to override and must restore exactly afterwards. (FSDP2 private state: the public
    # set_reshard_after_forward has no getter.)
    mods[0]._get_fsdp_state()._lazy_init()
    saved = []
    for m in mods:
        st = m._get_fsdp_state()
        saved.append((st, st._auto_reshard_after_forward,
                      [(g, g.post_forward_mesh_info) for g in st._fsdp_param_groups]))
        m.set_reshard_after_forward(False, recurse=False)  # forwards inside keep the weights whole
    cuda = torch.cuda.is_available() and any(p.is_cuda for p in mods[0].parameters())
    before = torch.cuda.memory_allocated() if cuda else 0
    try:
        for m in mods:  # one all-gather per FSDP module, in the same order on every rank
            m.unshard()
        # unsharded parameters are plain tensors again (sharded ones are DTensors)
        info.update(gathered=True, bytes=sum(p.numel() * p.element_size() for p in unwrap(model).parameters()
                                             if not hasattr(p, "full_tensor")),
                    cuda_bytes=(torch.cuda.memory_allocated() - before) if cuda else None)
        yield info
    finally:
        for m in mods:
            m.reshard()
        for st, auto, groups in saved:
            st._auto_reshard_after_forward = auto
            for g, pf in groups:
                g.post_forward_mesh_info = pf


# ---- 10d. Memory estimates (--dry-run) ------------------------------------------------------------

GiB = 2 ** 30
CHARS_PER_TOKEN = 3.5  # English prose with XML-like tags in Qwen's BPE: ~3.5 characters per token
                       # (a dry run has no tokenizer; the text is a small share of the sequence anyway)
SFT_TARGET_TOKENS = 768  # longest SFT answer: 441 words (facts note s.1) x ~1.5 tokens/word + ~60 tag tokens
TOY_FRAME_HW = (112, 112)  # frame size of the toy world (data.generate_toy_world's default)


def is_toy_config(config) -> bool:
    tc = config.text_config
    return tc.hidden_size == TOY_TEXT["hidden_size"] and tc.num_hidden_layers == TOY_TEXT["num_hidden_layers"]


def load_config(name_or_dir: str):
    """The Qwen2_5_VLConfig of 'toy' (no tokenizer needed: vocabulary TOY_VOCAB), of a Hugging Face
    directory (config.json alone is enough: tests/fixtures/qwen2.5-vl-7b has no weights), of a run
    directory (its latest checkpoint) or of an adapter checkpoint (its base's)."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    if name_or_dir == "toy":
        # special-token ids as train_toy_tokenizer places them (Qwen's order at the front); they do not
        # change any size. The vocabulary is the cap TOY_VOCAB (the trained tokenizer's is at most that).
        ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        text = dict(TOY_TEXT, vocab_size=TOY_VOCAB, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                    pad_token_id=ids["<|endoftext|>"])
        return Qwen2_5_VLConfig(text_config=text, vision_config=dict(TOY_VISION), tie_word_embeddings=False,
                                image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    path = resolve_checkpoint(name_or_dir)
    if is_adapter_checkpoint(path):
        return load_config(read_adapter_config(path)["base_model"])
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json (pass --model toy or a Qwen2.5-VL directory)")
    return AutoConfig.from_pretrained(path)


def count_parameters(config, lora: dict | None = None) -> dict:
    """Exact parameter counts from a Qwen2_5_VLForConditionalGeneration built on the META device (no
    memory, no weights), optionally with adapters. Keys: total, vision, vision_blocks, language
    (embeddings + decoder layers + final norm), embed, lm_head, layer (one decoder layer), n_layers,
    root (what FSDP's root module holds: everything outside decoder layers and vision blocks),
    adapters (0 without LoRA; adapters are NOT in total)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        m = Qwen2_5_VLForConditionalGeneration(config)
    if lora:
        apply_lora(m, lora["rank"], lora.get("alpha"), 0.0, lora.get("targets", LORA_TARGETS))
    n = lambda mod: sum(p.numel() for p in mod.parameters())
    ad = sum(p.numel() for name, p in m.named_parameters() if name.endswith((".lora_A", ".lora_B")))
    lm, vis = m.model.language_model, m.model.visual
    out = dict(total=n(m) - ad, vision=n(vis), vision_blocks=sum(n(b) for b in vis.blocks),
               language=n(lm) - ad, embed=n(lm.embed_tokens), lm_head=n(m.lm_head), n_layers=len(lm.layers),
               adapters=ad)
    out["layer"] = (sum(n(l) for l in lm.layers) - ad) // len(lm.layers)
    out["root"] = out["total"] - out["layer"] * out["n_layers"] - out["vision_blocks"]
    return out


def activation_memory(config, *, rows: int, seq_len: int, patches: int, keep: int, act_bytes: int,
                      grad_ckpt: bool, padded: bool, loss: str, vision_trainable: bool,
                      lora_dropout: float = 0.0, lora_targets=(), lora_rank: int = 0) -> dict:
    """Bytes of activations one training micro-batch keeps for backward, derived tensor by tensor
    from what autograd saves in transformers' Qwen2.5-VL (sdpa attention; checked against the toy's
    measured memory in tests/test_scale.py). a = act_bytes (2 for bf16 autocast, 4 for fp32 on CPU),
    h = hidden, I = intermediate, kv = kv_heads * head_dim, per token of one decoder layer:
      RMSNorm x2:  the fp32 input (4h; the residual itself when a = 4) + the normalised, cast x (a h)
      norm outputs x2 (inputs of q/k/v and gate/up): 2 a h
      attention: q after RoPE (a h), k and v (a kv each; a h each when a padding mask makes sdpa
        repeat the kv heads), sdpa output (a h) and its contiguous copy for o_proj (a h), logsumexp (4 heads)
      MLP (SwiGLU): gate, silu(gate), up, silu*up (4 a I)
      -> (8 + 2a + 3a) h + 2 a kv(or h) + 4 a I + 4 heads per token per layer.
    A padded batch also keeps sdpa's additive mask, one (rows, L, L) tensor in the compute dtype per
    layer (torch converts the bool mask per call). Vision blocks, per patch: the same RMSNorm terms,
    qkv input, q and k after RoPE, the qkv output (v is a view of it: 3h), sdpa output, proj input,
    MLP 4 a I_v + a h: (8 + 11 a) h + 4 a I. Final norm (4h + 2ah per token), and the loss:
    SFT keeps the fp32 log-softmax of `keep` positions (4 V each), RL keeps the (rows, keep, V)
    logits in the compute dtype (grpo._ChunkedTokenLogprobs).
    With gradient checkpointing every decoder layer / vision block keeps only its input (a h per
    token), and backward recomputes one layer at a time: + one layer's full activations at the peak.
    LoRA: the same path is kept (the adapters' A needs the inputs the base weights would have);
    dropout > 0 adds each adapted projection's dropped input and mask ((a + 1) x in) per token.
    Returns dict(held (kept at the end of forward), recompute (one layer, only with checkpointing),
    logits_peak (the loss's transient copies), and the parts)."""
    tc, vc = config.text_config, config.vision_config
    a, h, I, L = act_bytes, tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers
    heads = tc.num_attention_heads
    kv = tc.num_key_value_heads * (h // heads)
    kv_saved = h if (padded and kv != h) else kv
    tokens = rows * seq_len
    per_tok_layer = (8 + 5 * a) * h + 2 * a * kv_saved + 4 * a * I + 4 * heads             # bytes
    if lora_dropout > 0:
        ins = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": h, "gate_proj": h, "up_proj": h, "down_proj": I}
        per_tok_layer += sum((a + 1) * ins.get(t, h) for t in lora_targets)
    if lora_rank:
        per_tok_layer += a * lora_rank * len(lora_targets)                                   # x A^T per adapter
    mask_layer = rows * seq_len * seq_len * a if padded else 0                               # sdpa additive mask
    layer_full = tokens * per_tok_layer + mask_layer                                         # one layer, all tokens
    hv, Iv, nb = vc.hidden_size, vc.intermediate_size, vc.depth
    per_patch_block = (8 + 11 * a) * hv + 4 * a * Iv
    if vision_trainable:
        vision = patches * hv * a * nb if grad_ckpt else patches * per_patch_block * nb
        # patch merger: RMSNorm over patches, then 2-layer MLP on merged tokens (4 hv wide)
        vision += patches * (4 + a) * hv + patches // 4 * (3 * 4 * hv) * a
    else:
        vision = 0  # frozen tower: no graph is recorded through it
    lm = tokens * h * a * L if grad_ckpt else layer_full * L
    final = tokens * (4 + 2 * a) * h                                                         # final RMSNorm
    V = tc.vocab_size
    if loss == "sft":
        logits_held = rows * (keep - 1) * V * 4        # fp32 log-softmax kept by cross_entropy
        logits_peak = rows * keep * V * (a + 4)        # the logits and their fp32 copy, transient
    else:
        logits_held = rows * keep * V * a              # (rows, T+1, V) logits kept by the chunked log-prob
        logits_peak = 2 * 256 * V * 4                  # one chunk of fp32 temporaries (grpo chunk=256)
    # shared by all layers: RoPE cos/sin (rows, L, head_dim) each, the bool padding mask, and the
    # vision tower's fp32 rotary cos/sin (patches, head_dim_v) each
    shared = 2 * tokens * (h // heads) * a + (rows * seq_len * seq_len if padded else 0)
    if vision_trainable:
        shared += 2 * patches * (hv // vc.num_heads) * 4
    block_full = patches * per_patch_block if vision_trainable else 0
    held = lm + vision + final + logits_held + shared
    return dict(held=held, recompute=(max(layer_full, block_full) if grad_ckpt else 0), logits_peak=logits_peak,
                language=lm, vision=vision, final_norm=final, logits=logits_held, shared=shared,
                per_token_layer=per_tok_layer)


def sequence_shapes(args, stage: str, frame_hw: tuple[int, int] | None = None) -> dict:
    """Sequence sizes of one training micro-batch at the given settings (upper bounds for real data):
    video tokens = ceil(frames / 2) temporal patches x (h/28)(w/28) merged tokens per frame pair, with
    (h, w) = smart_resize(frame_hw) when the frame size is known (--dry-run-video-hw; the toy world's
    112x112 -> 16), else the max_pixels bound max_pixels / 28^2 (16 frames at 128*28*28 -> 8 x 128 =
    1024); patches = 4 x that (2x2 merge); prompt text ~ len(system + P2C-CoT prompt) / 3.5 + 12
    template tokens; target = SFT_TARGET_TOKENS or RL's --max-new-tokens. SFT rows = --batch-size, RL
    rows = batch x G (the update scores all G completions in one forward); the vision tower encodes
    each video once (grpo's scoring passes share one encoding among a video's G rows). Padding: SFT
    rows differ in target length when batch > 1; RL rows of different videos differ in prompt length
    unless every frame has the same size (a known --dry-run-video-hw, the toy world)."""
    frames = getattr(args, "frames", 16)
    max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
    if frame_hw:
        rh, rw = smart_resize(frame_hw[0], frame_hw[1], IMAGE_FACTOR, getattr(args, "min_pixels", DEFAULT_MIN_PIXELS),
                              max_pixels)
        per_pair = (rh // IMAGE_FACTOR) * (rw // IMAGE_FACTOR)
    else:
        per_pair = max_pixels // IMAGE_FACTOR ** 2
    vt = math.ceil(frames / TEMPORAL_PATCH_SIZE) * per_pair
    variant = getattr(args, "prompt_variant", None) or ("binary" if stage == "rl" else "fine")
    text = math.ceil((len(DEFAULT_SYSTEM_PROMPT) + len(build_prompt(variant))) / CHARS_PER_TOKEN) + 12
    target = args.max_new_tokens if stage == "rl" else SFT_TARGET_TOKENS
    videos = args.batch_size
    rows = videos * (args.num_generations if stage == "rl" else 1)
    padded = videos > 1 and (stage == "sft" or not frame_hw)
    return dict(video_tokens=vt, prompt_tokens=vt + text, target=target, rows=rows, videos=videos,
                seq_len=vt + text + target, patches=4 * vt * videos, keep=target + 1, padded=padded)


def estimate_memory(config, args, stage: str, world: int = 1, device_type: str = "cuda",
                    shapes: dict | None = None, frame_hw: tuple[int, int] | None = None) -> dict:
    """Per-GPU memory of one training step, in bytes, for `stage` 'sft' or 'rl', `world` GPUs
    (sharded when args.fsdp), LoRA when args.lora_rank. Every line states its formula (P = all
    parameters, T = trainable ones, N = world size when sharded by FSDP, else 1):
      weights      full: fp32 master weights 4P/N (FSDP2 keeps fp32 shards and casts to bf16 per
                   layer, so there is no separate "master copy"); LoRA: frozen base b*P/N (b = 2 for
                   the bf16 base on GPU, 4 on CPU) + fp32 adapters 4T/N
      gradients    fp32, 4T/N
      optimizer    AdamW exp_avg + exp_avg_sq, fp32: 8T/N
      reference    RL with beta > 0: the frozen fp32 copy 4P/N; 0 with LoRA (adapters switched off)
      rollout copy RL under FSDP with the gather (rollout_weights): the full weights in the compute
                   dtype, c*P, NOT divided by N; 0 without FSDP (the weights are whole already)
      KV cache     RL sampling: layers x 2 (k, v) x kv_heads x head_dim x c x rows x (prompt + T)
      compute copies  no FSDP, full fine-tuning on GPU: autocast caches a bf16 copy of every trainable
                   fp32 weight for the whole forward+backward, 2T; FSDP: the root module's gathered
                   weights, and gradients when trainable (embeddings, lm_head, ...: kept from forward
                   to the end of backward) c P_root + c P_root_trainable, two gathered layers (current
                   + prefetched) 2 c P_layer, one layer's unsharded fp32 gradients 4 T_layer
      activations  activation_memory(): held for backward + max(one recomputed layer, the loss's
                   transient logits copies)
    Peak = weights + optimizer + reference + max(rollout phase: rollout copy + KV cache,
                                                 update phase: gradients + compute copies + activations)
    (gradients are freed before sampling; the rollout copy is freed before the update). Not counted:
    the CUDA context (~0.5 GiB) and allocator fragmentation (often 5-15%)."""
    rl = stage == "rl"
    fsdp = bool(getattr(args, "fsdp", False)) and world > 1
    shard = world if fsdp else 1
    cuda = device_type == "cuda"
    c = 2 if cuda else 4                                            # compute dtype bytes (bf16 / fp32)
    lora = dict(rank=args.lora_rank, alpha=getattr(args, "lora_alpha", None),
                targets=[t for t in getattr(args, "lora_targets", ",".join(LORA_TARGETS)).split(",") if t]) \
        if getattr(args, "lora_rank", None) else None
    pc = count_parameters(config, lora)
    P = pc["total"]
    if lora:
        T = pc["adapters"]
        base_b = 2 if _lora_base_dtype(args, device_type) == torch.bfloat16 else 4
        weights = (base_b * P + 4 * T) / shard
    else:
        T = P - (pc["vision"] if getattr(args, "freeze_vision", False) else 0)
        weights = 4 * P / shard
    grads, optim = 4 * T / shard, 8 * T / shard
    beta = getattr(args, "beta", 0.0) or 0.0
    reference = 4 * P / shard if (rl and beta > 0 and not lora) else 0
    gather = rl and fsdp and not getattr(args, "no_rollout_gather", False)
    rollout_copy = c * (P + (T if lora else 0)) if gather else 0
    if fsdp:
        root_trainable = 0 if lora else pc["root"]
        layer_trainable = T / pc["n_layers"] if lora else pc["layer"]
        compute_copies = c * (pc["root"] + root_trainable) + 2 * c * pc["layer"] + 4 * layer_trainable
    else:
        compute_copies = 2 * T if cuda else 0  # autocast's cached bf16 copies of trainable fp32 weights
    sh = shapes or sequence_shapes(args, stage, frame_hw)
    tc = config.text_config
    kv_cache = (tc.num_hidden_layers * 2 * tc.num_key_value_heads * (tc.hidden_size // tc.num_attention_heads)
                * c * sh["rows"] * sh["seq_len"]) if rl else 0
    grad_ckpt = bool(getattr(args, "grad_ckpt", False))
    act = activation_memory(config, rows=sh["rows"], seq_len=sh["seq_len"], patches=sh["patches"], keep=sh["keep"],
                            act_bytes=c, grad_ckpt=grad_ckpt, padded=sh["padded"], loss=stage,
                            vision_trainable=not lora and not getattr(args, "freeze_vision", False),
                            lora_dropout=(getattr(args, "lora_dropout", 0.0) or 0.0) if lora else 0.0,
                            lora_targets=lora["targets"] if lora else (), lora_rank=lora["rank"] if lora else 0)
    # the loss's transient logits copies live at the end of forward / start of backward, the recomputed
    # layer later in backward: the two peaks do not add up
    activations = act["held"] + max(act["recompute"], act["logits_peak"])
    persistent = weights + optim + reference
    rollout_phase = rollout_copy + kv_cache
    update_phase = grads + compute_copies + activations
    return dict(params=pc, trainable=T, world=world, fsdp=fsdp, lora=lora, compute_bytes=c, shapes=sh,
                device_type=device_type,
                grad_ckpt=grad_ckpt, weights=weights, gradients=grads, optimizer=optim, reference=reference,
                rollout_copy=rollout_copy, kv_cache=kv_cache, compute_copies=compute_copies,
                activations=activations, activation_parts=act,
                rollout_phase=rollout_phase, update_phase=update_phase,
                peak=persistent + max(rollout_phase, update_phase),
                peak_phase="rollout" if rollout_phase > update_phase else "update")


def format_memory_report(est: dict, stage: str, model_name: str) -> str:
    pc, sh = est["params"], est["shapes"]
    scale, su = (GiB, "GiB") if est["peak"] >= 2 * GiB else (2 ** 20, "MiB")  # the toy reads in MiB
    g = lambda b: f"{b / scale:8.2f} {su}"
    unit = "GPU" if est["device_type"] == "cuda" else "CPU process"
    par = f"FSDP2 over {est['world']} {unit}s" if est["fsdp"] else \
        (f"DDP over {est['world']} {unit}s (full replicas)" if est["world"] > 1 else f"1 {unit}")
    mode = f"LoRA rank {est['lora']['rank']} on {','.join(est['lora']['targets'])}" if est["lora"] else "full fine-tuning"
    lines = [
        f"model {model_name}: Qwen2_5_VLForConditionalGeneration built on the meta device (no weights)",
        f"parameters {pc['total']:,} = vision {pc['vision']:,} + language model {pc['language']:,} "
        f"({pc['n_layers']} layers x {pc['layer']:,}, embeddings {pc['embed']:,}) + lm_head {pc['lm_head']:,}",
        f"trainable {est['trainable']:,} ({mode}); FSDP root group {pc['root']:,}",
        f"setting: {stage}, {par}, compute {'bf16' if est['compute_bytes'] == 2 else 'fp32'}, gradient checkpointing "
        f"{'on' if est['grad_ckpt'] else 'off'}; micro-batch of {sh['videos']} video(s) = {sh['rows']} rows "
        f"(RL: x G), {sh['video_tokens']} video tokens + {sh['prompt_tokens'] - sh['video_tokens']} prompt text + "
        f"{sh['target']} target tokens per row, {sh['patches']} vision patches",
        f"per-{unit} memory (estimate; formulas in vadr.estimate_memory):",
        f"  weights              {g(est['weights'])}",
        f"  gradients            {g(est['gradients'])}",
        f"  optimizer (AdamW)    {g(est['optimizer'])}",
        f"  reference model      {g(est['reference'])}",
        f"  rollout copy         {g(est['rollout_copy'])}",
        f"  KV cache (sampling)  {g(est['kv_cache'])}",
        f"  compute copies       {g(est['compute_copies'])}",
        f"  activations          {g(est['activations'])}  (held {est['activation_parts']['held'] / scale:.2f}"
        f" + max(recompute {est['activation_parts']['recompute'] / scale:.2f}, loss logits "
        f"{est['activation_parts']['logits_peak'] / scale:.2f}))",
        f"  peak                 {g(est['peak'])}  ({est['peak_phase']} phase"
        + ("; + CUDA context ~0.5 GiB and fragmentation)" if unit == "GPU" else "; + the Python process itself)"),
    ]
    return "\n".join(lines)


def dry_run(args, stage: str, paper_preset: dict | None = None) -> dict:
    """--dry-run: config alone -> parameter counts and the per-GPU estimate, printed; nothing is
    loaded, no process group is started. Planned GPUs: --dry-run-gpus, else WORLD_SIZE, else 1."""
    config = load_config(args.model)
    if paper_preset and not is_toy_config(config) and getattr(args, "preset", None) is None:
        # train_rl picks its preset from --data (absent in a dry run): a real model gets the paper's
        for item in getattr(args, "preset_filled", []):
            k = item.split("=", 1)[0]
            if k in paper_preset:
                setattr(args, k, paper_preset[k])
    if not is_toy_config(config) and not getattr(args, "no_grad_ckpt", False):
        args.grad_ckpt = True  # as load_for_training does for a real model
    world = args.dry_run_gpus or int(os.environ.get("WORLD_SIZE", 1))
    device_type = torch.device(args.device).type if getattr(args, "device", None) else "cuda"
    hw = args.dry_run_video_hw
    if hw:
        try:
            hw = tuple(int(v) for v in hw.lower().replace("x", ",").split(","))
            assert len(hw) == 2 and min(hw) > 0
        except (ValueError, AssertionError):
            raise SystemExit(f"--dry-run-video-hw {args.dry_run_video_hw!r}: expected HEIGHT,WIDTH such as 240,320")
    elif is_toy_config(config):
        hw = TOY_FRAME_HW
    est = estimate_memory(config, args, stage, world=world, device_type=device_type, frame_hw=hw)
    print(format_memory_report(est, stage, args.model))
    return est


def measure_cpu_memory(fn) -> dict:
    """Run fn(mark) under torch.profiler(profile_memory=True) and follow the CPU allocator's running
    total: dict(held = bytes allocated (net) when fn calls mark(), e.g. right after the forward, i.e.
    what the forward left for backward; peak = the highest net allocation during fn; end = the net at
    its end), all relative to the start. The CPU stand-in for torch.cuda.max_memory_allocated that
    tests/test_scale.py checks the estimates against."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    MARK = 7_777_777  # a (freed at once) allocation of this many bytes marks the point in the trace

    def mark():
        torch.empty(MARK, dtype=torch.uint8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(mark)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:  # the allocator records live in the Kineto trace
        prof.export_chrome_trace(f.name)
        trace = json.load(open(f.name))
    recs = sorted((e for e in trace["traceEvents"] if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    net = peak = 0
    held = None
    for e in recs:  # in time order
        b = e["args"]["Bytes"]
        if abs(b) == MARK:  # the marker itself counts neither in the net nor in the peak
            held = net if held is None else held
            continue
        net += b
        peak = max(peak, net)
    return dict(held=held, peak=peak, end=net)


# ---- flags and the offline commands --------------------------------------------------------------

def add_scale_args(ap: argparse.ArgumentParser, stage: str):
    """Flags of this section, shared by train_sft.py (stage 'sft') and train_rl.py ('rl')."""
    g = ap.add_argument_group("LoRA, scale-out and memory (README tiers; vadr section 10)")
    g.add_argument("--lora-rank", type=int, default=None,
                   help="train rank-R LoRA adapters on the language model's projections instead of all "
                        "weights (the one-GPU tier; vision tower frozen). Default: off (full fine-tuning)")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator: update = (alpha / R) B A (default 2R)")
    g.add_argument("--lora-dropout", type=float, default=0.0,
                   help="dropout on the adapter path's input (default 0: no extra activation memory)")
    g.add_argument("--lora-targets", default=",".join(LORA_TARGETS),
                   help="comma-separated nn.Linear names inside the language model to adapt")
    g.add_argument("--lora-base-dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="dtype of the frozen base weights under LoRA (auto: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--merge", default=None, metavar="CKPT",
                   help="fold the adapters of a LoRA checkpoint (or run dir) into its base, write a full "
                        "Hugging Face directory to --out (must be new), and exit")
    g.add_argument("--dry-run", action="store_true",
                   help="build the --model config on the meta device, print parameter counts and the "
                        "per-GPU memory estimate at these settings, and exit (no weights needed)")
    g.add_argument("--dry-run-gpus", type=int, default=None,
                   help="GPUs the dry run plans for (default: WORLD_SIZE or 1); with --fsdp the training "
                        "state is sharded over them")
    g.add_argument("--dry-run-video-hw", default=None, metavar="H,W",
                   help="frame size the dry run assumes (default: the --max-pixels bound for a real model, "
                        "112,112 for the toy)")
    g.add_argument("--no-grad-ckpt", action="store_true",
                   help="keep gradient checkpointing off for a real (non-toy) model, where it is on by default")
    if stage == "rl":
        g.add_argument("--no-rollout-gather", action="store_true",
                       help="under FSDP, sample with sharded weights (an all-gather of every layer at every "
                            "decode step) instead of gathering them once per RL step")
    return g


def offline_command(args, stage: str, paper_preset: dict | None = None):
    """--merge or --dry-run: do it and return (the scripts then exit without training)."""
    if args.merge:
        return merge_checkpoint(args.merge, args.out)
    return dry_run(args, stage, paper_preset)


def _demo(argv=None):
    ap = argparse.ArgumentParser(description="One forward of a Qwen2.5-VL on one video.")
    ap.add_argument("--model", default="toy", help="'toy' or a local checkpoint directory")
    ap.add_argument("--video", default=None,
                    help="video file (default: the first video of the toy world in data/toy/videos)")
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video (paper: 16)")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="max pixels per frame")
    args = ap.parse_args(argv)
    if args.video is None:
        vids = sorted(os.listdir("data/toy/videos")) if os.path.isdir("data/toy/videos") else []
        if not vids:
            raise SystemExit("no --video given and no toy world in data/toy: run `python data.py toy --out data/toy` "
                             "first, or pass --video FILE")
        args.video = os.path.join("data/toy/videos", vids[0])
    model, tok = load_model(args.model)
    v = read_video(args.video, args.frames)
    vid = encode_frames(v["frames"], v["sampled_fps"], max_pixels=args.max_pixels)
    batch = build_chat_inputs(tok, [build_prompt("fine")], vid["video_grid_thw"])
    with torch.no_grad():
        out = model(**batch, **vid)
    print(f"{args.video}: {v['total_frames']} frames at {v['fps']:.1f} fps, sampled {v['indices'].tolist()}")
    print(f"grid {vid['video_grid_thw'].tolist()} -> {video_token_count(vid['video_grid_thw'])} video tokens; "
          f"input_ids {tuple(batch['input_ids'].shape)}; logits {tuple(out.logits.shape)}; "
          f"params {sum(p.numel() for p in model.parameters()):,}")


if __name__ == "__main__":
    _demo()
