"""Logprobs reported to users: the chosen token plus the top-k, with ranks, from the raw model distribution."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ladle.outputs import Logprob

# prompt_logprobs works through the prompt this many positions at a time: a whole prompt's [T, vocab] float32
# log_softmax would be gigabytes for a long prompt and a 262k vocabulary.
_PROMPT_CHUNK = 256


def token_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> tuple[list[dict[int, float]], list[dict[int, int]]]:
    """For each row of `logprobs` [n, vocab]: {token: logprob} and {token: rank} for token_ids[row] and the
    row's num_top most likely tokens. Rank is 1 + the number of tokens strictly more likely (ties share the
    best rank), the same rule for the chosen token and the top ones, so the two never disagree."""
    num_rows = logprobs.shape[0]
    token_ids = token_ids.view(num_rows, 1)
    chosen = logprobs.gather(1, token_ids)
    chosen_rank = (logprobs > chosen).sum(dim=-1) + 1
    max_top = max(num_top, default=0)
    if max_top > 0:
        top_values, top_ids = logprobs.topk(max_top, dim=-1)
        # Everything more likely than a top-k token is itself in the top k, so ranks can be counted there.
        top_ranks = (top_values.unsqueeze(1) > top_values.unsqueeze(2)).sum(dim=-1) + 1
        top = zip(top_ids.tolist(), top_values.tolist(), top_ranks.tolist(), strict=True)
    else:
        top = (([], [], []) for _ in range(num_rows))

    values: list[dict[int, float]] = []
    ranks: list[dict[int, int]] = []
    rows = zip(
        token_ids.view(-1).tolist(), chosen.view(-1).tolist(), chosen_rank.tolist(), top, num_top, strict=True
    )
    for token, value, rank, (ids, top_vals, top_rks), k in rows:
        row_values = {token: value}  # the chosen token first, as vLLM orders them
        row_ranks = {token: rank}
        for tid, val, rk in zip(ids[:k], top_vals[:k], top_rks[:k], strict=True):
            row_values.setdefault(tid, val)
            row_ranks.setdefault(tid, rk)
        values.append(row_values)
        ranks.append(row_ranks)
    return values, ranks


def prompt_logprobs(
    logits: torch.Tensor, prompt_token_ids: Sequence[int], num_top: int, start: int = 0
) -> list[dict[int, Logprob] | None]:
    """SamplingParams.prompt_logprobs for the prompt positions these logits predict.

    logits[j] is the model's output at prompt position start + j, so it scores prompt token start + j + 1.
    Returns None for position 0 (when start == 0: nothing predicts the first token), then one dict per scored
    prompt token: that token and the num_top most likely ones, from the raw log_softmax. A last row that
    predicts past the prompt is ignored, so chunks of one prompt (start = each chunk's first position)
    concatenate to one entry per prompt token.
    """
    result: list[dict[int, Logprob] | None] = [None] if start == 0 else []
    targets = list(prompt_token_ids[start + 1 : start + 1 + logits.shape[0]])
    for begin in range(0, len(targets), _PROMPT_CHUNK):
        chunk = targets[begin : begin + _PROMPT_CHUNK]
        logprobs = logits[begin : begin + len(chunk)].float().log_softmax(dim=-1)
        token_ids = torch.tensor(chunk, dtype=torch.long, device=logits.device)
        values, ranks = token_logprobs(logprobs, token_ids, [num_top] * len(chunk))
        for row_values, row_ranks in zip(values, ranks, strict=True):
            result.append({tok: Logprob(logprob=lp, rank=row_ranks[tok]) for tok, lp in row_values.items()})
    return result
