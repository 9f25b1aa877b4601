"""Tensor-parallel ranks placed on a Ray cluster (distributed_executor_backend="ray").

The engine process is rank 0, as with local processes; ranks 1..N-1 are Ray actors in a placement group
of N bundles (one GPU each on CUDA, one CPU each otherwise). Bundle 0 is pinned to the engine's node and
left empty: it reserves rank 0's device in Ray's accounting. PACK keeps the ranks on as few nodes as the
cluster allows (NCCL over NVLink within a node, over the network across nodes).

The actors connect back to the engine over the same socket control channel the local workers use, and join
the same NCCL/gloo group, whose rendezvous store runs on the engine's node. For gloo across nodes set
GLOO_SOCKET_IFNAME (NCCL: NCCL_SOCKET_IFNAME) when the default interface is not the one between nodes.

Joins a running cluster (ray.init(address="auto")) when there is one, else starts a local one.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def ensure_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError('distributed_executor_backend: "ray" needs Ray: pip install "ladle[ray]"') from None
    if not ray.is_initialized():
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:
            ray.init(log_to_driver=False)
    return ray


class _RankActor:
    def run(self, host: str, port: int, authkey: bytes, rank: int) -> None:
        from ladle.executor.worker import run_worker

        run_worker((host, port), authkey, rank)


def _path_env() -> dict[str, str]:
    """The driver's PYTHONPATH, absolute, so actors import the same ladle (source checkouts, tests)."""
    paths = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}


class RayLauncher:
    def __init__(self, world_size: int, device: torch.device, timeout_s: float = 300.0) -> None:
        ray = self.ray = ensure_ray()
        from ray.util.placement_group import placement_group

        self.host = ray.util.get_node_ip_address()
        bundle = {"GPU": 1, "CPU": 1} if device.type == "cuda" else {"CPU": 1}
        # Rank 0 is this process: its bundle must be on this node.
        bundles = [{**bundle, f"node:{self.host}": 0.001}] + [dict(bundle) for _ in range(world_size - 1)]
        self.pg = placement_group(bundles, strategy="PACK")
        ready, _ = ray.wait([self.pg.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.pg)
            raise ValueError(
                f"tensor_parallel_size={world_size}: the Ray cluster cannot place {world_size} bundles of "
                f"{bundle} (available: {ray.available_resources()})"
            )
        self.device_type = device.type
        self.actors: dict[int, Any] = {}
        self.runs: dict[int, Any] = {}

    def start(self, address: tuple[str, int], authkey: bytes, ranks: list[int], device: torch.device) -> None:
        ray = self.ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor_cls = ray.remote(_RankActor)
        for rank in ranks:
            actor = actor_cls.options(
                num_cpus=1,
                num_gpus=1 if device.type == "cuda" else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=rank
                ),
                runtime_env={"env_vars": _path_env()},
            ).remote()
            self.actors[rank] = actor
            self.runs[rank] = actor.run.remote(address[0], address[1], authkey, rank)

    def device_for(self, rank: int, device: torch.device) -> str:
        return "cuda:0" if device.type == "cuda" else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor

    def describe(self, rank: int) -> str:
        ref = self.runs.get(rank)
        if ref is None:
            return f"rank {rank}"
        ready, _ = self.ray.wait([ref], timeout=1.0)
        if not ready:
            return f"rank {rank} (Ray actor)"
        try:
            self.ray.get(ref)
            return f"rank {rank} (Ray actor, exited)"
        except Exception as exc:  # noqa: BLE001 - the actor's failure is the message
            return f"rank {rank} (Ray actor, {type(exc).__name__}: {str(exc).splitlines()[0][:200]})"

    def any_exited(self) -> int | None:
        if not self.runs:
            return None
        ready, _ = self.ray.wait(list(self.runs.values()), timeout=0)
        return next((r for r, ref in self.runs.items() if ref in ready), None)

    def stop(self, timeout: float = 5.0) -> None:
        ray = self.ray
        if self.runs:
            ray.wait(list(self.runs.values()), num_returns=len(self.runs), timeout=timeout)
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()
        self.runs.clear()
        ray.util.remove_placement_group(self.pg)
