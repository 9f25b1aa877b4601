"""A thinking model's reply split into its thinking and its answer, for Ollama's `think: true` (the
`thinking` field of /api/generate, `message.thinking` of /api/chat).

Qwen3 and DeepSeek-R1 style models write `<think>...</think>` before the answer; some templates open the
block in the prompt, so the reply may start inside it without the opening tag. Everything before the
closing tag is thinking, the rest (its leading blank lines dropped) the answer; a reply that never closes
the block is all thinking.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def template_thinks(template: str | None) -> bool:
    """Whether a chat template is a thinking model's (it names the tag or Qwen3's enable_thinking switch)."""
    return bool(template) and ("enable_thinking" in template or OPEN in template)


def split_reply(text: str) -> tuple[str, str]:
    """(thinking, answer) of a whole reply."""
    splitter = ThinkingSplitter()
    thinking, answer = splitter.feed(text, final=True)
    return thinking, answer


class ThinkingSplitter:
    """Streams a reply's deltas out as (thinking, answer) deltas. Text that may be the start of a tag is
    held back until the next delta tells (a tag can arrive in pieces); `final` flushes it."""

    def __init__(self) -> None:
        self._held = ""
        self._started = False  # past the optional opening tag (or sure there is none)
        self._answering = False  # past the closing tag
        self._thinking_started = False  # leading newlines of the thinking and of the answer are dropped
        self._answer_started = False

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        text = self._held + delta
        self._held = ""
        thinking = answer = ""
        if not self._started:
            stripped = text.lstrip()
            if stripped.startswith(OPEN):
                text, self._started = stripped[len(OPEN) :], True
            elif OPEN.startswith(stripped) and not final:
                self._held = text  # maybe the opening tag, still arriving
                return "", ""
            else:
                self._started = True
        if not self._answering:
            if not self._thinking_started:
                text = text.lstrip("\n")
                self._thinking_started = bool(text)
            at = text.find(CLOSE)
            if at >= 0:
                thinking, text, self._answering = text[:at], text[at + len(CLOSE) :], True
            else:
                keep = 0 if final else _partial_tag_length(text, CLOSE)
                thinking, self._held = text[: len(text) - keep], text[len(text) - keep :]
                return thinking, ""
        if not self._answer_started:
            text = text.lstrip("\n")
            if not text and not final:
                return thinking, ""
            self._answer_started = True
        answer = text
        return thinking, answer


def _partial_tag_length(text: str, tag: str) -> int:
    """How many of text's last characters are the start of `tag` (so it may be completed by what follows)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
