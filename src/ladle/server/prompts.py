"""Turning a request's prompt or messages into token ids, in the request handler rather than the engine loop,
so tokenizing or rendering a long input never stalls the other requests' steps."""

from __future__ import annotations

import asyncio
from typing import Any

from ladle.models_hub.manager import LoadedModel
from ladle.server.errors import bad_request

# Inputs longer than this many characters are tokenized on a worker thread instead of the event loop.
_THREAD_THRESHOLD_CHARS = 4096


async def _maybe_in_thread(size: int, fn, *args, **kwargs):
    if size > _THREAD_THRESHOLD_CHARS:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _tokenizer(model: LoadedModel):
    if model.tokenizer is None:
        raise bad_request("prompt: this model has no tokenizer; send token ids instead", "prompt")
    return model.tokenizer


async def encode(model: LoadedModel, text: str, add_special_tokens: bool = True) -> list[int]:
    tokenizer = _tokenizer(model)
    return await _maybe_in_thread(len(text), tokenizer.encode, text, add_special_tokens=add_special_tokens)


async def render_chat(
    model: LoadedModel,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    chat_template: str | None = None,
    template_kwargs: dict[str, Any] | None = None,
    param: str = "messages",
    tools: list[dict[str, Any]] | None = None,
    template_param: str = "chat_template",
    continue_final_message: bool = False,
) -> tuple[str, list[int]]:
    """The chat template's text and its token ids (the template writes BOS itself, so none is added)."""
    tokenizer = _tokenizer(model)
    size = sum(len(str(m.get("content", ""))) for m in messages)
    kwargs = dict(template_kwargs or {})
    for reserved in ("messages", "add_generation_prompt", "tools", "chat_template", "continue_final_message"):
        kwargs.pop(reserved, None)
    try:
        text = await _maybe_in_thread(
            size,
            tokenizer.apply_chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            chat_template=chat_template
            or model.chat_template,  # a store model's template if the weights lack one
            tools=tools or None,
            continue_final_message=continue_final_message,
            **kwargs,
        )
    except ValueError as exc:  # no template, or the template raised (e.g. roles must alternate)
        raise bad_request(f"{param}: {exc}", param) from None
    except Exception as exc:  # noqa: BLE001 - a user-supplied template can fail in any way
        raise bad_request(f"{template_param}: could not render: {exc}", template_param) from None
    ids = await _maybe_in_thread(size, tokenizer.encode, text, add_special_tokens=False)
    return text, ids


def check_token_ids(model: LoadedModel, token_ids: list[int], param: str = "prompt") -> None:
    vocab = model.engine.engine.arch.vocab_size
    bad = next((t for t in token_ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"{param}: token {bad} is outside the vocabulary (size {vocab})", param)


def check_context(
    model: LoadedModel, prompt_len: int, max_tokens: int | None, param: str = "max_tokens"
) -> int:
    """The max_tokens to ask the engine for: what was requested, or what's left of the context when omitted.
    A prompt or request that can't fit is a 400 (as in vLLM), not a silent cut."""
    limit = model.max_model_len
    if prompt_len == 0:
        raise bad_request("prompt: is empty (it must contain at least one token)", "prompt")
    if prompt_len >= limit:
        raise bad_request(
            f"prompt: {prompt_len} tokens is too long; this model's maximum context length is {limit} tokens, "
            "and at least one must be left for the output",
            "prompt",
        )
    room = limit - prompt_len
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise bad_request(
            f"{param}: this model's maximum context length is {limit} tokens; you requested {max_tokens} "
            f"output tokens with a {prompt_len}-token prompt ({prompt_len + max_tokens} in all)",
            param,
        )
    return max_tokens
