"""Triton kernels for paged attention: the KV-cache write, attention for mixed batches (chunked prefills and
decodes together, over K/V already in the paged cache), and split-K decode attention, whose last split to
finish combines the splits (one launch).

Layouts (see ladle.layers.attention): q [T, H, D]; caches [num_blocks, block_size, KVH, D], contiguous;
block_tables [S, max_blocks] int32; seq_lens [S] int32; query_start [S + 1] int32; slot_mapping [T] int64,
where a negative slot means "write nothing" (the padded rows of a CUDA graph).

Query head h reads KV head h // G (G = H / KVH). A program handles one KV head and every query head that
shares it, so each K/V tile is loaded once per group rather than once per query head.

The caches may hold a narrower type than q (float8_e4m3fn, kv_cache_dtype="fp8", no scaling, as vLLM's
uncalibrated fp8 cache), which halves the K/V bytes read. fp8 tiles are widened to float16, not to q's
bfloat16, and the dots run in fp16 (fp32 accumulation): see _e4m3_to_f16 for why.

Importing this module needs Triton; ladle.layers.attention_triton imports it only on CUDA.
The torch reference these are tested against is ladle.layers.attention.TorchAttentionBackend.
"""

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ladle.kernels.pdl import pdl_enter, pdl_kernel_args
from ladle.kernels.split_sync import INTERPRETED, SPLIT_COUNTERS, fence_gpu

_LOG2E = 1.4426950408889634

# Decode splits: at most this many programs share one sequence's context. Fixed (not data-dependent) so a
# CUDA graph captured once stays valid for every context length.
MAX_DECODE_SPLITS = 32


# --------------------------------------------------------------------------------------------------------
# KV-cache write (reshape_and_cache)
# --------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize_on_alignment=["slot_ptr"])
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    stride_k_t,
    stride_v_t,
    ROW: tl.constexpr,  # KVH * D: one token's K (or V) in the cache, contiguous
    BLOCK: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        offs = tl.arange(0, BLOCK)
        mask = offs < ROW
        k = tl.load(k_ptr + t * stride_k_t + offs, mask=mask)
        v = tl.load(v_ptr + t * stride_v_t + offs, mask=mask)
        tl.store(k_cache_ptr + slot * ROW + offs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + slot * ROW + offs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _tile_config(env: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages); LADLE_DECODE_TILES / LADLE_PREFILL_TILES="64,4,2" override the
    defaults (benchmarks/sweep_attention.py measures the choices)."""
    value = os.environ.get(env)
    if not value:
        return default
    block_n, warps, stages = (int(x) for x in value.split(","))
    return block_n, warps, stages


def _dot_precision(q: torch.Tensor) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------------------
# Helpers shared by the attention kernels
# --------------------------------------------------------------------------------------------------------
@triton.jit
def _kv_slots(table, start, hi, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Cache slots of keys start .. start + BLOCK_N - 1 (start a multiple of BLOCK_N; both block sizes are
    powers of two, so a tile holds whole cache blocks or lies inside one). The block table is read once per
    cache block, not once per key: the per-key gather, its int64 products and the address arithmetic were
    a large part of the loop's instructions (benchmarks/README.md, "fp8 decode attention")."""
    if BLOCK_N >= BLOCK_SIZE:
        NB: tl.constexpr = BLOCK_N // BLOCK_SIZE
        bi = start // BLOCK_SIZE + tl.arange(0, NB)
        blocks = tl.load(table + bi, mask=bi * BLOCK_SIZE < hi, other=0).to(tl.int64)
        slot = tl.reshape(blocks[:, None] * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)[None, :], [BLOCK_N])
    else:
        block = tl.load(table + start // BLOCK_SIZE).to(tl.int64)  # start < hi: the entry exists
        slot = block * BLOCK_SIZE + (start % BLOCK_SIZE) + tl.arange(0, BLOCK_N)
    return slot


@triton.jit
def _e4m3_to_f16(x, pin):
    """uint8 e4m3 bytes -> float16, four a time through two PTX cvt.rn.f16x2.e4m3x2 (sm_89+): exact, since
    every e4m3 value is a float16. Used for the V tile of the fp8 caches.

    Why not `tl.load(fp8).to(bfloat16)`: on sm_90 e4m3 -> bf16 is e4m3 -> f16 (one instruction per two
    values) and then f16 -> bf16 (one per value), and Triton moved the conversion after the tile's load
    into the PV dot's operand layout, which for an 8-bit tile read along its rows (V is [keys, D], the dot
    reduces over keys) is one shared-memory load per byte (LDS.U8) plus byte permutes. The loop was about
    twice bf16's instructions, so fp8 ran no faster than bf16 despite half the bytes.

    `pin` is a loop-invariant uint8 tensor of x's shape that the asm ignores: with a second tensor operand
    Triton no longer hoists the operand-layout conversion above this op, so the tile is widened to fp16 in
    the load's row layout (16-byte shared loads) and reaches the dot through ldmatrix.trans like bf16's."""
    return tl.inline_asm_elementwise(
        "{ .reg .b16 lo, hi; mov.b32 {lo, hi}, $2; cvt.rn.f16x2.e4m3x2 $0, lo; cvt.rn.f16x2.e4m3x2 $1, hi; }",
        "=r,=r,r,r",
        [x, pin],
        dtype=tl.float16,
        is_pure=True,
        pack=4,
    )


def _f16_dots(q: torch.Tensor, cache: torch.Tensor) -> bool:
    """fp8 (e4m3) caches with 16-bit queries: widen K/V to fp16 and run the dots in fp16 (_e4m3_to_f16)."""
    return cache.dtype == torch.float8_e4m3fn and q.dtype in (torch.bfloat16, torch.float16)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k, v: [T, KVH, D]; writes row t to slot slots[t] (skipped when negative)."""
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    # Each token's (KVH, D) must be one contiguous row; a projection's output viewed as heads is.
    if k.stride(2) != 1 or k.stride(1) != k.shape[2]:
        k = k.contiguous()
    if v.stride(2) != 1 or v.stride(1) != v.shape[2]:
        v = v.contiguous()
    row = k.shape[1] * k.shape[2]
    _write_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        v.stride(0),
        ROW=row,
        BLOCK=triton.next_power_of_2(row),
        **pdl_kernel_args(k.device),
    )


# --------------------------------------------------------------------------------------------------------
# Mixed-batch (prefill + decode) attention over the paged cache
# --------------------------------------------------------------------------------------------------------
# Values that change from step to step (strides, and the alignment of metadata tensors that are slices of
# one packed buffer) are not specialized on: each new specialization would be a recompile mid-run.
_STEP_POINTERS = ["block_tables_ptr", "seq_lens_ptr", "query_start_ptr", "work_seq_ptr", "work_qblock_ptr"]


@triton.jit(do_not_specialize=["stride_bt", "window"], do_not_specialize_on_alignment=_STEP_POINTERS)
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_ptr,
    work_seq_ptr,
    work_qblock_ptr,
    stride_q_t,
    stride_q_h,
    stride_o_t,
    stride_o_h,
    stride_bt,
    scale_log2,  # softmax scale * log2(e): the kernel works in base 2
    window,  # sliding window (keys k > pos - window are visible); ignored unless USE_WINDOW
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,  # GROUP rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # query tokens per program; rows = BLOCK_Q * GROUP_PAD
    BLOCK_N: tl.constexpr,  # keys per iteration
    BLOCK_SIZE: tl.constexpr,  # KV-cache block size (tokens)
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 caches (exact tests), else "tf32" (unused for bf16)
    F16_DOTS: tl.constexpr,  # e4m3 caches: K/V widened to fp16, q pre-scaled to fp16 (see _e4m3_to_f16)
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    work = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(work_seq_ptr + work)
    q_block = tl.load(work_qblock_ptr + work)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # position of the sequence's first new token

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    tok = q_block * BLOCK_Q + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    head = kv_head * GROUP + head_in_group
    row_valid = (tok < q_len) & (head_in_group < GROUP)
    q_pos = context + tok
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM

    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_q_t + head[:, None] * stride_q_h + d[None, :],
        mask=row_valid[:, None] & d_valid[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    first_pos = context + q_block * BLOCK_Q
    last_pos = tl.minimum(first_pos + BLOCK_Q - 1, seq_len - 1)
    hi = last_pos + 1
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(first_pos - window + 1, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    if F16_DOTS:
        # The tiles reach the wgmma through shared memory, so a plain widening is enough here (no LDS.U8
        # path to avoid, unlike the decode kernel's V); fp16 rather than bf16 saves the f16 -> bf16 step.
        q = (q.to(tl.float32) * scale_log2).to(tl.float16)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_valid = n < hi
        slot = _kv_slots(table, start, hi, BLOCK_N, BLOCK_SIZE)
        kv_offs = (slot * NUM_KV_HEADS + kv_head)[:, None] * HEAD_DIM + d[None, :]
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if not F16_DOTS:
            s = s * scale_log2
        visible = (n[None, :] <= q_pos[:, None]) & n_valid[None, :]
        if USE_WINDOW:
            visible = visible & (n[None, :] > q_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no visible key yet keeps m = -inf; shift by 0 then so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(
        out_ptr + q_rows[:, None] * stride_o_t + head[:, None] * stride_o_h + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_valid[:, None] & d_valid[None, :],
    )


def prefill_block_q(num_heads: int, num_kv_heads: int) -> int:
    """Query tokens per program: about 64 rows (tokens x group heads) per tile."""
    group_pad = triton.next_power_of_2(num_heads // num_kv_heads)
    return max(1, 64 // group_pad)


def build_work_list(query_lens: list[int], block_q: int) -> tuple[list[int], list[int]]:
    """(sequence, query block) for every program of the mixed-batch kernel."""
    work_seq: list[int] = []
    work_block: list[int] = []
    for i, q_len in enumerate(query_lens):
        blocks = -(-q_len // block_q)
        work_seq.extend([i] * blocks)
        work_block.extend(range(blocks))
    return work_seq, work_block


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    work_seq: torch.Tensor,
    work_qblock: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    block_q: int,
) -> None:
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    # (64, 4, 3): fastest of five on the H200 for 8 x 256 new tokens over 1024 (benchmarks/bench_attention_ab.py
    # --sweep): bf16 113 vs 122 us for (32, 4, 3), the H100's best before the table was read per block; fp8
    # 129 vs 165 us.
    block_n, warps, stages = _tile_config("LADLE_PREFILL_TILES", (64, 4, 3) if block_d <= 128 else (32, 8, 2))
    grid = (work_seq.shape[0], num_kv_heads)
    if grid[0] == 0:
        return
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        seq_lens,
        query_start,
        work_seq,
        work_qblock,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        scale * _LOG2E,
        sliding_window or 0,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        GROUP_PAD=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_Q=block_q,
        BLOCK_N=block_n,
        BLOCK_SIZE=block_size,
        USE_WINDOW=sliding_window is not None,
        DOT_PRECISION=_dot_precision(q),
        F16_DOTS=_f16_dots(q, k_cache),
        **pdl_kernel_args(q.device),
        num_warps=warps,
        num_stages=stages,
    )


# --------------------------------------------------------------------------------------------------------
# Rotary embedding inside decode attention (the half-split layout; ladle.layers.rotary is the reference)
# --------------------------------------------------------------------------------------------------------
@triton.jit
def _rope_rows(rows, d, mask, cos, sin, w, w_partner, eps, HEAD_DIM: tl.constexpr, HEAD_NORM: tl.constexpr,
               UNIT_OFFSET: tl.constexpr):  # fmt: skip
    """Heads [R, D] at row pointers `rows` rotated (and first RMSNormed with weight w when HEAD_NORM), in
    their dtype, with the rotary kernel's float32 arithmetic and rounding points (fused_ops._rotary_kernel):
    index d pairs with its partner in the other half of the head."""
    HALF: tl.constexpr = HEAD_DIM // 2
    low = (d < HALF)[None, :]
    xa = tl.load(rows + d[None, :], mask=mask, other=0.0)
    xb = tl.load(rows + tl.where(d < HALF, d + HALF, d - HALF)[None, :], mask=mask, other=0.0)
    fa = xa.to(tl.float32)
    fb = xb.to(tl.float32)
    if HEAD_NORM:
        r = tl.math.rsqrt(tl.sum(fa * fa, 1) / HEAD_DIM + eps)[:, None]
        if UNIT_OFFSET:
            fa = (fa * r * (1.0 + w[None, :])).to(xa.dtype).to(tl.float32)
            fb = (fb * r * (1.0 + w_partner[None, :])).to(xa.dtype).to(tl.float32)
        else:
            fa = (w[None, :] * (fa * r).to(xa.dtype).to(tl.float32)).to(xa.dtype).to(tl.float32)
            fb = (w_partner[None, :] * (fb * r).to(xa.dtype).to(tl.float32)).to(xa.dtype).to(tl.float32)
    # first half: x1 cos - x2 sin; second half: x2 cos + x1 sin (fa is x[d], fb its partner)
    return tl.where(low, fa * cos[None, :] - fb * sin[None, :], fa * cos[None, :] + fb * sin[None, :]).to(
        xa.dtype
    )


@triton.jit
def _rope_tables(
    cos_sin_ptr, pos, stride_cs, norm_ptr, d, d_valid, HALF: tl.constexpr, HEAD_NORM: tl.constexpr
):
    """(cos, sin) at each head-dim index of one position, and (w, w_partner) of a per-head norm weight."""
    j = tl.where(d < HALF, d, d - HALF)
    cos = tl.load(cos_sin_ptr + pos * stride_cs + j, mask=d_valid, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + j, mask=d_valid, other=0.0)
    if HEAD_NORM:
        w = tl.load(norm_ptr + d, mask=d_valid, other=0.0).to(tl.float32)
        w_partner = tl.load(norm_ptr + tl.where(d < HALF, d + HALF, d - HALF), mask=d_valid, other=0.0)
        w_partner = w_partner.to(tl.float32)
    else:
        w = cos
        w_partner = cos
    return cos, sin, w, w_partner


# --------------------------------------------------------------------------------------------------------
# Decode attention (one new token per sequence), split over the context, and the reduce over splits
# --------------------------------------------------------------------------------------------------------
@triton.jit(
    do_not_specialize=["stride_bt", "window", "num_splits"],
    do_not_specialize_on_alignment=["block_tables_ptr", "seq_lens_ptr"],
)
def _decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,  # [S, H, D] when not SPLIT, else partial outputs [S, H, MAX_SPLITS, D] float32
    lse_ptr,  # [S, H, MAX_SPLITS] float32 (log-sum-exp, base 2), when SPLIT
    final_ptr,  # [S, H, D]: where the last split to finish writes the combined output, when SPLIT
    counter_ptr,  # [>= S * KVH] int32 arrival counters, 0 between launches, when SPLIT
    block_tables_ptr,
    seq_lens_ptr,
    k_new_ptr,  # ROTARY: this step's keys [S, KVH, D], not yet rotated
    v_new_ptr,  # ROTARY: this step's values [S, KVH, D]
    slot_ptr,  # ROTARY: [S] cache slot of each sequence's new token (< 0: write nothing)
    pos_ptr,  # ROTARY: [S] positions
    cos_sin_ptr,  # ROTARY: [max_pos, D] float32, cos | sin
    q_norm_ptr,  # HEAD_NORM: q's and k's per-head RMSNorm weights
    k_norm_ptr,
    stride_q_t,
    stride_q_h,
    stride_o_t,
    stride_o_h,
    stride_bt,
    stride_k_t,
    stride_k_h,
    stride_v_t,
    stride_v_h,
    stride_cs,
    scale_log2,
    window,
    num_splits,
    eps,
    NUM_KV_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,  # GROUP padded to a power of two >= 16 (the tensor cores' smallest M)
    GROUP_PAD: tl.constexpr,  # GROUP padded to a power of two (the combine's rows)
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,
    MAX_SPLITS: tl.constexpr,
    SPLIT_CHUNK: tl.constexpr,  # splits the combine reads at once
    DOT_PRECISION: tl.constexpr,
    F16_DOTS: tl.constexpr,  # e4m3 caches: K/V widened to fp16, q pre-scaled to fp16 (_e4m3_to_f16)
    ROTARY: tl.constexpr,  # q and the new k arrive unrotated: rotate them here and write the new k, v
    HEAD_NORM: tl.constexpr,  # ROTARY: RMSNorm each q and k head first (Qwen3, Gemma 3)
    UNIT_OFFSET: tl.constexpr,  # HEAD_NORM: Gemma's (1 + weight)
    INTERPRETED: tl.constexpr,  # TRITON_INTERPRET=1: programs run one by one on the CPU, no inline asm
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + rows
    row_valid = rows < GROUP
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM
    q_rows = q_ptr + seq.to(tl.int64) * stride_q_t + head[:, None] * stride_q_h
    q_mask = row_valid[:, None] & d_valid[None, :]
    if ROTARY:
        pos = tl.load(pos_ptr + seq).to(tl.int64)
        cos, sin, q_w, q_wp = _rope_tables(
            cos_sin_ptr, pos, stride_cs, q_norm_ptr, d, d_valid, HEAD_DIM // 2, HEAD_NORM
        )
        q = _rope_rows(q_rows, d, q_mask, cos, sin, q_w, q_wp, eps, HEAD_DIM, HEAD_NORM, UNIT_OFFSET)
    else:
        q = tl.load(q_rows + d[None, :], mask=q_mask, other=0.0)

    # Tiles start at multiples of BLOCK_N (what _kv_slots needs); a window's first keys before win_lo are
    # masked instead.
    win_lo = 0
    if USE_WINDOW:
        win_lo = tl.maximum(seq_len - window, 0)
    lo_ctx = (win_lo // BLOCK_N) * BLOCK_N
    span = seq_len - lo_ctx
    per_split = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
    lo = lo_ctx + split * per_split
    hi = tl.minimum(lo + per_split, seq_len)
    if ROTARY:
        # The split that holds the newest key rotates this KV head's k and stores it and v in the cache, and
        # then reads them back in its tile like every other key (the program's barrier makes its own global
        # stores visible to all its threads). No other program reads that key.
        if (seq_len - 1 >= lo) & (seq_len - 1 < hi):
            slot = tl.load(slot_ptr + seq).to(tl.int64)
            if slot >= 0:
                one = tl.arange(0, 1)
                k_row = k_new_ptr + seq.to(tl.int64) * stride_k_t + kv_head * stride_k_h + one[:, None] * 0
                row_mask = d_valid[None, :] & (one >= 0)[:, None]
                _, _, k_w, k_wp = _rope_tables(
                    cos_sin_ptr, pos, stride_cs, k_norm_ptr, d, d_valid, HEAD_DIM // 2, HEAD_NORM
                )
                k = _rope_rows(k_row, d, row_mask, cos, sin, k_w, k_wp, eps, HEAD_DIM, HEAD_NORM, UNIT_OFFSET)
                dst = slot * (NUM_KV_HEADS * HEAD_DIM) + kv_head * HEAD_DIM + d[None, :] + one[:, None] * 0
                tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=row_mask)
                v_row = (
                    v_new_ptr
                    + seq.to(tl.int64) * stride_v_t
                    + kv_head * stride_v_h
                    + d[None, :]
                    + one[:, None] * 0
                )
                v = tl.load(v_row, mask=row_mask, other=0.0)
                tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=row_mask)
            tl.debug_barrier()

    if F16_DOTS:
        # The softmax scale goes into q before the narrowing: |q| * scale stays far inside fp16's range.
        q = (q.to(tl.float32) * scale_log2).to(tl.float16)
        pin = tl.broadcast_to(d[None, :], [BLOCK_N, BLOCK_D]).to(tl.uint8)
        v_bytes_ptr = v_cache_ptr.to(tl.pointer_type(tl.uint8), bitcast=True)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    table = block_tables_ptr + seq.to(tl.int64) * stride_bt
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_valid = n < hi
        if USE_WINDOW:
            n_valid = n_valid & (n >= win_lo)
        slot = _kv_slots(table, start, hi, BLOCK_N, BLOCK_SIZE)
        kv_offs = (slot * NUM_KV_HEADS + kv_head)[:, None] * HEAD_DIM + d[None, :]
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(q.dtype)
        if F16_DOTS:
            v = _e4m3_to_f16(tl.load(v_bytes_ptr + kv_offs, mask=kv_mask, other=0), pin)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        else:
            v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0).to(q.dtype)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    mask = row_valid[:, None] & d_valid[None, :]
    if SPLIT:
        part = (seq * (NUM_KV_HEADS * GROUP) + head).to(tl.int64) * MAX_SPLITS + split
        tl.store(out_ptr + part[:, None] * HEAD_DIM + d[None, :], out, mask=mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(lse_ptr + part, lse, mask=row_valid)
        # The last of this (sequence, KV head)'s splits to get here combines them all: no second launch.
        # Every thread fences its own stores at GPU scope, the program syncs, then its arrival (acq_rel)
        # publishes them; the last arrival's acquire makes every split's stores visible to it.
        if not INTERPRETED:
            fence_gpu()
        tl.debug_barrier()
        counter = counter_ptr + seq * NUM_KV_HEADS + kv_head
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == num_splits - 1:
            active = tl.where(per_split > 0, tl.cdiv(span, tl.maximum(per_split, 1)), 0)
            first = (seq * (NUM_KV_HEADS * GROUP) + kv_head * GROUP).to(tl.int64) * MAX_SPLITS
            out_row = final_ptr + seq.to(tl.int64) * stride_o_t + (kv_head * GROUP) * stride_o_h
            _combine_splits(
                out_ptr, lse_ptr, out_row, first, stride_o_h, active,
                GROUP, GROUP_PAD, HEAD_DIM, BLOCK_D, MAX_SPLITS, SPLIT_CHUNK,
            )  # fmt: skip
            tl.atomic_xchg(counter, 0)  # re-armed for the next launch (the next layer, the next replay)
    else:
        tl.store(
            out_ptr + seq.to(tl.int64) * stride_o_t + head[:, None] * stride_o_h + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


@triton.jit
def _combine_splits(
    part_ptr,  # [S, H, MAX_SPLITS, D] float32
    lse_ptr,  # [S, H, MAX_SPLITS] float32
    out_row,  # the output of the group's first head
    first,  # index of (sequence, first head of the group, split 0) in lse
    stride_o_h,
    active,  # splits that were given keys; the rest hold lse -inf
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MAX_SPLITS: tl.constexpr,
    SPLIT_CHUNK: tl.constexpr,
):
    """The group's heads' outputs from their splits' partial outputs, weighted by exp2(lse) (splits that
    saw no key weigh 0; a sequence with none gets zeros), SPLIT_CHUNK splits at a time with a running max:
    up to SPLIT_CHUNK active splits are one round of loads, lse and partials together. Loads bypass L1
    (.cg): other SMs wrote them, and this SM's L1 may hold an earlier launch's values."""
    g = tl.arange(0, GROUP_PAD)
    g_valid = g < GROUP
    d = tl.arange(0, BLOCK_D)
    d_valid = d < HEAD_DIM
    c = tl.arange(0, SPLIT_CHUNK)
    m = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    total = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)
    for start in range(0, active, SPLIT_CHUNK):
        valid = g_valid[:, None] & ((start + c) < active)[None, :]
        row = first + g[:, None] * MAX_SPLITS + (start + c)[None, :]  # [GROUP_PAD, SPLIT_CHUNK]
        lse = tl.load(lse_ptr + row, mask=valid, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(
            part_ptr + row[:, :, None] * HEAD_DIM + d[None, None, :],
            mask=valid[:, :, None] & d_valid[None, None, :],
            other=0.0,
            cache_modifier=".cg",
        )
        m_new = tl.maximum(m, tl.max(lse, 1))
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m - m_shift)
        w = tl.math.exp2(lse - m_shift[:, None])  # empty splits (lse -inf) weigh 0; their partials are 0
        total = total * alpha + tl.sum(w, 1)
        acc = acc * alpha[:, None] + tl.sum(part * w[:, :, None], 1)
        m = m_new
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(
        out_row + g[:, None] * stride_o_h + d[None, :],
        out.to(out_row.dtype.element_ty),
        mask=g_valid[:, None] & d_valid[None, :],
    )


def decode_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int | None, num_sms: int) -> int:
    """Enough programs for about two waves of the GPU, but no split shorter than 128 keys when the longest
    context is known (it isn't for a CUDA graph, which must serve any length)."""
    programs = num_seqs * num_kv_heads
    splits = min(MAX_DECODE_SPLITS, max(1, -(-2 * num_sms // programs)))
    if max_seq_len is not None:
        splits = min(splits, max(1, -(-max_seq_len // 128)))
    return splits


def _decode_tiles(programs: int, block_d: int) -> tuple[int, int, int]:
    """(BLOCK_N, warps, stages) for a decode launch of this many programs. With many programs (batch 256 x
    8 KV heads), 1-warp programs of 32 keys were fastest on the H200 (fp8 K/V 130 vs 166 us for 4 warps x
    64 keys at batch 256 x 800): more of them fit an SM and their max/sum reductions stay in one warp.
    With fewer programs each needs more warps in flight (64 x 900: 2 warps x 64 keys best).
    benchmarks/bench_attention_ab.py --sweep measures the choices (benchmarks/README.md)."""
    if block_d > 128:
        return 32, 4, 2
    return (32, 1, 3) if programs >= 1024 else (64, 2, 3)


@dataclass(frozen=True)
class DecodeRope:
    """What decode_attention needs to apply the rotary embedding itself (and the per-head q/k norms before
    it) and to write the step's k and v into the cache: q then arrives unrotated, and no rotary or cache-write
    kernel runs before it. Shapes as RotaryEmbedding.rotate_and_write_kv takes them."""

    k: torch.Tensor  # [S, KVH, D] this step's keys, unrotated (head_dim contiguous)
    v: torch.Tensor  # [S, KVH, D] this step's values (head_dim contiguous)
    slots: torch.Tensor  # [S] int64 cache slot of each new token; < 0 writes nothing (graph padding)
    positions: torch.Tensor  # [S]
    cos_sin: torch.Tensor  # [max_positions, D] float32, cos | sin (RotaryEmbedding.build_table)
    head_norm: tuple[torch.Tensor, torch.Tensor, float, bool] | None = None  # q_w, k_w, eps, unit_offset


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    num_splits: int,
    rope: DecodeRope | None = None,
) -> None:
    """q: [S, H, D], one query token per sequence at position seq_lens[s] - 1 (sequences of length 0,
    a CUDA graph's padding, get zeros). With rope, q and rope.k are unrotated: the kernel rotates them
    (after the head norms, if given) and stores the new k and v at rope.slots before attending."""
    num_seqs, num_heads, head_dim = q.shape
    if num_seqs == 0:
        return
    if rope is not None and (
        head_dim % 2 or q.stride(2) != 1 or rope.k.stride(2) != 1 or rope.v.stride(2) != 1
    ):
        raise ValueError("decode_attention: rotary needs an even head_dim and contiguous heads in q, k and v")
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    block_d = triton.next_power_of_2(head_dim)
    block_n, warps, stages = _tile_config(
        "LADLE_DECODE_TILES", _decode_tiles(num_seqs * num_kv_heads * num_splits, block_d)
    )
    head_norm = rope.head_norm if rope is not None else None
    q_w, k_w, eps, unit_offset = head_norm if head_norm is not None else (q, q, 0.0, False)
    split = num_splits > 1
    if split:
        part = torch.empty(
            num_seqs, num_heads, MAX_DECODE_SPLITS, head_dim, dtype=torch.float32, device=q.device
        )
        lse = torch.empty(num_seqs, num_heads, MAX_DECODE_SPLITS, dtype=torch.float32, device=q.device)
        counters = SPLIT_COUNTERS.get(q.device, num_seqs * num_kv_heads, "decode_attention")
    else:
        part, lse, counters = out, out, seq_lens  # unused
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        part if split else out,
        lse,
        out,
        counters,
        block_tables,
        seq_lens,
        *(
            (rope.k, rope.v, rope.slots, rope.positions, rope.cos_sin, q_w, k_w)
            if rope is not None
            else (q,) * 7  # not read without ROTARY
        ),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_tables.stride(0),
        *((rope.k.stride(0), rope.k.stride(1), rope.v.stride(0), rope.v.stride(1)) if rope else (0,) * 4),
        rope.cos_sin.stride(0) if rope is not None else 0,
        scale * _LOG2E,
        sliding_window or 0,
        num_splits,
        eps,
        NUM_KV_HEADS=num_kv_heads,
        GROUP=group,
        BLOCK_H=max(16, triton.next_power_of_2(group)),
        GROUP_PAD=triton.next_power_of_2(group),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        BLOCK_SIZE=k_cache.shape[1],
        USE_WINDOW=sliding_window is not None,
        SPLIT=split,
        MAX_SPLITS=MAX_DECODE_SPLITS,
        SPLIT_CHUNK=16,
        DOT_PRECISION=_dot_precision(q),
        F16_DOTS=_f16_dots(q, k_cache),
        ROTARY=rope is not None,
        HEAD_NORM=head_norm is not None,
        UNIT_OFFSET=unit_offset,
        INTERPRETED=INTERPRETED,
        **pdl_kernel_args(q.device),
        num_warps=warps,
        num_stages=stages,
    )
