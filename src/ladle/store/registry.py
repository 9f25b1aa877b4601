"""Pull from an Ollama-style registry over the OCI distribution routes.

    GET {base}/v2/{namespace}/{name}/manifests/{tag}   Accept: application/vnd.docker.distribution.manifest.v2+json
    GET {base}/v2/{namespace}/{name}/blobs/{digest}    redirects followed, Range for parts and resumes

`base` is LADLE_REGISTRY (default https://registry.ollama.ai) for names on registry.ollama.ai, and
https://{host} for other hosts. The manifest is written exactly as the registry sent it (so the model's ID
matches Ollama's), and only after every blob it lists is verified.
"""

from __future__ import annotations

import os
import time

import httpx

from ladle.store.download import DownloadConfig, RetryableError, is_retryable_status
from ladle.store.errors import PullError
from ladle.store.manifest import MEDIA_TYPE_MANIFEST, Manifest
from ladle.store.names import DEFAULT_HOST, ModelName
from ladle.store.store import LocalModel, Store
from ladle.store.transfer import BlobSource, Progress, fetch_blobs
from ladle.version import __version__

DEFAULT_REGISTRY = "https://registry.ollama.ai"
MAX_MANIFEST_BYTES = 4 << 20


def registry_url(name: ModelName) -> str:
    if name.host.lower() == DEFAULT_HOST:
        return (os.environ.get("LADLE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    return f"https://{name.host}"


def pull_from_registry(store: Store, name: ModelName, emit: Progress, config: DownloadConfig) -> LocalModel:
    base = registry_url(name)
    repo = f"{base}/v2/{name.namespace}/{name.model}"
    emit({"status": "pulling manifest"})
    with httpx.Client(
        follow_redirects=True, timeout=config.timeout(), headers={"User-Agent": f"ladle/{__version__}"}
    ) as client:
        data = _fetch_manifest(client, f"{repo}/manifests/{name.tag}", name, base, config)
        try:
            manifest = Manifest.from_bytes(data)
        except ValueError as e:
            raise PullError(f"the registry at {base} sent an invalid manifest for {name}: {e}") from None
        blobs = [BlobSource(b.digest, b.size, f"{repo}/blobs/{b.digest}") for b in manifest.blobs]
        fetch_blobs(store, client, blobs, emit, config)
    emit({"status": "writing manifest"})
    model = store.commit(name, manifest, data)
    emit({"status": "success"})
    return model


def _fetch_manifest(
    client: httpx.Client, url: str, name: ModelName, base: str, config: DownloadConfig
) -> bytes:
    attempt = 0
    while True:
        try:
            response = client.get(url, headers={"Accept": MEDIA_TYPE_MANIFEST})
            if is_retryable_status(response.status_code):
                raise RetryableError(f"the registry answered HTTP {response.status_code}")
            break
        except (httpx.TransportError, RetryableError) as e:
            attempt += 1
            # Nothing listening (refused) or no such host won't change in a few seconds: fail at once, as
            # Ollama does, instead of a minute of backoff. Timeouts, resets and 5xx are still retried.
            if attempt > config.max_retries or _is_permanent(e):
                raise PullError(f"cannot reach the registry at {base}: {_reason(e)}") from None
            time.sleep(config.backoff(attempt))
    if response.status_code == 404:
        raise PullError(f"pull model manifest: model '{name}' not found in the registry at {base}")
    if response.status_code in (401, 403):
        raise PullError(
            f"pull model manifest: the registry at {base} wants a sign-in for '{name}', "
            "which ladle does not support yet"
        )
    if response.status_code != 200:
        raise PullError(f"pull model manifest: the registry at {base} answered HTTP {response.status_code}")
    if len(response.content) > MAX_MANIFEST_BYTES:
        raise PullError(f"pull model manifest: the manifest for '{name}' is too large")
    return response.content


def _is_permanent(error: Exception) -> bool:
    if not isinstance(error, httpx.ConnectError):
        return False
    text = str(error).lower()
    return "refused" in text or "name or service not known" in text or "nodename nor servname" in text


def _reason(error: Exception) -> str:
    if isinstance(error, httpx.ConnectError):
        text = str(error)
        return "connection refused" if "refused" in text.lower() else (text or "cannot connect")
    if isinstance(error, httpx.TimeoutException):
        return "the connection timed out"
    return str(error) or type(error).__name__
