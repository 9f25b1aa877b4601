"""Turns a user's model reference into something the loader can open.

Today: paths (a .gguf file or a Hugging Face folder). Store names (`name:tag`, `hf.co/...`, `demo`) are
resolved here once the store lands.
"""

from __future__ import annotations

from pathlib import Path


def resolve_model_path(model: str) -> str:
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    raise FileNotFoundError(f"model {model!r} not found: no such file or folder")
