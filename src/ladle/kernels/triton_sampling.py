"""Random sampling on the GPU in one pass over the logits: the Gumbel-max race with in-kernel Philox noise.

The torch race (ladle.engine.sampling.draw) makes seven full passes over a [rows, vocab] float32 tensor
each step: temperature, softmax, uniform noise, log, negate, clamp, divide, argmax. At 256 rows of a 128k
vocabulary that is ~0.5 ms of a ~10 ms decode step on an H200. Here each program reads one block of a row
once, divides by the row's temperature, adds Gumbel noise -log(-log(u)) (argmax_i logit_i/T + G_i is
distributed as softmax(logit/T), the same race in log form) and keeps its block's best; a torch argmax
over the [rows, blocks] partials picks the winner. The noise of token t in row r is Philox(seed + r, t),
so a draw does not depend on the block size or on the other rows; the seed is drawn on the device from
torch's CUDA generator (no host sync; torch.cuda.manual_seed makes runs repeatable).

Greedy rows take the same blocks without noise (argmax_rows): torch's argmax over one 128k row is one
~28 us reduction on the H200, a tenth of a percent of the batch-1 step, where 63 programs each take a block.
Importing this module needs Triton; draw.py calls it only for CUDA tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ladle.kernels.pdl import pdl_enter, pdl_kernel_args

# 2048 float32 logits (8 KB) a program: a 128k vocabulary is 63 programs a row, which keeps the H200's
# 132 SMs busy from 4 rows up; a single row (0.5 MB) takes a few microseconds either way.
_BLOCK = 2048
_NUM_WARPS = 8


@triton.jit
def _block_max_kernel(
    logits_ptr,
    temperature_ptr,
    seed_ptr,
    best_score_ptr,
    best_token_ptr,
    stride_row,
    vocab,
    num_blocks,
    BLOCK: tl.constexpr,
    HAS_TEMPERATURE: tl.constexpr,
    GUMBEL: tl.constexpr,  # add Gumbel noise (a random draw); without it, each block's argmax (greedy)
    USE_PDL: tl.constexpr,
):
    pdl_enter(USE_PDL)
    row = tl.program_id(0)
    block = tl.program_id(1)
    tokens = block * BLOCK + tl.arange(0, BLOCK)
    in_vocab = tokens < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + tokens, mask=in_vocab, other=float("-inf"))
    x = x.to(tl.float32)
    if HAS_TEMPERATURE:
        x = x / tl.load(temperature_ptr + row)  # a division, as torch's logits / temperature
    if GUMBEL:
        u = tl.rand(tl.load(seed_ptr) + row, tokens)  # [0, 1)
        # -log(u) is Exp(1); floor it at the smallest normal float as the torch race does, so that u near 1
        # gives a large but finite score. u = 0 gives -log(inf) = -inf: that token loses, its noise's limit.
        exponential = tl.maximum(-tl.log(u), 1.1754943508222875e-38)
        score = tl.where(in_vocab, x - tl.log(exponential), float("-inf"))
    else:
        # torch's argmax takes a NaN over any number; as +inf here it does too, unless a real +inf comes first.
        score = tl.where(x != x, float("inf"), x)
    best = tl.max(score, 0)
    # The lowest token among equal scores, as torch's argmax; a block of masked tokens (-inf) gives its first.
    first = tl.min(tl.where(score == best, tokens, vocab), 0)
    tl.store(best_score_ptr + row * num_blocks + block, best)
    tl.store(best_token_ptr + row * num_blocks + block, tl.minimum(first, vocab - 1))


def _check_logits(logits: torch.Tensor, caller: str) -> None:
    if logits.dim() != 2 or logits.stride(-1) != 1:
        shape = tuple(logits.shape)
        raise ValueError(f"{caller} wants [rows, vocab] logits, last dim contiguous; got {shape}")


def _race(
    logits: torch.Tensor, temperature: torch.Tensor | None, gumbel: bool, block_size: int
) -> torch.Tensor:
    """Each row's winner: the per-block best of one kernel, then the best block (the first among equals)."""
    num_rows, vocab = logits.shape
    block = min(block_size, triton.next_power_of_2(vocab))
    num_blocks = triton.cdiv(vocab, block)
    device = logits.device
    best_score = torch.empty((num_rows, num_blocks), device=device, dtype=torch.float32)
    best_token = torch.empty((num_rows, num_blocks), device=device, dtype=torch.int32)
    if gumbel:
        # One seed a step from torch's generator for the device; Philox keys are seed + row.
        seed = torch.randint(0, 2**31 - 1 - num_rows, (1,), device=device, dtype=torch.int64)
    else:
        seed = best_token  # not read without noise
    if num_rows:
        _block_max_kernel[(num_rows, num_blocks)](
            logits,
            temperature if temperature is not None else best_score,
            seed,
            best_score,
            best_token,
            logits.stride(0),
            vocab,
            num_blocks,
            BLOCK=block,
            HAS_TEMPERATURE=temperature is not None,
            GUMBEL=gumbel,
            **pdl_kernel_args(device),
            num_warps=_NUM_WARPS,
        )
    winner = best_score.argmax(dim=1, keepdim=True)
    return best_token.gather(1, winner).squeeze(1).long()


def gumbel_max_sample(
    logits: torch.Tensor, temperature: torch.Tensor | None = None, block_size: int = _BLOCK
) -> torch.Tensor:
    """One token per row of logits [rows, vocab] (float32/bf16/fp16, last dim contiguous), distributed as
    softmax(logits / temperature) per row; temperature [rows] float32 or None (logits already divided).
    Returns int64 [rows] on the logits' device, not waited for. Rows whose logits are all -inf get token 0.
    block_size: logits a program reads (a power of two; a smaller vocabulary takes one block its size)."""
    _check_logits(logits, "gumbel_max_sample")
    return _race(logits, temperature, True, block_size)


def argmax_rows(logits: torch.Tensor, block_size: int = _BLOCK) -> torch.Tensor:
    """logits.argmax(dim=-1) for [rows, vocab] logits (float32/bf16/fp16, last dim contiguous): int64 [rows],
    the lowest index among equal maxima, as torch's. Not waited for."""
    _check_logits(logits, "argmax_rows")
    return _race(logits, None, False, block_size)
