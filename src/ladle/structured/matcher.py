"""GrammarState: one sequence's position in its grammar, and the bitmask of tokens allowed next."""

from __future__ import annotations

import torch
import xgrammar as xgr


class GrammarState:
    """Wraps an xgrammar GrammarMatcher. The bitmask of allowed next tokens is computed ahead of need
    (`fill`), usually on a worker thread while the model runs the step that needs it; `mask_for` hands
    it to the sampler once it matches the sequence's current length.

    Thread contract: `fill` may run on a worker; `accept` runs on the engine thread only after that fill
    was waited for. The two never overlap on one state.
    """

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int) -> None:
        self.matcher = xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.num_accepted = 0
        # num_accepted at the time the bitmask was filled (-1: never filled).
        self._mask_position = -1
        self.rejected = False

    @property
    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()

    @property
    def mask_ready(self) -> bool:
        return self._mask_position == self.num_accepted

    def fill(self) -> None:
        """Compute the bitmask for the next token, unless it is already current (or the grammar ended)."""
        if self.mask_ready or self.rejected or self.matcher.is_terminated():
            return
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._mask_position = self.num_accepted

    def mask(self) -> torch.Tensor:
        """[1, ceil(vocab / 32)] int32: the allowed next tokens (filling it now if no one did yet)."""
        self.fill()
        return self.bitmask

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token. False means the grammar refused it (only possible if the token
        did not come from a masked distribution); the state then stays refused."""
        if self.rejected:
            return False
        if not self.matcher.accept_token(token_id):
            self.rejected = True
            return False
        self.num_accepted += 1
        return True

    def allows(self, token_id: int) -> bool:
        """Whether `token_id` is allowed next (reads the current bitmask)."""
        word = int(self.mask()[0, token_id // 32])
        return bool((word >> (token_id % 32)) & 1)
