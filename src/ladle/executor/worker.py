"""One tensor-parallel rank in its own process: joins the group, loads its slice of the model and KV pool,
then runs every step the engine sends until told to stop (or until the engine's connection closes).

Control channel: a multiprocessing.connection (socket + authkey) to the engine, used the same way whether
the process was started by multiprocessing (one host) or as a Ray actor (any node). Messages are pickled
tuples (kind, payload):
  engine -> worker: ("init", WorkerInit), ("step", StepInput), ("call", (runner method, args)), ("stop", None)
  worker -> engine: ("hello", (rank, pid)), ("ready", None), ("ok", None), ("error", traceback text)
A step gets no reply: the ranks meet in the step's collectives, and rank 0 (in the engine) returns logits.
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection
from typing import Any

import torch

from ladle.config import EngineConfig
from ladle.engine.scheduler import ScheduledBatch


@dataclass
class WorkerInit:
    config: EngineConfig
    rank: int
    world_size: int
    backend: str  # nccl or gloo
    store_host: str
    store_port: int
    device: str
    dtype: torch.dtype
    max_positions: int
    timeout_s: float
    num_threads: int | None = None  # torch CPU threads (None: torch's default)


# -- what a step sends: only what ModelRunner.execute reads from each request ---------------------------
class TokenWindow:
    """Stands in for a request's all_token_ids: holds only this step's new tokens (the runner reads exactly
    that slice), so a step costs O(new tokens) to send, not O(sequence length)."""

    __slots__ = ("start", "tokens")

    def __init__(self, start: int, tokens: list[int]) -> None:
        self.start, self.tokens = start, tokens

    def __getitem__(self, key: slice | int) -> list[int] | int:
        if isinstance(key, slice) and key.start == self.start and key.stop == self.start + len(self.tokens):
            return self.tokens
        if isinstance(key, int) and 0 <= key - self.start < len(self.tokens):  # the runner's decode path
            return self.tokens[key - self.start]
        raise IndexError(
            f"a tensor-parallel worker only has tokens {self.start}:{self.start + len(self.tokens)}"
        )


@dataclass
class _Params:
    prompt_logprobs: int | None


@dataclass
class StepRequest:
    num_computed_tokens: int
    num_tokens: int
    num_prompt_tokens: int
    block_ids: list[int]
    all_token_ids: TokenWindow
    params: _Params


@dataclass
class StepInput:
    requests: list[StepRequest] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    @classmethod
    def from_batch(cls, batch: ScheduledBatch) -> StepInput:
        requests = []
        for req, num_new in zip(batch.requests, batch.num_new_tokens):
            start = req.num_computed_tokens
            requests.append(
                StepRequest(
                    num_computed_tokens=start,
                    num_tokens=req.num_tokens,
                    num_prompt_tokens=req.num_prompt_tokens,
                    block_ids=list(req.block_ids),
                    all_token_ids=TokenWindow(start, list(req.all_token_ids[start : start + num_new])),
                    params=_Params(req.params.prompt_logprobs),
                )
            )
        return cls(requests, list(batch.num_new_tokens))

    def to_batch(self) -> ScheduledBatch:
        return ScheduledBatch(requests=self.requests, num_new_tokens=self.num_new_tokens)  # type: ignore[arg-type]


# -- building one rank ---------------------------------------------------------------------------------
def attention_backend(config: EngineConfig, device: torch.device):
    """The backend the engine would pick for this device (the kernels' selector when it exists)."""
    from ladle.layers import attention

    select = getattr(attention, "get_attention_backend", None)
    if select is not None:
        return select(getattr(config, "attention_backend", "auto"), device)
    return attention.TorchAttentionBackend()


def build_rank_runner(
    config: EngineConfig, ckpt, group, device: torch.device, dtype: torch.dtype, max_positions: int
):
    from ladle.distributed.sharding import load_rank_model
    from ladle.executor.model_runner import ModelRunner

    torch.manual_seed(config.seed)
    model = load_rank_model(
        ckpt,
        group,
        device,
        dtype,
        attention_backend(config, device),
        max_positions=max_positions,
        dummy=config.load_format == "dummy",
        seed=config.seed,
    )
    if device.type == "cuda" and hasattr(model, "fuse_weights"):
        model.fuse_weights()  # as the single-GPU engine does: this rank's q/k/v (gate/up) shards in one GEMM
    from ladle.executor.device import resolve_kv_cache_dtype

    kv_dtype = resolve_kv_cache_dtype(config.kv_cache_dtype, dtype, device, ckpt.format)
    return ModelRunner(model, device, dtype, config.block_size, kv_dtype)


def _send(conn: Connection, kind: str, payload: Any = None) -> None:
    conn.send_bytes(pickle.dumps((kind, payload)))


def run_worker(address: tuple[str, int], authkey: bytes, rank: int) -> None:
    """The worker process's main: connects back to the engine and serves it until stopped."""
    conn = Client(address, authkey=authkey)
    try:
        _send(conn, "hello", (rank, os.getpid()))
        _serve(conn, rank)
    except (EOFError, ConnectionError, KeyboardInterrupt):
        pass  # the engine went away: nothing left to serve
    except BaseException:
        try:
            _send(conn, "error", traceback.format_exc())
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        conn.close()


def _serve(conn: Connection, rank: int) -> None:
    from ladle.distributed.group import init_group
    from ladle.loader.checkpoint import open_checkpoint

    kind, init = pickle.loads(conn.recv_bytes())
    assert kind == "init" and init.rank == rank
    if init.num_threads:
        torch.set_num_threads(init.num_threads)
    device = torch.device(init.device)
    group = init_group(
        init.backend, rank, init.world_size, init.store_host, init.store_port, init.timeout_s, device
    )
    cfg = init.config
    ckpt = open_checkpoint(cfg.model, cfg.load_format, cfg.tokenizer)
    runner = build_rank_runner(cfg, ckpt, group, device, init.dtype, init.max_positions)
    _send(conn, "ready")
    while True:
        kind, payload = pickle.loads(conn.recv_bytes())
        if kind == "step":
            runner.execute(payload.to_batch())
        elif kind == "call":
            # A runner method that runs the model (allocate_kv_cache, profile_run, capture_graphs): every
            # rank runs it in the same order as rank 0, since the forward passes meet in collectives.
            name, args = payload
            getattr(runner, name)(*args)
            _send(conn, "ok")
        elif kind == "stop":
            return
        else:
            raise RuntimeError(f"unknown control message {kind!r}")


def main(argv: list[str] | None = None) -> None:
    """`python -m ladle.executor.worker HOST PORT RANK` with the authkey in LADLE_WORKER_AUTHKEY (hex):
    a fresh interpreter, so the user's __main__ is never re-imported (multiprocessing's spawn would)."""
    import sys

    host, port, rank = (argv or sys.argv[1:])[:3]
    authkey = bytes.fromhex(os.environ.pop("LADLE_WORKER_AUTHKEY"))
    run_worker((host, int(port)), authkey, int(rank))


if __name__ == "__main__":
    main()
