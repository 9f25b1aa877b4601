"""Llama 3.1 / 3.2 / 3.3 JSON tool calls (Meta's prompt format documentation): the reply is
`{"name": ..., "parameters": {...}}` (Llama 3.2 may write "arguments"), optionally after <|python_tag|>;
several calls are separated by "; "."""

from __future__ import annotations

import re
from typing import Any

from ladle.tools.base import (
    Scan,
    ToolParser,
    call_tag,
    calls_format,
    name_literal,
    scan_objects,
    select_tools,
)

PYTHON_TAG = "<|python_tag|>"
# A reply that opens (after whitespace / the python tag) with a JSON object whose first key is "name".
_START = re.compile(r'\s*(?:<\|python_tag\|>)?\s*\{\s*"name"')
_MAYBE = re.compile(r'\s*(?:<\|python_tag\|>)?\s*(\{\s*("n?a?m?e?)?)?$')


class Llama3JsonToolParser(ToolParser):
    family = "llama3_json"
    markers = (PYTHON_TAG,)

    def scan(self, text: str) -> Scan:
        m = _START.match(text)
        if m is None:
            tag = text.find(PYTHON_TAG)  # a call after some prose
            if tag >= 0 and text.find("{", tag) >= 0:
                return Scan(text[:tag], scan_objects(text, text.find("{", tag)), tag)
            # The reply so far might still become a call: hold it all back while it looks like one.
            safe = 0 if (_MAYBE.fullmatch(text) or PYTHON_TAG.startswith(text.strip())) else len(text)
            return Scan(text, [], safe)
        start = text.find("{", m.start())
        return Scan("", scan_objects(text, start), 0)

    def structural_tag(self, tools: list[dict[str, Any]], forced: str | None, parallel: bool = True) -> dict:
        tags = [
            call_tag(f'{{"name": "{name_literal(t["function"]["name"])}", "parameters": ', t, "}")
            for t in select_tools(tools, forced)
        ]
        return {"type": "structural_tag", "format": calls_format(tags, "; ", forced is not None, parallel)}
