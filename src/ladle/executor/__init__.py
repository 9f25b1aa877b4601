"""Executors: ModelRunner (one device) and, for tensor parallelism, TPExecutor driving several ranks."""

from __future__ import annotations

from typing import Any


def create_tp_executor(config: Any, ckpt: Any, device: Any, dtype: Any, max_positions: int) -> Any:
    """A TPExecutor whose workers run as local processes ("mp") or Ray actors ("ray")."""
    from ladle.executor.multiproc_executor import TPExecutor

    launcher = None
    if config.distributed_executor_backend == "ray":
        from ladle.executor.ray_executor import RayLauncher

        launcher = RayLauncher(config.tensor_parallel_size, device)
    return TPExecutor(config, ckpt, device, dtype, max_positions, launcher=launcher)
