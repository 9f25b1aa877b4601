"""The Triton GEMV (ladle.kernels.triton_gemv) against torch's F.linear in float64.

Runs on CUDA. Without a GPU the kernel tests skip, unless TRITON_INTERPRET=1 is set and Triton is installed:
then they run in Triton's CPU interpreter on tiny shapes (slow, but it checks the indexing: ragged N and K
tails, split-K partials and their combine). The argument checks and the config heuristic need only Triton.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from triton_targets import DEVICE, HAS_TRITON, ON_GPU, needs_kernels

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")

if HAS_TRITON:
    from ladle.kernels.split_sync import SPLIT_COUNTERS
    from ladle.kernels.triton_gemv import GemvConfig, default_config, gemv

# (N, K, config): N and K off the block sizes (ragged row block, ragged last K chunk), splits that own
# unequal numbers of chunks, a split that owns none, and N smaller than one row block.
INTERPRETER_CASES = [
    (40, 100, (16, 32, 1)),  # 3 full chunks + a 4-column tail; 2.5 row blocks
    (37, 200, (8, 64, 2)),  # 4 chunks (last ragged) over 2 splits
    (96, 192, (32, 64, 1)),  # everything a multiple: no masks anywhere
    (33, 150, (16, 16, 4)),  # 10 chunks over 4 splits: 3, 3, 3, 1 (the tail in the last)
    (20, 48, (8, 16, 4)),  # 3 chunks over 4 splits: the last split owns none
    (5, 70, (16, 32, 2)),  # N below one row block
]
GPU_CASES = INTERPRETER_CASES + [
    (4096, 4096, (16, 512, 1)),
    (6144, 4096, (8, 256, 4)),
    (1152, 6912, (8, 512, 8)),
    (4096, 14336, (16, 1024, 2)),
    (1000, 1000, (64, 128, 8)),
]
CASES = GPU_CASES if ON_GPU else INTERPRETER_CASES


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _cfg(spec: tuple[int, int, int]) -> GemvConfig:
    return GemvConfig(block_n=spec[0], block_k=spec[1], split_k=spec[2], num_warps=4, num_stages=2)


def _inputs(m, n, k, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if with_bias else None
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE) if b is not None else None


def _assert_matches_linear(out, x, w, b):
    """out against float64 F.linear, the error bounded relative to sum |x| |w| (what float32 accumulation
    can lose, whatever the cancellation) plus one rounding of the result to out's dtype. One bf16/fp16 ulp
    rather than half: the interpreter rounds float32 -> bfloat16 by truncation."""
    assert out.shape == (x.shape[0], w.shape[0]) and out.dtype == x.dtype
    x64, w64 = x.double().cpu(), w.double().cpu()
    ref = F.linear(x64, w64, b.double().cpu() if b is not None else None)
    scale = F.linear(x64.abs(), w64.abs(), b.double().cpu().abs() if b is not None else None)
    ulp = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[x.dtype]
    err = (out.double().cpu() - ref).abs()
    bound = 1e-6 * scale + ulp * ref.abs() + 1e-30
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"max abs err {err.max().item():.3g}: {worst:.2f}x the bound"


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-bn{c[2][0]}bk{c[2][1]}s{c[2][2]}")
def test_matches_linear(case, m, dtype):
    n, k, spec = case
    x, w, b = _inputs(m, n, k, dtype, with_bias=(m % 2 == 1), seed=n * 7 + k + m)
    _assert_matches_linear(gemv(x, w, b, config=_cfg(spec)), x, w, b)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(40, 100), (96, 200)] + ([(6144, 4096), (1152, 1024)] if ON_GPU else []))
def test_default_config(shape, with_bias, dtype):
    n, k = shape
    for m in (1, 4):
        x, w, b = _inputs(m, n, k, dtype, with_bias, seed=m)
        _assert_matches_linear(gemv(x, w, b), x, w, b)


@needs_kernels
def test_strided_inputs():
    """x with a row stride (a slice of a wider activation) and weight rows of a wider matrix (a fused
    projection's slice): both read through their strides."""
    x_wide, w_wide, _ = _inputs(3, 50, 160, torch.float32, False, seed=9)
    x, w = x_wide[:, :96], w_wide[:, 16:112]
    _assert_matches_linear(gemv(x, w, config=_cfg((16, 32, 2))), x, w, None)
    _assert_matches_linear(gemv(x.t().contiguous().t(), w, config=_cfg((16, 32, 1))), x, w, None)


@needs_kernels
def test_split_is_deterministic_and_rearms_its_counters():
    """The last split sums the partials in split order: identical bits run after run, and each launch
    leaves its arrival counters at 0 (a CUDA graph replays it against the same ones)."""
    x, w, b = _inputs(4, 72, 190, torch.float32, True, seed=3)
    cfg = _cfg((8, 16, 8))
    first = gemv(x, w, b, config=cfg)
    for _ in range(2):
        assert torch.equal(gemv(x, w, b, config=cfg), first)
    assert not SPLIT_COUNTERS.get(torch.device(DEVICE), 0, "test").any(), "a split launch left counters armed"
    _assert_matches_linear(first, x, w, b)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs: GPU only")
def test_split_under_cuda_graph_replay():
    x, w, b = _inputs(2, 4096, 4096, torch.bfloat16, True, seed=4)
    cfg = _cfg((8, 256, 4))
    gemv(x, w, b, config=cfg)  # compiles, and sizes the counters outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv(x, w, b, config=cfg)
    for seed in (5, 6):
        x.copy_(_inputs(2, 4096, 4096, torch.bfloat16, False, seed=seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        _assert_matches_linear(out, x, w, b)


@needs_triton
@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(2, 8), torch.zeros(4, 9)), "K=8 but weight"),
        ((torch.zeros(5, 8), torch.zeros(4, 8)), "1..4 rows"),
        ((torch.zeros(8), torch.zeros(4, 8)), "x must be \\[M, K\\]"),
        ((torch.zeros(1, 8, dtype=torch.float64), torch.zeros(4, 8, dtype=torch.float64)), "dtype must be"),
        ((torch.zeros(1, 8), torch.zeros(4, 8, dtype=torch.bfloat16)), "differs from x dtype"),
        ((torch.zeros(1, 8), torch.zeros(8, 4).t()), "row-major"),
        ((torch.zeros(1, 8), torch.zeros(4, 8), torch.zeros(5)), "bias must be \\[N\\]"),
        ((torch.zeros(1, 8), torch.zeros(4, 8), torch.zeros(4, dtype=torch.float16)), "bias must be"),
    ],
)
def test_argument_errors(args, message):
    with pytest.raises(ValueError, match=message):
        gemv(*args)


@needs_triton
def test_config_errors():
    with pytest.raises(ValueError, match="block_n"):
        GemvConfig(block_n=6, block_k=64)
    with pytest.raises(ValueError, match="block_k"):
        GemvConfig(block_n=8, block_k=8)
    with pytest.raises(ValueError, match="split_k"):
        GemvConfig(block_n=8, block_k=64, split_k=0)


@needs_triton
@pytest.mark.parametrize(
    "n, k",
    [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (1152, 1024), (1152, 6912), (128256, 4096)],
)
def test_default_config_keeps_every_sm_busy(n, k):
    """On a 132-SM H200: at least 2 programs per SM, splits only where rows alone can't give that, and
    each split still streams at least 4 chunks."""
    for m in (1, 4):
        cfg = default_config(n, k, m, 132)
        programs = _cdiv(n, cfg.block_n) * cfg.split_k
        assert programs >= 2 * 132 or cfg.split_k == 8, cfg
        if cfg.split_k > 1:
            assert _cdiv(_cdiv(k, cfg.block_k), cfg.split_k) >= 4, cfg
        if _cdiv(n, cfg.block_n) >= 2 * 132:
            assert cfg.split_k == 1, cfg
