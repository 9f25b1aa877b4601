"""ladle's native GGML matmuls against ggml's own kernels (llama-cpp-python's libggml, tests/ggml_reference.py).

The default method computes what llama.cpp computes, bit for bit: the same quantized activations, byte for
byte, the same integer dot products, and the float products added in the order of the route llama.cpp takes
on this CPU for that weight and batch (vec_dot, llamafile's tinyBLAS, the repacked Q4_Kx8 gemv/gemm, the
tiled K-quant matmul from 8 rows, the repacked Q4_0x8 gemv/gemm). The plain C build for CPUs without AVX2
is held to a tolerance instead.

Tolerance: max|ladle - ggml| <= 1e-5 * max|ggml|. Float reordering over k <= 2048 costs ~1e-7..1e-6 of
max|y| (measured: <= 5e-7). One activation rounded the other way (ties to even vs away from zero, or
127/max vs 1/d) moves a result by d_x * |w| ~ max|x_block| / 127 * |w|, which for these shapes is >= 1e-4
of max|y| even without outliers; test_tolerance_catches_one_rounding_step checks that the bound sees it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from ggml_reference import VEC_DOT_TYPE, GGMLReference, ggml_reference
from gguf_support import gemma_path
from ladle.loader.gguf_file import read_gguf
from ladle.quant.native import NativeKernels, build_kernels, choose_method, native_kernels
from ladle.quant.row_groups import row_groups, sequence_rows
from ladle.quant.weight import GGMLWeight

Q = GGMLQuantizationType
NATIVE = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = {Q.Q4_K, Q.Q5_K, Q.Q6_K}
RTOL = 1e-5
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
# Gemma 3 270M's matrix shapes (out, in); K-quants need in % 256 == 0.
SHAPES_32 = [(1024, 640), (256, 640), (2048, 640), (640, 2048)]
SHAPES_K = [(640, 1024), (640, 2048)]
BATCHES = [1, 3, 8, 32]


@pytest.fixture(scope="module")
def ref() -> GGMLReference:
    r = ggml_reference()
    if r is None:
        pytest.skip("llama-cpp-python (ggml's shared libraries) is not installed: no reference")
    return r


def cpu_flags() -> set[str]:
    try:
        return {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()}
    except OSError:
        return set()


@pytest.fixture(scope="module")
def kernels() -> NativeKernels:
    k = native_kernels()
    if k is None:
        pytest.skip("no C compiler: native kernels unavailable")
    # A -march=native build that failed would silently fall back to the plain C code: catch that here.
    assert k.has_avx2 or "avx2" not in cpu_flags()
    assert k.has_vnni or not {"avx512_vnni", "avx512vl"} <= cpu_flags()
    assert k.has_amx or "amx_int8" not in cpu_flags()
    return k


@pytest.fixture(scope="module")
def portable_kernels() -> NativeKernels:
    """The same source built for baseline x86-64/arm64 (no AVX2): exercises the plain C versions."""
    k = build_kernels((["-O2", "-pthread"],))
    if k is None:
        pytest.skip("no C compiler")
    assert not k.has_avx2
    return k


@pytest.fixture(scope="module")
def avx2_kernels(kernels: NativeKernels) -> NativeKernels:
    """An AVX2-only build (no AVX512-VNNI): the vpmaddubsw paths a CI machine without AVX-512 takes."""
    if not kernels.has_avx2:
        pytest.skip("this CPU has no AVX2")
    k = build_kernels((["-O3", "-mavx2", "-mfma", "-mf16c", "-pthread"],))
    if k is None:
        pytest.skip("the compiler cannot target AVX2")
    assert k.has_avx2 and not k.has_vnni
    return k


def random_weight(qtype: Q, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    for offset in _HALF_FIELDS[qtype]:
        halves = (rng.standard_normal(raw.shape[:2]) * 0.02).astype(np.float16)
        raw[:, :, offset : offset + 2] = halves.view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(rows, -1)


def activations(m: int, k: int, seed: int) -> torch.Tensor:
    """Normal values plus Gemma-like outliers (a few channels ~100x the RMS) and one all-zero block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, torch.randint(0, k, (3,), generator=g)] *= 100.0
    x[0, :32] = 0.0
    return x


def assert_matches_ggml(y: np.ndarray, y_ref: np.ndarray, bitwise: bool = False) -> None:
    if bitwise:
        mismatched = int((y != y_ref).sum())
        assert mismatched == 0, f"{mismatched} of {y.size} results differ from ggml's in some bit"
        return
    err = np.abs(y - y_ref).max()
    assert err <= RTOL * np.abs(y_ref).max(), (
        f"max diff {err:.3g} = {err / np.abs(y_ref).max():.2e} of max|y|"
    )


def cases() -> list[tuple[Q, tuple[int, int], int]]:
    out = []
    for qtype in NATIVE:
        for shape in SHAPES_K if qtype in K_QUANTS else SHAPES_32:
            out += [(qtype, shape, m) for m in BATCHES]
        out.append((qtype, (SHAPES_K if qtype in K_QUANTS else SHAPES_32)[0], 512))
    return out


@pytest.mark.parametrize(("qtype", "shape", "m"), cases(), ids=lambda v: getattr(v, "name", str(v)))
def test_matmul_matches_ggml(kernels: NativeKernels, ref: GGMLReference, qtype: Q, shape, m: int) -> None:
    """Against the route llama.cpp takes on this CPU (repacked Q4_Kx8 for Q4_K, else the plain one)."""
    raw = random_weight(qtype, *shape, seed=int(qtype) + shape[0])
    x = activations(m, shape[1], seed=m)
    y = kernels.matmul(qtype, torch.from_numpy(raw), x).numpy()
    assert_matches_ggml(y, ref.mul_mat(int(qtype), raw, x.numpy()), bitwise=True)


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
@pytest.mark.parametrize("build", ["portable", "avx2"])
def test_other_builds_match_ggml(
    qtype: Q, build: str, ref: GGMLReference, request: pytest.FixtureRequest
) -> None:
    """The plain C code gives ggml's numbers up to float order, the AVX2-only code bit for bit (ggml's AVX2
    kernels add up as its AVX-512 ones do); 1..9 rows cover partial tiles, 68 rows the unrepacked route."""
    k: NativeKernels = request.getfixturevalue(f"{build}_kernels")
    for shape in ((72, 512), (68, 512)):
        raw = random_weight(qtype, *shape, seed=int(qtype))
        for m in (1, 2, 5, 9):
            x = activations(m, shape[1], seed=10 + m)
            assert_matches_ggml(
                k.matmul(qtype, torch.from_numpy(raw), x).numpy(),
                ref.mul_mat(int(qtype), raw, x.numpy()),
                bitwise=build == "avx2",
            )
        assert np.array_equal(
            k.quantize_activations(qtype, x).numpy(), ref.quantize_row(VEC_DOT_TYPE[qtype], x.numpy())
        )


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_activation_bytes_equal_ggml(kernels: NativeKernels, ref: GGMLReference, qtype: Q) -> None:
    """quantize_activations gives ggml's quantize_row_q8_0 / q8_1 / q8_K bytes, outliers, zero blocks and
    values far below and above 1 included."""
    x = activations(4, 1024, seed=3) * torch.logspace(-4, 4, 1024)
    got = kernels.quantize_activations(qtype, x).numpy()
    np.testing.assert_array_equal(got, ref.quantize_row(VEC_DOT_TYPE[qtype], x.numpy()))


def test_repacked_route_quantizes_like_q8_k(kernels: NativeKernels, ref: GGMLReference) -> None:
    """llama.cpp's repacked Q4_K kernels take Q8_Kx4 activations (ggml_quantize_mat_q8_K_4x8): the same d
    and qs as Q8_K, so ladle's one Q8_K quantization serves both routes."""
    assert ref.llama_route(int(Q.Q4_K), 640) == "repack"
    x = activations(4, 1024, seed=4)
    d4, qs4 = ref.quantize_q8_k_4x8(x.numpy())
    blocks = kernels.quantize_activations(Q.Q4_K, x).numpy().reshape(4, -1, 292)
    np.testing.assert_array_equal(blocks[:, :, :4].copy().view(np.float32)[..., 0], d4)
    np.testing.assert_array_equal(blocks[:, :, 4:260].copy().view(np.int8).reshape(4, -1), qs4)


@pytest.mark.parametrize("qtype", [Q.Q5_0, Q.Q4_K], ids=lambda q: q.name)
def test_tolerance_catches_one_rounding_step(kernels: NativeKernels, ref: GGMLReference, qtype: Q) -> None:
    """Moving a single quantized activation by one step (what a different rounding rule does to a value
    near a tie) breaks the RTOL bound: the bound is tight enough to pin down ggml's rounding."""
    shape = (640, 1024)
    raw = random_weight(qtype, *shape, seed=7)
    x = activations(1, shape[1], seed=7)
    x[0, :32] = torch.randn(32)  # no zero block here: step the first value of block 0
    q = kernels.quantize_input(qtype, x)
    offset = 4 if qtype in K_QUANTS else 8  # first qs byte of the first block (q8k_block / a32_block)
    q.data[0, offset] += 1 if q.data[0, offset] < 127 else -1
    y = kernels.matmul(qtype, torch.from_numpy(raw), None, quantized=q).numpy()
    y_ref = ref.mul_mat(int(qtype), raw, x.numpy())
    assert np.abs(y - y_ref).max() > RTOL * np.abs(y_ref).max()


def test_shared_quantized_input(kernels: NativeKernels) -> None:
    """One quantize_input serves every weight of the same activation format (Gemma's q/k/v are Q5_0 and
    Q8_0), with results identical to separate calls; another format is refused."""
    x = activations(3, 640, seed=5)
    weights = {
        qt: torch.from_numpy(random_weight(qt, 64, 640, seed=int(qt))) for qt in (Q.Q5_0, Q.Q8_0, Q.Q4_1)
    }
    shared = kernels.quantize_input(Q.Q5_0, x)
    for qt, w in weights.items():
        assert torch.equal(kernels.matmul(qt, w, None, quantized=shared), kernels.matmul(qt, w, x))
    k_weight = torch.from_numpy(random_weight(Q.Q6_K, 8, 768, seed=1))
    with pytest.raises(ValueError, match="quantized for format"):
        kernels.matmul(
            Q.Q6_K, k_weight, None, quantized=kernels.quantize_input(Q.Q8_0, activations(1, 768, 1))
        )


def test_auto_is_ggml_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    for qtype in NATIVE:
        assert choose_method(qtype, 1) == "ggml"
    monkeypatch.setenv("LADLE_QUANT_MATMUL", "float")
    assert choose_method(Q.Q4_K, 1) == "float"


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_float_matmul_matches_dequantized(kernels: NativeKernels, qtype: Q) -> None:
    """The float method is dequantize(W) @ x up to float32 summation order; 9 rows cover a partial tile."""
    rows, cols = 40, 512
    raw = random_weight(qtype, rows, cols, seed=10 + int(qtype))
    w = quants.dequantize(raw, qtype).astype(np.float64)
    x = torch.randn(9, cols, generator=torch.Generator().manual_seed(1))
    y = kernels.matmul(qtype, torch.from_numpy(raw), x, method="float").numpy()
    exact = x.double().numpy() @ w.T
    assert np.abs(y - exact).max() <= 1e-5 * np.abs(exact).max()


def test_ggml_weight_interface(kernels: NativeKernels) -> None:
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
    assert (y - ref).abs().max() <= 2e-2 * ref.abs().max()  # 8-bit activations, as llama.cpp
    assert torch.equal(weight.linear(x, quantized=weight.quantize_input(x)), y)
    assert torch.equal(weight.rows(torch.tensor([5, 1])).dequantize(), dense[[5, 1]])
    stacked = GGMLWeight.stack([weight, weight.rows(torch.arange(8))])
    assert stacked is not None and stacked.shape == (48, cols)
    assert torch.equal(stacked.linear(x), torch.cat([y, weight.linear(x)[..., :8]], dim=-1))
    other = GGMLWeight(torch.from_numpy(random_weight(Q.Q8_0, 4, cols, seed=5)), Q.Q8_0, (4, cols))
    assert GGMLWeight.stack([weight, other]) is None
    assert weight.act_format != other.act_format
    with pytest.raises(ValueError, match="expected uint8 bytes"):
        GGMLWeight(torch.from_numpy(raw[:, :-1].copy()), qtype, (rows, cols))


def test_fallback_without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a compiler, linear() dequantizes in chunks and uses F.linear: exact float math."""
    import ladle.quant.weight as weight_module

    monkeypatch.setattr(weight_module, "native_kernels", lambda: None)
    monkeypatch.setattr(weight_module, "_FALLBACK_ROWS", 16)
    raw = random_weight(Q.Q6_K, 40, 256, seed=4)
    weight = GGMLWeight(torch.from_numpy(raw), Q.Q6_K, (40, 256))
    assert not weight.has_fast_matmul and weight.quantize_input(torch.randn(1, 256)) is None
    x = torch.randn(3, 256)
    dense = torch.from_numpy(quants.dequantize(raw, Q.Q6_K))
    torch.testing.assert_close(weight.linear(x), F.linear(x, dense), rtol=1e-5, atol=1e-5)


def test_real_gemma_matrices(kernels: NativeKernels, ref: GGMLReference) -> None:
    """Each quantized type of the Gemma file through GGMLWeight.linear against ggml, including a slice of
    the 262144 x 640 Q8_0 token embedding that is also the LM head."""
    gguf = read_gguf(gemma_path())
    names = [
        "blk.0.attn_q.weight",
        "blk.0.attn_v.weight",
        "blk.1.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_down.weight",
        "blk.2.ffn_down.weight",
        "token_embd.weight",
    ]
    seen = set()
    for name in names:
        info = gguf.tensors[name]
        seen.add(info.qtype)
        raw = gguf.tensor_bytes(name)[:8192]
        weight = GGMLWeight(raw, info.qtype, (raw.shape[0], info.shape[1]))
        for batch in (1, 4, 7, 32, 37):
            x = activations(batch, info.shape[1], seed=batch)
            y_ref = ref.mul_mat(int(info.qtype), raw.numpy(), x.numpy())
            assert_matches_ggml(weight.linear(x).numpy(), y_ref, bitwise=True)
    assert seen == {Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K}


@pytest.mark.parametrize(("qtype", "rows"), [(Q.Q4_K, 72), (Q.Q4_K, 68), (Q.Q6_K, 72), (Q.Q5_K, 68)])
def test_sequences_in_one_batch_add_up_as_alone(
    kernels: NativeKernels, ref: GGMLReference, qtype: Q, rows: int
) -> None:
    """K-quant sums are ordered by batch size in llama.cpp (vec_dot under 8 rows, tiled from 8, Q4_K's gemm
    on whole 4s): with the step's rows per sequence stated (sequence_rows), each sequence of a batch gets
    exactly what llama.cpp computes for it alone, whatever else is in the batch."""
    raw = random_weight(qtype, rows, 512, seed=int(qtype) + rows)
    w = torch.from_numpy(raw)
    groups = [5, 1, 9, 3, 1, 8]
    x = activations(sum(groups), 512, seed=2)
    with sequence_rows(groups):
        batched = kernels.matmul(qtype, w, x).numpy()
    start = 0
    for n in groups:
        alone = ref.mul_mat(int(qtype), raw, x[start : start + n].numpy())
        assert_matches_ggml(batched[start : start + n], alone, bitwise=True)
        start += n
    # Without a stated layout the rows are one sequence (one llama.cpp call of 27 rows), which sums
    # differently from the rows of 1, 3 and 5 above.
    assert_matches_ggml(kernels.matmul(qtype, w, x).numpy(), ref.mul_mat(int(qtype), raw, x.numpy()), True)
    assert not np.array_equal(kernels.matmul(qtype, w, x).numpy(), batched)


def test_row_layout_is_chosen_by_row_count() -> None:
    with sequence_rows([3, 1, 1], [1, 1]):
        assert row_groups(5) == (3, 1, 1) and row_groups(2) == (1, 1) and row_groups(4) is None
    assert row_groups(5) is None


@pytest.mark.parametrize("qtype", NATIVE, ids=lambda q: q.name)
def test_any_order_matmul_is_close_and_exact_where_it_keeps_the_order(
    kernels: NativeKernels, ref: GGMLReference, qtype: Q
) -> None:
    """exact=False (for LM heads) takes the fastest order from 8 rows: ggml's values to float rounding; below
    8 rows, and for the formats it leaves alone, still ggml's bits."""
    raw = random_weight(qtype, 72, 512, seed=int(qtype) + 1)
    for m in (3, 32):
        x = activations(m, 512, seed=m)
        y = kernels.matmul(qtype, torch.from_numpy(raw), x, exact=False).numpy()
        y_ref = ref.mul_mat(int(qtype), raw, x.numpy())
        assert_matches_ggml(y, y_ref, bitwise=m < 8 or qtype in (Q.Q4_0, Q.Q4_1, Q.Q5_1, *K_QUANTS))


@pytest.mark.parametrize("m", [5, 15, 16, 17, 40])
def test_amx_any_order_q8_0_is_ggml_to_rounding(kernels: NativeKernels, ref: GGMLReference, m: int) -> None:
    """On CPUs with AMX the any-order Q8_0 product (Gemma's LM head) runs on tiles of 16 weight rows x 16
    activation rows: ggml's integer totals, its float work in another order. 100 rows: a partial last tile;
    15, 17 and 40 rows: partial activation tiles."""
    if not kernels.has_amx:
        pytest.skip("this CPU (or kernel) has no AMX tiles: the VNNI kernels run instead")
    raw = random_weight(Q.Q8_0, 100, 640, seed=m)
    x = activations(m, 640, seed=m + 1)
    y = kernels.matmul(Q.Q8_0, torch.from_numpy(raw), x, exact=False).numpy()
    y_ref = ref.mul_mat(int(Q.Q8_0), raw, x.numpy())
    assert_matches_ggml(y, y_ref)
    assert not np.array_equal(y, kernels.matmul(Q.Q8_0, torch.from_numpy(raw), x).numpy()), (
        "the exact kernel's bits: the AMX route did not run"
    )
