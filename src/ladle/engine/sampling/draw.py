"""Drawing one token per row from processed logits, reproducibly for rows with their own generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ladle.engine.sampling.truncation import apply_temperature
from ladle.kernels.availability import fused_ops_enabled


def fused_draw_applies(logits: torch.Tensor, generators: Sequence[torch.Generator | None]) -> bool:
    """Whether draw_tokens takes the one-pass Triton race (CUDA, Triton, no row with its own generator:
    a seeded row's noise must come from its generator alone, so a batch with one keeps the torch race)."""
    return fused_ops_enabled(logits) and all(g is None for g in generators)


def draw_tokens(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    truncated: bool = False,
    temperature: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row, distributed as softmax(logits[row]).

    Uses the exponential race: with q_i ~ Exp(1) independent, argmax_i p_i / q_i is distributed as p (the
    Gumbel-max trick in another form). It needs no cumulative sum and no sync, and each row's noise is a
    vector of its own: a row with a generator fills its noise from that generator alone, always with exactly
    vocab draws, so its tokens depend only on its seed and its logits, not on the batch around it. Rows
    without one share a single batch-wide draw from torch's default generator. truncated: top-k/top-p/min-p
    may have masked most tokens (then, on the CPU and with no seeded row, the race runs over the rest only).
    temperature: [rows] float32 when the logits are not divided by it yet (the fused race divides as it
    reads; see fused_draw_applies), else None.
    """
    if fused_draw_applies(logits, generators):
        from ladle.kernels.triton_sampling import gumbel_max_sample  # Triton loads only on GPU machines

        return gumbel_max_sample(logits, temperature)
    if temperature is not None:
        logits = apply_temperature(logits, temperature)
    if truncated and logits.device.type == "cpu" and all(g is None for g in generators):
        tokens = _race_among_kept(logits)
        if tokens is not None:
            return tokens
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs)
    if any(g is None for g in generators):
        noise.uniform_()
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].uniform_(generator=generator)
    # -log(U) is Exp(1); on CPU this is ~3x faster than Tensor.exponential_. U < 1, but clamp anyway: a q of
    # 0 would make 0/0 = NaN for a masked token, and argmax picks NaN over any real number.
    noise.log_().neg_().clamp_(min=torch.finfo(noise.dtype).tiny)
    return probs.div_(noise).argmax(dim=-1)


def _race_among_kept(logits: torch.Tensor) -> torch.Tensor | None:
    """The same race over only the tokens that truncation kept (finite logits), or None when most are kept.

    After top-k/top-p/min-p a row keeps a few of its (up to 262k) tokens, and on the CPU each full-row pass
    of the race (softmax, vocab uniforms, division, argmax) costs ~0.2-0.7 ms. In log form the race needs no
    softmax: argmax_i p_i / q_i = argmax_i logit_i - log q_i, the normaliser being one constant per row. CPU
    only: counting the kept tokens reads a number back, which on a GPU would be a sync.
    """
    kept = logits > float("-inf")
    if 2 * int(kept.sum()) > logits.numel():
        return None
    rows, tokens = kept.nonzero(as_tuple=True)
    values = logits[rows, tokens]
    race = torch.empty_like(values).uniform_().log_().neg_().clamp_(min=torch.finfo(values.dtype).tiny)
    score = values - race.log_()
    best = torch.full((logits.shape[0],), float("-inf"), dtype=score.dtype).scatter_reduce_(
        0, rows, score, "amax"
    )
    winner = score == best[rows]
    # A row whose tokens are all masked keeps token 0, as the full race's argmax over NaNs gives.
    return torch.zeros(logits.shape[0], dtype=torch.long).scatter_(0, rows[winner], tokens[winner])
