"""Data-parallel replicas on one host: least-loaded routing with round-robin ties, dead replicas skipped,
stats summed, one device block per replica."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from ladle.config import EngineConfig
from ladle.engine.replicas import ReplicaPool, merge_stats, replica_configs


@dataclass
class Stats:
    num_running: int = 0
    kv_cache_usage: float = 0.0
    finished_by_reason: dict = field(default_factory=dict)


class FakeEngine:
    def __init__(self, name: str) -> None:
        self.name, self.is_dead, self.dead_error = name, False, None
        self.served: list[str] = []
        self.in_flight = 0
        self.release = asyncio.Event()
        self.stats = Stats(1, 0.5, {"stop": 1})

    @property
    def num_in_flight(self) -> int:
        return self.in_flight

    async def generate(self, prompt, params, request_id=None):
        self.in_flight += 1
        self.served.append(request_id)
        try:
            await self.release.wait()
            yield (self.name, prompt)
        finally:
            self.in_flight -= 1


def test_routes_to_least_loaded_then_round_robin():
    async def scenario():
        a, b = FakeEngine("a"), FakeEngine("b")
        pool = ReplicaPool([a, b])

        async def one(i):
            return [out async for out in pool.generate(f"p{i}", None)]

        tasks = [asyncio.create_task(one(i)) for i in range(4)]
        await asyncio.sleep(0.01)
        assert (a.in_flight, b.in_flight) == (2, 2)  # concurrent requests spread evenly
        a.release.set()
        b.release.set()
        results = await asyncio.gather(*tasks)
        assert sorted(r[0][0] for r in results) == ["a", "a", "b", "b"]
        # Idle pool: consecutive requests still alternate.
        names = [(await anext_out(pool))[0] for _ in range(4)]
        assert sorted(names) == ["a", "a", "b", "b"]
        assert pool.num_routed == [4, 4]
        b.is_dead = True
        assert [(await anext_out(pool))[0] for _ in range(3)] == ["a", "a", "a"]
        assert not pool.is_dead
        a.is_dead = True
        assert pool.is_dead

    async def anext_out(pool):
        return [out async for out in pool.generate("x", None)][0]

    asyncio.run(scenario())


def test_merge_stats_sums_counters():
    merged = merge_stats([Stats(1, 0.2, {"stop": 1}), Stats(2, 0.4, {"stop": 2, "length": 1})])
    assert merged.num_running == 3
    assert merged.kv_cache_usage == pytest.approx(0.3)
    assert merged.finished_by_reason == {"stop": 3, "length": 1}


def test_replica_devices():
    config = EngineConfig(model="m", device="cuda:0", tensor_parallel_size=2)
    devices = [c.device for c in replica_configs(config, 3)]
    assert devices == ["cuda:0", "cuda:2", "cuda:4"]
    assert [c.device for c in replica_configs(EngineConfig(model="m", device="cpu"), 2)] == ["cpu", "cpu"]
