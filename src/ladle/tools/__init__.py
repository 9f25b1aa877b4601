"""Tool calling: one parser per model family's syntax, the grammars that enforce tool_choice "required"
or a named function, and streaming of calls as OpenAI deltas.

base.py       ToolCall, the JSON call scanner, the ToolParser interface
hermes.py     Qwen 2.5/3, Hermes: <tool_call>{...}</tool_call>
llama3.py     Llama 3.x: {"name": ..., "parameters": ...}, optionally after <|python_tag|>
mistral.py    Mistral: [TOOL_CALLS][{...}, ...]
gemma.py      Gemma 3: ```tool_code blocks (Python calls or JSON calls)
registry.py   which family a model speaks (chat template, then architecture)
requests.py   tools / tool_choice validation -> ToolPlan (parser + enforcing grammar)
streaming.py  ToolCallStream: OpenAI tool_calls deltas that reassemble
"""

from ladle.tools.base import ParsedOutput, ToolCall, ToolParser
from ladle.tools.registry import get_tool_parser, tool_family
from ladle.tools.requests import ToolPlan, plan_tools, validate_tools
from ladle.tools.streaming import ToolCallStream

__all__ = [
    "ParsedOutput",
    "ToolCall",
    "ToolCallStream",
    "ToolParser",
    "ToolPlan",
    "get_tool_parser",
    "plan_tools",
    "tool_family",
    "validate_tools",
]
