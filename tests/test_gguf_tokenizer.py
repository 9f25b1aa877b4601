"""GGUF tokenizers against llama.cpp: its own tokenizer test files, and llama_cpp on the real models."""

from __future__ import annotations

import pytest

from gguf_support import gemma_path, llama_cpp_vocab_dir, read_vocab_tests, stories_path
from ladle.loader.gguf_file import read_gguf
from ladle.loader.gguf_tokenizer import load_gguf_tokenizer
from ladle.loader.tokenizer import Tokenizer

# llama-spm, llama-bpe, gpt-2 and qwen2 are the required ones; the others cover more pre-tokenizers.
VOCABS = [
    "llama-spm",
    "llama-bpe",
    "gpt-2",
    "qwen2",
    "phi-3",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
    "qwen35",
    "falcon",
    "deepseek-coder",
]

TEXTS = [
    "Hello world",
    " Hello  world ",
    "The history of the printing press begins",
    "naïve café — déjà vu",
    "数字 123456 and 3.14159",
    "emoji 🦙🚀👍🏽 done",
    "tabs\tand\nnewlines\n\n\nend",
    "   leading spaces",
    "trailing spaces   ",
    "Ünïcödé ÀÉÎÕÜ ß ﬁ",
    "<start_of_turn>user\nhi<end_of_turn>",
    "a<b>c</b> </iframe>",
    "x" * 50,
    "1,000,000.00$ €20 ¥300",
    "\n",
    "",
    " ",
    "Привет мир",
    "こんにちは世界",
    "안녕하세요",
    "मैं ठीक हूँ",
    "def f(x):\n    return x**2  # comment\n",
    "Once upon a time, there was a girl named Lily.",
    "\u200b zero width \u00a0nbsp",
    "  \n  \n",
    "'s 've 'LL 'd",
    "<s> </s> <unk> <bos>",
]


def encode_like_llama_cpp(tok: Tokenizer, text: str, add_special: bool, parse_special: bool) -> list[int]:
    tok.backend.encode_special_tokens = not parse_special
    try:
        return tok.encode(text, add_special_tokens=add_special)
    finally:
        tok.backend.encode_special_tokens = False


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_tests(name: str) -> None:
    """test-tokenizer-0's cases: add_special=false, parse_special=false."""
    path = llama_cpp_vocab_dir() / f"ggml-vocab-{name}.gguf"
    tok = load_gguf_tokenizer(read_gguf(path).metadata)
    cases = read_vocab_tests(path)
    assert len(cases) >= 40
    failures = [
        (text, expected, got)
        for text, expected in cases
        if (got := encode_like_llama_cpp(tok, text, False, False)) != expected
    ]
    assert not failures, failures[:3]


@pytest.fixture(scope="module", params=["stories", "gemma"])
def model_pair(request: pytest.FixtureRequest):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = stories_path() if request.param == "stories" else gemma_path()
    ours = load_gguf_tokenizer(read_gguf(path).metadata)
    theirs = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return request.param, ours, theirs


def test_model_tokenization_matches_llama_cpp(model_pair) -> None:
    _, ours, theirs = model_pair
    failures = []
    for text in TEXTS:
        for add_special, parse_special in ((True, True), (False, False), (True, False)):
            expected = theirs.tokenize(text.encode(), add_bos=add_special, special=parse_special)
            got = encode_like_llama_cpp(ours, text, add_special, parse_special)
            if got != expected:
                failures.append((text, add_special, parse_special, expected, got))
    assert not failures, failures[:3]


def test_model_decoding_matches_llama_cpp(model_pair) -> None:
    """Same text as llama.cpp's detokenizer, except that (like SentencePiece and transformers) a decode
    drops the one space a vocabulary with add_space_prefix puts in front of the text."""
    name, ours, theirs = model_pair
    for text in TEXTS:
        ids = theirs.tokenize(text.encode(), add_bos=False, special=False)
        expected = theirs.detokenize(ids).decode("utf-8", errors="replace")
        if name == "stories" and expected.startswith(" "):
            expected = expected[1:]
        assert ours.decode(ids) == expected, text


def test_special_tokens_and_flags(model_pair) -> None:
    name, ours, theirs = model_pair
    assert ours.bos_token_id == theirs.token_bos()
    assert ours.eos_token_ids[0] == theirs.token_eos()
    assert ours.encode("hi")[0] == ours.bos_token_id  # both models add BOS
    assert ours.encode("hi", add_special_tokens=False)[0] != ours.bos_token_id
    assert ours.vocab_size == theirs.n_vocab()
    if name == "gemma":
        # <eos>, then what llama.cpp finds by text: </s> (212) and <end_of_turn> (106).
        assert ours.eos_token_ids == [1, 106, 212] and ours.bos_token == "<bos>"
        assert ours.encode("<start_of_turn>user", add_special_tokens=False)[0] == 105
        assert 106 in ours.special_token_ids
        assert ours.chat_template is None  # the base model's file has none
