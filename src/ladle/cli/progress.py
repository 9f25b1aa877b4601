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
    progress: Progress | None = None  # started at the first bar, so a failed pull prints no empty bar area
    last: dict[str, Any] | None = None
    last_status = None
    try:
        for event in events:
            last = event
            status = str(event.get("status", ""))
            digest = event.get("digest")
            if digest and event.get("total"):
                if progress is None:
                    progress = Progress(*columns, console=console, auto_refresh=console.is_terminal)
                    progress.start()
                task = bars.get(digest)
                if task is None:
                    task = progress.add_task(status, total=int(event["total"]))
                    bars[digest] = task
                progress.update(task, completed=int(event.get("completed") or 0))
            elif status and status != last_status:
                console.print(status, soft_wrap=True)
            last_status = status
    finally:
        if progress is not None:
            progress.stop()
    return last
