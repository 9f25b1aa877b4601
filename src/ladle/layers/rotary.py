"""Rotary position embeddings (the half-split layout Hugging Face uses), with llama3 and linear scaling."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ladle.kernels.availability import fused_ops_enabled
from ladle.layers.norm import RMSNorm
from ladle.model.config import RopeConfig


def _inverse_frequencies(head_dim: int, rope: RopeConfig) -> tuple[torch.Tensor, float]:
    """Returns (inv_freq, attention_factor) for the rope type, following the published formulas."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaling = rope.scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, rope: RopeConfig) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rope = rope
        self.cos_sin = torch.empty(0)

    def table_key(self) -> tuple:
        return (self.head_dim, self.rope.theta, repr(sorted((self.rope.scaling or {}).items())))

    def build_table(self, max_positions: int, device: torch.device) -> torch.Tensor:
        inv_freq, attention_factor = _inverse_frequencies(self.head_dim, self.rope)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        return torch.cat([freqs.cos(), freqs.sin()], dim=-1).mul(attention_factor).to(device)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, H, D], k: [T, KVH, D], positions: [T]. On CUDA, rotates q and k in place."""
        if fused_ops_enabled(q) and q.stride(-1) == 1 and k.stride(-1) == 1:
            from ladle.kernels.fused_ops import rotary_

            both = _adjacent_heads(q, k)
            if both is not None:  # q and k of one fused-QKV output: one launch rotates both
                rotary_(both, self.cos_sin, positions)
                return q, k
            return rotary_(q, self.cos_sin, positions), rotary_(k, self.cos_sin, positions)
        cos, sin = self.cos_sin[positions].chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate_and_write_kv(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        q_norm: RMSNorm | None = None,
        k_norm: RMSNorm | None = None,
    ) -> bool:
        """Rotates q and k in place and writes k and v to the cache slots, in one launch, when that kernel
        applies: CUDA, q and k views of one QKV projection output, v's heads one row per token, a cache of
        [blocks, block_size, KVH, D]. With q_norm and k_norm, normalizes q's and k's heads first, in the
        same launch. Returns False, having done nothing, otherwise."""
        if not (fused_ops_enabled(q) and q.stride(-1) == 1 and v.stride(-1) == 1):
            return False
        if v.stride(1) != v.shape[2] or k_cache.dim() != 4 or not k_cache.is_contiguous():
            return False
        both = _adjacent_heads(q, k)
        if both is None:
            return False
        from ladle.kernels.fused_ops import rotary_and_write_kv_

        head_norm = fused_head_norm(q_norm, k_norm)
        if head_norm is False:
            return False
        rotary_and_write_kv_(both, v, k_cache, v_cache, slots, self.cos_sin, positions, head_norm)
        return True


def fused_head_norm(
    q_norm: RMSNorm | None, k_norm: RMSNorm | None
) -> tuple[torch.Tensor, torch.Tensor, float, bool] | None | Literal[False]:
    """What a kernel that norms q's and k's heads itself takes: (q weight, k weight, eps, unit_offset); None
    without head norms; False when the two norms differ in eps or kind (no one launch does both)."""
    if q_norm is None or k_norm is None:
        return None
    if (q_norm.eps, q_norm.unit_offset) != (k_norm.eps, k_norm.unit_offset):
        return False
    return (q_norm.weight, k_norm.weight, q_norm.eps, q_norm.unit_offset)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def _adjacent_heads(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """q [T, H, D] and k [T, KVH, D] as one [T, H + KVH, D] view when k's heads follow q's in memory with
    the same strides (q and k split from one QKV projection), else None."""
    heads, dim = q.shape[1], q.shape[2]
    if q.dtype != k.dtype or q.stride()[1:] != k.stride()[1:] or q.stride(1) != dim:
        return None
    # A one-token batch's row stride means nothing, and torch gives the q and k views different ones
    # (each [1, heads * dim] slice counts as contiguous): batch-1 decode would take two launches.
    if q.shape[0] > 1 and q.stride(0) != k.stride(0):
        return None
    if k.data_ptr() != q.data_ptr() + heads * dim * q.element_size():
        return None
    # Adjacent is not enough: two tensors the allocator happened to place back to back (q and k after a
    # q/k norm, say) are two storages, and a view of one cannot reach into the other.
    if q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr():
        return None
    return q.as_strided((q.shape[0], heads + k.shape[1], dim), q.stride())
