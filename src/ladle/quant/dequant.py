"""GGML block formats -> float32, in torch, vectorized over all blocks at once.

Each function takes the raw bytes as a uint8 tensor of shape [n_blocks, type_size] and returns float32
[n_blocks, block_size]. The arithmetic is done in the same order as ggml's reference dequantizers (and the
`gguf` package's numpy port of them) so the results are bit-identical: e.g. Q4_K is (d*sc)*q - (dmin*m),
never d*(sc*q) - ..., since a different association rounds differently in float32.

Layouts (ggml-common.h), QK_K = 256:
  Q8_0  {f16 d; i8 qs[32]}                     x = d*q
  Q4_0  {f16 d; u8 qs[16]}                     x = d*(q-8), q: low nibbles are elements 0..15, high 16..31
  Q4_1  {f16 d, m; u8 qs[16]}                  x = d*q + m
  Q5_0  {f16 d; u8 qh[4]; u8 qs[16]}           x = d*(q-16), bit i of qh is the 5th bit of element i
  Q5_1  {f16 d, m; u8 qh[4]; u8 qs[16]}        x = d*q + m
  Q2_K  {u8 scales[16]; u8 qs[64]; f16 d, dmin}
  Q3_K  {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}
  Q4_K  {f16 d, dmin; u8 scales[12]; u8 qs[128]}
  Q5_K  {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
  Q6_K  {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QType = GGMLQuantizationType


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes -> [n, 1] float32 (the little-endian half at those bytes)."""
    return raw.contiguous().view(torch.float16).float()


def _shifts(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16] packed bytes -> [n, 32]: the 16 low nibbles, then the 16 high nibbles (Q4_0/Q4_1/Q5_x order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> [n, 32] of its bits (bit i at column i)."""
    return ((qh.unsqueeze(-1) >> _shifts(*range(8))) & 1).reshape(qh.shape[0], 32)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    return b[:, 2:].contiguous().view(torch.int8).float() * d


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).view(torch.int8) - 8
    return d * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).float() + m


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
    return d * (q.view(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4)
    return d * q.float() + m


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    # 2-bit fields: byte j of each 32-byte half holds elements j, j+32, j+64, j+96 of that half.
    q = ((qs.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3).reshape(n, 16, 16)
    return (dl * q.float() - ml).reshape(n, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    # 16 six-bit scales: low 4 bits from bytes 0..7 (two per byte), high 2 bits from bytes 8..11 (four per byte).
    low = (packed[:, :8].reshape(n, 1, 8) >> _shifts(0, 4).reshape(1, 2, 1)).reshape(n, 16)
    high = (packed[:, 8:].reshape(n, 1, 4) >> _shifts(0, 2, 4, 6).reshape(1, 4, 1)).reshape(n, 16)
    scales = ((low & 0x0F) | ((high & 3) << 4)).view(torch.int8) - 32
    dl = (d * scales.float()).reshape(n, 16, 1)
    ql = ((qs.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3).reshape(n, 16, 16)
    qh = ((hmask.reshape(n, 1, 1, 32) >> _shifts(*range(8)).reshape(1, 1, 8, 1)) & 1).reshape(n, 16, 16)
    # A set hmask bit means "no offset"; a clear one subtracts 4.
    q = ql.view(torch.int8) - ((qh ^ 1) << 2).view(torch.int8)
    return (dl * q.float()).reshape(n, 256)


def k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins (as uint8 [n, 8] each).

    Sub-blocks 0..3 keep their values in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks
    4..7 put their low 4 bits in bytes 8..11 and their top 2 bits in the spare top bits of bytes 0..7.
    """
    n = packed.shape[0]
    p = packed.reshape(n, 3, 4)
    d, m, md = p[:, 0], p[:, 1], p[:, 2]
    scales = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return scales, mins


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    # Each 32-byte group holds two sub-blocks: low nibbles first, then high nibbles.
    q = ((b[:, 16:].reshape(n, 4, 1, 32) >> _shifts(0, 4).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    return (dl * q.float() - ml).reshape(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    dl = (d * sc.float()).reshape(n, 8, 1)
    ml = (dmin * mn.float()).reshape(n, 8, 1)
    ql = ((b[:, 48:].reshape(n, 4, 1, 32) >> _shifts(0, 4).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    # Bit j of qh[i] is the 5th bit of element i of sub-block j.
    qh = ((b[:, 16:48].reshape(n, 1, 32) >> _shifts(*range(8)).reshape(1, 8, 1)) & 1).reshape(n, 8, 32)
    return (dl * (ql | (qh << 4)).float() - ml).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales, d = b[:, 192:208].contiguous().view(torch.int8), _f16(b[:, 208:210])
    dl = (d * scales.float()).reshape(n, 16, 1)
    # Per 128-element half: 64 ql bytes give elements 0..63 (low nibbles) and 64..127 (high nibbles);
    # 32 qh bytes give the top 2 bits of elements i, i+32, i+64, i+96.
    low = ((ql.reshape(n, 2, 1, 64) >> _shifts(0, 4).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
    high = ((qh.reshape(n, 2, 1, 32) >> _shifts(0, 2, 4, 6).reshape(1, 1, 4, 1)) & 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).view(torch.int8) - 32).reshape(n, 16, 16)
    return (dl * q.float()).reshape(n, 256)


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


def _f16_values(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def _bf16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.bfloat16).float()


_BLOCK_DEQUANTIZERS: dict[QType, Callable[[torch.Tensor], torch.Tensor]] = {
    QType.F32: _f32,
    QType.F16: _f16_values,
    QType.BF16: _bf16,
    QType.Q8_0: _q8_0,
    QType.Q4_0: _q4_0,
    QType.Q4_1: _q4_1,
    QType.Q5_0: _q5_0,
    QType.Q5_1: _q5_1,
    QType.Q2_K: _q2_k,
    QType.Q3_K: _q3_k,
    QType.Q4_K: _q4_k,
    QType.Q5_K: _q5_k,
    QType.Q6_K: _q6_k,
}

SUPPORTED_TYPES: frozenset[QType] = frozenset(_BLOCK_DEQUANTIZERS)

# Blocks per call: bounds the temporaries (a few int tensors the size of the output) on large tensors.
_CHUNK_BLOCKS = 1 << 16


def block_size(qtype: QType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def type_size(qtype: QType) -> int:
    return GGML_QUANT_SIZES[qtype][1]


def row_bytes(qtype: QType, row_length: int) -> int:
    """Bytes one row of `row_length` values takes; ggml rows are whole blocks."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    if row_length % bs:
        raise ValueError(
            f"a {qtype.name} row of {row_length} values is not a whole number of {bs}-value blocks"
        )
    return row_length // bs * ts


def dequantize(raw: torch.Tensor, qtype: QType | int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Raw GGML bytes (uint8, any shape whose size is a whole number of blocks) -> float32 tensor of `shape`
    (default: [rows, row_length] when `raw` is 2-D with one row per tensor row, else flat)."""
    qtype = QType(qtype)
    if qtype not in _BLOCK_DEQUANTIZERS:
        raise NotImplementedError(f"dequantizing {qtype.name} is not supported")
    if raw.dtype != torch.uint8:
        raise TypeError(f"expected raw uint8 bytes, got {raw.dtype}")
    bs, ts = GGML_QUANT_SIZES[qtype]
    if raw.numel() % ts:
        raise ValueError(f"{raw.numel()} bytes is not a whole number of {qtype.name} blocks ({ts} bytes)")
    if shape is None:
        shape = (raw.shape[0], raw.shape[-1] // ts * bs) if raw.dim() == 2 else (raw.numel() // ts * bs,)
    blocks = raw.reshape(-1, ts)
    fn = _BLOCK_DEQUANTIZERS[qtype]
    if blocks.shape[0] <= _CHUNK_BLOCKS:
        out = fn(blocks)
    else:
        out = torch.empty(blocks.shape[0], bs, dtype=torch.float32)
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            out[start : start + _CHUNK_BLOCKS] = fn(blocks[start : start + _CHUNK_BLOCKS])
    return out.reshape(shape)
