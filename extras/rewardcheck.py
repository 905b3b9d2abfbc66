"""extras/rewardcheck.py -- an RL run's reward curve with the videos held fixed (not the paper).

train_rl.py logs each step's mean reward over that step's own videos. Within one epoch the first
and the last tenth of the steps see different videos, so "the last tenth's reward is above the
first's" mixes what the policy learned with which videos happened to come last. This samples
several checkpoints (say the SFT model and the RL model) on exactly the videos of the run's first
and last tenth, in the run's own data order (extras/training.epoch_order, the function train_rl.py
uses) and with its sampling settings (G, temperature, top_p, max_new_tokens, prompt), and reports
the Table 7 rewards that need no second rollout: accuracy, format and length (with the run's
length ranges and reward switches). The verification reward (Algorithm 1) is left out: it needs
a second rollout on trimmed videos, which only train_rl.py builds.

    python -m extras.rewardcheck --run runs/toy/rl --models runs/toy/sft runs/toy/rl \
        [--json runs/toy/rewardcheck.json]

Every model is sampled with the same seeded generator. A LoRA run is checked after merging its
adapters (`python train_sft.py --merge RUN --out DIR`), as eval.py reads it. Tests: tests/test_rl.py (the tenths, the
scoring on hand-made completions).
"""
from __future__ import annotations

import argparse
import json
import os

import data
import grpo
import rewards
import vadr
from extras import badvideos, checkpoint, lora, scoring, training


def tenth_rows(n_rows: int, seed: int, global_batch: int, total_steps: int) -> dict:
    """Row indices of the first and the last tenth of a run's steps (t = max(1, total // 10)
    steps each, as the report's first / last tenth), step k being global batch k % steps_per_epoch
    of epoch k // steps_per_epoch -> dict(first=[...], last=[...])."""
    spe = n_rows // global_batch  # steps per epoch (incomplete last batch dropped)
    if spe < 1 or total_steps < 1:
        raise vadr.InputError(f"rewardcheck: {n_rows} rows at global batch {global_batch}, "
                              f"{total_steps} steps: no step to check")
    t = max(1, total_steps // 10)

    def rows_of(steps):
        out, orders = [], {}
        for k in steps:
            e = k // spe
            if e not in orders:
                orders[e] = training.epoch_order(n_rows, e, seed, global_batch, 0, 1)  # (spe*GB,)
            out += orders[e][(k % spe) * global_batch:(k % spe + 1) * global_batch]
        return out

    return dict(first=rows_of(range(t)), last=rows_of(range(total_steps - t, total_steps)))


def score_groups(groups: list[list[str]], solutions: list[str], cfg: dict) -> dict:
    """Mean accuracy, format and length reward (Table 7; each 0 when the run switched it off) and
    their sum over every completion of every group; groups[i] are the G completions of a video
    whose weak label is solutions[i]. cfg: the run's run_config (length_ranges, length_mode,
    no_*_reward)."""
    ranges = {k: tuple(v) for k, v in cfg["length_ranges"].items()}
    acc, fmt, length = [], [], []
    for comps, sol in zip(groups, solutions, strict=True):
        acc += [0.0 if cfg.get("no_accuracy_reward") else rewards.accuracy_reward(c, sol) for c in comps]
        fmt += [0.0 if cfg.get("no_format_reward") else rewards.format_reward(c) for c in comps]
        if cfg.get("no_length_reward"):
            length += [0.0] * len(comps)
        elif cfg.get("length_mode", "words") == "words":
            length += rewards.length_rewards_group(comps, sol, ranges, "words")
        else:
            raise vadr.InputError("rewardcheck: --length-mode authors counts tokens; only 'words' "
                                  "runs are checked")
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return dict(n_videos=len(groups), n_completions=len(acc), accuracy=mean(acc), format=mean(fmt),
                length=mean(length), total=mean([a + f + n for a, f, n in zip(acc, fmt, length)]))


def sample_groups(model_dir: str, rows: list[dict], cfg: dict, seed: int, batch_size: int = 4):
    """The run's G completions for each row, sampled as train_rl.py samples (its prompt, video
    flags and sampling settings), with a generator seeded by `seed`."""
    import torch

    model, tok = lora.load_merged(model_dir)
    model.eval()
    ds = data.RLDataset(rows, cfg["prompt_variant"], **vadr.video_args(argparse.Namespace(**cfg)))
    collate = data.make_collate(tok, with_targets=False)
    g, G, groups = torch.Generator().manual_seed(seed), cfg["num_generations"], []
    for b0 in range(0, len(rows), batch_size):
        items = []
        for i in range(b0, min(b0 + batch_size, len(rows))):
            with badvideos.at_line(cfg["data"], rows[i]):  # a bad video: the manifest's file:line
                items.append(ds[i])
        batch = collate(items)
        out = grpo.sample_group(model, {k: batch[k] for k in vadr.MODEL_INPUT_KEYS}, num_samples=G,
                                max_new_tokens=cfg["max_new_tokens"], temperature=cfg["temperature"],
                                top_p=cfg["top_p"], end_ids=vadr.end_token_ids(tok),
                                pad_id=vadr.pad_token_id(tok), generator=g)
        texts = grpo.decode_completions(tok, out["completion_ids"], out["completion_mask"])  # (b*G,)
        groups += [texts[j * G:(j + 1) * G] for j in range(len(texts) // G)]
    return groups


# What main and sample_groups read from run_config.json (besides length_ranges and the no_* switches).
RUN_KEYS = ("data", "seed", "batch_size", "total_steps", "num_generations", "prompt_variant", "max_new_tokens",
            "temperature", "top_p", "frames", "min_pixels", "max_pixels", "frame_rule", "grid_time")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m extras.rewardcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the RL run directory (its run_config.json: data, order, sampling)")
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints or run directories to sample")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (same for every model)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    cfg_path = os.path.join(a.run, "run_config.json")
    if not os.path.isdir(a.run):
        what = "is a file" if os.path.exists(a.run) else "does not exist"
        raise vadr.InputError(f"rewardcheck: --run {a.run} {what}; pass an RL run directory (with run_config.json)")
    if not os.path.exists(cfg_path):
        raise vadr.InputError(f"rewardcheck: --run {a.run} has no run_config.json (an RL run directory)")
    for m in a.models:
        if not os.path.isdir(m):
            what = "is a file" if os.path.exists(m) else "does not exist"
            raise vadr.InputError(f"rewardcheck: --models {m} {what}; pass checkpoint or run directories")
    if not 0 <= a.seed < 2 ** 32:
        raise vadr.InputError(f"rewardcheck: --seed {a.seed}: seeds are in [0, 2**32)")
    cfg = scoring.read_json_object(cfg_path, "an RL run's run_config.json (train_rl.py writes it)")
    if "num_generations" not in cfg or "length_ranges" not in cfg:
        raise vadr.InputError(f"rewardcheck: {cfg_path} is not an RL run's config (no num_generations)")
    missing = [k for k in RUN_KEYS if k not in cfg]
    if missing:
        raise vadr.InputError(f"rewardcheck: {cfg_path} lacks {', '.join(missing)}: not a whole RL run's "
                              "config (train_rl.py writes it)")
    types = dict(seed=int, batch_size=int, total_steps=int, num_generations=int, max_new_tokens=int, frames=int,
                 temperature=(int, float), top_p=(int, float), data=str, prompt_variant=str)
    wrong = [k for k, t in types.items() if isinstance(cfg[k], bool) or not isinstance(cfg[k], t)]
    if wrong:
        raise vadr.InputError(f"rewardcheck: {cfg_path}: {', '.join(wrong)} of the wrong type (edited by hand?): "
                              "not an RL run's config as train_rl.py writes it")
    if a.json:  # checked before any sampling, so a bad --json costs no minutes
        scoring.check_output("rewardcheck", "--json", a.json, {"--run's run_config.json": cfg_path,
                                                                "the run's --data": cfg["data"]})
    rows = data.read_manifest(cfg["data"], "rl", video_root=cfg.get("video_root"))
    sets = tenth_rows(len(rows), cfg["seed"], cfg["batch_size"] * cfg.get("world_size", 1), cfg["total_steps"])
    res = {}
    for m in a.models:
        for name, idx in sets.items():
            picked = [rows[i] for i in idx]
            groups = sample_groups(m, picked, cfg, a.seed)
            res.setdefault(m, {})[name] = score_groups(groups, [r["label"] for r in picked], cfg)
    print(f"rewards without verification over the first / last tenth's videos of {a.run} "
          f"({len(sets['first'])} / {len(sets['last'])} videos, G={cfg['num_generations']}):")
    for m, r in res.items():
        print(f"  {m}: " + "; ".join(f"{k} {r['first'][k]:.3f} / {r['last'][k]:.3f}"
                                      for k in ("total", "accuracy", "format", "length")))
    if a.json:
        checkpoint.atomic_write(a.json, json.dumps(dict(run=a.run, seed=a.seed, sets=sets, results=res), indent=1))


if __name__ == "__main__":
    vadr.run_main(main)
