"""train_rl.py -- stage 2 of Vad-R1: AVA-GRPO reinforcement learning (Algorithm 2).

Paper Sec. 3.3, App. C.2, Algorithms 1-2, Eq. 1-3, Table 7. From the SFT model, for each video of
Vad-Reasoning-RL (weak labels only: Abnormal / Normal):
  Alg. 2 line 5    a group of G completions                       grpo.sample_group
  Alg. 2 line 8    Algorithm 1: trims, one new completion on each  rewards.verification_trim
  Alg. 2 l. 6-10   accuracy, format, verification, length, their sum R   rewards.group_rewards
  Alg. 2 line 11   A = (R - mean(R)) / std(R) within the group (Eq. 1)   grpo.group_advantages
  Alg. 2 line 12   update with Eq. 3 (clipped surrogate - beta * KL_k3)  grpo.grpo_loss
  Alg. 2 l. 5-12   one step, as above (extras/bench.py times it)     grpo.rl_step
Its rollout (lines 5-10, grpo.rollout) is what `python -m extras.inspect` prints. The log
(OUT/log.jsonl, keys: docs/log-keys.md) is drawn into OUT/curves.svg at the end of a run. Scoring:
extras/fastpath.py's drop-in, same values with less memory (--plain-scoring: grpo's). pi_ref: a
frozen copy, or the policy with its LoRA adapters off (extras/lora.py); FSDP, DAPO and spatial
verification reach the step through grpo.StepHooks. Beyond the paper: docs/paper-vs-authors.md s.7.

Run it:
    python train_rl.py                       # toy preset: runs/toy/sft -> runs/toy/rl
    torchrun --nproc_per_node 4 train_rl.py --model SFT_DIR --data Vad-Reasoning-RL.jsonl \
        --video-root ROOT --out runs/rl --fsdp               # the paper's setting (4 x 80 GB)
    python train_rl.py --no-verification-reward --no-length-reward   # plain GRPO (Table 10)

Departures from the paper / the authors' scripts (docs/paper-vs-authors.md s.2):
  * Verification follows Algorithm 1 per completion; length counts words (rewards.py has both
    decisions and the authors' variants, `--length-mode authors`).
  * Video (s.5): the paper's 16 uniform frames, also for Algorithm 1's trimmed video (frames
    repeat when fewer remain; the authors' shorter trims: --frame-rule authors); the authors'
    pixel band and their RL trainer's second_per_grid_ts of 1.0 (--grid-time real for the rate).
  * --loss-type token divides by the tokens of all ranks (grpo.token_normaliser).
  * Sampling uses a generator seeded by (seed, step, rank): --resume re-samples exactly.
  * The toy preset (the default without --data) fills unset flags with values for a 1.5M-
    parameter model and samples under the SFT (fine) prompt, the only one the toy model knows.
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

import data
import grpo
import rewards
import vadr
from extras import (badvideos, checkpoint, cli, fastpath, flagcheck, lora, report, rollout, scale,
                    toy, training)

# ---- every flag of this script, and the presets --------------------------------------------------
# A flag left at None takes the preset's value: the paper's (App. C.3; the authors' where it is
# silent) or the toy's (the default without --data), printed at the end of --help. One copy of the
# values, extras/cli.py's RL_PAPER and RL_TOY: extras/inspect.py and extras/bench.py use them too.
PAPER, TOY = cli.RL_PAPER, cli.RL_TOY


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=cli.preset_epilog(paper=PAPER, toy=TOY))
    cli.add_rl_data_args(ap)  # --model --data --video-root --prompt-variant --skip-bad --num-workers
    training.add_video_args(ap)  # --frames --frame-rule --max-pixels --min-pixels --grid-time
    g = ap.add_argument_group("AVA-GRPO (Sec. 3.3, App. C.2-C.3; None = preset)")
    g.add_argument("--num-generations", type=int, default=None, help="G per video (paper: 4)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (1.0)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (authors: 0.95)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="completion cap (paper: 768)")
    g.add_argument("--beta", type=float, default=None, help="KL coefficient (paper: 0.04)")
    g.add_argument("--epsilon", type=float, default=0.2, help="clip range (live with --mu > 1)")
    g.add_argument("--mu", type=int, default=1, help="policy updates per rollout (paper: 1)")
    # beyond the paper: DAPO's dynamic sampling and clip-higher, the loss's normaliser, Eq. 1's std
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
    g = ap.add_argument_group("rewards (Table 7; switches for the Table 10 ablation)")
    g.add_argument("--no-accuracy-reward", action="store_true", help="drop the accuracy reward")
    g.add_argument("--no-format-reward", action="store_true", help="drop the format reward")
    g.add_argument("--no-verification-abnormal", action="store_true", help="drop the +0.5")
    g.add_argument("--no-verification-normal", action="store_true", help="drop the -0.2")
    g.add_argument("--no-verification-reward", action="store_true", help="both (no 2nd rollout)")
    g.add_argument("--no-length-reward", action="store_true", help="drop the length reward")
    g.add_argument("--length-mode", default="words", choices=["words", "authors"],
                   help="words (paper) or the authors' token count on correct completions")
    g.add_argument("--length-ranges-from", default=None,
                   help="SFT manifest for the length ranges (default: App. C.3's; toy: its SFT)")
    g = ap.add_argument_group("optimisation (None = paper default or toy preset)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the RL data (paper: 1)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    g.add_argument("--batch-size", type=int, default=None, help="videos per step per process")
    g.add_argument("--lr", type=float, default=None, help="learning rate (paper: 1e-6, cosine)")
    g.add_argument("--warmup-ratio", type=float, default=None, help="share of warmup steps")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW (authors: 0.01)")
    g.add_argument("--max-grad-norm", type=float, default=None, help="clipping (authors: 5)")
    g.add_argument("--preset", default=None, choices=["paper", "toy"],
                   help="defaults for unset flags (toy when --data is not given)")
    # --out --save-every --keep-last --resume --overwrite --fsdp --device --seed --grad-ckpt
    # --freeze-vision (extras/training.py)
    training.add_run_args(ap, default_out="runs/toy/rl")
    # --lora-rank --lora-alpha --lora-dropout --lora-targets --lora-base-dtype --merge --dry-run
    # --dry-run-gpus --dry-run-video-hw --no-grad-ckpt (extras/scale.py), and RL's own two:
    g = scale.add_scale_args(ap)
    g.add_argument("--no-rollout-gather", action="store_true",
                   help="under FSDP, sample with sharded weights (an all-gather of every layer at "
                        "every decode step) instead of gathering them once per RL step")
    g.add_argument("--plain-scoring", action="store_true",
                   help="score the completions (log pi of Eq. 3) with grpo.completion_logprobs "
                        "instead of extras/fastpath.py's drop-in: the same values to float "
                        "rounding, with more time and memory (the prompt and the vision tower "
                        "run G times, a float32 log-softmax over the vocabulary)")
    # which flags were given (for --resume), the preset, the flags that imply others (extras/cli.py)
    return cli.resolve_rl_args(ap, ap.parse_args(argv), argv)


def main(argv=None):
    args = parse_args(argv)
    flagcheck.check_flags(args, "rl")  # every flag, --model and --out, before loading anything
    if args.merge:  # fold a LoRA run's adapters into a full Hugging Face directory, and exit
        return lora.merge_checkpoint(args.merge, args.out)
    if args.dry_run:  # parameter counts and the per-GPU memory estimate, from the config alone
        return scale.dry_run(args, "rl", paper_preset=PAPER)
    dist_info = vadr.setup_distributed(args.device)
    rank, world, device = dist_info["rank"], dist_info["world_size"], dist_info["device"]
    mem0 = scale.memory_baseline()  # before the model: the baseline of the log's mem_peak_gb
    # a resumed run: an RL run's checkpoint, continued with its own flags (model, data, ...)
    start_dir = checkpoint.resume_run(args, "rl")
    if vadr.is_main() and args.preset_filled:
        print("[preset] " + " ".join(args.preset_filled))
    if args.data is None:
        toy.use_toy_world(args, "rl", cli.TOY_DATA_DIR)
    rows = data.read_manifest(args.data, "rl", video_root=args.video_root, skip_bad=args.skip_bad)
    length_ranges = (data.length_ranges(data.read_length_manifest(args.length_ranges_from,
                                                                  args.skip_bad))
                     if args.length_ranges_from else dict(rewards.DEFAULT_LENGTH_RANGES))
    content = checkpoint.data_content(rows)
    if start_dir:
        checkpoint.check_same_data(args, checkpoint.saved_config(start_dir), "rl", content,
                                   length_ranges)
    global_batch, steps_per_epoch, total_steps = training.plan_steps(args, len(rows), world)

    # ---- policy and reference (Alg. 2 lines 1-2: pi_ref <- pi_theta; on resume still the start)
    # the weights (+ LoRA adapters with --lora-rank), the flags they decide, the checkpoint writer
    model, tok, settings, save = scale.load_policy(start_dir or args.model, args,
                                                  resume=start_dir is not None, seed=args.seed)
    vars(args).update(settings)
    ref_model = lora.make_reference_model(model, args, resume=start_dir is not None,
                                          dist_info=dist_info)
    model, mode = training.prepare_model(model, args, dist_info)
    opt = training.make_optimizer(model, args.lr, args.weight_decay)
    n_updates = total_steps * args.mu
    sched = training.cosine_schedule(opt, n_updates, int(args.warmup_ratio * n_updates))
    start = training.start_state(start_dir, model, opt, sched, rank, seed=None)  # own generators
    config = dict(vars(args), stage="rl", world_size=world, parallel=mode, total_steps=total_steps,
                  steps_per_epoch=steps_per_epoch, length_ranges=length_ranges, n_rows=len(rows),
                  data_content=content)
    log_path = checkpoint.start_log(args.out, config, start["step"] if start_dir else None)

    prompt = vadr.build_prompt(args.prompt_variant)  # binary: Abnormal / Normal in <which>
    ds = data.RLDataset(rows, prompt_variant=args.prompt_variant, **vadr.video_args(args))
    ds = badvideos.SkipBadVideos(ds, replace=args.skip_bad)  # --skip-bad at decode time too
    collate = badvideos.make_collate(data.make_collate(tok, with_targets=False))
    bad_videos = badvideos.Tally(args.data, args.skip_bad)
    # --dynamic-sampling's refills: n random videos of the whole set (extras/dynamic.py)
    draw = lambda n, rng: vadr.to_device(bad_videos.note(collate(
        [ds[rng.randrange(len(ds))] for _ in range(n)])), device)
    # log pi (Eq. 3): extras/fastpath.py's drop-in (same values, less memory), or grpo's plain one
    score = grpo.completion_logprobs if args.plain_scoring else fastpath.completion_logprobs
    hooks = rollout.step_hooks(args, tok, mode, score, draw)  # FSDP, LoRA, --skip-bad, DAPO, ...
    run = grpo.RLState(model, ref_model, tok, opt, sched, length_ranges, prompt, rank)
    step = start["step"]
    pbar = tqdm(total=total_steps, initial=step, disable=not vadr.is_main(), desc="rl")
    done = step >= total_steps
    for epoch in range(start["epoch"], args.epochs):
        if done:
            break
        first = start["step_in_epoch"] if epoch == start["epoch"] else 0
        order = training.epoch_order(len(rows), epoch, args.seed, global_batch, rank, world)
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, collate_fn=collate,
                                             sampler=order[first * args.batch_size:],
                                             num_workers=args.num_workers)
        tw = time.time()
        for s, batch in zip(range(first, steps_per_epoch), loader):
            ts = time.time()
            time_data = ts - tw  # waiting for the DataLoader's decoded videos
            scale.reset_peak_memory(device)  # this step's peak (not the last step's save)
            batch = bad_videos.note(batch)  # without --skip-bad a bad video stops here, named
            out = grpo.rl_step(run, vadr.to_device(batch, device), args, step, hooks)  # l. 5-12
            step += 1
            res = training.rl_log_fields(out, args.num_generations)
            rec = dict(step=step, epoch=epoch, **vadr.all_reduce_mean(res, device),
                       step_time=time.time() - ts, time_data=time_data,
                       mem_peak_gb=scale.peak_memory_gb(device, mem0))
            if vadr.is_main():
                rec["sample"] = out["texts"][0][:400]
                checkpoint.log_jsonl(log_path, rec)
                pbar.set_postfix(training.rl_postfix(rec))  # R, each reward term, A = 0 share, KL
                pbar.update(1)
            done = checkpoint.save_if_due(
                args, save=save, step=step, total_steps=total_steps, epoch=epoch, step_in_epoch=s,
                steps_per_epoch=steps_per_epoch, model=model, tokenizer=tok, optimizer=opt,
                scheduler=sched, config=config)
            if done:
                break
            tw = time.time()
    pbar.close()
    bad_videos.report()
    if vadr.is_main() and (svg := report.draw_rl_log(args.out)):  # every log key: docs/log-keys.md
        print(f"curves: {svg}")
    training.finish_run(args, model, dist_info, step)


if __name__ == "__main__":
    vadr.run_main(main)
