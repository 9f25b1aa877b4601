"""Where the project's shared real models are: the `shared/` folder beside the checkout (CI lays a copy of it
there), else LADLE_STORIES_GGUF."""

from __future__ import annotations

import os
from pathlib import Path


def stories_gguf() -> Path:
    if os.environ.get("LADLE_STORIES_GGUF"):
        return Path(os.environ["LADLE_STORIES_GGUF"])
    repo = Path(__file__).resolve().parents[1]
    for shared in (repo / "shared", repo.parent / "shared", Path("/work/shared")):
        candidate = shared / "models" / "stories260K.gguf"
        if candidate.is_file():
            return candidate
    return repo.parent / "shared" / "models" / "stories260K.gguf"
