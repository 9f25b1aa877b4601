"""Compiling constraints into xgrammar grammars, once per (tokenizer, constraint).

A GrammarCache belongs to one tokenizer (one engine): it owns the xgrammar GrammarCompiler built from that
tokenizer's vocabulary and an LRU of compiled grammars keyed by the constraint's canonical form, so a
server answering the same schema again pays nothing.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import xgrammar as xgr

from ladle.sampling_params import StructuredOutputsParams

if TYPE_CHECKING:
    from ladle.loader.tokenizer import Tokenizer

# Compiled grammars kept per tokenizer. A JSON-schema grammar is tens to hundreds of KB; 256 of them is a
# small fraction of any model's memory and covers the schemas a busy server actually repeats.
MAX_CACHED_GRAMMARS = 256

# Longest whitespace run the JSON grammars allow between elements. Unbounded whitespace lets a model loop
# on newlines forever (a known failure of any-whitespace JSON grammars); 12 still admits pretty-printed
# JSON ("\n" + indentation) nested five levels deep at indent 2.
MAX_JSON_WHITESPACE = 12


# Special tokens that open or delimit tool calls keep their text, so the tool-call grammars (which spell
# them as strings) let the model write them as the single token it was trained to use.
TOOL_MARKER_TOKENS = frozenset({"[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<tool_call>", "</tool_call>"})


def detect_vocab_type(tokenizer: Tokenizer) -> tuple[xgr.VocabType, bool]:
    """(vocab type, add_prefix_space) of a tokenizer, as xgrammar's Hugging Face path detects them: from the
    serialized backend (decoder: ByteLevel / ByteFallback), overruled by the vocabulary itself when the two
    disagree (256 <0xNN> pieces mean byte-fallback; a vocabulary spelled in the byte-to-unicode alphabet
    means byte-level)."""
    backend = tokenizer.backend
    vocab = backend.get_vocab(with_added_tokens=True)
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())
    vocab_type, add_prefix_space = meta["vocab_type"], bool(meta["add_prefix_space"])
    from_vocab = xgr.TokenizerInfo._detect_vocab_type_from_vocab(vocab)
    if from_vocab is not None and from_vocab != vocab_type:
        vocab_type = from_vocab
        first = backend.encode("a", add_special_tokens=False).tokens
        prefix = "▁" if vocab_type == xgr.VocabType.BYTE_FALLBACK else "Ġ"
        add_prefix_space = bool(first) and first[0].startswith(prefix)
    return vocab_type, add_prefix_space


def build_tokenizer_info(
    tokenizer: Tokenizer, vocab_size: int, stop_token_ids: list[int]
) -> xgr.TokenizerInfo:
    """xgrammar's view of the vocabulary: token strings by id (padded to the model's logits width),
    the vocabulary's encoding, and the ids that end generation.

    Special tokens (<s>, <|eot_id|>, ...) get an empty string, which xgrammar never matches against text:
    the detokenizer drops them from the output, so letting a grammar spell "<s>" with them would make the
    text the user sees differ from the text the grammar accepted. Stop tokens are still allowed where the
    grammar may end. Tool-call markers are the exception (TOOL_MARKER_TOKENS; tool requests keep special
    tokens in the text where the family needs it).
    """
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    size = max(vocab_size, max(vocab.values(), default=-1) + 1)
    encoded = [""] * size
    for token, index in vocab.items():
        encoded[index] = token
    for index in tokenizer.special_token_ids:
        if index < size and encoded[index] not in TOOL_MARKER_TOKENS:
            encoded[index] = ""
    vocab_type, add_prefix_space = detect_vocab_type(tokenizer)
    stops = sorted({t for t in stop_token_ids if 0 <= t < size})
    return xgr.TokenizerInfo(
        encoded[:vocab_size] if size > vocab_size else encoded,
        vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=stops or None,
        add_prefix_space=add_prefix_space,
    )


class GrammarCache:
    def __init__(self, tokenizer_info: xgr.TokenizerInfo, max_threads: int = 2) -> None:
        self.tokenizer_info = tokenizer_info
        self.vocab_size = tokenizer_info.vocab_size
        # xgrammar's own cache is keyed on the grammar text; ours also skips building that text.
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=max_threads, cache_enabled=False)
        self._compiled: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()  # the server may admit requests from several threads
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, vocab_size: int, stop_token_ids: list[int]) -> GrammarCache:
        return cls(build_tokenizer_info(tokenizer, vocab_size, stop_token_ids))

    def get(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        """The compiled grammar for `spec`; raises ValueError naming the field when it does not compile."""
        key = spec.cache_key()
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                self.hits += 1
                return compiled
        compiled = self._compile(spec)
        with self._lock:
            self.misses += 1
            self._compiled[key] = compiled
            while len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled

    def _compile(self, spec: StructuredOutputsParams) -> xgr.CompiledGrammar:
        kind = spec.kind
        field = f"structured_outputs.{kind}"
        whitespace = {"any_whitespace": not spec.disable_any_whitespace}
        if not spec.disable_any_whitespace:
            whitespace["max_whitespace_cnt"] = MAX_JSON_WHITESPACE
        try:
            if kind == "json":
                schema = patch_json_schema(spec.json)
                return self._compiler.compile_json_schema(json.dumps(schema), **whitespace)
            if kind == "json_object":
                return self._compiler.compile_json_schema('{"type": "object"}', **whitespace)
            if kind == "regex":
                return self._compiler.compile_regex(spec.regex)
            if kind == "choice":
                return self._compiler.compile_grammar(choice_grammar(spec.choice))
            if kind == "grammar":
                return self._compiler.compile_grammar(spec.grammar)
            return self._compiler.compile_structural_tag(spec.structural_tag)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"{field}: {_first_line(e)}") from None
        except Exception as e:  # xgrammar's own error types (InvalidJSONError, ...), all caller errors
            raise ValueError(f"{field}: {_first_line(e)}") from None


def patch_json_schema(schema: Any) -> Any:
    """A copy of `schema` with workarounds for xgrammar 0.2.8's JSON grammars.

    A string with minLength/maxLength becomes `.{min,max}` over raw characters, which xgrammar's grammar
    for it lets through unescaped control characters (U+0000-U+001F), i.e. invalid JSON. As a pattern
    (xgrammar matches patterns inside JSON strings safely) the same lengths are enforced without them.
    """
    if isinstance(schema, list):
        return [patch_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    patched = {key: patch_json_schema(value) for key, value in schema.items()}
    lengths = "minLength" in patched or "maxLength" in patched
    plain = not any(key in patched for key in ("pattern", "format", "enum", "const"))
    if patched.get("type") == "string" and lengths and plain:
        low = int(patched.pop("minLength", 0))
        high = patched.pop("maxLength", None)
        patched["pattern"] = f"^.{{{low},{'' if high is None else int(high)}}}$"
    return patched


def choice_grammar(choices: list[str]) -> str:
    """An EBNF grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _first_line(error: BaseException) -> str:
    return clean_error(error)


_CPP_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


def clean_error(error: BaseException) -> str:
    """xgrammar's message without its C++ log prefix ("[12:00:00] /project/cpp/x.cc:83: "), one line."""
    text = str(error).strip() or type(error).__name__
    text = _CPP_PREFIX.sub("", text.splitlines()[0])
    return text[:400]
