"""AsyncEngine: one LLMEngine driven by a background thread, with an asyncio stream per request.

LLMEngine is not thread-safe, so exactly one thread (the loop thread) ever touches it. The asyncio side only
puts commands (add / abort) on a lock-protected list that the loop applies at the top of each step, and
receives outputs through per-request asyncio queues fed with `loop.call_soon_threadsafe`. The model's torch
work releases the GIL, so the event loop stays responsive while a step runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ladle.engine.llm_engine import LLMEngine
from ladle.outputs import RequestOutput
from ladle.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop crashed; no further requests can be served by this engine."""


class QueueFullError(RuntimeError):
    """More requests are waiting than the configured queue allows (LADLE_MAX_QUEUE)."""


@dataclass
class EngineStats:
    """A snapshot the loop thread publishes after each step, so readers never touch the engine."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_kv_blocks: int = 0
    num_free_kv_blocks: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue  # RequestOutput items, then an exception or None at the end
    finished: bool = False


# Sentinel put on a stream's queue when the request ended without a final output (aborted).
_END = None


class AsyncEngine:
    def __init__(
        self,
        engine: LLMEngine,
        max_queue: int = 512,
        on_finished: Callable[[RequestOutput], None] | None = None,
    ) -> None:
        self.engine = engine
        # Requests beyond the running slots wait; at most max_queue of them (a full queue answers 503).
        self.max_queue = max_queue
        self.on_finished = on_finished
        self.stats = EngineStats()
        self.dead_error: BaseException | None = None
        self._streams: dict[str, _Stream] = {}
        self._commands: list[tuple[str, Any]] = []
        self._outbox: list[tuple[_Stream, Any]] = []  # loop thread only
        self._wakeup = threading.Condition()
        self._stopping = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run_loop, name="ladle-engine-loop", daemon=True)
        self._publish_stats()
        self._thread.start()

    # -- the asyncio side --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_dead(self) -> bool:
        # A tensor-parallel worker can die while the engine is idle; the engine knows at once (/health: 503).
        return self.dead_error is not None or not self.engine.is_healthy()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def new_request_id(self, prefix: str = "req") -> str:
        return f"{prefix}-{next(self._ids)}"

    async def generate(
        self,
        prompt: str | list[int] | dict[str, Any],
        params: SamplingParams,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yields RequestOutputs (deltas in `.deltas`) until the final one. Raises ValueError for a request
        the engine rejects, EngineDeadError if the loop died. Closing or cancelling the consumer aborts the
        request, which the loop applies at its next step (freeing its KV blocks)."""
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.dead_error}")
        if self._stopping:
            raise EngineDeadError("the engine was shut down (its model was unloaded)")
        if self.num_in_flight >= self.engine.config.max_num_seqs + self.max_queue:
            raise QueueFullError(
                f"the server is busy: {self.num_in_flight} requests in flight (queue limit {self.max_queue})"
            )
        request_id = request_id or self.new_request_id()
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._submit("add", (request_id, prompt, params, time.monotonic()))
        try:
            while True:
                item = await stream.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not stream.finished:
                self._submit("abort", request_id)
            self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        self._submit("abort", request_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join(timeout)
        self.engine.shutdown()  # stops tensor-parallel workers (nothing to do for one device)

    def _submit(self, kind: str, payload: Any) -> None:
        with self._wakeup:
            self._commands.append((kind, payload))
            self._wakeup.notify()

    # -- the loop thread ---------------------------------------------------------------------------------
    def _run_loop(self) -> None:
        engine = self.engine
        while True:
            with self._wakeup:
                while not self._commands and not engine.has_unfinished_requests() and not self._stopping:
                    self._wakeup.wait()
                if self._stopping:
                    break
                commands, self._commands = self._commands, []
            for kind, payload in commands:
                self._apply(kind, payload)
            if not engine.has_unfinished_requests():
                self._flush()
                self._publish_stats()
                continue
            try:
                outputs = engine.step()
            except BaseException as exc:  # noqa: BLE001 - any crash must reach the waiting clients
                logger.exception("engine step failed; failing every request of this engine")
                self._die(exc)
                return
            for out in outputs:
                self._deliver(out.request_id, out)
            self._flush()
            self._publish_stats()
        self._fail_all(EngineDeadError("the engine was shut down"))

    def _apply(self, kind: str, payload: Any) -> None:
        if kind == "abort":
            self.engine.abort_request(payload)
            self._deliver(payload, _END)
            return
        request_id, prompt, params, arrival = payload
        if request_id not in self._streams:  # the client left before the loop saw the request
            return
        try:
            self.engine.add_request(request_id, prompt, params, arrival_time=arrival)
        except ValueError as exc:
            self._deliver(request_id, exc)
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the loop
            logger.exception("add_request failed")
            self._deliver(request_id, RuntimeError(f"could not start the request: {exc}"))

    def _deliver(self, request_id: str, item: Any) -> None:
        """Queues an item for a request's stream; _flush() hands the step's items over in one go."""
        stream = self._streams.get(request_id)
        if stream is None or stream.finished:
            return
        if item is _END or isinstance(item, BaseException) or item.finished:
            stream.finished = True
        self._outbox.append((stream, item))

    def _flush(self) -> None:
        # One wake-up of the event loop per step, not one per request: with many streams the cross-thread
        # calls (and the GIL hand-offs they cost the loop thread) would otherwise grow with the batch.
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Stream, Any]]] = {}
        for stream, item in self._outbox:
            by_loop.setdefault(stream.loop, []).append((stream, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._dispatch, items)
            except RuntimeError:  # the event loop is closed (server shutting down)
                pass

    def _dispatch(self, items: list[tuple[_Stream, Any]]) -> None:
        """Runs on the event loop."""
        for stream, item in items:
            stream.queue.put_nowait(item)
            if isinstance(item, RequestOutput) and item.finished and self.on_finished is not None:
                try:
                    self.on_finished(item)
                except Exception:  # noqa: BLE001 - a metrics hook must never break a request
                    logger.exception("on_finished hook failed")

    def _die(self, exc: BaseException) -> None:
        self.dead_error = exc
        self._fail_all(EngineDeadError(f"the engine failed while running this request: {exc!r}"))
        with self._wakeup:
            self._commands = []

    def _fail_all(self, error: BaseException) -> None:
        for request_id in list(self._streams):
            self._deliver(request_id, error)
        self._flush()

    def _publish_stats(self) -> None:
        engine = self.engine
        scheduler, kv, counters = engine.scheduler, engine.kv, engine.counters
        # Parents, not choices: a request with n=2 counts once, as vLLM counts requests.
        self.stats = EngineStats(
            num_running=len({r.parent_id for r in scheduler.running}),
            num_waiting=len({r.parent_id for r in scheduler.waiting}),
            kv_cache_usage=kv.usage,
            num_kv_blocks=kv.num_blocks,
            num_free_kv_blocks=kv.num_free_blocks,
            prefix_cache_queries=kv.stats.queries,
            prefix_cache_hits=kv.stats.hits,
            num_preemptions=scheduler.num_preemptions,
            prompt_tokens=counters.prompt_tokens,
            generation_tokens=counters.generation_tokens,
            finished_by_reason=dict(counters.finished_by_reason),
        )
