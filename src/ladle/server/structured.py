"""Structured output and tool calling for both APIs: reading the request fields (errors are 400s naming the
field), compiling the grammar off the event loop before the request is queued, and turning the model's
reply into tool calls (whole, or streamed as OpenAI deltas)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from ladle.models_hub.manager import LoadedModel
from ladle.sampling_params import SamplingParams, StructuredOutputsParams
from ladle.server.errors import bad_request
from ladle.structured.requests import from_ollama_format, from_openai_request
from ladle.tools import ToolCall, ToolCallStream, ToolPlan, plan_tools


def _field(message: str) -> str:
    return message.split(":", 1)[0].strip()


def _bad(exc: ValueError) -> Exception:
    return bad_request(str(exc), _field(str(exc)))


def openai_constraint(body: dict[str, Any]) -> StructuredOutputsParams | None:
    try:
        return from_openai_request(body)
    except ValueError as exc:
        raise _bad(exc) from None


def ollama_constraint(format: Any) -> StructuredOutputsParams | None:
    try:
        return from_ollama_format(format)
    except ValueError as exc:
        raise _bad(exc) from None


def tool_plan(
    model: LoadedModel, tools: Any, tool_choice: Any, parallel_tool_calls: bool | None = None
) -> ToolPlan:
    try:
        return plan_tools(
            tools,
            tool_choice,
            chat_template=model.chat_template,
            model_type=model.engine.engine.arch.architecture,
            parallel_tool_calls=parallel_tool_calls is not False,
        )
    except ValueError as exc:
        raise _bad(exc) from None


def constrain(
    params: SamplingParams,
    spec: StructuredOutputsParams | None,
    plan: ToolPlan | None,
    source: str = "response_format",
) -> SamplingParams:
    """`params` with the request's grammar: the response format's, or the one enforcing tool_choice."""
    changes: dict[str, Any] = {}
    if plan is not None and plan.structured_outputs is not None:
        if spec is not None:
            raise bad_request(f"{source}: cannot be combined with tool_choice {plan.choice!r}", source)
        spec = plan.structured_outputs
    if spec is not None:
        changes["structured_outputs"] = spec
    if plan is not None and plan.parser is not None and plan.skip_special_tokens is not None:
        changes["skip_special_tokens"] = plan.skip_special_tokens
    return params.clone(**changes) if changes else params


async def precompile(model: LoadedModel, params: SamplingParams, source: str) -> None:
    """Compile (and cache) the grammar on a worker thread, so the engine loop only finds it in the cache."""
    if params.structured_outputs is None:
        return
    engine = model.engine.engine
    try:
        await asyncio.to_thread(engine.structured.admit, params)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("structured_outputs.") and source != "structured_outputs":
            message = f"{source}: {message.split(':', 1)[1].strip()}"
        raise bad_request(message, _field(message)) from None


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tool calls as chat templates expect them: arguments as objects, not JSON text (as vLLM)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls and isinstance(calls, list):
            message = dict(message)
            fixed = []
            for call in calls:
                if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
                    fixed.append(call)  # left as sent; a template that can't render it answers 400
                    continue
                call = dict(call)
                function = dict(call.get("function") or {})
                if isinstance(function.get("arguments"), str):
                    try:
                        function["arguments"] = json.loads(function["arguments"])
                    except json.JSONDecodeError:
                        pass
                call["function"] = function
                fixed.append(call)
            message["tool_calls"] = fixed
        out.append(message)
    return out


def parse_reply(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a finished reply."""
    if plan is None or plan.parser is None:
        return text, []
    parsed = plan.parser.parse(text)
    return parsed.content, parsed.tool_calls


@dataclass
class ReplyStream:
    """One choice's streamed reply under tools: text deltas in, content and tool-call deltas out."""

    plan: ToolPlan | None
    text: str = ""
    stream: ToolCallStream | None = field(default=None)

    def __post_init__(self) -> None:
        if self.plan is not None and self.plan.parser is not None:
            self.stream = ToolCallStream(self.plan.parser)

    def feed(self, delta: str, final: bool) -> tuple[str, list[dict[str, Any]]]:
        self.text += delta
        if self.stream is None:
            return delta, []
        return self.stream.feed(self.text, final=final)

    @property
    def calls(self) -> list[ToolCall]:
        return self.stream.calls if self.stream is not None else []
