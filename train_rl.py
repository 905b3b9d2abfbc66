"""train_rl.py -- stage 2 of Vad-R1: AVA-GRPO reinforcement learning (Algorithm 2).

Paper Sec. 3.3, App. C.2, Algorithms 1-2, Eq. 1-3, Table 7. Starting from the SFT model, for each
video of Vad-Reasoning-RL (weak labels only: Abnormal / Normal):

  Alg.2 line 5    sample a group of G completions                      grpo.sample_group
  Alg.2 line 6-7  accuracy and format rewards                          rewards.accuracy_reward, format_reward
  Alg.2 line 8    anomaly verification (Algorithm 1): trim each completion's video, sample one new
                  completion on each trimmed video (all G in one batch), compare the predictions
                                                                       rewards.verification_trim, verification_reward
  Alg.2 line 9    length reward                                        rewards.length_rewards_group
  Alg.2 line 10   R = R_acc + R_format + R_ano + R_len                 rewards.total_reward's sum
  Alg.2 line 11   A = (R - mean(R)) / std(R) within the group (Eq. 1)  grpo.group_advantages
  Alg.2 line 12   update with Eq. 3 (clipped surrogate - beta * KL_k3) grpo.grpo_loss
The reference model is a frozen copy of the starting checkpoint (eval mode, no gradients;
sharded like the policy under FSDP); with --lora-rank it is the policy with its adapters switched
off (extras/lora.py), so no second copy of the weights exists.

Run it:
    python train_rl.py                       # toy preset: runs/toy/sft -> runs/toy/rl on the toy world
    torchrun --nproc_per_node 4 train_rl.py --model SFT_DIR --data Vad-Reasoning-RL.jsonl \
        --video-root ROOT --fsdp --grad-ckpt                  # the paper's setting (4 x 80 GB)
    python train_rl.py --resume runs/toy/rl                   # continue a killed run exactly
    python train_rl.py --no-verification-reward --no-length-reward   # plain GRPO (Table 10)

Departures from the paper / the authors' scripts:
  * Verification follows Algorithm 1 per completion. The authors' script read the first prediction
    from a stale loop variable and gated the -0.2 on accuracy/format (facts note s.2); not copied.
  * Length reward: words of think+answer with tags stripped, range chosen by the predicted class
    (rewards.py); `--length-mode authors` counts completion tokens, only for correct completions
    and only when more than one completion in the group is correct, as their script did.
  * Sampling uses a torch.Generator seeded by (seed, step, rank), so a resumed run re-samples
    exactly what the uninterrupted run sampled.
  * The toy preset (`--preset toy`, the default without --data) replaces the paper's lr / lengths / step counts
    with values for a 1M-parameter model; it fills only flags left unset and prints them. It also
    samples under the SFT (fine) prompt instead of the binary RL prompt (see TOY below).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

import data
import grpo
import rewards
import vadr
from extras import checkpoint, fastpath, lora, scale, toy, training

TOY_DATA_DIR = "data/toy"
TOY_SFT_DIR = "runs/toy/sft"

# Paper / facts-note defaults (real model): App. C.3, facts note s.2.
PAPER = dict(epochs=1, lr=1e-6, batch_size=1, num_generations=4, beta=0.04, temperature=1.0,
             top_p=0.95, max_new_tokens=768, weight_decay=0.01, max_grad_norm=5.0, warmup_ratio=0.0,
             save_every=100, num_workers=2, prompt_variant="binary")
# Toy preset: short completions, a larger lr for a tiny model, a few hundred videos. The fine prompt
# (the SFT prompt): the toy SFT model never saw the binary one and does not generalise to it (in the
# measured run every RL completion under the binary prompt failed the format check and began with
# <answer>; README "What you should see"). Qwen2.5-VL-7B follows the changed instruction.
TOY = dict(epochs=1, max_steps=60, lr=5e-5, batch_size=2, num_generations=4, beta=0.04, temperature=1.0,
           top_p=0.95, max_new_tokens=320, weight_decay=0.0, max_grad_norm=1.0, warmup_ratio=0.0,
           save_every=20, num_workers=1, prompt_variant="fine")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("model")
    g.add_argument("--model", default=None, help="SFT checkpoint directory (default: runs/toy/sft, the toy SFT run)")
    g = ap.add_argument_group("data")
    g.add_argument("--data", default=None, help="Vad-Reasoning-RL.jsonl (default: the toy world's)")
    g.add_argument("--video-root", default=None, help="directory the manifest's videos are resolved under")
    g.add_argument("--prompt-variant", default=None, choices=["binary", "fine"],
                   help="<which> asks for Abnormal/Normal (paper, authors' RL prompt; the paper preset) or the "
                        "fine category (the SFT prompt, the toy preset; accuracy still compares the binary label)")
    g.add_argument("--skip-bad", action="store_true", help="skip (and count) bad manifest rows instead of failing")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers decoding videos")
    training.add_video_args(ap)
    g = ap.add_argument_group("AVA-GRPO (paper Sec. 3.3, App. C.2-C.3; None = paper default or toy preset)")
    g.add_argument("--num-generations", type=int, default=None, help="G completions per video (paper: 4)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (authors: 1.0)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling (authors: 0.95)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="max completion length (paper: 768)")
    g.add_argument("--beta", type=float, default=None, help="KL coefficient (paper: 0.04)")
    g.add_argument("--epsilon", type=float, default=0.2, help="clip range of the ratio (live only with --mu > 1)")
    g.add_argument("--mu", type=int, default=1, help="policy updates per rollout (paper: 1, ratio = 1)")
    g.add_argument("--loss-type", default="sequence", choices=["sequence", "token"],
                   help="average per completion then over the group (paper Eq. 2) or over all tokens")
    g.add_argument("--adv-std", default="unbiased", choices=["unbiased", "biased"],
                   help="std of Eq. 1: n-1 (torch.std, the authors' trainer) or n")
    g = ap.add_argument_group("rewards (Table 7; switches for the Table 10 ablation)")
    g.add_argument("--no-accuracy-reward", action="store_true", help="drop the accuracy reward (1.0)")
    g.add_argument("--no-format-reward", action="store_true", help="drop the format reward (1.0)")
    g.add_argument("--no-verification-abnormal", action="store_true", help="drop the +0.5 of Abnormal -> Normal")
    g.add_argument("--no-verification-normal", action="store_true", help="drop the -0.2 of Normal -> Abnormal")
    g.add_argument("--no-verification-reward", action="store_true", help="drop both verification rewards (no 2nd rollout)")
    g.add_argument("--no-length-reward", action="store_true", help="drop the length reward (0.2)")
    g.add_argument("--length-mode", default="words", choices=["words", "authors"],
                   help="words of think+answer (paper) or the authors' token count on correct completions")
    g.add_argument("--length-ranges-from", default=None,
                   help="SFT manifest to compute the length ranges from (default: paper's [140,261]/[233,456]; "
                        "the toy preset uses the toy SFT manifest)")
    g = ap.add_argument_group("optimisation (None = paper default or toy preset)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the RL data (paper: 1)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many rollout steps")
    g.add_argument("--batch-size", type=int, default=None, help="videos per rollout step per process (authors: 1)")
    g.add_argument("--lr", type=float, default=None, help="learning rate (paper: 1e-6, cosine)")
    g.add_argument("--warmup-ratio", type=float, default=None, help="fraction of steps of linear warmup")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (authors: 0.01)")
    g.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping (authors: 5)")
    training.add_run_args(ap, default_out="runs/toy/rl")
    scale.add_scale_args(ap, stage="rl")  # --lora-*, --merge, --dry-run, --no-rollout-gather
    g.add_argument("--preset", default=None, choices=["paper", "toy"],
                   help="defaults for unset flags: paper (real model) or toy (default when --data is not given)")
    args = ap.parse_args(argv)
    toy = args.data is None
    preset = args.preset or ("toy" if toy else "paper")
    if args.model is None:
        if not toy:
            ap.error("--model is required with --data (an SFT checkpoint directory)")
        args.model = TOY_SFT_DIR
    args.preset_filled = training.apply_preset(args, TOY if preset == "toy" else PAPER, preset)
    if toy and args.length_ranges_from is None:
        args.length_ranges_from = os.path.join(TOY_DATA_DIR, "Vad-Reasoning-SFT-train.jsonl")
    if args.no_verification_reward:
        args.no_verification_abnormal = args.no_verification_normal = True
    return args


def decode_completions(tok, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Completion text up to (not including) the end token."""
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = int(sum(m))
        out.append(tok.decode(row[:n], skip_special_tokens=True))
    return out


def expand_inputs(inputs: dict, G: int) -> dict:
    """Repeat each prompt (and its video) G times: rows b*G .. b*G+G-1 belong to prompt b."""
    n_patch = inputs["video_grid_thw"].prod(-1)                                        # (B,)
    chunks = torch.split(inputs["pixel_values_videos"], n_patch.tolist())              # B x (N_b, 1176)
    return dict(
        input_ids=inputs["input_ids"].repeat_interleave(G, 0),                         # (B*G, P)
        attention_mask=inputs["attention_mask"].repeat_interleave(G, 0),
        mm_token_type_ids=inputs["mm_token_type_ids"].repeat_interleave(G, 0),
        pixel_values_videos=torch.cat([c for c in chunks for _ in range(G)], 0),       # (G*sum N_b, 1176)
        video_grid_thw=inputs["video_grid_thw"].repeat_interleave(G, 0),               # (B*G, 3)
        second_per_grid_ts=inputs["second_per_grid_ts"].repeat_interleave(G, 0),       # (B*G,)
    )


def verification_inputs(tok, rows: list[dict], completions: list[str], G: int, rng: random.Random,
                        args, prompt: str, device) -> tuple[dict | None, list[int]]:
    """Algorithm 1 lines 3-9 for all B*G completions: each completion decides its own trim (the
    kept windows), the video is re-sampled to the same N frames from what remains, and the trimmed
    videos form one batch for a single sampling call (line 10). A trim that would leave no frame
    (rewards.verification_trim returns []) gets no second pass: its reward stays 0 (Alg. 1 line 1).
    Returns (batch or None, indices of the completions in the batch)."""
    videos, which = [], []
    n_frames = {}
    for i, c in enumerate(completions):
        path = rows[i // G]["video_path"]
        if path not in n_frames:
            n_frames[path] = vadr.count_frames(path)
        keep = rewards.verification_trim(c, rng, total_frames=n_frames[path])  # kept fraction windows
        if not keep:
            continue
        videos.append(vadr.encode_video(path, args.frames, keep=keep,
                                        min_pixels=args.min_pixels, max_pixels=args.max_pixels))
        which.append(i)
    if not videos:
        return None, []
    vids = vadr.collate_videos(videos)
    chat = vadr.build_chat_inputs(tok, [prompt] * len(videos), vids["video_grid_thw"])
    return vadr.to_device({**chat, **vids}, device), which


def rl_step(model, ref_model, tok, opt, sched, batch: dict, args, step: int, rank: int, mode: str,
            length_ranges: dict, prompt: str, ignore_eos: bool = False) -> dict:
    """One rollout step of Algorithm 2 (lines 5-12) on this rank's videos; returns the log fields.
    ignore_eos (extras/bench.py only): every completion runs to max_new_tokens."""
    device = batch["input_ids"].device
    G = args.num_generations
    end_ids, pad_id = vadr.end_token_ids(tok), vadr.pad_token_id(tok)
    gen = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
    trim_rng = random.Random(args.seed * 7_919 + step * 101 + rank)
    sample_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                     end_ids=end_ids, pad_id=pad_id, generator=gen, sync_ranks=(mode == "fsdp"),
                     ignore_eos=ignore_eos)
    inputs = {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}
    t = {}

    # ---- Alg.2 line 5: a group of G completions per video (vision + prefill once per video)
    t0 = time.time()
    model.eval()
    # extras/scale.py: under FSDP gather the full weights ONCE for both sampling passes of this step
    # (this one and Algorithm 1's below), instead of an all-gather of every layer per decode step
    rollout = contextlib.ExitStack()
    gathered = rollout.enter_context(scale.rollout_weights(model, enabled=not args.no_rollout_gather))
    roll = fastpath.sample_group(model, inputs, num_samples=G, **sample_kw)  # = grpo.sample_group
    ids, mask = roll["completion_ids"], roll["completion_mask"]                          # (B*G, T)
    texts = decode_completions(tok, ids, mask)
    t["time_generation"] = time.time() - t0

    # ---- Alg.2 line 8 = Algorithm 1: trim, one new completion per original, compare predictions
    t0 = time.time()
    seconds = [None] * len(texts)  # the completion on each trimmed video (None: no second pass)
    if not (args.no_verification_abnormal and args.no_verification_normal):
        v_inputs, which = verification_inputs(tok, batch["rows"], texts, G, trim_rng, args, prompt,
                                              device)
        if v_inputs is None and mode == "fsdp":
            # Every trim on this rank was empty (all completions claimed [0, 1]). Under FSDP each
            # forward is a collective, so this rank still runs the sampling loop, on its untrimmed
            # first video, and throws the result away (its rewards stay 0).
            vid = vadr.encode_video(batch["rows"][0]["video_path"], args.frames,
                                    min_pixels=args.min_pixels, max_pixels=args.max_pixels)
            dummy = {**vadr.build_chat_inputs(tok, [prompt], vid["video_grid_thw"]), **vid}
            fastpath.sample_group(model, vadr.to_device(dummy, device), num_samples=1, **sample_kw)
        if v_inputs is not None:
            v_roll = fastpath.sample_group(model, v_inputs, num_samples=1, **sample_kw)
            v_texts = decode_completions(tok, v_roll["completion_ids"], v_roll["completion_mask"])
            for i, v in zip(which, v_texts):
                seconds[i] = v                                     # Alg. 1 line 11
    t["time_verification"] = time.time() - t0
    rollout.close()  # reshard: the reference pass and the update run sharded
    t["rollout_copy_gb"] = gathered["bytes"] / scale.GiB  # size of the gathered copy (0: no FSDP)

    # ---- Alg.2 lines 6-10: accuracy, format, verification (Alg. 1 lines 12-16), length, and
    # R = R_acc + R_format + R_ano + R_len, one group at a time (switched-off rewards count 0)
    parts = []
    for b, row in enumerate(batch["rows"]):
        grp = slice(b * G, (b + 1) * G)
        parts += rewards.group_rewards(
            texts[grp], row["solution"], seconds[grp], length_ranges, args.length_mode,
            n_tokens=mask[grp].sum(1).tolist(), use_accuracy=not args.no_accuracy_reward,
            use_format=not args.no_format_reward, use_length=not args.no_length_reward,
            verify_abnormal=not args.no_verification_abnormal,
            verify_normal=not args.no_verification_normal)
    R = torch.tensor([p["total"] for p in parts], dtype=torch.float32)                   # (B*G,)
    r_acc, r_fmt, r_ano, r_len = ([p[k] for p in parts]
                                  for k in ("accuracy", "format", "verification", "length"))
    # ---- Alg.2 line 11 (Eq. 1): group-normalised advantages
    adv, zero_std = grpo.group_advantages(R, G, std=args.adv_std)                      # (B*G,), (B,)
    adv = adv.to(device)

    # ---- reference (and, for mu > 1, old-policy) log-probs, no gradient
    t0 = time.time()
    full = expand_inputs(inputs, G)
    with torch.no_grad(), training.autocast(device):
        # KL reference log pi_ref: the frozen copy ref_model or, with LoRA (ref_model is None), the policy
        # itself with every adapter switched off = exactly the starting weights (lora.reference_policy)
        with (lora.reference_policy(model, ref_model) if args.beta > 0 else contextlib.nullcontext()) as ref:
            ref_logp = fastpath.completion_logprobs(ref, full, ids, temperature=args.temperature) \
                if args.beta > 0 else None
        old_logp = fastpath.completion_logprobs(model, full, ids, temperature=args.temperature) \
            if args.mu > 1 else None
    t["time_reference"] = time.time() - t0

    # ---- Alg.2 line 12: mu policy updates on this rollout (Eq. 3; Eq. 2 when mu > 1)
    t0 = time.time()
    model.train()
    stats_acc = []
    for _ in range(args.mu):
        with training.autocast(device):
            logp = fastpath.completion_logprobs(model, full, ids,
                                                temperature=args.temperature)      # (B*G, T)
            loss, stats = grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask.to(logp.dtype),
                                         beta=args.beta, epsilon=args.epsilon, loss_type=args.loss_type)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stats_acc.append(dict({k: float(v) for k, v in stats.items()}, loss=float(loss.detach()), grad_norm=float(gn)))
    t["time_update"] = time.time() - t0

    Rn = R.numpy()
    out = dict(reward=float(Rn.mean()), reward_std=float(R.view(-1, G).std(1, unbiased=False).mean()),
               reward_accuracy=float(np.mean(r_acc)), reward_format=float(np.mean(r_fmt)),
               reward_verification=float(np.mean(r_ano)), reward_length=float(np.mean(r_len)),
               completion_length=float(mask.sum(1).float().mean()),
               zero_std_fraction=float(zero_std.float().mean()), lr=sched.get_last_lr()[0], **t)
    for k in stats_acc[0]:
        out[k] = float(np.mean([s[k] for s in stats_acc]))
    out["_texts"] = texts
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.merge:  # fold a LoRA run's adapters into a full Hugging Face directory, and exit
        return lora.merge_checkpoint(args.merge, args.out)
    if args.dry_run:  # parameter counts and the per-GPU memory estimate, from the config alone
        return scale.dry_run(args, "rl", paper_preset=PAPER)
    dist_info = vadr.setup_distributed(args.device)
    rank, world, device = dist_info["rank"], dist_info["world_size"], dist_info["device"]
    if vadr.is_main() and args.preset_filled:
        print("[preset] " + " ".join(args.preset_filled))

    if args.data is None:  # the toy world (made by train_sft.py or python -m extras.toy)
        if vadr.is_main():
            toy.ensure_toy_world(TOY_DATA_DIR)
        vadr.barrier()
        args.data = os.path.join(TOY_DATA_DIR, "Vad-Reasoning-RL.jsonl")
        args.video_root = args.video_root or os.path.join(TOY_DATA_DIR, "videos")
    start_dir = checkpoint.resolve_resume(args.resume) if args.resume else None
    if start_dir is None and not os.path.exists(args.model):
        raise SystemExit(f"--model {args.model} does not exist. Make the toy SFT model first with "
                         f"`python train_sft.py` (or `make toy`), or pass --model SFT_CHECKPOINT_DIR.")
    rows = data.read_manifest(args.data, "rl", video_root=args.video_root, skip_bad=args.skip_bad)
    length_ranges = rewards.length_ranges_from_manifest(args.length_ranges_from) if args.length_ranges_from \
        else dict(rewards.DEFAULT_LENGTH_RANGES)
    global_batch = args.batch_size * world
    steps_per_epoch = len(rows) // global_batch
    if steps_per_epoch == 0:
        raise SystemExit(f"{args.data}: {len(rows)} rows are fewer than one global batch of {global_batch}")
    total_steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)

    # ---- policy and the frozen reference (Alg. 2 lines 1-2: pi_ref <- pi_theta at the start).
    # On resume the reference is still the ORIGINAL starting checkpoint, recorded in the config.
    start = dict(step=0, epoch=0, step_in_epoch=0)
    if start_dir:
        saved = torch.load(os.path.join(start_dir, "training_state.pt"), map_location="cpu", weights_only=False)
        args.model = saved["config"]["model"]
    # the weights, plus LoRA adapters with --lora-rank (a LoRA checkpoint is base + adapters)
    model, tok, lora_settings = lora.load_for_training(
        start_dir or args.model, args, resume=start_dir is not None, seed=args.seed)
    # a resumed LoRA run keeps its checkpoint's adapter flags; a real model checkpoints gradients
    vars(args).update(lora_settings, grad_ckpt=scale.grad_ckpt_default(args, model.config))
    scale.install_vision_guard(model)  # every forward must run the vision tower (FSDP collectives)
    # a LoRA run's checkpoints hold its adapters alone, any other run's the full weights
    save = lora.save_lora_checkpoint if lora.lora_config(model) else checkpoint.save_checkpoint
    # the reference: a frozen copy of the starting weights, or None with LoRA (adapters switched off)
    ref_model = lora.make_reference_model(model, args, resume=start_dir is not None, dist_info=dist_info)
    model, mode = training.prepare_model(model, args, dist_info)
    opt = training.make_optimizer(model, args.lr, args.weight_decay)
    sched = training.cosine_schedule(opt, total_steps * args.mu, int(args.warmup_ratio * total_steps * args.mu))
    if start_dir:
        st = checkpoint.load_training_state(start_dir, model, opt, sched, rank)
        start = dict(step=st["step"], epoch=st["epoch"], step_in_epoch=st["step_in_epoch"])

    config = dict(vars(args), world_size=world, parallel=mode, total_steps=total_steps,
                  steps_per_epoch=steps_per_epoch, length_ranges=length_ranges, n_rows=len(rows))
    log_path = os.path.join(args.out, "log.jsonl")
    if vadr.is_main():
        checkpoint.save_run_config(args.out, config)
        if start_dir:
            checkpoint.truncate_jsonl(log_path, start["step"])
        elif os.path.exists(log_path):
            os.remove(log_path)

    # RL: <which> holds Abnormal / Normal (facts note s.2); any category also reads as Abnormal
    prompt = vadr.build_prompt(args.prompt_variant)
    ds = data.RLDataset(rows, prompt_variant=args.prompt_variant, num_frames=args.frames,
                        min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    collate = data.make_collate(tok, with_targets=False)
    step = start["step"]
    pbar = tqdm(total=total_steps, initial=step, disable=not vadr.is_main(), desc="rl", dynamic_ncols=True)
    done = step >= total_steps
    for epoch in range(start["epoch"], args.epochs):
        if done:
            break
        first = start["step_in_epoch"] if epoch == start["epoch"] else 0
        order = training.epoch_order(len(rows), epoch, args.seed, global_batch, rank, world)[first * args.batch_size:]
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=order, collate_fn=collate,
                                             num_workers=args.num_workers)
        for s, batch in zip(range(first, steps_per_epoch), loader):
            ts = time.time()
            res = rl_step(model, ref_model, tok, opt, sched, vadr.to_device(batch, device), args, step, rank,
                          mode, length_ranges, prompt)
            texts = res.pop("_texts")
            step += 1
            rec = dict(step=step, epoch=epoch, **vadr.all_reduce_mean(res, device), step_time=time.time() - ts)
            if vadr.is_main():
                rec["sample"] = texts[0][:400]
                checkpoint.log_jsonl(log_path, rec)
                pbar.set_postfix(R=f"{rec['reward']:.3f}", acc=f"{rec['reward_accuracy']:.2f}",
                                 fmt=f"{rec['reward_format']:.2f}", kl=f"{rec.get('kl', 0):.4f}")
                pbar.update(1)
            last = checkpoint.save_if_due(
                args, save=save, step=step, total_steps=total_steps, epoch=epoch, step_in_epoch=s,
                steps_per_epoch=steps_per_epoch, model=model, tokenizer=tok, optimizer=opt,
                scheduler=sched, config=config)
            if last:
                done = True
                break
    pbar.close()
    training.finish_run(args, model, dist_info, step)


if __name__ == "__main__":
    vadr.run_main(main)
