"""Where benchmark results go: JSON under benchmarks/results/ with device, date and git sha."""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from ladle.version import __version__


def git_sha() -> str:
    """The commit of the ladle code that ran (asked of the checkout this package is in, not of the folder
    the bench was started from, which may be the user's own repository), "+dirty" when its files differ
    from that commit; "unknown" for an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=package, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if changed else sha


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
        "ladle_version": __version__,
        "device": device_description(),
        **result,
    }
    target = Path(path) if path else Path(out_dir) / f"{kind}-{now.strftime('%Y%m%dT%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2))
    return target
