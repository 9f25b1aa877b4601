"""Operations routes, the AsyncEngine's failure modes (a crashed loop, a full queue) and the app's plumbing."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from ladle import SamplingParams
from ladle.config import EngineConfig
from ladle.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from ladle.engine.llm_engine import LLMEngine
from ladle.models_hub.manager import EngineOptions
from ladle.server.app import build_app
from ladle.server.state import ServerConfig


def test_health_version_metrics(ladle_server):
    assert httpx.get(ladle_server.url + "/health").status_code == 200
    assert httpx.get(ladle_server.url + "/version").json()["version"]
    text = httpx.get(ladle_server.url + "/metrics").text
    for name in (
        "ladle:num_requests_running",
        "ladle:num_requests_waiting",
        "ladle:kv_cache_usage_perc",
        "ladle:prefix_cache_queries_total",
        "ladle:prefix_cache_hits_total",
        "ladle:num_preemptions_total",
        "ladle:prompt_tokens_total",
        "ladle:generation_tokens_total",
        "# TYPE ladle:time_to_first_token_seconds histogram",
        "# TYPE ladle:time_per_output_token_seconds histogram",
        "# TYPE ladle:e2e_request_latency_seconds histogram",
        "# TYPE ladle:request_queue_time_seconds histogram",
    ):
        assert name in text, name


def test_tokenize_detokenize(ladle_server, hf_reference):
    tokenizer = hf_reference.tokenizer
    r = httpx.post(ladle_server.url + "/tokenize", json={"model": ladle_server.model, "prompt": "Once upon"})
    body = r.json()
    assert body["tokens"] == tokenizer.encode("Once upon") and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 512
    r = httpx.post(
        ladle_server.url + "/detokenize", json={"model": ladle_server.model, "tokens": body["tokens"]}
    )
    assert r.json()["prompt"] == "Once upon"
    r = httpx.post(
        ladle_server.url + "/tokenize",
        json={"model": ladle_server.model, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.json()["tokens"] == hf_reference.chat_prompt([{"role": "user", "content": "hi"}])
    r = httpx.post(ladle_server.url + "/detokenize", json={"tokens": [10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_cors_is_off_by_default(ladle_server):
    r = httpx.get(ladle_server.url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_unknown_route_and_method_keep_the_api_shape(ladle_server):
    r = httpx.get(ladle_server.url + "/v1/nothing")
    assert r.status_code == 404 and "message" in r.json()["error"]
    r = httpx.get(ladle_server.url + "/api/generate")
    assert r.status_code == 405 and isinstance(r.json()["error"], str)


@pytest.fixture(scope="module")
def tiny_folder(tiny_model_factory):
    folder, _ = tiny_model_factory("llama")
    return folder


def test_engine_crash_fails_requests_and_health(tiny_folder):
    app = build_app(ServerConfig(models=[str(tiny_folder)]))
    with TestClient(app) as client:
        manager = app.state.ladle.manager
        while client.get("/health").status_code != 200:
            pass
        engine = manager.models[str(tiny_folder)].engine.engine

        def broken_step():
            raise RuntimeError("simulated device failure")

        engine.step = broken_step
        r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4})
        assert r.status_code == 503 and "simulated device failure" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 503
        r = client.post("/api/generate", json={"model": str(tiny_folder), "prompt": "hi"})
        assert r.status_code == 503 and "engine" in r.json()["error"]


def test_full_queue_is_503_with_retry_after(tiny_folder):
    app = build_app(ServerConfig(models=[str(tiny_folder)]), EngineOptions(max_num_seqs=1, max_queue=0))
    with TestClient(app) as client:
        while client.get("/health").status_code != 200:
            pass
        started, release = threading.Event(), threading.Event()

        def long_stream():
            body = {"prompt": "hi", "max_tokens": 400, "stream": True, "ignore_eos": True}
            with client.stream("POST", "/v1/completions", json=body) as r:
                for _ in r.iter_lines():
                    started.set()
                    if release.is_set():
                        break

        thread = threading.Thread(target=long_stream)
        thread.start()
        assert started.wait(30)
        r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
        release.set()
        thread.join(30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_async_engine_abort_frees_blocks(tiny_folder):
    async def main():
        engine = AsyncEngine(LLMEngine(EngineConfig(model=str(tiny_folder))), max_queue=0)
        try:
            params = SamplingParams(temperature=0, max_tokens=300, ignore_eos=True)
            stream = engine.generate("Once upon a time", params, request_id="a")
            first = await stream.__anext__()
            assert not first.finished
            # max_num_seqs (256) + max_queue (0) in flight is the cap; one more is refused.
            engine.engine.config.max_num_seqs = 1
            with pytest.raises(QueueFullError):
                await engine.generate("x", params).__anext__()
            await stream.aclose()  # the consumer goes away: the loop aborts the request at its next step
            for _ in range(100):
                if engine.stats.kv_cache_usage == 0 and engine.stats.num_running == 0:
                    break
                await asyncio.sleep(0.02)
            assert engine.stats.kv_cache_usage == 0 and engine.stats.num_running == 0
            assert engine.stats.finished_by_reason.get("length", 0) == 0
        finally:
            engine.shutdown()
        with pytest.raises(EngineDeadError):
            async for _ in engine.generate("x", params):
                pass

    asyncio.run(main())


def test_error_after_streaming_began_is_the_last_event(tiny_folder):
    app = build_app(ServerConfig(models=[str(tiny_folder)]))
    with TestClient(app) as client:
        while client.get("/health").status_code != 200:
            pass
        engine = app.state.ladle.manager.models[str(tiny_folder)].engine.engine
        real_step = engine.step
        body = {"prompt": "hi", "max_tokens": 200, "stream": True, "ignore_eos": True}
        events = []
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 1:
                        engine.step = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
        engine.step = real_step
        assert events[-1] == "[DONE]"
        assert "boom" in events[-2] and '"error"' in events[-2]


def test_load_on_first_request_and_health_while_loading(tiny_folder):
    app = build_app(ServerConfig())
    manager = app.state.ladle.manager
    gate = threading.Event()
    build = manager._build_engine

    def slow_build(name, path):
        gate.wait(30)
        return build(name, path)

    manager._build_engine = slow_build
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200  # nothing to load yet
        assert client.get("/v1/models").json()["data"] == []
        result = {}

        def first_request():
            body = {"model": str(tiny_folder), "prompt": "hi", "max_tokens": 2}
            result["response"] = client.post("/v1/completions", json=body)

        thread = threading.Thread(target=first_request)
        thread.start()
        for _ in range(200):
            if manager.is_loading:
                break
            threading.Event().wait(0.01)
        assert client.get("/health").status_code == 503
        gate.set()
        thread.join(60)
        assert result["response"].status_code == 200
        assert client.get("/health").status_code == 200
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [str(tiny_folder)]
        r = client.post("/v1/completions", json={"model": "/no/such/folder", "prompt": "hi"})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_cors_with_allowed_origins_and_host_parsing(tiny_folder):
    from ladle.cli.serve import parse_host

    assert parse_host(None) == ("127.0.0.1", 11434)
    assert parse_host("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_host("http://example.com:9") == ("example.com", 9)
    assert parse_host(":7000") == ("127.0.0.1", 7000)
    assert parse_host("somehost") == ("somehost", 11434)
    app = build_app(ServerConfig(allowed_origins=["http://ok.example"], api_key="k"))
    with TestClient(app) as client:
        pre = client.options(
            "/v1/models",
            headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ok.example"
        r = client.get("/v1/models", headers={"Origin": "http://ok.example", "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
        r = client.get("/v1/models", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers
