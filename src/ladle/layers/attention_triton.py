"""TritonAttentionBackend: the GPU attention backend (kernels in ladle.kernels.triton_attention).

Decode-only batches (every sequence adds one token) run the split-K decode kernel, which reads nothing but
device tensors and the batch's shape: that is what lets a CUDA graph capture it once per batch size. Any
other batch (chunked prefills, prefix-cache hits, decodes mixed in) runs the mixed-batch kernel over a work
list of (sequence, query block) pairs, built once per step from the metadata's host lists.
"""

from __future__ import annotations

import functools
import os

import torch

from ladle.kernels.availability import fused_ops_enabled
from ladle.layers.attention import AttentionBackend, AttentionMetadata
from ladle.layers.norm import RMSNorm
from ladle.layers.rotary import RotaryEmbedding, fused_head_norm


@functools.cache
def _rotary_in_attention() -> bool:
    return os.environ.get("LADLE_ROTARY_IN_ATTENTION", "1") != "0"


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    kv_write_in_rotary = True

    def __init__(self) -> None:
        from ladle.kernels import triton_attention

        self._kernels = triton_attention
        self._num_sms: int | None = None

    def forward(
        self, q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale, sliding_window, kv_written=False
    ):
        ops = self._kernels
        if not kv_written:
            ops.write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(q)
        if meta.is_decode_only:
            splits = self._decode_splits(q, k_cache, meta)
            ops.decode_attention(
                q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, scale, sliding_window, splits
            )
            return out
        block_q = ops.prefill_block_q(q.shape[1], k_cache.shape[2])
        work_seq, work_qblock = self._work_list(meta, block_q, q.device)
        ops.prefill_attention(
            q,
            k_cache,
            v_cache,
            out,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start,
            work_seq,
            work_qblock,
            scale,
            sliding_window,
            block_q,
        )
        return out

    def decode_with_rotary(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        rotary: RotaryEmbedding,
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
    ) -> torch.Tensor | None:
        """Decode-only batches on CUDA: one decode-attention launch that also applies the q/k norms and the
        rotary and writes the new k and v (the rotary kernel's work; kernels/triton_attention.DecodeRope).
        LADLE_ROTARY_IN_ATTENTION=0 keeps the two launches (to A/B it)."""
        if not (meta.is_decode_only and fused_ops_enabled(q) and _rotary_in_attention()):
            return None
        if any(t.stride(-1) != 1 for t in (q, k, v)) or k_cache.dim() != 4 or not k_cache.is_contiguous():
            return None
        head_norm = fused_head_norm(q_norm, k_norm)
        if head_norm is False:
            return None
        ops = self._kernels
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        rope = ops.DecodeRope(k, v, meta.slot_mapping, positions, rotary.cos_sin, head_norm)
        ops.decode_attention(
            q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, scale, sliding_window,
            self._decode_splits(q, k_cache, meta), rope,
        )  # fmt: skip
        return out

    def _decode_splits(self, q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata) -> int:
        if meta.decode_num_splits is not None:
            return meta.decode_num_splits
        if self._num_sms is None:
            on_gpu = q.device.type == "cuda"
            self._num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count if on_gpu else 4
        return self._kernels.decode_num_splits(q.shape[0], k_cache.shape[2], meta.max_seq_len, self._num_sms)

    def _work_list(self, meta: AttentionMetadata, block_q: int, device: torch.device):
        # Every layer of a step shares the metadata, so the list is built (and copied over) once a step.
        cache = meta.backend_cache
        key = ("work", block_q)
        if key not in cache:
            seqs, blocks = self._kernels.build_work_list(meta.query_lens_host, block_q)
            host = torch.tensor([seqs, blocks], dtype=torch.int32)
            if device.type == "cuda":
                host = host.pin_memory()
            both = host.to(device, non_blocking=True)
            cache[key] = (both[0], both[1])
        return cache[key]
