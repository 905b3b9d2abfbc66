"""extras/rehearsal.py -- the real model's shapes rehearsed on a CPU before anyone rents a GPU.

What. Qwen2.5-VL-7B's configuration (extras/bench.py's QWEN7B_TEXT / QWEN7B_VISION: every width,
head count, window size, mRoPE section and the 152,064-token vocabulary) with the depth cut to
--layers decoder layers and --vision-depth vision blocks (the last one full attention, like blocks
7, 15, 23, 31 of the 7B), random weights saved in bf16, on toy videos whose frames are exactly the
paper's per-frame budget (224 x 448 = 128 * 28 * 28 pixels: 16 x 32 patches, 8 windows of 112 px).
Each phase is the project's own command, run as its own process for --steps steps (full-parameter
phases) or --lora-steps steps (LoRA phases):

  phase       command                                                       model
  sft_fsdp    torchrun --nproc_per_node 2 train_sft.py --fsdp (full weights)  small-vocab checkpoint
  sft_lora    train_sft.py --lora-rank R                                      7B-vocab checkpoint
  rl_lora     train_rl.py --model <sft_lora> --lora-rank R                    its adapters folded in
  merge       train_sft.py --merge <sft_lora>                                 -> one HF directory
  rl_merged   train_rl.py --model <merge> --lora-rank R                       the merged directory
  rl_fsdp     torchrun --nproc_per_node 2 train_rl.py --fsdp, G = 4           small vocab, 1 layer
  eval        eval.py --model <rl_lora> on the test split's 2 videos          merged on load

and one line each: the peak the memory model predicts (extras/scale.estimate_memory, --dry-run's
model, at the step's real sequence shapes and the phase's resolved flags from its run_config.json),
the peak measured (the scripts' mem_peak_gb on rank 0; eval's printed peak: on CPU the resident
high-water mark above the process's resident memory before the model was loaded; torch's
allocator statistics on CUDA), the wall time, and the seconds the step waited for the DataLoader.
The highest resident memory of all processes at once is watched from here (--max-gb).

Departures (docs/scale.md "The rehearsal"): on a CPU the scripts compute in fp32 (vadr.autocast
runs bf16 on CUDA only), so the memory model is applied with device_type "cpu"; the two
full-parameter FSDP phases use a small vocabulary (the toy tokenizer's), because 16 bytes of fp32
weights, gradients and AdamW state per parameter of the 7B's embeddings and lm_head alone (2 x
545M) are 17.4 GB, which with each rank's whole-model load does not fit a 24 GB machine.

Commands (from the repository root):
    make rehearsal            # the Qwen2.5-VL tokenizer built offline, then the 7B-width run
    python tests/real_qwen_tokenizer.py runs/qwen-tokenizer
    python -m extras.rehearsal --tokenizer runs/qwen-tokenizer --out runs/rehearsal
    python -m extras.rehearsal --tiny --out runs/rehearsal-tiny   # toy widths, under a minute
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch

import data
import vadr
from extras import bench, scale, toy, toymodel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("sft_fsdp", "sft_lora", "rl_lora", "merge", "rl_merged", "rl_fsdp", "eval")
FRAME_HW = (224, 448)   # 224 * 448 = 100,352 = 128 * 28 * 28, the paper's max_pixels, unresized
MARK = "rehearsal.json"  # what makes --out a rehearsal's directory (replaced on a rerun)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m extras.rehearsal", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/rehearsal", help="directory for the world, checkpoints, runs, table")
    ap.add_argument("--tokenizer", default=None,
                    help="a saved Qwen2.5-VL tokenizer (python tests/real_qwen_tokenizer.py DIR); "
                         "default: the toy tokenizer everywhere (vocabulary below 2,048)")
    ap.add_argument("--tiny", action="store_true", help="the toy preset's widths instead of the 7B's (CI)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers kept (7B: 28)")
    ap.add_argument("--rl-fsdp-layers", type=int, default=1,
                    help="decoder layers of rl_fsdp's model: its two ranks hold policy, reference, "
                         "AdamW and the rollout copy (10.3 GiB each at 2 layers: over 20 GB together)")
    ap.add_argument("--vision-depth", type=int, default=4, help="vision blocks kept, the last full attention (7B: 32)")
    ap.add_argument("--frames", type=int, default=4, help="frames per video (paper: 16)")
    ap.add_argument("--steps", type=int, default=2,
                    help="optimizer steps of the full-parameter (FSDP2) phases; the last one is measured "
                         "(AdamW allocates its state in the first step's optimizer.step, after backward)")
    ap.add_argument("--lora-steps", type=int, default=1,
                    help="optimizer steps of the LoRA phases (sft_lora, rl_lora, rl_merged); a first step "
                         "is measured against the model's peak less AdamW's state, which it does not hold yet")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="RL and eval completion cap (paper: 768)")
    ap.add_argument("--num-generations", type=int, default=4, help="G (paper: 4)")
    ap.add_argument("--lora-rank", type=int, default=64, help="LoRA rank of the one-GPU route")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of a one-process phase (torchrun ranks: 1)")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES))
    ap.add_argument("--max-gb", type=float, default=20.0, help="fail when all processes together hold more")
    args = ap.parse_args(argv)
    for k in ("layers", "rl_fsdp_layers", "vision_depth", "frames", "steps", "lora_steps", "max_new_tokens", "num_generations",
              "lora_rank", "threads"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be at least 1")
    args.phases = [p for p in args.phases.split(",") if p]
    if not args.phases or set(args.phases) - set(PHASES):
        ap.error(f"--phases: choose from {','.join(PHASES)}")
    needs = {"rl_lora": "sft_lora", "merge": "sft_lora", "rl_merged": "merge", "eval": "rl_lora"}
    for p in args.phases:
        if p in needs and needs[p] not in args.phases:
            ap.error(f"--phases: {p} needs {needs[p]}")
    if args.tokenizer and not os.path.isfile(os.path.join(args.tokenizer, "tokenizer.json")):
        ap.error(f"--tokenizer {args.tokenizer}: no tokenizer.json there "
                 "(make one with: python tests/real_qwen_tokenizer.py DIR)")
    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MARK)) \
            and not os.path.isfile(os.path.join(out, "world", "toy_world.json")):
        ap.error(f"--out {args.out} holds files that are not a rehearsal's: choose a new directory")
    args.out = out
    return args


# ---- the model: the 7B's widths, the depth cut ------------------------------------------------

def model_config(tok, args, layers: int | None = None):
    """Qwen2_5_VLConfig: the 7B's (or, --tiny, the toy preset's) widths with the depth cut, the
    vocabulary of `tok` (152,064 for Qwen's tokenizer, as the 7B; else rounded up to 64)."""
    vocab = bench.REAL_VOCAB if len(tok) > 150_000 else -(-len(tok) // 64) * 64
    if args.tiny:
        text = dict(toymodel.TOY_TEXT, num_hidden_layers=layers or args.layers)
        vision = dict(toymodel.TOY_VISION, depth=args.vision_depth)
        text.pop("vocab_size", None)
        config = bench.qwen7b_config(tok, text=dict(text, vocab_size=vocab), vision=vision)
        config.text_config.max_position_embeddings = 4096
    else:
        config = bench.qwen7b_config(tok, text=dict(num_hidden_layers=layers or args.layers, vocab_size=vocab),
                                     vision=dict(depth=args.vision_depth))
    config.vision_config.fullatt_block_indexes = [args.vision_depth - 1]
    return config


def write_checkpoint(path: str, tok, args, layers: int, seed: int = 0) -> dict:
    """A random model of model_config(tok) saved in bf16 with its tokenizer -> its parameter count."""
    config = model_config(tok, args, layers)
    model = bench.random_model(config, tok, torch.device("cpu"), torch.bfloat16, seed=seed)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return dict(path=path, params=n, vocab=config.text_config.vocab_size)


# ---- the phases ---------------------------------------------------------------------------------

def phase_commands(args, world: dict, ck: dict) -> dict:
    """phase -> (argv, processes, run directory)."""
    R, py = args.out, sys.executable
    video = ["--video-root", world["videos"], "--frames", str(args.frames),
             "--max-pixels", str(FRAME_HW[0] * FRAME_HW[1]), "--device", "cpu"]
    sft = ["--data", world["sft_train"], "--preset", "paper", "--grad-accum", "1", "--batch-size", "1",
           "--overwrite", *video]
    rl = ["--data", world["rl"], "--preset", "paper", "--length-ranges-from", world["sft_train"],
          "--num-generations", str(args.num_generations), "--max-new-tokens", str(args.max_new_tokens),
          "--batch-size", "1", "--overwrite", *video]
    full = ["--max-steps", str(args.steps)]
    lora = ["--lora-rank", str(args.lora_rank), "--max-steps", str(args.lora_steps)]
    torchrun = [py, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    j = lambda name: os.path.join(R, name)
    return {
        "sft_fsdp": (torchrun + ["train_sft.py", "--model", ck["small"], *sft, *full, "--fsdp", "--out", j("sft_fsdp")], 2,
                     j("sft_fsdp")),
        "sft_lora": ([py, "train_sft.py", "--model", ck["full"], *sft, *lora, "--out", j("sft_lora")], 1,
                     j("sft_lora")),
        "rl_lora": ([py, "train_rl.py", "--model", j("sft_lora"), *rl, *lora, "--out", j("rl_lora")], 1,
                    j("rl_lora")),
        "merge": ([py, "train_sft.py", "--merge", j("sft_lora"), "--out", j("merged")], 1, j("merged")),
        "rl_merged": ([py, "train_rl.py", "--model", j("merged"), *rl, *lora, "--out", j("rl_merged")], 1,
                      j("rl_merged")),
        "rl_fsdp": (torchrun + ["train_rl.py", "--model", ck["small_rl"], *rl, *full, "--fsdp", "--out", j("rl_fsdp")], 2,
                    j("rl_fsdp")),
        "eval": ([py, "eval.py", "--model", j("rl_lora"), "--data", world["sft_test"], "--video-root",
                  world["videos"], "--frames", str(args.frames), "--max-pixels", str(FRAME_HW[0] * FRAME_HW[1]),
                  "--max-new-tokens", str(args.max_new_tokens), "--device", "cpu", "--out", j("preds.jsonl")],
                 1, j("preds.jsonl")),
    }


def tree_pss(pid: int) -> int:
    """Proportional resident bytes (Pss) of a process and all its descendants (torchrun's ranks,
    their DataLoader workers): Pss splits a page shared by n processes n ways, so forked workers'
    copy-on-write pages are not counted once per process as their RSS would be."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(x.split()[1]) * 1024 for x in f if x.startswith("Pss:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run_phase(name: str, cmd: list, procs: int, args) -> dict:
    """Run one phase's command, watching the resident memory of its process tree -> wall time,
    the highest total resident GiB, the output's tail."""
    # glibc returns a freed block of 128 KiB or more to the kernel at once (its adaptive threshold
    # otherwise rises to 32 MiB and keeps freed activations resident), so the resident high-water
    # mark follows the live tensors, as torch's CUDA allocator statistics do
    env = dict(os.environ, OMP_NUM_THREADS=str(1 if procs > 1 else args.threads), PYTHONUNBUFFERED="1",
               MALLOC_MMAP_THRESHOLD_="131072")
    log = open(os.path.join(args.out, f"{name}.log"), "w")
    print(f"[{name}] {' '.join(os.path.relpath(c) if c.startswith(ROOT) else c for c in cmd)}", flush=True)
    t0, peak = time.time(), 0
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    while p.poll() is None:
        peak = max(peak, tree_pss(p.pid))
        time.sleep(1.0)  # smaps_rollup walks every mapping: not too often
    log.close()
    tail = open(log.name).read()[-1500:]
    if p.returncode != 0:
        raise SystemExit(f"rehearsal: phase {name} failed (exit {p.returncode}); its output: {log.name}\n{tail}")
    return dict(seconds=time.time() - t0, tree_peak_gb=peak / scale.GiB, output=tail)


# ---- predicted against measured -----------------------------------------------------------------

def step_shapes(tok, row: dict, run: dict, stage: str) -> dict:
    """The sequence shapes of the phase's one-video step (sequence_shapes' keys), from the real
    batch: the chat layout's token count, the target tokens (SFT) or the completion cap (RL)."""
    video = vadr.video_args(argparse.Namespace(**run))
    if stage == "sft":
        b = data.make_collate(tok, with_targets=True)([data.SFTDataset([row], **video)[0]])
        L, target = b["input_ids"].shape[1], int((b["labels"] != -100).sum())
    else:
        b = data.make_collate(tok, with_targets=False)([data.RLDataset([row], **video)[0]])
        target = run["max_new_tokens"]
        L = b["input_ids"].shape[1] + target
    rows = 1 if stage == "sft" else run["num_generations"]
    patches = int(b["pixel_values_videos"].shape[0])
    return dict(video_tokens=patches // 4, prompt_tokens=L - target, target=target, rows=rows, videos=1,
                seq_len=L, patches=patches, keep=target + 1, padded=False)


def predict(name: str, run: dict, config, tok, world_rows: dict) -> float:
    """GiB per process the memory model predicts for the phase's measured (last) step (CPU: fp32).
    A run of one step is measured in its first step, which holds no AdamW state until its
    optimizer.step, after backward: then the peak is the larger of the model's peak less that
    state and the moment of optimizer.step (weights, reference, gradients and the new state)."""
    stage = "sft" if name.startswith("sft") else "rl"
    row = world_rows["sft" if stage == "sft" else "rl"]
    ns = argparse.Namespace(**run)
    world = run.get("world_size", 1)
    est = scale.estimate_memory(config, ns, stage, world=world, device_type="cpu",
                                shapes=step_shapes(tok, row, run, stage))
    return (est["peak"] if run["max_steps"] > 1 else first_step_peak(est)) / scale.GiB


def first_step_peak(est: dict) -> float:
    """A first step's peak from estimate_memory's terms: the peak without AdamW's state, or the
    moment of optimizer.step (weights, reference, gradients and the state just allocated)."""
    at_step = est["weights"] + est["reference"] + est["gradients"] + est["optimizer"]
    return max(est["peak"] - est["optimizer"], at_step)


def predict_eval(config, tok, row: dict, rl_run: dict) -> float:
    """Eval: the fp32 weights (a LoRA run is merged on load) + one video's KV cache, at the RL
    run's video settings and completion cap (the eval phase is given the same)."""
    run = dict(rl_run, num_generations=1, batch_size=1, beta=0.0, lora_rank=None, fsdp=False)
    sh = step_shapes(tok, row, run, "rl")
    est = scale.estimate_memory(config, argparse.Namespace(**run), "rl", device_type="cpu", shapes=sh)
    return (est["weights"] + est["kv_cache"]) / scale.GiB


def read_log(run_dir: str) -> list[dict]:
    return [json.loads(x) for x in open(os.path.join(run_dir, "log.jsonl"))]


def table(results: list[dict]) -> str:
    out = ["| phase | processes | predicted GiB / process | measured GiB (rank 0) | measured / predicted "
           "| wall s | step s | data wait s | all processes peak GiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"
    for r in results:
        ratio = r["measured_gb"] / r["predicted_gb"] if r.get("predicted_gb") and r.get("measured_gb") else None
        out.append(f"| {r['phase']} | {r['processes']} | {f(r.get('predicted_gb'))} | {f(r.get('measured_gb'))} "
                   f"| {f(ratio)} | {r['seconds']:.0f} | {f(r.get('step_s'), 1)} | {f(r.get('data_wait_s'), 1)} "
                   f"| {r['tree_peak_gb']:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoTokenizer
    t_start = time.time()
    os.makedirs(args.out, exist_ok=True)
    R = args.out
    wdir = os.path.join(R, "world")
    if os.path.isfile(os.path.join(wdir, "toy_world.json")):
        world = dict(toy.manifest_paths(wdir), videos=os.path.join(wdir, "videos"))
    else:  # 2 videos per split and rank; 224 x 448 frames
        world = toy.generate_toy_world(wdir, seed=0, n_sft=4, n_test=2, n_rl=4, n_caption=0, size=FRAME_HW,
                                       frames=(16, 24), quiet=True)
    small_tok = toymodel.train_toy_tokenizer(toy.manifest_texts([world["sft_train"]]))
    full_tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else small_tok
    ck = {}
    for key, tok, layers in (("full", full_tok, args.layers), ("small", small_tok, args.layers),
                             ("small_rl", small_tok, args.rl_fsdp_layers)):
        path = os.path.join(R, f"ckpt_{key}")
        made = os.path.join(path, "rehearsal_checkpoint.json")  # what it was built from
        spec = dict(tiny=args.tiny, layers=layers, vision_depth=args.vision_depth, vocab=len(tok))
        old = json.load(open(made)) if os.path.isfile(made) else {}
        if old.get("spec") != spec:
            shutil.rmtree(path, ignore_errors=True)
            ck[key] = dict(write_checkpoint(path, tok, args, layers), spec=spec)
            with open(made, "w") as f:
                json.dump(ck[key], f)
        else:
            ck[key] = old
        print(f"[checkpoint] {path}: {ck[key]['params']:,} parameters, vocabulary {ck[key]['vocab']:,}", flush=True)
    configs = {k: scale.load_config(v["path"]) for k, v in ck.items()}
    toks = {k: AutoTokenizer.from_pretrained(v["path"]) for k, v in ck.items()}
    rows = {"sft": data.read_manifest(world["sft_train"], "sft", world["videos"])[0],
            "rl": data.read_manifest(world["rl"], "rl", world["videos"])[0],
            "test": data.read_manifest(world["sft_test"], "sft", world["videos"])[0]}
    cmds = phase_commands(args, world, {k: v["path"] for k, v in ck.items()})
    results = []
    for name in args.phases:
        cmd, procs, run_dir = cmds[name]
        if name == "eval":  # this rehearsal's own predictions, from a new model each time
            for f in (run_dir, run_dir + ".meta.json"):
                if os.path.isfile(f):
                    os.remove(f)
        res = dict(phase=name, processes=procs, command=" ".join(cmd), **run_phase(name, cmd, procs, args))
        key = {"sft_fsdp": "small", "rl_fsdp": "small_rl"}.get(name, "full")
        if name == "eval":
            rl_run = json.load(open(os.path.join(R, "rl_lora", "run_config.json")))
            res["predicted_gb"] = predict_eval(configs[key], toks[key], rows["test"], rl_run)
            line = [x for x in res["output"].splitlines() if x.startswith("generated ")]
            res["measured_gb"] = float(line[-1].split("peak memory ")[1].split()[0]) if line else None
            res["data_wait_s"] = float(line[-1].split("waited ")[1].split()[0]) if line else None
        elif name != "merge":
            run = json.load(open(os.path.join(run_dir, "run_config.json")))
            log = read_log(run_dir)
            res["predicted_gb"] = predict(name, run, configs[key], toks[key], rows)
            res["measured_gb"] = log[-1]["mem_peak_gb"]  # the last step: AdamW's state held throughout
            res["step_s"] = log[-1]["step_time"]
            res["data_wait_s"] = log[-1]["time_data"]
        res.pop("output")
        results.append(res)
        print(table([res]).splitlines()[-1], flush=True)
        if res["tree_peak_gb"] > args.max_gb:
            raise SystemExit(f"rehearsal: phase {name} held {res['tree_peak_gb']:.1f} GiB in all, over --max-gb {args.max_gb}")
    summary = dict(config={k: v for k, v in vars(args).items()}, checkpoints=ck, phases=results,
                   seconds=time.time() - t_start, frame_hw=FRAME_HW,
                   peak_gb=max(r["tree_peak_gb"] for r in results))
    with open(os.path.join(R, MARK), "w") as f:
        json.dump(summary, f, indent=1)
    md = table(results)
    with open(os.path.join(R, "rehearsal.md"), "w") as f:
        f.write(md)
    print(md + f"total {summary['seconds']:.0f} s, highest resident memory of all processes {summary['peak_gb']:.2f} GiB"
          f"\n-> {os.path.join(R, 'rehearsal.md')}")
    return summary


if __name__ == "__main__":
    vadr.run_main(main)
