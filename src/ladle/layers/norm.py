"""RMSNorm, computed in float32 like the reference implementations, with Gemma's (1 + weight) variant."""

from __future__ import annotations

import torch
from torch import nn

from ladle.kernels.availability import fused_ops_enabled


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        # Gemma stores weight - 1 (a zero-initialised scale): its norm multiplies by (1 + weight).
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.empty(dim), requires_grad=False)

    def set_weight(self, weight: torch.Tensor) -> None:
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_ops_enabled(x):
            from ladle.kernels.fused_ops import rms_norm

            return rms_norm(x, self.weight, self.eps, self.unit_offset)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        if self.unit_offset:
            # Gemma multiplies in float32 before the cast back; Llama casts first, then scales.
            return (h * (1.0 + w)).to(dtype)
        return self.weight * h.to(dtype)

    def add_forward(
        self, x: torch.Tensor, residual: torch.Tensor | None, x_norm: RMSNorm | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(x + residual), x + residual): a residual add and the norm after it, one kernel on CUDA.
        x_norm: a norm x takes first (x_norm(x) + residual: Gemma's sandwich norms), in the same kernel when
        both are (1 + weight) norms. No residual yet (a model's first layer): (self(x), x)."""
        fused = fused_ops_enabled(x)
        if x_norm is not None:
            if fused and residual is not None and x_norm.unit_offset and self.unit_offset:
                from ladle.kernels.fused_ops import norm_add_rms_norm  # Gemma's; see its docstring

                return norm_add_rms_norm(x, x_norm.weight, x_norm.eps, residual, self.weight, self.eps)
            x = x_norm(x)
        if residual is None:
            return self(x), x
        if fused:
            from ladle.kernels.fused_ops import add_rms_norm

            return add_rms_norm(x, residual, self.weight, self.eps, self.unit_offset)
        total = x + residual
        return self(total), total
