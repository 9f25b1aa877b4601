"""Fused Triton elementwise ops (RMSNorm, rotary, SiLU-mul) against the torch versions in ladle.layers.

Runs on CUDA; skipped elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from ladle.layers.norm import RMSNorm
from ladle.layers.rotary import RotaryEmbedding, _adjacent_heads
from ladle.model.config import RopeConfig

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton"
)


def _torch_ref(monkeypatch, fn):
    monkeypatch.setenv("LADLE_FUSED_OPS", "0")
    try:
        return fn()
    finally:
        monkeypatch.setenv("LADLE_FUSED_OPS", "1")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("shape", [(1, 4096), (37, 4096), (5, 8, 128), (3, 1152), (2, 4, 256)])
def test_rms_norm(monkeypatch, dtype, unit_offset, shape):
    norm = RMSNorm(shape[-1], 1e-5, unit_offset=unit_offset)
    norm.set_weight(torch.randn(shape[-1], device="cuda").to(dtype))
    x = torch.randn(shape, device="cuda").to(dtype) * 3
    got = norm(x)
    ref = _torch_ref(monkeypatch, lambda: norm(x))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 37])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_add_rms_norm(monkeypatch, dtype, tokens, unit_offset):
    """The residual add and the norm in one kernel: the sum is torch's x + r exactly, the norm as RMSNorm's
    (Llama's, and Gemma's (1 + weight))."""
    norm = RMSNorm(4096, 1e-5, unit_offset=unit_offset)
    norm.set_weight(torch.randn(4096, device="cuda").to(dtype))
    x = torch.randn(tokens, 4096, device="cuda").to(dtype) * 3
    residual = torch.randn(tokens, 4096, device="cuda").to(dtype) * 20
    got, total = norm.add_forward(x, residual)
    ref, ref_total = _torch_ref(monkeypatch, lambda: norm.add_forward(x, residual))
    torch.testing.assert_close(total, ref_total, rtol=0, atol=0)
    torch.testing.assert_close(total, x + residual, rtol=0, atol=0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads", [(32, 8, 128), (16, 8, 128), (4, 1, 256), (6, 2, 64)])
@pytest.mark.parametrize("layout", ["fused-qkv", "separate"])
@pytest.mark.parametrize("tokens", [1, 41])
def test_rotary(monkeypatch, dtype, heads, layout, tokens):
    h, kvh, d = heads
    rope = RotaryEmbedding(d, RopeConfig(theta=500000.0))
    rope.cos_sin = rope.build_table(4096, torch.device("cuda"))
    positions = torch.randint(0, 4096, (tokens,), device="cuda")
    # fused-qkv: q and k as views of one projection output, rotated by one launch; separate: two tensors.
    qkv = torch.randn(tokens, (h + 2 * kvh) * d, device="cuda").to(dtype)
    q, k, v = qkv.split([h * d, kvh * d, kvh * d], dim=-1)
    q, k = q.view(tokens, h, d), k.view(tokens, kvh, d)
    v_before = v.clone()
    if layout == "separate":
        q, k = q.clone(), k.clone()
    # One launch for the fused layout at every batch size (a one-token batch's views have unequal row strides).
    assert (_adjacent_heads(q, k) is not None) == (layout == "fused-qkv")
    ref_q, ref_k = _torch_ref(monkeypatch, lambda: rope(positions, q.clone(), k.clone()))
    got_q, got_k = rope(positions, q, k)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got_q, ref_q, rtol=tol, atol=tol)
    torch.testing.assert_close(got_k, ref_k, rtol=tol, atol=tol)
    assert torch.equal(v, v_before)  # the one launch over q and k stops before v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 37])
@pytest.mark.parametrize("unit_offset", [False, True])
def test_norm_add_rms_norm(monkeypatch, dtype, tokens, unit_offset):
    """Gemma's sandwich: x normed, added to the residual, the sum normed again; the same as the three torch
    steps, with x_norm's own weight and eps. One kernel for (1 + weight) norms, two for Llama's."""
    x_norm, norm = RMSNorm(1152, 1e-6, unit_offset=unit_offset), RMSNorm(1152, 1e-5, unit_offset=unit_offset)
    x_norm.set_weight(torch.randn(1152, device="cuda").to(dtype))
    norm.set_weight(torch.randn(1152, device="cuda").to(dtype))
    x = torch.randn(tokens, 1152, device="cuda").to(dtype) * 30
    residual = torch.randn(tokens, 1152, device="cuda").to(dtype) * 5
    got, total = norm.add_forward(x, residual, x_norm)
    ref, ref_total = _torch_ref(monkeypatch, lambda: norm.add_forward(x, residual, x_norm))
    ref_x = _torch_ref(monkeypatch, lambda: x_norm(x))
    # The sum may differ from torch's where the normed x did by an ulp (rsqrt's last bits): bounded by the
    # addends' size, not the sum's (which cancels), and rare once rounded to bf16.
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-21
    bound = (ref_x.float().abs() + residual.float().abs()) * ulp
    assert ((total.float() - ref_total.float()).abs() <= bound).all()
    if dtype == torch.bfloat16:
        assert (total == ref_total).float().mean() > 0.99
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    # x_norm's weight matters: without it (x + residual normed) the sum is another one
    assert not torch.allclose(norm.add_forward(x, residual)[1], total)


@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_silu_mul(tokens):
    from ladle.kernels.fused_ops import gated_act_mul

    gate_up = torch.randn(tokens, 2 * 14336, device="cuda").to(torch.bfloat16) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(
        gated_act_mul(gate_up, gelu_tanh=False), F.silu(gate) * up, rtol=1e-2, atol=1e-2
    )


@dataclass
class _RotaryCase:
    """A fused-QKV projection output of `tokens` tokens, its rotary table and positions, and cache slots in
    8 blocks of 16 (some -1: CUDA-graph padding, nothing stored)."""

    heads: tuple[int, int, int]
    tokens: int
    dtype: torch.dtype
    theta: float
    scale: float = 1.0

    def __post_init__(self):
        h, kvh, d = self.heads
        self.rope = RotaryEmbedding(d, RopeConfig(theta=self.theta))
        self.rope.cos_sin = self.rope.build_table(4096, torch.device("cuda"))
        self.positions = torch.randint(0, 4096, (self.tokens,), device="cuda")
        self.qkv = (torch.randn(self.tokens, (h + 2 * kvh) * d, device="cuda") * self.scale).to(self.dtype)
        self.slots = torch.randperm(8 * 16, device="cuda")[: self.tokens]
        self.slots[::3] = -1

    def views(self, t: torch.Tensor):
        h, kvh, d = self.heads
        q, k, v = t.split([h * d, kvh * d, kvh * d], dim=-1)
        return q.view(self.tokens, h, d), k.view(self.tokens, kvh, d), v.view(self.tokens, kvh, d)

    def caches(self, dtype: torch.dtype):
        # Filled with a pattern, not zeros, so that a skipped slot that was written would show.
        _, kvh, d = self.heads
        return tuple(torch.full((8, 16, kvh, d), 0.5, device="cuda").to(dtype) for _ in range(2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("cache", ["same", "fp8"])
@pytest.mark.parametrize("heads", [(32, 8, 128), (4, 1, 256), (6, 2, 64)])
@pytest.mark.parametrize("tokens", [1, 41])
def test_rotary_with_kv_write_stores_what_the_two_kernels_store(dtype, cache, heads, tokens):
    from ladle.kernels.fused_ops import rotary_
    from ladle.kernels.triton_attention import write_kv_cache

    case = _RotaryCase(heads, tokens, dtype, theta=500000.0)
    cache_dtype = torch.float8_e4m3fn if cache == "fp8" else dtype
    ref_qkv = case.qkv.clone()
    ref_q, ref_k, ref_v = case.views(ref_qkv)
    rotary_(_adjacent_heads(ref_q, ref_k), case.rope.cos_sin, case.positions)
    ref_caches = case.caches(cache_dtype)
    write_kv_cache(ref_k, ref_v, *ref_caches, case.slots)

    q, k, v = case.views(case.qkv)
    caches = case.caches(cache_dtype)
    assert case.rope.rotate_and_write_kv(case.positions, q, k, v, *caches, case.slots)
    assert torch.equal(case.qkv, ref_qkv)  # q and k rotated in place as rotary_ does; v untouched
    for got, ref in zip(caches, ref_caches):
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_rotary_with_kv_write_declines_separate_q_and_k():
    rope = RotaryEmbedding(64, RopeConfig(theta=10000.0))
    rope.cos_sin = rope.build_table(128, torch.device("cuda"))
    q, k, v = (torch.randn(3, heads, 64, device="cuda") for heads in (4, 2, 2))
    cache = torch.zeros(2, 16, 2, 64, device="cuda")
    before = q.clone(), k.clone()
    slots = torch.arange(3, device="cuda")
    assert not rope.rotate_and_write_kv(torch.arange(3, device="cuda"), q, k, v, cache, cache.clone(), slots)
    assert torch.equal(q, before[0]) and torch.equal(k, before[1]) and not cache.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("unit_offset", [False, True])  # Qwen3's q/k norms, Gemma 3's
@pytest.mark.parametrize("heads", [(32, 8, 128), (4, 1, 256), (16, 8, 128)])
@pytest.mark.parametrize("tokens", [1, 41])
def test_rotary_with_kv_write_and_head_norms_matches_the_five_kernels(dtype, unit_offset, heads, tokens):
    from ladle.kernels.triton_attention import write_kv_cache

    case = _RotaryCase(heads, tokens, dtype, theta=1000000.0, scale=3.0)
    d = heads[2]
    q_norm, k_norm = (RMSNorm(d, 1e-6, unit_offset=unit_offset) for _ in range(2))
    for norm in (q_norm, k_norm):
        norm.set_weight((torch.rand(d, device="cuda") * 2).to(dtype))
    # Unfused, as Attention.forward runs without the fused kernel: two norms, two rotary launches, a write.
    ref_q, ref_k, ref_v = case.views(case.qkv.clone())
    ref_q, ref_k = case.rope(case.positions, q_norm(ref_q), k_norm(ref_k))
    ref_caches = case.caches(dtype)
    write_kv_cache(ref_k, ref_v, *ref_caches, case.slots)

    q, k, v = case.views(case.qkv)
    caches = case.caches(dtype)
    assert case.rope.rotate_and_write_kv(case.positions, q, k, v, *caches, case.slots, q_norm, k_norm)
    # The sum of squares is added in another order than rms_norm's: in bf16 a norm output can round the
    # other way (one unit in the last place, ~0.06 at 8), and the rotation carries that on.
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (2e-2, 0.1)
    torch.testing.assert_close(q, ref_q, rtol=rtol, atol=atol)
    torch.testing.assert_close(k, ref_k, rtol=rtol, atol=atol)
    for got, ref in zip(caches, ref_caches):
        torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_gelu_tanh_mul(tokens):
    """Gemma's GeGLU: torch's float32 tanh-GELU rounded to bf16, times up, rounded again; all but a few
    elements bitwise (CUDA's tanhf in both, the rest are float32 contraction differences)."""
    from ladle.kernels.fused_ops import gated_act_mul

    gate_up = torch.randn(tokens, 2 * 6912, device="cuda").to(torch.bfloat16) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    want = F.gelu(gate, approximate="tanh") * up
    got = gated_act_mul(gate_up, gelu_tanh=True)
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
    assert (got == want).float().mean() > 0.99
    # and not SiLU's: the two activations differ on most elements
    assert (got != F.silu(gate) * up).float().mean() > 0.5
