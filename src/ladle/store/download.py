"""Resumable, parallel, verified blob downloads (used by registry pulls and Hugging Face GGUF pulls).

Modelled on Ollama's server/download.go: a blob is fetched into `blobs/sha256-<hex>-partial` in up to 16
parts of 100 MB to 1 GB, each a Range request on its own thread; `sha256-<hex>-partial.json` records how
much of each part arrived, so a pull that is cut off (network drop, Ctrl-C, crash) resumes where it stopped,
in this process (retries with exponential backoff) or in the next pull. Only when the sha256 of the whole
file matches the digest is it renamed to `sha256-<hex>`; a mismatch deletes the partial file, so the next
pull starts clean instead of resuming corrupt data.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from ladle.store.errors import PullError
from ladle.store.layout import StoreLayout, atomic_write, sha256_file

MB = 1 << 20
# How often a part saves its progress to the .json file: often enough that a crash loses little.
_SAVE_EVERY_BYTES = 16 * MB
_SAVE_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class DownloadConfig:
    """Knobs of a download; the defaults are Ollama's. Tests shrink parts and backoff."""

    max_parts: int = 16
    min_part_size: int = 100 * MB
    max_part_size: int = 1000 * MB
    # Retries per part after a connection error or a 5xx/429; the counter resets whenever bytes arrive.
    max_retries: int = 6
    backoff_base: float = 1.0  # seconds before the first retry; doubles each time
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    progress_interval: float = 0.1  # seconds between progress callbacks per blob

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.read_timeout, connect=self.connect_timeout)

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_base * (2 ** (attempt - 1)), self.backoff_max)


class RetryableError(Exception):
    """A failure worth retrying: connection trouble, a 5xx, or the body ending early."""


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


@dataclass
class _Part:
    offset: int
    size: int
    completed: int = 0

    @property
    def start(self) -> int:
        return self.offset + self.completed

    @property
    def end(self) -> int:  # inclusive, as in a Range header
        return self.offset + self.size - 1


class BlobDownload:
    """One blob's download into its partial file; `fetch()` then `place()`."""

    def __init__(
        self,
        layout: StoreLayout,
        client: httpx.Client,
        url: str,
        digest: str,
        size: int,
        config: DownloadConfig,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.client = client
        self.url = url
        self.digest = digest
        self.size = size
        self.config = config
        self.headers = headers or {}
        self.partial = layout.partial_path(digest)
        self.state_path = self.partial.with_name(self.partial.name + ".json")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.parts: list[_Part] = []

    @property
    def completed(self) -> int:
        return sum(part.completed for part in self.parts)

    def fetch(self, on_progress: Callable[[int], None] | None = None) -> None:
        """Bring the partial file to `size` bytes, resuming what earlier attempts left; not verified."""
        self.layout.blobs.mkdir(parents=True, exist_ok=True)
        self.parts = self._load_state() or self._new_parts()
        if not self.partial.exists() or self.partial.stat().st_size != self.size:
            with open(self.partial, "ab") as f:
                f.truncate(self.size)  # sparse where the file system allows
        self._save_state()
        report = _Throttled(on_progress, self.config.progress_interval, lambda: self.completed)
        report(force=True)
        pending = [part for part in self.parts if part.completed < part.size]
        try:
            if len(pending) == 1:
                self._fetch_part(pending[0], report)
            elif pending:
                with ThreadPoolExecutor(max_workers=min(len(pending), self.config.max_parts)) as pool:
                    futures = [pool.submit(self._fetch_part, part, report) for part in pending]
                    try:
                        for future in futures:
                            future.result()
                    except BaseException:
                        self._stop.set()  # the other parts stop at their next chunk
                        raise
        finally:
            self._save_state()
        report(force=True)

    def place(self) -> Path:
        """Verify the partial file's sha256 and move it into place; PullError (and no file) if it differs."""
        target = self.layout.blob_path(self.digest)
        if target.is_file():  # another pull of the same blob finished first
            self.discard()
            return target
        actual = sha256_file(self.partial)
        if actual != self.digest:
            self.discard()
            raise PullError(
                f"digest mismatch for {self.digest}: the download is corrupt (got {actual}); it was discarded"
            )
        os.replace(self.partial, target)
        self.state_path.unlink(missing_ok=True)
        return target

    def discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    # ---- parts ---------------------------------------------------------------------------------------

    def _new_parts(self) -> list[_Part]:
        cfg = self.config
        part_size = min(max(self.size // cfg.max_parts, cfg.min_part_size), cfg.max_part_size)
        part_size = max(part_size, 1)
        parts = [
            _Part(offset, min(part_size, self.size - offset)) for offset in range(0, self.size, part_size)
        ]
        # A fresh start: whatever bytes a partial file holds without a state file are not trusted.
        self.partial.unlink(missing_ok=True)
        return parts

    def _load_state(self) -> list[_Part] | None:
        try:
            state = json.loads(self.state_path.read_text())
            if state.get("size") != self.size or not self.partial.exists():
                return None
            parts = [_Part(int(p["offset"]), int(p["size"]), int(p["completed"])) for p in state["parts"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if sum(p.size for p in parts) != self.size or any(not 0 <= p.completed <= p.size for p in parts):
            return None
        return parts

    def _save_state(self) -> None:
        with self._lock:
            state = {
                "digest": self.digest,
                "size": self.size,
                "parts": [{"offset": p.offset, "size": p.size, "completed": p.completed} for p in self.parts],
            }
            atomic_write(self.state_path, json.dumps(state).encode())

    def _fetch_part(self, part: _Part, report: _Throttled) -> None:
        attempt = 0
        while part.completed < part.size:
            if self._stop.is_set():
                return
            before = part.completed
            try:
                self._stream_part(part, report)
            except (httpx.TransportError, RetryableError) as e:
                if part.completed > before:
                    attempt = 0  # progress was made: this is a flaky link, not a dead one
                attempt += 1
                if attempt > self.config.max_retries:
                    raise PullError(f"download of {self.digest} failed: {_describe(e)}") from None
                self._stop.wait(self.config.backoff(attempt))

    def _stream_part(self, part: _Part, report: _Throttled) -> None:
        # identity: the bytes on disk must be the blob itself, never a compressed form of it.
        headers = {**self.headers, "Range": f"bytes={part.start}-{part.end}", "Accept-Encoding": "identity"}
        with self.client.stream("GET", self.url, headers=headers) as response:
            if is_retryable_status(response.status_code):
                raise RetryableError(f"the server answered HTTP {response.status_code}")
            if response.status_code == 404:
                raise PullError(f"blob {self.digest} not found at {_origin(self.url)}")
            if response.status_code not in (200, 206):
                raise PullError(f"download of {self.digest} failed: HTTP {response.status_code}")
            # A server that ignores Range sends the whole blob: skip to where this part starts.
            skip = part.start if response.status_code == 200 else 0
            if response.status_code == 206 and not _range_starts_at(response, part.start):
                raise PullError(f"download of {self.digest} failed: the server sent the wrong byte range")
            saved_at_bytes, saved_at_time = part.completed, time.monotonic()
            with open(self.partial, "r+b") as f:
                f.seek(part.start)
                for chunk in response.iter_bytes():
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                    chunk = chunk[: part.size - part.completed]
                    if chunk:
                        f.write(chunk)
                        part.completed += len(chunk)
                        report()
                    if part.completed >= part.size or self._stop.is_set():
                        break
                    if (
                        part.completed - saved_at_bytes >= _SAVE_EVERY_BYTES
                        or time.monotonic() - saved_at_time >= _SAVE_EVERY_SECONDS
                    ):
                        f.flush()  # the bytes reach the file before the state says they did
                        self._save_state()
                        saved_at_bytes, saved_at_time = part.completed, time.monotonic()
        if part.completed < part.size and not self._stop.is_set():
            raise RetryableError("the connection closed before the part was complete")


class _Throttled:
    """Calls `callback(completed)` at most every `interval` seconds (always when forced)."""

    def __init__(self, callback: Callable[[int], None] | None, interval: float, value: Callable[[], int]):
        self.callback = callback
        self.interval = interval
        self.value = value
        self.last = 0.0
        self.lock = threading.Lock()

    def __call__(self, force: bool = False) -> None:
        if self.callback is None:
            return
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < self.interval:
                return
            self.last = now
            self.callback(self.value())


def _range_starts_at(response: httpx.Response, start: int) -> bool:
    content_range = response.headers.get("Content-Range", "")  # "bytes 100-199/1000"
    try:
        return int(content_range.split()[1].split("-")[0]) == start
    except (IndexError, ValueError):
        return False


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode()}"


def _describe(error: BaseException) -> str:
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({error})"
    if isinstance(error, httpx.TimeoutException):
        return "the connection timed out"
    return str(error) or type(error).__name__
