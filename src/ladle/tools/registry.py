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

# For chat templates that don't say: a family by a substring of the model_type or architecture name
# (config.json's "qwen3" / "Qwen3ForCausalLM", ...).
_BY_ARCHITECTURE = (("qwen", "hermes"), ("mistral", "mistral"), ("gemma", "gemma"), ("llama", "llama3_json"))


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
    name = (model_type or "").lower()
    return next((family for key, family in _BY_ARCHITECTURE if key in name), "hermes")


def get_tool_parser(family: str) -> ToolParser:
    try:
        return PARSERS[family]()
    except KeyError:
        raise ValueError(f"tool parser: unknown family {family!r} (known: {', '.join(PARSERS)})") from None
