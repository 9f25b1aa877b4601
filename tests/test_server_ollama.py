"""The Ollama routes through the official `ollama` client against a real `ladle serve`; greedy output must
equal Hugging Face transformers' for the same prompt and model folder (tests/hf_reference.py)."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

GREEDY = {"temperature": 0, "num_predict": 12}
MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def client(ladle_server):
    return ollama.Client(host=ladle_server.url)


def test_generate_raw_equals_transformers(client, ladle_server, hf_reference):
    expected = hf_reference.complete("Once upon a time", GREEDY["num_predict"])
    resp = client.generate(model=ladle_server.model, prompt="Once upon a time", raw=True, options=GREEDY)
    assert resp.response == expected.text
    assert resp.done and resp.done_reason == expected.finish_reason
    assert resp.eval_count == len(expected.token_ids)
    assert resp.context == expected.prompt_token_ids + expected.token_ids
    for name in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(resp, name), int)
    assert resp.total_duration >= resp.eval_duration > 0

    parts = list(
        client.generate(
            model=ladle_server.model, prompt="Once upon a time", raw=True, options=GREEDY, stream=True
        )
    )
    assert "".join(p.response for p in parts) == expected.text
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].prompt_eval_count == len(expected.prompt_token_ids)
    assert parts[-1].eval_count == len(expected.token_ids)


def test_generate_templated_equals_transformers_chat(client, ladle_server, hf_reference):
    """Without raw, /api/generate renders system + prompt through the folder's chat template."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Lily"}]
    expected = hf_reference.chat(messages, GREEDY["num_predict"])
    resp = client.generate(model=ladle_server.model, prompt="Lily", system="Be brief.", options=GREEDY)
    assert resp.response == expected.text
    assert resp.prompt_eval_count == len(expected.prompt_token_ids)


def test_chat_equals_transformers(client, ladle_server, hf_reference):
    expected = hf_reference.chat(MESSAGES, GREEDY["num_predict"])
    resp = client.chat(model=ladle_server.model, messages=MESSAGES, options=GREEDY)
    assert resp.message.role == "assistant" and resp.message.content == expected.text
    assert resp.done_reason == expected.finish_reason and resp.eval_count == len(expected.token_ids)
    parts = list(client.chat(model=ladle_server.model, messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == expected.text
    assert parts[-1].done and parts[-1].done_reason == expected.finish_reason


def test_chat_ending_with_an_assistant_message_continues_it(client, ladle_server, hf_reference):
    """As Ollama: a trailing assistant message is a reply begun for the model, which writes on in it (the
    prompt is transformers' rendering with continue_final_message=True), instead of a new turn after it."""
    messages = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    text = hf_reference.tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    ids = list(hf_reference.tokenizer(text, add_special_tokens=False)["input_ids"])
    expected = hf_reference.complete(ids, GREEDY["num_predict"])
    resp = client.chat(model=ladle_server.model, messages=messages, options=GREEDY)
    assert resp.message.content == expected.text
    # prompt_eval_count leaves out prefix-cache hits, as Ollama's does: earlier tests share this prompt's start
    assert 0 < resp.prompt_eval_count <= len(ids)


def test_stop_and_seed_options(client, ladle_server, hf_reference):
    full = hf_reference.complete("Once upon a time", 20).text
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


def test_embed_on_a_text_generation_model_says_it_does_not_support_embeddings(client, ladle_server):
    """As Ollama answers /api/embed for a generative model (a 400 that says so, where ladle said "Not
    Found"), on both the route and its older name; an unknown model is still a 404."""
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model=ladle_server.model, input=["a", "b"])
    assert err.value.status_code == 400 and "does not support embeddings" in str(err.value)
    with pytest.raises(ollama.ResponseError) as err:
        client.embeddings(model=ladle_server.model, prompt="a")
    assert err.value.status_code == 400 and "does not support embeddings" in str(err.value)
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="no-such-model", input="a")
    assert err.value.status_code == 404


# The thinking switch of Qwen3's chat template, in small: enable_thinking=false closes an empty think block.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_think_turns_a_thinking_templates_thinking_on_and_off(client, ladle_server, hf_reference):
    """think reaches the template as enable_thinking (how Ollama turns Qwen3's thinking on and off): each
    prompt is transformers' rendering with that switch. Under think=true the reply comes back as thinking
    apart from the answer; the tiny random model never closes its think block, so all of its reply is
    thinking, whole and streamed. A model without thinking, or a level for an on/off one, is a 400."""
    messages = [{"role": "user", "content": "Lily"}]

    def rendered(enable: bool) -> str:
        return hf_reference.tokenizer.apply_chat_template(
            messages, chat_template=THINKING_TEMPLATE, add_generation_prompt=True, tokenize=False,
            enable_thinking=enable,
        )  # fmt: skip

    assert "</think>" in rendered(False) and "</think>" not in rendered(True)
    off = client.generate(
        model=ladle_server.model, prompt="Lily", template=THINKING_TEMPLATE, think=False, options=GREEDY
    )
    assert off.response == _transformers_continuation(hf_reference, rendered(False)) and not off.thinking
    expected = _transformers_continuation(hf_reference, rendered(True))
    assert "</think>" not in expected
    on = client.generate(
        model=ladle_server.model, prompt="Lily", template=THINKING_TEMPLATE, think=True, options=GREEDY
    )
    assert (on.thinking, on.response) == (expected.lstrip("\n"), "")
    parts = list(
        client.generate(
            model=ladle_server.model, prompt="Lily", template=THINKING_TEMPLATE, think=True, options=GREEDY,
            stream=True,
        )
    )  # fmt: skip
    assert "".join(p.thinking or "" for p in parts) == expected.lstrip("\n")
    assert not "".join(p.response for p in parts) and parts[-1].done
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model=ladle_server.model, prompt="Lily", template=THINKING_TEMPLATE, think="high")
    assert err.value.status_code == 400 and "true or false" in str(err.value)
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=ladle_server.model, messages=messages, think=True)  # the tiny model's own template
    assert err.value.status_code == 400 and "does not support thinking" in str(err.value)
    assert "thinking" not in client.show(ladle_server.model).capabilities


def test_version_and_root(ladle_server):
    assert httpx.get(ladle_server.url + "/").text == "ladle is running"
    assert httpx.get(ladle_server.url + "/api/version").json()["version"]


def _transformers_continuation(hf_reference, rendered: str) -> str:
    """transformers' greedy continuation (GREEDY's 12 tokens) of a rendered prompt on the served tiny llama:
    what a template override must produce. The rendering holds its own BOS, so none is added."""
    ids = hf_reference.tokenizer.encode(rendered, add_special_tokens=False)
    return hf_reference.complete(ids, GREEDY["num_predict"]).text


def test_template_override(client, ladle_server, hf_reference):
    expected = _transformers_continuation(hf_reference, "<s>Lily!")
    resp = client.generate(
        model=ladle_server.model,
        prompt="Lily",
        template="{{ bos_token }}{{ messages[-1]['content'] }}!",
        options=GREEDY,
        keep_alive="5m",
    )
    assert resp.response == expected


def test_template_override_in_ollamas_go_syntax(client, ladle_server, hf_reference):
    """Ollama clients send `template` as a Go template, as Ollama's own Modelfiles write it: the simple form
    is translated (as a store model's TEMPLATE is), anything richer is a 400 naming `template`."""
    expected = _transformers_continuation(hf_reference, "<s>Be brief. Lily!")
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
