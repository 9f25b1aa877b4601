"""Fused elementwise Triton kernels for the GPU: RMSNorm (alone or after the residual add), rotary embedding
(optionally with the KV-cache write of the rotated keys and the values), SiLU-and-multiply and
tanh-GELU-and-multiply.

At decode batch sizes these ops move kilobytes, so their cost is the number of kernels, not bytes: torch's
RMSNorm is ~6 kernels, rotary ~16, SiLU*up or GELU*up 2-3; here each is one. Results match the torch versions in
ladle.layers (same float32 arithmetic and the same rounding points); tests/test_kernels_fused.py checks it.
Importing this module needs Triton; ladle.layers calls it only for CUDA tensors when Triton is installed.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ladle.kernels.pdl import pdl_enter, pdl_kernel_args


@triton.jit
def _normed_row(x, w, eps, N: tl.constexpr, UNIT_OFFSET: tl.constexpr, out_ty: tl.constexpr):
    """rms_norm of one float32 row with weight w, rounded to out_ty where torch's RMSNorm rounds."""
    h = x * tl.math.rsqrt(tl.sum(x * x, 0) / N + eps)
    if UNIT_OFFSET:
        # Gemma: float32 (1 + w) * h, then one rounding.
        return (h * (1.0 + w.to(tl.float32))).to(out_ty)
    # Llama: round h to the activation dtype first, then weight * h (rounded again).
    return (w.to(tl.float32) * h.to(out_ty).to(tl.float32)).to(out_ty)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    r_ptr,
    w_ptr,
    pre_w_ptr,
    out_ptr,
    sum_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_s,
    eps,
    pre_eps,
    N: tl.constexpr,
    BLOCK: tl.constexpr,
    UNIT_OFFSET: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    PRE_NORM: tl.constexpr,  # x first normed with pre_w (Gemma's post-attention/feedforward norm; UNIT_OFFSET)
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    out_ty: tl.constexpr = out_ptr.dtype.element_ty
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    if PRE_NORM:
        pre_w = tl.load(pre_w_ptr + offs, mask=mask, other=0.0)
        x = _normed_row(x.to(tl.float32), pre_w, pre_eps, N, UNIT_OFFSET, out_ty)
    if HAS_RESIDUAL:
        # x + r rounded to the activation dtype, as torch's add: stored, and the norm reads the rounded sum.
        r = tl.load(r_ptr + row * stride_r + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + row * stride_s + offs, x, mask=mask)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    tl.store(
        out_ptr + row * stride_o + offs,
        _normed_row(x.to(tl.float32), w, eps, N, UNIT_OFFSET, out_ty),
        mask=mask,
    )


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with the last dim contiguous."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch_rms_norm(
    x2: torch.Tensor,
    r2: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    unit_offset: bool,
    pre_norm: tuple[torch.Tensor, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
    total = torch.empty_like(out) if r2 is not None else None
    pre_weight, pre_eps = pre_norm if pre_norm is not None else (weight, 0.0)  # not read without PRE_NORM
    if x2.shape[0]:
        block = triton.next_power_of_2(x2.shape[1])
        _rms_norm_kernel[(x2.shape[0],)](
            x2,
            r2 if r2 is not None else x2,  # not read without a residual
            weight,
            pre_weight,
            out,
            total if total is not None else out,  # not written without a residual
            x2.stride(0),
            r2.stride(0) if r2 is not None else 0,
            out.stride(0),
            total.stride(0) if total is not None else 0,
            eps,
            pre_eps,
            N=x2.shape[1],
            BLOCK=block,
            UNIT_OFFSET=unit_offset,
            HAS_RESIDUAL=r2 is not None,
            PRE_NORM=pre_norm is not None,
            **pdl_kernel_args(x2.device),
            num_warps=min(16, max(1, block // 256)),
        )
    return out, total


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
    return _launch_rms_norm(_rows(x), None, weight, eps, unit_offset)[0].view(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), one kernel: a decoder layer's residual add and the norm
    after it."""
    out, total = _launch_rms_norm(_rows(x), _rows(residual), weight, eps, unit_offset)
    return out.view(x.shape), total.view(x.shape)


def norm_add_rms_norm(
    x: torch.Tensor,
    x_weight: torch.Tensor,
    x_eps: float,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(s), s) with s = rms_norm(x, x_weight) + residual, one kernel, for Gemma's (1 + weight)
    norms: its sandwich, where a sublayer's output is normed before the residual add and the sum is normed
    again, rounded as the three torch steps are. Only (1 + weight) norms: with Llama's (which round twice)
    the pre-norm's inner rounding was not kept in one kernel on the H200 (11% of bf16 sums an ulp off), and
    no model has that sandwich."""
    out, total = _launch_rms_norm(_rows(x), _rows(residual), weight, eps, True, (x_weight, x_eps))
    return out.view(x.shape), total.view(x.shape)


@triton.jit(do_not_specialize_on_alignment=["pos_ptr", "slot_ptr"])
def _rotary_kernel(
    x_ptr,
    cos_sin_ptr,
    pos_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_ptr,
    q_norm_ptr,
    k_norm_ptr,
    stride_t,
    stride_h,
    stride_cs,
    stride_v_t,
    eps,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    WRITE_KV: tl.constexpr,  # x is [T, q heads + KV heads, D]: also store k (rotated) and v in the cache
    NUM_Q_HEADS: tl.constexpr,
    KV_ROW: tl.constexpr,  # KV heads * D: one token's K (or V) in the cache
    BLOCK_KV: tl.constexpr,
    HEAD_NORM: tl.constexpr,  # RMSNorm each head first (Qwen3's and Gemma 3's q_norm / k_norm), as rms_norm
    UNIT_OFFSET: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    t = tl.program_id(0)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)
    jm = j < HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + j, mask=jm, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + j, mask=jm, other=0.0)
    h = tl.arange(0, BLOCK_H)
    mask = (h < NUM_HEADS)[:, None] & jm[None, :]
    base = x_ptr + t.to(tl.int64) * stride_t + h[:, None] * stride_h + j[None, :]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + HALF, mask=mask, other=0.0)
    f1 = x1.to(tl.float32)
    f2 = x2.to(tl.float32)
    if HEAD_NORM:
        # rms_norm's arithmetic on each head's row (its two halves), rounded to x's dtype as rms_norm's
        # output is before the rotary reads it.
        r = tl.math.rsqrt((tl.sum(f1 * f1, 1) + tl.sum(f2 * f2, 1)) / (2 * HALF) + eps)
        is_q = (h < NUM_Q_HEADS)[:, None]
        w1 = tl.where(
            is_q,
            tl.load(q_norm_ptr + j, mask=jm, other=0.0)[None, :],
            tl.load(k_norm_ptr + j, mask=jm, other=0.0)[None, :],
        ).to(tl.float32)
        w2 = tl.where(
            is_q,
            tl.load(q_norm_ptr + HALF + j, mask=jm, other=0.0)[None, :],
            tl.load(k_norm_ptr + HALF + j, mask=jm, other=0.0)[None, :],
        ).to(tl.float32)
        h1 = f1 * r[:, None]
        h2 = f2 * r[:, None]
        if UNIT_OFFSET:
            f1 = (h1 * (1.0 + w1)).to(x1.dtype).to(tl.float32)
            f2 = (h2 * (1.0 + w2)).to(x1.dtype).to(tl.float32)
        else:
            f1 = (w1 * h1.to(x1.dtype).to(tl.float32)).to(x1.dtype).to(tl.float32)
            f2 = (w2 * h2.to(x1.dtype).to(tl.float32)).to(x1.dtype).to(tl.float32)
    o1 = (f1 * cos[None, :] - f2 * sin[None, :]).to(x1.dtype)
    o2 = (f2 * cos[None, :] + f1 * sin[None, :]).to(x1.dtype)
    tl.store(base, o1, mask=mask)
    tl.store(base + HALF, o2, mask=mask)
    if WRITE_KV:
        # What write_kv_cache would store after this kernel: the rounded k, converted to the cache's dtype.
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            kh = h - NUM_Q_HEADS
            k_mask = mask & (kh >= 0)[:, None]
            k_dst = k_cache_ptr + slot * KV_ROW + kh[:, None] * (2 * HALF) + j[None, :]
            cache_dtype = k_cache_ptr.dtype.element_ty
            tl.store(k_dst, o1.to(cache_dtype), mask=k_mask)
            tl.store(k_dst + HALF, o2.to(cache_dtype), mask=k_mask)
            offs = tl.arange(0, BLOCK_KV)
            v_mask = offs < KV_ROW
            v = tl.load(v_ptr + t.to(tl.int64) * stride_v_t + offs, mask=v_mask)
            tl.store(v_cache_ptr + slot * KV_ROW + offs, v.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def _launch_rotary(
    x: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor, kv_write=None, head_norm=None
) -> None:
    tokens, heads, dim = x.shape
    if not tokens:
        return
    half = dim // 2
    if kv_write is None:
        v = k_cache = v_cache = slots = x  # not read without WRITE_KV
        q_heads, kv_row, stride_v = heads, 1, 0
    else:
        v, k_cache, v_cache, slots = kv_write
        q_heads, kv_row, stride_v = heads - v.shape[1], v.shape[1] * dim, v.stride(0)
    q_norm, k_norm, eps, unit_offset = head_norm if head_norm is not None else (x, x, 0.0, False)
    _rotary_kernel[(tokens,)](
        x,
        cos_sin,
        positions,
        v,
        k_cache,
        v_cache,
        slots,
        q_norm,
        k_norm,
        x.stride(0),
        x.stride(1),
        cos_sin.stride(0),
        stride_v,
        eps,
        NUM_HEADS=heads,
        HALF=half,
        BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_HALF=triton.next_power_of_2(half),
        WRITE_KV=kv_write is not None,
        NUM_Q_HEADS=q_heads,
        KV_ROW=kv_row,
        BLOCK_KV=triton.next_power_of_2(kv_row),
        HEAD_NORM=head_norm is not None,
        UNIT_OFFSET=unit_offset,
        **pdl_kernel_args(x.device),
        num_warps=4,
    )


def rotary_(x: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """In place on x [T, H, D] (head_dim contiguous); cos_sin [max_pos, D] float32 = [cos | sin]."""
    _launch_rotary(x, cos_sin, positions)
    return x


def rotary_and_write_kv_(
    qk: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
    cos_sin: torch.Tensor,
    positions: torch.Tensor,
    head_norm: tuple[torch.Tensor, torch.Tensor, float, bool] | None = None,
) -> None:
    """rotary_ on qk [T, H + KVH, D] (q's heads, then k's), and in the same launch what
    triton_attention.write_kv_cache(k, v, ...) does after it: token t's rotated k and its v [T, KVH, D]
    (each token's heads one contiguous row) stored at cache slot slots[t], skipped where slots[t] < 0. One
    launch instead of two: at decode batch sizes each costs more to launch than its bytes.

    head_norm (q_weight, k_weight, eps, unit_offset): first rms_norm each q head with q_weight and each
    k head with k_weight (Qwen3, Gemma 3), in the same launch: one instead of five."""
    if v.stride(2) != 1 or v.stride(1) != v.shape[2]:
        raise ValueError("v's heads must be one contiguous row per token")
    _launch_rotary(qk, cos_sin, positions, (v, k_cache, v_cache, slots), head_norm)


@triton.jit
def _gated_act_kernel(
    gu_ptr,
    out_ptr,
    stride_gu,
    stride_o,
    N: tl.constexpr,
    BLOCK: tl.constexpr,
    GELU_TANH: tl.constexpr,  # GeGLU with tanh-GELU (Gemma); else SwiGLU (SiLU)
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + N + offs, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    if GELU_TANH:
        # torch's float32 formula: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) with CUDA's tanhf (its
        # kernel's kBeta = M_SQRT2 * M_2_SQRTPI * 0.5 is sqrt(2/pi)).
        inner = 0.7978845608028654 * (gf + 0.044715 * (gf * gf * gf))
        act = 0.5 * gf * (1.0 + libdevice.tanh(inner))
    else:
        act = gf / (1.0 + tl.exp(-gf))
    # torch rounds the activation to the activation dtype before multiplying; so do we.
    out = act.to(g.dtype).to(tl.float32) * u.to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, out.to(g.dtype), mask=mask)


def gated_act_mul(gate_up: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
    """gate_up [T, 2I] (gate | up) -> act(gate) * up [T, I]; act is tanh-GELU or else SiLU."""
    tokens, two_n = gate_up.shape
    n = two_n // 2
    out = torch.empty(tokens, n, dtype=gate_up.dtype, device=gate_up.device)
    if tokens:
        block = 1024
        _gated_act_kernel[(tokens, triton.cdiv(n, block))](
            gate_up,
            out,
            gate_up.stride(0),
            out.stride(0),
            N=n,
            BLOCK=block,
            GELU_TANH=gelu_tanh,
            **pdl_kernel_args(gate_up.device),
            num_warps=4,
        )
    return out
