"""Tool calls streamed as OpenAI deltas: the first chunk of a call carries its index, id, type and name
(with empty arguments), later chunks carry pieces of function.arguments; joined, they are the arguments
that the non-streamed answer gives. Text that might still turn into a call marker is held back."""

from __future__ import annotations

from typing import Any

from ladle.tools.base import ToolCall, ToolParser, new_call_id


class ToolCallStream:
    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self._content_sent = 0
        self._ids: list[str] = []
        self._names_sent: list[bool] = []
        self._args_sent: list[str] = []
        self.calls: list[ToolCall] = []  # complete calls, in order (filled as they finish)

    def feed(self, text: str, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """Given all the text so far, return (content delta, tool-call deltas) not sent before."""
        scan = self.parser.scan(text)
        deltas: list[dict[str, Any]] = []
        for i, call in enumerate(scan.calls):
            if call.name is None:
                break  # calls stream in order: nothing after a call whose name is not known yet
            if i == len(self._ids):
                self._ids.append(new_call_id())
                self._names_sent.append(False)
                self._args_sent.append("")
            if not self._names_sent[i]:
                deltas.append(
                    {
                        "index": i,
                        "id": self._ids[i],
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                )
                self._names_sent[i] = True
            if call.whole_only and not call.done:
                continue
            sent = self._args_sent[i]
            # Arguments grow as raw text, so what was sent is a prefix of what is there now.
            if len(call.arguments) > len(sent) and call.arguments.startswith(sent):
                deltas.append({"index": i, "function": {"arguments": call.arguments[len(sent) :]}})
                self._args_sent[i] = call.arguments
            if call.done and len(self.calls) == i:
                self.calls.append(ToolCall(call.name, self._args_sent[i] or call.arguments, id=self._ids[i]))
        if scan.calls:
            content = scan.content if not final else scan.content.rstrip()
            safe = len(content) if final else min(scan.safe_content_len, len(content))
        else:
            content = text
            safe = len(text) if final else scan.safe_content_len
        delta = content[self._content_sent : safe] if safe > self._content_sent else ""
        self._content_sent = max(self._content_sent, safe)
        return delta, deltas
