"""Hugging Face folders (config.json, tokenizer files, *.safetensors) inside the store.

Layout decision: each file of the folder is an ordinary content-addressed blob, listed in the manifest as a
MEDIA_TYPE_FILE layer whose `name` is the file's path in the folder. Blobs dedupe across models and `rm`
treats them like any other blob. The loader wants a folder, so the store keeps one per manifest,
`snapshots/<manifest-hex>/`, whose entries are relative symlinks to the blobs (hard links or copies where
the file system has no symlinks); it is rebuilt from the manifest whenever it is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from ladle.store.layout import StoreLayout
from ladle.store.manifest import MEDIA_TYPE_FILE, Manifest

# Files a model folder needs: weights and config at the top, JSON anywhere (sentence-transformers keeps
# module configs such as 1_Pooling/config.json in subfolders). Other formats (*.bin, *.pt, onnx/) are left out.
_TOP_LEVEL_NAMES = ("tokenizer.model", "merges.txt", "vocab.txt", "vocab.json", "spiece.model")
_TOP_LEVEL_SUFFIXES = (".safetensors", ".tiktoken", ".jinja")


def is_model_file(rel_path: str) -> bool:
    """Whether a file (path relative to the folder, `/`-separated) belongs in the store's copy."""
    parts = PurePosixPath(rel_path).parts
    if not parts or any(p.startswith(".") for p in parts):
        return False
    name = parts[-1]
    if name.endswith(".json"):
        return True
    return len(parts) == 1 and (name in _TOP_LEVEL_NAMES or name.endswith(_TOP_LEVEL_SUFFIXES))


def is_weights_folder(rel_paths: list[str]) -> bool:
    return "config.json" in rel_paths and any("/" not in p and p.endswith(".safetensors") for p in rel_paths)


def list_folder(folder: Path) -> dict[str, Path]:
    """The model files of a folder on disk, by relative path."""
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            if is_model_file(rel):
                files[rel] = path
    return files


def check_layer_name(name: str | None) -> str:
    """A file layer's name becomes a path in the snapshot folder: it must stay inside it."""
    if not name:
        raise ValueError("file layer has no name")
    path = PurePosixPath(name)
    if path.is_absolute() or "\\" in name or any(p in ("", ".", "..") for p in path.parts):
        raise ValueError(f"file layer name {name!r} is not a relative path inside the model folder")
    return name


def snapshot_path(layout: StoreLayout, manifest_digest: str) -> Path:
    return layout.snapshots / manifest_digest.removeprefix("sha256:")


def ensure_snapshot(layout: StoreLayout, manifest: Manifest, manifest_digest: str) -> Path:
    """The folder view of a safetensors manifest, built (atomically) if it does not exist yet."""
    target = snapshot_path(layout, manifest_digest)
    if target.is_dir():
        return target
    layout.snapshots.mkdir(parents=True, exist_ok=True)
    building = layout.snapshots / f".building-{target.name}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        for layer in manifest.layers_of(MEDIA_TYPE_FILE):
            link = building / check_layer_name(layer.name)
            link.parent.mkdir(parents=True, exist_ok=True)
            # Relative from the snapshot's own position, so that moving LADLE_HOME keeps it working.
            blob = layout.blob_path(layer.digest)
            _link(blob, link, Path(os.path.relpath(blob, link.parent)))
        try:
            os.replace(building, target)
        except OSError:
            if not target.is_dir():  # another process built it first; theirs is as good as ours
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _link(blob: Path, link: Path, relative: Path) -> None:
    try:
        os.symlink(relative, link)
        return
    except OSError:
        pass
    try:
        os.link(blob, link)
    except OSError:
        shutil.copyfile(blob, link)
