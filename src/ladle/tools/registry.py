"""Which tool-call syntax a model speaks: read from its chat template, else from its architecture."""

from __future__ import annotations

from ladle.tools.base import ToolParser
from ladle.tools.gemma import GemmaToolParser
from ladle.tools.hermes import HermesToolParser
from ladle.tools.llama3 import Llama3JsonToolParser
from ladle.tools.mistral import MistralToolParser

PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
    "gemma": GemmaToolParser,
}

# Architectures (config.json model_type) whose chat templates don't say.
_BY_MODEL_TYPE = {
    "llama": "llama3_json",
    "qwen2": "hermes",
    "qwen3": "hermes",
    "qwen3_moe": "hermes",
    "mistral": "mistral",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
}


def tool_family(chat_template: str | None, model_type: str | None = None) -> str:
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template or "[AVAILABLE_TOOLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or "<|start_header_id|>" in template:
        return "llama3_json"
    if "<start_of_turn>" in template:
        return "gemma"
    return _BY_MODEL_TYPE.get((model_type or "").lower(), "hermes")


def get_tool_parser(family: str) -> ToolParser:
    try:
        return PARSERS[family]()
    except KeyError:
        raise ValueError(f"tool parser: unknown family {family!r} (known: {', '.join(PARSERS)})") from None
