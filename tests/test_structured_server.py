"""Structured output and tool calls through the official `openai` and `ollama` clients against a real
`ladle serve` (the tiny random llama; its tool syntax is Llama 3 JSON, chosen by its architecture)."""

from __future__ import annotations

import json
import re

import jsonschema
import ollama
import openai
import pytest

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 2},
    },
    "required": ["name", "age", "tags"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"tz": {"enum": ["UTC", "CET"]}},
                "required": ["tz"],
            },
        },
    },
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def client(ladle_server):
    return openai.OpenAI(base_url=ladle_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oclient(ladle_server):
    return ollama.Client(host=ladle_server.url)


def test_response_format_json_schema(client, ladle_server):
    for seed in (None, 3):
        resp = client.chat.completions.create(
            model=ladle_server.model,
            messages=MESSAGES,
            max_tokens=300,
            temperature=0 if seed is None else 1,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
            },
        )
        choice = resp.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_and_vllm_guided_fields(client, ladle_server):
    resp = client.chat.completions.create(
        model=ladle_server.model,
        messages=MESSAGES,
        max_tokens=300,
        temperature=1,
        seed=1,
        response_format={"type": "json_object"},
    )
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content), dict)
    resp = client.completions.create(
        model=ladle_server.model,
        prompt="Answer:",
        max_tokens=20,
        temperature=0,
        extra_body={"guided_choice": ["yes", "no"]},
    )
    assert resp.choices[0].text in ("yes", "no")
    resp = client.completions.create(
        model=ladle_server.model,
        prompt="Code:",
        max_tokens=20,
        temperature=1,
        seed=2,
        extra_body={"guided_regex": r"[A-Z]{2}-\d{3}"},
    )
    assert re.fullmatch(r"[A-Z]{2}-\d{3}", resp.choices[0].text)
    resp = client.chat.completions.create(
        model=ladle_server.model,
        messages=MESSAGES,
        max_tokens=40,
        temperature=0,
        extra_body={"structured_outputs": {"json": {"type": "integer", "minimum": 1, "maximum": 9}}},
    )
    assert 1 <= int(resp.choices[0].message.content) <= 9


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
                    },
                }
            },
            "response_format.json_schema.schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
        ({"extra_body": {"guided_grammar": "root ::= missing"}}, "guided_grammar"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}},
                        },
                    }
                ]
            },
            "tools.0.function.parameters",
        ),
    ],
)
def test_bad_constraints_are_400s_naming_the_field(client, ladle_server, kwargs, field):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=ladle_server.model, messages=MESSAGES, max_tokens=5, **kwargs)
    assert field in info.value.message


def _calls(message):
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_tool_choice_is_enforced(client, ladle_server, choice):
    for seed in (None, 5):
        resp = client.chat.completions.create(
            model=ladle_server.model,
            messages=MESSAGES,
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=200,
            temperature=0 if seed is None else 1,
            seed=seed,
            parallel_tool_calls=False,
        )
        c = resp.choices[0]
        assert c.finish_reason == "tool_calls"
        calls = _calls(c.message)
        assert (
            len(calls) == 1
            and c.message.tool_calls[0].id.startswith("call_")
            and c.message.tool_calls[0].type == "function"
        )
        name, arguments = calls[0]
        if isinstance(choice, dict):
            assert name == "get_time"
        jsonschema.validate(arguments, PARAMS[name])


def test_streamed_tool_calls_reassemble(client, ladle_server):
    kwargs = dict(
        model=ladle_server.model,
        messages=MESSAGES,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        temperature=0,
        parallel_tool_calls=False,
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message
    calls: dict[int, dict] = {}
    finish, pieces = None, 0
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for d in delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                entry["id"], entry["name"] = d.id, d.function.name
            entry["arguments"] += d.function.arguments or ""
            pieces += 1
        assert not delta.content  # a forced call has no prose
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and pieces > 2  # the arguments came in several chunks
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == _calls(whole)
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_tool_history_renders(client, ladle_server):
    messages = MESSAGES + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    resp = client.chat.completions.create(
        model=ladle_server.model, messages=messages, tools=TOOLS, max_tokens=4, temperature=0
    )
    assert resp.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_ollama_format_schema_and_json(oclient, ladle_server):
    resp = oclient.chat(
        model=ladle_server.model,
        messages=MESSAGES,
        format=SCHEMA,
        options={"temperature": 0, "num_predict": 300},
    )
    jsonschema.validate(json.loads(resp.message.content), SCHEMA)
    resp = oclient.generate(
        model=ladle_server.model,
        prompt="Data:",
        format=SCHEMA,
        options={"seed": 4, "num_predict": 300},
        stream=False,
    )
    jsonschema.validate(json.loads(resp.response), SCHEMA)
    chunks = list(
        oclient.generate(
            model=ladle_server.model,
            prompt="Data:",
            format=SCHEMA,
            options={"seed": 4, "num_predict": 300},
            stream=True,
        )
    )
    assert "".join(c.response for c in chunks) == resp.response
    resp = oclient.generate(
        model=ladle_server.model, prompt="Data:", format="json", options={"temperature": 0, "num_predict": 60}
    )
    assert resp.done_reason in ("stop", "length")
    with pytest.raises(ollama.ResponseError) as info:
        oclient.generate(
            model=ladle_server.model,
            prompt="x",
            format={"type": "object", "properties": {"a": {"$ref": "#/q"}}},
        )
    assert info.value.status_code == 400 and "format" in str(info.value)


def test_ollama_tools(oclient, ladle_server):
    """Ollama has no tool_choice; a format holding the model to Llama 3's call shape makes the random model
    call get_time, and the reply must come back as message.tool_calls with arguments as an object."""
    call_shape = {
        "type": "object",
        "properties": {"name": {"const": "get_time"}, "parameters": PARAMS["get_time"]},
        "required": ["name", "parameters"],
    }
    for stream in (False, True):
        kwargs = dict(
            model=ladle_server.model,
            messages=MESSAGES,
            tools=TOOLS,
            format=call_shape,
            options={"temperature": 0, "num_predict": 200},
        )
        if stream:
            parts = list(oclient.chat(stream=True, **kwargs))
            calls = [c for p in parts for c in (p.message.tool_calls or [])]
            content = "".join(p.message.content or "" for p in parts)
        else:
            resp = oclient.chat(**kwargs)
            calls, content = resp.message.tool_calls or [], resp.message.content
        assert [c.function.name for c in calls] == ["get_time"] and not content.strip()
        jsonschema.validate(dict(calls[0].function.arguments), PARAMS["get_time"])
