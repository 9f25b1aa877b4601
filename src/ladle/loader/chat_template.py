"""Renders Hugging Face / GGUF chat templates (Jinja) the way transformers does, with jinja2's sandbox."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    pass


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@lru_cache(maxsize=32)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def developer_as_system(template: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI's newer clients send the instructions as role "developer" where older ones said "system".
    Templates that name no "developer" role would reject it (Gemma: "roles must alternate") or drop it, so
    there it is rendered as "system", as vLLM and llama.cpp do; a template that knows the role gets it."""
    if "developer" in template or not any(m.get("role") == "developer" for m in messages):
        return messages
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    try:
        return _compile(template).render(
            messages=developer_as_system(template, messages),
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            **kwargs,
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
