"""Gated MLP activations: SwiGLU (Llama, Qwen, Mistral) and GeGLU with tanh-GELU (Gemma)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_tanh": _gelu_tanh,
    "gelu": F.gelu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {', '.join(_ACTIVATIONS)}") from None


def fused_gated_kind(name: str) -> bool | None:
    """Which one-kernel act(gate) * up of kernels/fused_ops.gated_act_mul serves this activation: True for
    tanh-GELU, False for SiLU, None where it has none (torch's ops then)."""
    return {F.silu: False, _gelu_tanh: True}.get(get_activation(name))
