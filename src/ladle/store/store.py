"""The local model store: resolve names to files, list, copy, remove, create from a Modelfile.

    store = Store()                          # LADLE_HOME, default ~/.ladle; models under <home>/models
    model = store.resolve("llama3.2")        # LocalModel or None
    model.model_path                         # the GGUF file, or the folder of a safetensors model
    store.list_models()                      # [ModelInfo], newest first, ladle's and Ollama's models
    store.copy("llama3.2", "mine")           # like `ollama cp`
    store.remove("mine")                     # blobs other manifests use are kept
    store.create("pirate", "FROM llama3.2\\nSYSTEM Arr.", base_dir=Path.cwd())

Ollama's store (OLLAMA_MODELS, else ~/.ollama/models and /usr/share/ollama/.ollama/models) is read too, so
models Ollama downloaded are listed (source "ollama") and resolve in place; ladle never writes there. A name
present in both resolves to ladle's. Copying or building from an Ollama model links (or copies) its blobs
into ladle's store first.

Threads of one process may share a Store; manifest writes and removals take a lock. Two processes writing
the same store are safe for reading and pulling (all writes are atomic renames), but a `remove` racing a
pull of a model that shares its blobs is not guarded, as in Ollama.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ladle.store import folder
from ladle.store.details import ModelDetails, config_blob, gguf_details, is_gguf, safetensors_details
from ladle.store.errors import InvalidModelName, ModelfileError, ModelNotFound, ReadOnlyModel, StoreError
from ladle.store.layout import StoreLayout, adopt_blob, atomic_write, import_file, sha256_file, write_blob
from ladle.store.manifest import (
    FORMAT_GGUF,
    FORMAT_SAFETENSORS,
    MEDIA_TYPE_ADAPTER,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_FILE,
    MEDIA_TYPE_LICENSE,
    MEDIA_TYPE_MESSAGES,
    MEDIA_TYPE_MODEL,
    MEDIA_TYPE_PARAMS,
    MEDIA_TYPE_PROJECTOR,
    MEDIA_TYPE_PROMPT,
    MEDIA_TYPE_SYSTEM,
    MEDIA_TYPE_TEMPLATE,
    Layer,
    Manifest,
)
from ladle.store.modelfile import parse_modelfile
from ladle.store.names import ModelName, parse_model_name

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
Source = Literal["ladle", "ollama"]


@dataclass
class LocalModel:
    """A model on disk, with what a runner needs from its manifest."""

    name: ModelName
    format: str  # "gguf" or "safetensors"
    model_path: Path  # the GGUF file, or the folder of a safetensors model
    template: str | None
    params: dict[str, Any]
    system: str | None
    licenses: list[str]
    messages: list[dict[str, str]]
    digest: str  # sha256 of the manifest: the model's ID (`ladle list` shows 12 hex digits)
    size: int
    details: ModelDetails
    modified_at: datetime
    source: Source
    manifest: Manifest = field(repr=False)
    manifest_path: Path = field(repr=False)
    projector_path: Path | None = None  # a vision projector (mmproj) in Ollama models
    adapter_paths: list[Path] = field(default_factory=list)

    @property
    def license(self) -> str | None:
        return "\n".join(self.licenses) if self.licenses else None


@dataclass
class ModelInfo:
    """One row of `ladle list` / GET /api/tags."""

    name: str  # the shortest name that resolves to it, e.g. "llama3.2:latest"
    model: str  # the same, as Ollama's /api/tags repeats it
    full_name: str  # host/namespace/name:tag
    size: int
    digest: str  # hex sha256 of the manifest
    modified_at: datetime
    details: ModelDetails
    source: Source


def default_home() -> Path:
    return Path(os.environ.get("LADLE_HOME") or Path.home() / ".ladle").expanduser()


def ollama_model_dirs() -> list[Path]:
    """Where Ollama keeps models: OLLAMA_MODELS if set, else its defaults that exist."""
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    candidates = [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    return [p for p in candidates if p.is_dir()]


class Store:
    def __init__(self, home: Path | str | None = None, *, ollama_dirs: list[Path] | None = None) -> None:
        """`home` defaults to LADLE_HOME (else ~/.ladle); `ollama_dirs` to ollama_model_dirs()."""
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.layout = StoreLayout(self.home / "models")
        own = self.layout.root.resolve()
        dirs = ollama_model_dirs() if ollama_dirs is None else ollama_dirs
        self.ollama_layouts = [StoreLayout(Path(d)) for d in dirs if Path(d).resolve() != own]
        self._lock = threading.RLock()
        self._blob_locks: dict[str, threading.Lock] = {}
        self._gguf_details: dict[str, ModelDetails] = {}

    # ---- names ---------------------------------------------------------------------------------------

    def qualify(self, name: str | ModelName) -> ModelName:
        """Parse a reference and settle a bare `org/repo`: a local `org/repo:latest` wins (see names.py)."""
        parsed = parse_model_name(name) if isinstance(name, str) else name
        if parsed.ambiguous and self._locate(parsed.as_registry()) is not None:
            return parsed.as_registry()
        return parsed

    @staticmethod
    def local_name(name: str | ModelName) -> ModelName:
        """A name for a new local model (cp, create): a bare `ns/name` means `ns/name:latest`."""
        parsed = parse_model_name(name) if isinstance(name, str) else name
        return parsed.as_registry()

    # ---- reading -------------------------------------------------------------------------------------

    def resolve(self, name: str | ModelName) -> LocalModel | None:
        """The local model a name refers to, or None. InvalidModelName for a bad name; StoreError when the
        manifest is damaged or a blob it needs is missing."""
        found = self._locate(self.qualify(name))
        if found is None:
            return None
        stored_name, path, layout, source = found
        return self._load(stored_name, path, layout, source)

    def get(self, name: str | ModelName) -> LocalModel:
        """Like resolve(), but ModelNotFound instead of None."""
        model = self.resolve(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found, try pulling it first")
        return model

    def list_models(self) -> list[ModelInfo]:
        """Every complete model in ladle's store and, read-only, Ollama's; newest first."""
        seen: set[tuple[str, ...]] = set()
        rows: list[ModelInfo] = []
        for layout, source in self._layouts():
            for name, path in layout.iter_manifests():
                key = tuple(p.lower() for p in name.parts())
                if key in seen:
                    continue
                try:
                    model = self._load(name, path, layout, source)
                except StoreError as e:
                    logger.warning("skipping %s: %s", name.full, e)
                    continue
                seen.add(key)
                rows.append(
                    ModelInfo(
                        name=str(name),
                        model=str(name),
                        full_name=name.full,
                        size=model.size,
                        digest=model.digest.removeprefix("sha256:"),
                        modified_at=model.modified_at,
                        details=model.details,
                        source=source,
                    )
                )
        rows.sort(key=lambda row: row.modified_at, reverse=True)
        return rows

    def blob_path(self, digest: str) -> Path:
        return self.layout.blob_path(digest)

    def blob_lock(self, digest: str) -> threading.Lock:
        """One lock per blob, so two pulls in this process never write the same partial file at once."""
        with self._lock:
            return self._blob_locks.setdefault(digest, threading.Lock())

    def find_ollama_blob(self, digest: str) -> Path | None:
        """A blob with this digest in Ollama's store, so pulls and copies can link instead of download."""
        for layout in self.ollama_layouts:
            path = layout.blob_path(digest)
            if path.is_file():
                return path
        return None

    # ---- writing -------------------------------------------------------------------------------------

    def copy(self, source: str | ModelName, destination: str | ModelName) -> ModelName:
        """`ladle cp`: the destination gets the source's manifest (so the same ID); returns its name."""
        found = self._locate(self.qualify(source))
        if found is None:
            raise ModelNotFound(f"model '{source}' not found")
        _, path, layout, source_kind = found
        target = self.local_name(destination)
        data = path.read_bytes()
        manifest = _parse_manifest(data, path)
        with self._lock:
            if source_kind == "ollama":
                self._adopt_blobs(manifest, layout)
            self.commit(target, manifest, data)
        return target

    def remove(self, name: str | ModelName) -> ModelName:
        """`ladle rm`: delete the manifest, then the blobs no other manifest uses; returns the name removed."""
        qualified = self.qualify(name)
        with self._lock:
            path = self.layout.find_manifest(qualified)
            if path is None:
                if any(layout.find_manifest(qualified) for layout in self.ollama_layouts):
                    raise ReadOnlyModel(
                        f"model '{name}' is in Ollama's store, which ladle does not change; use `ollama rm`"
                    )
                raise ModelNotFound(f"model '{name}' not found")
            try:
                manifest = Manifest.from_bytes(path.read_bytes())
            except ValueError:
                manifest = None  # a damaged manifest can still be removed; its blobs wait for a later rm
            digest = sha256_file(path)
            path.unlink()
            _prune_empty_dirs(path.parent, self.layout.manifests)
            if manifest is not None:
                self._collect_garbage([layer.digest for layer in manifest.blobs], digest)
        return qualified

    def create(
        self,
        name: str | ModelName,
        modelfile: str,
        base_dir: Path | str | None = None,
        progress: Progress | None = None,
    ) -> LocalModel:
        """`ladle create NAME -f Modelfile`: build a model from Modelfile text.

        FROM is resolved like Ollama: an existing path (relative to `base_dir`, default the current folder)
        to a .gguf file or a Hugging Face folder (config.json + *.safetensors, stored file by file; see
        folder.py), else a local model name whose layers are inherited. TEMPLATE, SYSTEM, MESSAGE and
        LICENSE replace the base model's; PARAMETERs are merged over the base's, key by key.
        """
        emit = progress or (lambda event: None)
        target = self.local_name(name)
        parsed = parse_modelfile(modelfile)
        for command in parsed.commands:
            if command.name == "adapter":
                raise ModelfileError("ADAPTER: adapters are not supported yet", command.line)
            if command.name in ("draft", "renderer", "parser"):
                raise ModelfileError(f"{command.name.upper()} is not supported yet", command.line)
        params = parsed.parameters  # validates PARAMETER lines before any file is copied
        from_command = parsed.last("from")
        assert from_command is not None
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        emit({"status": "gathering model components"})
        with self._lock:
            layers, details, fmt = self._base_layers(from_command.args, from_command.line, base, emit)
            base_params: dict[str, Any] = {}
            for layer in layers:
                if layer.media_type == MEDIA_TYPE_PARAMS:
                    base_params = _read_json(self.layout.blob_path(layer.digest), dict)
            if parsed.template is not None:
                layers = self._replace_text(layers, MEDIA_TYPE_TEMPLATE, [parsed.template], emit)
                layers = [layer for layer in layers if layer.media_type != MEDIA_TYPE_PROMPT]
            if parsed.system is not None:
                layers = self._replace_text(layers, MEDIA_TYPE_SYSTEM, [parsed.system], emit)
            if parsed.licenses:
                layers = self._replace_text(layers, MEDIA_TYPE_LICENSE, parsed.licenses, emit)
            if parsed.messages:
                layers = self._replace_text(layers, MEDIA_TYPE_MESSAGES, [json.dumps(parsed.messages)], emit)
            if params:
                merged = {**base_params, **params}
                layers = self._replace_text(layers, MEDIA_TYPE_PARAMS, [json.dumps(merged)], emit)
            config_digest, config_size = write_blob(
                self.layout, config_blob(details, [layer.digest for layer in layers])
            )
            manifest = Manifest(
                config=Layer(MEDIA_TYPE_CONFIG, config_digest, config_size), layers=layers, format=fmt
            )
            emit({"status": "writing manifest"})
            model = self.commit(target, manifest)
        emit({"status": "success"})
        return model

    def commit(self, name: ModelName, manifest: Manifest, data: bytes | None = None) -> LocalModel:
        """Write a manifest whose blobs are all in the store (the last step of pull, create and cp).

        The manifest is renamed into place only after every blob is checked present (and, for safetensors,
        the folder view is built), so a reader sees the old model or the whole new one. Blobs only the
        replaced manifest used are removed, as `ollama pull` does when it updates a model.
        """
        data = manifest.to_bytes() if data is None else data
        with self._lock:
            for layer in manifest.blobs:
                if not self.layout.blob_path(layer.digest).is_file():
                    raise StoreError(f"cannot write {name}: blob {layer.digest} is missing")
            if manifest.layers_of(MEDIA_TYPE_FILE):
                folder.ensure_snapshot(self.layout, manifest, _digest_of(data))
            path = self.layout.find_manifest(name) or self.layout.manifest_path(name)
            old: Manifest | None = None
            old_digest = ""
            if path.is_file():
                try:
                    old_data = path.read_bytes()
                    old, old_digest = Manifest.from_bytes(old_data), _digest_of(old_data)
                except (OSError, ValueError):
                    old = None
            atomic_write(path, data)
            if old is not None and old_digest != _digest_of(data):
                self._collect_garbage([layer.digest for layer in old.blobs], old_digest)
            return self._load(name, path, self.layout, "ladle")

    # ---- internals -----------------------------------------------------------------------------------

    def _layouts(self) -> list[tuple[StoreLayout, Source]]:
        return [(self.layout, "ladle"), *((layout, "ollama") for layout in self.ollama_layouts)]

    def _locate(self, name: ModelName) -> tuple[ModelName, Path, StoreLayout, Source] | None:
        for layout, source in self._layouts():
            path = layout.find_manifest(name)
            if path is not None:
                # The name as stored, which may differ in case from the one asked for.
                host, namespace, model, tag = path.relative_to(layout.manifests).parts
                return ModelName(host, namespace, model, tag), path, layout, source
        return None

    def _load(self, name: ModelName, path: Path, layout: StoreLayout, source: Source) -> LocalModel:
        try:
            data = path.read_bytes()
            stat = path.stat()
        except OSError as e:
            raise StoreError(f"cannot read the manifest of {name}: {e.strerror}") from None
        manifest = _parse_manifest(data, path)
        digest = _digest_of(data)
        for layer in manifest.blobs:
            if not layout.blob_path(layer.digest).is_file():
                raise StoreError(f"model {name} is incomplete: blob {layer.digest} is missing; pull it again")

        def text_of(media_type: str) -> list[str]:
            return [
                layout.blob_path(layer.digest).read_text(encoding="utf-8", errors="replace")
                for layer in manifest.layers_of(media_type)
            ]

        templates = text_of(MEDIA_TYPE_TEMPLATE) or text_of(MEDIA_TYPE_PROMPT)
        systems = text_of(MEDIA_TYPE_SYSTEM)
        params: dict[str, Any] = {}
        for layer in manifest.layers_of(MEDIA_TYPE_PARAMS):
            params = _read_json(layout.blob_path(layer.digest), dict)
        messages: list[dict[str, str]] = []
        for layer in manifest.layers_of(MEDIA_TYPE_MESSAGES):
            messages = [m for m in _read_json(layout.blob_path(layer.digest), list) if isinstance(m, dict)]

        model_layers = manifest.layers_of(MEDIA_TYPE_MODEL)
        if model_layers:
            fmt = FORMAT_GGUF
            model_path = layout.blob_path(model_layers[-1].digest)
        elif manifest.layers_of(MEDIA_TYPE_FILE):
            fmt = FORMAT_SAFETENSORS
            if layout is not self.layout:
                raise StoreError(f"model {name} has no model layer")  # never written outside ladle's store
            model_path = folder.ensure_snapshot(self.layout, manifest, digest)
        else:
            raise StoreError(f"model {name} has no model layer")

        details = self._details(manifest, layout, fmt, model_path)
        projectors = manifest.layers_of(MEDIA_TYPE_PROJECTOR)
        return LocalModel(
            name=name,
            format=fmt,
            model_path=model_path,
            template=templates[-1] if templates else None,
            params=params,
            system=systems[-1] if systems else None,
            licenses=text_of(MEDIA_TYPE_LICENSE),
            messages=messages,
            digest=digest,
            size=manifest.size,
            details=details,
            modified_at=datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc),
            source=source,
            manifest=manifest,
            manifest_path=path,
            projector_path=layout.blob_path(projectors[0].digest) if projectors else None,
            adapter_paths=[layout.blob_path(a.digest) for a in manifest.layers_of(MEDIA_TYPE_ADAPTER)],
        )

    def _details(self, manifest: Manifest, layout: StoreLayout, fmt: str, model_path: Path) -> ModelDetails:
        try:
            config = json.loads(layout.blob_path(manifest.config.digest).read_bytes())
        except (OSError, ValueError):
            config = {}
        details = ModelDetails.from_config(config if isinstance(config, dict) else {})
        if not (details.family and details.quantization_level) and fmt == FORMAT_GGUF:
            # Configs from other tools may lack the details; the GGUF metadata has them.
            cached = self._gguf_details.get(manifest.config.digest)
            if cached is None:
                try:
                    cached = gguf_details(model_path)
                except ValueError:
                    cached = ModelDetails()
                self._gguf_details[manifest.config.digest] = cached
            details = ModelDetails(
                format=details.format or cached.format,
                family=details.family or cached.family,
                families=details.families or cached.families,
                parameter_size=details.parameter_size or cached.parameter_size,
                quantization_level=details.quantization_level or cached.quantization_level,
            )
        details.format = details.format or fmt
        inherited = next((layer.from_ for layer in manifest.layers if layer.from_), None)
        details.parent_model = inherited or ""
        return details

    def _base_layers(
        self, reference: str, line: int, base_dir: Path, emit: Progress
    ) -> tuple[list[Layer], ModelDetails, str]:
        """The layers FROM gives: a file or folder imported as blobs, or a local model's layers."""
        path = Path(reference).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        looks_like_path = reference.startswith(("/", "./", "../", "~")) or reference.endswith(".gguf")
        if path.is_file():
            if not is_gguf(path):
                raise ModelfileError(f"FROM {reference}: not a GGUF file", line)
            return self._import_gguf(path, emit)
        if path.is_dir():
            files = folder.list_folder(path)
            if folder.is_weights_folder(list(files)):
                return self._import_folder(files, emit)
            ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
            if len(ggufs) == 1:
                return self._import_gguf(ggufs[0], emit)
            raise ModelfileError(
                f"FROM {reference}: the folder has neither config.json with *.safetensors nor a single .gguf file",
                line,
            )
        if looks_like_path:
            raise ModelfileError(f"FROM {reference}: no such file or folder", line)
        try:
            base_name = self.qualify(reference)
        except InvalidModelName as e:
            raise ModelfileError(f"FROM {reference}: {e}", line) from None
        found = self._locate(base_name)
        if found is None:
            raise ModelfileError(f"FROM {reference}: model not found; pull it first", line)
        stored_name, manifest_path, layout, source = found
        base = self._load(stored_name, manifest_path, layout, source)
        if source == "ollama":
            self._adopt_blobs(base.manifest, layout)
        origin = str(stored_name)
        layers = [
            Layer(layer.media_type, layer.digest, layer.size, name=layer.name, from_=layer.from_ or origin)
            for layer in base.manifest.layers
        ]
        for layer in layers:
            emit({"status": f"using existing layer {layer.digest}"})
        details = ModelDetails(**{**base.details.__dict__, "parent_model": ""})
        return layers, details, base.format

    def _import_gguf(self, path: Path, emit: Progress) -> tuple[list[Layer], ModelDetails, str]:
        try:
            details = gguf_details(path)
        except ValueError as e:
            raise ModelfileError(str(e)) from None
        emit({"status": f"copying file {path.name}"})
        digest, size = import_file(self.layout, path)
        emit({"status": f"creating new layer {digest}"})
        return [Layer(MEDIA_TYPE_MODEL, digest, size)], details, FORMAT_GGUF

    def _import_folder(self, files: dict[str, Path], emit: Progress) -> tuple[list[Layer], ModelDetails, str]:
        layers = []
        for rel, path in files.items():
            emit({"status": f"copying file {rel}"})
            digest, size = import_file(self.layout, path)
            layers.append(Layer(MEDIA_TYPE_FILE, digest, size, name=rel))
        return layers, safetensors_details(files), FORMAT_SAFETENSORS

    def _replace_text(
        self, layers: list[Layer], media_type: str, texts: list[str], emit: Progress
    ) -> list[Layer]:
        kept = [layer for layer in layers if layer.media_type != media_type]
        for text in texts:
            existed = self.layout.blob_path(_digest_of(text.encode())).is_file()
            digest, size = write_blob(self.layout, text.encode())
            emit({"status": f"{'using existing' if existed else 'creating new'} layer {digest}"})
            kept.append(Layer(media_type, digest, size))
        return kept

    def _adopt_blobs(self, manifest: Manifest, source: StoreLayout) -> None:
        for layer in manifest.blobs:
            if not adopt_blob(self.layout, source.blob_path(layer.digest), layer.digest):
                raise StoreError(f"blob {layer.digest} in Ollama's store does not match its digest")

    def _collect_garbage(self, candidates: list[str], manifest_digest: str) -> None:
        """Remove candidate blobs (and a snapshot folder) that no remaining manifest refers to."""
        in_use: set[str] = set()
        digests_in_use: set[str] = set()
        for _, path in self.layout.iter_manifests():
            try:
                data = path.read_bytes()
                manifest = Manifest.from_bytes(data)
            except (OSError, ValueError):
                continue
            digests_in_use.add(_digest_of(data))
            in_use.update(layer.digest for layer in manifest.blobs)
        for digest in set(candidates) - in_use:
            self.layout.blob_path(digest).unlink(missing_ok=True)
        if manifest_digest and manifest_digest not in digests_in_use:
            shutil.rmtree(folder.snapshot_path(self.layout, manifest_digest), ignore_errors=True)


def _parse_manifest(data: bytes, path: Path) -> Manifest:
    try:
        return Manifest.from_bytes(data)
    except ValueError as e:
        raise StoreError(f"damaged manifest {path}: {e}") from None


def _read_json(path: Path, kind: type) -> Any:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise StoreError(f"damaged blob {path.name}: {e}") from None
    if not isinstance(value, kind):
        raise StoreError(f"damaged blob {path.name}: expected a JSON {kind.__name__}")
    return value


def _digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _prune_empty_dirs(folder_path: Path, stop: Path) -> None:
    """Remove empty folders from `folder_path` up to (not including) `stop`."""
    while folder_path != stop and stop in folder_path.parents:
        try:
            folder_path.rmdir()
        except OSError:
            return
        folder_path = folder_path.parent
