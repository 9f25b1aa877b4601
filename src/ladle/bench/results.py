"""Where benchmark results go: JSON under benchmarks/results/ with device, date and git sha."""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(
    kind: str, result: dict[str, Any], out_dir: str | Path = "benchmarks/results", path: str | None = None
) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    record = {
        "benchmark": kind,
        "date": now.isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "device": device_description(),
        **result,
    }
    target = Path(path) if path else Path(out_dir) / f"{kind}-{now.strftime('%Y%m%dT%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2))
    return target
