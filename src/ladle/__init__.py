"""ladle: an LLM inference engine. `from ladle import LLM, SamplingParams`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ladle.version import __version__

if TYPE_CHECKING:
    from ladle.entrypoints.llm import LLM
    from ladle.outputs import CompletionOutput, Logprob, RequestOutput
    from ladle.sampling_params import SamplingParams, StructuredOutputsParams

# Imported lazily so that `import ladle` (and the CLI's start) doesn't pay for torch until it is needed.
_LAZY = {
    "LLM": "ladle.entrypoints.llm",
    "SamplingParams": "ladle.sampling_params",
    "StructuredOutputsParams": "ladle.sampling_params",
    "RequestOutput": "ladle.outputs",
    "CompletionOutput": "ladle.outputs",
    "Logprob": "ladle.outputs",
}

__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "Logprob",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ladle' has no attribute {name!r}")
