"""A tensor-parallel process group: NCCL between GPUs, gloo between CPU processes.

Each engine owns its group as a ProcessGroup object instead of torch.distributed's process-global default
group, so one process can hold several engines (a server with several models, data-parallel replicas) and
create and drop groups freely. Collectives are called on the object directly.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


class WorkerDiedError(RuntimeError):
    """A tensor-parallel rank died or failed; the engine that drove it cannot continue."""


class TPGroup:
    """rank and world_size of this process in its engine's tensor-parallel group, and the collectives the
    sharded layers use. A group of size 1 does nothing, so layers need no special case."""

    def __init__(self, rank: int, world_size: int, pg: dist.ProcessGroup | None, backend: str) -> None:
        self.rank, self.world_size, self.pg, self.backend = rank, world_size, pg, backend

    @classmethod
    def single(cls) -> TPGroup:
        return cls(0, 1, None, "none")

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            self.pg.allreduce([tensor]).wait()
        return tensor

    def gather_to_first(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's `tensor` (same shape everywhere) on rank 0, in rank order; None on the others."""
        if self.world_size == 1:
            return [tensor]
        tensor = tensor.contiguous()
        opts = dist.GatherOptions()
        opts.rootRank = 0
        if self.rank == 0:
            out = [torch.empty_like(tensor) for _ in range(self.world_size)]
            self.pg.gather([out], [tensor], opts).wait()
            return out
        self.pg.gather([], [tensor], opts).wait()
        return None

    def abort(self) -> None:
        """Unblocks collectives waiting on a dead peer (NCCL would otherwise wait for its timeout)."""
        if self.pg is not None and hasattr(self.pg, "abort"):
            try:
                self.pg.abort()
            except Exception:  # noqa: BLE001 - best effort while tearing down
                pass


def init_group(
    backend: str, rank: int, world_size: int, host: str, port: int, timeout_s: float, device: torch.device
) -> TPGroup:
    """Joins the group whose TCPStore rank 0 serves at host:port. Blocks until every rank has joined (or the
    timeout passes)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout, wait_for_workers=False)
    return group_from_store(backend, store, rank, world_size, timeout, device)


def create_store(host: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port (store.port), created before the workers know where it is."""
    return dist.TCPStore(
        host, 0, world_size, True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False
    )


def group_from_store(
    backend: str,
    store: dist.Store,
    rank: int,
    world_size: int,
    timeout: datetime.timedelta,
    device: torch.device,
) -> TPGroup:
    if backend == "nccl":
        # "cuda" without an index means the current device (rank 0 in the engine process).
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
        # The options torch.distributed's own NCCL groups get (distributed_c10d._new_process_group_helper).
        opts = dist.ProcessGroupNCCL.Options()
        opts.is_high_priority_stream = False
        opts._timeout = timeout
        opts.global_ranks_in_group = list(range(world_size))
        opts.group_name = f"ladle-tp-{store.port if hasattr(store, 'port') else id(store)}"
        pg = dist.ProcessGroupNCCL(dist.PrefixStore("ladle-tp", store), rank, world_size, opts)
    elif backend == "gloo":
        pg = dist.ProcessGroupGloo(dist.PrefixStore("ladle-tp", store), rank, world_size, timeout)
    else:
        raise ValueError(f"unknown distributed backend {backend!r} (use nccl or gloo)")
    group = TPGroup(rank, world_size, pg, backend)
    # The first collective finishes the connection set-up; do it now, so a broken network fails at load.
    group.all_reduce(torch.zeros(1, device=device))
    return group


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"
