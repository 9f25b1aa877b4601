"""Ray: a local cluster on loopback (started by the test) places a TP=2 engine's second rank as an actor and
gives transformers' greedy tokens; data-parallel replicas on Ray each serve requests."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ladle[ray]')")

from hf_reference import greedy  # noqa: E402
from ladle import LLM, SamplingParams  # noqa: E402
from ladle.distributed.group import WorkerDiedError  # noqa: E402

os.environ.setdefault("LADLE_TP_WORKER_THREADS", "1")
os.environ.setdefault("LADLE_TP_TIMEOUT_S", "120")

PROMPTS = [list(range(5, 8)), [(i * 13) % 350 + 4 for i in range(40)]]
ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def ray_cluster():
    # Ray actors import ladle from the same place as this process (tests run with PYTHONPATH=src).
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths.append(str(ROOT))  # deploy/ray_serve.py, imported by the Serve replicas
    sys.path.insert(0, str(ROOT))
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"LADLE_TP_WORKER_THREADS": "1", "OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def test_tp2_on_ray_matches_transformers(ray_cluster, tiny_model_factory):
    folder, model = tiny_model_factory("qwen3")
    expected = [greedy(model, prompt, 12, ignore_eos=True)[0] for prompt in PROMPTS]
    llm = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray")
    try:
        assert llm.llm_engine.runner.launcher.actors  # rank 1 really is a Ray actor
        outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
        assert [o.outputs[0].token_ids for o in outputs] == expected
        # A rank lost with its actor (node failure, OOM kill): the engine says so instead of hanging.
        ray.kill(llm.llm_engine.runner.launcher.actors[1])
        deadline = time.monotonic() + 30
        while llm.llm_engine.is_healthy() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not llm.llm_engine.is_healthy()
        with pytest.raises(WorkerDiedError, match=r"rank 1 \(Ray actor"):
            llm.generate([{"prompt_token_ids": PROMPTS[0]}], GREEDY)
    finally:
        llm.llm_engine.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_serve_replicas_both_answer(ray_cluster, tiny_model_factory):
    """deploy/ray_serve.py: 2 CPU replicas behind one endpoint; each answers and counts its own tokens."""
    if importlib.util.find_spec("ladle.server") is None:
        pytest.skip("this build has no ladle.server (the HTTP app each Serve replica runs)")
    import httpx
    from deploy.ray_serve import build
    from ray import serve

    folder, _ = tiny_model_factory("llama")
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        handle = serve.run(build(str(folder), num_replicas=2, num_cpus=0.5, device="cpu"), name="ladle")
        answered: dict[str, int] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while client.get("/health").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            for _ in range(8):
                r = client.post(
                    "/v1/completions", json={"model": str(folder), "prompt": "Once upon", "max_tokens": 4}
                )
                assert r.status_code == 200, r.text
                replica = r.headers["x-ladle-replica"]
                answered[replica] = answered.get(replica, 0) + 1
            r = client.post(
                "/api/generate",
                json={"model": str(folder), "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
            )
            assert r.status_code == 200, r.text
        assert len(answered) == 2, answered  # both replicas served
        stats = {}
        for _ in range(20):
            s = handle.replica_stats.remote().result()
            stats[s["replica"]] = s["models"][str(folder)]["generation_tokens"]
            if len(stats) == 2:
                break
        assert set(stats) == set(answered)
        assert all(tokens >= 4 for tokens in stats.values()), stats
    finally:
        serve.shutdown()
