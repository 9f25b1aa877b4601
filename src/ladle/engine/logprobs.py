"""Prompt logprobs: how likely the model found each prompt token, computed chunk by chunk as prefill runs."""

from __future__ import annotations

import torch


def prompt_logprobs_for_chunk(
    logits: torch.Tensor, prompt_token_ids: list[int], start: int, num_top: int
) -> list[dict[int, tuple[float, int]]]:
    """`logits` row r was computed at position start + r and predicts the token at start + r + 1. Returns,
    for each such prompt token, {token: (logprob, rank)} for it and the `num_top` most likely tokens."""
    num_targets = min(logits.shape[0], len(prompt_token_ids) - 1 - start)
    if num_targets <= 0:
        return []
    logprobs = torch.log_softmax(logits[:num_targets].float(), dim=-1)
    targets = torch.tensor(prompt_token_ids[start + 1 : start + 1 + num_targets], device=logprobs.device)
    target_lp = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)
    # Rank 1 is the most likely token; ties count in the token's favour.
    target_rank = (logprobs > target_lp.unsqueeze(1)).sum(dim=1) + 1
    top_lp, top_ids = logprobs.topk(num_top, dim=-1) if num_top > 0 else (None, None)
    entries = []
    for r in range(num_targets):
        entry = {int(targets[r]): (float(target_lp[r]), int(target_rank[r]))}
        if top_ids is not None:
            for k in range(num_top):
                tid = int(top_ids[r, k])
                entry.setdefault(tid, (float(top_lp[r, k]), k + 1))
        entries.append(entry)
    return entries
