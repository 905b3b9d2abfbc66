"""train_sft.py -- stage 1 of Vad-R1: supervised fine-tuning on P2C-CoT annotated videos.

Paper Sec. 3.4 and 4.1, App. C.3: Qwen2.5-VL-7B is fine-tuned for 4 epochs on Vad-Reasoning-SFT
(1755 videos with a Perception-to-Cognition chain of thought), lr 1e-6, 16 frames of at most
128*28*28 pixels, 4 A100 80 GB. It reads the chat prompt (system, video, P2C-CoT prompt) and learns
`think + "\n" + answer` (docs/paper-vs-authors.md s.2), cross-entropy on the assistant tokens only.

Run it (hardware tiers: docs/scale.md):
    python train_sft.py                       # toy preset on the toy world (made if absent)
    python train_sft.py --model /ckpt/Qwen2.5-VL-7B-Instruct --data Vad-Reasoning-SFT-train.jsonl \
        --video-root /data/vad-reasoning --out runs/sft --grad-ckpt          # one GPU
    torchrun --nproc_per_node 4 train_sft.py --model /ckpt/Qwen2.5-VL-7B-Instruct \
        --data Vad-Reasoning-SFT-train.jsonl --video-root /data/vad-reasoning --out runs/sft --fsdp --grad-ckpt
    python train_sft.py --resume runs/toy/sft             # continue a killed run exactly
    python train_sft.py --model toy-base --preset toy --out runs/toy/sft   # SFT from the shipped toy base (make toy)
    python train_sft.py --task caption --preset toy --model runs/toy-base/tower --data \
        data/toy-pretrain/Toy-Pretrain.jsonl --freeze-vision --out runs/toy-base/caption   # make toy-base's stage B

Departures from the paper / the authors' scripts:
  * Loss on the assistant tokens only (target text and the closing <|im_end|>). The authors'
    labels also trained on the fixed system and prompt text (docs/paper-vs-authors.md s.2).
  * Gradient accumulation divides the summed token losses by the target tokens of the WHOLE
    global batch (all micro-batches, all ranks): k micro-batches give exactly the gradient of
    one batch of k, whatever their lengths (a per-micro-batch mean favours short answers).
  * The paper preset uses cosine with 3% warmup and weight decay 0.01; the authors' trainer's
    schedule is `--schedule linear --warmup-ratio 0 --weight-decay 0`.
  * Video (docs/paper-vs-authors.md s.5): 16 uniform frames (the paper), the authors' pixel band
    (100352 .. 105369) and real-time second_per_grid_ts; --frame-rule authors for their 2 fps.
  * --task caption (toy only): captions behind toy.CAPTION_PROMPT, the toy pretraining's stage B
    (extras/toybase.py, docs/toy-base.md; earlier the toy pipeline's stage 0);
    without it the toy model never looks at the video (docs/experiments.md, docs/toy-world.md).
  * The toy preset (--model toy, the default) fills unset flags for a tiny CPU model; printed. From
    a trained checkpoint it freezes the vision encoder that stage 0 taught (docs/experiments.md).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import data
import vadr
from extras import badvideos, checkpoint, cli, flagcheck, lora, scale, toy, training, vanguard

# ---- every flag of this script, and the presets --------------------------------------------------
TOY_DATA_DIR = "data/toy"  # the default data: the toy world, made on first use
# Paper defaults for a real model (docs/paper-vs-authors.md s.2): fill the flags left at None.
PAPER = dict(epochs=4, lr=1e-6, batch_size=1, grad_accum=2, warmup_ratio=0.03, weight_decay=0.01,
             max_grad_norm=5.0, save_every=500, num_workers=2, cache_videos=False,
             freeze_vision=False, **training.VIDEO_PAPER)
# Toy: a tiny CPU model needs a far larger lr, 18 epochs, videos decoded once; the vision encoder
# stays as stage 0 trained it (at lr 2e-3 on 90 videos SFT unlearns seeing: docs/experiments.md)
TOY = dict(epochs=18, lr=2e-3, batch_size=4, grad_accum=1, warmup_ratio=0.05, weight_decay=0.0,
           max_grad_norm=1.0, save_every=50, num_workers=0, cache_videos=True, freeze_vision=True,
           **training.VIDEO_TOY)
# Toy stage 0 (--task caption): short captions, ~3x cheaper steps, so a larger batch; it is the
# stage that teaches the vision encoder, so nothing is frozen.
TOY_CAPTION = dict(TOY, epochs=2, batch_size=8, save_every=100, num_workers=1, cache_videos=False,
                   freeze_vision=False)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("model")
    g.add_argument("--model", default="toy",
                   help="'toy' (a random toy model) or a local Qwen2.5-VL checkpoint dir, such as "
                        "the shipped toy base toy-base/ (what make toy's SFT starts from)")
    g = ap.add_argument_group("data")
    g.add_argument("--task", default="p2c", choices=["p2c", "caption"],
                   help="p2c: Vad-R1 SFT (the paper). caption: toy stage 0 on Toy-Caption.jsonl "
                        "behind toy.CAPTION_PROMPT (not in the paper)")
    g.add_argument("--data", default=None, help="Vad-Reasoning-SFT-train.jsonl, or "
                   "Toy-Caption.jsonl with --task caption (default: the toy world's)")
    g.add_argument("--video-root", default=None, help="directory the videos are resolved under")
    g.add_argument("--prompt-variant", default="fine", choices=["fine", "binary"],
                   help="<which> holds the fine-grained category (SFT data) or Abnormal/Normal")
    g.add_argument("--skip-bad", action="store_true", help="skip (and count) bad manifest rows")
    g.add_argument("--num-workers", type=int, default=None, help="DataLoader workers")
    g.add_argument("--cache-videos", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each encoded video in memory after its first decode (use "
                        "--num-workers 0). Paper preset: off; toy preset: on")
    g.add_argument("--tokenizer-corpus", nargs="+", default=None, metavar="JSONL",
                   help="--model toy: manifests whose texts train the toy tokenizer (default: the "
                        "toy world's SFT and caption text, or --data's)")
    training.add_video_args(ap)  # --frames --frame-rule --max-pixels --min-pixels --grid-time
    g = ap.add_argument_group("optimisation (paper App. C.3; None = paper default or toy preset)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the data (paper: 4)")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    g.add_argument("--batch-size", type=int, default=None, help="videos per micro-batch (paper: 1)")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (paper: 2)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (paper: 1e-6)")
    g.add_argument("--warmup-ratio", type=float, default=None, help="fraction of warmup steps")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    g.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping (paper: 5)")
    g.add_argument("--schedule", default="cosine", choices=sorted(training.SCHEDULES),
                   help="decay after the linear warmup (the authors' SFT trainer: linear)")
    g.add_argument("--preset", default=None, choices=["paper", "toy"],
                   help="defaults for unset flags (default: toy with --model toy or without "
                        "--data, else paper)")
    # --out --save-every --keep-last --resume --overwrite --fsdp --device --seed --grad-ckpt
    # --freeze-vision (extras/training.py)
    training.add_run_args(ap, default_out="runs/toy/sft")
    # --lora-rank --lora-alpha --lora-dropout --lora-targets --lora-base-dtype --merge --dry-run
    # --dry-run-gpus --dry-run-video-hw --no-grad-ckpt (extras/scale.py); SFT's own (not RL's):
    g = scale.add_scale_args(ap)
    g.add_argument("--lora-train-embeddings", action="store_true",
                   help="with --lora-rank: also train the input embeddings and lm_head in full "
                        "(fp32), for tokens the base never learned (the toy's P2C tags)")
    g = ap.add_argument_group("VANGUARD stages 2-3 (extras/vanguard.py)")
    g.add_argument("--boxes", default=None, help="box JSONL (python -m extras.vanguard boxes): "
                   "the targets write each abnormal video's box inside <where>")
    g.add_argument("--target", default=None, choices=vanguard.TARGETS,
                   help="with --boxes: cot (the default), grounding or label")
    # which flags were given (for --resume), the preset (toy with --model toy or without --data;
    # TOY_CAPTION for --task caption; a random --model toy has no vision encoder to keep frozen)
    return cli.resolve_sft_args(ap, ap.parse_args(argv), argv, PAPER, TOY, TOY_CAPTION)


def backward_global_batch(model, micro: list[dict], world: int, mode: str, device) -> dict:
    """Accumulate the gradient of one global batch (grad_accum micro-batches on each of `world`
    ranks) so that it equals the gradient of the mean token loss over the whole global batch.
    Returns dict(loss = mean token loss over the global batch, target_tokens)."""
    # Normaliser: every target token of the global batch, on all ranks (see the departures above).
    n_local = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    n_tok = int(vadr.all_reduce_sum(torch.tensor(float(n_local), device=device)).item())
    loss_total = 0.0
    for k, m in enumerate(micro):
        # DDP: skip the gradient all-reduce on all but the last micro-batch
        sync = model.no_sync() if mode == "ddp" and k < len(micro) - 1 else contextlib.nullcontext()
        with sync, vadr.autocast(device):
            loss_sum, _ = vadr.sft_loss_sum(model, m)
            # DDP and FSDP average gradients over ranks, so scale by W: the result is
            # (sum of token losses over the global batch) / n_tok, the gradient of one big batch.
            (loss_sum * world / n_tok).backward()
        loss_total += loss_sum.item()
    loss = vadr.all_reduce_sum(torch.tensor(loss_total, device=device)).item() / n_tok
    return dict(loss=loss, target_tokens=n_tok)


def main(argv=None):
    args = parse_args(argv)
    flagcheck.check_flags(args, "sft")  # every flag, and --out, before anything is loaded
    if args.merge:  # fold a LoRA run's adapters into a full Hugging Face directory, and exit
        return lora.merge_checkpoint(args.merge, args.out)
    if args.dry_run:  # parameter counts and the per-GPU memory estimate, from the config alone
        return scale.dry_run(args, "sft")
    dist_info = vadr.setup_distributed(args.device)
    rank, world, device = dist_info["rank"], dist_info["world_size"], dist_info["device"]
    mem0 = scale.memory_baseline()  # before the model: the baseline of the log's mem_peak_gb
    # a resumed run: an SFT run's checkpoint, continued with its own flags (model, data, ...)
    resume_dir = checkpoint.resume_run(args, "sft")
    if vadr.is_main() and args.preset_filled:
        print(f"[{args.preset} preset] " + " ".join(args.preset_filled))
    training.note_cache_workers(args)  # --cache-videos with workers: a cache that dies each epoch

    # ---- data (no --data: the toy world; its SFT and caption text train the shared toy tokenizer)
    if args.data is None:
        toy.use_toy_world(args, "caption" if args.task == "caption" else "sft_train", TOY_DATA_DIR)
        if args.model == "toy" and args.tokenizer_corpus is None:  # a random model: a tokenizer on the world's text
            paths = toy.manifest_paths(TOY_DATA_DIR)
            args.tokenizer_corpus = [p for p in (paths["sft_train"], paths["caption"]) if os.path.getsize(p)]
    kind = "caption" if args.task == "caption" else "sft"
    rows = data.read_manifest(args.data, kind, video_root=args.video_root, skip_bad=args.skip_bad)
    boxes = vanguard.sft_boxes(args, rows)  # --boxes: checked before the run directory is made
    content = checkpoint.data_content(rows)
    if resume_dir:
        checkpoint.check_same_data(args, checkpoint.saved_config(resume_dir), "sft", content)
    global_batch, steps_per_epoch, total_steps = training.plan_steps(args, len(rows), world,
                                                                     args.grad_accum)

    # ---- model: the weights (+ LoRA adapters with --lora-rank); a resumed run reloads its own
    model, tok, lora_settings = lora.load_for_training(
        resume_dir or args.model, args, resume=resume_dir is not None,
        corpus=toy.toy_tokenizer_corpus(args, rows), seed=args.seed)
    # a resumed LoRA run keeps its checkpoint's adapter flags; a real model checkpoints gradients
    vars(args).update(lora_settings, grad_ckpt=scale.grad_ckpt_default(args, model.config))
    scale.install_vision_guard(model)  # every forward must run the vision tower (FSDP collectives)
    # a LoRA run's checkpoints hold its adapters alone, any other run's the full weights
    save = lora.save_lora_checkpoint if lora.lora_config(model) else checkpoint.save_checkpoint
    model, mode = training.prepare_model(model, args, dist_info)
    opt = training.make_optimizer(model, args.lr, args.weight_decay)
    warmup = int(args.warmup_ratio * total_steps)
    sched = training.SCHEDULES[args.schedule](opt, total_steps, warmup)  # --schedule
    start = training.start_state(resume_dir, model, opt, sched, rank, args.seed)

    config = dict(vars(args), stage="sft", world_size=world, parallel=mode,
                  total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                  global_batch=global_batch, n_rows=len(rows), data_content=content)
    if args.model == "toy" and not resume_dir:
        # <out>/init: the untrained toy model, with the tokenizer all stages share (RL without SFT)
        save(args.out, "init", model, tok, config=dict(config, note="untrained toy preset"))
    # run_config.json; on resume the log lines after the checkpoint are dropped (they are redone)
    log_path = checkpoint.start_log(args.out, config, start["step"] if resume_dir else None)

    video = dict(vadr.video_args(args), cache_videos=args.cache_videos)
    ds = vanguard.BoxSFTDataset(rows, boxes, args.prompt_variant, args.target, **video) if boxes \
        else toy.CaptionDataset(rows, **video) if args.task == "caption" \
        else data.SFTDataset(rows, prompt_variant=args.prompt_variant, **video)
    ds = badvideos.SkipBadVideos(ds, replace=args.skip_bad)  # --skip-bad at decode time too
    collate = badvideos.make_collate(data.make_collate(tok, with_targets=True))
    bad_videos = badvideos.Tally(args.data, args.skip_bad)
    per_step = args.batch_size * args.grad_accum  # rows this rank consumes per optimizer step

    step = start["step"]
    pbar = tqdm(total=total_steps, initial=step, disable=not vadr.is_main(), desc=args.task,
                dynamic_ncols=True)
    t0, tokens_seen = time.time(), 0
    model.train()
    done = step >= total_steps
    for epoch in range(start["epoch"], args.epochs):
        if done:
            break
        first = start["step_in_epoch"] if epoch == start["epoch"] else 0
        order = training.epoch_order(len(rows), epoch, args.seed, global_batch, rank, world)
        loader = DataLoader(ds, batch_size=args.batch_size, sampler=order[first * per_step:],
                            collate_fn=collate, num_workers=args.num_workers,
                            persistent_workers=False)
        it = iter(loader)
        for s in range(first, steps_per_epoch):
            ts = time.time()
            scale.reset_peak_memory(device)
            micro = [vadr.to_device(next(it), device) for _ in range(args.grad_accum)]
            time_data = time.time() - ts  # waiting for the DataLoader's decoded videos
            for m in micro:
                bad_videos.note(m)  # without --skip-bad, a bad video stops here naming its line
            res = backward_global_batch(model, micro, world, mode, device)
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn  # FSDP2 returns a DTensor
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            n_tok = res["target_tokens"]
            tokens_seen += n_tok
            rec = dict(step=step, epoch=epoch, loss=res["loss"], lr=sched.get_last_lr()[0],
                       grad_norm=float(gn), target_tokens=n_tok, step_time=time.time() - ts,
                       tokens_per_s=tokens_seen / max(1e-9, time.time() - t0), time_data=time_data,
                       mem_peak_gb=scale.peak_memory_gb(device, mem0))
            if vadr.is_main():
                checkpoint.log_jsonl(log_path, rec)
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                                 tok_s=f"{rec['tokens_per_s']:.0f}")
                pbar.update(1)
            done = checkpoint.save_if_due(
                args, save=save, step=step, total_steps=total_steps, epoch=epoch, step_in_epoch=s,
                steps_per_epoch=steps_per_epoch, model=model, tokenizer=tok, optimizer=opt,
                scheduler=sched, config=config)
            if done:
                break
    pbar.close()
    bad_videos.report()
    training.finish_run(args, model, dist_info, step)


if __name__ == "__main__":
    vadr.run_main(main)
