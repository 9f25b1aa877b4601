"""Triton GEMV for decode: out = x @ weight.T (+ bias) for a few rows of x (M <= 4), weight [N, K] as
nn.Linear stores it.

At batch 1-4 a linear layer is a read of its weight matrix and nothing else, so the only figure of merit is
HBM bandwidth; cuBLAS reaches 3.0-3.3 TB/s of the H200's 4.8 on an 8B model's qkv and o_proj. Here each
program owns BLOCK_N output rows and streams their [BLOCK_N, K] slab of the weight in [BLOCK_N, BLOCK_K]
chunks along the contiguous K axis (wide, coalesced loads), multiplying every chunk by the matching chunk
of each of the M rows of x (x is tiny and stays in L1/L2; the weight is read exactly once).

When N / BLOCK_N programs are too few to keep every SM streaming, SPLIT_K programs share a row block's K
range. They write float32 partials [SPLIT_K, M, N], and the last of a row block's splits to finish sums them
in split order and writes the output: one launch, no atomics on the output, and the same bits whichever
split finishes last (deterministic), with arrival counters that each launch leaves at 0 (CUDA-graph safe;
ladle.kernels.split_sync).

Importing this module needs Triton (not CUDA: under TRITON_INTERPRET=1 the kernel runs on CPU tensors).
The engine calls it through layers/linear.py's dense_linear, for single-row (batch-1 decode) linears only:
from M = 2 on cuBLAS is as fast. tests/test_kernels_gemv.py checks it against torch; benchmarks/bench_gemv.py
times it against cuBLAS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ladle.kernels.pdl import pdl_kernel_args, pdl_release, pdl_wait
from ladle.kernels.split_sync import INTERPRETED, SPLIT_COUNTERS, fence_gpu

MAX_M = 4
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _pow2(v: int) -> bool:
    return v >= 1 and v & (v - 1) == 0


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # output rows per program
    block_k: int  # weight columns per chunk of the K loop
    split_k: int = 1  # programs sharing one row block's K range
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        # Triton tiles are powers of two; checked here so a bad sweep entry fails before a compile.
        if not _pow2(self.block_n):
            raise ValueError(f"GemvConfig.block_n must be a power of two, got {self.block_n}")
        if not _pow2(self.block_k) or self.block_k < 16:
            raise ValueError(f"GemvConfig.block_k must be a power of two >= 16, got {self.block_k}")
        if not 1 <= self.split_k <= 64:
            raise ValueError(f"GemvConfig.split_k must be in 1..64, got {self.split_k}")
        if not _pow2(self.num_warps) or self.num_warps > 32:
            raise ValueError(f"GemvConfig.num_warps must be a power of two <= 32, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"GemvConfig.num_stages must be >= 1, got {self.num_stages}")


def default_config(n: int, k: int, m: int, sm_count: int) -> GemvConfig:
    """A config for an [m, k] x [n, k]^T product on a GPU of sm_count SMs.

    Bandwidth needs many loads in flight on every SM, i.e. several resident programs per SM. At m == 1 (batch-1
    decode) 4-row blocks streaming 1024-wide chunks (2 KB of a bf16 row per load) came within
    1-3% of the best of a 37-config sweep on every Llama/Qwen3-8B, Gemma-3-1B and LM-head shape on the H200
    (benchmarks/README.md). At larger m the row block shrinks from 16 until there are >= 4 programs per SM
    (untuned: cuBLAS was as fast there). When even that leaves fewer than 2 programs per SM (N < 1056 on 132
    SMs), K is split, keeping >= 4 chunks per split so each still streams."""
    if m == 1:
        block_k, block_n = min(1024, max(16, triton.next_power_of_2(k))), 4
    else:
        block_k, block_n = min(512, max(16, triton.next_power_of_2(k))), 16
        while block_n > 4 and triton.cdiv(n, block_n) < 4 * sm_count:
            block_n //= 2
    chunks = triton.cdiv(k, block_k)
    split_k = 1
    while split_k < 8 and triton.cdiv(n, block_n) * split_k < 2 * sm_count and chunks >= 8 * split_k:
        split_k *= 2
    return GemvConfig(block_n=block_n, block_k=block_k, split_k=split_k, num_warps=4, num_stages=2)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter runs programs one by one: few and large is quickest there
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _row_dot(acc, w, x_row_ptr, k, k_mask, MASKED: tl.constexpr):
    if MASKED:
        x = tl.load(x_row_ptr + k, mask=k_mask, other=0.0)
    else:
        x = tl.load(x_row_ptr + k)
    return acc + tl.sum(w * x.to(tl.float32)[None, :], 1)


@triton.jit
def _load_chunk(w_ptrs, k, K, MASKED: tl.constexpr):
    """One [BLOCK_N, BLOCK_K] chunk of the weight, as float32."""
    if MASKED:
        w = tl.load(w_ptrs, mask=(k < K)[None, :], other=0.0, eviction_policy="evict_first")
    else:
        # Streamed once: evict_first keeps it from pushing x and the partials out of L2.
        w = tl.load(w_ptrs, eviction_policy="evict_first")
    return w.to(tl.float32)


@triton.jit
def _chunk_dot(acc0, acc1, acc2, acc3, w, x_ptr, stride_xm, k, K, M: tl.constexpr, MASKED: tl.constexpr):
    """A loaded weight chunk times the same K range of each of x's M rows; the chunk is loaded once for all
    M. M is a constexpr so the unused accumulators compile away."""
    k_mask = k < K
    acc0 = _row_dot(acc0, w, x_ptr, k, k_mask, MASKED)
    if M > 1:
        acc1 = _row_dot(acc1, w, x_ptr + stride_xm, k, k_mask, MASKED)
    if M > 2:
        acc2 = _row_dot(acc2, w, x_ptr + 2 * stride_xm, k, k_mask, MASKED)
    if M > 3:
        acc3 = _row_dot(acc3, w, x_ptr + 3 * stride_xm, k, k_mask, MASKED)
    return acc0, acc1, acc2, acc3


@triton.jit
def _chunk(acc0, acc1, acc2, acc3, w_ptrs, x_ptr, stride_xm, k, K, M: tl.constexpr, MASKED: tl.constexpr):
    w = _load_chunk(w_ptrs, k, K, MASKED)
    return _chunk_dot(acc0, acc1, acc2, acc3, w, x_ptr, stride_xm, k, K, M, MASKED)


@triton.jit
def _store_rows(out_ptr, stride_om, rows, n_mask, bias, acc0, acc1, acc2, acc3, M: tl.constexpr):
    dtype = out_ptr.dtype.element_ty
    # Bias added in float32 and rounded once, as cuBLAS's epilogue does.
    tl.store(out_ptr + rows, (acc0 + bias).to(dtype), mask=n_mask)
    if M > 1:
        tl.store(out_ptr + stride_om + rows, (acc1 + bias).to(dtype), mask=n_mask)
    if M > 2:
        tl.store(out_ptr + 2 * stride_om + rows, (acc2 + bias).to(dtype), mask=n_mask)
    if M > 3:
        tl.store(out_ptr + 3 * stride_om + rows, (acc3 + bias).to(dtype), mask=n_mask)


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    part_ptr,  # [SPLIT_K, M, N] float32 (SPLIT_K > 1 only)
    counter_ptr,  # one arrival counter per row block (SPLIT_K > 1 only)
    N,
    K,  # not a constexpr: one compile serves every K (Triton still specializes on K % 16 == 0)
    stride_xm,
    stride_wn,
    stride_om,
    M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    INTERPRETED: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_release(USE_PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    # Rows past N re-read row N - 1 (never stored), so the weight loads need no mask along N.
    w_rows = w_ptr + tl.minimum(rows, N - 1).to(tl.int64)[:, None] * stride_wn
    k_offs = tl.arange(0, BLOCK_K)

    # Splits own whole chunks, so every split but the one holding a ragged tail loads without masks.
    full_chunks = K // BLOCK_K
    chunks = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(chunks, SPLIT_K)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, full_chunks)
    # The split's first full chunk is loaded before waiting for the previous kernel (ladle.kernels.pdl): no
    # kernel writes weights, so under PDL this read overlaps that kernel's tail. A split with no full chunk
    # loads zeros here (its x loads are masked), which add nothing.
    k = first * BLOCK_K + k_offs
    # All true or all false, and a multiple of BLOCK_K against the arange: the loads stay vectorized.
    have_first = k_offs < (last - first) * BLOCK_K
    w_first = tl.load(w_rows + k[None, :], mask=have_first[None, :], other=0.0, eviction_policy="evict_first")
    pdl_wait(USE_PDL)
    acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc0, acc1, acc2, acc3 = _chunk_dot(
        acc0, acc1, acc2, acc3, w_first.to(tl.float32), x_ptr, stride_xm, k, K, M, MASKED=True
    )
    for c in range(first + 1, last):
        k = c * BLOCK_K + k_offs
        acc0, acc1, acc2, acc3 = _chunk(
            acc0, acc1, acc2, acc3, w_rows + k[None, :], x_ptr, stride_xm, k, K, M, MASKED=False
        )
    if (full_chunks < chunks) & (pid_k == (chunks - 1) // per_split):
        k = full_chunks * BLOCK_K + k_offs
        acc0, acc1, acc2, acc3 = _chunk(
            acc0, acc1, acc2, acc3, w_rows + k[None, :], x_ptr, stride_xm, k, K, M, MASKED=True
        )

    if HAS_BIAS:
        bias = tl.load(b_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if SPLIT_K == 1:
        _store_rows(out_ptr, stride_om, rows, n_mask, bias, acc0, acc1, acc2, acc3, M)
    else:
        _store_rows(part_ptr + pid_k * M * N, N, rows, n_mask, 0.0, acc0, acc1, acc2, acc3, M)
        # The last split of this row block to get here sums them all (as decode attention's splits do):
        # every thread fences its own stores at GPU scope, the program syncs, then its arrival (acq_rel)
        # publishes them; the last arrival's acquire makes every split's partials visible to it.
        if not INTERPRETED:
            fence_gpu()
        tl.debug_barrier()
        counter = counter_ptr + pid_n
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc0 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc1 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc2 = tl.zeros([BLOCK_N], dtype=tl.float32)
            acc3 = tl.zeros([BLOCK_N], dtype=tl.float32)
            # In split order, not arrival order: the sum's rounding is the same on every run. Loads bypass
            # L1 (.cg): other SMs wrote the partials, and this SM's L1 may hold an earlier launch's.
            for s in tl.static_range(SPLIT_K):
                part = part_ptr + s * M * N + rows
                acc0 += tl.load(part, mask=n_mask, other=0.0, cache_modifier=".cg")
                if M > 1:
                    acc1 += tl.load(part + N, mask=n_mask, other=0.0, cache_modifier=".cg")
                if M > 2:
                    acc2 += tl.load(part + 2 * N, mask=n_mask, other=0.0, cache_modifier=".cg")
                if M > 3:
                    acc3 += tl.load(part + 3 * N, mask=n_mask, other=0.0, cache_modifier=".cg")
            _store_rows(out_ptr, stride_om, rows, n_mask, bias, acc0, acc1, acc2, acc3, M)
            tl.atomic_xchg(counter, 0)  # re-armed for the next launch (the next layer, the next replay)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"gemv: x must be [M, K] and weight [N, K], got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv: x has K={x.shape[1]} but weight [N, K] has K={weight.shape[1]}")
    if not 1 <= x.shape[0] <= MAX_M:
        raise ValueError(f"gemv: x must have 1..{MAX_M} rows (decode batch), got M={x.shape[0]}")
    if x.shape[1] == 0 or weight.shape[0] == 0:
        raise ValueError(f"gemv: K and N must be >= 1, got K={x.shape[1]}, N={weight.shape[0]}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"gemv: x dtype must be bfloat16, float16 or float32, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise ValueError(f"gemv: weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if weight.stride(1) != 1:
        raise ValueError(f"gemv: weight must be row-major (stride 1 along K), got strides {weight.stride()}")
    if weight.device != x.device:
        raise ValueError(f"gemv: weight is on {weight.device} but x on {x.device}")
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"gemv: bias must be [N]=[{weight.shape[0]}], got {tuple(bias.shape)}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise ValueError(f"gemv: bias must be {x.dtype} on {x.device}, got {bias.dtype} on {bias.device}")


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """torch.nn.functional.linear(x, weight, bias) for x [M <= 4, K], weight [N, K] (row-major), float32
    accumulation; returns [M, N] in x's dtype."""
    _check(x, weight, bias)
    m, k = x.shape
    n = weight.shape[0]
    cfg = config or default_config(n, k, m, _sm_count(x.device))
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    row_blocks = triton.cdiv(n, cfg.block_n)
    if cfg.split_k > 1:
        part = torch.empty(cfg.split_k, m, n, dtype=torch.float32, device=x.device)
        counters = SPLIT_COUNTERS.get(x.device, row_blocks, "gemv")
    else:
        part = counters = out  # not read without a split
    _gemv_kernel[(row_blocks, cfg.split_k)](
        x,
        weight,
        bias if bias is not None else out,  # not read without a bias
        out,
        part,
        counters,
        n,
        k,
        x.stride(0),
        weight.stride(0),
        out.stride(0),
        M=m,
        HAS_BIAS=bias is not None,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        SPLIT_K=cfg.split_k,
        INTERPRETED=INTERPRETED,
        **pdl_kernel_args(x.device),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
