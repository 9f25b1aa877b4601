"""Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (v3 tokenizers, Mistral 7B v0.3,
Mistral Nemo/Small), and the v11+ form `[TOOL_CALLS]name[ARGS]{...}` when parsing. [TOOL_CALLS] is a
special token, so requests keep special tokens in the text."""

from __future__ import annotations

import json
from typing import Any

from ladle.tools.base import (
    PartialCall,
    Scan,
    ToolParser,
    call_tag,
    calls_format,
    held_back,
    json_value_end,
    name_literal,
    scan_objects,
    select_tools,
)

TOOL_CALLS, ARGS = "[TOOL_CALLS]", "[ARGS]"


class MistralToolParser(ToolParser):
    family = "mistral"
    markers = (TOOL_CALLS,)
    needs_special_tokens = True

    def scan(self, text: str) -> Scan:
        first = text.find(TOOL_CALLS)
        if first < 0:
            return Scan(text, [], len(text) - held_back(text, self.markers))
        calls: list[PartialCall] = []
        pos = first
        while pos >= 0:
            body = pos + len(TOOL_CALLS)
            rest = text[body:].lstrip()
            if rest.startswith("[") or rest.startswith("{"):
                calls += scan_objects(text, text.find(rest[0], body) + (rest[0] == "["), skip=" \t\r\n,")
            else:
                calls += self._name_args(text, body)
            pos = text.find(TOOL_CALLS, body)
        return Scan(text[:first], calls, first)

    @staticmethod
    def _name_args(text: str, body: str | int) -> list[PartialCall]:
        args_at = text.find(ARGS, body)
        if args_at < 0:
            return []
        name = text[body:args_at].strip()
        start = args_at + len(ARGS)
        end = json_value_end(text, start)
        arguments = text[start:end].strip() if end is not None else text[start:].strip()
        if end is not None:
            try:
                json.loads(arguments)
            except json.JSONDecodeError:
                return []
        return [PartialCall(name, arguments, done=end is not None)]

    def structural_tag(self, tools: list[dict[str, Any]], forced: str | None, parallel: bool = True) -> dict:
        tags = [
            call_tag(f'{{"name": "{name_literal(t["function"]["name"])}", "arguments": ', t, "}")
            for t in select_tools(tools, forced)
        ]
        calls = calls_format(tags, ", ", forced is not None, parallel)
        return {
            "type": "structural_tag",
            "format": {"type": "tag", "begin": TOOL_CALLS + "[", "content": calls, "end": "]"},
        }
