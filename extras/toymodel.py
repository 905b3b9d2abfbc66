"""extras/toymodel.py -- the toy preset: a Qwen2.5-VL with the real architecture and tiny widths.

`--model toy` builds a randomly initialised (seeded) Qwen2.5-VL: window-attention ViT, 2x2 patch
merger, mRoPE decoder, the code path of Qwen2.5-VL-7B with only the sizes changed, and a
byte-level BPE tokenizer trained locally on the toy text and the prompts, with Qwen's special
tokens at the front. So the whole method trains on a laptop CPU (docs/toy-world.md).

    python -m extras.toymodel          # one forward of the toy model on the first toy-world video
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Iterable

import torch

import vadr
from vadr import DEFAULT_SYSTEM_PROMPT, SPECIAL_TOKENS, build_prompt, end_token_ids, pad_token_id

# The toy preset: a Qwen2.5-VL with the real architecture (window-attention ViT, 2x2 patch
# merger, mRoPE decoder) but tiny widths, so the whole method trains on a laptop CPU. Only sizes
# differ from Qwen2.5-VL-7B; the code path is the same.
TOY_TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[4, 6, 6]))  # sums to head_dim/2 = 16
TOY_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                  patch_size=14, temporal_patch_size=2, spatial_merge_size=2, tokens_per_second=2,
                  window_size=112, fullatt_block_indexes=[1])
TOY_VOCAB = 2048  # BPE vocabulary cap (byte-level BPE on the toy text stays below it)


def train_toy_tokenizer(corpus: Iterable[str], vocab_size: int = TOY_VOCAB):
    """A byte-level BPE tokenizer trained locally (tokenizers library) with Qwen's special tokens
    at the front, wrapped so that save_pretrained / AutoTokenizer round-trip it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = [build_prompt("fine"), build_prompt("binary"), DEFAULT_SYSTEM_PROMPT, *corpus]
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], clean_up_tokenization_spaces=False,
        model_max_length=32768)


def toy_config(tokenizer):
    """Qwen2_5_VLConfig for the toy preset, with the special-token ids of `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    ids = {t: vadr._tok_id(tokenizer, t) for t in SPECIAL_TOKENS}
    text = dict(TOY_TEXT, vocab_size=vocab, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(TOY_VISION), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def load_model(name_or_dir: str = "toy", dtype=None, device=None, corpus: list[str] | None = None,
               seed: int = 0):
    """--model 'toy': a tiny random model (seeded, without disturbing the global RNG) and a BPE
    tokenizer trained on `corpus` (the toy world's text) plus the prompts. Every script's --model
    (any checkpoint, run directory or LoRA run, and 'toy') goes through extras/lora.load_merged,
    which calls this for 'toy'."""
    if name_or_dir != "toy":
        raise ValueError(f"toymodel.load_model builds 'toy' only, not {name_or_dir!r}: "
                         "extras/lora.load_merged loads any checkpoint")
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = train_toy_tokenizer(corpus or [])
    config = toy_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = end_token_ids(tokenizer)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    model.generation_config.bos_token_id = pad_token_id(tokenizer)
    model.to(dtype or torch.float32)
    tokenizer.padding_side = "left"  # as vadr.load_model (build_chat_inputs)
    if device is not None:
        model.to(device)
    return model, tokenizer


def main(argv=None):
    """One forward of a Qwen2.5-VL (default: the toy preset) on one video."""
    ap = argparse.ArgumentParser(description="One forward of a Qwen2.5-VL on one video.")
    ap.add_argument("--model", default="toy", help="'toy' or a local checkpoint directory")
    ap.add_argument("--video", default=None,
                    help="video file (default: the first video in data/toy/videos)")
    ap.add_argument("--frames", type=int, default=16, help="frames sampled per video (paper: 16)")
    ap.add_argument("--max-pixels", type=int, default=vadr.DEFAULT_MAX_PIXELS,
                    help="max pixels per frame")
    args = ap.parse_args(argv)
    if args.video is None:
        root = "data/toy/videos"
        vids = sorted(os.listdir(root)) if os.path.isdir(root) else []
        if not vids:
            raise vadr.InputError("no --video given and no toy world in data/toy: run "
                             "`python -m extras.toy --out data/toy` first, or pass --video FILE")
        args.video = os.path.join(root, vids[0])
    # a checkpoint directory as it is (run directories and LoRA runs: extras/lora.load_merged,
    # which builds on this module)
    model, tok = load_model() if args.model == "toy" else vadr.load_model(args.model)
    v = vadr.read_video(args.video, args.frames)
    vid = vadr.encode_frames(v["frames"], v["sampled_fps"], max_pixels=args.max_pixels)
    batch = vadr.build_chat_inputs(tok, [vadr.build_prompt("fine")], vid["video_grid_thw"])
    with torch.no_grad():
        out = model(**batch, **vid)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.video}: {v['total_frames']} frames at {v['fps']:.1f} fps, "
          f"sampled {v['indices'].tolist()}")
    print(f"grid {vid['video_grid_thw'].tolist()} -> {vadr.video_token_count(vid['video_grid_thw'])} "
          f"video tokens; input_ids {tuple(batch['input_ids'].shape)}; "
          f"logits {tuple(out.logits.shape)}; params {n:,}")


if __name__ == "__main__":
    vadr.run_main(main)
