"""vadr.py -- the model side of Vad-R1: what the model sees and what it says.

One video from its file to the model's answer, in one file (importing no other project file):
  1. the Perception-to-Cognition chain-of-thought prompt (paper Sec. 3.1, App. C.1, Fig. 9);
  2. the completion parser, the format check and the one weak-label rule;
  3. frame sampling with decord: N frames at linspace over a *kept window*, so that AVA-GRPO's
     trimmed videos (Algorithm 1) re-sample N frames from what remains (App. C.3);
  4. Qwen2.5-VL's video front end in plain torch, bit-exact against the reference (tests/golden);
  5. the chat layout with <|video_pad|> placeholders (docs/paper-vs-authors.md s.4), and the
     SFT loss on its assistant tokens (sft_loss_sum);
  6. model loading from a local checkpoint directory (the `toy` preset: extras/toymodel.py);
  7. the small distributed block: one process or torchrun (wrapping: extras/training.py).
Demo (one forward, one video): python -m extras.toymodel [--model DIR --video V]; tests/test_vadr.py

Departures from the paper / the authors' scripts (docs/paper-vs-authors.md):
  * Frame indices are rounded from linspace(0, K-1, N) over the K kept frames (the paper's 16
    uniform frames); the authors' 2 fps training rule and its short trims are rule='authors' (s.5).
  * second_per_grid_ts follows the sampled rate; grid_time='one': the authors' RL trainer's 1.0.
  * The completion ends with <|im_end|>; the "\n" the chat template writes after it is not part
    of the target (generation stops at <|im_end|>, so it would never be sampled).
  * Batches are LEFT-padded everywhere: a completion starts at the same column in every row.
  * <which> is read with one strict rule (label_from_which); the authors' reward is an exact
    match on the binary label; eval.py also reports their looser rule (s.3).
"""
from __future__ import annotations

import datetime
import gc
import math
import os
import re
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


class InputError(ValueError):
    """Bad user input: the message names the file (and line); run_main prints it, no traceback."""


def run_main(main, argv=None):
    """Run a script's main(); an InputError ends the process with its message and exit code 1. A
    torchrun member ends with os._exit after flushing stdio, skipping the interpreter teardown
    that gloo's worker threads can abort (docs/engineering-notes.md)."""
    try:
        rc = main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if _STARTED_PROCESS_GROUP:
        gc.collect()  # DataLoader iterators caught in reference cycles shut their workers down now
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc if isinstance(rc, int) else 0)
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


def _category_key(name: str) -> str:
    """Case and spaces folded; a zero-width character (the released 'Avalanche and Landslide' has
    one) counts as a space."""
    name = re.sub(r"[\u200b\u200c\u200d\u2060\ufeff]", " ", name)
    return " ".join(name.strip().lower().split())


# The released files spell five categories two ways (docs/paper-vs-authors.md s.1).
_CATEGORY_LOOKUP = {_category_key(c): c for c in CATEGORIES}
_CATEGORY_LOOKUP.update({"animal hurts human": "Animals Hurt Human", "drown": "Drowning",
                         "red lgiht violation": "Red Light Violation"})


def normalize_category(name: str) -> str | None:
    """Any released spelling -> one of the 37 categories ("Drown" -> "Drowning"), else None."""
    return _CATEGORY_LOOKUP.get(_category_key(name)) if isinstance(name, str) else None


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The three parts of App. C.1 (task, output specification, format with an example each), in our
# own words; the variants differ in <which> (build_prompt; docs/paper-vs-authors.md s.2).
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
    """'abnormal' / 'normal' if the WHOLE text has the 4-step / 2-step layout, else None (Table 7's
    format reward is 1 exactly when this is not None)."""
    layouts = (("abnormal", _ABNORMAL_LAYOUT), ("normal", _NORMAL_LAYOUT))
    return next((n for n, lay in layouts if isinstance(text, str) and lay.fullmatch(text)), None)


# \d+(?:\.\d*)?, not \d+\.?\d*: the same numbers, but a run of N digits splits only one way, so
# a search over "[" + "1" * N is linear, not O(N^2) (outputs are untrusted input)
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_WHEN = re.compile(r"\[\s*(" + _NUM + r")\s*,\s*(" + _NUM + r")\s*\]")


def _first_tag(text: str, tag: str) -> str | None:
    """Inner text of the first <tag>..</tag>; str.find keeps it linear in len(text)."""
    i = text.find(f"<{tag}>")
    j = text.find(f"</{tag}>", i + len(tag) + 2) if i >= 0 else -1
    return text[i + len(tag) + 2:j].strip() if j >= 0 else None


def parse_when(s: str | None) -> tuple[float, float] | None:
    """'[0.25, 0.5]' -> (0.25, 0.5); also '[.3, 1]'. Returned as written, even reversed
    (validity is for the caller to judge: rewards.verification_trim, eval's IoU rules)."""
    m = _WHEN.search(s) if s else None
    if not m:
        return None
    a, b = float(m.group(1)), float(m.group(2))
    return (a, b) if math.isfinite(a) and math.isfinite(b) else None


def label_from_which(which: str | None) -> str | None:
    """The one weak-label rule (rewards, eval's strict mode, manifest checks): 'Normal' -> Normal;
    'Abnormal' or one of the 37 categories (any released spelling) -> Abnormal; anything else
    ('normal', 'Normal.', 'Unknown', empty, not a string) -> None: no accuracy reward (s.2)."""
    w = which.strip() if isinstance(which, str) else ""
    if w == "Normal":
        return "Normal"
    return "Abnormal" if w == "Abnormal" or normalize_category(w) is not None else None


def weak_label(text) -> str | None:
    """A manifest's weak label (`solution`, `anomaly_type`) -> 'Abnormal' / 'Normal' / None; tags
    around it, case and a trailing period are forgiven (a manifest is checked, an output is not)."""
    if not isinstance(text, str):
        return None
    w = TAG_RE.sub(" ", text).strip().rstrip(".").strip()
    return label_from_which({"normal": "Normal", "abnormal": "Abnormal"}.get(w.lower(), w))


def strip_tags(text: str | None) -> str:
    """Each project tag -> one space (App. C.2's length counts words of the text without tags)."""
    return TAG_RE.sub(" ", text or "")


def count_words(text: str | None) -> int:
    """Words without the tags: the one count behind App. C.2's length ranges (SFT and outputs)."""
    return len(strip_tags(text).split())


def parse_completion(text) -> dict:
    """A completion's parts; never raises, whatever the input. -> dict(think, steps, answer,
    which, what, when, where, why, how, label): the first <think>/<answer> block's text (None if
    absent or unclosed); the step texts inside think (else anywhere), in order; the first of each
    answer tag inside the answer (else anywhere); when = parse_when; label = label_from_which."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    think, answer = _first_tag(text, "think"), _first_tag(text, "answer")
    scope_t = think if think is not None else text
    steps = [_first_tag(scope_t, f"step{i}") for i in range(1, 5)]
    scope_a = answer if answer is not None else text
    out = dict(think=think, steps=[s for s in steps if s is not None], answer=answer)
    for t in ("which", "what", "when", "where", "why", "how"):
        out[t] = _first_tag(scope_a, t)
    out["when"] = parse_when(out["when"])
    out["label"] = label_from_which(out["which"])
    return out


# ---- 3. Reading a video (decord), uniform sampling over a kept window ----------------------------

def kept_frames(total_frames: int, keep=((0.0, 1.0),)) -> np.ndarray:
    """Frames kept by (a, b) fraction windows: i is kept when a*total <= i < b*total for some
    window. "Remove [s, e]" is keep=[(0, s), (e, 1)]; "drop the head" is keep=[(0.3, 1)]."""
    if total_frames <= 0:
        raise ValueError(f"a video needs at least one frame, got total_frames={total_frames}")
    parts = []
    for a, b in keep:
        if not (0.0 <= a <= b <= 1.0):
            raise ValueError(f"kept window ({a}, {b}) is not inside [0, 1] with a <= b")
        lo, hi = math.ceil(a * total_frames - 1e-9), math.ceil(b * total_frames - 1e-9)
        parts.append(np.arange(lo, hi, dtype=np.int64))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # sorted, unique


FRAME_RULES = ("paper", "authors")  # --frame-rule (docs/paper-vs-authors.md s.5)


def sample_frame_indices(total_frames: int, num_frames: int = 16, keep=((0.0, 1.0),),
                         rule: str = "paper", fps: float | None = None) -> np.ndarray:
    """Frame indices into a video of total_frames, over the kept windows (K frames). rule 'paper'
    (App. C.3, 16 frames a video): N at linspace(0, K-1, N), rounded (repeats when K < N). rule
    'authors' (docs/paper-vs-authors.md s.5): 2 fps on a whole video; on a trim, N at linspace
    when K >= N, else its first even number of frames. Raises if fewer frames remain than the
    rule can use (0, or 1 under 'authors'): a degenerate trim is never a silent empty video."""
    if rule not in FRAME_RULES:
        raise ValueError(f"frame rule must be one of {FRAME_RULES}, got {rule!r}")
    kept = kept_frames(total_frames, keep)  # (K,)
    _even = lambda n: int(n) // 2 * 2  # floored to an even count
    if len(kept) < (2 if rule == "authors" else 1):
        raise ValueError(f"the kept windows {list(keep)} leave {len(kept)} frame(s) of a "
                         f"{total_frames}-frame video")
    n = num_frames
    if rule == "authors" and len(kept) == total_frames:  # the whole video: 2 fps, in [4, N]
        n = min(max(total_frames / (fps or 1.0) * 2, 4), _even(min(num_frames, total_frames)))
        n = _even(min(n, total_frames))
    elif rule == "authors" and len(kept) < num_frames:   # a short trim: its first even frames
        return kept[:_even(len(kept))]
    pos = np.linspace(0, len(kept) - 1, n).round().astype(np.int64)  # (n,) into kept
    return kept[pos]  # (n,) frame indices


class VideoError(InputError, RuntimeError):
    """A video file that cannot be used; the message names the file. why: a text, or the decoder's
    exception (its first line is kept); reason: data.REASONS' name for it."""

    def __init__(self, path: str, why, reason: str = "unreadable-video"):
        if isinstance(why, Exception):
            why = f"{type(why).__name__}: " + str(why).strip().split("\n")[0][:200]
        self.path, self.why, self.reason = path, why, reason
        super().__init__(f"cannot read video {path}: {why}")


# Decoders may count a few frames off a row's total_frames (edit lists, B-frame delay): max(3
# frames, 1%) is tolerated; 1% bounds the shift of the <when> fractions to 0.01.
FRAME_SLACK = (3, 0.01)


def _open_video(path: str):
    import decord  # here, so that modules that never read video do not need it
    if not os.path.isfile(path):
        raise VideoError(path, "file not found")
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as e:  # decord raises DECORDError, RuntimeError, ... on untrusted files
        raise VideoError(path, e) from e


def count_frames(path: str) -> int:
    """Number of decodable frames (RL rows carry no total_frames; the trims need it)."""
    return len(_open_video(path))


def read_video(path: str, num_frames: int = 16, keep=None, rule: str = "paper",
               expect_frames: int | None = None) -> dict:
    """Frames sampled by `rule` over the kept windows, decoded with decord -> dict(frames uint8
    (n, H, W, 3), indices (n,), timestamps (n,) s, fps, sampled_fps, total_frames). sampled_fps =
    n / K * fps for K kept frames is the rate the model sees (docs/paper-vs-authors.md s.4).
    VideoError if the file cannot be used, or its count is off expect_frames (FRAME_SLACK)."""
    keep = ((0.0, 1.0),) if keep is None else tuple(keep)
    vr = _open_video(path)
    total = len(vr)
    if total <= 0:
        raise VideoError(path, "decord reads 0 frames")
    if expect_frames and abs(total - expect_frames) > max(FRAME_SLACK[0],
                                                          FRAME_SLACK[1] * expect_frames):
        raise VideoError(path, f"decodes {total} frames but its row says total_frames="
                         f"{expect_frames} (off by more than max(3, 1%))", "frame-count-mismatch")
    fps = float(vr.get_avg_fps()) or 1.0
    idx = sample_frame_indices(total, num_frames, keep, rule, fps)  # (n,)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()  # (n, H, W, 3) uint8
    except Exception as e:  # a truncated or corrupt stream, a size decord cannot convert (8x8)
        raise VideoError(path, e) from e
    if frames.ndim != 4 or frames.shape[0] != len(idx) or frames.shape[-1] != 3:
        raise VideoError(path, f"decord returns frames of shape {frames.shape}, not (n, H, W, 3)")
    if max(frames.shape[1:3]) / min(frames.shape[1:3]) > 200:  # smart_resize's limit (Qwen's)
        raise VideoError(path, f"aspect ratio of {frames.shape[1]}x{frames.shape[2]} exceeds 200")
    n_kept = len(kept_frames(total, keep))
    return dict(frames=frames, indices=idx, timestamps=idx / fps, fps=fps,
                sampled_fps=len(idx) / n_kept * fps, total_frames=total)


# ---- 4. Qwen2.5-VL video preprocessing from scratch (bit-exact vs the reference, tests/golden) ---

PATCH_SIZE = 14            # ViT patch side
TEMPORAL_PATCH_SIZE = 2    # frames per 3D patch
MERGE_SIZE = 2             # 2x2 patches merged into one LLM token
IMAGE_FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: resized sides are multiples of this
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 128 * 28 * 28  # paper App. C.3 / D.2
# The authors' pixel bands (s.5): training (min = max = 128*28*28, max widened to int(1.05 * min);
# the paper preset's) and inference.
AUTHORS_TRAIN_PIXELS = (128 * 28 * 28, int(128 * 28 * 28 * 1.05))  # (100352, 105369)
AUTHORS_INFER_PIXELS = (28 * 28, 128 * 28 * 28)
GRID_TIMES = ("real", "one")  # --grid-time: second_per_grid_ts from the frame rate, or 1.0


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
    """uint8 frames (T, H, W, 3) -> (pixel_values_videos float32 (N, 1176), video_grid_thw (1, 3)):
    N = grid_t * grid_h * grid_w patches of 3 x 2 x 14 x 14 (docs/paper-vs-authors.md s.4). Exact
    (tests/golden) when the uint8 tensor is resized, then normalised in ONE float32 step."""
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
                  max_pixels=DEFAULT_MAX_PIXELS, grid_time: str = "real") -> dict:
    """Frames -> the three vision inputs of one video for the model's forward."""
    pv, thw = preprocess_frames(frames, min_pixels, max_pixels)
    # second_per_grid_ts: seconds spanned by one temporal patch (2 frames) -> mRoPE time ids;
    # grid_time 'one': 1.0 whatever the frame rate, as in the authors' RL trainer (s.5).
    if grid_time not in GRID_TIMES:
        raise ValueError(f"grid_time must be one of {GRID_TIMES}, got {grid_time!r}")
    spg = TEMPORAL_PATCH_SIZE / sampled_fps if grid_time == "real" else 1.0
    spg = torch.tensor([spg], dtype=torch.float32)  # (1,)
    return dict(pixel_values_videos=pv, video_grid_thw=thw, second_per_grid_ts=spg)


def encode_video(path: str, num_frames: int = 16, keep=None, min_pixels=DEFAULT_MIN_PIXELS,
                 max_pixels=DEFAULT_MAX_PIXELS, frame_rule: str = "paper",
                 grid_time: str = "real", expect_frames: int | None = None) -> dict:
    """read_video + encode_frames: the model's three vision inputs for one video file."""
    v = read_video(path, num_frames, keep, frame_rule, expect_frames)
    return encode_frames(v["frames"], v["sampled_fps"], min_pixels, max_pixels, grid_time)


def video_args(args) -> dict:
    """The video flags (--frames, --min-pixels, ...) as encode_video's keywords."""
    return dict(num_frames=args.frames, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                frame_rule=args.frame_rule, grid_time=args.grid_time)


def collate_videos(videos: list[dict]) -> dict:
    """Batch several videos of different sizes: patches are concatenated along dim 0 (the vision
    tower splits them back with video_grid_thw), one grid row and one time step per video."""
    cat = lambda k: torch.cat([v[k] for v in videos], 0)
    return dict(pixel_values_videos=cat("pixel_values_videos"),   # (sum N_i, 1176)
                video_grid_thw=cat("video_grid_thw"),             # (B, 3)
                second_per_grid_ts=cat("second_per_grid_ts"))     # (B,)


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
    """Token ids of the chat layout (docs/paper-vs-authors.md s.4) with n_video_tokens pads. Text
    pieces are tokenized separately around the placeholders; every boundary is a special token,
    where Qwen's pre-tokenizer splits anyway, so this equals tokenizing the whole string."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    tail = f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    return enc(head) + [_tok_id(tokenizer, "<|video_pad|>")] * n_video_tokens + enc(tail)


def build_chat_inputs(tokenizer, prompts: list[str], video_grid_thw,
                      system: str = DEFAULT_SYSTEM_PROMPT,
                      targets: list[str] | None = None) -> dict:
    """A LEFT-padded batch (every completion starts in the same column), one video per row:
    input_ids, attention_mask, mm_token_type_ids (B, L) (2 on video placeholders: transformers
    builds the 3D mRoPE positions from it), and with targets labels (B, L), -100 except the target
    and the <|im_end|> closing it (SFT trains on the answer only)."""
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
        t = [] if targets is None else \
            tokenizer(targets[i], add_special_tokens=False)["input_ids"] + [im_end]
        rows.append(ids + t)
        labels.append([-100] * len(ids) + t)
    L = max(len(r) for r in rows)

    def left_pad(seqs, value):  # (B, L)
        out = torch.full((len(seqs), L), value, dtype=torch.long)
        for i, r in enumerate(seqs):
            out[i, L - len(r):] = torch.tensor(r, dtype=torch.long)
        return out
    input_ids = left_pad(rows, pad_id)  # (B, L)
    out = dict(input_ids=input_ids, attention_mask=left_pad([[1] * len(r) for r in rows], 0),
               mm_token_type_ids=(input_ids == video_id).to(torch.int32) * 2)  # (B, L)
    if targets is not None:
        out["labels"] = left_pad(labels, -100)  # (B, L)
    return out


def sft_loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    """train_sft.py's loss: summed next-token cross-entropy over the labelled (assistant) tokens
    of a micro-batch, and their count. Logits are computed only for the last columns that hold
    labels (left padding puts every target at the end), which spares the lm_head most of a
    152k-vocabulary projection. Here, not in train_sft.py, so that extras/bench.py times it."""
    labels = batch["labels"]  # (B, L), -100 off target
    has = (labels != -100).any(0).nonzero()
    first = int(has.min()) if len(has) else labels.shape[1] - 1
    keep = labels.shape[1] - first + 1           # logits for positions first-1 .. L-1
    logits = model(**model_inputs(batch), logits_to_keep=keep).logits  # (B, keep, V)
    tgt = labels[:, -keep:][:, 1:]               # (B, keep-1): token p+1 is predicted at p
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tgt.flatten(),
                           ignore_index=-100, reduction="sum")
    return loss, int((tgt != -100).sum())


# ---- 6. Models: a local checkpoint directory --------------------------------------------

def load_model(name_or_dir: str, dtype=None, device=None):
    """-> (Qwen2_5_VLForConditionalGeneration, tokenizer) from one local Hugging Face directory;
    nothing is ever downloaded. A run directory, a LoRA run and `--model toy` are resolved to
    this by extras/lora.load_merged (the rule: extras/checkpoint.resolve_checkpoint)."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    if not os.path.isfile(os.path.join(name_or_dir, "config.json")):
        raise InputError(
            f"--model {name_or_dir!r} is neither 'toy' nor a local checkpoint directory "
            "(nothing is downloaded: point it at a directory holding config.json and weights)")
    tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(name_or_dir,
                                                               dtype=dtype or torch.float32)
    tokenizer.padding_side = "left"  # documented in build_chat_inputs
    if device is not None:
        model.to(device)
    return model, tokenizer


# ---- 7. Distributed block: one process or torchrun, gloo on CPU and nccl on GPU ----------------
# Without torchrun (no RANK in the environment) every helper degrades to a no-op.

_STARTED_PROCESS_GROUP = False  # set by setup_distributed, read by run_main


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """--device, the one rule of every script: None (cuda if available, else cpu), 'cpu', 'cuda'
    (this process's GPU: cuda:LOCAL_RANK) or 'cuda:N'. Anything else, or CUDA where there is
    none, is an InputError (never a silent fall back to the CPU)."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: not a device this project runs on; pass cpu, cuda or "
                         "cuda:N")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
               else "no GPU is visible")
        raise InputError(f"--device {name}: no CUDA device is available ({why}); pass --device cpu")
    index, n = local_rank if dev.index is None else dev.index, torch.cuda.device_count()
    if index >= n:
        raise InputError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 .. "
                         f"cuda:{n - 1}; pass one of them")
    return torch.device("cuda", index)


def setup_distributed(device: str | None = None) -> dict:
    """Start torch.distributed under torchrun (nccl on CUDA, gloo on CPU; device: resolve_device)
    -> dict(rank, world_size, local_rank, device, distributed)."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in
                          (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    distributed = "RANK" in os.environ and world > 1
    dev = resolve_device(device, local)
    if distributed and dev.type == "cuda" and device and ":" in device:
        raise InputError(f"--device {device} under torchrun: every rank would use that one GPU; "
                         "pass --device cuda (rank r takes cuda:LOCAL_RANK)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
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


def autocast(device):
    """bf16 autocast on GPU (paper: bf16), plain fp32 on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def unwrap(model):
    """The Qwen2_5_VLForConditionalGeneration inside a DDP wrapper (FSDP2 wraps in place)."""
    return getattr(model, "module", model)


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
