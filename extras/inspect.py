"""extras/inspect.py -- see what GRPO does: one group of G completions per video, each reward, A.

Not part of the method, and nothing is trained. For the first N videos of an RL manifest, one
group per video goes through grpo.rollout, the code train_rl.py runs (G completions,
Algorithm 1's trim and second completion, the Table 7 rewards), with train_rl.py's preset values
(extras/cli.py: the toy preset without --data, the paper's with it). For each completion it prints
its text (whitespace folded; a long one shows its start and its end, where the answer is), its
words and tokens, each reward, the total R, the group advantage A of Eq. 1 (grpo.group_advantages)
and Algorithm 1's second pass: the windows of the video kept after the trim and the completion on
them. A group whose G rewards are all equal has A = 0 everywhere: it teaches nothing but KL.

    python -m extras.inspect                          # runs/toy/sft on the toy world, 3 videos
    python -m extras.inspect --model runs/toy/rl --videos 5 --num-generations 8 --seed 1
    python -m extras.inspect --model SFT_DIR --data Vad-Reasoning-RL.jsonl --video-root ROOT \\
        --length-ranges-from Vad-Reasoning-SFT-train.jsonl --json groups.json

--json writes every group in full (texts untrimmed): video, source, solution, and per completion
text, n_tokens, words, rewards (accuracy, format, verification, length, total), advantage, trim
(the kept windows; [] when the trim leaves nothing: no second pass) and second (its completion).
Seeds: the sampler and Algorithm 1's head/tail coin come from --seed alone (not train_rl.py's
per-step seeds), so the same command prints the same groups. Tests: tests/test_inspect.py
"""
from __future__ import annotations

import argparse
import json
import os
import random

import torch

import data
import grpo
import rewards
import vadr
from extras import badvideos, cli, flagcheck, lora, rollout, scoring, toy, training

PROG = "python -m extras.inspect"
PARTS = ("accuracy", "format", "verification", "length")  # Table 7's terms, summed into total


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_rl_data_args(ap)  # train_rl.py's: --model --data --video-root --prompt-variant ...
    training.add_video_args(ap)  # --frames --frame-rule --max-pixels --min-pixels --grid-time
    g = ap.add_argument_group("the groups (None = train_rl.py's preset)")
    g.add_argument("--videos", type=int, default=3, help="the first N videos of the manifest")
    g.add_argument("--num-generations", type=int, default=None, help="G per video (paper: 4)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    g.add_argument("--max-new-tokens", type=int, default=None, help="completion cap")
    g.add_argument("--adv-std", default="unbiased", choices=grpo.ADV_STDS, help="Eq. 1's std")
    g.add_argument("--length-ranges-from", default=None,
                   help="SFT manifest for the length ranges (default: App. C.3's; toy: its SFT)")
    g.add_argument("--preset", default=None, choices=["paper", "toy"],
                   help="train_rl.py's preset for unset flags (toy when --data is not given)")
    g.add_argument("--seed", type=int, default=0, help="seeds the sampler and the trims")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    g.add_argument("--chars", type=int, default=240, help="characters shown of a completion")
    g.add_argument("--json", default=None, help="write every group in full here")
    # what train_rl.py's rollout reads and this tool leaves at train_rl.py's defaults: every
    # reward on, one process, no DAPO refill or spatial check
    ap.set_defaults(no_accuracy_reward=False, no_format_reward=False, no_length_reward=False,
                    no_verification_reward=False, no_verification_abnormal=False,
                    no_verification_normal=False, length_mode="words", spatial_verification=False,
                    dynamic_sampling=False, dynamic_max_rounds=1, fsdp=False,
                    no_rollout_gather=False)
    ap.set_defaults(**{k: None for k in cli.RL_TOY if k not in vars(ap.parse_args([]))})
    return cli.resolve_rl_args(ap, ap.parse_args(argv), argv)


def shorten(text: str, chars: int) -> str:
    """Whitespace folded to single spaces; a text over `chars` keeps its first two thirds and its
    last third (the <answer> is at the end) around ' ... '."""
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    tail = chars // 3
    return f"{text[:chars - tail - 5]} ... {text[-tail:]}"


def signed(v: float) -> str:
    return f"{v:+g}" if v else "0"


def windows(keep: list) -> str:
    return " + ".join(f"[{a:.2f}, {b:.2f}]" for a, b in keep)


def inspect_groups(model, tok, rows: list[dict], args, length_ranges: dict, device) -> list[dict]:
    """One group per row, each rolled out by grpo.rollout -> a list of dict(video,
    source, solution, completions=[dict(text, n_tokens, words, rewards, advantage, trim,
    second)], zero_std)."""
    prompt = vadr.build_prompt(args.prompt_variant)
    ds = badvideos.SkipBadVideos(data.RLDataset(rows, prompt_variant=args.prompt_variant,
                                                **vadr.video_args(args)), replace=False)
    collate = badvideos.make_collate(data.make_collate(tok, with_targets=False))
    tally = badvideos.Tally(args.data, skip_bad=False)  # a bad video: one line naming its row
    G = args.num_generations
    gen = torch.Generator(device=device).manual_seed(args.seed)
    trim_rng = random.Random(args.seed)
    sample_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_p=args.top_p, end_ids=vadr.end_token_ids(tok),
                     pad_id=vadr.pad_token_id(tok), generator=gen, sync_ranks=False,
                     ignore_eos=False)  # as grpo.rl_step's, on one process
    hooks = rollout.step_hooks(args, tok, "none", grpo.completion_logprobs)  # train_rl.py's
    groups = []
    for i in range(len(rows)):
        batch = vadr.to_device(tally.note(collate([ds[i]])), device)
        row = batch["rows"][0]
        # the trims drawn inside rollout, drawn again from the same state (one coin per
        # completion in order: rewards.py decision 4) to print which windows were kept
        replay = random.Random()
        replay.setstate(trim_rng.getstate())
        with torch.no_grad():
            roll = grpo.rollout(model, tok, batch, args, length_ranges, prompt, sample_kw,
                                trim_rng, {}, hooks)
        n_frames = vadr.count_frames(row["video_path"])
        trims = [rewards.verification_trim(c, replay, total_frames=n_frames)
                 for c in roll["texts"]]
        adv, zero_std = grpo.group_advantages(roll["R"], G, std=args.adv_std)      # Eq. 1
        comps = [dict(text=c, n_tokens=int(m.sum()), words=rewards.count_words(c),
                      rewards={k: p[k] for k in PARTS + ("total",)}, advantage=float(a),
                      trim=[list(w) for w in keep], second=s)
                 for c, m, p, a, keep, s in zip(roll["texts"], roll["mask"], roll["parts"],
                                                adv.tolist(), trims, roll["seconds"])]
        groups.append(dict(video=str(row["video"]), source=str(row.get("source", "")),
                           solution=row["solution"], completions=comps,
                           zero_std=bool(zero_std[0])))
    return groups


def format_groups(groups: list[dict], args, length_ranges: dict) -> str:
    """The printout: a header, then per video its completions, rewards, A and second pass."""
    out = [f"model {args.model}, data {args.data}: G = {args.num_generations} completions per "
           f"video (temperature {args.temperature}, top-p {args.top_p}, at most "
           f"{args.max_new_tokens} tokens, prompt '{args.prompt_variant}', seed {args.seed}); "
           f"length reward ranges (words) {length_ranges}. Nothing is trained."]
    for n, grp in enumerate(groups, 1):
        totals = [c["rewards"]["total"] for c in grp["completions"]]
        out += ["", f"== video {n}/{len(groups)}: {grp['source']}/{grp['video']}, weak label "
                    f"{grp['solution']} =="]
        for k, c in enumerate(grp["completions"], 1):
            r = c["rewards"]
            label = rewards.predicted_label(c["text"]) or "no label"
            out += [f"  [{k}] {c['words']} words, {c['n_tokens']} tokens, predicts {label}",
                    f"      {shorten(c['text'], args.chars)}",
                    f"      accuracy {r['accuracy']:g}  format {r['format']:g}  verification "
                    f"{signed(r['verification'])}  length {r['length']:g}  ->  R = "
                    f"{r['total']:g}, A = {c['advantage']:+.3f}"]
            if c["second"] is None:
                out.append("      second pass: none (the trim leaves no frame, or verification "
                           "is off): verification 0")
            else:
                second = rewards.predicted_label(c["second"]) or "no label"
                out.append(f"      second pass on {windows(c['trim'])} of the video: predicts "
                           f"{second}: {shorten(c['second'], args.chars // 2)}")
        R = torch.tensor(totals)
        std = float(R.std(correction=0 if args.adv_std == "biased" else 1))
        out.append(f"  group: mean R {float(R.mean()):.3f}, std {std:.3f}; " + (
            "all R equal: A = 0, the group teaches nothing but KL" if grp["zero_std"] else
            EQ1[args.adv_std]))
    return "\n".join(out)


# How A follows from R (grpo.group_advantages, --adv-std)
EQ1 = {"unbiased": "A = (R - mean) / (std + 1e-4), std with n - 1 (Eq. 1)",
       "biased": "A = (R - mean) / (std + 1e-4), std with n (Eq. 1)",
       "none": "A = R - mean (Dr. GRPO, no std)"}


def main(argv=None) -> int:
    args = parse_args(argv)
    flagcheck.check_flags(args, "inspect")  # every flag and --model, before loading anything
    scoring.check_output(PROG, "--json", args.json, {"--data": args.data,
                                                     "--length-ranges-from":
                                                         args.length_ranges_from})
    if args.data is None:
        toy.use_toy_world(args, "rl", cli.TOY_DATA_DIR)
    rows = data.read_manifest(args.data, "rl", video_root=args.video_root,
                              skip_bad=args.skip_bad)[:args.videos]
    length_ranges = (data.length_ranges(data.read_length_manifest(args.length_ranges_from, args.skip_bad))
        if args.length_ranges_from else dict(rewards.DEFAULT_LENGTH_RANGES))
    device = vadr.resolve_device(args.device)
    model, tok = lora.load_merged(args.model, device=device)
    groups = inspect_groups(model, tok, rows, args, length_ranges, device)
    print(format_groups(groups, args, length_ranges))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(model=args.model, data=args.data, seed=args.seed,
                           num_generations=args.num_generations, length_ranges=length_ranges,
                           groups=groups), f, indent=1)
        print(f"\nwritten: {os.path.abspath(args.json)}")
    return 0


if __name__ == "__main__":
    vadr.run_main(main)
