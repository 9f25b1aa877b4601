"""Bring a model's blobs into the store with Ollama's pull progress, whatever server holds them.

The order of events is Ollama's /api/pull: one `pulling <digest12>` stream per blob (total, completed),
then `verifying sha256 digest` while every new blob is checked and moved into place. Blobs already in the
store are reported complete at once; blobs in Ollama's store are linked (or copied) and checked, not
downloaded again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ladle.store.download import BlobDownload, DownloadConfig
from ladle.store.layout import adopt_blob
from ladle.store.store import Store

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class BlobSource:
    digest: str
    size: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)


def fetch_blobs(
    store: Store, client: httpx.Client, blobs: list[BlobSource], emit: Progress, config: DownloadConfig
) -> None:
    """Download what is missing, then verify and place it; PullError leaves no blob half-written."""
    downloads: list[BlobDownload] = []
    for blob in blobs:
        status = f"pulling {blob.digest.removeprefix('sha256:')[:12]}"

        def report(completed: int, blob: BlobSource = blob, status: str = status) -> None:
            emit({"status": status, "digest": blob.digest, "total": blob.size, "completed": completed})

        with store.blob_lock(blob.digest):
            if store.blob_path(blob.digest).is_file():
                report(blob.size)
                continue
            foreign = store.find_ollama_blob(blob.digest)
            if foreign is not None and adopt_blob(store.layout, foreign, blob.digest):
                report(blob.size)
                continue
            download = BlobDownload(
                store.layout, client, blob.url, blob.digest, blob.size, config, headers=blob.headers
            )
            download.fetch(report)
        downloads.append(download)
    emit({"status": "verifying sha256 digest"})
    for download in downloads:
        with store.blob_lock(download.digest):
            download.place()
