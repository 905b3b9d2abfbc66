"""extras/flagcheck.py -- every flag of train_sft.py, train_rl.py and eval.py (inference) checked
before anything is loaded, and the guard that keeps a new run from overwriting an old one.

Not part of the method: what makes a mistyped flag cost three seconds instead of a run. Called
right after argument parsing (after the presets, and after eval.resolve_inference_args filled in
the authors' settings), before the toy world, the manifest, the tokenizer or the model:

    check_flags(args, "sft" | "rl" | "eval" | "inspect" | "gpucheck")

(inspect: extras/inspect.py; gpucheck: extras/gpucheck.py, whose flags end at --device.)

A bad value is a vadr.InputError, printed by vadr.run_main as one line and exit code 1:

    error: train_rl.py: --num-generations 1: GRPO needs at least 2 completions per video ...

--device follows vadr.resolve_device (cpu, cuda, cuda:N; CUDA only where there is one).
Existing data is never lost without being asked: a training --out that already holds a run
(log.jsonl, run_config.json, latest, step-N, init, ...) needs --resume to continue it or
--overwrite to delete it first (so two runs' checkpoints and logs never mix); an eval --out that
exists must be a predictions file (extras/predictions.py), which inference then resumes.
Exercised by: pytest tests/test_bad_input_flags.py
"""
from __future__ import annotations

import math
import os
import re
import shutil

from extras import checkpoint, cli, predictions, scoring
from vadr import InputError, resolve_device

SCRIPTS = {"sft": "train_sft.py", "rl": "train_rl.py", "eval": "eval.py",
           "inspect": "python -m extras.inspect", "gpucheck": "python -m extras.gpucheck"}
# Qwen2.5-VL's processor caps a frame at 16384 patches of 28x28 (max_pixels 12845056); more is
# no setting of the model's, and a frame that large exhausts memory while decoding.
QWEN_MAX_PIXELS = 16384 * 28 * 28


def _ge(lo):
    return lambda v, a: v >= lo


def _frames_ok(v, a):
    # the authors' rule takes an even number of frames (vadr.sample_frame_indices): 1 leaves none
    return v >= (2 if getattr(a, "frame_rule", None) == "authors" else 1)


def _max_pixels_ok(v, a):
    return (a.min_pixels is None or v >= a.min_pixels) and v <= QWEN_MAX_PIXELS


# (flag dest, test(value, args), why): applied where the script has the flag and it is set (not
# None). Each reason says what the value means, so that the one-line error says what to pass;
# {name} in it is the value of another flag.
RULES = [
    ("frames", _frames_ok, "a video needs at least 1 frame (2 with --frame-rule authors, which "
                           "takes an even number)"),
    ("min_pixels", lambda v, a: 1 <= v <= QWEN_MAX_PIXELS,
     f"pixels per frame must be in [1, {QWEN_MAX_PIXELS}] (Qwen2.5-VL's 16384 * 28 * 28)"),
    ("max_pixels", _max_pixels_ok, "pixels per frame must be in [--min-pixels {min_pixels}, "
                                   f"{QWEN_MAX_PIXELS}] (Qwen2.5-VL's 16384 * 28 * 28)"),
    ("epochs", _ge(1), "passes over the data: at least 1 (0 trains nothing and leaves no "
                       "checkpoint)"),
    ("max_steps", _ge(1), "at least 1 optimizer step (0 trains nothing and leaves no "
                          "checkpoint); leave it out for whole epochs"),
    ("batch_size", _ge(1), "videos per batch: at least 1"),
    ("grad_accum", _ge(1), "micro-batches per optimizer step: at least 1"),
    ("num_workers", _ge(0), "DataLoader workers: 0 (decode in the main process) or more"),
    ("save_every", _ge(1), "checkpoint every N steps: N >= 1 (the last step is always saved; "
                           "pass a large N for that alone)"),
    ("keep_last", _ge(1), "keeps the newest N step checkpoints: N >= 1 (pass a large N to keep "
                          "them all)"),
    ("lr", lambda v, a: v > 0, "the learning rate must be > 0"),
    ("warmup_ratio", lambda v, a: 0 <= v <= 1, "a share of the steps: in [0, 1]"),
    ("weight_decay", lambda v, a: v >= 0, "AdamW weight decay must be >= 0"),
    ("max_grad_norm", lambda v, a: v > 0, "gradient clipping needs a norm > 0 (0 would zero "
                                          "every gradient)"),
    ("num_generations", _ge(2), "GRPO needs at least 2 completions per video (Eq. 1's std)"),
    ("temperature", lambda v, a: v > 0, "sampling divides the logits by it, so it must be > 0"),
    ("top_p", lambda v, a: 0 < v <= 1, "nucleus sampling keeps a probability mass in (0, 1]"),
    ("max_new_tokens", _ge(1), "a completion needs at least 1 new token"),
    ("beta", lambda v, a: v >= 0, "the KL coefficient must be >= 0 (0 drops the KL term; a "
                                  "negative one rewards drifting from pi_ref)"),
    ("epsilon", lambda v, a: 0 < v < 1, "the clip range [1 - eps, 1 + eps] of Eq. 3 needs "
                                        "0 < eps < 1"),
    ("epsilon_high", lambda v, a: v > 0, "the upper clip 1 + eps_high (DAPO's clip-higher) "
                                         "needs eps_high > 0"),
    ("mu", _ge(1), "policy updates per rollout: at least 1"),
    ("dynamic_max_rounds", _ge(1), "refill rounds per step: at least 1"),
    ("seed", lambda v, a: 0 <= v < 2 ** 32, "seeds are in [0, 2**32) (the scripts derive "
                                            "per-step seeds from it)"),
    ("limit", _ge(1), "the first N videos: N >= 1 (leave it out for all of them)"),
    ("lora_rank", _ge(1), "a LoRA rank is at least 1 (leave it out for full fine-tuning)"),
    ("lora_alpha", lambda v, a: v > 0, "the LoRA scale alpha / R needs alpha > 0"),
    ("lora_dropout", lambda v, a: 0 <= v < 1, "a dropout probability in [0, 1)"),
    ("dry_run_gpus", _ge(1), "the dry run plans for at least 1 GPU"),
    ("videos", _ge(1), "the first N videos of the manifest: N >= 1"),
    ("peak_tflops", lambda v, a: v > 0, "the card's peak bf16 TFLOP/s must be > 0 (leave it out "
                                        "for a card bench.PEAK_BF16_FLOPS knows)"),
    ("project_videos", _ge(1), "the projected epoch has at least 1 video"),
    ("project_gpus", _ge(1), "the projection plans for at least 1 GPU"),
    ("budget_s", lambda v, a: v > 0, "the time plan in seconds must be > 0"),
    ("bench_repeats", _ge(1), "interleaved naive/ours pairs per bench section: at least 1"),
    ("clip_frames", _ge(1), "the rendered clip has at least 1 frame"),
    ("score_tokens", _ge(1), "completion tokens per row in the scoring accounting: at least 1"),
    ("chars", _ge(20), "characters shown of a completion: at least 20 (a longer one shows its "
                       "start and its end)"),
]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_flags(args, stage: str):
    """Refuse (vadr.InputError, one line) any flag value the run could not use. stage: "sft",
    "rl" or "eval" (eval: only its inference mode; --score, --mc and --report take none of these
    flags). Training runs also pass check_run_dir (which, with --overwrite, clears the old run);
    --merge and --dry-run write no run directory and skip that."""
    script = SCRIPTS[stage]
    if stage == "eval" and not (args.model and not args.score and not args.mc):
        return
    for dest, value in sorted(vars(args).items()):  # NaN or inf in any float flag
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{script}: {_flag(dest)} {value}: must be a finite number")
    for dest, ok, why in RULES:
        value = getattr(args, dest, None)
        if value is not None and not isinstance(value, bool) and not ok(value, args):
            raise InputError(f"{script}: {_flag(dest)} {value}: {why.format(**vars(args))}")
    try:  # the rule setup_distributed applies: cpu, cuda, cuda:N, and CUDA only where there is one
        resolve_device(args.device)
    except InputError as e:
        raise InputError(f"{script}: {e}") from None
    if stage == "eval":
        _check_eval_paths(args, script)
        return
    if stage == "gpucheck":  # a random model, no run directory (extras/gpucheck.py checks --out)
        return
    if stage == "inspect":  # samples from --model, writes no run
        _check_model(args, script, "rl")
        return
    if getattr(args, "lora_train_embeddings", False) and not (args.lora_rank or args.resume):
        raise InputError(f"{script}: --lora-train-embeddings trains beside LoRA adapters: add "
                         "--lora-rank R")
    if getattr(args, "plain_scoring", False) and args.dry_run:  # scale.estimate_memory's scorer
        raise InputError(f"{script}: --dry-run estimates the memory of extras/fastpath.py's "
                         "scoring, not grpo's: drop --plain-scoring")
    if not args.merge and not args.resume:
        _check_model(args, script, stage)
    if not (args.merge or args.dry_run):
        check_run_dir(args, script)


def _check_model(args, script: str, stage: str):
    """--model is 'toy' (train_sft.py, eval.py) or a local directory: nothing is downloaded."""
    if (args.model == "toy" and stage != "rl") or os.path.isdir(args.model):
        return
    what = "is not a directory" if os.path.exists(args.model) else "does not exist"
    if getattr(args, "dry_run", False):
        raise InputError(f"{script}: --model {args.model} {what}: --dry-run reads its "
                         "config.json; pass a local checkpoint directory (nothing is downloaded)")
    if stage == "rl" and os.path.normpath(args.model) == os.path.normpath(cli.TOY_SFT_DIR):
        raise InputError(f"{script}: --model {args.model} {what}. Make the toy SFT model first "
                         "with `make toy-sft` (SFT from the shipped toy-base/, about 4 minutes), or pass --model SFT_DIR")
    if stage == "rl":
        raise InputError(f"{script}: --model {args.model} {what}: pass an SFT checkpoint or run "
                         "directory (nothing is downloaded)")
    raise InputError(f"{script}: --model {args.model} {what}: pass 'toy' or a local checkpoint "
                     "or run directory (nothing is downloaded)")


def _check_eval_paths(args, script: str):
    """Inference needs --data and --out; --out is a new file or a predictions file to resume
    (checked line by line, never modified here); --json is written, so it must not be an input."""
    if not (args.data and args.out):
        raise InputError(f"{script}: inference needs --model, --data and --out")
    _check_model(args, script, "eval")
    if os.path.isdir(args.out):
        raise InputError(f"{script}: --out {args.out} is a directory; pass the predictions "
                         f"JSONL file to write (e.g. {os.path.join(args.out, 'preds.jsonl')})")
    scoring.check_writable(args.out, "--out", script, is_dir=False)
    if os.path.isfile(args.out):
        predictions.check_predictions_file(args.out)
    extra = {f: p for f, p in (("--boxes", args.boxes), ("--frame-scores", args.frame_scores)) if p}
    for flag, path in extra.items():  # VANGUARD's scoring inputs, read after generation: here now
        if not args.json:
            raise InputError(f"{script}: {flag} is scored into --json; add --json METRICS.json")
        if not os.path.isfile(path):
            raise InputError(f"{script}: {flag} {path}: no such file")
    scoring.check_output(script, "--json", args.json, {"--data": args.data, "--out": args.out, **extra})


# ---- the run directory ---------------------------------------------------------------------------

# What a training run writes into --out (extras/checkpoint.py, lora.py, training.finish_run, the
# Makefile's `done` stamp): a directory holding any of these holds a run.
RUN_FILES = ("log.jsonl", "run_config.json", "latest", "latest.tmp", "rank_checksums.json", "done")
RUN_DIRS = re.compile(r"step-\d+|init|lora-base|\.tmp-.+")


def run_contents(out: str) -> list[str]:
    """The names in `out` that a training run wrote there (sorted), [] for a new directory."""
    if not os.path.isdir(out):
        return []
    return sorted(n for n in os.listdir(out) if n in RUN_FILES
                  or (RUN_DIRS.fullmatch(n) and os.path.isdir(os.path.join(out, n))))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _run_dir_of(resume: str) -> str:
    """The run directory --resume continues: the folder of a checkpoint, or the run directory."""
    if checkpoint.is_checkpoint_dir(resume):  # one checkpoint, intact or not
        return os.path.dirname(os.path.abspath(resume))
    return resume


def check_run_dir(args, script: str):
    """--out must be a directory we can write, and must not hold another run: a fresh run into
    a run directory needs --overwrite (the old run's files are deleted here, on rank 0, so the
    two never mix), a resumed one continues in its own run directory (or a new one)."""
    out = args.out
    if not out.strip():
        raise InputError(f"{script}: --out {out!r}: pass a run directory")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{script}: --out {out} is a file, not a run directory; pass another "
                         "--out")
    scoring.check_writable(out, "--out", script, is_dir=True)
    found = run_contents(out)
    if args.resume:
        if args.overwrite:
            raise InputError(f"{script}: --resume and --overwrite contradict each other: "
                             "--resume continues a run, --overwrite deletes it; pass one")
        same = os.path.realpath(_run_dir_of(args.resume)) == os.path.realpath(out)
        if found and not same:
            raise InputError(f"{script}: --out {out} holds another run ({_listing(found)}); "
                             f"--resume {args.resume} continues into its own run directory: pass "
                             f"--out {_run_dir_of(args.resume)}, or a new --out")
        return
    if found and not args.overwrite:
        raise InputError(f"{script}: --out {out} already holds a run ({_listing(found)}): pass "
                         f"--resume {out} to continue it, or --overwrite to delete it and start "
                         "afresh")
    model = os.path.realpath(args.model) if args.model != "toy" else None
    doomed = [os.path.realpath(out)] + [os.path.realpath(os.path.join(out, n)) for n in found]
    if found and model and (model == doomed[0] or any(
            os.path.commonpath([model, d]) == d for d in doomed[1:])):
        raise InputError(f"{script}: --model {args.model} is part of the run in --out {out}, "
                         "which --overwrite would delete; pass another --out")
    if found and int(os.environ.get("RANK", "0")) == 0:  # --overwrite: one rank deletes
        for name in found:
            path = os.path.join(out, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            except OSError as e:
                raise InputError(f"{script}: --overwrite: cannot remove {path} ({e.strerror}); "
                                 "remove it by hand or pass another --out") from None
        print(f"--overwrite: removed the old run in {out} ({', '.join(found)})")
