"""The one-pass Gumbel-max race (ladle.kernels.triton_sampling) against softmax(logits / T) by chi-square.

Runs on CUDA. Without a GPU the tests skip, unless TRITON_INTERPRET=1 is set and Triton is installed: then
the kernel runs in Triton's CPU interpreter (fewer draws: its programs run one by one in Python).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_sampler import assert_frequencies_match
from triton_targets import DEVICE, ON_GPU, needs_kernels

pytestmark = needs_kernels
DRAWS = 40_000 if ON_GPU else 4_000
# The interpreter pays per element in Python: small blocks there, the engine's 2048 on the GPU.
BLOCK = 2048 if ON_GPU else 64


def _sample(logits: torch.Tensor, temperature: torch.Tensor | None = None) -> torch.Tensor:
    from ladle.kernels.triton_sampling import gumbel_max_sample

    temperature = None if temperature is None else temperature.to(DEVICE)
    return gumbel_max_sample(logits.to(DEVICE), temperature, block_size=BLOCK).cpu()


def _softmax(row: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(row.double() / temperature, dim=-1).numpy()


@pytest.mark.parametrize("temperature", [None, 0.7, 1.6])
def test_frequencies_follow_softmax_over_temperature(temperature) -> None:
    row = torch.tensor([1.0, 0.5, 0.0, -0.3, 1.4, -1.0, 0.2, 0.8])
    logits = row.expand(DRAWS, -1).contiguous()
    temps = None if temperature is None else torch.full((DRAWS,), temperature)
    tokens = _sample(logits, temps)
    assert tokens.dtype == torch.int64 and tokens.shape == (DRAWS,)
    assert_frequencies_match(tokens.tolist(), _softmax(row, temperature or 1.0))


def test_winners_in_every_block_of_a_large_vocabulary() -> None:
    # Two full blocks and a partial one; the likely tokens sit in each of them, at block edges and at the
    # very last token, the rest share a little mass.
    vocab = 2 * BLOCK + BLOCK // 2 + 3
    row = torch.full((vocab,), -4.0 if ON_GPU else -1.0)
    likely = [0, BLOCK - 1, BLOCK, BLOCK + BLOCK // 2, 2 * BLOCK - 1, 2 * BLOCK, vocab - 1]
    row[likely] = torch.tensor([1.0, 0.2, 0.7, -0.5, 1.3, 0.0, 0.9])
    tokens = _sample(row.expand(DRAWS, -1).contiguous())
    probs = _softmax(row)
    # Chi-square over the likely tokens and one bucket for all the others.
    bucket = np.array([likely.index(t) if t in likely else len(likely) for t in tokens.tolist()])
    expected = np.append(probs[likely], 1.0 - probs[likely].sum())
    assert_frequencies_match(bucket.tolist(), expected)


def test_masked_tokens_never_win_and_a_fully_masked_row_gives_token_0() -> None:
    vocab = 3 * BLOCK
    row = torch.full((vocab,), float("-inf"))
    row[[5, 2 * BLOCK + 1]] = torch.tensor([0.0, 0.0])
    logits = torch.stack([row] * 2_000 + [torch.full((vocab,), float("-inf"))])
    tokens = _sample(logits.to(torch.bfloat16))  # bf16 logits are read as such
    assert set(tokens[:-1].tolist()) == {5, 2 * BLOCK + 1}
    assert tokens[-1].item() == 0
    halves = (tokens[:-1] == 5).float().mean().item()
    assert 0.45 < halves < 0.55


def test_rows_draw_independent_noise_and_the_seed_repeats_runs() -> None:
    logits = torch.zeros(512, 1_000 if ON_GPU else 200)
    torch.manual_seed(11)
    if ON_GPU:
        torch.cuda.manual_seed(11)
    first = _sample(logits)
    torch.manual_seed(11)
    if ON_GPU:
        torch.cuda.manual_seed(11)
    again = _sample(logits)
    later = _sample(logits)
    assert torch.equal(first, again)
    assert not torch.equal(first, later)
    # Uniform over the vocabulary: 512 rows with the same logits must not share their noise.
    assert len(set(first.tolist())) > min(300, 0.6 * logits.shape[1])


def test_rejects_logits_that_are_not_rows_of_a_vocabulary() -> None:
    from ladle.kernels.triton_sampling import gumbel_max_sample

    with pytest.raises(ValueError, match="rows, vocab"):
        gumbel_max_sample(torch.zeros(4, 6, 8, device=DEVICE))
    with pytest.raises(ValueError, match="rows, vocab"):
        gumbel_max_sample(torch.zeros(8, 4, device=DEVICE).t())


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    from ladle.kernels.triton_sampling import argmax_rows

    return argmax_rows(logits.to(DEVICE), block_size=BLOCK).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "rows, vocab", [(1, 1), (3, 100), (5, 3 * BLOCK + 7)] + ([(2, 128256)] if ON_GPU else [])
)
def test_argmax_rows_matches_torch(dtype, rows, vocab) -> None:
    gen = torch.Generator().manual_seed(rows * vocab)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(dtype)  # bf16/fp16 rounding makes ties too
    got = _argmax(logits)
    assert got.dtype == torch.int64 and torch.equal(got, logits.argmax(dim=-1))


def test_argmax_rows_ties_infinities_and_nan_as_torch() -> None:
    vocab = 3 * BLOCK + 5
    logits = torch.randn(6, vocab)
    logits[0] = 1.0  # all tied: the first token
    logits[1, [BLOCK + 3, 2 * BLOCK + 1, 7]] = 50.0  # tied maxima in three blocks: the lowest index
    logits[2] = float("-inf")  # nothing allowed: token 0, as torch
    logits[3, vocab - 1] = float("inf")  # in the ragged last block
    logits[4, 2 * BLOCK + 2] = float("nan")  # torch's argmax takes the NaN
    logits[5, :BLOCK] = float("-inf")  # a first block with nothing allowed
    got = _argmax(logits)
    assert torch.equal(got, logits.argmax(dim=-1)), (got, logits.argmax(dim=-1))
    assert got.tolist()[:5] == [0, 7, 0, vocab - 1, 2 * BLOCK + 2]


def test_argmax_rows_reads_strided_rows_and_rejects_columns() -> None:
    from ladle.kernels.triton_sampling import argmax_rows

    wide = torch.randn(4, 2 * BLOCK + 9)
    rows = wide[:, 3 : BLOCK + 40]  # row stride wider than the row
    assert torch.equal(_argmax(rows), rows.argmax(dim=-1))
    with pytest.raises(ValueError, match="rows, vocab"):
        argmax_rows(torch.zeros(8, 4, device=DEVICE).t())
