"""SamplingParams: how one request is sampled, with vLLM's field names and validation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

# Greedy sampling is requested with temperature 0; below this we treat it as greedy to avoid dividing by ~0.
_GREEDY_EPSILON = 1e-5

# What torch.Generator.manual_seed takes; choice i of a request is seeded with seed + i.
_SEED_RANGE = (-(2**63), 2**64 - 1)
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(name: str, value: object) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"SamplingParams.{name} must be a list, got {value!r}")
    return list(value)


@dataclass
class StructuredOutputsParams:
    """Constrain the output to a grammar (vLLM's class of the same name): set exactly one of the fields.

    json: a JSON schema (dict or JSON string); regex: a regular expression; choice: the output is exactly
    one of these strings; grammar: an EBNF grammar (GBNF-style, as xgrammar reads it); json_object: any
    JSON object; structural_tag: an xgrammar structural tag (JSON string or dict), which is how tool calls
    in a model family's syntax are enforced.
    """

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    # JSON only: no whitespace between tokens at all (compact JSON), as vLLM's option of the same name.
    disable_any_whitespace: bool = False

    _KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        chosen = [k for k in self._KINDS if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            raise ValueError(
                "SamplingParams.structured_outputs: set exactly one of json, regex, choice, grammar, "
                f"json_object, structural_tag (got {', '.join(chosen) or 'none'})"
            )
        if isinstance(self.json, str):
            try:
                self.json = json.loads(self.json)
            except json.JSONDecodeError as e:
                raise ValueError(f"SamplingParams.structured_outputs.json: is not valid JSON ({e})") from None
        if self.json is not None and not isinstance(self.json, (dict, bool)):
            raise ValueError("SamplingParams.structured_outputs.json: must be a JSON schema object")
        if self.regex is not None and (not isinstance(self.regex, str) or not self.regex):
            raise ValueError("SamplingParams.structured_outputs.regex: must be a non-empty string")
        if self.choice is not None:
            if not isinstance(self.choice, (list, tuple)) or not self.choice:
                raise ValueError(
                    "SamplingParams.structured_outputs.choice: must be a non-empty list of strings"
                )
            if any(not isinstance(c, str) or not c for c in self.choice):
                raise ValueError(
                    "SamplingParams.structured_outputs.choice: entries must be non-empty strings"
                )
            self.choice = list(self.choice)
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise ValueError("SamplingParams.structured_outputs.grammar: must be a non-empty EBNF string")
        if isinstance(self.structural_tag, dict):
            self.structural_tag = json.dumps(self.structural_tag)

    @property
    def kind(self) -> str:
        return next(k for k in self._KINDS if getattr(self, k) not in (None, False))

    def cache_key(self) -> str:
        """A canonical string naming this constraint (equal constraints give equal keys)."""
        kind = self.kind
        value = getattr(self, kind)
        if self.disable_any_whitespace:
            kind += "/compact"
        return kind + ":" + (json.dumps(value, sort_keys=True) if not isinstance(value, str) else value)


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1 disables top-k, as in vLLM
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    detokenize: bool = True  # False: token ids only, text stays "" (as vLLM; no stop strings then)
    logit_bias: dict[int, float] | None = None
    # How many earlier tokens the repetition/presence/frequency penalties look at (Ollama's repeat_last_n);
    # None means the whole prompt and output, as vLLM does.
    penalty_window: int | None = None
    # Constrained decoding (JSON schema, regex, choice, grammar); a dict is read as StructuredOutputsParams.
    structured_outputs: StructuredOutputsParams | None = None
    # Set by the engine from generation_config.json / the tokenizer: token ids that end generation.
    _eos_token_ids: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.stop = [self.stop] if isinstance(self.stop, str) else _as_list("stop", self.stop)
        self.stop_token_ids = _as_list("stop_token_ids", self.stop_token_ids)
        if self.logit_bias:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(
                    f"SamplingParams.logit_bias must be a dict of token id -> bias, got {self.logit_bias!r}"
                )
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError) as e:
                raise ValueError(f"SamplingParams.logit_bias must map token ids to numbers ({e})") from None
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.structured_outputs, dict):
            try:
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            except TypeError as e:
                raise ValueError(f"SamplingParams.structured_outputs: {e}") from None
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} {why}")

        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, f"must be a finite number, got {value!r}")
        if not _is_int(self.n) or self.n < 1:
            raise bad("n", f"must be an integer >= 1, got {self.n!r}")
        if self.temperature < 0:
            raise bad("temperature", f"must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", f"must be -1, 0 (disabled) or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        low, high = _SEED_RANGE
        if self.seed is not None and (not _is_int(self.seed) or not low <= self.seed <= high - (self.n - 1)):
            raise bad("seed", f"must be a 64-bit integer, got {self.seed!r}")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise bad("min_tokens", f"must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0 or value > 20):
                raise bad(name, f"must be an integer in [0, 20], got {value!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "must be non-empty strings")
        if self.stop and not self.detokenize:
            raise bad("stop", "strings need detokenize=True (they are matched in the text)")
        if any(not _is_int(t) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be non-negative integers")
        if self.logit_bias and any(not -100.0 <= v <= 100.0 for v in self.logit_bias.values()):
            raise bad("logit_bias", "values must be in [-100, 100]")
        if self.penalty_window is not None and (not _is_int(self.penalty_window) or self.penalty_window < -1):
            raise bad("penalty_window", f"must be >= -1, got {self.penalty_window}")
        if self.structured_outputs is not None and not isinstance(
            self.structured_outputs, StructuredOutputsParams
        ):
            raise bad("structured_outputs", "must be a StructuredOutputsParams (or a dict of its fields)")

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPSILON

    def validate_for_vocab(self, vocab_size: int) -> None:
        """Checks that need the model: token ids must exist in its vocabulary."""
        for tid in self.stop_token_ids:
            if tid >= vocab_size:
                raise ValueError(
                    f"SamplingParams.stop_token_ids: {tid} is outside the vocabulary ({vocab_size})"
                )
        for tid in self.logit_bias or {}:
            if not 0 <= tid < vocab_size:
                raise ValueError(
                    f"SamplingParams.logit_bias: token {tid} is outside the vocabulary ({vocab_size})"
                )

    def clone(self, **changes: object) -> SamplingParams:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        values.update(changes)
        return SamplingParams(**values)
