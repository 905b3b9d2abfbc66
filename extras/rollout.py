"""extras/rollout.py -- Algorithm 2 lines 5-10 as train_rl.py runs them: one AVA-GRPO rollout.

For a batch of B videos: G completions each (fastpath.sample_group, = grpo.sample_group), Algorithm
1's trim and second completion for each (rewards.verification_trim), and every reward of Table 7
with their sum R (rewards.group_rewards). train_rl.rl_step then takes the advantages (Eq. 1) and
updates; `python -m extras.inspect` prints what this returns for a few videos. Kept out of
train_rl.py only so that the inspector can call the very same code (extras never import an entry
script).
"""
from __future__ import annotations

import contextlib
import time

import torch

import grpo
import rewards
import vadr
from extras import badvideos, fastpath, scale, training, vanguard


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
