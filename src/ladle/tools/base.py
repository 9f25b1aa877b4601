"""What every tool-call parser shares: the ToolCall type, an incremental scanner for JSON call objects,
and the parse / stream logic that a family specializes by saying where its tool-call region starts and
how the calls inside it are laid out."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's function.arguments)
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def to_ollama(self) -> dict[str, Any]:
        try:
            arguments = json.loads(self.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {}
        return {"function": {"name": self.name, "arguments": arguments}}


@dataclass
class ParsedOutput:
    content: str | None  # the text that is not a tool call (None when there is none)
    tool_calls: list[ToolCall]


@dataclass
class PartialCall:
    """A call seen so far: its name once complete, its arguments text so far (a prefix of the final one)."""

    name: str | None
    arguments: str
    done: bool
    # True when `arguments` is final only once done (e.g. Python-style calls converted to JSON at the end).
    whole_only: bool = False


@dataclass
class Scan:
    content: str  # text before the tool-call region (all of it when there is none)
    calls: list[PartialCall]
    # Streaming: how much of `content` is safe to send (the rest might still turn into a call marker).
    safe_content_len: int


def json_value_end(text: str, start: int) -> int | None:
    """Index just past the JSON value starting at text[start] (after whitespace), None if incomplete."""
    i, n = start, len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    if i >= n:
        return None
    depth, in_string, escaped = 0, False, False
    if text[i] not in '{["':  # a scalar: runs to the next delimiter
        m = re.compile(r"[^,}\]\s]*").match(text, i)
        end = m.end()
        return end if end < n else None
    while i < n:
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return i + 1
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


_ARGUMENT_KEYS = ("arguments", "parameters")


def scan_call_object(text: str, start: int) -> tuple[PartialCall | None, int | None]:
    """Read a call object {"name": ..., "arguments"|"parameters": {...}} starting at text[start] ('{').

    Returns the call so far (None until something is known) and the index past the object (None while
    it is incomplete). Keys may come in any order; arguments stream only when the name came first.
    """
    n = len(text)
    i = start + 1
    values: dict[str, tuple[int, int | None]] = {}
    order: list[str] = []
    end: int | None = None
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            break
        if text[i] == "}":
            end = i + 1
            break
        key_end = json_value_end(text, i)
        if key_end is None or text[i] != '"':
            break
        key = json.loads(text[i:key_end])
        i = key_end
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n or text[i] != ":":
            break
        i += 1
        while i < n and text[i] in " \t\r\n":
            i += 1
        value_end = json_value_end(text, i)
        values[key] = (i, value_end)
        order.append(key)
        if value_end is None:
            break
        i = value_end
    name = None
    if "name" in values and values["name"][1] is not None:
        start_name, end_name = values["name"]
        try:
            name = json.loads(text[start_name:end_name])
        except json.JSONDecodeError:
            name = None
    arg_key = next((k for k in _ARGUMENT_KEYS if k in values), None)
    arguments = ""
    if arg_key is not None:
        a, b = values[arg_key]
        name_first = "name" in order and order.index("name") < order.index(arg_key)
        if b is not None:
            arguments = text[a:b]
        elif name_first and name is not None:
            arguments = text[a:].rstrip()
    if name is None and not arguments:
        return None, end
    if end is not None:
        arguments = _normalize_arguments(arguments)
    return PartialCall(name=name, arguments=arguments, done=end is not None), end


def _normalize_arguments(arguments: str) -> str:
    """Final arguments: a JSON object's text. A JSON string holding JSON is unwrapped; missing -> {}."""
    if not arguments.strip():
        return "{}"
    if arguments.lstrip().startswith('"'):
        try:
            inner = json.loads(arguments)
            json.loads(inner)
            return inner
        except (json.JSONDecodeError, TypeError):
            return arguments
    return arguments


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of text's longest suffix that is a proper prefix of a marker (might become the marker)."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:k]):
                best = max(best, k)
                break
    return best


class ToolParser:
    """One model family's tool-call syntax. Subclasses set `family` and implement `scan`."""

    family = ""
    # Strings that open a tool-call region; used to hold back text that might become one while streaming.
    markers: tuple[str, ...] = ()
    # Whether the region's marker is a special token (it must then be kept in the decoded text).
    needs_special_tokens = False

    def scan(self, text: str) -> Scan:
        raise NotImplementedError

    def parse(self, text: str) -> ParsedOutput:
        """The final output: content and complete tool calls (a call cut short is dropped)."""
        scan = self.scan(text)
        calls = [ToolCall(c.name, c.arguments) for c in scan.calls if c.done and c.name]
        content = scan.content if calls else text
        return ParsedOutput(content=(content.strip() or None) if calls else content, tool_calls=calls)

    def structural_tag(self, tools: list[dict[str, Any]], forced: str | None, parallel: bool = True) -> dict:
        """An xgrammar structural tag admitting only calls of `tools` in this family's syntax: one call of
        `forced` when it is set, else at least one call of any of them (tool_choice "required")."""
        raise NotImplementedError


def scan_objects(text: str, pos: int, skip: str = " \t\r\n;,") -> list[PartialCall]:
    """Call objects one after another from text[pos], separated by any of `skip`."""
    calls: list[PartialCall] = []
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in skip:
            pos += 1
        if pos >= n or text[pos] != "{":
            break
        call, end = scan_call_object(text, pos)
        if call is not None:
            calls.append(call)
        if end is None:
            break
        pos = end
    return calls


# -- grammars ----------------------------------------------------------------------------------------------

# Longest whitespace run inside arguments: calls are written on one line in every family's examples, and
# a loose bound lets weak models pad them with whitespace for hundreds of tokens.
_ARGS_WHITESPACE = 4


def tool_schema(tool: dict[str, Any]) -> dict[str, Any]:
    from ladle.structured.compiler import patch_json_schema

    schema = tool["function"].get("parameters") or {"type": "object"}
    return patch_json_schema(schema)


def call_tag(begin: str, tool: dict[str, Any], end: str) -> dict[str, Any]:
    """`begin` + the tool's arguments (a JSON object valid under its parameters schema) + `end`."""
    return {
        "type": "tag",
        "begin": begin,
        "content": {
            "type": "json_schema",
            "json_schema": tool_schema(tool),
            "max_whitespace_cnt": _ARGS_WHITESPACE,
        },
        "end": end,
    }


def calls_format(tags: list[dict[str, Any]], separator: str, forced: bool, parallel: bool) -> dict[str, Any]:
    """One tag (forced), or one or more of the tags joined by `separator`."""
    if forced:
        return tags[0]
    return {
        "type": "tags_with_separator",
        "tags": tags,
        "separator": separator,
        "at_least_one": True,
        "stop_after_first": not parallel,
    }


def select_tools(tools: list[dict[str, Any]], forced: str | None) -> list[dict[str, Any]]:
    if forced is None:
        return tools
    chosen = [t for t in tools if t["function"]["name"] == forced]
    if not chosen:
        raise ValueError(f"tool_choice: no tool named {forced!r} in tools")
    return chosen[:1]


def name_literal(name: str) -> str:
    """The name as it appears inside a JSON string (without the quotes)."""
    return json.dumps(name)[1:-1]
