"""Hugging Face transformers as the independent reference for ladle's greedy output.

Tests compare ladle (offline or through the server) with what transformers computes for the same model folder,
never with ladle itself. Greedy decoding here is a plain argmax loop that re-runs the whole sequence each step
(no KV cache), so it shares no bookkeeping with ladle's paged cache, prefix cache or chunked prefill. EOS follows
vLLM's rules, which ladle's requests use: the sequence ends at an EOS (included in the token ids, left out of the
text) unless ignore_eos, and min_tokens masks EOS until that many tokens were produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@dataclass(frozen=True)
class Continuation:
    prompt_token_ids: list[int]
    token_ids: list[int]  # as vLLM reports them: a final EOS included
    text: str  # decoded with special tokens left out, as ladle's outputs are by default
    finish_reason: str  # "stop" (an EOS ended it) or "length"
    logprobs: torch.Tensor  # [len(token_ids), vocab]: float32 log_softmax of the raw logits at each step

    def token_logprobs(self) -> list[float]:
        """The log-probability of each chosen token."""
        return [float(self.logprobs[step, token]) for step, token in enumerate(self.token_ids)]


def eos_token_ids(model) -> set[int]:
    """The ids that end a sequence: the generation config's (a list in some models), as ladle reads them."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {eos} if isinstance(eos, int) else set(eos)


def greedy(
    model, prompt_ids: Sequence[int], max_tokens: int, *, ignore_eos: bool = False, min_tokens: int = 0
) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy continuation of prompt_ids: the token ids and each step's log-probabilities."""
    eos = sorted(eos_token_ids(model))
    ids = list(prompt_ids)
    tokens: list[int] = []
    rows: list[torch.Tensor] = []
    with torch.no_grad():
        for step in range(max_tokens):
            logits = model(torch.tensor([ids + tokens])).logits[0, -1].float()
            rows.append(torch.log_softmax(logits, dim=-1))  # reported logprobs are the raw model's
            if step < min_tokens and eos:
                logits[eos] = float("-inf")
            token = int(logits.argmax())
            tokens.append(token)
            if token in eos and not ignore_eos:
                break
    return tokens, torch.stack(rows)


def sequence_logprobs(model, ids: Sequence[int]) -> torch.Tensor:
    """float32 log_softmax over a whole sequence in one forward: row p scores the token at p + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([list(ids)])).logits[0].float(), dim=-1)


def scored_continuation(
    model, prompt_ids: Sequence[int], max_tokens: int, **options
) -> tuple[list[int], torch.Tensor]:
    """greedy()'s tokens (options are its own), with sequence_logprobs() over prompt + continuation: one tensor
    that scores both prompt_logprobs (row p - 1 for prompt position p) and each generated token."""
    tokens, _ = greedy(model, prompt_ids, max_tokens, **options)
    return tokens, sequence_logprobs(model, [*prompt_ids, *tokens])


class HFReference:
    """AutoModelForCausalLM (float32, CPU) and the folder's own tokenizer: what a served folder must produce."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def encode(self, prompt: str) -> list[int]:
        """A text prompt's ids as a completion request's: the tokenizer's special tokens (BOS) added."""
        return list(self.tokenizer(prompt).input_ids)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """The ids of the messages rendered by the folder's chat template, ready for the assistant's turn."""
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(rendered["input_ids"])

    def complete(self, prompt: str | Sequence[int], max_tokens: int, **options) -> Continuation:
        """The greedy continuation of a text or token-id prompt; options are greedy()'s (ignore_eos, min_tokens)."""
        prompt_ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        tokens, logprobs = greedy(self.model, prompt_ids, max_tokens, **options)
        ended = bool(tokens) and tokens[-1] in eos_token_ids(self.model) and not options.get("ignore_eos")
        return Continuation(
            prompt_token_ids=prompt_ids,
            token_ids=tokens,
            text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            finish_reason="stop" if ended else "length",
            logprobs=logprobs,
        )

    def chat(self, messages: list[dict], max_tokens: int, **options) -> Continuation:
        return self.complete(self.chat_prompt(messages), max_tokens, **options)

    def sequence_logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        return sequence_logprobs(self.model, ids)


@pytest.fixture(scope="session")
def hf_reference(tiny_model_factory) -> HFReference:
    """transformers on the folder the shared server serves (the tiny random llama), loaded once a session."""
    folder, _ = tiny_model_factory("llama")
    return HFReference(folder)
