"""Shaping the distribution of rows that sample: temperature, top-k, top-p and min-p.

Truncation masks tokens to -inf by comparing each logit with a per-row threshold value. Thresholds (rather
than scattering a mask back through sort indices) keep tokens tied with the last one kept, so a row's result
never depends on how the sort broke ties, and cost one comparison pass instead of a scatter.
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")
# With no row needing top-p, torch.topk of the largest k is much cheaper than a full sort of the vocabulary,
# up to about this k (beyond it the two cost about the same and sort is simpler).
_TOPK_INSTEAD_OF_SORT_MAX_K = 1024


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Returns a new tensor, so callers may edit the result in place without touching `logits`."""
    return logits / temperature.unsqueeze(1)


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Keep each row's top_k tokens (0 = all), then the smallest set of those whose probability reaches top_p
    (1.0 = all; the most likely token is always kept). Edits `logits` in place and returns it."""
    num_rows, vocab_size = logits.shape
    threshold = torch.full((num_rows, 1), _NEG_INF, dtype=logits.dtype, device=logits.device)
    k = None
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, vocab_size).clamp_(max=vocab_size).unsqueeze(1)

    if top_p is None:
        if k is None:
            return logits
        max_k = int(k.max())
        if max_k <= _TOPK_INSTEAD_OF_SORT_MAX_K:
            largest = logits.topk(max_k, dim=-1).values
            kth = largest.gather(1, k.clamp(max=max_k) - 1)
            # Rows with top_k off (k = vocab) that did not fit in max_k keep everything.
            threshold = torch.where(k > max_k, threshold, kth)
            return logits.masked_fill_(logits < threshold, _NEG_INF)

    sorted_logits = logits.sort(dim=-1, descending=True).values
    if k is not None:
        threshold = sorted_logits.gather(1, k - 1)
        if top_p is not None:
            sorted_logits = sorted_logits.masked_fill(sorted_logits < threshold, _NEG_INF)
    if top_p is not None:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Token j (in sorted order) is kept while the tokens before it hold less than top_p; token 0 always.
        num_kept = 1 + (cumulative[:, :-1] < top_p.unsqueeze(1)).sum(dim=-1, keepdim=True)
        top_p_threshold = sorted_logits.gather(1, num_kept - 1)
        # top_p = 1 means off; its cumulative sum can round to 1 early and would cut the far tail.
        top_p_threshold.masked_fill_(top_p.unsqueeze(1) >= 1.0, _NEG_INF)
        threshold = torch.maximum(threshold, top_p_threshold)
    return logits.masked_fill_(logits < threshold, _NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely one. Edits `logits` in place and returns it.

    p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p): the softmax normaliser cancels, so this needs
    no softmax, and it gives the same set whether or not top-k/top-p ran first (they keep the max token).
    """
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.log().unsqueeze(1)  # log(0) = -inf: keep all
    return logits.masked_fill_(logits < threshold, _NEG_INF)
