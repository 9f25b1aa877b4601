"""Request: one sequence's life in the engine (a request with n > 1 becomes n of these, one per choice)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ladle.engine.detokenizer import IncrementalDetokenizer
from ladle.outputs import Logprob, PromptLogprobs
from ladle.sampling_params import SamplingParams

if TYPE_CHECKING:
    from ladle.structured.matcher import GrammarState


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str  # unique inside the engine: "<parent>" or "<parent>#<index>" for n > 1
    parent_id: str
    index: int  # the choice index within the parent request
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: list[int]
    detokenizer: IncrementalDetokenizer
    max_tokens: int  # params.max_tokens, clamped so prompt + output fit the model's context
    arrival_time: float = field(default_factory=time.monotonic)
    generator: torch.Generator | None = None
    # Set when params.structured_outputs is: this sequence's grammar matcher (ladle.structured).
    grammar: GrammarState | None = None
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    # Sampled tokens still on the device (async scheduling: 1, or 2 while the step after is launched and
    # this one not yet applied). They count in num_tokens; the runner takes them from the device.
    num_pending_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    num_cached_tokens: int = -1  # prefix-cache hits when first scheduled (-1: not scheduled yet)
    num_preemptions: int = 0
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float = 0.0
    prompt_logprobs: PromptLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    # Text/tokens not yet handed to a streaming consumer.
    sent_text_len: int = 0
    sent_token_len: int = 0

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        if self.params.logprobs is not None:
            self.logprobs = []

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids) + self.num_pending_tokens

    @property
    def all_tokens_sampled(self) -> bool:
        """Every token max_tokens allows is known or being sampled: no further step can add one."""
        return len(self.output_token_ids) + self.num_pending_tokens >= self.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def in_prefill(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
        self.finished_time = time.monotonic()
