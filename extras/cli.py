"""extras/cli.py -- the entry scripts' flags that are not the method: train_sft.py's model and
data groups, train_rl.py's model/data and optimisation groups and its preset resolution, and
eval.py's whole command line (the inference defaults stay in eval.AUTHORS_INFERENCE); also
train_rl.py's presets (RL_PAPER, RL_TOY), so that extras/inspect.py samples with the same values.

The paper's own switches (AVA-GRPO, the Table 7 rewards, SFT's optimisation) stay in the scripts.
Flags left at None are filled by a preset (extras/training.apply_preset) and checked by
extras/flagcheck.py.
"""
from __future__ import annotations

import argparse
import os

import grpo
from extras import training


# ---- both training scripts ----

_UNSET = object()


def flags_given(ap: argparse.ArgumentParser, argv, args) -> list[str]:
    """The flags (dests) the command line sets, as against those left to their defaults or to a
    preset: on --resume the others take the run's values (extras/checkpoint.continue_run). A
    second parse into a namespace of sentinels, which argparse replaces only for flags given."""
    ns = argparse.Namespace(**dict.fromkeys(vars(args), _UNSET))
    ap.parse_args(argv, namespace=ns)
    return sorted(k for k, v in vars(ns).items() if v is not _UNSET)


# ---- train_sft.py ----

def add_sft_data_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("model")
    g.add_argument("--model", default="toy", help="'toy' (a random toy model) or a local Qwen2.5-VL checkpoint "
                   "dir, such as the shipped toy base toy-base/ (what make toy's SFT starts from)")
    g = ap.add_argument_group("data")
    g.add_argument("--task", default="p2c", choices=["p2c", "caption"],
                   help="p2c: Vad-R1 SFT (the paper). caption: toy stage 0 on Toy-Caption.jsonl "
                        "behind toy.CAPTION_PROMPT (not in the paper)")
    g.add_argument("--data", default=None, help="Vad-Reasoning-SFT-train.jsonl, or "
                   "Toy-Caption.jsonl with --task caption (default: the toy world's)")
    g.add_argument("--video-root", default=None, help="directory the videos are resolved under")
    g.add_argument("--prompt-variant", default="fine", choices=["fine", "binary"],
                   help="<which> holds the fine-grained category (SFT data) or Abnormal/Normal")
    g.add_argument("--skip-bad", action="store_true", help="skip (and count) bad manifest rows")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers")
    g.add_argument("--cache-videos", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each encoded video in memory after its first decode (use "
                        "--num-workers 0). Paper preset: off; toy preset: on")
    g.add_argument("--tokenizer-corpus", nargs="+", default=None, metavar="JSONL",
                   help="--model toy: manifests whose texts train the toy tokenizer (default: the "
                        "toy world's SFT and caption text, or --data's)")
    training.add_video_args(ap)


# ---- train_rl.py ----

# train_rl.py's presets, for unset flags (also extras/inspect.py's)
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
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="SFT checkpoint directory (default: runs/toy/sft)")
    g.add_argument("--data", default=None, help="Vad-Reasoning-RL.jsonl (default: the toy world's)")
    g.add_argument("--video-root", default=None, help="directory the videos are resolved under")
    g.add_argument("--prompt-variant", default=None, choices=["binary", "fine"],
                   help="<which> asks for Abnormal/Normal (paper preset) or the fine category (toy "
                        "preset); accuracy compares the binary label either way")
    g.add_argument("--skip-bad", action="store_true", help="skip and count bad manifest rows")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (decoding)")
    training.add_video_args(ap)


def add_grpo_variant_args(g):
    """Into train_rl.py's AVA-GRPO group: the variants beyond the paper (DAPO's dynamic sampling
    and clip-higher, the loss's normaliser, Eq. 1's std)."""
    g.add_argument("--dynamic-sampling", action="store_true",
                   help="DAPO: refill groups whose G rewards are equal (extras/dynamic.py)")
    g.add_argument("--dynamic-max-rounds", type=int, default=4,
                   help="refill rounds per step with --dynamic-sampling")
    g.add_argument("--spatial-verification", action="store_true",
                   help="beyond both papers: blank the predicted box over the predicted "
                        "interval, sample again, pay --spatial-value for Abnormal -> Normal")
    g.add_argument("--spatial-value", type=float, default=0.5,
                   help="reward of the spatial check (Algorithm 1's +0.5)")
    g.add_argument("--epsilon-high", type=float, default=None,
                   help="upper clip 1 + this (DAPO's clip-higher, 0.28); default: --epsilon")
    g.add_argument("--loss-type", default="sequence", choices=grpo.LOSS_TYPES,
                   help="mean per completion, then over the group (Eq. 2), or over all tokens "
                        "of all ranks, or Dr. GRPO's sum / (rows x --max-new-tokens)")
    g.add_argument("--adv-std", default="unbiased", choices=grpo.ADV_STDS,
                   help="std of Eq. 1: n-1 (torch.std, the authors'), n, or none (Dr. GRPO)")


# The optimisation flags of both training scripts: (flag, type, help for SFT, help for RL); a help
# of None leaves the flag out of that script. Every default is None: the preset fills it.
_OPTIM = [("--epochs", int, "passes over the data (paper: 4)", "passes over the RL data (paper: 1)"),
          ("--max-steps", int, "stop after this many steps", "stop after this many steps"),
          ("--batch-size", int, "videos per micro-batch (paper: 1)", "videos per step per process"),
          ("--grad-accum", int, "micro-batches per step (paper: 2)", None),
          ("--lr", float, "peak learning rate (paper: 1e-6)", "learning rate (paper: 1e-6, cosine)"),
          ("--warmup-ratio", float, "fraction of warmup steps", "share of warmup steps"),
          ("--weight-decay", float, "AdamW weight decay", "AdamW (authors: 0.01)"),
          ("--max-grad-norm", float, "gradient clipping (paper: 5)", "clipping (authors: 5)")]


def add_optim_args(ap: argparse.ArgumentParser, stage: str):
    """The optimisation group of train_sft.py (stage 'sft', with --schedule) or train_rl.py ('rl'),
    and --preset."""
    title = {"sft": "optimisation (paper App. C.3; None = paper default or toy preset)",
             "rl": "optimisation (None = paper default or toy preset)"}[stage]
    g = ap.add_argument_group(title)
    for flag, typ, sft_help, rl_help in _OPTIM:
        if (sft_help if stage == "sft" else rl_help) is not None:
            g.add_argument(flag, type=typ, default=None,
                           help=sft_help if stage == "sft" else rl_help)
    if stage == "sft":
        g.add_argument("--schedule", default="cosine", choices=sorted(training.SCHEDULES),
                       help="decay after the linear warmup (the authors' SFT trainer: linear)")
    g.add_argument("--preset", default=None, choices=["paper", "toy"], help={
        "sft": "defaults for unset flags (default: toy with --model toy or without --data, else "
               "paper)", "rl": "defaults for unset flags (toy when --data is not given)"}[stage])
    return g


def resolve_rl_args(ap, args, paper: dict, toy_preset: dict, toy_sft_dir: str, toy_data_dir: str,
                    argv=None):
    """train_rl.py's flags after parsing (argv: what was parsed): which were given, the preset
    (toy without --data), the toy's model and length ranges, --no-verification-reward as both
    halves, and --dynamic-sampling's limits."""
    args.flags_given = flags_given(ap, argv, args)
    toy = args.data is None
    preset = args.preset = args.preset or ("toy" if toy else "paper")  # recorded in run_config
    if args.model is None and not toy:
        ap.error("--model is required with --data (an SFT checkpoint directory)")
    args.model = args.model or toy_sft_dir
    args.preset_filled = training.apply_preset(args, toy_preset if preset == "toy" else paper,
                                               preset)
    if toy and args.length_ranges_from is None:
        args.length_ranges_from = os.path.join(toy_data_dir, "Vad-Reasoning-SFT-train.jsonl")
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

def add_inference_args(ap: argparse.ArgumentParser):
    g = ap.add_argument_group("generation (docs/paper-vs-authors.md s.3)")
    g.add_argument("--batch-size", type=int, default=4, help="videos per generation batch")
    g.add_argument("--limit", type=int, default=None,
                   help="only the first N videos of the manifest")
    g.add_argument("--sample", action="store_true",
                   help="sample (temperature/top-p) instead of greedy")
    g.add_argument("--authors-inference", action="store_true",
                   help="the authors' inference settings: --sample, and the defaults below fixed")
    g.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature with --sample (authors: 0.1)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus with --sample (authors: 0.9)")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="max completion length (authors: 512)")
    g.add_argument("--prompt-variant", default="fine", choices=["fine", "binary"],
                   help="<which>: categories or Abnormal/Normal")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) bad manifest rows instead of failing")
    g.add_argument("--num-workers", type=int, default=1, help="DataLoader workers decoding videos")
    g.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    training.add_video_args(ap)  # unset flags take eval.AUTHORS_INFERENCE (resolve_inference_args)


def eval_parser() -> argparse.ArgumentParser:
    """eval.py's flags: inference (--model) or scoring (--score / --mc / --report)."""
    ap = argparse.ArgumentParser(
        description="Vad-R1 evaluation: inference (--model) or scoring (--score / --mc).")
    g = ap.add_argument_group("inference (a checkpoint over a manifest -> predictions JSONL)")
    g.add_argument("--model", help="checkpoint directory, or 'toy'")
    g.add_argument("--data", help="test manifest JSONL (Vad-Reasoning SFT-test rows)")
    g.add_argument("--video-root", help="directory the videos are resolved against")
    g.add_argument("--out", help="predictions JSONL to write")
    add_inference_args(ap)
    s = ap.add_argument_group("scoring")
    s.add_argument("--score", metavar="PREDS",
                   help="predictions JSONL (source, video, output) to score")
    s.add_argument("--gt",
                   help="ground-truth JSONL (Vad-Reasoning SFT-test format; for --mc optional)")
    s.add_argument("--mc", metavar="PREDS",
                   help="multiple-choice JSONL (id, category, question, answer, output)")
    s.add_argument("--json", help="write every figure here (keys: docs/eval-keys.md)")
    s.add_argument("--boxes", help="VANGUARD: GT boxes JSONL (python -m extras.vanguard boxes)")
    s.add_argument("--frame-scores",
                   help="VANGUARD: a stage-1 head's per-frame scores (extras.vanguard scores)")
    s.add_argument("--allow-missing", action="store_true",
                   help="exit 0 although GT videos lack a prediction (they count as wrong)")
    s.add_argument("--with-paper", action="store_true",
                   help="print the paper's published rows beside ours")
    s.add_argument("--name", default="ours", help="row name in the printed table")
    s.add_argument("--report", metavar="RUN_DIR",
                   help="write RUN_DIR/table.md, curves and frame strips "
                   "from eval_*.json and the logs (with --data/--video-root for the strips)")
    s.add_argument("--pooled", nargs="+", metavar="RUN_DIR",
                   help="RL minus SFT pooled over several make-toy runs (seeds) of one world, with a "
                        "paired bootstrap over the test videos (needs --data, the test manifest; "
                        "--pooled-stages picks the two stems)")
    s.add_argument("--pooled-stages", nargs=2, default=["sft", "rl"], metavar=("A", "B"),
                   help="--pooled compares preds_B.jsonl with preds_A.jsonl in each run")
    s.add_argument("--ablation-report", metavar="ABL_DIR",
                   help="write ABL_DIR/table10.md from eval_<stem>.json and <stem>/log.jsonl "
                        "(make toy-ablation; with --with-paper the paper's 16-frame rows)")
    return ap
