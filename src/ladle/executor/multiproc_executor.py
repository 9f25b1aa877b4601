"""TPExecutor: runs one model over tensor_parallel_size ranks and looks like a ModelRunner to the engine
(execute, allocate_kv_cache, model).

Rank 0 lives in the engine process: it receives the logits straight from its LM-head gather, so nothing
vocabulary-sized crosses a process boundary, and the sampler keeps working on local tensors. Ranks
1..N-1 are worker processes (executor/worker.py), started here as fresh interpreters on this host
(`python -m ladle.executor.worker`, the spawn model without re-importing the user's __main__) or as Ray
actors (ray_executor.py). The engine (scheduler, KV manager, sampler) exists once; each step it sends the
batch's few numbers to the workers, then runs rank 0's share; the ranks meet in the collectives.

Failure: a monitor thread reads every worker connection. A worker that dies (its socket closes) or reports
an error marks the executor dead at once (is_healthy() -> False), aborts the group so rank 0 isn't left
waiting in a collective, and the next (or current) step raises WorkerDiedError naming the rank. Every wait
on a worker has a timeout (LADLE_TP_TIMEOUT_S, default 600 s), so nothing hangs.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

import torch

from ladle.config import EngineConfig
from ladle.distributed.group import TPGroup, WorkerDiedError, backend_for, create_store, group_from_store
from ladle.distributed.sharding import check_tp_support
from ladle.engine.scheduler import ScheduledBatch
from ladle.executor.worker import StepInput, WorkerInit, build_rank_runner

logger = logging.getLogger(__name__)


def default_timeout_s() -> float:
    # Long enough for a big model's load or a long prefill on a slow host; bounded so nothing hangs forever.
    return float(os.environ.get("LADLE_TP_TIMEOUT_S", "600"))


class ProcessLauncher:
    """Ranks 1..N-1 as local processes."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, address: tuple[str, int], authkey: bytes, ranks: list[int], device: torch.device) -> None:
        if device.type == "cuda":
            needed = (device.index or 0) + len(ranks) + 1
            if needed > torch.cuda.device_count():
                raise ValueError(
                    f"tensor_parallel_size: {len(ranks) + 1} GPUs from {device} needs {needed} visible GPUs, "
                    f"this host shows {torch.cuda.device_count()}"
                )
        env = dict(os.environ, LADLE_WORKER_AUTHKEY=authkey.hex())
        # Keep the engine's import path (tests and source checkouts run with PYTHONPATH or sys.path edits).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for rank in ranks:
            cmd = [sys.executable, "-m", "ladle.executor.worker", address[0], str(address[1]), str(rank)]
            self.procs[rank] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def device_for(self, rank: int, device: torch.device) -> str:
        if device.type == "cuda":
            base = device.index or 0
            return f"cuda:{base + rank}"
        return "cpu"

    def describe(self, rank: int) -> str:
        proc = self.procs.get(rank)
        if proc is None:
            return f"rank {rank}"
        code = proc.poll()
        if code is None:
            try:
                code = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        state = f"exit code {code}" if code is not None else "still running"
        return f"rank {rank} (pid {proc.pid}, {state})"

    def any_exited(self) -> int | None:
        return next((r for r, p in self.procs.items() if p.poll() is not None), None)

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _send(conn: Connection, kind: str, payload: Any = None) -> None:
    conn.send_bytes(pickle.dumps((kind, payload)))


class TPExecutor:
    def __init__(
        self,
        config: EngineConfig,
        ckpt,
        device: torch.device,
        dtype: torch.dtype,
        max_positions: int,
        launcher: Any | None = None,
    ) -> None:
        self.world_size = tp = config.tensor_parallel_size
        check_tp_support(ckpt.arch, tp)
        self.timeout_s = default_timeout_s()
        self.launcher = launcher or ProcessLauncher()
        self.backend = backend_for(device)
        self.dead_error: WorkerDiedError | None = None
        self._closed = False
        self._conns: dict[int, Connection] = {}
        self._replies: dict[int, queue.Queue] = {r: queue.Queue() for r in range(1, tp)}
        self._errors: dict[int, str] = {}
        self.group: TPGroup | None = None
        self._authkey = os.urandom(16)
        self._listener = Listener((self.launcher.host, 0), authkey=self._authkey)
        self._finalizer = weakref.finalize(self, _close, self._listener, self._conns, self.launcher)
        try:
            self._start(config, ckpt, device, dtype, max_positions)
        except BaseException:
            self.shutdown()
            raise

    # -- start-up ----------------------------------------------------------------------------------------
    def _start(self, config, ckpt, device, dtype, max_positions) -> None:
        tp, host = self.world_size, self.launcher.host
        ranks = list(range(1, tp))
        self.launcher.start(self._listener.address, self._authkey, ranks, device)
        self._accept(ranks)
        self._monitor = threading.Thread(
            target=_watch, args=(weakref.ref(self), dict(self._conns)), name="ladle-tp-monitor", daemon=True
        )
        self._monitor.start()
        store = create_store(host, tp, self.timeout_s)
        # CPU ranks share the host's cores: by default each worker takes its share (rank 0 keeps torch's
        # setting, which the engine process owns).
        threads = os.environ.get("LADLE_TP_WORKER_THREADS")
        if not threads and device.type == "cpu":
            threads = str(max(1, (os.cpu_count() or 1) // tp))
        for rank in ranks:
            init = WorkerInit(
                config=config,
                rank=rank,
                world_size=tp,
                backend=self.backend,
                store_host=host,
                store_port=store.port,
                device=self.launcher.device_for(rank, device),
                dtype=dtype,
                max_positions=max_positions,
                timeout_s=self.timeout_s,
                num_threads=int(threads) if threads else None,
            )
            _send(self._conns[rank], "init", init)
        import datetime

        self.group = group_from_store(
            self.backend, store, 0, tp, datetime.timedelta(seconds=self.timeout_s), device
        )
        self._store = store
        self.runner = build_rank_runner(config, ckpt, self.group, device, dtype, max_positions)
        self.model = self.runner.model
        self._await_all("ready", "loading the model")

    def _accept(self, ranks: list[int]) -> None:
        """Accepts one connection per worker, failing fast if one exits first or the timeout passes."""
        accepted: queue.Queue = queue.Queue()

        def accept_loop() -> None:
            for _ in ranks:
                try:
                    conn = self._listener.accept()
                    kind, (rank, _pid) = pickle.loads(conn.recv_bytes())
                    accepted.put((rank, conn))
                except Exception as exc:  # noqa: BLE001 - reported by the waiting side
                    accepted.put(exc)
                    return

        threading.Thread(target=accept_loop, name="ladle-tp-accept", daemon=True).start()
        deadline = time.monotonic() + self.timeout_s
        while len(self._conns) < len(ranks):
            try:
                item = accepted.get(timeout=0.5)
            except queue.Empty:
                exited = self.launcher.any_exited()
                if exited is not None:
                    raise WorkerDiedError(
                        f"tensor-parallel worker {self.launcher.describe(exited)} exited during start-up"
                    ) from None
                if time.monotonic() > deadline:
                    raise WorkerDiedError(
                        f"tensor-parallel workers did not connect within {self.timeout_s:.0f} s"
                    ) from None
                continue
            if isinstance(item, Exception):
                raise WorkerDiedError(f"tensor-parallel worker connection failed: {item}")
            rank, conn = item
            self._conns[rank] = conn

    # -- the monitor -------------------------------------------------------------------------------------
    def _on_message(self, rank: int, kind: str | None, payload: Any) -> None:
        if kind is None:  # the connection closed: the worker is gone
            if not self._closed:
                self._mark_dead(rank)
        elif kind == "error":
            self._errors[rank] = payload
            logger.error("tensor-parallel worker rank %d failed:\n%s", rank, payload)
        else:
            self._replies[rank].put(kind)

    def _mark_dead(self, rank: int) -> None:
        if self.dead_error is not None:
            return
        detail = self._errors.get(rank)
        last = f": {detail.strip().splitlines()[-1]}" if detail else ""
        self.dead_error = WorkerDiedError(
            f"tensor-parallel worker {self.launcher.describe(rank)} died{last}; this engine is stopped"
        )
        logger.error("%s", self.dead_error)
        if self.group is not None and self.backend == "nccl":
            self.group.abort()  # gloo sees the closed socket by itself; NCCL would wait for its timeout
        for replies in self._replies.values():
            replies.put(None)

    def _await_all(self, kind: str, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        for rank, replies in self._replies.items():
            try:
                got = replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerDiedError(
                    f"tensor-parallel worker rank {rank} did not finish {what} within {self.timeout_s:.0f} s"
                ) from None
            if got != kind:
                self._raise_dead()

    def _raise_dead(self, cause: BaseException | None = None) -> None:
        # The monitor may need a moment to see the socket close after a collective failed.
        for _ in range(50):
            if self.dead_error is not None:
                break
            time.sleep(0.02)
        error = self.dead_error or WorkerDiedError(
            f"a tensor-parallel step failed ({cause!r}); the ranks are out of step, so this engine is stopped"
        )
        self.dead_error = error
        raise error from cause

    # -- the ModelRunner face ----------------------------------------------------------------------------
    def is_healthy(self) -> bool:
        return self.dead_error is None and not self._closed

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self._call_all("allocate_kv_cache", num_blocks)

    def profile_run(self, num_tokens: int, num_seqs: int, sampler=None) -> None:
        # Only rank 0 samples; the workers run the same forward passes (their collectives pair with ours).
        self._call_all("profile_run", num_tokens, num_seqs, local_args=(sampler,))

    def capture_graphs(self, max_num_seqs: int, max_model_len: int) -> float:
        # Every rank captures the same batch sizes in the same order: a captured step's collectives must
        # pair across ranks exactly as eager ones do.
        return self._call_all("capture_graphs", max_num_seqs, max_model_len)

    def _call_all(self, name: str, *args: Any, local_args: tuple = ()) -> Any:
        if self.dead_error is not None:
            raise self.dead_error
        self._broadcast("call", (name, args))
        try:
            result = getattr(self.runner, name)(*args, *local_args)
        except Exception as exc:
            self._raise_dead(exc)
        self._await_all("ok", name)
        return result

    def __getattr__(self, name: str) -> Any:
        # Plain attributes (kv_caches, graphs, device...) read through to rank 0's runner. Methods don't:
        # one that runs the model on rank 0 alone would wait forever in its collectives.
        if name.startswith("_") or "runner" not in self.__dict__:
            raise AttributeError(name)
        value = getattr(self.runner, name)
        if callable(value):
            raise AttributeError(
                f"TPExecutor does not forward ModelRunner.{name}() to its workers; add it to the executor"
            )
        return value

    def execute(self, batch: ScheduledBatch):
        if self.dead_error is not None:
            raise self.dead_error
        self._broadcast("step", StepInput.from_batch(batch))
        try:
            return self.runner.execute(batch)
        except Exception as exc:
            self._raise_dead(exc)

    def _broadcast(self, kind: str, payload: Any) -> None:
        blob = pickle.dumps((kind, payload))
        try:
            for conn in self._conns.values():
                conn.send_bytes(blob)
        except OSError as exc:
            self._raise_dead(exc)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer()


def _close(listener: Listener, conns: dict[int, Connection], launcher: Any) -> None:
    for conn in conns.values():
        try:
            _send(conn, "stop")
        except OSError:
            pass
    launcher.stop()
    for conn in conns.values():
        conn.close()
    listener.close()


def _watch(ref: weakref.ref, conns: dict[int, Connection]) -> None:
    """The monitor thread: reads every worker's messages and notices a closed connection at once. It holds
    the executor only weakly, so dropping the engine still shuts its workers down (weakref.finalize)."""
    live = {conn: rank for rank, conn in conns.items()}
    while live:
        try:
            ready = wait(list(live), timeout=1.0)
        except OSError:
            return  # the connections were closed by shutdown
        executor = ref()
        if executor is None or executor._closed:
            return
        for conn in ready:
            rank = live[conn]
            try:
                kind, payload = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                del live[conn]
                kind, payload = None, None
            executor._on_message(rank, kind, payload)
        del executor
