"""Where things live in a store, and the file operations that keep it consistent.

A store's `models` folder has Ollama's layout, so an Ollama store reads with the same code:

    models/blobs/sha256-<hex>                     content-addressed blobs (GGUF files, templates, params ...)
    models/manifests/<host>/<ns>/<name>/<tag>     one manifest per model name

ladle adds, only in its own store:

    models/blobs/sha256-<hex>-partial             a download in progress (+ `.json`: which bytes arrived)
    models/snapshots/<manifest-hex>/              a safetensors model as a folder: links to its blobs
    models/downloads/                             Hugging Face files being fetched

A blob is written under a temporary name and renamed into place only once its sha256 matches its name, and
a manifest is renamed into place only after all its blobs are there; a reader never sees half of either.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ladle.store.manifest import normalize_digest
from ladle.store.names import ModelName, parse_model_name

HASH_CHUNK = 4 << 20


@dataclass(frozen=True)
class StoreLayout:
    root: Path  # the `models` folder

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def blob_path(self, digest: str) -> Path:
        return self.blobs / normalize_digest(digest).replace(":", "-")

    def partial_path(self, digest: str) -> Path:
        return self.blobs / (normalize_digest(digest).replace(":", "-") + "-partial")

    def manifest_path(self, name: ModelName) -> Path:
        path = self.manifests.joinpath(*name.parts())
        # Names are validated to be plain path components; this guards against a future parser bug.
        if self.manifests.resolve() not in path.resolve().parents:
            raise ValueError(f"manifest path for {name.full!r} leaves the store")
        return path

    def find_manifest(self, name: ModelName) -> Path | None:
        """The manifest file for `name`, matching case-insensitively like Ollama; None if there is none."""
        exact = self.manifest_path(name)
        if exact.is_file():
            return exact
        folder = self.manifests
        for part in name.parts():
            if not folder.is_dir():
                return None
            match = next((p for p in _listdir(folder) if p.name.lower() == part.lower()), None)
            if match is None:
                return None
            folder = match
        return folder if folder.is_file() else None

    def name_at(self, path: Path) -> ModelName:
        """The name a manifest file's path spells (its case as stored)."""
        host, namespace, model, tag = path.relative_to(self.manifests).parts
        return ModelName(host, namespace, model, tag)

    def iter_manifests(self) -> Iterator[tuple[ModelName, Path]]:
        """Every manifest file with the name its path spells; paths that are not valid names are skipped."""
        for host in _listdir(self.manifests):
            for namespace in _listdir(host):
                for model in _listdir(namespace):
                    for tag in _listdir(model):
                        if not tag.is_file() or tag.name.startswith("."):
                            continue
                        try:
                            name = parse_model_name(f"{host.name}/{namespace.name}/{model.name}:{tag.name}")
                        except ValueError:
                            continue
                        yield name, tag


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:  # missing, or unreadable (another user's Ollama store)
        return []


def sha256_file(path: Path) -> str:
    """`sha256:<hex>` of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_blob(layout: StoreLayout, data: bytes) -> tuple[str, int]:
    """Store bytes as a blob; returns (digest, size). Writing a blob that exists is a no-op."""
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    path = layout.blob_path(digest)
    if not path.is_file():
        atomic_write(path, data)
    return digest, len(data)


def import_file(layout: StoreLayout, source: Path) -> tuple[str, int]:
    """Copy a file into the store as a blob, hashing it on the way; returns (digest, size).

    Copied, not linked: a hard link would let a later edit of the user's file corrupt the blob.
    """
    layout.blobs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".import-", dir=layout.blobs)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            while chunk := src.read(HASH_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        name = f"sha256:{digest.hexdigest()}"
        path = layout.blob_path(name)
        if path.is_file():
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
        return name, size
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def adopt_blob(layout: StoreLayout, source: Path, digest: str) -> bool:
    """Bring a blob from another store (Ollama's) into this one: hard link, else copy; verified.

    Returns False (and leaves nothing behind) when the source's content does not match `digest`.
    """
    target = layout.blob_path(digest)
    if target.is_file():
        return True
    layout.blobs.mkdir(parents=True, exist_ok=True)
    tmp = layout.blobs / f".adopt-{target.name}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        if sha256_file(tmp) != normalize_digest(digest):
            return False
        os.replace(tmp, target)
        return True
    finally:
        tmp.unlink(missing_ok=True)
