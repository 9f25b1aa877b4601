"""The API fields that ask for structured output -> StructuredOutputsParams, checked eagerly so that a bad
schema, regex or grammar is a 400 naming the field the client sent.

OpenAI:  response_format {"type": "json_object"} | {"type": "json_schema", "json_schema": {"name", "schema",
         "strict"}} | {"type": "structural_tag", "format": {...}} | {"type": "text"}
vLLM:    guided_json, guided_regex, guided_choice, guided_grammar, structured_outputs {...}
Ollama:  format "json" | a JSON schema object
"""

from __future__ import annotations

import json
from typing import Any

from ladle.sampling_params import StructuredOutputsParams

_VLLM_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


def from_openai_request(body: dict[str, Any]) -> StructuredOutputsParams | None:
    """Reads response_format and vLLM's guided_* / structured_outputs fields of a completions or chat body."""
    found: list[tuple[str, StructuredOutputsParams]] = []
    response_format = body.get("response_format")
    if response_format is not None:
        spec = from_response_format(response_format)
        if spec is not None:
            where = "response_format.json_schema.schema" if spec.json is not None else "response_format"
            found.append((where, spec))
    for name, kind in _VLLM_FIELDS.items():
        value = body.get(name)
        if value is not None:
            found.append((name, _build(name, **{kind: value})))
    raw = body.get("structured_outputs")
    if raw is not None:
        if not isinstance(raw, dict):
            raise ValueError("structured_outputs: must be an object")
        known = {
            k: v
            for k, v in raw.items()
            if k in StructuredOutputsParams._KINDS or k == "disable_any_whitespace"
        }
        found.append(("structured_outputs", _build("structured_outputs", **known)))
    if len(found) > 1:
        raise ValueError(
            f"{found[1][0]}: only one structured-output constraint may be given (also got {found[0][0]})"
        )
    if found:
        check(found[0][1], found[0][0])
        return found[0][1]
    return None


def from_response_format(response_format: Any) -> StructuredOutputsParams | None:
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise ValueError("response_format: must be an object with a type")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        if not isinstance(inner, dict):
            raise ValueError("response_format.json_schema: is required for type json_schema")
        schema = inner.get("schema", inner.get("schema_"))
        if schema is None:
            raise ValueError("response_format.json_schema.schema: is required")
        if not isinstance(schema, (dict, bool)):
            raise ValueError("response_format.json_schema.schema: must be a JSON schema object")
        return _build("response_format.json_schema.schema", json=schema)
    if kind == "structural_tag":
        return _build("response_format", structural_tag=json.dumps(response_format))
    raise ValueError(f'response_format.type: must be "text", "json_object" or "json_schema", got {kind!r}')


def from_ollama_format(format: Any) -> StructuredOutputsParams | None:
    """Ollama's `format`: "json" for any JSON object, or a JSON schema object."""
    if format is None or format == "":
        return None
    if format == "json":
        spec = StructuredOutputsParams(json_object=True)
    elif isinstance(format, dict):
        spec = _build("format", json=format)
    else:
        raise ValueError(f'format: must be "json" or a JSON schema object, got {format!r}')
    check(spec, "format")
    return spec


def _build(where: str, **fields: Any) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**fields)
    except (TypeError, ValueError) as e:
        message = str(e).replace("SamplingParams.structured_outputs", "").lstrip(".: ")
        raise ValueError(f"{where}: {message}") from None


def check(spec: StructuredOutputsParams, where: str) -> None:
    """Compile the constraint without a tokenizer (cheap) so its errors name the client's field; the
    engine compiles it again against the model's vocabulary (cached) when the request is admitted."""
    import xgrammar as xgr

    from ladle.structured.compiler import choice_grammar, clean_error, patch_json_schema

    try:
        if spec.json is not None:
            xgr.Grammar.from_json_schema(json.dumps(patch_json_schema(spec.json)))
        elif spec.regex is not None:
            xgr.Grammar.from_regex(spec.regex)
        elif spec.grammar is not None:
            xgr.Grammar.from_ebnf(spec.grammar)
        elif spec.choice is not None:
            xgr.Grammar.from_ebnf(choice_grammar(spec.choice))
        elif spec.structural_tag is not None:
            xgr.Grammar.from_structural_tag(spec.structural_tag)
    except Exception as e:  # xgrammar's error types vary by version; all mean "this input is unusable"
        raise ValueError(f"{where}: {clean_error(e)}") from None
