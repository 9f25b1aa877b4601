"""The native GGML matmul kernels and GGMLWeight, against gguf's numpy dequantizer.

The kernels quantize activations to 8 bits per 32 values (as ggml does). So each result is checked two
ways: against float64 math on the *same* quantized activations (must agree to float32 rounding: this
pins down the weight decoding exactly), and against the float activations (agrees to the 8-bit
activation error, about 1% of the output's scale).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from gguf_support import gemma_path
from ladle.loader.gguf_file import read_gguf
from ladle.quant.native import NativeKernels, build_kernels, native_kernels
from ladle.quant.weight import GGMLWeight

Q = GGMLQuantizationType
NATIVE = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of the f16 scale fields in each block: random bytes there would be inf/nan.
_HALF_FIELDS = {
    Q.Q8_0: [0],
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


@pytest.fixture(scope="module")
def kernels() -> NativeKernels:
    k = native_kernels()
    if k is None:
        pytest.skip("no C compiler: native kernels unavailable")
    return k


@pytest.fixture(scope="module")
def portable_kernels() -> NativeKernels:
    """The same source built for baseline x86-64/arm64 (no AVX2): exercises the plain C versions."""
    k = build_kernels((["-O2", "-pthread"],))
    if k is None:
        pytest.skip("no C compiler")
    return k


def random_weight(qtype: Q, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for offset in _HALF_FIELDS[qtype]:
        halves = (rng.standard_normal(raw.shape[:2]) * 0.02).astype(np.float16)
        raw[:, :, offset : offset + 2] = halves.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


def quantized_activations(k: NativeKernels, qtype: Q, x: torch.Tensor) -> np.ndarray:
    """What the kernel multiplies by: the activations after ggml's Q8_0 quantization, as float64."""
    blocks = (
        k.quantize_activations(qtype, x).numpy().reshape(x.shape[0], -1, 44)
    )  # f32 d, f32 s, i32 sum, i8 qs[32]
    d = blocks[..., 0:4].copy().view(np.float32).astype(np.float64)
    total = blocks[..., 8:12].copy().view(np.int32)
    q = blocks[..., 12:].copy().view(np.int8).astype(np.float64)
    np.testing.assert_array_equal(q.sum(-1, keepdims=True), total)
    assert np.array_equal(d.astype(np.float16).astype(np.float64), d)  # stored through f16, as ggml does
    return (q * d).reshape(x.shape[0], -1)


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
@pytest.mark.parametrize("build", ["native", "portable"])
def test_int8_matmul_matches_reference(qtype: Q, build: str, request: pytest.FixtureRequest) -> None:
    k: NativeKernels = request.getfixturevalue("kernels" if build == "native" else "portable_kernels")
    assert k.supports(qtype)
    if build == "portable":
        assert not k.has_avx2  # really the plain C code
    rows, cols = 72, 768  # 3 super-blocks of 256 per row
    raw = random_weight(qtype, rows, cols, seed=int(qtype))
    w = quants.dequantize(raw, qtype).astype(np.float64)
    x = torch.randn(5, cols, generator=torch.Generator().manual_seed(0))

    y = k.matmul(qtype, torch.from_numpy(raw), x, method="int8").numpy()
    exact = quantized_activations(k, qtype, x) @ w.T
    if qtype in (Q.Q4_1, Q.Q5_1):
        # ggml's Q8_1 applies each weight block's min m through s = f16(d * sum(q)), not d * sum(q).
        block, size = GGML_QUANT_SIZES[qtype]
        mins = raw.reshape(rows, -1, size)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        acts = k.quantize_activations(qtype, x).numpy().reshape(x.shape[0], -1, 44)
        d = acts[..., 0:4].copy().view(np.float32)[..., 0].astype(np.float64)
        sums = acts[..., 12:].copy().view(np.int8).astype(np.float64).sum(-1)
        s = acts[..., 4:8].copy().view(np.float32)[..., 0].astype(np.float64)
        exact += s @ mins.T - (d * sums) @ mins.T
    scale = np.abs(exact).max()
    assert np.abs(y - exact).max() <= 2e-6 * scale
    assert np.abs(y - x.double().numpy() @ w.T).max() <= 2e-2 * scale


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
@pytest.mark.parametrize("build", ["native", "portable"])
def test_float_matmul_matches_reference(qtype: Q, build: str, request: pytest.FixtureRequest) -> None:
    """The float path is dequantize(W) @ x up to float32 summation order; 9 rows cover a partial tile."""
    k: NativeKernels = request.getfixturevalue("kernels" if build == "native" else "portable_kernels")
    rows, cols = 40, 512
    raw = random_weight(qtype, rows, cols, seed=10 + int(qtype))
    w = quants.dequantize(raw, qtype).astype(np.float64)
    x = torch.randn(9, cols, generator=torch.Generator().manual_seed(1))
    y = k.matmul(qtype, torch.from_numpy(raw), x, method="float").numpy()
    exact = x.double().numpy() @ w.T
    assert np.abs(y - exact).max() <= 1e-5 * np.abs(exact).max()


def test_activation_quantization(kernels: NativeKernels) -> None:
    """Each value is within half a step of the input, steps being max|block| / 127 (plus the f16 rounding
    of the scale); an all-zero block must not divide by zero."""
    x = torch.randn(3, 512) * torch.logspace(-3, 3, 512)
    x[1, :32] = 0.0
    xq = quantized_activations(kernels, Q.Q8_0, x)
    blocks = x.double().numpy().reshape(3, -1, 32)
    step = np.abs(blocks).max(-1, keepdims=True) / 127
    assert np.all(np.abs(xq.reshape(blocks.shape) - blocks) <= step * (0.5 + 128 * 2.0**-11) + 1e-12)
    assert np.all(xq[1, :32] == 0)


def test_ggml_weight_interface() -> None:
    qtype, rows, cols = Q.Q4_K, 40, 512
    raw = random_weight(qtype, rows, cols, seed=3)
    dense = torch.from_numpy(quants.dequantize(raw, qtype))
    weight = GGMLWeight(torch.from_numpy(raw), qtype, (rows, cols))
    assert weight.shape == (rows, cols) and weight.nbytes == raw.nbytes
    assert torch.equal(weight.dequantize(), dense)
    ids = torch.tensor([[3, 0], [39, 3]])
    assert torch.equal(weight.embedding(ids), dense[ids])
    x = torch.randn(2, 3, cols)
    y = weight.linear(x)
    ref = F.linear(x, dense)
    assert y.shape == (2, 3, rows)
    assert (y - ref).abs().max() <= 2e-2 * ref.abs().max()
    assert torch.equal(weight.rows(torch.tensor([5, 1])).dequantize(), dense[[5, 1]])
    stacked = GGMLWeight.stack([weight, weight.rows(torch.arange(8))])
    assert stacked is not None and stacked.shape == (48, cols)
    assert torch.equal(stacked.linear(x), torch.cat([y, weight.linear(x)[..., :8]], dim=-1))
    other = GGMLWeight(torch.from_numpy(random_weight(Q.Q8_0, 4, cols, seed=5)), Q.Q8_0, (4, cols))
    assert GGMLWeight.stack([weight, other]) is None
    with pytest.raises(ValueError, match="expected uint8 bytes"):
        GGMLWeight(torch.from_numpy(raw[:, :-1].copy()), qtype, (rows, cols))


def test_fallback_without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a compiler, linear() dequantizes in chunks and uses F.linear: exact float math."""
    import ladle.quant.weight as weight_module

    monkeypatch.setattr(weight_module, "native_kernels", lambda: None)
    monkeypatch.setattr(weight_module, "_FALLBACK_ROWS", 16)
    raw = random_weight(Q.Q6_K, 40, 256, seed=4)
    weight = GGMLWeight(torch.from_numpy(raw), Q.Q6_K, (40, 256))
    assert not weight.has_fast_matmul
    x = torch.randn(3, 256)
    dense = torch.from_numpy(quants.dequantize(raw, Q.Q6_K))
    torch.testing.assert_close(weight.linear(x), F.linear(x, dense), rtol=1e-5, atol=1e-5)


def test_real_gemma_matrices(kernels: NativeKernels) -> None:
    """Each quantized type of the Gemma file through GGMLWeight.linear, batch 1 and 7."""
    gguf = read_gguf(gemma_path())
    names = [
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_down.weight",
        "blk.1.ffn_down.weight",
    ]
    seen = set()
    for name in names:
        info = gguf.tensors[name]
        seen.add(info.qtype)
        raw = gguf.tensor_bytes(name)
        weight = GGMLWeight(raw, info.qtype, info.shape)
        dense = torch.from_numpy(quants.dequantize(raw.numpy(), info.qtype))
        for batch in (1, 7):
            x = torch.randn(batch, info.shape[1])
            ref = F.linear(x, dense)
            err = (weight.linear(x) - ref).abs().max() / ref.abs().max()
            assert err < 2e-2, (name, batch, float(err))
    assert seen == {Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K}
