"""tool_choice "required" and a named function are enforced by the grammar: with a random model, every
reply is one or more valid calls of the offered tools, in the family's syntax, that its parser reads."""

from __future__ import annotations

import json

import jsonschema
import pytest

from ladle import LLM, SamplingParams
from ladle.tools import plan_tools

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 8},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
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
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def qwen(tiny_model_factory):
    folder, _ = tiny_model_factory("qwen2")
    return LLM(str(folder))


@pytest.mark.parametrize("family", ["hermes", "llama3_json", "mistral", "gemma"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_enforced_tool_calls_are_valid_calls(qwen, family, choice):
    plan = plan_tools(TOOLS, choice, family=family, parallel_tool_calls=False)
    params = [
        SamplingParams(
            temperature=t,
            seed=s,
            max_tokens=300,
            structured_outputs=plan.structured_outputs,
            skip_special_tokens=False,
        )
        for t, s in ((0.0, None), (1.0, 1), (1.0, 2))
    ]
    outs = qwen.chat([MESSAGES] * len(params), params, tools=plan.tools)
    for out in outs:
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        parsed = plan.parser.parse(c.text)
        assert len(parsed.tool_calls) == 1, c.text
        for call in parsed.tool_calls:
            if plan.forced_name:
                assert call.name == plan.forced_name
            jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


def test_auto_leaves_the_model_free_and_none_has_no_parser(qwen):
    auto = plan_tools(TOOLS, "auto", family="hermes")
    assert auto.structured_outputs is None
    out = qwen.chat(MESSAGES, SamplingParams(temperature=0.0, max_tokens=8), tools=auto.tools)[0].outputs[0]
    parsed = auto.parser.parse(out.text)
    assert parsed.tool_calls == [] and parsed.content == out.text


def test_mistral_marker_token_is_allowed_as_the_single_special_token(tmp_path):
    """[TOOL_CALLS] is a special token in Mistral's vocabularies: the grammar must accept it as that one
    token (what the model was trained to write), while other special tokens stay out of the grammar."""
    import xgrammar as xgr

    from ladle.loader.tokenizer import Tokenizer, load_hf_tokenizer
    from ladle.structured.compiler import GrammarCache
    from tiny_models import build_tokenizer

    build_tokenizer(tmp_path, 384)
    backend = load_hf_tokenizer(tmp_path).backend
    backend.add_special_tokens(["[TOOL_CALLS]"])
    tokenizer = Tokenizer(backend=backend, eos_token_ids=[2])
    marker = backend.token_to_id("[TOOL_CALLS]")
    cache = GrammarCache.for_tokenizer(tokenizer, backend.get_vocab_size(), [2])
    plan = plan_tools(TOOLS, {"type": "function", "function": {"name": "get_time"}}, family="mistral")
    matcher = xgr.GrammarMatcher(cache.get(plan.structured_outputs))
    assert not matcher.accept_token(1)  # <s>: special, never part of a grammar
    assert matcher.accept_token(marker)
    body = tokenizer.encode('[{"name": "get_time", "arguments": {"tz": "UTC"}}]', add_special_tokens=False)
    assert all(matcher.accept_token(t) for t in body)
    assert matcher.accept_token(2) and matcher.is_terminated()
