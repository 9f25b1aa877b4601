"""How many bytes a model's weights take once ladle has loaded them on the CPU (`ladle show` states it).

GGUF: quantized matrices ladle has a kernel for stay packed, the rest expands to float32
(GGUFCheckpoint.in_memory_bytes decides it with the loader's own rule). Safetensors folders: every weight in
float32, the CPU's "auto" dtype.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

_FLOAT32_BYTES = 4


@lru_cache(maxsize=64)
def _gguf_bytes(path: str, mtime: float) -> int:
    from ladle.loader.gguf_loader import load_gguf

    return load_gguf(path).in_memory_bytes()


def weights_memory_bytes(model_path: str | Path, fmt: str) -> int:
    """Bytes of the weights as ladle holds them on the CPU, for a .gguf file or a safetensors folder."""
    path = Path(model_path)
    if fmt == "gguf":
        return _gguf_bytes(str(path), path.stat().st_mtime)
    from ladle.store.details import _safetensors_parameter_count

    return _FLOAT32_BYTES * sum(_safetensors_parameter_count(p) for p in sorted(path.glob("*.safetensors")))


def packed_weights(model: Any) -> list[Any]:
    """The model's quantized (packed GGML) matrices, each once: they are not parameters, and a tied LM head
    shares its embedding's."""
    unique = {id(q): q for m in model.modules() if (q := getattr(m, "quantized", None)) is not None}
    return list(unique.values())


def loaded_weight_bytes(model: Any) -> int:
    """Bytes of a loaded model's weights as they sit in memory: dense parameters (fused q/k/v views counted
    once by parameters()) plus the packed GGML matrices."""
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    return dense + sum(int(q.nbytes) for q in packed_weights(model))
