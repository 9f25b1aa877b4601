"""Showing /api/pull and /api/create progress events on stderr (stdout stays clean for answers)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ladle.cli.format import human_bytes


def show_progress(events: Iterable[dict[str, Any]], console: Console | None = None) -> dict[str, Any] | None:
    """Print each status line once and one bar per blob (`pulling <digest12>` with total/completed), like
    `ollama pull`. Returns the last event."""
    console = console or Console(stderr=True, highlight=False)
    columns = (
        TextColumn("{task.description}"),
        TextColumn("{task.percentage:>3.0f}%"),
        BarColumn(bar_width=None),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    bars: dict[str, TaskID] = {}
    done: set[str] = set()
    progress: Progress | None = None  # live bars while blobs download (on a terminal)
    last: dict[str, Any] | None = None
    last_status = None
    try:
        for event in events:
            last = event
            status = str(event.get("status", ""))
            digest = event.get("digest")
            if digest and event.get("total"):
                total, completed = int(event["total"]), int(event.get("completed") or 0)
                if not console.is_terminal:  # a log or a pipe: one line per blob, when it is complete
                    if completed >= total and digest not in done:
                        done.add(digest)
                        console.print(f"{status}: 100% {human_bytes(total)}", soft_wrap=True)
                    continue
                if progress is None:
                    progress = Progress(*columns, console=console)
                    progress.start()
                task = bars.get(digest)
                if task is None:
                    task = progress.add_task(status, total=total)
                    bars[digest] = task
                progress.update(task, completed=completed)
            elif status and status != last_status:
                if progress is not None:  # the downloads are over: leave the bars above what follows
                    progress.stop()
                    progress = None
                    bars.clear()
                console.print(status, soft_wrap=True)
            last_status = status
    finally:
        if progress is not None:
            progress.stop()
    return last
