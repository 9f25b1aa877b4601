"""ladle.quant.dequant against the gguf package's numpy dequantizers (a port of ggml's reference C code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from gguf_support import gemma_path
from ladle.loader.gguf_file import read_gguf
from ladle.quant.dequant import SUPPORTED_TYPES, dequantize

Q = GGMLQuantizationType
QUANTIZED = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


def assert_bit_identical(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape and got.dtype == np.float32
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(got), nan)
    # Compare the bit patterns, so -0.0 vs 0.0 or a one-ulp difference would fail.
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", QUANTIZED + [Q.F16, Q.BF16], ids=lambda q: q.name)
def test_random_blocks_match_reference(qtype: Q) -> None:
    """Arbitrary bytes exercise every bit of every field, including inf/nan scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    rows, blocks_per_row = 8, 4 if block > 1 else 128
    raw = np.random.default_rng(int(qtype)).integers(0, 256, (rows, blocks_per_row * size), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = quants.dequantize(raw, qtype)
    got = dequantize(torch.from_numpy(raw.copy()), qtype).numpy()
    assert_bit_identical(got, ref)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16], ids=lambda q: q.name)
def test_quantized_floats_match_reference(qtype: Q) -> None:
    """Realistic blocks, as gguf's quantizer writes them."""
    values = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)
    raw = quants.quantize(values, qtype)
    got = dequantize(torch.from_numpy(np.ascontiguousarray(raw)), qtype).numpy()
    assert_bit_identical(got, quants.dequantize(raw, qtype))
    if qtype != Q.BF16:
        assert (
            np.abs(got - values).max() < 0.5
        )  # and it is a coarse copy of the input (4 bits: steps of ~0.4)


def test_f32_and_shapes() -> None:
    values = np.arange(24, dtype=np.float32)
    raw = torch.from_numpy(values.view(np.uint8).copy())
    assert torch.equal(dequantize(raw, Q.F32, (2, 3, 4)), torch.from_numpy(values).reshape(2, 3, 4))
    assert SUPPORTED_TYPES == {Q.F32, Q.F16, Q.BF16, *QUANTIZED}


def test_chunked_large_tensor_matches() -> None:
    """Tensors above the chunk size are dequantized in pieces; the pieces must join seamlessly."""
    raw = np.random.default_rng(2).integers(0, 256, (70_000, 34), dtype=np.uint8)
    raw[:, 1] &= 0x3B  # keep the f16 scales finite
    got = dequantize(torch.from_numpy(raw.reshape(-1).copy()), Q.Q8_0).numpy()
    assert_bit_identical(got, quants.dequantize(raw, Q.Q8_0).reshape(-1))


def test_errors() -> None:
    with pytest.raises(ValueError, match="whole number"):
        dequantize(torch.zeros(33, dtype=torch.uint8), Q.Q8_0)
    with pytest.raises(NotImplementedError, match="IQ2_XXS"):
        dequantize(torch.zeros(66, dtype=torch.uint8), Q.IQ2_XXS)


def test_real_gemma_tensors_match_reference() -> None:
    """Every tensor type in the Gemma 3 270M Q4_K_M file (Q8_0, Q5_0, Q4_K, Q6_K, F32), on real rows."""
    gguf = read_gguf(gemma_path())
    seen: set[Q] = set()
    for name, info in gguf.tensors.items():
        if info.qtype in seen:
            continue
        seen.add(info.qtype)
        raw = gguf.tensor_bytes(name)
        if raw.dim() == 2:
            raw = raw[:512]  # plenty of blocks; the whole embedding would take a while in numpy
        ref = (
            quants.dequantize(raw.numpy(), info.qtype)
            if info.qtype != Q.F32
            else raw.numpy().view(np.float32)
        )
        assert_bit_identical(dequantize(raw, info.qtype).numpy().reshape(ref.shape), ref)
    assert {Q.Q8_0, Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.F32} <= seen
