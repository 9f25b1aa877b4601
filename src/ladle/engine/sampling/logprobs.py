"""Logprobs reported to users: the chosen token plus the top-k, with ranks, from the raw model distribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from ladle.engine.sampling.types import to_pinned_host
from ladle.outputs import Logprob

# prompt_logprobs works through the prompt this many positions at a time: a whole prompt's [T, vocab] float32
# log_softmax would be gigabytes for a long prompt and a 262k vocabulary.
_PROMPT_CHUNK = 256


@dataclass
class TokenLogprobTensors:
    """token_logprobs' numbers before they become dicts, so that async scheduling can copy them to the host
    with the step's tokens and build the dicts when it reads them (tensors on one device; top_* are None when
    no row asks for top tokens)."""

    token_ids: torch.Tensor  # [n] the chosen tokens
    chosen: torch.Tensor  # [n] their logprobs
    chosen_rank: torch.Tensor  # [n]
    top_ids: torch.Tensor | None  # [n, max_top]
    top_values: torch.Tensor | None
    top_ranks: torch.Tensor | None

    def to_pinned_host(self) -> TokenLogprobTensors:
        """Copies into pinned host memory, queued after the work that makes them (read them after a sync)."""
        tensors = (getattr(self, f.name) for f in fields(self))
        return TokenLogprobTensors(*(None if t is None else to_pinned_host(t) for t in tensors))

    def as_dicts(self, num_top: Sequence[int]) -> tuple[list[dict[int, float]], list[dict[int, int]]]:
        """Per row: {token: logprob} and {token: rank} for the chosen token and the row's num_top best."""
        if self.top_ids is not None:
            top = zip(self.top_ids.tolist(), self.top_values.tolist(), self.top_ranks.tolist(), strict=True)
        else:
            top = (([], [], []) for _ in range(len(num_top)))
        values: list[dict[int, float]] = []
        ranks: list[dict[int, int]] = []
        rows = zip(
            self.token_ids.tolist(),
            self.chosen.tolist(),
            self.chosen_rank.tolist(),
            top,
            num_top,
            strict=True,
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


def token_logprob_tensors(
    logprobs: torch.Tensor, token_ids: torch.Tensor, max_top: int
) -> TokenLogprobTensors:
    """The chosen token's logprob and rank and the max_top best tokens of each row of `logprobs` [n, vocab].
    Rank is 1 + the number of tokens strictly more likely (ties share the best rank), the same rule for the
    chosen token and the top ones, so the two never disagree."""
    num_rows = logprobs.shape[0]
    token_ids = token_ids.view(num_rows, 1)
    chosen = logprobs.gather(1, token_ids)
    chosen_rank = (logprobs > chosen).sum(dim=-1) + 1
    top_values = top_ids = top_ranks = None
    if max_top > 0:
        top_values, top_ids = logprobs.topk(max_top, dim=-1)
        # Everything more likely than a top-k token is itself in the top k, so ranks can be counted there.
        top_ranks = (top_values.unsqueeze(1) > top_values.unsqueeze(2)).sum(dim=-1) + 1
    return TokenLogprobTensors(
        token_ids.view(-1), chosen.view(-1), chosen_rank, top_ids, top_values, top_ranks
    )


def token_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: Sequence[int]
) -> tuple[list[dict[int, float]], list[dict[int, int]]]:
    """For each row of `logprobs` [n, vocab]: {token: logprob} and {token: rank} for token_ids[row] and the
    row's num_top most likely tokens (see token_logprob_tensors)."""
    return token_logprob_tensors(logprobs, token_ids, max(num_top, default=0)).as_dicts(num_top)


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
