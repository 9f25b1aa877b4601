"""Constrained decoding with xgrammar: JSON schemas, regexes, choices, EBNF grammars and structural tags.

compiler.py   TokenizerInfo from ladle's Tokenizer, and a per-tokenizer cache of compiled grammars
matcher.py    GrammarState: one request's matcher and its precomputed next-token bitmask
decoding.py   StructuredDecoding: what the engine calls (admit, prepare masks, accept tokens)
bitmask.py    applying bitmasks to a batch of logits (CPU and GPU)
requests.py   OpenAI / vLLM / Ollama request fields -> StructuredOutputsParams
"""

from ladle.structured.compiler import GrammarCache, build_tokenizer_info
from ladle.structured.decoding import StructuredDecoding
from ladle.structured.matcher import GrammarState

__all__ = ["GrammarCache", "GrammarState", "StructuredDecoding", "build_tokenizer_info"]
