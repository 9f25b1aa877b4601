"""The server with tensor parallelism and data-parallel replicas: `ladle serve --tensor-parallel-size 2`
serves, and /health turns 503 at once when a TP worker dies; `--data-parallel-size 2` spreads requests
over both replicas (each counts its own tokens; /metrics sums them)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fastapi.testclient import TestClient

from ladle.cli.main import _build_parser
from ladle.engine.replicas import ReplicaPool
from ladle.models_hub.manager import EngineOptions
from ladle.server.app import build_app
from ladle.server.state import ServerConfig

os.environ.setdefault("LADLE_TP_WORKER_THREADS", "1")
os.environ.setdefault("LADLE_TP_TIMEOUT_S", "120")


def test_serve_flags():
    args = _build_parser().parse_args(
        [
            "serve",
            "m",
            "--tensor-parallel-size",
            "2",
            "--data-parallel-size",
            "3",
            "--distributed-executor-backend",
            "ray",
        ]
    )
    assert (args.tensor_parallel_size, args.data_parallel_size, args.distributed_executor_backend) == (
        2,
        3,
        "ray",
    )


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 120
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, client.get("/health").text
        time.sleep(0.2)


def _complete(client: TestClient, model: str) -> dict:
    body = {"model": model, "prompt": [5, 6, 7], "max_tokens": 5, "temperature": 0, "ignore_eos": True}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.timeout(180)
def test_tp2_server_serves_and_health_turns_503_when_a_worker_dies(tiny_model_factory):
    folder, _ = tiny_model_factory("llama")
    model = str(folder)
    app = build_app(ServerConfig(models=[model]), EngineOptions(device="cpu", tensor_parallel_size=2))
    with TestClient(app) as client:
        _ready(client)
        from ladle import LLM

        reference = LLM(model).generate([{"prompt_token_ids": [5, 6, 7]}], _greedy(5))[0].outputs[0].token_ids
        out = _complete(client, model)
        assert out["usage"]["completion_tokens"] == 5
        engine = app.state.ladle.manager.models[model].engine.engine
        got = engine.tokenizer.encode(out["choices"][0]["text"], add_special_tokens=False)
        assert got == reference or out["choices"][0]["text"] == engine.tokenizer.decode(reference)
        os.kill(engine.runner.launcher.procs[1].pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while client.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = client.get("/health")
        assert r.status_code == 503, r.text
        body = {"model": model, "prompt": [5, 6, 7], "max_tokens": 5}
        assert client.post("/v1/completions", json=body).status_code >= 500  # an error, not a hang


def _greedy(n: int):
    from ladle import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


@pytest.mark.timeout(180)
def test_data_parallel_replicas_both_serve(tiny_model_factory):
    folder, _ = tiny_model_factory("qwen2")
    model = str(folder)
    app = build_app(ServerConfig(models=[model]), EngineOptions(device="cpu", data_parallel_size=2))
    with TestClient(app) as client:
        _ready(client)
        outs = [_complete(client, model) for _ in range(4)]
        assert len({o["choices"][0]["text"] for o in outs}) == 1  # same weights, same greedy answer
        pool = app.state.ladle.manager.models[model].engine
        assert isinstance(pool, ReplicaPool)
        assert pool.num_routed == [2, 2]
        per_replica = [r.stats.generation_tokens for r in pool.replicas]
        assert per_replica == [10, 10]
        metrics = client.get("/metrics").text
        line = next(ln for ln in metrics.splitlines() if ln.startswith("ladle:generation_tokens_total"))
        assert float(line.rsplit(" ", 1)[1]) == 20
