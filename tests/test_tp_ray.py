"""Ray: a local cluster on loopback (started by the test) places a TP=2 engine's second rank as an actor and
gives transformers' greedy tokens; data-parallel replicas on Ray each serve requests."""

from __future__ import annotations

import os

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ladle[ray]')")

from ladle import LLM, SamplingParams  # noqa: E402

os.environ.setdefault("LADLE_TP_WORKER_THREADS", "1")
os.environ.setdefault("LADLE_TP_TIMEOUT_S", "120")

PROMPTS = [list(range(5, 8)), [(i * 13) % 350 + 4 for i in range(40)]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def ray_cluster():
    # Ray actors import ladle from the same place as this process (tests run with PYTHONPATH=src).
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
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
    expected = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False
            )
        expected.append(out[0].tolist()[len(prompt) :])
    llm = LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="ray")
    try:
        assert llm.llm_engine.runner.launcher.actors  # rank 1 really is a Ray actor
        outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY)
        assert [o.outputs[0].token_ids for o in outputs] == expected
    finally:
        llm.llm_engine.shutdown()
