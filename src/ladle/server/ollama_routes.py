"""Ollama-compatible generation routes: /api/generate and /api/chat (NDJSON streaming by default), plus
/api/version, and /api/embed's answer for the text-generation models ladle serves. Durations are in
nanoseconds, as Ollama reports them."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ladle.models_hub.keep_alive import parse_keep_alive
from ladle.models_hub.manager import LoadedModel
from ladle.models_hub.model_options import fill_options, template_as_jinja
from ladle.outputs import RequestOutput
from ladle.server import prompts
from ladle.server import structured as so
from ladle.server.errors import ApiError, bad_request
from ladle.server.protocol_ollama import ChatRequest, EmbedRequest, GenerateRequest, Options
from ladle.server.state import server_state
from ladle.server.streams import cancel_on_disconnect, ndjson, prime
from ladle.server.thinking import ThinkingSplitter, split_reply
from ladle.version import __version__

router = APIRouter(tags=["ollama"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class _Timing:
    """Wall-clock marks of one request, for Ollama's duration fields."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.load_seconds = 0.0

    def summary(self, out: RequestOutput | None) -> dict[str, Any]:
        total = time.monotonic() - self.start
        result: dict[str, Any] = {"total_duration": _ns(total), "load_duration": _ns(self.load_seconds)}
        if out is None:
            return result
        m = out.metrics
        completion = out.outputs[0]
        prompt_eval = eval_time = 0.0
        if m is not None and m.first_token_time is not None:
            prompt_eval = m.first_token_time - (m.first_scheduled_time or m.arrival_time)
            eval_time = (m.finished_time or time.monotonic()) - m.first_token_time
        result.update(
            {
                # Like Ollama: prompt tokens actually evaluated (a prefix-cache hit is not counted).
                "prompt_eval_count": max(1, len(out.prompt_token_ids) - out.num_cached_tokens),
                "prompt_eval_duration": _ns(prompt_eval),
                "eval_count": len(completion.token_ids),
                "eval_duration": _ns(eval_time),
            }
        )
        return result


def _done_reason(reason: str | None) -> str:
    return {"length": "length", "stop": "stop"}.get(reason or "", reason or "stop")


async def _model(request: Request, body: GenerateRequest | ChatRequest, timing: _Timing) -> LoadedModel:
    manager = server_state(request).manager
    start = time.monotonic()
    model = await manager.get(body.model, body.keep_alive)
    timing.load_seconds = time.monotonic() - start
    # The store model's PARAMETERs are defaults under the request's options (models_hub/model_options.py).
    body.options = fill_options(body.options or Options(), model.model_params)
    return model


def _unload_only(
    request: Request, body: GenerateRequest | ChatRequest, extra: dict[str, Any]
) -> Response | None:
    """keep_alive 0 with nothing to answer (`ladle stop`, Ollama's idiom): unload now, never load."""
    if parse_keep_alive(body.keep_alive, default=-1.0) != 0:
        return None
    server_state(request).manager.expire(body.model)
    return JSONResponse(
        {"model": body.model, "created_at": _now(), **extra, "done": True, "done_reason": "unload"}
    )


async def _run(
    request: Request,
    model: LoadedModel,
    body: GenerateRequest | ChatRequest,
    text: str | None,
    ids: list[int],
    shape,
    timing: _Timing,
    plan=None,
    thinking: bool = False,
) -> Response:
    """Starts the engine request and answers in NDJSON (stream) or one object; `shape(text, out, final,
    tool_calls, thinking)` builds one response object in the route's own format. `thinking`: the reply is
    sent as its thinking and its answer apart (think: true)."""
    if not ids:
        raise bad_request("prompt: is empty after templating", "prompt")
    if len(ids) >= model.max_model_len:
        raise bad_request(
            f"prompt: {len(ids)} tokens is too long; this model's context length is {model.max_model_len}",
            "prompt",
        )
    prompts.check_token_ids(model, ids, "context")
    defaults = model.default_sampling_values()
    params = body.sampling_params(defaults, len(ids), model.max_model_len - len(ids))
    spec = so.ollama_constraint(body.format)
    params = so.constrain(params, spec, plan, "format")
    await so.precompile(model, params, "format" if spec is not None else "tools")
    stream = model.engine.generate(
        {"prompt": text, "prompt_token_ids": ids}, params, request_id=f"ollama-{uuid.uuid4().hex}"
    )
    primed = await cancel_on_disconnect(request, prime(stream))
    if primed is None:
        return Response(status_code=499)
    _, outputs = primed
    if body.stream is not False:
        return StreamingResponse(
            _stream(outputs, shape, timing, plan, thinking), media_type="application/x-ndjson"
        )
    result = await cancel_on_disconnect(request, _full(outputs, shape, timing, plan, thinking))
    return JSONResponse(result) if result is not None else Response(status_code=499)


async def _stream(
    outputs: AsyncIterator[RequestOutput], shape, timing: _Timing, plan=None, thinking: bool = False
) -> AsyncIterator[str]:
    # Under tools, text that may be a call is held back; calls go out whole (as Ollama sends them). Under
    # think, the thinking goes out as it comes, in its own field, before the answer.
    reply = so.ReplyStream(plan)
    splitter = ThinkingSplitter() if thinking else None
    sent_calls = 0
    try:
        last = None
        async for out in outputs:
            last = out
            text = out.deltas[0][0] if out.deltas else ""
            thought = None
            if splitter is not None:
                thought, text = splitter.feed(text, out.finished)
            content, _ = reply.feed(text, out.finished)
            new_calls = reply.calls[sent_calls:]
            sent_calls = len(reply.calls)
            if new_calls and not out.finished:
                yield ndjson(shape(content, out, False, [c.to_ollama() for c in new_calls], thought))
            elif (content or thought) and not out.finished:
                yield ndjson(shape(content, out, False, None, thought))
        if last is None or not last.finished:
            raise ApiError(503, "the request was aborted by the server before it finished")
        calls = [c.to_ollama() for c in new_calls] if new_calls else None
        yield ndjson({**shape(content, last, True, calls, thought), **timing.summary(last)})
    except Exception as exc:  # noqa: BLE001 - after the 200 is sent, an error can only be a line
        yield ndjson({"error": str(exc)})


async def _full(
    outputs: AsyncIterator[RequestOutput], shape, timing: _Timing, plan=None, thinking: bool = False
) -> dict[str, Any]:
    last = None
    async for out in outputs:
        last = out
    if last is None or not last.finished:
        raise ApiError(503, "the request was aborted by the server before it finished")
    text, thought = last.outputs[0].text, None
    if thinking:
        thought, text = split_reply(text)
    content, calls = so.parse_reply(plan, text)
    tool_calls = [c.to_ollama() for c in calls] or None
    return {**shape(content or "", last, True, tool_calls, thought), **timing.summary(last)}


def _load_only(model_name: str, timing: _Timing, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model_name,
        "created_at": _now(),
        **extra,
        "done": True,
        "done_reason": "load",
        **timing.summary(None),
    }


# -- /api/generate -----------------------------------------------------------------------------------------
def _request_template(template: str | None) -> str | None:
    """A request's `template` as a Jinja chat template: Ollama's Go syntax is translated as a store model's
    TEMPLATE is (a Jinja one is used as it is). None: the model's own."""
    if not template:
        return None
    jinja = template_as_jinja(template)
    if jinja is None:
        raise bad_request(
            "template: only {{ .System }}, {{ .Prompt }}, {{ .Response }} and {{ if }}/{{ else }}/{{ end }} "
            "are supported in an Ollama template (or send a Jinja chat template)",
            "template",
        )
    return jinja


@router.post("/api/generate")
async def generate(body: GenerateRequest, request: Request) -> Response:
    body.check_unsupported()
    timing = _Timing()
    if not body.prompt and not body.context and (done := _unload_only(request, body, {"response": ""})):
        return done
    model = await _model(request, body, timing)
    if body.system is None:
        body.system = model.default_system
    if not body.prompt and not body.context:
        # Ollama's idiom for "load this model now".
        return JSONResponse(_load_only(model.name, timing, {"response": ""}))
    prompt = body.prompt or ""
    thinking = False
    if body.raw or (not model.chat_template and not body.template):
        text = (body.system + "\n\n" + prompt) if body.system and not body.raw else prompt
        ids = await prompts.encode(model, text, add_special_tokens=not body.context) if text else []
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": prompt}
        ]
        template = _request_template(body.template)
        param = "template" if template else "prompt"
        text, ids = await prompts.render_chat(
            model, messages, chat_template=template, param=param, template_param=param,
            template_kwargs=body.thinking_kwargs(template or model.chat_template),
        )  # fmt: skip
        thinking = body.wants_thinking(template or model.chat_template)
    ids = list(body.context or []) + ids

    def shape(text: str, out: RequestOutput, final: bool, tool_calls=None, thought=None) -> dict[str, Any]:
        data: dict[str, Any] = {"model": model.name, "created_at": _now(), "response": text, "done": final}
        if thought:
            data["thinking"] = thought
        if final:
            completion = out.outputs[0]
            data["done_reason"] = _done_reason(completion.finish_reason)
            data["context"] = list(out.prompt_token_ids) + list(completion.token_ids)
        return data

    return await _run(request, model, body, text, ids, shape, timing, thinking=thinking)


# -- /api/chat ---------------------------------------------------------------------------------------------
@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request) -> Response:
    body.check_unsupported()
    timing = _Timing()
    if not body.messages and (
        done := _unload_only(request, body, {"message": {"role": "assistant", "content": ""}})
    ):
        return done
    model = await _model(request, body, timing)
    messages = body.template_messages()
    if messages:
        messages = model.with_model_messages(messages)
    if not messages:
        return JSONResponse(_load_only(model.name, timing, {"message": {"role": "assistant", "content": ""}}))
    plan = so.tool_plan(model, body.tools, None)
    messages = so.template_messages(messages)
    # As Ollama: a conversation that ends with an assistant message has the model write on in that message
    # (a reply begun for it), rather than start another turn after it.
    last = messages[-1]
    prefill = last.get("role") == "assistant" and bool(last.get("content")) and not last.get("tool_calls")
    text, ids = await prompts.render_chat(
        model, messages, tools=plan.tools, continue_final_message=prefill,
        template_kwargs=body.thinking_kwargs(model.chat_template),
    )  # fmt: skip

    def shape(text: str, out: RequestOutput, final: bool, tool_calls=None, thought=None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thought:
            message["thinking"] = thought
        if tool_calls:
            message["tool_calls"] = tool_calls
        data: dict[str, Any] = {"model": model.name, "created_at": _now(), "message": message, "done": final}
        if final:
            data["done_reason"] = _done_reason(out.outputs[0].finish_reason)
        return data

    return await _run(
        request, model, body, text, ids, shape, timing, plan, body.wants_thinking(model.chat_template)
    )


@router.post("/api/embed")
@router.post("/api/embeddings")
async def embed(body: EmbedRequest, request: Request) -> Response:
    """Every model ladle serves is a text-generation model (/api/show lists only "completion" among its
    capabilities), so, as Ollama answers for such a model, this is a 400 that says so; a name that is no
    model is a 404 first, as on every route."""
    try:
        model = await server_state(request).manager.get(body.model, body.keep_alive)
    except LookupError as exc:
        raise ApiError(404, str(exc)) from None
    raise bad_request(f'"{model.name}" does not support embeddings: it is a text-generation model', "model")


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
