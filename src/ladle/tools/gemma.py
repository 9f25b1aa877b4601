"""Gemma 3 has no tool tokens; Google's function-calling guide for Gemma has the model answer with a
```tool_code block. ladle reads, in that block or as the whole reply:

- Python calls, as in Google's guide: `get_weather(city="Paris")`, `[f(a=1), g(b="x")]`, `print(f(a=1))`;
- JSON calls, the guide's JSON variant: `{"name": "get_weather", "parameters": {"city": "Paris"}}`.

Enforced calls (tool_choice "required" or named) use the JSON variant inside ```tool_code ... ```, one
call per line, since JSON arguments can be held to the tool's schema exactly."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from ladle.tools.base import (
    PartialCall,
    Scan,
    ToolParser,
    call_tag,
    calls_format,
    held_back,
    name_literal,
    scan_objects,
    select_tools,
)

FENCE_OPEN, FENCE_CLOSE = "```tool_code", "```"
_JSON_START = re.compile(r'\s*\{\s*"name"')
_PY_START = re.compile(r"\s*\[?\s*[A-Za-z_][\w.]*\(")
_PY_PREFIX = re.compile(r"\s*\[?\s*[A-Za-z_]?[\w.]*")  # a reply so far that may still become a call


class GemmaToolParser(ToolParser):
    family = "gemma"
    markers = (FENCE_OPEN,)

    def scan(self, text: str) -> Scan:
        first = text.find(FENCE_OPEN)
        if first >= 0:
            body = first + len(FENCE_OPEN)
            close = text.find(FENCE_CLOSE, body)
            code = text[body:] if close < 0 else text[body:close]
            return Scan(text[:first], self._calls(code, done=close >= 0), first)
        if _JSON_START.match(text):
            return Scan("", scan_objects(text, text.find("{")), 0)
        if _PY_START.match(text):
            calls = _python_calls(text) if text.rstrip().endswith((")", ")]")) else []
            return Scan("" if calls else text, calls, 0)  # hold a call-shaped reply until it parses
        stripped = text.strip()
        maybe_call = _PY_PREFIX.fullmatch(text) or (
            stripped[:1] in ("{", "`") and len(stripped) < len(FENCE_OPEN)
        )
        safe = 0 if maybe_call else len(text) - held_back(text, self.markers)
        return Scan(text, [], safe)

    def _calls(self, code: str, done: bool) -> list[PartialCall]:
        if code.lstrip().startswith("{"):
            return scan_objects(code, code.find("{"))
        if not done:  # Python arguments become JSON only once the block is complete
            return []
        return _python_calls(code)

    def structural_tag(self, tools: list[dict[str, Any]], forced: str | None, parallel: bool = True) -> dict:
        tags = [
            call_tag(f'{{"name": "{name_literal(t["function"]["name"])}", "parameters": ', t, "}")
            for t in select_tools(tools, forced)
        ]
        calls = calls_format(tags, "\n", forced is not None, parallel)
        return {
            "type": "structural_tag",
            "format": {
                "type": "tag",
                "begin": FENCE_OPEN + "\n",
                "content": calls,
                "end": "\n" + FENCE_CLOSE,
            },
        }


def _python_calls(code: str) -> list[PartialCall]:
    """`f(a=1)`, `[f(a=1), g()]`, `print(f(a=1))`, one per line or in a list -> calls (JSON arguments)."""
    try:
        tree = ast.parse(code.strip())
    except SyntaxError:
        return []
    calls: list[PartialCall] = []
    for statement in tree.body:
        if not isinstance(statement, ast.Expr):
            return []
        nodes = (
            statement.value.elts if isinstance(statement.value, (ast.List, ast.Tuple)) else [statement.value]
        )
        for node in nodes:
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
                and node.args
            ):
                node = node.args[0]
            if not isinstance(node, ast.Call) or node.args:
                return []
            try:
                arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
            except ValueError:
                return []
            calls.append(
                PartialCall(ast.unparse(node.func), json.dumps(arguments), done=True, whole_only=True)
            )
    return calls
