"""Data parallelism on one host: K engine replicas of one model behind one server (`ladle serve
--data-parallel-size K`).

ReplicaPool has the face of one AsyncEngine (generate, abort, stats, is_dead, tokenizer, max_model_len,
engine, shutdown), so the model manager can hold a pool where it holds an engine. Each request goes to the
live replica with the fewest requests in flight; ties go round-robin, so an idle server still spreads
requests over every replica. A replica that died is skipped; the pool is dead only when all are.

Replica i of a tensor-parallel engine on GPUs uses devices i*tp .. i*tp+tp-1 (replica_configs).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

from ladle.config import EngineConfig


def replica_configs(config: EngineConfig, data_parallel_size: int) -> list[EngineConfig]:
    """One EngineConfig per replica; on CUDA each replica gets its own block of tensor_parallel_size GPUs."""
    if data_parallel_size < 1:
        raise ValueError(f"data_parallel_size must be >= 1, got {data_parallel_size}")
    configs = []
    for i in range(data_parallel_size):
        device = config.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            base = int(device.split(":")[1]) if ":" in device else 0
            device = f"cuda:{base + i * config.tensor_parallel_size}"
        configs.append(dataclasses.replace(config, device=device, seed=config.seed + i))
    return configs


class ReplicaPool:
    def __init__(self, replicas: list[Any]) -> None:
        if not replicas:
            raise ValueError("a replica pool needs at least one replica")
        self.replicas = list(replicas)
        self._turn = itertools.count()
        self._ids = itertools.count()
        self._owner: dict[str, Any] = {}
        self.num_routed = [0] * len(self.replicas)  # requests each replica was given (per-replica metric)

    # -- the AsyncEngine face ------------------------------------------------------------------------------
    @property
    def engine(self):
        return self.replicas[0].engine

    @property
    def tokenizer(self):
        return self.replicas[0].tokenizer

    @property
    def max_model_len(self) -> int:
        return min(r.max_model_len for r in self.replicas)

    @property
    def is_dead(self) -> bool:
        return all(r.is_dead for r in self.replicas)

    @property
    def dead_error(self) -> BaseException | None:
        errors = [r.dead_error for r in self.replicas if r.dead_error is not None]
        return errors[0] if len(errors) == len(self.replicas) else None

    @property
    def num_in_flight(self) -> int:
        return sum(r.num_in_flight for r in self.replicas)

    @property
    def stats(self) -> Any:
        return merge_stats([r.stats for r in self.replicas])

    def new_request_id(self, prefix: str = "req") -> str:
        return f"{prefix}-dp{next(self._ids)}"

    def pick(self) -> int:
        """The index of the live replica with the fewest requests in flight (round-robin among equals)."""
        live = [i for i, r in enumerate(self.replicas) if not r.is_dead]
        if not live:
            return 0  # every replica is dead: let it raise its own error
        start = next(self._turn) % len(self.replicas)
        order = sorted(live, key=lambda i: (self.replicas[i].num_in_flight, (i - start) % len(self.replicas)))
        return order[0]

    async def generate(self, prompt: Any, params: Any, request_id: str | None = None) -> AsyncIterator[Any]:
        request_id = request_id or self.new_request_id()
        index = self.pick()
        replica = self.replicas[index]
        self.num_routed[index] += 1
        self._owner[request_id] = replica
        try:
            async for out in replica.generate(prompt, params, request_id=request_id):
                yield out
        finally:
            self._owner.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        replica = self._owner.get(request_id)
        if replica is not None:
            replica.abort(request_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        for replica in self.replicas:
            replica.shutdown(timeout)


def merge_stats(snapshots: list[Any]) -> Any:
    """Sums per-replica stats dataclasses field by field (dicts key by key); usage fractions are averaged."""
    first = snapshots[0]
    if not dataclasses.is_dataclass(first):
        return first
    values: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        items = [getattr(s, f.name) for s in snapshots]
        if isinstance(items[0], dict):
            merged: dict[Any, Any] = {}
            for item in items:
                for key, value in item.items():
                    merged[key] = merged.get(key, 0) + value
            values[f.name] = merged
        elif isinstance(items[0], float):
            values[f.name] = sum(items) / len(items)
        elif isinstance(items[0], int):
            values[f.name] = sum(items)
        else:
            values[f.name] = items[0]
    return type(first)(**values)
