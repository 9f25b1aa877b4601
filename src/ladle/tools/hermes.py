"""Qwen 2.5 / Qwen 3 / Hermes: each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
(Qwen's function-calling documentation; the Hermes-2-Pro chat template)."""

from __future__ import annotations

from typing import Any

from ladle.tools.base import (
    PartialCall,
    Scan,
    ToolParser,
    call_tag,
    calls_format,
    held_back,
    name_literal,
    scan_call_object,
    select_tools,
)

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    family = "hermes"
    markers = (START,)

    def scan(self, text: str) -> Scan:
        first = text.find(START)
        if first < 0:
            return Scan(text, [], len(text) - held_back(text, self.markers))
        calls: list[PartialCall] = []
        pos = first
        while pos >= 0:
            brace = text.find("{", pos + len(START))
            if brace < 0:
                break
            call, end = scan_call_object(text, brace)
            if call is not None:
                calls.append(call)
            if end is None:
                break
            pos = text.find(START, end)
        return Scan(text[:first], calls, first)

    def structural_tag(self, tools: list[dict[str, Any]], forced: str | None, parallel: bool = True) -> dict:
        tags = [
            call_tag(
                f'{START}\n{{"name": "{name_literal(t["function"]["name"])}", "arguments": ', t, "}\n" + END
            )
            for t in select_tools(tools, forced)
        ]
        return {"type": "structural_tag", "format": calls_format(tags, "\n", forced is not None, parallel)}
