"""Tools in a chat request (OpenAI's and Ollama's shapes) -> what the engine and the reply need: the
family's parser, and for tool_choice "required" or a named function, the grammar that enforces it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ladle.sampling_params import StructuredOutputsParams
from ladle.tools.base import ToolParser
from ladle.tools.registry import get_tool_parser, tool_family


@dataclass
class ToolPlan:
    tools: list[dict[str, Any]] = field(default_factory=list)  # validated; the chat template renders them
    choice: str = "none"  # "none" | "auto" | "required" | "named"
    forced_name: str | None = None
    parser: ToolParser | None = None  # None: the reply is plain text (no tools, or tool_choice "none")
    # Set for "required" / named: the engine only lets the model write valid calls of the given tools.
    structured_outputs: StructuredOutputsParams | None = None
    # False when the family's markers are special tokens (e.g. Mistral's [TOOL_CALLS]); None: no change.
    skip_special_tokens: bool | None = None


def validate_tools(tools: Any, field_name: str = "tools") -> list[dict[str, Any]]:
    """Checks OpenAI-shaped function tools; the parameters schemas must compile. ValueError names the field."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ValueError(f"{field_name}: must be a list of tools")
    checked = []
    for i, tool in enumerate(tools):
        where = f"{field_name}.{i}"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ValueError(f"{where}.type: only function tools are supported")
        function = tool.get("function")
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise ValueError(f"{where}.function.name: is required (a non-empty string)")
        parameters = function.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise ValueError(f"{where}.function.parameters: must be a JSON schema object")
            _check_schema(parameters, f"{where}.function.parameters")
        checked.append({"type": "function", "function": dict(function)})
    names = [t["function"]["name"] for t in checked]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ValueError(f"{field_name}: two tools are named {duplicate!r}")
    return checked


def _check_schema(schema: dict[str, Any], where: str) -> None:
    import xgrammar as xgr

    from ladle.structured.compiler import clean_error, patch_json_schema

    try:
        xgr.Grammar.from_json_schema(json.dumps(patch_json_schema(schema)))
    except Exception as e:  # xgrammar raises several types, all meaning "this schema is not usable"
        raise ValueError(f"{where}: {clean_error(e)}") from None


def plan_tools(
    tools: Any,
    tool_choice: Any = None,
    chat_template: str | None = None,
    model_type: str | None = None,
    parallel_tool_calls: bool = True,
    family: str | None = None,
) -> ToolPlan:
    checked = validate_tools(tools)
    choice, forced = _read_tool_choice(tool_choice, checked)
    if not checked or choice == "none":
        return ToolPlan(tools=checked, choice=choice)
    parser = get_tool_parser(family or tool_family(chat_template, model_type))
    plan = ToolPlan(tools=checked, choice=choice, forced_name=forced, parser=parser)
    if parser.needs_special_tokens:
        plan.skip_special_tokens = False
    if choice in ("required", "named"):
        tag = parser.structural_tag(checked, forced, parallel=parallel_tool_calls)
        plan.structured_outputs = StructuredOutputsParams(structural_tag=json.dumps(tag))
    return plan


def _read_tool_choice(tool_choice: Any, tools: list[dict[str, Any]]) -> tuple[str, str | None]:
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ValueError(
                f'tool_choice: must be "none", "auto", "required" or a function, got {tool_choice!r}'
            )
        if tool_choice == "required" and not tools:
            raise ValueError('tool_choice: "required" needs at least one tool in tools')
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise ValueError("tool_choice.function.name: is required")
        if name not in {t["function"]["name"] for t in tools}:
            raise ValueError(f"tool_choice.function.name: no tool named {name!r} in tools")
        return "named", name
    raise ValueError(
        'tool_choice: must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}'
    )
