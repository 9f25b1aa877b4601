"""Many concurrent streaming clients, half of which hang up mid-stream: the others must get exactly the
greedy output of transformers, and every dropped request must be aborted (no running requests, KV blocks free).
Each test runs against the shared server and against one with --async-scheduling (a GPU server's default),
whose aborts land while a step is still in flight."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from server_helpers import run_server

PROMPTS = ["Once upon a time", "The quick brown fox", "Lily loved to play", "def main():", "0123456789"]
NUM_FINISHING = 50
NUM_DROPPING = 50
FINISH_TOKENS = 12
# Dropped clients ask for far more than they read, so they are surely still generating when they leave.
DROP_TOKENS = 400


async def _stream(client: httpx.AsyncClient, prompt: str, max_tokens: int, read_chunks: int | None) -> str:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
    text = ""
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        seen = 0
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["text"]
            seen += 1
            if read_chunks is not None and seen >= read_chunks:
                return text  # leaving the `async with` closes the connection mid-stream
    return text


@pytest.fixture(scope="module", params=["sync", "async"])
def server(request, tiny_model_factory, tmp_path_factory):
    if request.param == "sync":
        yield request.getfixturevalue("ladle_server")
        return
    folder, _ = tiny_model_factory("llama")
    with run_server(folder, tmp_path_factory.mktemp("async-server"), "--async-scheduling") as async_server:
        yield async_server


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^ladle:{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_dropped_streams_are_aborted_and_others_are_correct(server, hf_reference):
    expected = {p: hf_reference.complete(p, FINISH_TOKENS, ignore_eos=True).text for p in PROMPTS}

    async def main():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            finishing = [
                _stream(client, PROMPTS[i % len(PROMPTS)], FINISH_TOKENS, None) for i in range(NUM_FINISHING)
            ]
            dropping = [
                _stream(client, PROMPTS[i % len(PROMPTS)], DROP_TOKENS, 3) for i in range(NUM_DROPPING)
            ]
            results = await asyncio.gather(*finishing, *dropping)
        return results[:NUM_FINISHING]

    start = time.monotonic()
    finished = asyncio.run(main())
    for i, text in enumerate(finished):
        assert text == expected[PROMPTS[i % len(PROMPTS)]]

    # The server notices each hang-up and aborts it; the aborts land within an engine step.
    deadline = time.monotonic() + 20
    while True:
        metrics = httpx.get(server.url + "/metrics").text
        running = _metric(metrics, "num_requests_running")
        waiting = _metric(metrics, "num_requests_waiting")
        usage = _metric(metrics, "kv_cache_usage_perc")
        if (running, waiting, usage) == (0, 0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (running, waiting, usage) == (0, 0, 0)
    # The dropped requests really were cut short: far fewer tokens than they asked for were generated.
    generated = _metric(metrics, "generation_tokens_total")
    assert generated < NUM_DROPPING * DROP_TOKENS / 2
    assert time.monotonic() - start < 60


def test_non_streaming_clients_that_leave_are_aborted(server):
    def running() -> tuple[float, float]:
        metrics = httpx.get(server.url + "/metrics").text
        return _metric(metrics, "num_requests_running"), _metric(metrics, "kv_cache_usage_perc")

    before = _metric(httpx.get(server.url + "/metrics").text, "generation_tokens_total")
    for route, body in (
        ("/v1/completions", {"prompt": "Once", "max_tokens": 480, "ignore_eos": True}),
        (
            "/api/generate",
            {"model": server.model, "prompt": "Once", "stream": False, "options": {"num_predict": 480}},
        ),
    ):
        try:
            # 480 tokens of the tiny model can take under 50 ms now that a step's host work is small: leave
            # after 5 ms of waiting for the answer (connecting and sending get their own, ample, limits).
            httpx.post(server.url + route, json=body, timeout=httpx.Timeout(5.0, read=0.005))
        except httpx.TimeoutException:
            pass
        else:
            raise AssertionError("the request was expected to outlast the client's timeout")
    deadline = time.monotonic() + 20
    while running() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() == (0, 0)
    after = _metric(httpx.get(server.url + "/metrics").text, "generation_tokens_total")
    assert after - before < 2 * 480
