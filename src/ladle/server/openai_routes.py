"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions (SSE when streaming), /v1/models."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ladle.models_hub.manager import LoadedModel
from ladle.outputs import CompletionOutput, Logprob, RequestOutput
from ladle.server import prompts
from ladle.server import structured as so
from ladle.server.errors import ApiError, error_body
from ladle.server.protocol_openai import ChatCompletionRequest, CompletionRequest
from ladle.server.served_models import ServedModel, find_served, served_models
from ladle.server.state import server_state
from ladle.server.streams import cancel_on_disconnect, merge, prime, sse
from ladle.store import ModelInfo
from ladle.version import __version__

router = APIRouter(tags=["openai"])

SYSTEM_FINGERPRINT = f"fp_ladle_{__version__}"
# JSON has no -inf; like vLLM, an impossible token's logprob is reported as this.
_MIN_LOGPROB = -9999.0


def _logprob(value: float) -> float:
    return max(value, _MIN_LOGPROB)


def _top(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    ranked = [(t, lp) for t, lp in entry.items() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda item: item[1].rank or 0)[:k]


def _token_text(lp: Logprob) -> str:
    return lp.decoded_token if lp.decoded_token is not None else ""


def chat_logprobs(token_ids: list[int], entries: list[dict[int, Logprob]], k: int) -> dict[str, Any]:
    content = []
    for token, entry in zip(token_ids, entries):
        chosen = entry[token]
        text = _token_text(chosen)
        content.append(
            {
                "token": text,
                "logprob": _logprob(chosen.logprob),
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {
                        "token": _token_text(lp),
                        "logprob": _logprob(lp.logprob),
                        "bytes": list(_token_text(lp).encode("utf-8")),
                    }
                    for _, lp in _top(entry, k)
                ],
            }
        )
    return {"content": content}


def completion_logprobs(
    token_ids: list[int], entries: list[dict[int, Logprob] | None], k: int, offset: int, first_text: str = ""
) -> dict[str, Any]:
    """OpenAI's legacy completions shape: parallel lists, text_offset counted from `offset`. An entry of
    None (an echoed prompt's first token: nothing predicts it) has a null logprob and null top_logprobs;
    its token's text is first_text."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token, entry in zip(token_ids, entries):
        if entry is None:
            text, value, top = first_text, None, None
        else:
            chosen = entry[token]
            text, value = _token_text(chosen), _logprob(chosen.logprob)
            top = {_token_text(lp): _logprob(lp.logprob) for _, lp in _top(entry, k)} if k else None
        tokens.append(text)
        token_logprobs.append(value)
        tops.append(top)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def _echo_text(model: LoadedModel, prompt: tuple[str | None, list[int]]) -> str:
    """The prompt as echo returns it: its text, or a token-id prompt decoded (as vLLM does)."""
    text, ids = prompt
    if text is not None:
        return text
    return model.tokenizer.decode(ids, skip_special_tokens=True) if model.tokenizer else ""


def _echo_logprobs(
    model: LoadedModel, ids: list[int], out: RequestOutput, k: int, completion: dict[str, Any] | None
) -> dict[str, Any]:
    """echo with logprobs: the prompt's tokens first (its first one without a logprob), then the
    completion's (already in `completion`, offsets counted from 0). As in vLLM, text_offset adds up the
    tokens' texts all along, a BOS's text included."""
    entries = out.prompt_logprobs or [None] * len(ids)
    first = model.tokenizer.decode(ids[:1], skip_special_tokens=False) if model.tokenizer else ""
    echoed = completion_logprobs(ids, entries, k, 0, first_text=first)
    if completion is not None:
        shift = sum(len(t) for t in echoed["tokens"])
        for key in ("tokens", "token_logprobs", "top_logprobs"):
            echoed[key] += completion[key]
        echoed["text_offset"] += [o + shift for o in completion["text_offset"]]
    return echoed


def prompt_logprobs_json(entries: list[dict[int, Logprob] | None] | None) -> list[Any] | None:
    """vLLM's `prompt_logprobs` of a choice: per prompt token, None (the first) or {token id: {logprob, rank,
    decoded_token}} for the token and the top ones."""
    if entries is None:
        return None
    return [
        None
        if entry is None
        else {
            str(tid): {"logprob": _logprob(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tid, lp in entry.items()
        }
        for entry in entries
    ]


def _delta_entries(c: CompletionOutput, ids: list[int]) -> list[dict[int, Logprob]]:
    # The engine's logprobs list keeps growing after this output was made (token_ids is a copy), so the
    # delta's entries are found by position, not from the end.
    start = len(c.token_ids) - len(ids)
    return (c.logprobs or [])[start : start + len(ids)]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error_event(path: str, exc: BaseException) -> str:
    status = exc.status if isinstance(exc, ApiError) else (400 if isinstance(exc, ValueError) else 500)
    return sse(error_body(path, status, str(exc)))


async def _start(
    model: LoadedModel, inputs: list[tuple[str | None, list[int]]], params_list, prefix: str
) -> AsyncIterator[tuple[int, RequestOutput]]:
    engine = model.engine
    streams = [
        engine.generate({"prompt": text, "prompt_token_ids": ids}, params, request_id=f"{prefix}-{i}")
        for i, ((text, ids), params) in enumerate(zip(inputs, params_list))
    ]
    return merge(streams)


# -- /v1/completions ---------------------------------------------------------------------------------------
@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    state = server_state(request)
    body.check_unsupported()
    model = await state.manager.get(body.model)
    inputs: list[tuple[str | None, list[int]]] = []
    for p in body.prompts():
        if isinstance(p, str):
            inputs.append((p, await prompts.encode(model, p, body.add_special_tokens)))
        else:
            prompts.check_token_ids(model, p)
            inputs.append((None, p))
    defaults = model.default_sampling_values()
    params_list = []
    for _, ids in inputs:
        max_tokens = prompts.check_context(model, len(ids), body.max_tokens or defaults.get("max_tokens"))
        params = body.sampling_params(defaults, max_tokens, body.logprobs)
        params.prompt_logprobs = body.engine_prompt_logprobs()
        params_list.append(params)
    spec = so.openai_constraint(body.constraint_fields())
    if spec is not None:
        params_list = [so.constrain(p, spec, None) for p in params_list]
        await so.precompile(model, params_list[0], body.constraint_source())
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    merged = await _start(model, inputs, params_list, request_id)
    primed = await cancel_on_disconnect(request, prime(merged))
    if primed is None:
        return Response(status_code=499)
    first, outputs = primed
    if body.stream:
        return StreamingResponse(
            _completion_stream(
                body,
                model,
                request_id,
                created,
                inputs,
                outputs,
                request.url.path,
                model.tokenizer is None,
            ),
            media_type="text/event-stream",
        )
    result = await cancel_on_disconnect(
        request, _completion_full(body, model, request_id, created, inputs, outputs)
    )
    return JSONResponse(result) if result is not None else Response(status_code=499)


async def _collect(outputs: AsyncIterator[tuple[int, RequestOutput]], count: int) -> list[RequestOutput]:
    finals: list[RequestOutput | None] = [None] * count
    async for i, out in outputs:
        if out.finished:
            finals[i] = out
    if any(f is None for f in finals):
        raise ApiError(503, "the request was aborted by the server before it finished")
    return finals  # type: ignore[return-value]


async def _completion_full(body, model, request_id, created, inputs, outputs) -> dict[str, Any]:
    finals = await _collect(outputs, len(inputs))
    choices, completion_tokens = [], 0
    for i, out in enumerate(finals):
        prompt_text = _echo_text(model, inputs[i])
        for c in out.outputs:
            completion_tokens += len(c.token_ids)
            logprobs = None
            if body.logprobs is not None and c.logprobs is not None:
                logprobs = completion_logprobs(c.token_ids, c.logprobs, body.logprobs, 0)
            if body.echo and body.logprobs is not None:
                logprobs = _echo_logprobs(model, inputs[i][1], out, body.logprobs, logprobs)
            choice = {
                "index": i * body.n + c.index,
                "text": (prompt_text if body.echo else "") + c.text,
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
            if body.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
            choices.append(choice)
    prompt_tokens = sum(len(ids) for _, ids in inputs)
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }


async def _completion_stream(
    body, model, request_id, created, inputs, outputs, path, no_text: bool
) -> AsyncIterator[str]:
    # A model served without a tokenizer (dummy-weight benchmarks) makes no text: send each step's
    # tokens anyway, so streaming clients still see every step.
    include_usage = body.include_usage()
    n = body.n
    done = set()
    echoed = set()
    offsets: dict[int, int] = {}
    completion_tokens = 0

    def chunk(choice: dict[str, Any]) -> str:
        data = {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
        }
        if include_usage:
            data["usage"] = None
        return sse(data)

    try:
        async for i, out in outputs:
            for c, (text, ids) in zip(out.outputs, out.deltas):
                index = i * n + c.index
                if index in done:
                    continue
                echo_now = body.echo and index not in echoed
                if echo_now:
                    echoed.add(index)
                    text = _echo_text(model, inputs[i]) + text
                finished = c.finish_reason is not None
                completion_tokens += len(ids)
                if not text and not finished and not (ids and (body.logprobs is not None or no_text)):
                    continue
                logprobs = None
                if body.logprobs is not None and c.logprobs is not None and ids:
                    logprobs = completion_logprobs(
                        ids, _delta_entries(c, ids), body.logprobs, 0 if echo_now else offsets.get(index, 0)
                    )
                if echo_now and body.logprobs is not None:
                    logprobs = _echo_logprobs(model, inputs[i][1], out, body.logprobs, logprobs)
                if logprobs is not None and logprobs["tokens"]:  # the next chunk's offsets go on from here
                    offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
                else:
                    offsets[index] = offsets.get(index, 0) + len(text)
                if finished:
                    done.add(index)
                yield chunk(
                    {
                        "index": index,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                        "stop_reason": c.stop_reason if finished else None,
                    }
                )
        if include_usage:
            prompt_tokens = sum(len(ids) for _, ids in inputs)
            yield sse(
                {
                    "id": request_id,
                    "object": "text_completion",
                    "created": created,
                    "model": model.name,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": _usage(prompt_tokens, completion_tokens),
                }
            )
    except Exception as exc:  # noqa: BLE001 - after the 200 is sent, an error can only be an event
        yield _error_event(path, exc)
    yield sse("[DONE]")


# -- /v1/chat/completions ----------------------------------------------------------------------------------
@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    body.check_unsupported()
    model = await state.manager.get(body.model)
    spec = so.openai_constraint(body.constraint_fields())
    plan = so.tool_plan(model, body.tools, body.tool_choice, body.parallel_tool_calls)
    text, ids = await prompts.render_chat(
        model,
        # a store model's SYSTEM / MESSAGEs, as Ollama
        so.template_messages(model.with_model_messages(body.template_messages())),
        add_generation_prompt=body.add_generation_prompt,
        chat_template=body.chat_template,
        template_kwargs=body.chat_template_kwargs,
        tools=plan.tools,
        continue_final_message=body.continue_final_message,  # the model writes on in the last message
    )
    defaults = model.default_sampling_values()
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = prompts.check_context(
        model, len(ids), body.requested_max_tokens() or defaults.get("max_tokens"), param
    )
    params = body.sampling_params(defaults, max_tokens, body.num_logprobs())
    params.prompt_logprobs = body.prompt_logprobs
    params = so.constrain(params, spec, plan, body.constraint_source())
    await so.precompile(model, params, "tools" if spec is None else body.constraint_source())
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    merged = await _start(model, [(text, ids)], [params], request_id)
    primed = await cancel_on_disconnect(request, prime(merged))
    if primed is None:
        return Response(status_code=499)
    _, outputs = primed
    if body.stream:
        return StreamingResponse(
            _chat_stream(body, model.name, request_id, created, len(ids), outputs, request.url.path, plan),
            media_type="text/event-stream",
        )
    result = await cancel_on_disconnect(
        request, _chat_full(body, model.name, request_id, created, outputs, plan)
    )
    return JSONResponse(result) if result is not None else Response(status_code=499)


async def _chat_full(body, model_name, request_id, created, outputs, plan=None) -> dict[str, Any]:
    (out,) = await _collect(outputs, 1)
    k = body.top_logprobs or 0
    choices = []
    for c in out.outputs:
        logprobs = None
        if body.logprobs and c.logprobs is not None:
            logprobs = chat_logprobs(c.token_ids, c.logprobs, k)
        content, calls = so.parse_reply(plan, c.text)
        choices.append(
            {
                "index": c.index,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [t.to_openai() for t in calls],
                },
                "logprobs": logprobs,
                "finish_reason": "tool_calls" if calls else c.finish_reason,
                "stop_reason": c.stop_reason,
            }
        )
    result = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model_name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        "usage": _usage(len(out.prompt_token_ids), sum(len(c.token_ids) for c in out.outputs)),
    }
    if body.prompt_logprobs is not None:
        result["prompt_logprobs"] = prompt_logprobs_json(out.prompt_logprobs)
    return result


async def _chat_stream(
    body, model_name, request_id, created, prompt_len, outputs, path, plan=None
) -> AsyncIterator[str]:
    include_usage = body.include_usage()
    k = body.top_logprobs or 0

    def chunk(index: int, delta: dict[str, Any], logprobs=None, finish_reason=None) -> str:
        data = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            data["usage"] = None
        return sse(data)

    done: set[int] = set()
    completion_tokens = 0
    replies = [so.ReplyStream(plan) for _ in range(body.n)]
    try:
        for index in range(body.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for _, out in outputs:
            for c, (text, ids) in zip(out.outputs, out.deltas):
                if c.index in done:
                    continue
                finished = c.finish_reason is not None
                completion_tokens += len(ids)
                if not text and not finished and not (ids and body.logprobs):
                    continue
                logprobs = None
                if body.logprobs and c.logprobs is not None and ids:
                    logprobs = chat_logprobs(ids, _delta_entries(c, ids), k)
                if finished:
                    done.add(c.index)
                reply = replies[c.index]
                content, tool_deltas = reply.feed(text, finished)
                delta: dict[str, Any] = {"content": content} if content else {}
                if tool_deltas:
                    delta["tool_calls"] = tool_deltas
                reason = "tool_calls" if finished and reply.calls else c.finish_reason
                if not delta and not finished and not logprobs:
                    continue
                yield chunk(c.index, delta, logprobs, reason)
        if include_usage:
            yield sse(
                {
                    "id": request_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [],
                    "usage": _usage(prompt_len, completion_tokens),
                }
            )
    except Exception as exc:  # noqa: BLE001 - after the 200 is sent, an error can only be an event
        yield _error_event(path, exc)
    yield sse("[DONE]")


# -- /v1/models --------------------------------------------------------------------------------------------
def _model_card(model: LoadedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.loaded_at),
        "owned_by": "ladle",
        "root": model.path,
        "parent": None,
        "max_model_len": model.max_model_len,
    }


def _stored_card(row: ModelInfo) -> dict[str, Any]:
    """A card for a store model that is not loaded: what the store knows, without loading it (the context
    length is the loaded engine's, so it is null until then)."""
    return {
        "id": row.name,
        "object": "model",
        "created": int(row.modified_at.timestamp()),
        "owned_by": "ladle",
        "root": row.name,
        "parent": None,
        "max_model_len": None,
    }


def _card(served: ServedModel) -> dict[str, Any]:
    if served.loaded is not None:
        return _model_card(served.loaded)
    assert served.stored is not None  # a served model is loaded, stored, or both
    return _stored_card(served.stored)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    # As Ollama's /v1/models: every model in the store, loaded or not, plus the ones loaded from a path.
    served = await served_models(server_state(request).manager)
    return {"object": "list", "data": [_card(s) for s in served]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    served = await find_served(server_state(request).manager, model_id)
    if served is None:
        raise ApiError(404, f"model {model_id!r} not found", "model")
    return _card(served)
