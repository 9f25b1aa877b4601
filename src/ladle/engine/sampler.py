"""The Sampler: picks each running sequence's next token from its last-position logits, once per step.

Order of processing, per row (matching vLLM and Hugging Face where they agree):

 1. logit_bias            add the bias to the named tokens.
 1b. grammar bitmask    rows under structured outputs: tokens the grammar does not allow -> -inf.
 2. min_tokens            while fewer than min_tokens outputs: EOS ids and stop_token_ids -> -inf
                          (unless the grammar allows nothing else: a finished document ends).
 3. repetition_penalty    tokens seen in prompt or output: positive logits / penalty, negative * penalty.
 4. frequency_penalty     minus penalty * the token's count in the output,
    presence_penalty      minus penalty if the token is in the output (OpenAI's rule, as vLLM).
    penalty_window        (Ollama's repeat_last_n) 3-4 look only at the last N tokens of prompt + output;
                          frequency/presence count the output tokens among those. 0 = no penalties,
                          None or -1 = everything.
 5. greedy rows (temperature < 1e-5) take the argmax here; the lowest index wins a tie.
 6. temperature           divide.
 7. top_k                 keep the k largest (and any tied with the k-th).
 8. top_p                 keep the smallest set, most likely first, whose probability reaches top_p
                          (always at least one token).
 9. min_p                 drop tokens with probability < min_p * the largest probability.
10. sample                exponential race; a row with its own generator draws only from it.

Hugging Face orders 7-9 the same way; vLLM applies min_p before top_k/top_p, which gives the same result
except that top_p then measures the distribution min_p already cut.

Logprobs are reported from the raw model distribution (log_softmax of the logits before step 1), as vLLM
does by default, and always include the chosen token.

The sampler never edits the logits it is given. Rows that ask for nothing special cost nothing: a batch
of plain greedy rows is one argmax. One Sampler serves an engine for its life: it keeps the penalized
sequences' token counts on the device between steps (PenaltyCounts: output lists grow by appends, prompt
lists are not edited in place).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ladle.engine.sampling.draw import draw_tokens, fused_draw_applies
from ladle.engine.sampling.logprobs import TokenLogprobTensors, prompt_logprobs, token_logprob_tensors
from ladle.engine.sampling.penalties import apply_logit_bias, apply_min_tokens, apply_penalties
from ladle.engine.sampling.penalty_counts import PenaltyCounts
from ladle.engine.sampling.truncation import apply_min_p, apply_temperature, apply_top_k_top_p
from ladle.engine.sampling.types import SamplerOutput, SamplingRow, device_tensor
from ladle.kernels.availability import fused_ops_enabled
from ladle.kernels.cpu_ops import loaded_cpu_ops
from ladle.sampling_params import _GREEDY_EPSILON

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingRow",
    "StepPlan",
    "TokenLogprobTensors",
    "output_with_logprobs",
    "prompt_logprobs",
]


@dataclass
class StepPlan:
    """What this step's rows ask for, found in one pass over them so that unused stages cost nothing."""

    greedy_rows: list[int] = field(default_factory=list)
    random_rows: list[int] = field(default_factory=list)
    logprob_rows: list[int] = field(default_factory=list)
    grammar_rows: list[int] = field(default_factory=list)
    logit_bias: bool = False
    min_tokens: bool = False
    penalties: bool = False

    @classmethod
    def of(cls, rows: list[SamplingRow]) -> StepPlan:
        # Runs for every row every step, also for plain greedy batches: plain attribute tests, no calls.
        plan = cls()
        greedy, random, logprob_rows = plan.greedy_rows, plan.random_rows, plan.logprob_rows
        for i, row in enumerate(rows):
            p = row.params
            (greedy if p.temperature < _GREEDY_EPSILON else random).append(i)
            if p.logprobs is not None:
                logprob_rows.append(i)
            if row.token_bitmask is not None:
                plan.grammar_rows.append(i)
            if p.logit_bias:
                plan.logit_bias = True
            if p.min_tokens and row.num_output_tokens < p.min_tokens:
                plan.min_tokens = True
            if (
                p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
            ) and p.penalty_window != 0:
                plan.penalties = True
        return plan

    @property
    def needs_host_tokens(self) -> bool:
        """A row here needs this step's tokens on the host before the next step can be sampled (async
        scheduling must wait): a grammar's matcher advances on the host. Penalties take a token still in
        flight from the device, min_tokens counts it, and logprobs are read back with the tokens."""
        return bool(self.grammar_rows)

    @property
    def edits_logits(self) -> bool:
        return self.logit_bias or self.min_tokens or self.penalties or bool(self.grammar_rows)


@dataclass
class _Processed:
    # argmax of every row after steps 1-4 (None when no row is greedy); greedy rows take theirs from here.
    greedy_tokens: torch.Tensor | None
    random_rows: list[int]
    # [len(random_rows), vocab] logits after steps 1-9, ready to sample (None when every row is greedy).
    random_logits: torch.Tensor | None
    truncated: bool = False  # some random row went through top-k, top-p or min-p
    # [len(random_rows)] when step 6 is left to the draw (the fused race divides as it reads the logits).
    temperature: torch.Tensor | None = None


class Sampler:
    """One per engine: it keeps the penalized sequences' token counts from step to step (PenaltyCounts)."""

    def __init__(self) -> None:
        self._penalty_counts = PenaltyCounts()

    def reserve_penalty_counts(self, num_seqs: int, vocab_size: int, device: torch.device) -> int:
        """Allocate the penalties' per-sequence tables for num_seqs sequences now; returns their bytes."""
        self._penalty_counts.reserve(num_seqs, vocab_size, device)
        return self._penalty_counts.nbytes

    def __call__(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        plan: StepPlan | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> SamplerOutput:
        """plan: StepPlan.of(rows), when the caller has made it already. pending_tokens: the device tokens
        the rows' pending_index point into (async scheduling's step in flight)."""
        if not rows:
            return SamplerOutput(token_ids=[], logprobs=[], ranks=[])
        plan = plan or StepPlan.of(rows)
        tokens = self.sample_on_device(logits, rows, plan, pending_tokens)
        return output_with_logprobs(
            tokens.tolist(), rows, plan, self.logprobs_on_device(logits, rows, plan, tokens)
        )

    def sample_on_device(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        plan: StepPlan | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The rows' next tokens [rows] int64, left on the logits' device and not waited for (async
        scheduling reads them back later; logprobs_on_device gives their logprobs the same way)."""
        plan = plan or StepPlan.of(rows)
        processed = self._process(logits, rows, plan, self._penalty_counts, pending_tokens)
        return self._choose(processed, rows)

    @staticmethod
    def logprobs_on_device(
        logits: torch.Tensor, rows: list[SamplingRow], plan: StepPlan, tokens: torch.Tensor
    ) -> TokenLogprobTensors | None:
        """The logprob rows' numbers (raw log_softmax: the chosen token and the top ones), on the device and
        not waited for; output_with_logprobs turns them into the SamplerOutput. None without logprob rows."""
        lp_rows = plan.logprob_rows
        if not lp_rows:
            return None
        if len(lp_rows) == len(rows):
            raw, chosen = logits, tokens
        else:
            index = device_tensor(lp_rows, None, logits.device)
            raw, chosen = logits[index], tokens[index]
        max_top = max(rows[i].params.logprobs or 0 for i in lp_rows)
        return token_logprob_tensors(raw.float().log_softmax(dim=-1), chosen, max_top)

    def processed_logprobs(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """The log-distribution [rows, vocab] each row samples from after all processing.

        A greedy row's is one-hot on its argmax (log 1 = 0 there, -inf elsewhere): it takes that token.
        For tests and debugging; the engine calls the sampler itself.
        """
        num_rows, vocab_size = logits.shape
        result = torch.full((num_rows, vocab_size), float("-inf"), device=logits.device)
        if not rows:
            return result
        processed = self._process(logits, rows, StepPlan.of(rows), PenaltyCounts(), None, divide_now=True)
        if processed.greedy_tokens is not None:
            result.scatter_(1, processed.greedy_tokens.unsqueeze(1), 0.0)
        if processed.random_logits is not None:
            index = device_tensor(processed.random_rows, None, logits.device)
            result[index] = processed.random_logits.log_softmax(dim=-1)
        return result

    def _process(
        self,
        logits: torch.Tensor,
        rows: list[SamplingRow],
        plan: StepPlan,
        penalty_counts: PenaltyCounts,
        pending_tokens: torch.Tensor | None,
        divide_now: bool = False,
    ) -> _Processed:
        """divide_now: apply the temperature here even where the draw could fold it in."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"Sampler got {logits.shape[0]} rows of logits for {len(rows)} sequences")
        work = logits.float()  # a no-op for float32 logits; then `work` is the caller's tensor: don't edit it
        if plan.edits_logits:
            if work is logits:
                work = logits.clone()
            if plan.logit_bias:
                work = apply_logit_bias(work, rows)
            if plan.grammar_rows:
                from ladle.structured.bitmask import apply_bitmasks  # xgrammar loads only when used

                apply_bitmasks(work, plan.grammar_rows, [rows[i].token_bitmask for i in plan.grammar_rows])
            if plan.min_tokens:
                work = _min_tokens_under_grammar(work, rows, plan.grammar_rows)
            if plan.penalties:
                work = apply_penalties(work, rows, penalty_counts, pending_tokens)

        greedy_tokens = _argmax(work) if plan.greedy_rows else None
        if not plan.random_rows:
            return _Processed(greedy_tokens, [], None)

        device = logits.device
        random = [rows[i].params for i in plan.random_rows]
        if len(plan.random_rows) < len(rows):
            work = work[device_tensor(plan.random_rows, None, device)]
        temperature = device_tensor([p.temperature for p in random], torch.float32, device)
        # Truncate only the rows that ask for it: top-k/top-p take a topk (at worst a sort) of each row.
        truncated = [j for j, p in enumerate(random) if p.top_k > 0 or p.top_p < 1.0]
        min_p_rows = [j for j, p in enumerate(random) if p.min_p > 0.0]
        generators = [rows[i].generator for i in plan.random_rows]
        if not (truncated or min_p_rows or divide_now) and fused_draw_applies(work, generators):
            return _Processed(greedy_tokens, plan.random_rows, work, temperature=temperature)
        work = apply_temperature(work, temperature)  # a new tensor: from here on it is ours to edit
        if truncated:
            top_k = [random[j].top_k for j in truncated]
            top_p = [random[j].top_p for j in truncated]
            work = _on_rows(work, truncated, lambda x: apply_top_k_top_p(x, top_k, top_p))
        if min_p_rows:
            min_p = device_tensor([random[j].min_p for j in min_p_rows], torch.float32, device)
            work = _on_rows(work, min_p_rows, lambda x: apply_min_p(x, min_p))
        return _Processed(greedy_tokens, plan.random_rows, work, bool(truncated or min_p_rows))

    @staticmethod
    def _choose(processed: _Processed, rows: list[SamplingRow]) -> torch.Tensor:
        if processed.random_logits is None:
            assert processed.greedy_tokens is not None
            return processed.greedy_tokens
        generators = [rows[i].generator for i in processed.random_rows]
        sampled = draw_tokens(processed.random_logits, generators, processed.truncated, processed.temperature)
        if processed.greedy_tokens is None:
            return sampled
        tokens = processed.greedy_tokens.clone()
        tokens[device_tensor(processed.random_rows, None, tokens.device)] = sampled
        return tokens


def output_with_logprobs(
    token_ids: list[int], rows: list[SamplingRow], plan: StepPlan, tensors: TokenLogprobTensors | None
) -> SamplerOutput:
    """The step's SamplerOutput: its tokens, and the logprob rows' dicts from logprobs_on_device's numbers
    (on the host by now, or read back here)."""
    logprobs: list[dict[int, float] | None] = [None] * len(rows)
    ranks: list[dict[int, int] | None] = [None] * len(rows)
    if tensors is not None:
        num_top = [rows[i].params.logprobs or 0 for i in plan.logprob_rows]
        values, row_ranks = tensors.as_dicts(num_top)
        for i, row_values, rank in zip(plan.logprob_rows, values, row_ranks, strict=True):
            logprobs[i], ranks[i] = row_values, rank
    return SamplerOutput(token_ids=token_ids, logprobs=logprobs, ranks=ranks)


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(dim=-1). float32 CPU logits go through the native kernels when a GGUF model loaded them
    (torch's argmax over 32 rows of a 262k vocabulary took ~7 ms of a ~100 ms step); CUDA logits through the
    Triton block argmax (torch's over one 128k row is a single ~28 us reduction on the H200)."""
    if x.dim() == 2 and x.stride(-1) == 1:
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
            ops = loaded_cpu_ops()
            if ops is not None:
                return ops.argmax_rows(x)
        elif x.dtype in (torch.float32, torch.bfloat16, torch.float16) and fused_ops_enabled(x):
            from ladle.kernels.triton_sampling import argmax_rows  # Triton loads only on GPU machines

            return argmax_rows(x)
    return x.argmax(dim=-1)


def _min_tokens_under_grammar(
    work: torch.Tensor, rows: list[SamplingRow], grammar_rows: list[int]
) -> torch.Tensor:
    """min_tokens, except on grammar rows whose only allowed tokens it would remove (the document is
    complete and can only end): those keep their grammar-masked logits."""
    if not grammar_rows:
        return apply_min_tokens(work, rows)
    index = torch.tensor(grammar_rows, device=work.device)
    before = work[index]
    work = apply_min_tokens(work, rows)
    dead = ~work[index].isfinite().any(dim=-1)
    if bool(dead.any()):
        work[index[dead]] = before[dead]
    return work


def _on_rows(x: torch.Tensor, rows: list[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply an in-place-editing fn to rows `rows` of x (all of x when that is every row)."""
    if len(rows) == x.shape[0]:
        return fn(x)
    index = device_tensor(rows, None, x.device)
    x[index] = fn(x[index])
    return x
