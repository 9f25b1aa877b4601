"""A chat message's content as chat templates read it: one string.

OpenAI clients may send content as a list of parts ([{"type": "text", "text": ...}, ...]). Both LLM.chat and
the server's chat routes turn such a list into one string here, so the offline API and the server render the
same prompt for the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# vLLM joins a message's text parts with a newline (its "string" content format); so do we, so that a
# prompt rendered by ladle matches vLLM's for the same request.
PART_SEPARATOR = "\n"


def join_text_parts(parts: Sequence[Any], field: str) -> str:
    """The texts of OpenAI-style content parts joined with a newline. A part that is not text (image_url,
    input_audio, ...) or not a part at all raises ValueError naming `field`: ladle serves text models, and
    dropping the part silently would answer a different question than the one asked."""
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
        if kind != "text":
            raise ValueError(
                f"{field}: part {i} is of type {kind!r}; only 'text' parts are supported by this text model"
            )
        texts.append(part.get("text") or "")
    return PART_SEPARATOR.join(texts)
