"""Tokenizer from GGUF metadata: builds a `tokenizers.Tokenizer` that tokenizes the way llama.cpp does.

Two vocabulary kinds (`tokenizer.ggml.model`):
- "llama": SentencePiece BPE. llama.cpp merges, at each step, the adjacent pair whose concatenation is the
  vocabulary piece with the highest score, then falls back to <0xXX> byte tokens for anything unmerged.
  The same result comes from a BPE model whose merges are every (a, b) with a, b and a+b in the vocabulary,
  ranked by the score of a+b. Spaces become U+2581 ("▁"); `add_space_prefix` (default true, Gemma false)
  puts one in front of each text segment. There is no pre-tokenizer: merges may cross word boundaries.
- "gpt2": byte-level BPE with the file's merges, after splitting the text with the regexes llama.cpp uses
  for `tokenizer.ggml.pre` (PRE_TOKENIZERS below).
In both, control and unknown tokens become special added tokens and user-defined ones plain added tokens,
all matched against the raw text first, as llama.cpp's special-token partition does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as FastTokenizer

from ladle.loader.gguf_config import eos_token_ids, special_token_id
from ladle.loader.tokenizer import Tokenizer

SPACE = "\u2581"

# llama.cpp token types (llama.h, LLAMA_TOKEN_TYPE_*).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes (from the models' own tokenizer.json files), applied one after the other, each
# splitting the pieces the previous one produced and keeping what it does not match.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class PreTokenizerSpec:
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is itself a vocabulary token is used whole (llama 3)


PRE_TOKENIZERS: dict[str, PreTokenizerSpec] = {
    # llama.cpp's fallback for BPE vocabularies converted without a known pre-tokenizer.
    "default": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")),
    "llama-bpe": PreTokenizerSpec((_LLAMA3,), ignore_merges=True),
    "gpt-2": PreTokenizerSpec((_GPT2,)),
    "qwen2": PreTokenizerSpec((_QWEN2,)),
    "qwen35": PreTokenizerSpec((_QWEN35,)),
    "starcoder": PreTokenizerSpec((r"\p{N}", _GPT2)),
    "falcon": PreTokenizerSpec((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]")),
    "deepseek-coder": PreTokenizerSpec(
        (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}")
    ),
}
# Other names llama.cpp gives the same pre-tokenizers.
_PRE_ALIASES = {
    "llama3": "llama-bpe",
    "llama-v3": "llama-bpe",
    "falcon3": "llama-bpe",
    "pixtral": "llama-bpe",
    "dbrx": "llama-bpe",
    "smaug-bpe": "llama-bpe",
    "phi-2": "gpt-2",
    "mpt": "gpt-2",
    "olmo": "gpt-2",
    "jais": "gpt-2",
    "exaone4": "gpt-2",
    "deepseek-r1-qwen": "qwen2",
    "stablelm2": "qwen2",
    "megrez": "qwen2",
    "refact": "starcoder",
    "command-r": "starcoder",
    "smollm": "starcoder",
    "codeshell": "starcoder",
    "exaone": "starcoder",
}


class UnsupportedTokenizerError(ValueError):
    pass


def _spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a vocabulary piece into two vocabulary pieces, best-scoring piece first."""
    vocab = set(tokens)
    ranked: list[tuple[float, int, str, str]] = []
    for index, piece in enumerate(tokens):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[index], index, left, right))
    ranked.sort()
    return [(left, right) for _, _, left, right in ranked]


def _bpe_merges(raw: list[str]) -> list[tuple[str, str]]:
    merges = []
    for line in raw:
        cut = line.find(" ", 1)  # as llama.cpp: a merge of a lone space starts with the space itself
        merges.append((line[:cut], line[cut + 1 :]) if cut > 0 else (line, ""))
    return merges


def _add_vocab_tokens(
    backend: FastTokenizer, tokens: list[str], types: list[int] | None, eog: list[int]
) -> None:
    """Control and unknown tokens (and, as in llama.cpp, every end-of-generation token) become special
    added tokens; user-defined ones plain added tokens. Both are matched in the raw text before the model."""
    types = list(types) if types is not None else [NORMAL] * len(tokens)
    for i in eog:
        types[i] = CONTROL
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k in (CONTROL, UNKNOWN)
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(tokens, types, strict=True)
        if k == USER_DEFINED
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(user)


def _spm_backend(meta: dict[str, Any], tokens: list[str]) -> FastTokenizer:
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = special_token_id(meta, "unknown")
    unk = tokens[unk_id] if unk_id is not None else None
    backend = FastTokenizer(
        models.BPE(
            vocab=vocab, merges=_spm_merges(tokens, scores), unk_token=unk, byte_fallback=True, fuse_unk=True
        )
    )
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Replace(" ", SPACE)]
    if add_prefix:
        steps.insert(0, normalizers.Prepend(SPACE))
    backend.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        # SentencePiece's rule (and transformers'): decoding drops the space the encoder put in front. The
        # engine's incremental detokenizer decodes with prompt context, so continuations keep theirs.
        decode.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(decode)
    return backend


def _bpe_backend(meta: dict[str, Any], tokens: list[str]) -> FastTokenizer:
    pre = meta.get("tokenizer.ggml.pre") or "default"
    pre = _PRE_ALIASES.get(pre, pre)
    if pre not in PRE_TOKENIZERS:
        known = ", ".join(sorted({*PRE_TOKENIZERS, *_PRE_ALIASES}))
        raise UnsupportedTokenizerError(f"pre-tokenizer {pre!r} is not supported (ladle knows: {known})")
    spec = PRE_TOKENIZERS[pre]
    merges = _bpe_merges(meta.get("tokenizer.ggml.merges") or [])
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = FastTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=spec.ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec.regexes]
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    backend.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    backend.decoder = decoders.ByteLevel()
    return backend


def _post_processor(tokens: list[str], bos: int | None, eos: int | None, add_bos: bool, add_eos: bool):
    parts, specials = ["$A"], {}
    if add_bos and bos is not None:
        parts.insert(0, tokens[bos])
        specials[tokens[bos]] = bos
    if add_eos and eos is not None:
        parts.append(tokens[eos])
        specials[tokens[eos]] = eos
    if len(parts) == 1:
        return None
    single = " ".join(parts)
    pair = f"{single} {single.replace('$A', '$B:1')}"
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(specials.items()))


def load_gguf_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """The ladle Tokenizer described by a GGUF file's `tokenizer.*` metadata."""
    model = meta.get("tokenizer.ggml.model")
    tokens: list[str] | None = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedTokenizerError("the file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    if model == "llama":
        backend = _spm_backend(meta, tokens)
        default_add_bos = True
    elif model == "gpt2":
        backend = _bpe_backend(meta, tokens)
        default_add_bos = False
    else:
        raise UnsupportedTokenizerError(
            f"tokenizer model {model!r} is not supported (ladle reads llama, gpt2)"
        )
    eog = eos_token_ids(meta, tokens)
    _add_vocab_tokens(backend, tokens, meta.get("tokenizer.ggml.token_type"), eog)

    bos, eos = special_token_id(meta, "bos"), special_token_id(meta, "eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", default_add_bos))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    post = _post_processor(tokens, bos, eos, add_bos, add_eos)
    if post is not None:
        backend.post_processor = post
    pad = special_token_id(meta, "padding")
    return Tokenizer(
        backend=backend,
        bos_token_id=bos,
        eos_token_ids=eog,
        add_bos_token=False,  # the post-processor adds it
        chat_template=meta.get("tokenizer.chat_template") or None,
        bos_token=tokens[bos] if bos is not None else None,
        eos_token=tokens[eos] if eos is not None else None,
        pad_token_id=pad,
    )
