"""What a stored model's manifest adds to each request, as Ollama applies it.

- PARAMETER lines (the params layer: temperature, stop, num_ctx, num_predict, ...) are defaults under the
  request's own `options` (Ollama) or fields (OpenAI);
- SYSTEM is the system prompt when the request brings none;
- MESSAGE lines come before the request's messages in /api/chat.

The server's routes call these through LoadedModel (default_sampling_values, model_options,
with_model_messages, default_system), so the rules live in one place.
"""

from __future__ import annotations

import re
from typing import Any

# Ollama option name -> SamplingParams field (what both APIs feed the engine).
OPTION_TO_SAMPLING: dict[str, str] = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_last_n": "penalty_window",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
}


def sampling_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """Manifest params as SamplingParams defaults (only values the engine can take as they are)."""
    values: dict[str, Any] = {}
    for option, field_name in OPTION_TO_SAMPLING.items():
        value = params.get(option)
        if value is None or isinstance(value, bool):
            continue
        if option == "num_predict" and (not isinstance(value, int) or value <= 0):
            continue  # -1 / -2 / 0: until the context is full, which is already the default
        if option == "seed" and (not isinstance(value, int) or value < 0):
            continue  # Ollama's -1: a fresh seed each time
        if option == "top_k" and isinstance(value, int) and value < 0:
            continue
        if option == "repeat_last_n" and isinstance(value, int) and value <= 0:
            continue  # 0 disables the window in Ollama, -1 means num_ctx; the whole sequence is close enough
        if option == "stop":
            value = [value] if isinstance(value, str) else [s for s in value if isinstance(s, str) and s]
            if not value:
                continue
        values[field_name] = value
    return values


def merge_options(request_options: dict[str, Any] | None, params: dict[str, Any]) -> dict[str, Any]:
    """The Ollama `options` a request runs with: its own values over the model's PARAMETERs."""
    merged = {k: v for k, v in params.items() if v is not None}
    merged.update({k: v for k, v in (request_options or {}).items() if v is not None})
    return merged


def fill_options(options: Any, params: dict[str, Any]) -> Any:
    """A request's pydantic `options` with the fields it left out taken from the model's PARAMETERs."""
    fields = type(options).model_fields
    update = {k: v for k, v in params.items() if k in fields and getattr(options, k) is None}
    return options.model_copy(update=update) if update else options


def with_model_messages(
    messages: list[dict[str, Any]], system: str | None, model_messages: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """/api/chat's conversation: the model's MESSAGEs first, then the request's; the model's SYSTEM first
    unless a system message is already there (as Ollama's ChatHandler builds it)."""
    combined = [dict(m) for m in model_messages] + list(messages)
    if system and not any(m.get("role") == "system" for m in combined):
        combined.insert(0, {"role": "system", "content": system})
    return combined


# ---- Ollama (Go) templates as a fallback chat template ------------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_FIELDS = {".System": "System", ".Prompt": "Prompt", ".Response": "Response", "$.System": "System"}


def template_as_jinja(template: str) -> str | None:
    """A manifest TEMPLATE as a Jinja chat template: as it is when it already is one (ladle's demo model
    stores Jinja), else translated from Ollama's Go form when simple enough (None otherwise)."""
    if "{%" in template or "messages" in template and ".Messages" not in template:
        return template
    return go_template_to_jinja(template)


def go_template_to_jinja(template: str) -> str | None:
    """A Jinja chat template equivalent to a simple Ollama template, for a model whose weights carry none
    (e.g. a GGUF without tokenizer.chat_template). Handles the classic form Ollama renders turn by turn:
    {{ .System }}, {{ .Prompt }}, {{ .Response }}, {{ if .X }} ... {{ else }} ... {{ end }}, with `-` trims.
    Returns None for anything richer (range .Messages, functions), which then stays unsupported."""
    body = _translate(template)
    if body is None:
        return None
    if "{{ Response }}" not in body:
        body += "{{ Response }}"  # as Ollama's template parser does for templates without it
    prompt_only = body.partition("{{ Response }}")[0]
    # `+` on the tags next to the template's own text: the renderer's trim_blocks / lstrip_blocks must not
    # eat its newlines (Go templates keep them). Ollama's legacy chat: the system prompt goes with the first turn; each user message is a Prompt and
    # the next assistant message its Response; the final turn is cut at {{ .Response }}.
    # The text starts with BOS, as the runner Ollama drives adds it when it tokenizes the rendered prompt
    # (here the chat template writes it, and the server then adds no special tokens).
    return (
        "{{- bos_token -}}"
        "{%- set ns = namespace(system='', turns=[], prompt=none) -%}"
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'system' -%}{%- set ns.system = m['content'] -%}"
        "{%- elif m['role'] == 'user' -%}"
        "{%- if ns.prompt is not none -%}{%- set ns.turns = ns.turns + [[ns.prompt, '']] -%}{%- endif -%}"
        "{%- set ns.prompt = m['content'] -%}"
        "{%- else -%}{%- set ns.turns = ns.turns + [[ns.prompt or '', m['content']]] -%}"
        "{%- set ns.prompt = none -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- for t in ns.turns -%}"
        "{%- set System = ns.system if loop.first else '' -%}{%- set Prompt = t[0] -%}"
        "{%- set Response = t[1] +%}" + body + "{%+ endfor -%}"
        "{%- if ns.prompt is not none or add_generation_prompt and not ns.turns -%}"
        "{%- set System = ns.system if not ns.turns else '' -%}{%- set Prompt = ns.prompt or '' -%}"
        "{%- set Response = '' +%}" + prompt_only + "{%+ endif -%}"
    )


def _translate(template: str) -> str | None:
    out: list[str] = []
    depth = 0
    pos = 0
    pending_trim = False
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if pending_trim:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out.append(_escape(text))
        pending_trim = bool(match.group(3))
        pos = match.end()
        action = match.group(2).strip()
        if action in _FIELDS:
            out.append("{{ " + _FIELDS[action] + " }}")
        elif action.startswith("if ") and action[3:].strip() in _FIELDS:
            out.append("{%+ if " + _FIELDS[action[3:].strip()] + " +%}")
            depth += 1
        elif action == "else":
            if depth == 0:
                return None
            out.append("{%+ else +%}")
        elif action == "end":
            if depth == 0:
                return None
            out.append("{%+ endif +%}")
            depth -= 1
        elif action.startswith("/*") and action.endswith("*/"):
            continue
        else:
            return None
    text = template[pos:]
    out.append(_escape(text.lstrip() if pending_trim else text))
    return "".join(out) if depth == 0 else None


def _escape(text: str) -> str:
    """Literal text inside a Jinja template."""
    if not any(s in text for s in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return text
    return "{{ " + repr(text) + " }}"
