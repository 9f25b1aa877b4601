"""The Ollama routes through the official `ollama` client against a real `ladle serve`; greedy output must
equal ladle.LLM's for the same prompt and model."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from ladle import SamplingParams

GREEDY = {"temperature": 0, "num_predict": 12}
MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def client(ladle_server):
    return ollama.Client(host=ladle_server.url)


def _greedy(max_tokens: int = 12) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def test_generate_raw_equals_offline(client, ladle_server, reference_llm):
    expected = reference_llm.generate("Once upon a time", _greedy())[0]
    resp = client.generate(model=ladle_server.model, prompt="Once upon a time", raw=True, options=GREEDY)
    assert resp.response == expected.outputs[0].text
    assert resp.done and resp.done_reason == "length"
    assert resp.eval_count == len(expected.outputs[0].token_ids)
    assert resp.context == expected.prompt_token_ids + expected.outputs[0].token_ids
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(resp, name), int)
    assert resp.total_duration >= resp.eval_duration > 0

    parts = list(
        client.generate(
            model=ladle_server.model, prompt="Once upon a time", raw=True, options=GREEDY, stream=True
        )
    )
    assert "".join(p.response for p in parts) == expected.outputs[0].text
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].prompt_eval_count >= 1 and parts[-1].eval_count == len(expected.outputs[0].token_ids)


def test_generate_templated_equals_offline_chat(client, ladle_server, reference_llm):
    expected = reference_llm.chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Lily"}], _greedy()
    )[0]
    resp = client.generate(model=ladle_server.model, prompt="Lily", system="Be brief.", options=GREEDY)
    assert resp.response == expected.outputs[0].text


def test_chat_equals_offline(client, ladle_server, reference_llm):
    expected = reference_llm.chat(MESSAGES, _greedy())[0].outputs[0].text
    resp = client.chat(model=ladle_server.model, messages=MESSAGES, options=GREEDY)
    assert resp.message.role == "assistant" and resp.message.content == expected
    assert resp.done_reason == "length" and resp.eval_count == 12
    parts = list(client.chat(model=ladle_server.model, messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == expected
    assert parts[-1].done and parts[-1].done_reason == "length"


def test_stop_and_seed_options(client, ladle_server, reference_llm):
    full = reference_llm.generate("Once upon a time", _greedy(20))[0].outputs[0].text
    stop = full[4:6]
    resp = client.generate(
        model=ladle_server.model,
        prompt="Once upon a time",
        raw=True,
        options={"temperature": 0, "num_predict": 20, "stop": [stop]},
    )
    assert resp.response == full[: full.find(stop)] and resp.done_reason == "stop"
    sampled = [
        client.generate(
            model=ladle_server.model,
            prompt="Once",
            options={"seed": 7, "temperature": 1.0, "num_predict": 8, "top_k": 0, "top_p": 1.0},
        ).response
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


def test_list_show_ps(client, ladle_server):
    listed = client.list()
    assert [m.model for m in listed.models] == [ladle_server.model]
    assert listed.models[0].size > 0 and listed.models[0].details.family == "llama"
    shown = client.show(ladle_server.model)
    assert "<|assistant|>" in shown.template
    assert "FROM" in shown.modelfile and shown.details.format == "safetensors"
    assert shown.modelinfo["llama.context_length"] == 512
    # ladle's own field (the client drops it): the loaded weights' bytes, float32 on the CPU.
    raw = httpx.post(ladle_server.url + "/api/show", json={"model": ladle_server.model}).json()
    assert raw["memory_bytes"] == 4 * raw["model_info"]["general.parameter_count"]
    running = client.ps()
    assert [m.model for m in running.models] == [ladle_server.model]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("no-such-model")
    assert err.value.status_code == 404


def test_empty_prompt_loads(ladle_server):
    r = httpx.post(ladle_server.url + "/api/generate", json={"model": ladle_server.model})
    assert r.status_code == 200 and r.json()["done_reason"] == "load" and r.json()["done"] is True
    r = httpx.post(ladle_server.url + "/api/chat", json={"model": ladle_server.model, "messages": []})
    assert r.json()["done_reason"] == "load"


def test_ndjson_is_the_default_and_body_needs_no_content_type(ladle_server):
    body = json.dumps({"model": ladle_server.model, "prompt": "Once", "options": {"num_predict": 3}})
    with httpx.stream("POST", ladle_server.url + "/api/generate", content=body) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])


def test_errors(client, ladle_server):
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model", prompt="x")
    assert err.value.status_code == 404
    url = ladle_server.url
    cases = [
        ({"model": ladle_server.model, "prompt": "x", "images": ["aGk="]}, "images"),
        ({"model": ladle_server.model, "prompt": "x", "format": "yaml"}, "format"),
        ({"model": ladle_server.model, "prompt": "x", "options": {"temperature": "hot"}}, "temperature"),
        ({"model": ladle_server.model, "prompt": "x", "options": {"top_p": 5}}, "top_p"),
        ({"model": ladle_server.model, "prompt": "x", "context": [999999]}, "context"),
        ({"prompt": "x"}, "model"),
        ({"model": ladle_server.model, "prompt": "x", "options": "fast"}, "options: "),
    ]
    for body, field in cases:
        r = httpx.post(url + "/api/generate", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["error"] and set(r.json()) == {"error"}
    r = httpx.post(url + "/api/generate", content=b"")
    assert r.status_code == 400 and "the body is empty" in r.json()["error"], r.text
    r = httpx.post(url + "/api/chat", content=b"{oops")
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = httpx.post(url + "/api/chat", json={"model": ladle_server.model, "messages": [{"role": "robot"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]


def test_version_and_root(ladle_server):
    assert httpx.get(ladle_server.url + "/").text == "ladle is running"
    assert httpx.get(ladle_server.url + "/api/version").json()["version"]


def _transformers_continuation(tiny_model_factory, rendered: str) -> str:
    """transformers' greedy continuation (GREEDY's 12 tokens) of a rendered prompt on the served tiny llama:
    what a template override must produce."""
    import torch
    from transformers import AutoTokenizer

    folder, model = tiny_model_factory("llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY["num_predict"], do_sample=False)
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_template_override(client, ladle_server, tiny_model_factory):
    expected = _transformers_continuation(tiny_model_factory, "<s>Lily!")
    resp = client.generate(
        model=ladle_server.model,
        prompt="Lily",
        template="{{ bos_token }}{{ messages[-1]['content'] }}!",
        options=GREEDY,
        keep_alive="5m",
    )
    assert resp.response == expected


def test_template_override_in_ollamas_go_syntax(client, ladle_server, tiny_model_factory):
    """Ollama clients send `template` as a Go template, as Ollama's own Modelfiles write it: the simple form
    is translated (as a store model's TEMPLATE is), anything richer is a 400 naming `template`."""
    expected = _transformers_continuation(tiny_model_factory, "<s>Be brief. Lily!")
    resp = client.generate(
        model=ladle_server.model,
        prompt="Lily",
        system="Be brief.",
        template="{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}!",
        options=GREEDY,
    )
    assert resp.response == expected
    body = {
        "model": ladle_server.model,
        "prompt": "x",
        "template": "{{ range .Messages }}{{ .Content }}{{ end }}",
    }
    r = httpx.post(ladle_server.url + "/api/generate", json=body)
    assert r.status_code == 400 and r.json()["error"].startswith("template: "), r.text
