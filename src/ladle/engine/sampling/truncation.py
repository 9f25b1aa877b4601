"""Shaping the distribution of rows that sample: temperature, top-k, top-p and min-p.

Truncation masks tokens to -inf by comparing each logit with a per-row threshold value. Thresholds (rather
than scattering a mask back through sort indices) keep tokens tied with the last one kept, so a row's result
never depends on how the sort broke ties, and cost one comparison pass instead of a scatter.
"""

from __future__ import annotations

import torch

from ladle.engine.sampling.types import device_tensor

_NEG_INF = float("-inf")
# Top-k/top-p read only the head of each row's sorted logits, so they start from torch.topk of this many (or
# of the largest top_k, when larger) instead of sorting the whole vocabulary, which costs 10-40x more (a
# 262k-token row on one CPU core: sort ~24 ms, topk(256) ~0.6 ms, topk(4096) ~3 ms). A top-p nucleus usually
# fits well inside 256 tokens; rows whose nucleus doesn't retry with a head this many times wider, up to the
# whole (sorted) vocabulary, so the result is always exact.
_HEAD = 256
_HEAD_GROWTH = 16
# A top_k above this is rare; such a row waits for a head wide enough rather than widen the first one.
_MAX_HEAD = 1024


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Returns a new tensor, so callers may edit the result in place without touching `logits`."""
    return logits / temperature.unsqueeze(1)


def apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Keep each row's top_k tokens (0 = all), then the smallest set of those whose probability reaches top_p
    (1.0 = all; the most likely token is always kept). Edits `logits` in place and returns it."""
    num_rows, vocab_size = logits.shape
    k = [kk if 0 < kk < vocab_size else vocab_size for kk in top_k]
    # One past the largest top_k: the value after the k-th tells whether any token beyond the head ties it.
    head = max((kk + 1 for kk in k if kk <= _MAX_HEAD and kk < vocab_size), default=1)
    if any(p < 1.0 and kk == vocab_size for p, kk in zip(top_p, k, strict=True)):
        head = max(head, _HEAD)  # room for the nucleus of rows with top_p and no top_k
    threshold = torch.full((num_rows, 1), _NEG_INF, dtype=logits.dtype, device=logits.device)
    pending = list(range(num_rows))
    while pending:
        head = min(head, vocab_size)
        # A head answers rows whose k-th value it holds, and top-p-only rows whose nucleus ends inside it.
        ready = [i for i in pending if k[i] <= head or k[i] == vocab_size]
        pending = [i for i in pending if not (k[i] <= head or k[i] == vocab_size)]
        if ready:
            rows_threshold, unresolved = _thresholds(_rows(logits, ready), head, k, top_p, ready)
            _set_rows(threshold, ready, rows_threshold)
            if head < vocab_size and any(top_p[i] < 1.0 and k[i] == vocab_size for i in ready):
                pending += [ready[j] for j in unresolved.view(-1).nonzero().view(-1).tolist()]
        head *= _HEAD_GROWTH
    return logits.masked_fill_(logits < threshold, _NEG_INF)


def _thresholds(
    x: torch.Tensor, head: int, k: list[int], top_p: list[float], rows: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cut-off value (keep logits >= it) for rows `rows` of the batch, whose logits are x, reading
    the `head` largest of each. Also says which rows' top-p nucleus ran past the head (then the cut-off is
    not exact). Thresholds by value keep tokens tied with the last kept one: no dependence on sort order."""
    device = x.device
    largest = _head_values(x, head) if head < x.shape[1] else x.sort(dim=-1, descending=True).values
    row_k = device_tensor([k[i] for i in rows], None, device).unsqueeze(1)
    kth = largest.gather(1, row_k.clamp(max=head) - 1)
    threshold = torch.where(row_k > head, _NEG_INF, kth)  # top_k off (k = vocab) beyond the head
    unresolved = torch.zeros_like(threshold, dtype=torch.bool)
    row_p = [top_p[i] for i in rows]
    if all(p >= 1.0 for p in row_p):
        return threshold, unresolved
    p = device_tensor(row_p, x.dtype, device).unsqueeze(1)
    # Probabilities of the head under the top-k-truncated distribution. Its normaliser sums every token the
    # top-k keeps: the head's, unless a token past the head ties the k-th (or top-k is off), when it takes
    # a pass over the whole row. Asking which costs a read-back, so only on the CPU, where that pass is the
    # expensive part (~0.8 ms a 262k row).
    head_suffices = (
        x.device.type == "cpu"
        and head < x.shape[1]
        and all(k[i] <= head for i in rows)
        and bool((largest[:, -1:] < threshold).all())
    )
    kept = largest if head_suffices else x
    log_total = kept.masked_fill(kept < threshold, _NEG_INF).logsumexp(dim=-1, keepdim=True)
    cumulative = (largest.masked_fill(largest < threshold, _NEG_INF) - log_total).exp().cumsum(dim=-1)
    # Sorted token j is kept while the tokens before it hold less than top_p; token 0 always is.
    num_kept = 1 + (cumulative[:, :-1] < p).sum(dim=-1, keepdim=True)
    top_p_threshold = largest.gather(1, num_kept - 1)
    top_p_threshold.masked_fill_(p >= 1.0, _NEG_INF)  # off; a cumulative sum rounding to 1 early would cut
    unresolved = (cumulative[:, -1:] < p) & (row_k > head)
    return torch.maximum(threshold, top_p_threshold), unresolved


def _head_values(x: torch.Tensor, head: int) -> torch.Tensor:
    """x.topk(head).values. On the CPU, for a long row, from the few values that can be in it: torch's topk
    of 40 over a 262k row takes ~1.1 ms on two cores, while each of `head` chunks' maxima is a value at least
    as large as the row's head-th at most, so only values >= the head-th largest chunk maximum qualify (a
    pass of compares, then a topk over typically a few hundred)."""
    num_rows, vocab = x.shape
    if x.device.type != "cpu" or vocab < 64 * head:
        return x.topk(head, dim=-1).values
    num_chunks = 4 * head
    chunk = -(-vocab // num_chunks)
    padded = torch.nn.functional.pad(x, (0, chunk * num_chunks - vocab), value=_NEG_INF)
    bound = padded.view(num_rows, num_chunks, chunk).amax(dim=-1).topk(head, dim=-1).values[:, -1:]
    candidates = x >= bound
    return torch.stack([x[r][candidates[r]].topk(head).values for r in range(num_rows)])


def _rows(x: torch.Tensor, rows: list[int]) -> torch.Tensor:
    return x if len(rows) == x.shape[0] else x[device_tensor(rows, None, x.device)]


def _set_rows(x: torch.Tensor, rows: list[int], values: torch.Tensor) -> None:
    if len(rows) == x.shape[0]:
        x.copy_(values)
    else:
        x[device_tensor(rows, None, x.device)] = values


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens less likely than min_p times the most likely one. Edits `logits` in place and returns it.

    p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p): the softmax normaliser cancels, so this needs
    no softmax, and it gives the same set whether or not top-k/top-p ran first (they keep the max token).
    """
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.log().unsqueeze(1)  # log(0) = -inf: keep all
    return logits.masked_fill_(logits < threshold, _NEG_INF)
