"""Logit edits that can change even the greedy choice: logit_bias, min_tokens and the repetition penalties.

Each function takes the whole batch's float32 logits [num_rows, vocab], which the caller owns (they may be
edited in place), and returns the edited logits. Rows that ask for nothing are left alone; the work is done
with a few scatters over all rows at once rather than a Python loop over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ladle.engine.sampling.token_arrays import TokenArrays
from ladle.engine.sampling.types import SamplingRow, device_tensor, host_to_device
from ladle.sampling_params import SamplingParams


def has_penalties(params: SamplingParams) -> bool:
    if params.penalty_window == 0:  # Ollama's repeat_last_n=0: penalties off
        return False
    return (
        params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    )


def min_tokens_banned(row: SamplingRow) -> set[int]:
    """Tokens that would end the sequence, masked while it is shorter than min_tokens.

    EOS is masked even with ignore_eos (as vLLM does): ignore_eos only stops EOS from ending the sequence.
    """
    if not row.min_tokens_active:
        return set()
    return (
        set(row.eos_token_ids or ()) | set(row.params._eos_token_ids) | set(row.params.stop_token_ids or ())
    )


def penalty_window(row: SamplingRow) -> tuple[int, int]:
    """How many of the last prompt and output tokens the penalties look at: together, the last
    `penalty_window` tokens of prompt + output (all of them when it is None or -1). A token in flight
    (row.pending_index) is the output's last."""
    window = row.params.penalty_window
    num_prompt, num_output = len(row.prompt_token_ids), row.num_output_tokens
    if window is None or window < 0:
        return num_prompt, num_output
    return min(num_prompt, max(0, window - num_output)), min(num_output, window)


def apply_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    row_ids: list[int] = []
    token_ids: list[int] = []
    biases: list[float] = []
    for i, row in enumerate(rows):
        for token, bias in (row.params.logit_bias or {}).items():
            row_ids.append(i)
            token_ids.append(token)
            biases.append(bias)
    if row_ids:
        index = (_to(row_ids, logits.device), _to(token_ids, logits.device))
        # accumulate=True so that a bias adds to (rather than replaces) the logit, as OpenAI documents.
        logits.index_put_(index, device_tensor(biases, logits.dtype, logits.device), accumulate=True)
    return logits


def apply_min_tokens(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    vocab_size = logits.shape[1]
    row_ids: list[int] = []
    token_ids: list[int] = []
    for i, row in enumerate(rows):
        # Out-of-vocabulary ids (a generation_config listing an id past the logits) can't be sampled anyway.
        banned = [t for t in min_tokens_banned(row) if 0 <= t < vocab_size]
        row_ids.extend([i] * len(banned))
        token_ids.extend(banned)
    if row_ids:
        logits[_to(row_ids, logits.device), _to(token_ids, logits.device)] = float("-inf")
    return logits


def apply_penalties(
    logits: torch.Tensor,
    rows: Sequence[SamplingRow],
    token_arrays: TokenArrays | None = None,
    pending_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Repetition (prompt or output, HF/vLLM rule), then frequency and presence (output only, OpenAI rule).

    token_arrays: kept by the caller between steps, so that long contexts aren't converted every step.
    pending_tokens: the device tokens that rows with a pending_index still wait for (async scheduling):
    each counts as the row's last output token without being read back."""
    penalized = [i for i, row in enumerate(rows) if has_penalties(row.params)]
    if not penalized:
        return logits
    arrays = token_arrays or TokenArrays()
    device = logits.device
    vocab_size = logits.shape[1]
    subset = len(penalized) < len(rows)
    # Work on the penalized rows only: in a mixed batch the others would pay for [rows, vocab] temporaries.
    x = logits[_to(penalized, device)] if subset else logits
    sub_rows = [rows[i] for i in penalized]

    seen_tokens: list[np.ndarray] = []  # repetition: any occurrence in the window, prompt or output
    output_tokens: list[np.ndarray] = []  # frequency/presence: occurrences in the window's output part
    seen_pending: list[tuple[int, int]] = []  # (sub-row, index into pending_tokens) for the tokens in flight
    output_pending: list[tuple[int, int]] = []
    for j, row in enumerate(sub_rows):
        p = row.params
        prompt_window, output_window = penalty_window(row)
        host_window = output_window - row.num_pending_tokens  # the window's tokens the host has
        prompt = arrays.get(row.prompt_token_ids, mutable=False)[len(row.prompt_token_ids) - prompt_window :]
        output = arrays.get(row.output_token_ids)[len(row.output_token_ids) - host_window :]
        repetition = p.repetition_penalty != 1.0
        counted = p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        seen_tokens.append(np.concatenate((prompt, output)) if repetition else _EMPTY)
        output_tokens.append(output if counted else _EMPTY)
        if row.pending_index is not None and output_window > 0:
            if repetition:
                seen_pending.append((j, row.pending_index))
            if counted:
                output_pending.append((j, row.pending_index))

    if any(len(t) for t in seen_tokens) or seen_pending:
        seen = torch.zeros(len(sub_rows) * vocab_size, dtype=torch.bool, device=device)
        seen[_flat_indices(seen_tokens, vocab_size, device)] = True
        if seen_pending:
            seen[_pending_indices(seen_pending, pending_tokens, vocab_size)] = True
        seen = seen.view(len(sub_rows), vocab_size)
        penalty = _column([row.params.repetition_penalty for row in sub_rows], device)
        # Dividing a positive logit and multiplying a negative one both make the token less likely.
        factor = torch.where(x > 0, 1.0 / penalty, penalty).masked_fill_(~seen, 1.0)
        x.mul_(factor)

    if any(len(t) for t in output_tokens) or output_pending:
        counts = torch.zeros(len(sub_rows) * vocab_size, dtype=torch.float32, device=device)
        flat = _flat_indices(output_tokens, vocab_size, device)
        if output_pending:
            flat = torch.cat((flat, _pending_indices(output_pending, pending_tokens, vocab_size)))
        counts.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float32, device=device))
        counts = counts.view(len(sub_rows), vocab_size)
        frequency = _column([row.params.frequency_penalty for row in sub_rows], device)
        presence = _column([row.params.presence_penalty for row in sub_rows], device)
        x.sub_(counts * frequency + (counts > 0) * presence)

    if subset:
        logits[_to(penalized, device)] = x
    return logits


_EMPTY = np.zeros(0, dtype=np.int64)


def _flat_indices(token_arrays: Sequence[np.ndarray], vocab_size: int, device: torch.device) -> torch.Tensor:
    """Indices into a flattened [len(token_arrays), vocab] tensor: row * vocab + token, for every token."""
    lengths = np.fromiter((len(t) for t in token_arrays), dtype=np.int64, count=len(token_arrays))
    tokens = np.concatenate(token_arrays)
    flat = np.repeat(np.arange(len(token_arrays), dtype=np.int64) * vocab_size, lengths) + tokens
    return host_to_device(torch.from_numpy(flat), device)


def _pending_indices(
    pairs: list[tuple[int, int]], pending_tokens: torch.Tensor | None, vocab_size: int
) -> torch.Tensor:
    """Flat indices row * vocab + token of the tokens in flight, computed on the device (never read back)."""
    if pending_tokens is None:
        raise ValueError("rows with a pending_index need the pending_tokens they index")
    device = pending_tokens.device
    sub_rows = device_tensor([j for j, _ in pairs], torch.long, device)
    index = device_tensor([i for _, i in pairs], torch.long, device)
    return sub_rows * vocab_size + pending_tokens.index_select(0, index).long()


# Host lists reach the device through pinned memory: a pageable copy would wait for the GPU to drain, and
# with async scheduling the sampler runs while the step before is still on the GPU.
def _to(values: list[int], device: torch.device) -> torch.Tensor:
    return device_tensor(values, torch.long, device)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return device_tensor(values, torch.float32, device).unsqueeze(1)
