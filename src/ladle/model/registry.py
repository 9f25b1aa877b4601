"""Model family name -> the class that builds it. A new architecture is one module plus one line here."""

from __future__ import annotations

from ladle.layers.attention import AttentionBackend
from ladle.model.config import ArchConfig
from ladle.model.gemma3 import Gemma3ForCausalLM
from ladle.model.llama import CausalLM

MODEL_FAMILIES: dict[str, type[CausalLM]] = {
    "llama": CausalLM,
    "gemma3": Gemma3ForCausalLM,
}


def build_model(cfg: ArchConfig, backend: AttentionBackend) -> CausalLM:
    try:
        cls = MODEL_FAMILIES[cfg.family]
    except KeyError:
        raise ValueError(
            f"unsupported model family {cfg.family!r}; supported: {', '.join(MODEL_FAMILIES)}"
        ) from None
    return cls(cfg, backend)
