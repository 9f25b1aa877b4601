"""Tool-call parsers on replies in each family's published format, streamed and not."""

from __future__ import annotations

import json

import pytest

from ladle.tools import ToolCallStream, get_tool_parser, plan_tools, tool_family

WEATHER = {"city": "Paris", "unit": "celsius"}

# (family, reply, expected content, expected [(name, arguments)])
CASES = [
    # Qwen 2.5 / Qwen 3 (Hermes template): one call, and two calls with prose before them.
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
        None,
        [("get_weather", WEATHER)],
    ),
    (
        "hermes",
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>',
        "Let me check both.",
        [("get_weather", WEATHER), ("get_time", {"tz": "Europe/Paris"})],
    ),
    ("hermes", "No tools needed: it is sunny.", "No tools needed: it is sunny.", []),
    # Llama 3.1 / 3.2: JSON with "parameters", with and without <|python_tag|>; "; " between calls.
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None,
        [("get_weather", WEATHER)],
    ),
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
        '{"name": "get_time", "arguments": {"tz": "UTC"}}',
        None,
        [("get_weather", WEATHER), ("get_time", {"tz": "UTC"})],
    ),
    ("llama3_json", "The weather is {unknown} today.", "The weather is {unknown} today.", []),
    # Mistral v3 tokenizer (7B v0.3, Nemo): [TOOL_CALLS] then a JSON list; v11: name[ARGS]{...}.
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
        '{"name": "get_time", "arguments": {"tz": "UTC"}}]',
        None,
        [("get_weather", WEATHER), ("get_time", {"tz": "UTC"})],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
        None,
        [("get_weather", WEATHER)],
    ),
    # Gemma 3: ```tool_code blocks with Python calls (Google's guide) or JSON calls; bare Python lists.
    (
        "gemma",
        '```tool_code\nget_weather(city="Paris", unit="celsius")\n```',
        None,
        [("get_weather", WEATHER)],
    ),
    (
        "gemma",
        'Sure.\n```tool_code\nprint(get_weather(city="Paris", unit="celsius"))\n```',
        "Sure.",
        [("get_weather", WEATHER)],
    ),
    (
        "gemma",
        '[get_weather(city="Paris", unit="celsius"), get_time(tz="UTC")]',
        None,
        [("get_weather", WEATHER), ("get_time", {"tz": "UTC"})],
    ),
    (
        "gemma",
        '```tool_code\n{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}\n```',
        None,
        [("get_weather", WEATHER)],
    ),
    ("gemma", "Paris is sunny today (25 degrees).", "Paris is sunny today (25 degrees).", []),
]


@pytest.mark.parametrize("family,reply,content,calls", CASES)
def test_parse(family, reply, content, calls):
    parsed = get_tool_parser(family).parse(reply)
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == calls
    for call in parsed.tool_calls:
        assert call.to_openai()["type"] == "function" and call.id.startswith("call_")
        assert isinstance(call.to_ollama()["function"]["arguments"], dict)


@pytest.mark.parametrize("family,reply,content,calls", CASES)
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streamed_deltas_reassemble(family, reply, content, calls, piece):
    stream = ToolCallStream(get_tool_parser(family))
    text, streamed = "", {}
    contents = []
    for start in range(0, len(reply), piece):
        text += reply[start : start + piece]
        delta, deltas = stream.feed(text)
        contents.append(delta)
        _merge(streamed, deltas)
    delta, deltas = stream.feed(text, final=True)
    contents.append(delta)
    _merge(streamed, deltas)
    got = [(streamed[i]["name"], json.loads(streamed[i]["arguments"])) for i in sorted(streamed)]
    assert got == calls
    streamed_content = "".join(contents)
    assert (streamed_content.strip() or None) == (content.strip() if content else (None if calls else reply))
    assert [c.id for c in stream.calls] == [streamed[i]["id"] for i in sorted(streamed)]


def _merge(streamed: dict, deltas: list[dict]) -> None:
    for d in deltas:
        entry = streamed.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in d:
            assert entry["id"] is None  # id and name come once, in the call's first chunk
            entry["id"], entry["name"] = d["id"], d["function"]["name"]
        entry["arguments"] += d["function"].get("arguments", "")


@pytest.mark.parametrize(
    "template,model_type,family",
    [
        ("{% for m in messages %}<|im_start|>...{% if tools %}<tool_call>{% endif %}", "qwen2", "hermes"),
        ("<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}", "llama", "llama3_json"),
        ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", "mistral", "mistral"),
        ("<start_of_turn>user\n{{ m.content }}<end_of_turn>", "gemma3_text", "gemma"),
        (None, "qwen3", "hermes"),
        ("plain", "gemma3", "gemma"),
    ],
)
def test_family_detection(template, model_type, family):
    assert tool_family(template, model_type) == family


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.mark.parametrize(
    "tools,choice,field",
    [
        ([{"type": "function", "function": {}}], "auto", "tools.0.function.name"),
        ([{"type": "retrieval"}], "auto", "tools.0.type"),
        (TOOLS, "sometimes", "tool_choice"),
        (None, "required", "tool_choice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
        (
            [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}},
                    },
                }
            ],
            "auto",
            "tools.0.function.parameters",
        ),
    ],
)
def test_bad_tools_name_the_field(tools, choice, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        plan_tools(tools, choice, family="hermes")


def test_plans():
    assert plan_tools(TOOLS, "none", family="hermes").parser is None
    auto = plan_tools(TOOLS, None, family="hermes")
    assert auto.choice == "auto" and auto.parser.family == "hermes" and auto.structured_outputs is None
    required = plan_tools(TOOLS, "required", family="mistral")
    assert required.structured_outputs.structural_tag and required.skip_special_tokens is False
    named = plan_tools(TOOLS, {"type": "function", "function": {"name": "get_weather"}}, family="llama3_json")
    assert named.choice == "named" and named.forced_name == "get_weather"
