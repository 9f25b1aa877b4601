"""keep_alive values as Ollama reads them: a Go duration string ("5m", "1h30m", "300ms", "-1m"), or a number
of seconds (also as a string, "300"). 0 unloads at once; negative keeps the model loaded forever."""

from __future__ import annotations

import os
import re

DEFAULT_KEEP_ALIVE_SECONDS = 300.0

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_keep_alive(value: str | int | float | None, default: float | None = None) -> float | None:
    """Seconds to stay loaded after the last request; None means forever. `value` None gives `default`.
    ValueError (naming keep_alive) for anything else that isn't a duration."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ValueError(f"keep_alive: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = _parse_duration(value.strip())
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"keep_alive: {value!r} is not a duration")
    return None if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    if not text:
        raise ValueError("keep_alive: an empty string is not a duration (try 5m, 1h, 0 or -1)")
    try:
        return float(text)  # "300", "-1": seconds
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for match in _PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or not body:
        raise ValueError(f"keep_alive: {text!r} is not a duration (try 5m, 1h30m, 300ms, 0 or -1)")
    return sign * total


def default_keep_alive() -> float | None:
    """LADLE_KEEP_ALIVE, else 5 minutes. A bad value is a ValueError naming the variable."""
    raw = os.environ.get("LADLE_KEEP_ALIVE")
    if raw is None or not raw.strip():
        return DEFAULT_KEEP_ALIVE_SECONDS
    try:
        return parse_keep_alive(raw)
    except ValueError as exc:
        raise ValueError(f"LADLE_KEEP_ALIVE: {exc}".replace("keep_alive: ", "")) from None
