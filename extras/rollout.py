"""extras/rollout.py -- Algorithm 2 lines 5-12 as train_rl.py runs them: one AVA-GRPO step.

rollout: for a batch of B videos, G completions each (fastpath.sample_group, = grpo.sample_group),
Algorithm 1's trim and second completion for each (rewards.verification_trim), and every reward of
Table 7 with their sum R (rewards.group_rewards). rl_step: that rollout, then the advantages
(Eq. 1, grpo.group_advantages) and the mu policy updates (Eq. 3, grpo.grpo_loss); each of the
step's random streams is seeded from (seed, step, rank) alone (step_seed). `python -m
extras.inspect` prints what rollout returns for a few videos; extras/bench.py times rl_step. Kept
out of train_rl.py only so that the inspector and the benchmark call the very same code (extras
never import an entry script).
"""
from __future__ import annotations

import contextlib
import random
import time

import torch

import grpo
import rewards
import vadr
from extras import badvideos, dynamic, fastpath, lora, scale, training, vanguard


def verification_inputs(tok, rows: list[dict], completions: list[str], G: int, rng, args,
                        prompt: str, device) -> tuple[dict | None, list[int]]:
    """Algorithm 1 lines 3-9 for all B*G completions: each its own trim, re-sampled to N frames, all
    in one batch -> (batch or None, indices of its completions). An empty trim gets no second
    pass (its reward stays 0, Alg. 1 line 1)."""
    videos, which, n_frames = [], [], {}
    for i, c in enumerate(completions):
        path = rows[i // G]["video_path"]
        try:
            if path not in n_frames:
                n_frames[path] = vadr.count_frames(path)
            keep = rewards.verification_trim(c, rng, total_frames=n_frames[path])  # kept windows
            if keep:
                videos.append(vadr.encode_video(path, keep=keep, **training.video_args(args)))
                which.append(i)
        except vadr.VideoError as e:  # frames the first pass did not read: --skip-bad, no 2nd pass
            badvideos.Tally(args.data, args.skip_bad).skip(rows[i // G], f"{e} (trimmed)")
    if not videos:
        return None, []
    vids = vadr.collate_videos(videos)
    chat = vadr.build_chat_inputs(tok, [prompt] * len(videos), vids["video_grid_thw"])
    return vadr.to_device({**chat, **vids}, device), which


def rollout(model, tok, batch: dict, args, mode: str, length_ranges: dict, prompt: str,
            sample_kw: dict, trim_rng, t: dict) -> dict:
    """Algorithm 2 lines 5-10 on a batch of B videos -> dict(ids, mask (B*G, T), texts, seconds
    (the completion on each trimmed video, or None), parts (reward parts), R (B*G,)). Timings
    (and --spatial-verification's counts) are added into t."""
    device, G = batch["input_ids"].device, args.num_generations
    inputs = {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}
    add = lambda k, t0: t.__setitem__(k, t.get(k, 0.0) + time.time() - t0)

    # ---- Alg.2 line 5: a group of G completions per video (vision + prefill once per video)
    t0 = time.time()
    model.eval()
    # under FSDP the full weights are gathered ONCE for both sampling passes (extras/scale.py)
    gather = contextlib.ExitStack()
    gathered = gather.enter_context(scale.rollout_weights(model, not args.no_rollout_gather))
    roll = fastpath.sample_group(model, inputs, num_samples=G, **sample_kw)  # = grpo.sample_group
    ids, mask = roll["completion_ids"], roll["completion_mask"]                      # (B*G, T)
    texts = grpo.decode_completions(tok, ids, mask)
    add("time_generation", t0)

    # ---- Alg.2 line 8 = Algorithm 1: trim, one new completion per original
    t0 = time.time()
    seconds = [None] * len(texts)  # the completion on each trimmed video (None: no second pass)
    if not (args.no_verification_abnormal and args.no_verification_normal):
        v_inputs, which = verification_inputs(tok, batch["rows"], texts, G, trim_rng, args,
                                              prompt, device)
        if v_inputs is None and mode == "fsdp":  # every trim empty: still join the collectives
            scale.sample_idle(model, tok, batch["rows"][0], prompt, args, device, sample_kw)
        if v_inputs is not None:  # only the label is read: a row stops once it is settled
            v_roll = fastpath.sample_group(model, v_inputs, 1, stop=fastpath.label_stop(tok),
                                           **sample_kw)
            v_texts = grpo.decode_completions(tok, v_roll["completion_ids"], v_roll["completion_mask"])
            for i, v in zip(which, v_texts):
                seconds[i] = v                                                     # Alg. 1 line 11
    add("time_verification", t0)
    gather.close()  # reshard: the reference pass and the update run sharded
    t["rollout_copy_gb"] = gathered["bytes"] / scale.GiB  # the gathered copy (0 without FSDP)

    # ---- Alg.2 lines 6-10: the rewards (verification: Alg. 1 lines 12-16) and R, group by group
    parts = []
    for b, row in enumerate(batch["rows"]):
        grp = slice(b * G, (b + 1) * G)
        parts += rewards.group_rewards(
            texts[grp], row["solution"], seconds[grp], length_ranges, args.length_mode,
            n_tokens=mask[grp].sum(1).tolist(), use_accuracy=not args.no_accuracy_reward,
            use_format=not args.no_format_reward, use_length=not args.no_length_reward,
            verify_abnormal=not args.no_verification_abnormal,
            verify_normal=not args.no_verification_normal)
    if args.spatial_verification:  # beyond both papers: Alg. 1 for *where* (extras/vanguard.py)
        counts = vanguard.add_spatial_rewards(parts, model, tok, batch["rows"], texts, args,
                                              prompt, device, sample_kw)
        for k, n in counts.items():  # summed over the step's rollouts, as the timings are
            t[k] = t.get(k, 0) + n
    R = torch.tensor([p["total"] for p in parts], dtype=torch.float32)               # (B*G,)
    return dict(ids=ids, mask=mask, texts=texts, seconds=seconds, parts=parts, R=R)


# ---- Alg. 2 lines 5-12: one step (train_rl.py's loop calls this) -------------------------------

# Each random stream of a step is seeded from (seed, step, rank) alone, so --resume redraws it
# exactly: stream -> (seed multiplier, step multiplier).
SEED_STREAMS = {"sample": (1_000_003, 1009), "trim": (7_919, 101), "refill": (1, 7)}


def step_seed(seed: int, step: int, rank: int, stream: str) -> int:
    """The seed of one random stream (SEED_STREAMS) of this step on this rank."""
    a, b = SEED_STREAMS[stream]
    return seed * a + step * b + rank


def rl_step(model, ref_model, tok, opt, sched, batch: dict, args, step: int, rank: int, mode: str,
            length_ranges: dict, prompt: str, ignore_eos: bool = False, draw=None) -> dict:
    """Algorithm 2 lines 5-12 on this rank's videos -> log fields: train_rl.py's step, which
    extras/bench.py times (ignore_eos: its fixed-length completions); draw(n, rng): n random videos
    for --dynamic-sampling, extras/dynamic.py."""
    device, G = batch["input_ids"].device, args.num_generations
    gen = torch.Generator(device=device).manual_seed(step_seed(args.seed, step, rank, "sample"))
    trim_rng = random.Random(step_seed(args.seed, step, rank, "trim"))
    sample_kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_p=args.top_p, end_ids=vadr.end_token_ids(tok),
                     pad_id=vadr.pad_token_id(tok), generator=gen, sync_ranks=(mode == "fsdp"),
                     ignore_eos=ignore_eos)
    t = {}  # timings (and the dynamic-sampling and spatial-pass counts)
    roll_of = lambda b: rollout(model, tok, b, args, mode, length_ranges, prompt, sample_kw,
                                trim_rng, t)
    roll = roll_of(batch)                                                  # Alg. 2 lines 5-10
    if args.dynamic_sampling:  # DAPO: refill groups whose rewards are all equal
        batch, roll, dyn = dynamic.refill(batch, roll, G, roll_of, draw, args.dynamic_max_rounds,
                                          vadr.pad_token_id(tok),
                                          seed=step_seed(args.seed, step, rank, "refill"))
        t.update(dyn)
    inputs = {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}
    ids, mask, texts, parts, R = (roll[k] for k in ("ids", "mask", "texts", "parts", "R"))

    # ---- Alg.2 line 11 (Eq. 1): group-normalised advantages
    adv, zero_std = grpo.group_advantages(R, G, std=args.adv_std)                  # (B*G,), (B,)
    adv = adv.to(device)

    # ---- reference (and, for mu > 1, old-policy) log-probs, no gradient
    t0 = time.time()
    full = grpo.expand_inputs(inputs, G)
    logprobs = lambda m: fastpath.completion_logprobs(m, full, ids, temperature=args.temperature)
    with torch.no_grad(), training.autocast(device):
        # pi_ref: the frozen copy, or (LoRA) the policy with its adapters off
        ref_logp = old_logp = None
        if args.beta > 0:
            with lora.reference_policy(model, ref_model) as ref:
                ref_logp = logprobs(ref)                                           # (B*G, T)
        if args.mu > 1:
            old_logp = logprobs(model)                                             # (B*G, T)
    t["time_reference"] = time.time() - t0

    # ---- Alg.2 line 12: mu policy updates on this rollout (Eq. 3; Eq. 2 when mu > 1)
    t0 = time.time()
    model.train()
    stats_acc = []
    n_tok = None  # the loss's denominator: this mask's own for "sequence" (grpo.grpo_loss)
    if args.loss_type == "token":
        n_tok = grpo.token_normaliser(mask.to(device))
    elif args.loss_type == "dr_grpo":
        n_tok = mask.shape[0] * args.max_new_tokens
    for _ in range(args.mu):
        with training.autocast(device):
            logp = logprobs(model)                                                 # (B*G, T)
            loss, stats = grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask.to(logp.dtype),
                                         beta=args.beta, epsilon=args.epsilon,
                                         loss_type=args.loss_type, n_tokens=n_tok,
                                         epsilon_high=args.epsilon_high)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        stats_acc.append(dict({k: float(v) for k, v in stats.items()},
                              loss=float(loss.detach()), grad_norm=float(gn)))
    t["time_update"] = time.time() - t0

    # log fields: the reward parts' means, lengths, timings, the mean loss stats of the mu updates
    out = training.rl_log_fields(R, G, parts, mask, zero_std, sched.get_last_lr()[0], t, stats_acc)
    out["_texts"] = texts
    return out
