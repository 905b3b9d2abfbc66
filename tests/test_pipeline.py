"""The main job, shortened: `make toy-ablation-smoke` runs every stage of `make toy` from the
shipped toy base (toy world, SFT, AVA-GRPO, three evaluations, the report) and of `make toy-ablation`
(three more RL runs with Table 10's reward switches, their evaluations, table10.md) for a few steps
each; `make toy-vanguard-smoke` VANGUARD's curriculum, `make toy-base-smoke` the toy pretraining and
`make rehearsal-smoke` extras/rehearsal.py's phases at toy widths, all four in one `make -j2`. Every stage must leave its outputs and every eval JSON must carry every
documented field.
Run: pytest tests/test_pipeline.py"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ["detection.accuracy", "detection.precision", "detection.recall", "detection.f1", "detection.miou",
          "detection.r@0.3", "detection.r@0.5", "detection.r@0.7", "detection_abnormal_only.miou",
          "detection_abnormal_only.r@0.3", "detection_abnormal_only.r@0.5", "detection_abnormal_only.r@0.7",
          "category.accuracy", "reasoning.bleu2", "reasoning.meteor", "reasoning.rouge1", "reasoning.rouge2",
          "reasoning.rouge_l", "reasoning_common.bleu2", "reasoning_common.rouge1", "reasoning_common.rouge2",
          "reasoning_common.rouge_l", "frame.auc", "frame.best_f1", "format.pass_rate", "counts.n_gt",
          "counts.n_pred", "counts.n_matched", "counts.n_missing", "counts.n_unknown_pred", "counts.n_empty"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One `make -j2 toy-ablation-smoke toy-vanguard-smoke toy-base-smoke rehearsal-smoke` into one
    directory: the four are independent after their own toy worlds, so two make jobs keep both cores busy across them (one
    thread a process); also checks that -j is safe. Returns (directory, make's stdout, env)."""
    if shutil.which("make") is None:
        pytest.skip("needs make (the README's entry point)")
    d = tmp_path_factory.mktemp("smoke")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    shipped = os.path.join(ROOT, "toy-base", "model.safetensors")
    before = os.path.getmtime(shipped) if os.path.exists(shipped) else None
    p = subprocess.run(["make", "-j2", "toy-ablation-smoke", "toy-vanguard-smoke", "toy-base-smoke", "rehearsal-smoke",
                        f"PY={sys.executable}", f"SMOKE={d}", "REH_ARGS=--threads 1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    if before is not None:  # the base smoke writes its own toy-base; the repository's stays untouched
        assert os.path.getmtime(shipped) == before
    return d, p.stdout, env


def test_make_toy_smoke_runs_every_stage(smoke):
    tmp_path, stdout, env = smoke
    for f in ["data/toy_world.json", "data/Vad-Reasoning-RL.jsonl", "sft/done", "rl/done", "sft/latest",
              "sft/log.jsonl", "rl/latest", "rl/log.jsonl", "preds_base.jsonl", "preds_sft.jsonl", "preds_rl.jsonl",
              "eval_base.json", "eval_sft.json", "eval_rl.json", "table.md", "sft_curves.svg", "rl_curves.svg"]:
        assert os.path.exists(tmp_path / f), f
    for name in ("base", "sft", "rl"):
        m = json.load(open(tmp_path / f"eval_{name}.json"))
        for key in FIELDS:
            node = m
            for part in key.split(".", 1):  # two levels; "r@0.3" itself holds a dot
                assert part in node, (name, key)
                node = node[part]
        assert m["counts"]["n_gt"] == m["counts"]["n_matched"] == 4
        assert len(open(tmp_path / f"preds_{name}.jsonl").read().splitlines()) == 4
    assert len(open(tmp_path / "rl" / "log.jsonl").read().splitlines()) == 2
    assert len(os.listdir(tmp_path / "strips")) == 4  # 2 abnormal + 2 normal test videos
    table = open(tmp_path / "table.md").read()
    assert "+SFT+AVA-GRPO" in table and "R@0.7" in table
    # RL minus SFT with paired bootstrap intervals, in the table and beside it
    cmp = json.load(open(tmp_path / "compare_rl_vs_sft.json"))
    assert cmp["accuracy"]["n"] == 4 and "rl minus sft over the 4 test videos" in table
    # SFT started from the shipped base, with its tokenizer
    assert json.load(open(tmp_path / "sft" / "run_config.json"))["model"] == "toy-base"
    # extras/rewardcheck.py: SFT and RL sampled on the RL run's first / last tenth (1 step of 2 videos each)
    pr = subprocess.run([sys.executable, "-m", "extras.rewardcheck", "--run", str(tmp_path / "rl"), "--models",
                         str(tmp_path / "sft"), str(tmp_path / "rl"), "--json", str(tmp_path / "rc.json")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert pr.returncode == 0, pr.stderr[-2000:]
    rc, G = json.load(open(tmp_path / "rc.json")), json.load(open(tmp_path / "rl" / "run_config.json"))["num_generations"]
    assert len(rc["sets"]["first"]) == len(rc["sets"]["last"]) == 2 and len(rc["results"]) == 2
    for res in rc["results"].values():
        for part in ("first", "last"):
            assert (res[part]["n_videos"], res[part]["n_completions"]) == (2, 2 * G)
            assert 0 <= res[part]["total"] <= 2.2
    # the ablation: each variant's RL run has its reward switches, 2 steps, an eval; AVA-GRPO is the main run
    abl = tmp_path / "ablation"
    switches = {"grpo": (True, True), "grpo_len": (True, False), "grpo_ano": (False, True)}
    for stem, (no_verify, no_length) in switches.items():
        cfg = json.load(open(abl / stem / "run_config.json"))
        assert (cfg["no_verification_abnormal"], cfg["no_verification_normal"], cfg["no_length_reward"]) == \
            (no_verify, no_verify, no_length), stem
        assert len(open(abl / stem / "log.jsonl").read().splitlines()) == 2
        assert json.load(open(abl / f"eval_{stem}.json"))["counts"]["n_gt"] == 4
    assert json.load(open(abl / "eval_ava_grpo.json")) == json.load(open(tmp_path / "eval_rl.json"))
    table10 = open(abl / "table10.md").read()
    for row in ("GRPO (accuracy + format)", "GRPO + length", "GRPO + verification", "AVA-GRPO (all four)",
                "AVA-GRPO (paper, Table 10)"):
        assert table10.count(f"| {row} |") == (1 if "paper" in row else 2), row  # metrics + rewards rows
    # a second run finds every output and redoes nothing
    p2 = subprocess.run(["make", "-n", "toy-ablation-smoke", f"PY={sys.executable}", f"SMOKE={tmp_path}"], cwd=ROOT,
                        capture_output=True, text=True)
    assert "train_sft.py" not in p2.stdout and "train_rl.py" not in p2.stdout
    # VANGUARD's curriculum on two seeds from the shipped base: every run, eval and table row per seed
    assert "train_sft.py --task caption" not in stdout.split("toy-vanguard")[1]  # no stage 0 of its own
    v = tmp_path / "vanguard"
    targets = {"stage2": "grounding", "stage3": "cot", "mono": "cot", "cls": "label"}
    for seed in (0, 1):
        s = v / f"seed{seed}"
        assert json.load(open(s / "stage1" / "head_config.json"))["seed"] == seed
        for stem, target in targets.items():
            cfg = json.load(open(s / stem / "run_config.json"))
            assert (cfg["target"], cfg["seed"], cfg["boxes"]) == (target, seed, str(tmp_path / "vdata" / "boxes_train.jsonl"))
            assert (cfg["max_steps"], cfg["lora_rank"]) == (4 if stem in ("mono", "cls") else 2, 4), stem
            m = json.load(open(s / f"eval_{stem}.json"))
            assert m["counts"]["n_gt"] == 4 and m["box"]["n"] == 2, stem
            assert ("frame_head" in m) == stem.startswith("stage"), stem  # the head goes with the staged rows
        for stem in ("rl", "rl_spatial"):  # AVA-GRPO from the stage-2 run, without / with the spatial reward
            cfg = json.load(open(s / stem / "run_config.json"))
            assert cfg["spatial_verification"] == (stem == "rl_spatial") and cfg["model"] == str(s / "stage2")
            assert cfg["seed"] == seed and len(open(s / stem / "log.jsonl").read().splitlines()) == 2
            assert json.load(open(s / f"eval_{stem}.json"))["box"]["n"] == 2
        assert json.load(open(s / "stage3" / "step-2" / "adapter_config.json"))["base_model"] == str(s / "stage2" / "step-2")
    vtable = open(v / "table.md").read()
    for stem, row in __import__("extras.vanguard", fromlist=["x"]).VANGUARD_ROWS:
        for seed in (0, 1):
            assert vtable.count(f"| {row.format('stage2')} | {seed} |") == 1, (row, seed)
    assert "predicted Abnormal (true 0.500)" in vtable


def test_make_toy_base_smoke_rebuilds_a_base(smoke):
    """`make toy-base` for a few steps (12 pretraining videos, 2 tower steps, 2 caption steps): the
    pretraining world with its per-frame boxes, the shipped directory with its card, recipe and
    tokenizer corpus, loadable by lora.load_merged; the repository's toy-base/ untouched (the fixture)."""
    tmp_path = smoke[0]
    base = tmp_path / "toy-base"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "recipe.json",
              "tokenizer_corpus.jsonl.gz"):
        assert (base / f).is_file(), f
    rows = [json.loads(x) for x in open(tmp_path / "pretrain" / "Vad-Reasoning-SFT-train.jsonl")]
    assert len(rows) == 12 and all("frame_boxes" in r for r in rows if r["anomaly_type"] != "Normal")
    caps = [json.loads(x)["caption"] for x in open(tmp_path / "pretrain" / "Toy-Pretrain.jsonl")]
    assert any(" during [" in c and " at [" in c for c in caps)
    recipe = json.load(open(base / "recipe.json"))
    assert recipe["tower"]["steps"] == 2 and recipe["caption"]["total_steps"] == 2
    assert set(recipe["perception"]["named"]) <= {"Fire", "Explosion", "Flooding or Tsunami", "Falling Objects",
                                                   "Normal"}
    from extras import lora, toymodel
    model, tok = lora.load_merged(str(base))
    assert model.config.vision_config.depth == toymodel.TOY_VISION["depth"]


def test_make_rehearsal_smoke_runs_every_phase(smoke):
    """extras/rehearsal.py at the toy preset's widths: every phase ran with its prediction,
    measurement (the scripts' mem_peak_gb), time and data wait, and the table has a row each."""
    from extras import rehearsal
    out = smoke[0] / "rehearsal"
    summary = json.load(open(out / "rehearsal.json"))
    phases = {r["phase"]: r for r in summary["phases"]}
    assert list(phases) == list(rehearsal.PHASES)
    for name, r in phases.items():
        assert r["seconds"] > 0 and r["tree_peak_gb"] > 0, name
        assert r["processes"] == (2 if name.endswith("fsdp") else 1), name
        if name != "merge":
            assert r["predicted_gb"] > 0 and r["measured_gb"] > 0 and r["data_wait_s"] >= 0, name
    for name in ("sft_fsdp", "sft_lora", "rl_lora", "rl_merged", "rl_fsdp"):
        run = json.load(open(out / name / "run_config.json"))
        log = [json.loads(x) for x in open(out / name / "log.jsonl")]
        assert len(log) == 1 and phases[name]["measured_gb"] == log[-1]["mem_peak_gb"], name  # --steps 1
        assert run["world_size"] == (2 if name.endswith("fsdp") else 1) and run["fsdp"] == name.endswith("fsdp")
        assert run["lora_rank"] == (None if name.endswith("fsdp") else 4), name
        assert run["max_pixels"] == 128 * 28 * 28 and run["frames"] == 4
    assert json.load(open(out / "rl_lora" / "run_config.json"))["num_generations"] == 2
    # the merged directory is a plain checkpoint; RL from it and from the LoRA run both ran
    assert os.path.isfile(out / "merged" / "config.json")
    assert len(open(out / "preds.jsonl").read().splitlines()) == 2
    table = open(out / "rehearsal.md").read()
    for name in rehearsal.PHASES:
        assert table.count(f"| {name} |") == 1, name
    assert "predicted GiB / process" in table and "data wait s" in table
