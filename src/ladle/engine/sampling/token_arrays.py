"""numpy copies of the sequences' token lists, kept between steps for the penalties."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class _Entry:
    tokens: Sequence[int]  # the caller's object itself: holding it keeps its id from being reused
    array: np.ndarray
    # For lists that may change: the tokens the array was made from. Comparing with it costs ~5 ns a token
    # (the engine appends the same int objects, so most comparisons are identity checks), a quarter of
    # converting again.
    snapshot: list[int] | None


class TokenArrays:
    """Turning Python ints into an array costs ~20-35 ns a token: 256 rows of 8k-token contexts would spend
    ~50 ms a step on it. So each list's array is kept from one step to the next, and only tokens appended
    since are converted.

    Output lists are checked against a snapshot every step, so any edit (a rewind, a replaced token) is
    seen. Prompt lists (`mutable=False`) are trusted not to be edited in place, which is what lets a long
    prompt cost nothing after its first step; give the row a new list object when its prompt changes.
    Only lists used since the previous end_step are kept.
    """

    def __init__(self) -> None:
        self._kept: dict[int, _Entry] = {}
        self._used: dict[int, _Entry] = {}

    def get(self, tokens: Sequence[int], mutable: bool = True) -> np.ndarray:
        mutable = mutable and not isinstance(tokens, tuple)
        key = id(tokens)
        entry = self._used.get(key) or self._kept.get(key)
        if entry is None or entry.tokens is not tokens or len(entry.array) > len(tokens):
            entry = None
        elif mutable and (entry.snapshot is None or tokens[: len(entry.snapshot)] != entry.snapshot):
            entry = None
        if entry is None:
            entry = _Entry(tokens, np.zeros(0, dtype=np.int64), [] if mutable else None)
        num_known = len(entry.array)
        if num_known < len(tokens):
            tail = tokens[num_known:]
            entry.array = np.concatenate((entry.array, np.fromiter(tail, dtype=np.int64, count=len(tail))))
            if entry.snapshot is not None:
                entry.snapshot.extend(tail)
        self._used[key] = entry
        return entry.array

    def end_step(self) -> None:
        """Forget lists not used since the last end_step: their sequences finished or were preempted."""
        self._kept, self._used = self._used, {}
