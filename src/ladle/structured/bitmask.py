"""Applying grammar bitmasks to a batch of logits: disallowed tokens -> -inf, in place.

The bitmasks are filled on the host (xgrammar's matchers run on the CPU); on a GPU they are copied over in
one transfer and applied by xgrammar's kernel. Rows without a grammar are not touched.
"""

from __future__ import annotations

import torch
import xgrammar as xgr


def apply_bitmasks(logits: torch.Tensor, rows: list[int], masks: list[torch.Tensor]) -> None:
    """Mask rows `rows` of logits [batch, vocab] with `masks` ([1, ceil(vocab/32)] int32 each), in place."""
    if not rows:
        return
    bitmask = masks[0] if len(masks) == 1 else torch.cat(masks, dim=0)
    if logits.device.type != "cpu":
        bitmask = bitmask.pin_memory().to(logits.device, non_blocking=True)
    if len(rows) == logits.shape[0] and rows == list(range(len(rows))):
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        return
    # xgrammar's `indices` index both logits and bitmask by the same row; our bitmask is packed, so
    # apply on the gathered rows and scatter back.
    index = torch.tensor(rows, device=logits.device)
    picked = logits[index]
    xgr.apply_token_bitmask_inplace(picked, bitmask)
    logits[index] = picked


def allowed_token_ids(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Ids of the allowed tokens in one bitmask row (for tests and debugging)."""
    bits = torch.arange(32, dtype=torch.int32)
    words = bitmask.reshape(-1)
    allowed = ((words.unsqueeze(1) >> bits) & 1).reshape(-1)[:vocab_size]
    return allowed.nonzero().flatten()
