"""Structured output and enforced tool calls with a real model: Gemma 3 270M (Q4_K_M GGUF), whose
262k-token SentencePiece vocabulary (byte fallback) exercises the tokenizer-info path for real."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gguf_support import gemma_path

# The GGUF carries no chat template; the official Gemma 3 one ships with ladle for the demo model.
TEMPLATE = (Path(__file__).parents[1] / "src/ladle/models_hub/data/gemma3_chat_template.jinja").read_text()


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "country": {"type": "string", "maxLength": 20},
        "population_millions": {"type": "number", "minimum": 0, "maximum": 50},
    },
    "required": ["city", "country", "population_millions"],
}


@pytest.fixture(scope="module")
def gemma():
    from ladle import LLM

    return LLM(str(gemma_path()), max_model_len=1024)


def test_vocabulary_is_byte_fallback(gemma):
    import xgrammar as xgr

    assert gemma.llm_engine.structured.cache.tokenizer_info.vocab_type == xgr.VocabType.BYTE_FALLBACK


def test_json_schema_greedy_and_sampled(gemma):
    from ladle import SamplingParams, StructuredOutputsParams

    so = StructuredOutputsParams(json=SCHEMA)
    messages = [{"role": "user", "content": "Describe Paris as JSON."}]
    params = [SamplingParams(temperature=0.0, max_tokens=120, structured_outputs=so)] + [
        SamplingParams(temperature=0.8, seed=s, max_tokens=120, structured_outputs=so) for s in range(3)
    ]
    for out in gemma.chat([messages] * len(params), params, chat_template=TEMPLATE):
        c = out.outputs[0]
        assert c.finish_reason == "stop", c.text
        jsonschema.validate(json.loads(c.text), SCHEMA)


def test_named_tool_call(gemma):
    from ladle import SamplingParams
    from ladle.tools import plan_tools

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 30}},
                    "required": ["city"],
                },
            },
        }
    ]
    plan = plan_tools(
        tools,
        {"type": "function", "function": {"name": "get_weather"}},
        chat_template=gemma.get_tokenizer().chat_template,
        model_type="gemma3",
    )
    assert plan.parser.family == "gemma"
    out = gemma.chat(
        [{"role": "user", "content": "What's the weather in Paris?"}],
        SamplingParams(temperature=0.0, max_tokens=80, structured_outputs=plan.structured_outputs),
        tools=plan.tools,
        chat_template=TEMPLATE,
    )[0].outputs[0]
    calls = plan.parser.parse(out.text).tool_calls
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
