"""Oracles for vadr.py: the reference video processor's exact outputs (tests/golden, checked by
SHA-256), the smart_resize table, the chat layout, the parser, frame
sampling, model save/load. Run: pytest tests/test_vadr.py"""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vadr
from extras import checkpoint, lora, toymodel

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
GOLDEN_SHA256 = {
    "qwen25vl_video_processor.json": "cd8baf2857374d1ddef7a4856f47e0a19efc9c9f6be21eb060d270ec400fddf3",
    "qwen25vl_video_processor.safetensors": "6f459c121bae25e1a914d01792a692b31b495abd72aa9ffb3aafc9a47de4c3b0",
}


def _golden():
    for name, sha in GOLDEN_SHA256.items():
        with open(os.path.join(GOLDEN, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha, f"{name} changed: golden must be byte-identical"
    return (load_file(os.path.join(GOLDEN, "qwen25vl_video_processor.safetensors")),
            json.load(open(os.path.join(GOLDEN, "qwen25vl_video_processor.json"))))


# ---------------------------------------------------------------- video preprocessing vs golden

def test_preprocess_bit_exact_against_reference_processor():
    g, meta = _golden()
    assert len(meta["cases"]) == 4
    for c in meta["cases"]:
        frames = g[c["name"] + ".frames_uint8_THWC"].numpy()
        pv, thw = vadr.preprocess_frames(frames, c["min_pixels"], c["max_pixels"])
        ref = g[c["name"] + ".pixel_values_videos"]
        assert thw.dtype == torch.int64 and thw.tolist() == g[c["name"] + ".video_grid_thw"].tolist()
        assert pv.dtype == torch.float32 and pv.shape == ref.shape == tuple(c["pixel_values_videos_shape"])
        assert (pv - ref).abs().max().item() == 0.0, c["name"]  # bit-exact, not merely close
        assert vadr.video_token_count(thw) == c["video_tokens_after_merge"]


def test_smart_resize_table_identical():
    _, meta = _golden()
    table = meta["smart_resize_table"]
    assert len(table) == 30
    for r in table:
        assert list(vadr.smart_resize(r["h"], r["w"], 28, r["min_pixels"], r["max_pixels"])) == r["out"], r


def test_smart_resize_rejects_extreme_aspect():
    with pytest.raises(ValueError):
        vadr.smart_resize(10, 2100)


def test_preprocess_rejects_float_frames():
    with pytest.raises(ValueError, match="uint8"):
        vadr.preprocess_frames(np.zeros((2, 28, 28, 3), np.float32))


# ---------------------------------------------------------------- frame sampling over kept windows

def test_sample_whole_video_is_linspace():
    # docs/paper-vs-authors.md s.3: linspace(0, total-1, 16); 100 frames -> 0, 6.6, 13.2, ... rounded
    idx = vadr.sample_frame_indices(100, 16)
    assert idx.tolist() == np.linspace(0, 99, 16).round().astype(int).tolist()
    assert idx[0] == 0 and idx[-1] == 99


def test_sample_after_trim_resamples_from_what_remains():
    # remove [0.25, 0.75] of 40 frames: kept = 0..9 and 30..39 (20 frames), 4 samples at
    # positions linspace(0, 19, 4) = 0, 6.33, 12.67, 19 -> 0, 6, 13, 19 -> frames 0, 6, 33, 39
    assert vadr.kept_frames(40, [(0, 0.25), (0.75, 1)]).tolist() == list(range(10)) + list(range(30, 40))
    assert vadr.sample_frame_indices(40, 4, [(0, 0.25), (0.75, 1)]).tolist() == [0, 6, 33, 39]
    # drop the head [0, 0.3]: 10 frames -> kept 3..9
    assert vadr.kept_frames(10, [(0.3, 1.0)]).tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert vadr.kept_frames(10, [(0.0, 0.7)]).tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_sample_degenerate_trim_raises():
    with pytest.raises(ValueError, match="leave 0 frame"):
        vadr.sample_frame_indices(10, 16, [(0.0, 0.0)])
    with pytest.raises(ValueError):
        vadr.sample_frame_indices(10, 16, [(0.5, 0.2)])
    # one frame left: the paper rule repeats it, the authors' rule needs two
    assert vadr.sample_frame_indices(10, 4, [(0.9, 1.0)]).tolist() == [9, 9, 9, 9]
    with pytest.raises(ValueError, match="leave 1 frame"):
        vadr.sample_frame_indices(10, 4, [(0.9, 1.0)], rule="authors")
    with pytest.raises(ValueError, match="frame rule"):
        vadr.sample_frame_indices(10, 4, rule="2fps")


@pytest.mark.parametrize("total,fps,want", [
    (300, 30.0, np.linspace(0, 299, 16).round().astype(int).tolist()),  # 20 at 2 fps -> cap 16
    (100, 25.0, [0, 14, 28, 42, 57, 71, 85, 99]),   # 8 s: 100/25*2 = 8 frames
    (87, 25.0, [0, 17, 34, 52, 69, 86]),           # 6.96 -> floored to even: 6
    (30, 30.0, [0, 10, 19, 29]),                   # 1 s: 2 -> raised to the minimum 4
    (3, 30.0, [0, 2]),                             # the minimum capped by the frames there are
])
def test_authors_frame_rule_whole_video(total, fps, want):
    """Their training utilities (docs/paper-vs-authors.md s.5): 2 fps, clamped to [4, 16], even."""
    assert vadr.sample_frame_indices(total, 16, rule="authors", fps=fps).tolist() == want


def test_authors_frame_rule_trimmed_video():
    # remove [0.1, 0.95] of 100 frames: 15 left (0..9, 95..99) < 16: the first 14, none repeated
    keep = [(0.0, 0.1), (0.95, 1.0)]
    got = vadr.sample_frame_indices(100, 16, keep, rule="authors", fps=30.0)
    assert got.tolist() == list(range(10)) + [95, 96, 97, 98]
    # 20 left (>= 16): 16 at linspace over them, as the paper rule does
    keep = [(0.0, 0.1), (0.9, 1.0)]
    assert (vadr.sample_frame_indices(100, 16, keep, rule="authors", fps=30.0).tolist()
            == vadr.sample_frame_indices(100, 16, keep).tolist())
    assert vadr.sample_frame_indices(100, 16, keep).tolist()[:3] == [0, 1, 3]


def test_read_video_round_trip(tmp_path):
    av = pytest.importorskip("av")  # the writer is PyAV (README: decord cannot write)
    path = str(tmp_path / "v.mp4")
    T, H, W = 24, 64, 96
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):  # a bright square moving right over a grey background
        frames[t] = 90
        frames[t, 20:40, 2 * t:2 * t + 20] = (230, 40, 40)
    with av.open(path, "w") as out:
        s = out.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "12"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    v = vadr.read_video(path, num_frames=4)
    assert v["total_frames"] == T and v["frames"].shape == (4, H, W, 3) and v["frames"].dtype == np.uint8
    assert v["indices"].tolist() == [0, 8, 15, 23]
    assert np.abs(v["frames"].astype(float) - frames[v["indices"]].astype(float)).mean() < 4.0
    assert v["fps"] == pytest.approx(8.0)
    assert v["sampled_fps"] == pytest.approx(4 / 24 * 8.0)
    assert np.allclose(v["timestamps"], v["indices"] / 8.0)
    enc = vadr.encode_video(path, num_frames=4)
    # second_per_grid_ts = temporal_patch_size / sampled_fps (docs/paper-vs-authors.md s.4)
    assert enc["second_per_grid_ts"].tolist() == pytest.approx([2 / (4 / 24 * 8.0)])
    assert enc["video_grid_thw"].tolist() == [[2, 4, 6]]  # 64x96 -> smart_resize 56x84 -> 4x6 patches
    # the authors' rules (s.5): 24 frames at 8 fps = 3 s -> 6 frames at 2 fps; time step 1.0
    enc = vadr.encode_video(path, num_frames=16, frame_rule="authors", grid_time="one")
    assert enc["video_grid_thw"].tolist() == [[3, 4, 6]] and enc["second_per_grid_ts"].tolist() == [1.0]
    assert vadr.read_video(path, 16, rule="authors")["indices"].tolist() == [0, 5, 9, 14, 18, 23]
    with pytest.raises(ValueError, match="grid_time"):
        vadr.encode_video(path, 4, grid_time="fps")


def test_pixel_bands_on_a_ucf_frame():
    """docs/paper-vs-authors.md s.5: a 320x240 frame becomes 280x392 in the authors' training band
    (their trainer's own comment) and 252x308 under their inference band."""
    assert vadr.smart_resize(240, 320, 28, *vadr.AUTHORS_TRAIN_PIXELS) == (280, 392)
    assert vadr.smart_resize(240, 320, 28, *vadr.AUTHORS_INFER_PIXELS) == (252, 308)
    assert vadr.AUTHORS_TRAIN_PIXELS == (100352, 105369)


def test_read_video_missing_file_names_it(tmp_path):
    # a vadr.VideoError (an InputError: one line, no traceback; --skip-bad skips it mid-run)
    with pytest.raises(vadr.VideoError, match="nope.mp4: file not found"):
        vadr.read_video(str(tmp_path / "nope.mp4"))


def test_read_video_corrupt_file_names_it(tmp_path):
    p = tmp_path / "bad.mp4"
    p.write_bytes(b"not a video at all" * 10)
    with pytest.raises(RuntimeError, match="bad.mp4"):
        vadr.read_video(str(p))


# ---------------------------------------------------------------- chat layout

@pytest.fixture(scope="module")
def toy():
    corpus = ["<think><step1>a grey road with two walkers</step1></think>", "<answer>Normal</answer>"]
    return toymodel.load_model("toy", corpus=corpus, seed=0)


def test_chat_prompt_equals_tokenizing_the_whole_string(toy):
    _, tok = toy
    ids = vadr.chat_prompt_ids(tok, "Is it abnormal?", 5, system="Be brief.")
    whole = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
             + "<|video_pad|>" * 5 + "<|vision_end|>Is it abnormal?<|im_end|>\n<|im_start|>assistant\n")
    assert ids == tok(whole, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == whole


def test_build_chat_inputs_batch_of_two_sizes(toy):
    _, tok = toy
    grids = torch.tensor([[8, 8, 8], [2, 4, 6]])  # 128 and 12 video tokens
    b = vadr.build_chat_inputs(tok, ["p one", "p two"], grids, targets=["<think>x</think>", "y"])
    vid = tok.convert_tokens_to_ids("<|video_pad|>")
    assert (b["input_ids"] == vid).sum(1).tolist() == [128, 12]            # = grid_t*h*w/4 each
    assert (b["mm_token_type_ids"] == 2).sum(1).tolist() == [128, 12]
    assert b["mm_token_type_ids"].unique().tolist() == [0, 2]
    # left padding: the shorter row starts with pad tokens hidden by the attention mask
    n_pad = b["input_ids"].shape[1] - b["attention_mask"][1].sum().item()
    assert n_pad > 0 and b["attention_mask"][1, :n_pad].sum() == 0 and b["attention_mask"][0].all()
    # labels: exactly the target tokens and the closing <|im_end|>, nothing else
    for i, t in enumerate(["<think>x</think>", "y"]):
        want = tok(t, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
        got = b["labels"][i][b["labels"][i] != -100].tolist()
        assert got == want
        assert b["input_ids"][i, -len(want):].tolist() == want  # and they are the last tokens


def test_mrope_positions_are_3d_and_padding_invariant(toy):
    model, tok = toy
    rng = np.random.default_rng(0)
    v1 = vadr.encode_frames(rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8), 2.0)
    v2 = vadr.encode_frames(rng.integers(0, 256, (4, 112, 84, 3), dtype=np.uint8), 1.0)
    vids = vadr.collate_videos([v1, v2])
    b = vadr.build_chat_inputs(tok, ["short", "a longer prompt here"], vids["video_grid_thw"])
    with torch.no_grad():
        both = model(**b, **vids).logits  # (2, L, V)
        one = model(**vadr.build_chat_inputs(tok, ["short"], v1["video_grid_thw"]), **v1).logits
    # row 0 is left-padded in the batch; its last-token logits equal the unpadded single pass
    assert torch.allclose(both[0, -1], one[0, -1], atol=1e-5)
    pos, _ = model.model.get_rope_index(b["input_ids"], b["mm_token_type_ids"], None,
                                        vids["video_grid_thw"], vids["second_per_grid_ts"],
                                        b["attention_mask"])
    assert pos.shape == (3, 2, b["input_ids"].shape[1])
    vmask = b["mm_token_type_ids"][1] == 2
    assert not torch.equal(pos[0, 1][vmask], pos[1, 1][vmask])  # time and height ids differ on video


# ---------------------------------------------------------------- parser and format

ABN = ("<think><step1>g</step1><step2>l</step2><step3>s</step3><step4>d</step4></think>\n"
       "<answer>It is <which>Fighting</which>: <what>two men fight</what> in <when>[0.25, 0.5]</when> "
       "at <where>the left</where> because <why>violence</why>, <how>injury</how>.</answer>")
NOR = ("<think><step1>g</step1>\n<step2>fine</step2></think>\n<answer>The video is <which>Normal</which>: "
       "<what>people walk</what> since <why>nothing odd</why>.</answer>")


def test_format_layouts():
    assert vadr.check_format(ABN) == "abnormal"
    assert vadr.check_format(NOR) == "normal"
    assert vadr.check_format(ABN.replace("</step1>", "<step1>")) is None   # SFT-train video 2088's typo
    assert vadr.check_format(ABN.replace("<how>injury</how>", "")) is None
    assert vadr.check_format(ABN + " trailing text") is None
    assert vadr.check_format(NOR.replace("<step2>", "x<step2>")) is None  # text between steps
    swapped = ABN.replace("<what>two men fight</what>", "").replace("</when>", "</when><what>w</what>")
    assert vadr.check_format(swapped) is None                              # tags out of order
    assert vadr.check_format("") is None and vadr.check_format(None) is None


@pytest.mark.parametrize("text,which,when,label", [
    (ABN, "Fighting", (0.25, 0.5), "Abnormal"),
    (NOR, "Normal", None, "Normal"),
    # one strict label rule: 'Normal', 'Abnormal' or a known category; anything else has no label
    ("<which>Normal.</which>", "Normal.", None, None),
    ("<which>normal</which>", "normal", None, None),
    ("<which>Unknown</which>", "Unknown", None, None),
    ("<which>fire</which>", "fire", None, "Abnormal"),                                 # a category
    ("<answer><which>Abnormal</which><when>[.3, 1]</when></answer>", "Abnormal", (0.3, 1.0), "Abnormal"),
    ("<which>Fire</which><when>[0.5,0.2]</when>", "Fire", (0.5, 0.2), "Abnormal"),   # reversed kept as written
    ("<which>Fire</which><when>from 0.2 to 0.5</when>", "Fire", None, "Abnormal"),
    ("<which>Fire<when>[0.1, 0.2]</when>", None, (0.1, 0.2), None),                 # unclosed which
    ("<which><which>Normal</which></which>", "<which>Normal", None, None),   # nested: first close wins
    ("<which>  </which>", "", None, None),
    ("<which>火灾 🔥</which><when>[0.1, 0.9]</when>", "火灾 🔥", (0.1, 0.9), None),
    ("", None, None, None),
    ("<think><step1>unclosed", None, None, None),
])
def test_parse_cases(text, which, when, label):
    p = vadr.parse_completion(text)
    assert p["which"] == which and p["when"] == when and p["label"] == label


def test_parse_fields_and_garbage_never_raises():
    p = vadr.parse_completion(ABN)
    assert p["steps"] == ["g", "l", "s", "d"] and p["where"] == "the left" and p["how"] == "injury"
    assert p["think"].startswith("<step1>") and p["answer"].startswith("It is")
    rng = np.random.default_rng(1)
    alphabet = list("<>/[],.0123456789 abcwhenstepthinkanswer\n\u200b\u00e9")
    for _ in range(300):
        s = "".join(rng.choice(alphabet, size=rng.integers(0, 80)))
        vadr.parse_completion(s)
    for x in (None, 3, b"bytes", ["x"]):
        assert vadr.parse_completion(x)["label"] is None


def test_categories_and_variants():
    assert len(set(vadr.CATEGORIES)) == 37
    assert vadr.normalize_category("Avalanche\u200b and Landslide") == "Avalanche and Landslide"
    assert vadr.normalize_category("Red Lgiht Violation") == "Red Light Violation"
    assert vadr.normalize_category("Animal Hurts Human") == "Animals Hurt Human"
    assert vadr.normalize_category("Drown") == "Drowning"
    assert vadr.normalize_category("Falling objects") == "Falling Objects"
    assert vadr.normalize_category("Teleportation") is None


def test_prompts_variants():
    fine, binary = vadr.build_prompt("fine"), vadr.build_prompt("binary")
    assert "Wrong-Way Driving" in fine and "Wrong-Way Driving" not in binary
    assert "exactly Abnormal or Normal" in binary
    for t in ("<think>", "<answer>", "<step4>", "<which>", "<when>", "<how>"):
        assert t in fine and t in binary
    with pytest.raises(ValueError):
        vadr.build_prompt("other")


# ---------------------------------------------------------------- model save / load

def test_toy_model_round_trip_from_pretrained(toy, tmp_path):
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    model, tok = toy
    n = sum(p.numel() for p in model.parameters())
    assert 500_000 < n < 10_000_000  # "a few million parameters"
    checkpoint.save_checkpoint(str(tmp_path), "step-0", model, tok, config={"a": 1})
    d = tmp_path / "step-0"
    assert (tmp_path / "latest").read_text() == "step-0"
    m2 = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(d))
    t2 = AutoTokenizer.from_pretrained(str(d))
    assert t2("<|video_pad|> hello")["input_ids"] == tok("<|video_pad|> hello")["input_ids"]
    for (k, a), (_, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    # same seed, same corpus -> the same toy model (tests and scripts rely on it)
    m3, _ = toymodel.load_model("toy", corpus=["<think><step1>a grey road with two walkers</step1></think>",
                                           "<answer>Normal</answer>"], seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m3.parameters()))


def test_load_model_missing_dir_is_clear():
    with pytest.raises(vadr.InputError, match="nothing is downloaded"):
        lora.load_merged("/no/such/Qwen2.5-VL-7B")


def test_toy_model_forward_on_a_real_toy_video(tiny_world, tiny_model):
    import data
    model, tok = tiny_model
    row = data.read_manifest(tiny_world["sft_test"], "sft")[0]
    v = vadr.read_video(row["video_path"], 16)
    assert v["frames"].shape[0] == 16 and v["total_frames"] == row["total_frames"]
    vid = vadr.encode_frames(v["frames"], v["sampled_fps"])
    batch = vadr.build_chat_inputs(tok, [vadr.build_prompt("fine")], vid["video_grid_thw"])
    with torch.no_grad():
        out = model(**batch, **vid)
    assert vid["video_grid_thw"].tolist() == [[8, 8, 8]]  # 16 frames of 112x112 -> 128 video tokens
    assert out.logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_resolve_resume_falls_back_to_newest_complete_step(tmp_path):
    for d in ("step-3", "step-10", "step-12"):
        (tmp_path / d).mkdir()
    for d in ("step-3", "step-10"):  # step-12 has no training_state.pt: incomplete
        torch.save({}, tmp_path / d / "training_state.pt")  # intact: a torch file and a manifest
        checkpoint.write_manifest(str(tmp_path / d))
    assert checkpoint.resolve_resume(str(tmp_path)) == str(tmp_path / "step-10")   # no `latest`
    (tmp_path / "latest").write_text("step-3")
    assert checkpoint.resolve_resume(str(tmp_path)) == str(tmp_path / "step-3")    # `latest` wins
    with pytest.raises(vadr.InputError, match="no checkpoint there"):
        checkpoint.resolve_resume(str(tmp_path / "step-12"))
