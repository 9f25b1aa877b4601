"""What the engine hands the sampler each step, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ladle.outputs import Logprob
from ladle.sampling_params import SamplingParams


@dataclass
class SamplingRow:
    """One running sequence's sampling state for this step (one row of the logits)."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    # Set when params.seed is: the engine creates it once per request on the logits' device, seeded with the
    # seed, and keeps it across steps, so the request's draws depend on nothing but its own seed.
    generator: torch.Generator | None = None
    # The model's EOS ids; min_tokens masks them (and stop_token_ids) until enough tokens were produced.
    eos_token_ids: list[int] | None = None
    # Set for rows under a grammar (structured outputs): [1, ceil(vocab / 32)] int32, bit set = allowed.
    token_bitmask: torch.Tensor | None = None
    # Async scheduling: the row's previous token is still in flight, at index pending_index of the tokens
    # tensor the sampler is given as `pending_tokens` (on the logits' device); output_token_ids lacks it.
    pending_index: int | None = None

    @property
    def num_pending_tokens(self) -> int:
        return 0 if self.pending_index is None else 1

    @property
    def num_output_tokens(self) -> int:
        """Output tokens so far, the one in flight included."""
        return len(self.output_token_ids) + self.num_pending_tokens

    @property
    def min_tokens_active(self) -> bool:
        return self.num_output_tokens < self.params.min_tokens


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    # Per row when params.logprobs is not None: the sampled token and the top-`logprobs` tokens -> logprob,
    # from the raw model distribution (log_softmax of the logits before any processing), as vLLM reports.
    logprobs: list[dict[int, float] | None]
    # Rank of each of those tokens in that distribution: 1 + the number of tokens strictly more likely.
    ranks: list[dict[int, int] | None]

    def logprob_dict(self, row: int) -> dict[int, Logprob] | None:
        """Row `row`'s logprobs in the shape RequestOutput carries (decoded_token left for the detokenizer)."""
        values, ranks = self.logprobs[row], self.ranks[row]
        if values is None or ranks is None:
            return None
        return {tok: Logprob(logprob=lp, rank=ranks[tok]) for tok, lp in values.items()}


def device_tensor(values: list, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """torch.tensor(values) on `device` without a host sync: a plain copy from pageable memory waits for the
    GPU to drain; from pinned memory it is queued like a kernel."""
    return host_to_device(torch.tensor(values, dtype=dtype), device)


def host_to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, queued without a host sync (through pinned memory) on CUDA."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_pinned_host(t: torch.Tensor) -> torch.Tensor:
    """A CUDA tensor's copy into pinned host memory, queued after the work that makes it (read it after an
    event or a sync); a host tensor as it is."""
    if t.device.type != "cuda":
        return t
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
