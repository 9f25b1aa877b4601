"""StructuredDecoding: the engine's one handle on constrained decoding.

Per request: `admit` compiles the constraint when the request arrives (so a bad schema fails there, as a
ValueError naming the field) and `new_state` gives each sequence its own matcher. Per step: `start_fills`
computes the next-token bitmasks of the batch on a worker thread (xgrammar releases the GIL, so this runs
while the model's forward runs), `wait` joins it before sampling, and `accept` advances a matcher by the
sampled token. After accepting, the engine calls `start_fills` again, so the next mask is usually ready
before the next step's forward even starts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xgrammar as xgr

from ladle.sampling_params import SamplingParams
from ladle.structured.compiler import GrammarCache
from ladle.structured.matcher import GrammarState

if TYPE_CHECKING:
    from ladle.loader.tokenizer import Tokenizer


@dataclass
class MaskTimes:
    """Where bitmask work went (seconds): filled on the worker, the engine thread blocked waiting for it,
    and filled on the engine thread itself (no overlap, or a mask nobody started)."""

    worker_fill: float = 0.0
    waited: float = 0.0
    inline_fill: float = 0.0


class StructuredDecoding:
    def __init__(
        self, tokenizer: Tokenizer | None, vocab_size: int, eos_token_ids: list[int], overlap: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        # Fill bitmasks on a worker thread, overlapping the model (False: fill when the sampler asks).
        self.overlap = overlap
        self._cache: GrammarCache | None = None  # built on first use: reading a large vocabulary takes time
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self.times = MaskTimes()

    @property
    def cache(self) -> GrammarCache:
        if self._cache is None:
            if self.tokenizer is None:
                raise ValueError("structured_outputs: this model was loaded without a tokenizer")
            self._cache = GrammarCache.for_tokenizer(self.tokenizer, self.vocab_size, self.eos_token_ids)
        return self._cache

    def admit(self, params: SamplingParams) -> xgr.CompiledGrammar | None:
        """Compile the request's constraint (cached); raises ValueError naming the field if it can't."""
        if params.structured_outputs is None:
            return None
        return self.cache.get(params.structured_outputs)

    def new_state(self, compiled: xgr.CompiledGrammar, params: SamplingParams) -> GrammarState:
        state = GrammarState(compiled, self.vocab_size)
        extra = [t for t in params.stop_token_ids if t not in self.eos_token_ids]
        if extra:
            # The request's own stop tokens may also end the grammar (e.g. a chat template's end-of-turn).
            state.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=self.eos_token_ids + extra)
        return state

    def start_fills(self, states: Iterable[GrammarState | None]) -> None:
        todo = [s for s in states if s is not None and not s.mask_ready]
        if not todo or not self.overlap:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ladle-grammar")
        self._pending.append(self._pool.submit(self._fill_all, todo))

    def wait(self) -> None:
        """Join the fills started so far (re-raising their errors); the states are then safe to touch."""
        pending, self._pending = self._pending, []
        start = time.perf_counter()
        for future in pending:
            future.result()
        self.times.waited += time.perf_counter() - start

    def mask(self, state: GrammarState):
        """The state's next-token bitmask (filled here if the worker did not)."""
        if state.mask_ready:
            return state.bitmask
        start = time.perf_counter()
        state.fill()
        self.times.inline_fill += time.perf_counter() - start
        return state.bitmask

    def accept(self, state: GrammarState, token_id: int) -> bool:
        return state.accept(token_id)

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _fill_all(self, states: list[GrammarState]) -> None:
        start = time.perf_counter()
        for state in states:
            state.fill()
        self.times.worker_fill += time.perf_counter() - start
