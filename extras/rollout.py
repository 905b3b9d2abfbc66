"""extras/rollout.py -- what train_rl.py plugs into grpo.rl_step (Algorithm 2 lines 5-12) beyond
the plain one-process method, as one grpo.StepHooks: the scorer the script selects, FSDP (the
weights gathered once for both sampling passes, the all-done test all-reduced, an idle second pass
on a rank with no trim), the reference policy of a LoRA run (its adapters off), --skip-bad on the
trimmed videos, DAPO's dynamic sampling (extras/dynamic.py) and spatial verification
(extras/vanguard.py). extras/inspect.py builds its hooks here too, so that it rolls out exactly
what train_rl.py does.
"""
from __future__ import annotations

import grpo
import vadr
from extras import badvideos, dynamic, lora, scale, vanguard


def step_hooks(args, tok, mode: str, score, draw=None) -> grpo.StepHooks:
    """train_rl.py's hooks for its flags. mode: training.prepare_model's ("none", "ddp", "fsdp");
    score: the scorer (grpo.completion_logprobs or extras/fastpath.py's drop-in); draw(n, rng): n
    random videos, collated on the step's device (--dynamic-sampling's refills)."""
    fsdp = mode == "fsdp"
    spatial = lambda parts, model, tok, rows, texts, prompt, device, kw: \
        vanguard.add_spatial_rewards(parts, model, tok, rows, texts, args, prompt, device, kw)
    refill = lambda batch, roll, rollout_of, seed: dynamic.refill(
        batch, roll, args.num_generations, rollout_of, draw, args.dynamic_max_rounds,
        vadr.pad_token_id(tok), seed=seed)
    idle = lambda model, tok, row, prompt, device, kw: \
        scale.sample_idle(model, tok, row, prompt, args, device, kw)
    return grpo.StepHooks(
        score=score,
        rollout_weights=lambda model: scale.rollout_weights(model, not args.no_rollout_gather),
        reference=lora.reference_policy,
        bad_video=lambda row, err: badvideos.Tally(args.data, args.skip_bad).skip(row, err),
        idle_sample=idle if fsdp else None,
        extra_rewards=spatial if args.spatial_verification else None,
        refill=refill if args.dynamic_sampling else None,
        sync_ranks=fsdp)
