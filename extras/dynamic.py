"""extras/dynamic.py -- DAPO's dynamic sampling for train_rl.py (`--dynamic-sampling`), not the paper.

A group whose G rewards are all equal has advantages exactly 0 (Eq. 1; grpo.py decision 2), so
it adds no policy gradient, only KL. DAPO (Yu et al. 2025, Sec. 3.2; also in EasyR1 and verl)
drops such groups and samples further prompts until the batch is full of groups with signal.
Here, per rank and per step:
  1. the step's B videos are rolled out and rewarded as usual (grpo.rollout);
  2. each group with equal rewards is dropped; replacement videos are drawn at random from the
     whole RL set with a generator seeded by (seed, step, rank, round), rolled out and rewarded,
     and the groups with signal fill the free slots, for at most --dynamic-max-rounds rounds;
  3. slots still free at the end keep their dropped groups (zero advantage, KL only), so every
     step updates on exactly B groups and the learning rate schedule is unchanged.
Drawing refills outside the epoch order keeps the data order and exact resume untouched (a
refill video may come round again later in the epoch); DAPO instead consumes the next prompts.
Logged per step: dynamic_dropped (groups of the step's own videos without signal),
dynamic_extra_groups (videos rolled out to refill them) and dynamic_rounds.
Under FSDP every sampling forward is a collective and the ranks would need the same number of
rounds, so the flag is refused there (train_rl.py); under DDP sampling is local to each rank.

Tests: tests/test_dynamic.py (the merge on hand-built batches; one step that refills).
"""
from __future__ import annotations

import random

import torch

PROMPT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def has_signal(R: torch.Tensor, G: int) -> list[bool]:
    """(B*G,) rewards -> per group: are its G rewards not all equal (grpo.group_advantages)."""
    r = R.reshape(-1, G)                                                          # (B, G)
    return (r.amax(1) != r.amin(1)).tolist()


def _video_slices(inputs: dict) -> list[slice]:
    """Rows of pixel_values_videos that belong to each video (grid t*h*w patches each)."""
    n = inputs["video_grid_thw"].prod(-1).tolist()                                # (B,)
    starts = [sum(n[:b]) for b in range(len(n))]
    return [slice(s, s + k) for s, k in zip(starts, n)]


def merge_groups(picks: list[tuple[dict, dict, int]], G: int, pad_id: int) -> tuple[dict, dict]:
    """Groups taken from several rolled-out batches -> one batch and one rollout.

    picks: (batch, roll, b): video b of `batch` with its G completions in `roll` (rows b*G..b*G+G-1
    of ids / mask (N, T), texts, seconds, parts). Prompts are LEFT-padded to the longest one
    (vadr.build_chat_inputs' layout, so each prompt still ends in the last column) and
    completions RIGHT-padded with pad_id under a 0 mask, so the update sees what was sampled."""
    P = max(bt["input_ids"].shape[1] for bt, _, _ in picks)
    T = max(rl["ids"].shape[1] for _, rl, _ in picks)
    batch = {k: [] for k in PROMPT_KEYS + ("pixel_values_videos", "video_grid_thw",
                                           "second_per_grid_ts", "rows")}
    roll = dict(ids=[], mask=[], texts=[], seconds=[], parts=[])
    for bt, rl, b in picks:
        left = P - bt["input_ids"].shape[1]
        for k in PROMPT_KEYS:  # (1, P): pad columns in front; attention 0, text type 0
            fill = pad_id if k == "input_ids" else 0
            row = bt[k][b:b + 1]
            batch[k].append(torch.cat([row.new_full((1, left), fill), row], 1))
        batch["pixel_values_videos"].append(bt["pixel_values_videos"][_video_slices(bt)[b]])
        batch["video_grid_thw"].append(bt["video_grid_thw"][b:b + 1])
        batch["second_per_grid_ts"].append(bt["second_per_grid_ts"][b:b + 1])
        batch["rows"].append(bt["rows"][b])
        grp = slice(b * G, (b + 1) * G)
        right = T - rl["ids"].shape[1]
        roll["ids"].append(torch.cat([rl["ids"][grp], rl["ids"].new_full((G, right), pad_id)], 1))
        roll["mask"].append(torch.cat([rl["mask"][grp], rl["mask"].new_zeros(G, right)], 1))
        for k in ("texts", "seconds", "parts"):
            roll[k] += list(rl[k][grp])
    rows = batch.pop("rows")
    batch = {k: torch.cat(v, 0) for k, v in batch.items()}    # (B, P) ..., (sum N_b, 1176)
    batch["rows"] = rows
    roll["ids"], roll["mask"] = torch.cat(roll["ids"], 0), torch.cat(roll["mask"], 0)  # (B*G, T)
    roll["R"] = torch.tensor([p["total"] for p in roll["parts"]], dtype=torch.float32)
    return batch, roll


def refill(batch: dict, roll: dict, G: int, rollout, draw, max_rounds: int, pad_id: int,
           seed: int) -> tuple[dict, dict, dict]:
    """Steps 2-3 of the module docstring. rollout(batch) -> roll (grpo.rollout's dict
    with ids, mask, texts, seconds, parts, R); draw(n, rng) -> a collated batch of n random videos on
    the step's device. -> (batch, roll, stats) with exactly as many groups as `batch` had."""
    B = len(batch["rows"])
    sig = has_signal(roll["R"], G)
    kept = [(batch, roll, b) for b in range(B) if sig[b]]
    dropped = [(batch, roll, b) for b in range(B) if not sig[b]]
    rng, rounds, extra = random.Random(seed), 0, 0
    while len(kept) < B and rounds < max_rounds:
        need = B - len(kept)
        nb = draw(need, rng)
        nr = rollout(nb)
        rounds, extra = rounds + 1, extra + need
        kept += [(nb, nr, b) for b, s in enumerate(has_signal(nr["R"], G)) if s][:need]
    picks = kept + dropped[:B - len(kept)]  # still short: the dropped groups (KL only) fill up
    if not dropped:
        return batch, roll, dict(dynamic_dropped=0, dynamic_extra_groups=0, dynamic_rounds=0)
    new_batch, new_roll = merge_groups(picks, G, pad_id)
    return new_batch, new_roll, dict(dynamic_dropped=len(dropped), dynamic_extra_groups=extra,
                                     dynamic_rounds=rounds)
