"""The OpenAI routes through the official `openai` client against a real `ladle serve`; greedy output must
equal Hugging Face transformers' for the same prompt and model folder (tests/hf_reference.py)."""

from __future__ import annotations

import itertools

import httpx
import openai
import pytest

PROMPT = "Once upon a time"
MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def client(ladle_server):
    return openai.OpenAI(base_url=ladle_server.url + "/v1", api_key="unused", max_retries=0)


def test_completion_greedy_equals_transformers(client, ladle_server, hf_reference):
    expected = hf_reference.complete(PROMPT, 12)
    resp = client.completions.create(model=ladle_server.model, prompt=PROMPT, max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert choice.text == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert resp.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert resp.usage.completion_tokens == len(expected.token_ids)
    assert resp.object == "text_completion" and resp.model == ladle_server.model
    assert resp.id.startswith("cmpl-") and resp.system_fingerprint and resp.created > 0


def test_completion_streaming_equals_transformers(client, ladle_server, hf_reference):
    expected = hf_reference.complete(PROMPT, 16)
    stream = client.completions.create(
        model=ladle_server.model,
        prompt=PROMPT,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == expected.text
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [expected.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_token_id_prompt_and_batch(client, ladle_server, hf_reference):
    ids = hf_reference.encode(PROMPT)
    expected = [hf_reference.complete(ids, 6), hf_reference.complete("Lily", 6)]
    resp = client.completions.create(model=ladle_server.model, prompt=[ids], max_tokens=6, temperature=0)
    assert resp.choices[0].text == expected[0].text
    resp = client.completions.create(
        model=ladle_server.model, prompt=[PROMPT, "Lily"], max_tokens=6, temperature=0, echo=True
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.choices[0].text == PROMPT + expected[0].text
    assert resp.choices[1].text == "Lily" + expected[1].text


def test_echo_of_a_token_id_prompt_is_its_text(client, ladle_server, hf_reference):
    """As vLLM: echo of a token-id prompt returns the prompt decoded (it returned nothing of it)."""
    ids = hf_reference.encode(PROMPT)
    expected = hf_reference.complete(ids, 2)
    resp = client.completions.create(
        model=ladle_server.model, prompt=ids, max_tokens=2, temperature=0, echo=True
    )
    prompt_text = hf_reference.tokenizer.decode(ids, skip_special_tokens=True)
    assert prompt_text == PROMPT
    assert resp.choices[0].text == prompt_text + expected.text


def test_chat_greedy_equals_transformers(client, ladle_server, hf_reference):
    expected = hf_reference.chat(MESSAGES, 12)
    resp = client.chat.completions.create(
        model=ladle_server.model, messages=MESSAGES, max_completion_tokens=12, temperature=0
    )
    assert resp.choices[0].message.content == expected.text
    assert resp.choices[0].finish_reason == expected.finish_reason
    assert resp.choices[0].message.role == "assistant"
    assert resp.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")

    stream = client.chat.completions.create(
        model=ladle_server.model,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[-1].usage.total_tokens == len(expected.prompt_token_ids) + len(expected.token_ids)


def test_n_choices_and_seed(client, ladle_server):
    resp = client.chat.completions.create(
        model=ladle_server.model, messages=MESSAGES, max_tokens=8, n=2, temperature=1.0, seed=3
    )
    assert [c.index for c in resp.choices] == [0, 1]
    again = client.chat.completions.create(
        model=ladle_server.model, messages=MESSAGES, max_tokens=8, n=2, temperature=1.0, seed=3
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in resp.choices]
    stream = client.completions.create(
        model=ladle_server.model, prompt=PROMPT, max_tokens=5, n=2, temperature=1.0, seed=1, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].text
    batch = client.completions.create(
        model=ladle_server.model, prompt=PROMPT, max_tokens=5, n=2, temperature=1.0, seed=1
    )
    assert [texts[0], texts[1]] == [c.text for c in batch.choices]


def test_stop_strings(client, ladle_server, hf_reference):
    # A stop string ends the text just before its first occurrence in the unstopped greedy text.
    full = hf_reference.complete(PROMPT, 24).text
    stop = full[5:7]
    cut = full.find(stop)
    resp = client.completions.create(
        model=ladle_server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert resp.choices[0].text == full[:cut]
    assert resp.choices[0].finish_reason == "stop"
    stream = client.completions.create(
        model=ladle_server.model, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == full[:cut]


def _top_logprobs(logprobs, k: int) -> list[list[float]]:
    """Each step's k best log-probabilities, best first."""
    return [row.topk(k).values.tolist() for row in logprobs]


def test_logprobs(client, ladle_server, hf_reference):
    expected = hf_reference.complete(PROMPT, 6)
    resp = client.completions.create(
        model=ladle_server.model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.token_logprobs == pytest.approx(expected.token_logprobs(), abs=2e-4)
    got_top = [sorted(top.values(), reverse=True) for top in lp.top_logprobs]
    assert all(len(top) == 3 for top in got_top)
    for got, want in zip(got_top, _top_logprobs(expected.logprobs, 3)):
        assert got == pytest.approx(want, abs=2e-4)
    assert lp.text_offset[0] == 0

    chat = client.chat.completions.create(
        model=ladle_server.model,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    expected_chat = hf_reference.chat(MESSAGES, 4)
    assert len(content) == 4 and all(len(c.top_logprobs) == 2 for c in content)
    assert [c.logprob for c in content] == pytest.approx(expected_chat.token_logprobs(), abs=2e-4)
    for c, want in zip(content, _top_logprobs(expected_chat.logprobs, 2)):
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(want, abs=2e-4)
    stream = client.chat.completions.create(
        model=ladle_server.model,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
    streamed = [
        e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)


def _transformers_scores(hf_reference, prompt: str, num_new: int):
    """transformers' view of the served tiny llama: the prompt's ids (with BOS, as served), the prompt with its
    greedy continuation, and log_softmax over that whole sequence."""
    continuation = hf_reference.complete(prompt, num_new)
    seq = continuation.prompt_token_ids + continuation.token_ids
    return continuation.prompt_token_ids, seq, hf_reference.sequence_logprobs(seq)


def test_echo_with_logprobs_scores_the_prompt_like_transformers(client, ladle_server, hf_reference):
    """What evaluation harnesses send to score a text: echo + logprobs, the prompt's tokens scored too."""
    ids, seq, ref = _transformers_scores(hf_reference, PROMPT, 3)
    kwargs = dict(model=ladle_server.model, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=2)
    choice = client.completions.create(**kwargs).choices[0]
    assert choice.text.startswith(PROMPT)
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(seq)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    want = [float(ref[p - 1, seq[p]]) for p in range(1, len(seq))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=2e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    # As in vLLM, offsets add up the tokens' texts (the BOS's "<s>" included).
    assert lp.text_offset == list(itertools.accumulate([0] + [len(t) for t in lp.tokens[:-1]]))
    # Streamed, the first chunk carries the prompt's part: the same lists, chunk after chunk.
    streamed = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for event in client.completions.create(stream=True, **kwargs):
        if event.choices and event.choices[0].logprobs:
            for key in streamed:
                streamed[key] += getattr(event.choices[0].logprobs, key)
    assert streamed == {
        "tokens": lp.tokens,
        "token_logprobs": lp.token_logprobs,
        "text_offset": lp.text_offset,
    }


def test_prompt_logprobs_field_like_vllm(ladle_server, hf_reference):
    ids, _, ref = _transformers_scores(hf_reference, PROMPT, 1)
    body = {"model": ladle_server.model, "prompt": PROMPT, "max_tokens": 1, "prompt_logprobs": 3}
    r = httpx.post(ladle_server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    entries = r.json()["choices"][0]["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    for pos in range(1, len(ids)):
        entry = entries[pos]
        assert entry[str(ids[pos])]["logprob"] == pytest.approx(float(ref[pos - 1, ids[pos]]), abs=2e-4)
        ranks = sorted(e["rank"] for e in entry.values())
        assert ranks[:3] == [1, 2, 3]  # the top 3, and the prompt's own token (which may be one of them)
        best = max(entry.values(), key=lambda e: e["logprob"])
        assert best["rank"] == 1 and best["logprob"] == pytest.approx(float(ref[pos - 1].max()), abs=2e-4)


def test_chat_prompt_logprobs_score_the_rendered_prompt(ladle_server, hf_reference):
    """vLLM's chat `prompt_logprobs`: once per response, over the chat template's rendering of the
    messages, scored as transformers scores those tokens."""
    ids = hf_reference.chat_prompt(MESSAGES)
    ref = hf_reference.sequence_logprobs(ids)
    body = {"model": ladle_server.model, "messages": MESSAGES, "max_tokens": 1, "prompt_logprobs": 1}
    r = httpx.post(ladle_server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    entries = r.json()["prompt_logprobs"]
    assert len(entries) == len(ids) == r.json()["usage"]["prompt_tokens"] and entries[0] is None
    for pos in range(1, len(ids)):
        assert entries[pos][str(ids[pos])]["logprob"] == pytest.approx(
            float(ref[pos - 1, ids[pos]]), abs=2e-4
        )
    streamed = httpx.post(ladle_server.url + "/v1/chat/completions", json=body | {"stream": True}, timeout=60)
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"


def test_chat_text_parts_are_joined_with_a_newline_like_vllm(client, ladle_server, hf_reference):
    """Two text parts are the one string "part1\npart2": the server's prompt tokens (read back through
    prompt_logprobs) are transformers' rendering of that string, and the greedy reply is transformers'."""
    joined = [{"role": "user", "content": "The quick brown fox\njumps over the dog"}]
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "The quick brown fox"},
                {"type": "text", "text": "jumps over the dog"},
            ],
        }
    ]
    expected = hf_reference.chat_prompt(joined)

    def prompt_ids(messages) -> list[int]:
        body = {"model": ladle_server.model, "messages": messages, "max_tokens": 1, "prompt_logprobs": 0}
        r = httpx.post(ladle_server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        # With 0 top logprobs each entry holds the prompt's own token only; the first token has no entry.
        assert r.json()["usage"]["prompt_tokens"] == len(r.json()["prompt_logprobs"])
        return [int(next(iter(entry))) for entry in r.json()["prompt_logprobs"][1:]]

    assert prompt_ids(parts) == expected[1:] == prompt_ids(joined)
    replies = [
        client.chat.completions.create(model=ladle_server.model, messages=m, max_tokens=8, temperature=0)
        for m in (parts, joined)
    ]
    reference = hf_reference.chat(joined, 8).text
    assert [r.choices[0].message.content for r in replies] == [reference, reference]
    assert replies[0].usage.prompt_tokens == replies[1].usage.prompt_tokens == len(expected)


def test_chat_image_part_is_a_400_naming_the_field(client, ladle_server):
    image = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]
    with pytest.raises(openai.BadRequestError, match="image_url") as err:
        client.chat.completions.create(
            model=ladle_server.model, messages=[{"role": "user", "content": image}], max_tokens=2
        )
    assert err.value.body["param"] == "messages.0.content"


def test_vllm_extra_fields(client, ladle_server, hf_reference):
    # top_k=5 and repetition_penalty=1.0 leave greedy as it is; min_tokens=10 keeps EOS out of all 10 tokens.
    expected = hf_reference.complete(PROMPT, 10, ignore_eos=True, min_tokens=10)
    resp = client.completions.create(
        model=ladle_server.model,
        prompt=PROMPT,
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True, "min_tokens": 10, "top_k": 5, "repetition_penalty": 1.0},
    )
    assert resp.choices[0].text == expected.text
    assert resp.usage.completion_tokens == len(expected.token_ids) == 10


def test_continue_final_message_writes_on_in_the_last_message(client, ladle_server, hf_reference):
    """vLLM's chat extra: the prompt ends inside the assistant message the client began (transformers'
    rendering with continue_final_message=True), and the greedy reply goes on from there."""
    messages = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    text = hf_reference.tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    ids = list(hf_reference.tokenizer(text, add_special_tokens=False)["input_ids"])
    expected = hf_reference.complete(ids, 6)
    r = client.chat.completions.create(
        model=ladle_server.model, messages=messages, max_tokens=6, temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )  # fmt: skip
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == expected.text


def test_models_list_and_retrieve(client, ladle_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [ladle_server.model]
    card = httpx.get(f"{ladle_server.url}/v1/models/{ladle_server.model}").json()
    assert card["id"] == ladle_server.model and card["object"] == "model"


STORED = "tiny-store:latest"  # as /api/tags (and `ladle list`) names the stored model


@pytest.fixture(scope="module")
def store_server(tiny_model_factory, tmp_path_factory):
    """A server whose store holds the tiny llama as `tiny-store`, not loaded, while the same folder is loaded
    from its path (run_server gives it its own LADLE_HOME; conftest's OLLAMA_MODELS is an empty folder)."""
    from ladle.store import Store
    from server_helpers import run_server

    folder, _ = tiny_model_factory("llama")
    logs = tmp_path_factory.mktemp("store-server")
    Store(logs / "ladle-home", ollama_dirs=[]).create("tiny-store", f"FROM {folder}\n")
    with run_server(folder, logs) as server:
        yield server


def _loaded(server) -> list[str]:
    return [m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]]


def test_models_lists_store_models_without_loading_them(store_server):
    """As Ollama's /v1/models: every model in the store (what /api/tags shows), loaded or not, and listing
    or retrieving one loads nothing."""
    import datetime as dt

    client = openai.OpenAI(base_url=store_server.url + "/v1", api_key="unused", max_retries=0)
    assert _loaded(store_server) == [store_server.model]
    listed = {m.id: m for m in client.models.list().data}
    assert list(listed) == [STORED, store_server.model]
    [tag] = httpx.get(store_server.url + "/api/tags").json()["models"][:1]
    assert tag["name"] == STORED
    card = listed[STORED]
    assert card.object == "model" and card.owned_by == "ladle"
    assert card.created == int(
        dt.datetime.fromisoformat(tag["modified_at"].replace("Z", "+00:00")).timestamp()
    )
    for reference in (STORED, "tiny-store"):
        retrieved = client.models.retrieve(reference)
        assert retrieved.id == STORED and retrieved.created == card.created
    assert client.models.retrieve(store_server.model).id == store_server.model
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.models.retrieve("no-such-model")
    assert _loaded(store_server) == [store_server.model]


def test_a_loaded_store_model_is_listed_once(store_server):
    client = openai.OpenAI(base_url=store_server.url + "/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="tiny-store", messages=MESSAGES, max_tokens=1)
    assert sorted(_loaded(store_server)) == sorted([STORED, store_server.model])
    listed = client.models.list().data
    assert [m.id for m in listed] == [STORED, store_server.model]
    assert listed[0].max_model_len == client.models.retrieve(STORED).max_model_len > 0


def test_errors_are_typed(client, ladle_server):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert err.value.body["param"] == "model" or "model" in err.value.message
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=ladle_server.model, prompt="x", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=ladle_server.model, prompt="x", max_tokens=10**12)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=ladle_server.model, messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="prompt"):
        client.completions.create(model=ladle_server.model, prompt="hello " * 600, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="response_format.type"):
        client.chat.completions.create(
            model=ladle_server.model, messages=MESSAGES, response_format={"type": "xml"}
        )
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(
            model=ladle_server.model,
            messages=MESSAGES,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=ladle_server.model, prompt="x", max_tokens=2, logit_bias={"99999": 5})


@pytest.mark.parametrize(
    "body,field",
    [
        ("{not json", "JSON"),
        ("", "the body is empty"),
        ('["a list"]', "object"),
        ('{"prompt": 5}', "prompt"),
        ('{"prompt": "x", "max_tokens": "many"}', "max_tokens"),
        ('{"prompt": "x", "n": 0}', "n"),
        ('{"prompt": "x", "top_p": 2}', "top_p"),
        ('{"prompt": "x", "logprobs": 50}', "logprobs"),
        ('{"prompt": [1, 99999], "max_tokens": 2}', "prompt"),
        ('{"prompt": "x", "stop_token_ids": [99999]}', "stop_token_ids"),
        ('{"prompt": "x", "seed": 99999999999999999999999}', "seed"),
        ('{"prompt": "x", "min_tokens": 9, "max_tokens": 2}', "min_tokens"),
        ('{"prompt": "x", "stream": true, "prompt_logprobs": 1}', "prompt_logprobs"),
        ('{"prompt": "x", "prompt_logprobs": 21}', "prompt_logprobs"),
    ],
)
def test_bad_completion_bodies_name_the_field(ladle_server, body, field):
    r = httpx.post(
        ladle_server.url + "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert field in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_api_key(tiny_model_factory, tmp_path):
    from server_helpers import run_server

    folder, _ = tiny_model_factory("llama")
    with run_server(folder, tmp_path, "--api-key", "sesame") as server:
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)
        assert good.models.list().data[0].id == server.model
        assert httpx.get(server.url + "/health").status_code == 200
        assert httpx.get(server.url + "/").text == "ladle is running"
        r = httpx.get(server.url + "/api/tags")
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(server.url + "/metrics").status_code == 401
