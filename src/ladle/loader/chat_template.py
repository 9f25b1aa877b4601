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


# Put at the end of the message to continue, so the rendered text can be cut right after that message's
# content whatever the template writes around it. The trailing space tells whether the template trimmed it.
_CONTINUE_MARK = "LADLE_CONTINUE_HERE_7f3a "


def _marked_final_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not messages:
        raise ChatTemplateError("continue_final_message: the conversation is empty")
    final = dict(messages[-1])
    content = final.get("content")
    if isinstance(content, str):
        final["content"] = content + _CONTINUE_MARK
    elif isinstance(content, list) and any(isinstance(p, dict) and "text" in p for p in content):
        parts = [dict(p) if isinstance(p, dict) else p for p in content]
        last = max(i for i, p in enumerate(parts) if isinstance(p, dict) and "text" in p)
        parts[last]["text"] = str(parts[last]["text"]) + _CONTINUE_MARK
        final["content"] = parts
    else:
        raise ChatTemplateError("continue_final_message: the final message has no text to continue")
    return [*messages[:-1], final]


def _cut_at_mark(rendered: str) -> str:
    at = rendered.rfind(_CONTINUE_MARK.strip())
    if at == -1:
        raise ChatTemplateError(
            "continue_final_message: the chat template dropped (part of) the final message, so there is "
            "nothing to continue"
        )
    if rendered.startswith(_CONTINUE_MARK, at):
        return rendered[:at]
    return rendered[:at].rstrip()  # the template trimmed the message: its own trailing spaces went too


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    continue_final_message: bool = False,
    **kwargs: Any,
) -> str:
    """The template's text for `messages`. continue_final_message (vLLM's and transformers' option): the text
    ends inside the last message, right after its content, with no end-of-turn and no generation prompt,
    so the model writes on in that message (a reply started for it, say)."""
    messages = developer_as_system(template, messages)
    if continue_final_message:
        messages, add_generation_prompt = _marked_final_message(messages), False
    try:
        rendered = _compile(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
    return _cut_at_mark(rendered) if continue_final_message else rendered
