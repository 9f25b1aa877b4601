"""`pull(store, name, progress)`: fetch a model into the store, from the Ollama registry or Hugging Face.

The name decides where (see names.py): registry names go to registry.py, `hf.co/...` to hf.pull_gguf,
`org/repo` to hf.pull_repo (unless `org/repo:latest` is already stored locally, which is then updated from
its registry). `progress` receives Ollama's /api/pull events as dicts, in order:

    {"status": "pulling manifest"}
    {"status": "pulling <digest12>", "digest": "sha256:...", "total": N, "completed": M}   (repeated)
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "success"}

It is called from download threads, one call at a time. Failures raise PullError with a one-line message;
nothing is listed until every blob is verified, and partial downloads are kept to be resumed by the next pull.
"""

from __future__ import annotations

import threading
from typing import Any

from ladle.store.download import DownloadConfig
from ladle.store.names import ModelName
from ladle.store.store import LocalModel, Progress, Store


def pull(
    store: Store,
    name: str | ModelName,
    progress: Progress | None = None,
    *,
    config: DownloadConfig | None = None,
) -> LocalModel:
    """Download `name` into `store` and return it; see the module docstring."""
    qualified = store.qualify(name)
    config = config or DownloadConfig()
    lock = threading.Lock()

    def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            with lock:
                progress(event)

    if qualified.kind == "registry":
        from ladle.store.registry import pull_from_registry

        return pull_from_registry(store, qualified, emit, config)

    from ladle.store import hf

    if qualified.kind == "hf-gguf":
        return hf.pull_gguf(store, qualified, emit, config)
    return hf.pull_repo(store, qualified, emit, config)
