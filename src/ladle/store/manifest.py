"""Manifests and layers in Ollama's format (an OCI image manifest, schema 2).

A manifest lists a config blob and layers; each layer is a blob named by its sha256 digest, with a media
type saying what it holds. ladle reads and writes the same media types as Ollama, so an Ollama store can be
read as is, and adds one of its own for the files of a safetensors folder (Ollama's newer manifests use
the same `name` field for files inside a model).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPE_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_MANIFEST_LIST = "application/vnd.ollama.manifest.list.v2+json"
MEDIA_TYPE_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_MODEL = "application/vnd.ollama.image.model"
MEDIA_TYPE_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_TYPE_PARAMS = "application/vnd.ollama.image.params"
MEDIA_TYPE_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_TYPE_LICENSE = "application/vnd.ollama.image.license"
MEDIA_TYPE_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TYPE_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_TYPE_PROJECTOR = "application/vnd.ollama.image.projector"
# Early Ollama models call the template a prompt.
MEDIA_TYPE_PROMPT = "application/vnd.ollama.image.prompt"
# One file of a Hugging Face folder (config.json, tokenizer files, *.safetensors); `name` is its path there.
MEDIA_TYPE_FILE = "application/vnd.ladle.image.file"

FORMAT_GGUF = "gguf"
FORMAT_SAFETENSORS = "safetensors"

DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


def normalize_digest(digest: str) -> str:
    """`sha256:<hex>` in lower case; ValueError for anything else (a digest becomes a file name)."""
    match = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    if not match:
        raise ValueError(f"invalid digest {digest!r}")
    return f"sha256:{match.group(1).lower()}"


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str
    size: int
    # Path of the file inside a model folder (MEDIA_TYPE_FILE layers).
    name: str | None = None
    # Ollama records the model a layer was inherited from; kept so manifests round-trip.
    from_: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: Any) -> Layer:
        if not isinstance(data, dict):
            raise ValueError("layer is not an object")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"layer has an invalid size {size!r}")
        media_type = data.get("mediaType")
        if not isinstance(media_type, str):
            raise ValueError("layer has no mediaType")
        name = data.get("name")
        return cls(
            media_type=media_type,
            digest=normalize_digest(data.get("digest", "")),
            size=size,
            name=name if isinstance(name, str) and name else None,
            from_=data.get("from") if isinstance(data.get("from"), str) else None,
        )


@dataclass
class Manifest:
    config: Layer
    layers: list[Layer] = field(default_factory=list)
    format: str | None = None

    @property
    def blobs(self) -> list[Layer]:
        """Every blob the manifest needs: the layers, then the config."""
        return [*self.layers, self.config]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.blobs)

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.format:
            data["format"] = self.format
        # Compact like Go's json.Marshal, so manifests look like the ones Ollama writes.
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and validate; ValueError with the reason for anything that is not a usable manifest."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"manifest is not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError("manifest is not a JSON object")
        if obj.get("mediaType") == MEDIA_TYPE_MANIFEST_LIST:
            raise ValueError("manifest lists (multi-runner models) are not supported yet")
        if obj.get("schemaVersion", 2) != 2:
            raise ValueError(f"unsupported manifest schemaVersion {obj.get('schemaVersion')!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ValueError("manifest has no layers")
        fmt = obj.get("format")
        return cls(
            config=Layer.from_json(obj.get("config")),
            layers=[Layer.from_json(layer) for layer in layers],
            format=fmt if isinstance(fmt, str) and fmt else None,
        )
