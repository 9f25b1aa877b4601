"""Paged attention: the metadata a model receives for a flat batch, and the backend interface.

A step's batch is every scheduled sequence's new tokens laid end to end ([num_tokens, ...]); sequence i owns
query rows query_start[i]:query_start[i+1] and attends over its first seq_lens[i] cached positions (earlier
chunks, prefix-cache hits and the new tokens themselves). K/V live in a block pool per layer:
[num_blocks, block_size, num_kv_heads, head_dim]; block_tables[i] lists sequence i's blocks in order and
slot_mapping[t] = block * block_size + offset says where token t's K/V are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # only named in annotations: the backend interface imports no other layer at run time
    from ladle.layers.norm import RMSNorm
    from ladle.layers.rotary import RotaryEmbedding


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64, on the model's device
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, on the model's device
    query_start: torch.Tensor  # [num_seqs + 1] int32, on the model's device
    seq_lens: torch.Tensor  # [num_seqs] int32, on the model's device
    # The same numbers as host lists, so a host-driven backend never synchronizes with the device.
    query_lens_host: list[int]
    seq_lens_host: list[int]
    block_size: int
    max_query_len: int
    max_seq_len: int
    # Decode splits the Triton backend uses; set for CUDA graphs, whose batches must not depend on lengths.
    decode_num_splits: int | None = None
    # Per-step values a backend derives once and reuses in every layer (e.g. the Triton work list).
    backend_cache: dict[Any, Any] = field(default_factory=dict)
    # Rows whose final hidden states are read (for logits), ascending; None: all. The ggml numerics path
    # runs the last layer's MLP on these rows only, as llama.cpp does (the others come back as zeros).
    output_rows: list[int] | None = None

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend:
    """Writes the new K/V into the cache and attends. Implementations: TorchAttentionBackend (reference,
    CPU and GPU) and the Triton kernels (GPU)."""

    name = "base"
    # True where the cache write is write_kv_cache's slot store, which the rotary kernel can do instead
    # (RotaryEmbedding.rotate_and_write_kv); forward is then called with kv_written=True.
    kv_write_in_rotary = False

    def decode_with_rotary(
        self,
        positions: torch.Tensor,  # [S]
        q: torch.Tensor,  # [S, H, D], unrotated and not yet normed
        k: torch.Tensor,  # [S, KVH, D], likewise
        v: torch.Tensor,  # [S, KVH, D]
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        rotary: RotaryEmbedding,
        q_norm: RMSNorm | None,
        k_norm: RMSNorm | None,
    ) -> torch.Tensor | None:
        """For a decode-only batch, the q/k norms, rotary, cache write and attention in one go, with q and k
        as the QKV projection gave them; None (nothing done) where the backend has no such path."""
        return None

    def forward(
        self,
        q: torch.Tensor,  # [T, H, D]
        k: torch.Tensor,  # [T, KVH, D]
        v: torch.Tensor,  # [T, KVH, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, KVH, D]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        kv_written: bool = False,  # k and v are in the cache already
    ) -> torch.Tensor:  # [T, H, D]
        raise NotImplementedError


def get_attention_backend(name: str, device: torch.device) -> AttentionBackend:
    """auto: the Triton kernels on CUDA when Triton is installed, else the torch reference."""
    if name not in ("auto", "torch", "triton"):
        raise ValueError(f"attention_backend must be auto, torch or triton, got {name!r}")
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return TorchAttentionBackend()
    from ladle.layers.attention_triton import TritonAttentionBackend, triton_available

    if device.type == "cuda" and triton_available():
        return TritonAttentionBackend()
    if name == "triton":
        raise ValueError("attention_backend: triton needs a CUDA device and the triton package")
    return TorchAttentionBackend()


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """float8 tensors as uint8, whose indexing kernels exist everywhere; other dtypes as they are."""
    return t.view(torch.uint8) if t.element_size() == 1 and t.is_floating_point() else t


def _rows(cache: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return _as_bytes(cache)[index].view(cache.dtype)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    for new, cache in ((k, k_cache), (v, v_cache)):
        rows = _as_bytes(new.to(cache.dtype))
        _as_bytes(cache).view(-1, num_kv_heads, head_dim).index_copy_(0, slots, rows)


class TorchAttentionBackend(AttentionBackend):
    """Reference: gathers each sequence's K/V from its blocks and runs scaled_dot_product_attention.

    Decode-only batches (every sequence adds one token) run as one padded, masked SDPA call; mixed
    batches loop over sequences. Correct everywhere; the Triton backend is the fast one on GPUs.
    """

    name = "torch"

    def forward(self, q, k, v, k_cache, v_cache, meta, scale, sliding_window, kv_written=False):
        if not kv_written:
            write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only and len(meta.seq_lens_host) > 1:
            return self._decode_batched(q, k_cache, v_cache, meta, scale, sliding_window)
        out = torch.empty_like(q)
        start = 0
        for i, (q_len, seq_len) in enumerate(zip(meta.query_lens_host, meta.seq_lens_host)):
            keys, values = _gather(k_cache, v_cache, meta.block_tables[i], seq_len, meta.block_size)
            mask = _causal_mask(q_len, seq_len, sliding_window, q.device)
            out[start : start + q_len] = _sdpa(q[start : start + q_len], keys, values, mask, scale)
            start += q_len
        return out

    def _decode_batched(self, q, k_cache, v_cache, meta, scale, sliding_window):
        max_len = meta.max_seq_len
        num_blocks = (max_len + meta.block_size - 1) // meta.block_size
        tables = meta.block_tables[:, :num_blocks].long()
        # [S, num_blocks, block_size, KVH, D] -> [S, max_len, KVH, D]
        keys = _rows(k_cache, tables).flatten(1, 2)[:, :max_len].to(q.dtype)
        values = _rows(v_cache, tables).flatten(1, 2)[:, :max_len].to(q.dtype)
        positions = torch.arange(max_len, device=q.device)
        lens = meta.seq_lens.to(q.device).long().unsqueeze(1)
        valid = positions.unsqueeze(0) < lens
        if sliding_window is not None:
            valid &= positions.unsqueeze(0) > lens - 1 - sliding_window
        # q: [S, H, D] -> [S, H, 1, D]; keys: [S, KVH, L, D]
        # Padding rows read blocks nobody wrote (uninitialized memory, possibly NaN); a masked-out NaN
        # still poisons SDPA (0 * NaN), so zero them.
        keep = valid[:, :, None, None]
        keys = torch.where(keep, keys, 0)
        values = torch.where(keep, values, 0)
        groups = q.shape[1] // keys.shape[2]
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),
            _repeat_kv(keys.transpose(1, 2).to(q.dtype), groups, dim=1),
            _repeat_kv(values.transpose(1, 2).to(q.dtype), groups, dim=1),
            attn_mask=valid[:, None, None, :],
            scale=scale,
        )
        return out.squeeze(2)


def _gather(k_cache, v_cache, block_table, seq_len, block_size):
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = block_table[:num_blocks].long()
    keys = _rows(k_cache, blocks).flatten(0, 1)[:seq_len]
    values = _rows(v_cache, blocks).flatten(0, 1)[:seq_len]
    return keys, values


def _causal_mask(q_len: int, seq_len: int, sliding_window: int | None, device) -> torch.Tensor:
    """Query row r sits at position seq_len - q_len + r and sees keys at positions <= its own (and, with a
    sliding window w, > position - w, the convention Hugging Face uses)."""
    q_pos = torch.arange(seq_len - q_len, seq_len, device=device).unsqueeze(1)
    k_pos = torch.arange(seq_len, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask


def _sdpa(q, keys, values, mask, scale):
    # [q_len, H, D] -> [H, q_len, D]; GQA: each KV head serves H / KVH query heads.
    groups = q.shape[1] // keys.shape[1]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        _repeat_kv(keys.transpose(0, 1).to(q.dtype), groups, dim=0),
        _repeat_kv(values.transpose(0, 1).to(q.dtype), groups, dim=0),
        attn_mask=mask,
        scale=scale,
    )
    return out.transpose(0, 1)


def _repeat_kv(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    # SDPA's enable_gqa needs torch 2.5; ladle supports 2.4, so expand the KV heads explicitly.
    return x if groups == 1 else x.repeat_interleave(groups, dim=dim)
