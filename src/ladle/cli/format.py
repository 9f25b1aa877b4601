"""How the CLI prints numbers, times and tables: the way Ollama does, so its users read ladle at a glance."""

from __future__ import annotations

from datetime import datetime, timezone


def human_bytes(n: int) -> str:
    """Decimal units like Ollama's format.HumanBytes: 512 B, 1.2 MB, 38 MB, 2.0 GB (no decimals from 10)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    """Docker's units.HumanDuration, which Ollama prints: "2 minutes", "About an hour", "3 weeks"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def human_time(when: datetime | str | None, now: datetime | None = None, forever: str = "Never") -> str:
    """ "3 weeks ago" / "4 minutes from now", like Ollama's format.HumanTime."""
    if when is None or when == "":
        return forever
    if isinstance(when, str):
        when = parse_time(when)
        if when is None:
            return forever
    now = now or datetime.now(timezone.utc)
    delta = (when - now).total_seconds()
    if delta > 100 * 365 * 24 * 3600:  # a negative keep_alive: loaded until the server stops
        return "Forever"
    if delta > 0:
        return f"{_duration(delta)} from now"
    return f"{_duration(-delta)} ago"


def parse_time(text: str) -> datetime | None:
    """RFC 3339 as Ollama and ladle send it (Go writes nanoseconds; Python reads at most microseconds)."""
    text = text.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, three spaces or more apart (Ollama's tabwriter layout)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("    ".join(cells).rstrip())
    return "\n".join(lines)
