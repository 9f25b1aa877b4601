"""The native row argmax the CPU sampler uses for greedy rows, against torch.argmax (its reference)."""

from __future__ import annotations

import pytest
import torch

from ladle.kernels.cpu_ops import cpu_ops


@pytest.fixture(scope="module")
def ops():
    ops = cpu_ops()
    if ops is None:
        pytest.skip("no native kernels (no C compiler)")
    return ops


@pytest.mark.parametrize("n", [1, 5, 16, 17, 100, 4096, 262144 + 7])
def test_argmax_matches_torch(ops, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(6, n, generator=gen)
    x[1] = torch.round(x[1])  # many ties: the first index must win
    x[2] = float("-inf")
    x[3, n // 2] = float("nan")
    x[4, n - 1] = float("nan")
    x[4, 0] = 100.0
    x[5] = 0.0
    x[5, n - 1] = -0.0  # equal to 0.0: index 0 wins
    assert torch.equal(ops.argmax_rows(x), x.argmax(dim=-1))


def test_argmax_two_nans_and_tail(ops) -> None:
    x = torch.zeros(3, 40)
    x[0, 35], x[0, 37] = float("nan"), float("nan")  # NaNs in the tail only
    x[1, 39] = 1.0  # the maximum in the tail
    x[2, 7], x[2, 3] = float("nan"), float("nan")
    assert torch.equal(ops.argmax_rows(x), x.argmax(dim=-1))
