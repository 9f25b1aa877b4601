"""Pull from Hugging Face through huggingface_hub (it honours HF_ENDPOINT and HF_TOKEN).

`hf.co/org/repo[:quant]`: a GGUF repository. The repository's files are listed (HfApi.model_info with file
metadata, which gives each LFS file's sha256), one GGUF is chosen (the quantization named by the tag
matched case-insensitively as a whole word in the file name; `latest` means Q4_K_M, else the repository's
only GGUF), and it is downloaded from its `resolve` URL by ladle's resumable downloader (download.py):
parts in parallel, resumed after a cut, sha256 checked against the LFS digest before the blob is placed,
like a registry pull. The model gets no template layer: the chat template inside the GGUF is used.

`org/repo` (or `huggingface.co/org/repo[:revision]`): a safetensors repository. config.json, tokenizer
files and the top-level *.safetensors (see folder.is_model_file) are fetched with hf_hub_download into
`models/downloads/...` (so a re-run skips the files already complete), checked (LFS sha256, or the git blob
id of small files), moved into the store as blobs, and listed in a manifest whose `model_path` is a folder
of links to them (folder.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from ladle.store import folder
from ladle.store.details import config_blob, gguf_details, safetensors_details
from ladle.store.download import DownloadConfig
from ladle.store.errors import PullError
from ladle.store.layout import import_file, sha256_file, write_blob
from ladle.store.manifest import (
    FORMAT_GGUF,
    FORMAT_SAFETENSORS,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_FILE,
    MEDIA_TYPE_MODEL,
    Layer,
    Manifest,
)
from ladle.store.names import DEFAULT_QUANT, DEFAULT_TAG, ModelName
from ladle.store.store import LocalModel, Store
from ladle.store.transfer import BlobSource, Progress, fetch_blobs
from ladle.version import __version__

_QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])((?:I?Q\d+(?:_[A-Za-z0-9]+)*)|BF16|F16|F32|FP16|FP32)(?![A-Za-z0-9])", re.I
)
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.I)
# Parallel file downloads for a safetensors repository (each file may use more connections itself).
_FILE_WORKERS = 4


def hf_endpoint() -> str | None:
    # Read at call time: huggingface_hub reads HF_ENDPOINT once, at import.
    return os.environ.get("HF_ENDPOINT") or None


def pull_gguf(store: Store, name: ModelName, emit: Progress, config: DownloadConfig) -> LocalModel:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    emit({"status": "pulling manifest"})
    info = _model_info(name.repo_id, None, config)
    siblings = {s.rfilename: s for s in info.siblings or []}
    filename = choose_gguf(list(siblings), name.tag, name.repo_id)
    sibling = siblings[filename]
    endpoint = hf_endpoint()
    if sibling.lfs is not None:
        digest, size = f"sha256:{sibling.lfs.sha256}", sibling.lfs.size
        url = hf_hub_url(name.repo_id, filename, revision=info.sha, endpoint=endpoint)
        headers = build_hf_headers(library_name="ladle", library_version=__version__)
        with httpx.Client(follow_redirects=True, timeout=config.timeout()) as client:
            fetch_blobs(store, client, [BlobSource(digest, size, url, headers)], emit, config)
    else:
        # Not in LFS (only tiny files are): let huggingface_hub fetch it, then hash it ourselves.
        staging = _staging(store, name, info.sha)
        path = _hf_download(name.repo_id, filename, info.sha, staging, _reporter(emit, sibling))
        emit({"status": "verifying sha256 digest"})
        _check_git_blob(path, sibling)
        digest, size = import_file(store.layout, path)
    blob = store.blob_path(digest)
    try:
        details = gguf_details(blob)
    except ValueError as e:
        raise PullError(f"{filename} in {name.repo_id}: {e}") from None
    config_digest, config_size = write_blob(store.layout, config_blob(details, [digest]))
    manifest = Manifest(
        config=Layer(MEDIA_TYPE_CONFIG, config_digest, config_size),
        layers=[Layer(MEDIA_TYPE_MODEL, digest, size)],
        format=FORMAT_GGUF,
    )
    emit({"status": "writing manifest"})
    model = store.commit(name, manifest)
    if sibling.lfs is None:
        shutil.rmtree(_staging(store, name, info.sha), ignore_errors=True)
    emit({"status": "success"})
    return model


def pull_repo(store: Store, name: ModelName, emit: Progress, config: DownloadConfig) -> LocalModel:
    emit({"status": "pulling manifest"})
    info = _model_info(name.repo_id, name.tag, config)
    siblings = [s for s in info.siblings or [] if folder.is_model_file(s.rfilename)]
    names = [s.rfilename for s in siblings]
    if not folder.is_weights_folder(names):
        if any(s.rfilename.lower().endswith(".gguf") for s in info.siblings or []):
            raise PullError(
                f"{name.repo_id} has no safetensors weights but has GGUF files: pull hf.co/{name.repo_id}"
            )
        raise PullError(
            f"{name.repo_id} is not a safetensors model repository (no config.json and *.safetensors)"
        )
    staging = _staging(store, name, info.sha)

    def fetch(sibling: Any) -> Path:
        if sibling.lfs is not None and store.blob_path(f"sha256:{sibling.lfs.sha256}").is_file():
            _reporter(emit, sibling)(total=sibling.lfs.size, initial=sibling.lfs.size)
            return store.blob_path(f"sha256:{sibling.lfs.sha256}")
        return _hf_download(name.repo_id, sibling.rfilename, info.sha, staging, _reporter(emit, sibling))

    with ThreadPoolExecutor(max_workers=_FILE_WORKERS) as pool:
        paths = list(pool.map(fetch, siblings))

    emit({"status": "verifying sha256 digest"})
    layers: list[Layer] = []
    files: dict[str, Path] = {}
    for sibling, path in zip(siblings, paths, strict=True):
        if sibling.lfs is not None:
            digest = f"sha256:{sibling.lfs.sha256}"
            if path != store.blob_path(digest):
                actual = sha256_file(path)
                if actual != digest:
                    path.unlink(missing_ok=True)
                    raise PullError(
                        f"digest mismatch for {sibling.rfilename} of {name.repo_id}: the download is corrupt "
                        f"(expected {digest}, got {actual}); it was discarded"
                    )
                _move_into_store(store, path, digest)
        else:
            _check_git_blob(path, sibling)
            digest = sha256_file(path)
            _move_into_store(store, path, digest)
        blob = store.blob_path(digest)
        layers.append(Layer(MEDIA_TYPE_FILE, digest, blob.stat().st_size, name=sibling.rfilename))
        files[sibling.rfilename] = blob

    details = safetensors_details(files)
    config_digest, config_size = write_blob(store.layout, config_blob(details, [la.digest for la in layers]))
    manifest = Manifest(
        config=Layer(MEDIA_TYPE_CONFIG, config_digest, config_size), layers=layers, format=FORMAT_SAFETENSORS
    )
    emit({"status": "writing manifest"})
    model = store.commit(name, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    emit({"status": "success"})
    return model


def choose_gguf(files: list[str], tag: str, repo_id: str) -> str:
    """The GGUF file a tag names: the quantization as a whole word in the file name, case-insensitive."""
    candidates = [
        f for f in files if f.lower().endswith(".gguf") and "mmproj" not in PurePosixPath(f).name.lower()
    ]
    if not candidates:
        hint = (
            f"; for safetensors weights pull {repo_id}"
            if any(f.endswith(".safetensors") for f in files)
            else ""
        )
        raise PullError(f"hf.co/{repo_id} has no GGUF files{hint}")
    default = tag.lower() == DEFAULT_TAG
    quant = DEFAULT_QUANT if default else tag
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(quant)}(?![A-Za-z0-9_])", re.I)
    matches = [f for f in candidates if pattern.search(PurePosixPath(f).name)]
    if not matches and default and len(candidates) == 1:
        return candidates[0]
    if len(matches) == 1:
        return matches[0]
    if matches:
        if all(_SPLIT_GGUF.search(f) for f in matches):
            raise PullError(
                f"{quant} of hf.co/{repo_id} is split into several files, which is not supported yet"
            )
        raise PullError(f"several GGUF files of hf.co/{repo_id} match {quant}: {', '.join(sorted(matches))}")
    available = sorted({_quant_of(f) for f in candidates})
    raise PullError(f"hf.co/{repo_id} has no {quant} GGUF file; available: {', '.join(available)}")


def _quant_of(filename: str) -> str:
    found = _QUANT_IN_NAME.findall(PurePosixPath(filename).name.removesuffix(".gguf"))
    return found[-1].upper() if found else filename


def _model_info(repo_id: str, revision: str | None, config: DownloadConfig) -> Any:
    from huggingface_hub import HfApi
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=hf_endpoint(), library_name="ladle", library_version=__version__)
    attempt = 0
    while True:
        try:
            return api.model_info(repo_id, revision=revision, files_metadata=True)
        except GatedRepoError:
            raise PullError(
                f"{repo_id} is gated on Hugging Face: accept its terms there and set HF_TOKEN"
            ) from None
        except RepositoryNotFoundError:
            raise PullError(
                f"Hugging Face repository {repo_id} not found (if it is private, set HF_TOKEN)"
            ) from None
        except RevisionNotFoundError:
            raise PullError(f"Hugging Face repository {repo_id} has no revision {revision!r}") from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else "?"
            if not (isinstance(status, int) and status >= 500) or attempt >= config.max_retries:
                raise PullError(f"Hugging Face answered HTTP {status} for {repo_id}") from None
        except Exception as e:
            if not _is_connection_error(e):
                raise
            if attempt >= config.max_retries:
                where = hf_endpoint() or "https://huggingface.co"
                raise PullError(f"cannot reach Hugging Face at {where}: {e or type(e).__name__}") from None
        attempt += 1
        time.sleep(config.backoff(attempt))


def _hf_download(
    repo_id: str, filename: str, revision: str, staging: Path, report: Callable[..., Any]
) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError

    try:
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=staging,
            endpoint=hf_endpoint(),
            library_name="ladle",
            library_version=__version__,
            tqdm_class=functools.partial(_ProgressBar, report=report),  # type: ignore[arg-type]
        )
    except EntryNotFoundError:
        raise PullError(f"{filename} not found in Hugging Face repository {repo_id}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise PullError(f"download of {filename} from {repo_id} failed: HTTP {status}") from None
    except Exception as e:
        if _is_connection_error(e):
            raise PullError(f"download of {filename} from {repo_id} failed: {e}") from None
        raise
    return Path(path)


def _reporter(emit: Progress, sibling: Any) -> Callable[..., None]:
    """A progress function for one file, in Ollama's `pulling <id12>` form."""
    file_id = sibling.lfs.sha256 if sibling.lfs is not None else (sibling.blob_id or sibling.rfilename)
    status = f"pulling {file_id[:12]}"
    digest = f"sha256:{sibling.lfs.sha256}" if sibling.lfs is not None else None

    def report(total: int | None = None, initial: int = 0, completed: int | None = None) -> None:
        event: dict[str, Any] = {"status": status}
        if digest:
            event["digest"] = digest
        event["total"] = total if total is not None else (sibling.size or 0)
        event["completed"] = completed if completed is not None else initial
        emit(event)

    return report


class _ProgressBar:
    """Stands in for tqdm in huggingface_hub's downloads and turns its updates into pull progress."""

    def __init__(
        self, *args: Any, report: Callable[..., None], total: int | None = None, initial: int = 0, **_: Any
    ):
        self.report = report
        self.total = total
        self.n = initial or 0
        report(total=total, completed=self.n)

    def update(self, n: float | None = 1) -> None:
        self.n += int(n or 0)
        self.report(total=self.total, completed=self.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        # close, refresh, set_postfix_str ...: nothing to draw.
        return lambda *args, **kwargs: None


def _check_git_blob(path: Path, sibling: Any) -> None:
    """Small (non-LFS) files are checked against their git blob id, the sha1 of "blob <size>\\0" + content."""
    if not sibling.blob_id:
        return
    data = path.read_bytes()
    actual = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if actual != sibling.blob_id:
        path.unlink(missing_ok=True)
        raise PullError(f"{sibling.rfilename} is corrupt (git blob id {actual}, expected {sibling.blob_id})")


def _move_into_store(store: Store, path: Path, digest: str) -> None:
    target = store.blob_path(digest)
    if target.is_file():
        path.unlink(missing_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _staging(store: Store, name: ModelName, revision: str | None) -> Path:
    return store.layout.downloads.joinpath(name.host, name.namespace, name.model, revision or name.tag)


def _is_connection_error(error: BaseException) -> bool:
    # huggingface_hub's HTTP library changed across versions (requests, httpx, httpx2): match by name.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names & {"ConnectError", "TimeoutException", "ConnectionError", "NetworkError", "TransportError"}
    )
