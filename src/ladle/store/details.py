"""What `ladle list` and /api/tags show about a model (Ollama's `details`), read from its weights.

Registry models carry these in their config blob; for models ladle builds (create, Hugging Face pulls) they
are computed here once and written into the config blob, so listing never has to open the weights.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"


@dataclass
class ModelDetails:
    format: str = ""
    family: str = ""
    families: list[str] | None = None
    parameter_size: str = ""
    quantization_level: str = ""
    parent_model: str = ""

    def to_config(self) -> dict[str, Any]:
        """The fields of Ollama's config blob (ConfigV2) that hold these details."""
        return {
            "model_format": self.format,
            "model_family": self.family,
            "model_families": self.families,
            "model_type": self.parameter_size,
            "file_type": self.quantization_level,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelDetails:
        def text(key: str) -> str:
            value = config.get(key)
            return value if isinstance(value, str) else ""

        families = config.get("model_families")
        return cls(
            format=text("model_format"),
            family=text("model_family"),
            families=[f for f in families if isinstance(f, str)] if isinstance(families, list) else None,
            parameter_size=text("model_type"),
            quantization_level=text("file_type"),
        )


def human_number(n: int) -> str:
    """Parameter counts the way Ollama prints them: 8B, 7.6B, 494.03M, 293K."""
    for unit, scale, decimals in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{decimals}f}{unit}"
    if n >= 1000:
        return f"{n / 1000:.0f}K"
    return str(n)


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_details(path: Path) -> ModelDetails:
    """Details from a GGUF file's metadata; ValueError if it is not a readable GGUF file."""
    # ladle's own reader: gguf.GGUFReader takes ~15 s over a 262k-token vocabulary, this one under a second.
    from ladle.loader.gguf_file import read_gguf

    try:
        gguf_file = read_gguf(path)
    except (OSError, ValueError) as e:  # GGUFError is a ValueError naming the file and the reason
        raise ValueError(f"{path.name} is not a readable GGUF file ({e})") from None
    try:
        arch = gguf_file.metadata.get("general.architecture") or ""
        n_params = sum(math.prod(t.shape) for t in gguf_file.tensors.values())
        quant = _gguf_file_type(gguf_file.tensors.values(), gguf_file.metadata.get("general.file_type"))
    finally:
        gguf_file.close()
    return ModelDetails(
        format="gguf",
        family=str(arch),
        families=[str(arch)] if arch else None,
        parameter_size=human_number(n_params) if n_params else "",
        quantization_level=quant,
    )


def _gguf_file_type(tensors: Any, file_type: Any) -> str:
    import gguf

    if isinstance(file_type, int):
        try:
            member = gguf.LlamaFileType(file_type)
        except ValueError:
            member = None
        if member is not None and member.name != "GUESSED":
            return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No (usable) file type: name it after the tensor type holding most of the weights.
    counts: Counter[str] = Counter()
    for tensor in tensors:
        counts[tensor.qtype.name] += math.prod(tensor.shape)
    return counts.most_common(1)[0][0] if counts else ""


_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float8_e4m3fn": "F8_E4M3"}


def safetensors_details(files: dict[str, Path]) -> ModelDetails:
    """Details of a Hugging Face folder, given its files by relative path (config.json, *.safetensors)."""
    config: dict[str, Any] = {}
    if "config.json" in files:
        try:
            loaded = json.loads(files["config.json"].read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            config = {}
    family = config.get("model_type") if isinstance(config.get("model_type"), str) else ""
    n_params = 0
    for rel, path in files.items():
        if rel.endswith(".safetensors"):
            n_params += _safetensors_parameter_count(path)
    quant = ""
    qconfig = config.get("quantization_config")
    if isinstance(qconfig, dict) and isinstance(qconfig.get("quant_method"), str):
        quant = qconfig["quant_method"].upper()
    else:
        dtype = config.get("torch_dtype") or config.get("dtype")
        if isinstance(dtype, str):
            quant = _DTYPE_NAMES.get(dtype, dtype.upper())
    return ModelDetails(
        format="safetensors",
        family=family,
        families=[family] if family else None,
        parameter_size=human_number(n_params) if n_params else "",
        quantization_level=quant,
    )


def _safetensors_parameter_count(path: Path) -> int:
    """Sum of tensor sizes from a safetensors header (8-byte length, then JSON), without reading weights."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 << 20:  # a header this large is not a safetensors file
                return 0
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return 0
    total = 0
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        count = 1
        for dim in info.get("shape", []):
            count *= int(dim)
        total += count
    return total


def config_blob(details: ModelDetails, diff_ids: list[str]) -> bytes:
    """Ollama's config blob (ConfigV2): the details plus the OCI fields the spec requires."""
    data = {
        **details.to_config(),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(data, separators=(",", ":")).encode()


__all__ = [
    "ModelDetails",
    "config_blob",
    "gguf_details",
    "human_number",
    "is_gguf",
    "safetensors_details",
]
