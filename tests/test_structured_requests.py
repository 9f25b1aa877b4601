"""API fields -> StructuredOutputsParams: OpenAI response_format, vLLM guided_* / structured_outputs, Ollama
format; bad schemas, regexes and grammars are errors naming the field the client sent."""

from __future__ import annotations

import pytest

from ladle.structured.requests import from_ollama_format, from_openai_request

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    "body,kind,value",
    [
        ({"response_format": {"type": "json_object"}}, "json_object", True),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": SCHEMA, "strict": True},
                }
            },
            "json",
            SCHEMA,
        ),
        ({"guided_json": SCHEMA}, "json", SCHEMA),
        ({"guided_json": '{"type": "object"}'}, "json", {"type": "object"}),
        ({"guided_regex": "[0-9]+"}, "regex", "[0-9]+"),
        ({"guided_choice": ["a", "b"]}, "choice", ["a", "b"]),
        ({"guided_grammar": 'root ::= "x"'}, "grammar", 'root ::= "x"'),
        ({"structured_outputs": {"regex": "a+"}}, "regex", "a+"),
    ],
)
def test_openai_and_vllm_fields(body, kind, value):
    spec = from_openai_request(body)
    assert spec.kind == kind and getattr(spec, kind) == value


def test_no_constraint():
    assert from_openai_request({}) is None
    assert from_openai_request({"response_format": {"type": "text"}}) is None
    assert from_ollama_format(None) is None and from_ollama_format("") is None


@pytest.mark.parametrize(
    "body,field",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": "json"}, "response_format"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"$ref": "#/missing"}}},
                    },
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_grammar": "root ::= undefined"}, "guided_grammar"),
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": "{nope"}, "guided_json"),
        ({"guided_json": SCHEMA, "guided_regex": "a"}, "guided_regex"),
        ({"structured_outputs": "a+"}, "structured_outputs"),
    ],
)
def test_bad_fields_are_named(body, field):
    with pytest.raises(ValueError) as info:
        from_openai_request(body)
    assert str(info.value).startswith(field + ":"), str(info.value)
    assert "/project/cpp" not in str(info.value)


def test_ollama_format():
    assert from_ollama_format("json").json_object is True
    assert from_ollama_format(SCHEMA).json == SCHEMA
    for bad in ("yaml", {"type": "object", "properties": {"a": {"$ref": "#/x"}}}, 3):
        with pytest.raises(ValueError, match="^format:"):
            from_ollama_format(bad)
