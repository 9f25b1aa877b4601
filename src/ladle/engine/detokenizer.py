"""Incremental detokenization and stop-string matching for one sequence.

Text is produced by decoding a short window of recent tokens twice (with and without the newest ones) and
taking the difference, so a character whose UTF-8 bytes are split across tokens is emitted only once it is
complete, and tokenizers that drop a leading space at the start of a decode still produce the right text.
"""

from __future__ import annotations

from ladle.loader.tokenizer import Tokenizer

# How many prompt tokens of context the first output token is decoded with (enough for SentencePiece's
# leading-space rule and for a multi-byte character started in the prompt).
_CONTEXT_TOKENS = 6
_REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer | None,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = stop or []
        self.include_stop = include_stop_str_in_output
        # Streaming holds back this many characters: they could still become the start of a stop string.
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.text = ""

    def add_token(self, token_id: int, check_stop: bool = True) -> str | None:
        """Appends a token; returns the stop string that matched (text already truncated), else None."""
        if self.tokenizer is None:  # running without a tokenizer (benchmarks): token ids only
            return None
        self.tokens.append(token_id)
        prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self._decode(self.tokens[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_REPLACEMENT_CHAR):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            self.text += delta
            if check_stop and self.stop:
                return self._match_stop(len(delta))
        return None

    def flush(self) -> None:
        """At the end, emits bytes still waiting for the rest of a character (as replacement characters)."""
        if self.read_offset < len(self.tokens):
            prefix = self._decode(self.tokens[self.prefix_offset : self.read_offset])
            full = self._decode(self.tokens[self.prefix_offset :])
            self.text += full[len(prefix) :]
            self.prefix_offset = self.read_offset = len(self.tokens)

    def stable_text_len(self, finished: bool) -> int:
        """How much of the text a stream may show now."""
        return len(self.text) if finished else max(0, len(self.text) - self.holdback)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _match_stop(self, delta_len: int) -> str | None:
        best: tuple[int, str] | None = None
        for stop in self.stop:
            # Only the part of the text the new delta could have completed needs searching.
            start = max(0, len(self.text) - delta_len - len(stop) + 1)
            idx = self.text.find(stop, start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self.text = self.text[: idx + len(stop)] if self.include_stop else self.text[:idx]
        return stop
