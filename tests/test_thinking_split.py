"""Ollama's think: true reply split (ladle/server/thinking.py): the thinking before `</think>`, the answer
after it, the same whether the reply comes whole or in pieces of any size (tags cut across pieces)."""

from __future__ import annotations

import pytest

from ladle.server.thinking import ThinkingSplitter, split_reply, template_thinks

CASES = [
    # (reply, thinking, answer)
    ("<think>\nTwo and two.\n</think>\n\nIt is 4.", "Two and two.\n", "It is 4."),  # Qwen3's own tags
    ("Two and two.\n</think>\n\nIt is 4.", "Two and two.\n", "It is 4."),  # the prompt opened the block
    ("<think>\n\n</think>\n\nIt is 4.", "", "It is 4."),  # an empty block
    ("<think>still thinking when max_tokens ran out", "still thinking when max_tokens ran out", ""),
    ("a < b </thi and </think>x</think>y", "a < b </thi and ", "x</think>y"),  # only the first close counts
    ("", "", ""),
]


@pytest.mark.parametrize("reply,thinking,answer", CASES)
def test_whole_reply(reply, thinking, answer):
    assert split_reply(reply) == (thinking, answer)


@pytest.mark.parametrize("reply,thinking,answer", CASES)
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streamed_in_pieces_of_any_size(reply, thinking, answer, size):
    splitter = ThinkingSplitter()
    pieces = [reply[i : i + size] for i in range(0, len(reply), size)] or [""]
    got_thinking = got_answer = ""
    for i, piece in enumerate(pieces):
        t, a = splitter.feed(piece, final=i == len(pieces) - 1)
        got_thinking += t
        got_answer += a
    assert (got_thinking, got_answer) == (thinking, answer)


def test_nothing_that_may_be_a_tag_goes_out_early():
    """A piece ending in what may be the start of `</think>` is held back until the next one tells."""
    splitter = ThinkingSplitter()
    assert splitter.feed("<think>so </th") == ("so ", "")
    assert splitter.feed("ink>4") == ("", "4")


def test_which_templates_think():
    assert template_thinks("{% if enable_thinking is defined %}...{% endif %}")
    assert template_thinks("{{ '<think>' }}")
    assert not template_thinks("{{ messages[0].content }}") and not template_thinks(None)
