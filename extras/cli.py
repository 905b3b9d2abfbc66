"""extras/cli.py -- what the entry scripts' command lines share beyond their flags, which each
script declares itself in one block: which flags a command line gave (flags_given, for --resume),
train_sft.py's preset resolution (resolve_sft_args), train_rl.py's presets (RL_PAPER, RL_TOY:
extras/inspect.py and extras/bench.py use the same values, and extras never import an entry
script) and their resolution (resolve_rl_args), the
preset list at the end of --help (preset_epilog), and eval.py's inference defaults
(resolve_inference_args).

Flags left at None are filled by a preset (extras/training.apply_preset) and checked by
extras/flagcheck.py.
"""
from __future__ import annotations

import argparse
import os
import textwrap

import vadr
from extras import training


# ---- every entry script ----

_UNSET = object()


def flags_given(ap: argparse.ArgumentParser, argv, args) -> list[str]:
    """The flags (dests) the command line sets, as against those left to their defaults or to a
    preset: on --resume the others take the run's values (extras/checkpoint.continue_run). A
    second parse into a namespace of sentinels, which argparse replaces only for flags given."""
    ns = argparse.Namespace(**dict.fromkeys(vars(args), _UNSET))
    ap.parse_args(argv, namespace=ns)
    return sorted(k for k, v in vars(ns).items() if v is not _UNSET)


def preset_epilog(**presets: dict) -> str:
    """The end of a script's --help: every preset's values, which fill the flags left at None."""
    lines = ["presets (fill the flags left at None; --preset picks one):"]
    for name, values in presets.items():
        lines += textwrap.wrap(" ".join(f"{k}={v}" for k, v in values.items()), 100,
                               initial_indent=f"  {name}: ", subsequent_indent="    ")
    return "\n".join(lines)


# ---- train_sft.py ----

def resolve_sft_args(ap, args, argv, paper: dict, toy: dict, toy_caption: dict):
    """train_sft.py's flags after parsing (argv: what was parsed): which were given, and the preset
    (train_sft.py's PAPER, TOY, TOY_CAPTION) filling the rest."""
    args.flags_given = flags_given(ap, argv, args)  # on --resume the rest are the run's
    args.preset = args.preset or ("toy" if args.model == "toy" or args.data is None else "paper")
    preset = {"paper": paper, "toy": toy_caption if args.task == "caption" else toy}[args.preset]
    if args.model == "toy":  # a randomly initialised encoder has nothing learned to keep frozen
        preset = dict(preset, freeze_vision=False)
    args.preset_filled = training.apply_preset(args, preset, args.preset)
    return args


# ---- train_rl.py ----

# train_rl.py without --data / --model: the toy world, and the toy SFT run it starts from
TOY_DATA_DIR, TOY_SFT_DIR = "data/toy", "runs/toy/sft"

# The paper's defaults (App. C.3), the authors' where it is silent (docs/paper-vs-authors.md s.2)
RL_PAPER = dict(epochs=1, lr=1e-6, batch_size=1, num_generations=4, beta=0.04, temperature=1.0,
                top_p=0.95, max_new_tokens=768, weight_decay=0.01, max_grad_norm=5.0,
                warmup_ratio=0.0, save_every=100, num_workers=2, prompt_variant="binary",
                freeze_vision=False,
                **dict(training.VIDEO_PAPER, grid_time="one"))  # the authors' RL trainer: 1.0 (s.5)
# Toy: short completions, larger lr, the SFT prompt (binary: no format passed), 1 epoch as the paper
RL_TOY = dict(epochs=1, lr=5e-5, batch_size=2, num_generations=4, beta=0.04,
              temperature=1.0, top_p=0.95, max_new_tokens=320, weight_decay=0.0, max_grad_norm=1.0,
              warmup_ratio=0.0, save_every=20, num_workers=1, prompt_variant="fine",
              freeze_vision=False, **training.VIDEO_TOY)


def add_rl_data_args(ap: argparse.ArgumentParser):
    """train_rl.py's model and data flags (extras/inspect.py takes the same ones)."""
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="SFT checkpoint directory (default: runs/toy/sft)")
    g.add_argument("--data", default=None, help="Vad-Reasoning-RL.jsonl (default: the toy world's)")
    g.add_argument("--video-root", default=None, help="directory the videos are resolved under")
    g.add_argument("--prompt-variant", default=None, choices=["binary", "fine"],
                   help="<which> asks for Abnormal/Normal (paper preset) or the fine category (toy "
                        "preset); accuracy compares the binary label either way")
    g.add_argument("--skip-bad", action="store_true", help="skip and count bad manifest rows")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (decoding)")


def resolve_rl_args(ap, args, argv=None):
    """train_rl.py's flags after parsing (argv: what was parsed): which were given, the preset
    (toy without --data), the toy's model and length ranges, --no-verification-reward as both
    halves, and --dynamic-sampling's limits."""
    args.flags_given = flags_given(ap, argv, args)
    toy = args.data is None
    preset = args.preset = args.preset or ("toy" if toy else "paper")  # recorded in run_config
    if args.model is None and not toy:
        ap.error("--model is required with --data (an SFT checkpoint directory)")
    args.model = args.model or TOY_SFT_DIR
    args.preset_filled = training.apply_preset(args, RL_TOY if preset == "toy" else RL_PAPER,
                                               preset)
    if toy and args.length_ranges_from is None:
        args.length_ranges_from = os.path.join(TOY_DATA_DIR, "Vad-Reasoning-SFT-train.jsonl")
    if args.no_verification_reward:
        args.no_verification_abnormal = args.no_verification_normal = True
    if args.dynamic_sampling and (args.fsdp or args.dynamic_max_rounds < 1):
        ap.error("--dynamic-sampling needs --dynamic-max-rounds >= 1 and DDP, not --fsdp "
                 "(a refill round's sampling would be a collective on some ranks only)")
    if args.spatial_verification and args.fsdp:
        ap.error("--spatial-verification needs DDP, not --fsdp (its pass samples on some ranks "
                 "only)")
    return args


# ---- eval.py ----

def resolve_inference_args(args, authors: dict):
    """eval.py's unset generation and video flags take the authors' inference values (`authors`:
    eval.AUTHORS_INFERENCE); with --authors-inference a flag set to anything else is an error
    (their settings, or none)."""
    for k, v in authors.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
        elif args.authors_inference and getattr(args, k) != v:
            raise vadr.InputError(f"--authors-inference fixes --{k.replace('_', '-')} to {v}; "
                                  f"drop --{k.replace('_', '-')} {getattr(args, k)}")
    args.sample = args.sample or args.authors_inference
    return args
