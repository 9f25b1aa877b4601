"""Logit edits that can change even the greedy choice: logit_bias, min_tokens and the repetition penalties.

Each function takes the whole batch's float32 logits [num_rows, vocab], which the caller owns (they may be
edited in place), and returns the edited logits. Rows that ask for nothing are left alone; the work is done
with a few scatters over all rows at once rather than a Python loop over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ladle.engine.sampling.penalty_counts import PenaltyCounts
from ladle.engine.sampling.types import SamplingRow, device_tensor
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
    counts: PenaltyCounts | None = None,
    pending_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Repetition (prompt or output, HF/vLLM rule), then frequency and presence (output only, OpenAI rule),
    over each row's penalty_window.

    counts: kept by the caller between steps (the tables on the device only take each step's new tokens).
    pending_tokens: the device tokens that rows with a pending_index still
    wait for (async scheduling): each counts as the row's last output token without being read back."""
    penalized = [i for i, row in enumerate(rows) if has_penalties(row.params)]
    if not penalized:
        return logits
    counts = counts or PenaltyCounts()
    device = logits.device
    subset = len(penalized) < len(rows)
    # Work on the penalized rows only: in a mixed batch the others would pay for [rows, vocab] temporaries.
    index = _to(penalized, device) if subset else None
    x = logits[index] if index is not None else logits
    params = [rows[i].params for i in penalized]
    slots = counts.update([rows[i] for i in penalized], logits.shape[1], device, pending_tokens)
    repetition = any(p.repetition_penalty != 1.0 for p in params)
    counted = any(p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params)
    if counts.dense:
        _apply_dense(x, params, counts, device_tensor(slots, torch.long, device), repetition, counted)
    else:
        _apply_sparse(x, params, counts.sparse(slots), repetition, counted)
    if index is not None:
        logits[index] = x
    return logits


def _apply_dense(
    x: torch.Tensor,
    params: list[SamplingParams],
    counts: PenaltyCounts,
    slots: torch.Tensor,
    repetition: bool,
    counted: bool,
) -> None:
    """[rows, vocab] passes over the tables' rows: on a GPU cheaper than finding the few tokens."""
    assert counts.window_counts is not None and counts.output_counts is not None
    device = x.device
    if repetition:
        seen = counts.window_counts.index_select(0, slots) > 0
        penalty = _column([p.repetition_penalty for p in params], device)
        # Dividing a positive logit and multiplying a negative one both make the token less likely.
        factor = torch.where(x > 0, 1.0 / penalty, penalty).masked_fill_(~seen, 1.0)
        x.mul_(factor)
    if counted:
        output = counts.output_counts.index_select(0, slots).float()
        frequency = _column([p.frequency_penalty for p in params], device)
        presence = _column([p.presence_penalty for p in params], device)
        x.sub_(output * frequency + (output > 0) * presence)


def _apply_sparse(
    x: torch.Tensor, params: list[SamplingParams], entries: tuple, repetition: bool, counted: bool
) -> None:
    """The same arithmetic as _apply_dense (bit for bit), on the counted tokens only (host counts)."""
    window_rows, window_tokens, output_rows, output_tokens, output_counts = (
        torch.from_numpy(a).to(x.device) for a in entries
    )
    if repetition and len(window_rows):
        penalty = _column([p.repetition_penalty for p in params], x.device)[window_rows, 0]
        values = x[window_rows, window_tokens]
        x[window_rows, window_tokens] = values * torch.where(values > 0, 1.0 / penalty, penalty)
    if counted and len(output_rows):
        frequency = _column([p.frequency_penalty for p in params], x.device)[output_rows, 0]
        presence = _column([p.presence_penalty for p in params], x.device)[output_rows, 0]
        x[output_rows, output_tokens] -= output_counts * frequency + presence


# Host lists reach the device through pinned memory: a pageable copy would wait for the GPU to drain, and
# with async scheduling the sampler runs while the step before is still on the GPU.
def _to(values: list[int], device: torch.device) -> torch.Tensor:
    return device_tensor(values, torch.long, device)


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return device_tensor(values, torch.float32, device).unsqueeze(1)
