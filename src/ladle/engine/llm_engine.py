"""LLMEngine: the synchronous engine. add_request() queues work; each step() schedules one batch, runs the
model once, samples, detokenizes and returns the outputs of the requests that moved."""

from __future__ import annotations

import itertools
import numbers
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ladle.config import EngineConfig
from ladle.engine.detokenizer import IncrementalDetokenizer
from ladle.engine.kv_cache_manager import KVCacheManager
from ladle.engine.request import Request
from ladle.engine.sampler import (
    Sampler,
    SamplerOutput,
    SamplingRow,
    StepPlan,
    TokenLogprobTensors,
    output_with_logprobs,
    prompt_logprobs,
)
from ladle.engine.sampling.types import to_pinned_host
from ladle.engine.scheduler import ScheduledBatch, Scheduler
from ladle.executor.device import resolve_device, resolve_dtype, resolve_kv_cache_dtype
from ladle.executor.model_runner import ModelRunner, PendingTokens, kv_block_bytes
from ladle.layers.attention import get_attention_backend
from ladle.loader.checkpoint import Checkpoint, open_checkpoint
from ladle.loader.model_loader import load_model
from ladle.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from ladle.sampling_params import SamplingParams


@dataclass
class EngineCounters:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0
    finished_by_reason: dict[str, int] = field(default_factory=dict)
    # Steps left running while the next one was scheduled and launched (async scheduling).
    overlapped_steps: int = 0


@dataclass
class _LaunchedStep:
    """A step whose model run and sampling are queued; finishing it reads the tokens and applies them."""

    sampled: list[Request]  # the requests that sample a token this step, in the logits' row order
    grammars: bool
    result: SamplerOutput | None = None  # sampled and read back at once
    # Async scheduling: the tokens on the device (the next step's inputs), their pinned host copy, and the
    # event after which that copy is complete; the logprob rows' numbers copied the same way, with the plan
    # and rows that say which rows they belong to.
    tokens: torch.Tensor | None = None
    host_tokens: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None
    host_logprobs: TokenLogprobTensors | None = None
    plan: StepPlan | None = None
    rows: list[SamplingRow] | None = None


@dataclass
class _Parent:
    """What a user's request (possibly n choices) shares."""

    prompt: str | None
    prompt_token_ids: list[int]
    children: list[Request]
    arrival_time: float


class LLMEngine:
    def __init__(self, config: EngineConfig, checkpoint: Checkpoint | None = None) -> None:
        self.config = config
        self.checkpoint = checkpoint or open_checkpoint(config.model, config.load_format, config.tokenizer)
        self.arch = self.checkpoint.arch
        self.tokenizer = self.checkpoint.tokenizer
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device, self.arch.torch_dtype)
        self.kv_cache_dtype = resolve_kv_cache_dtype(
            config.kv_cache_dtype, self.dtype, self.device, self.checkpoint.format
        )
        model_max = self.arch.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > model_max:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's context length ({model_max})"
            )
        self.max_model_len = config.max_model_len or model_max

        torch.manual_seed(config.seed)
        start = time.perf_counter()
        self.attention_backend = get_attention_backend(config.attention_backend, self.device)
        if config.tensor_parallel_size > 1:
            from ladle.executor import create_tp_executor

            # Rank 0 runs here; the executor looks like a ModelRunner (execute, allocate_kv_cache, model,
            # profile_run, capture_graphs), forwarding to the other ranks what runs the model.
            self.runner = create_tp_executor(
                config, self.checkpoint, self.device, self.dtype, self.max_model_len
            )
        else:
            model = load_model(
                self.checkpoint,
                self.device,
                self.dtype,
                self.attention_backend,
                max_positions=self.max_model_len,
                dummy=config.load_format == "dummy",
                seed=config.seed,
            )
            if self.device.type == "cuda":
                model.fuse_weights()
            self.runner = ModelRunner(model, self.device, self.dtype, config.block_size, self.kv_cache_dtype)
        self.load_seconds = time.perf_counter() - start
        self.sampler = Sampler()
        self.memory_profile: dict[str, float] = {}
        num_blocks = self._num_kv_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        # A request can never hold more tokens than the whole pool.
        self.max_model_len = min(self.max_model_len, num_blocks * config.block_size)
        self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.graph_capture_seconds = 0.0
        if (
            self.device.type == "cuda"
            and not config.enforce_eager
            and self.attention_backend.name == "triton"
        ):
            self.graph_capture_seconds = self.runner.capture_graphs(config.max_num_seqs, self.max_model_len)
        self.scheduler = Scheduler(self.kv, config.max_num_batched_tokens, config.max_num_seqs)
        self.async_scheduling = self._wants_async_scheduling()
        self._inflight: _LaunchedStep | None = None  # the step whose tokens are still on the device
        self._structured = None  # ladle.structured.StructuredDecoding, made by the first constrained request
        self._structured_lock = threading.Lock()
        self.parents: dict[str, _Parent] = {}
        self.counters = EngineCounters()
        self._ids = itertools.count()

    # -- set-up ------------------------------------------------------------------------------------------
    def _num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        # The runner's model config: one rank's heads under tensor parallelism (each rank has its own memory).
        block_bytes = kv_block_bytes(self.runner.model.config, self.config.block_size, self.kv_cache_dtype)
        if self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            budget = int(os.environ.get("LADLE_CPU_KV_CACHE_BYTES", self.config.cpu_kv_cache_bytes))
        # Never more than every sequence slot could use at full context.
        wanted = self.config.max_num_seqs * -(-self.max_model_len // self.config.block_size)
        return max(1, min(int(budget // block_bytes), wanted))

    def _wants_async_scheduling(self) -> bool:
        wanted = self.config.async_scheduling  # EngineConfig refused True with tensor parallelism
        if wanted is None:
            return isinstance(self.runner, ModelRunner) and self.device.type == "cuda"
        return wanted

    def _cuda_kv_budget(self) -> float:
        """KV pool bytes = total * gpu_memory_utilization - what is in use (CUDA context, weights, other
        processes) - the peak activations of the largest step, measured by running one - the same again
        for the CUDA graphs' private memory pool (it holds a decode step's activations)."""
        cfg = self.config
        dev = self.device
        # The penalties' tables persist between steps: allocated first, they are part of what is in use.
        penalty_tables = self.sampler.reserve_penalty_counts(cfg.max_num_seqs, self.arch.vocab_size, dev)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        self.runner.profile_run(cfg.max_num_batched_tokens, cfg.max_num_seqs, self._profile_sampling)
        peak = torch.cuda.max_memory_allocated(dev) - before
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(dev)
        used = total - free
        graph_reserve = 0 if cfg.enforce_eager else peak
        budget = total * cfg.gpu_memory_utilization - used - peak - graph_reserve
        self.memory_profile = {
            "total_gib": total / 2**30,
            "used_before_kv_gib": used / 2**30,
            "weights_gib": (before - penalty_tables) / 2**30,
            "penalty_tables_gib": penalty_tables / 2**30,
            "peak_activations_gib": peak / 2**30,
            "graph_reserve_gib": graph_reserve / 2**30,
            "kv_budget_gib": budget / 2**30,
            "profile_seconds": time.perf_counter() - start,
        }
        return budget

    def _profile_sampling(self, logits: torch.Tensor) -> None:
        # The most memory-hungry sampling settings (penalties, temperature, top-k and top-p on every row).
        params = SamplingParams(
            temperature=1.0, top_p=0.9, top_k=50, repetition_penalty=1.1, frequency_penalty=0.1
        )
        rows = [SamplingRow(params=params, prompt_token_ids=[1], output_token_ids=[]) for _ in logits]
        self.sampler(logits, rows)

    # -- health ------------------------------------------------------------------------------------------
    def is_healthy(self) -> bool:
        """False once a tensor-parallel worker has died (the server's /health answers 503 then)."""
        check = getattr(self.runner, "is_healthy", None)
        return check() if check is not None else True

    @property
    def dead_error(self) -> BaseException | None:
        return getattr(self.runner, "dead_error", None)

    def shutdown(self) -> None:
        """Stops tensor-parallel workers (a no-op for a single-device engine)."""
        stop = getattr(self.runner, "shutdown", None)
        if stop is not None:
            stop()

    # -- requests ----------------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: str | list[int] | dict[str, Any]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), _token_ids(prompt["prompt_token_ids"])
            if "prompt" not in prompt:
                raise ValueError("prompt: a dict prompt needs a 'prompt' or a 'prompt_token_ids' key")
            prompt = prompt["prompt"]
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: this model was loaded without a tokenizer; pass prompt_token_ids")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)):
            return None, _token_ids(prompt)
        raise TypeError(
            "prompt: must be a string, a list of token ids, or a dict with 'prompt' or 'prompt_token_ids'; "
            f"got {type(prompt).__name__}"
        )

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int] | dict[str, Any],
        params: SamplingParams,
        arrival_time: float | None = None,
    ) -> None:
        if request_id in self.parents:
            raise ValueError(f"request_id {request_id!r} is already in use")
        text, token_ids = self.tokenize_prompt(prompt)
        self._validate(token_ids, params)
        # Compile the grammar now: a bad schema/regex/grammar fails here, before any work is queued.
        compiled = self.structured.admit(params) if params.structured_outputs is not None else None
        arrival = arrival_time if arrival_time is not None else time.monotonic()
        room = self.max_model_len - len(token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        children = []
        for index in range(params.n):
            child_id = request_id if params.n == 1 else f"{request_id}#{index}"
            generator = None
            if params.seed is not None:
                # Each choice gets its own stream, so n > 1 with a seed still gives n different samples.
                generator = torch.Generator(device=self.device).manual_seed(params.seed + index)
            children.append(
                Request(
                    request_id=child_id,
                    parent_id=request_id,
                    index=index,
                    prompt_token_ids=token_ids,
                    params=params,
                    eos_token_ids=self.arch.eos_token_ids,
                    detokenizer=IncrementalDetokenizer(
                        self.tokenizer if params.detokenize else None,
                        token_ids,
                        params.skip_special_tokens,
                        params.stop,
                        params.include_stop_str_in_output,
                    ),
                    max_tokens=max_tokens,
                    arrival_time=arrival,
                    generator=generator,
                    grammar=self.structured.new_state(compiled, params) if compiled is not None else None,
                )
            )
        self.parents[request_id] = _Parent(text, token_ids, children, arrival)
        for child in children:
            self.scheduler.add(child)
        self.counters.prompt_tokens += len(token_ids)

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise ValueError("prompt: is empty (it must contain at least one token)")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(token_ids)} tokens is too long; this model's maximum context length is "
                f"{self.max_model_len} tokens, and at least one must be left for the output"
            )
        vocab = self.arch.vocab_size
        bad = next((t for t in token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt_token_ids: token {bad} is outside the vocabulary (size {vocab})")
        params.validate_for_vocab(vocab)

    def abort_request(self, request_ids: str | list[str]) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            parent = self.parents.pop(request_id, None)
            if parent is None:
                continue
            for child in parent.children:
                if not child.is_finished:
                    child.finish("abort")
                    self.scheduler.finish(child)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.parents)

    @property
    def structured(self):
        """Constrained decoding (ladle.structured.StructuredDecoding); xgrammar is imported on first use."""
        if self._structured is None:
            from ladle.structured import StructuredDecoding

            with self._structured_lock:  # the server compiles grammars from its own threads too
                if self._structured is None:
                    self._structured = StructuredDecoding(
                        self.tokenizer, self.arch.vocab_size, self.arch.eos_token_ids
                    )
        return self._structured

    # -- the step ----------------------------------------------------------------------------------------
    def step(self, finished_only: bool = False) -> list[RequestOutput]:
        """One scheduler step. finished_only: return outputs only for requests that finished, for callers
        that never stream (LLM.generate); building every running request's output each step is host time
        the GPU waits for, and it grows with the output length.

        With async scheduling a step whose rows need nothing from the host to go on is left running: the
        next call schedules and launches the following step first (its decodes take their input tokens
        from the device), then reads this one's tokens back and returns its outputs. So outputs arrive one
        call later, and the GPU is never idle while the host schedules, detokenizes and checks stops."""
        batch = self.scheduler.schedule()
        previous, self._inflight = self._inflight, None
        launched = self._launch(batch, previous) if batch.requests else None
        touched: dict[str, None] = {}
        if previous is not None:
            self._apply_tokens(previous, touched)
        if launched is not None:
            # After the step before is applied: a block filled by this step may end in its token.
            for req in batch.requests:
                if not req.is_finished:
                    self.kv.cache_full_blocks(req)
            if launched.tokens is not None:
                self._inflight = launched
            else:
                self._apply_tokens(launched, touched)
        if finished_only:
            return [
                self._make_output(pid)
                for pid in touched
                if pid in self.parents and all(c.is_finished for c in self.parents[pid].children)
            ]
        return [self._make_output(pid) for pid in touched if pid in self.parents]

    def _launch(self, batch: ScheduledBatch, previous: _LaunchedStep | None) -> _LaunchedStep:
        """Runs the model on the batch and samples; with async scheduling (and rows that allow it) the
        tokens are left on the device, copying to the host in the background."""
        grammars = self._structured is not None and any(r.grammar is not None for r in batch.requests)
        if grammars:  # next-token bitmasks are filled on a worker while the model runs
            self.structured.start_fills(r.grammar for r in batch.requests)
        pending: dict[Request, int] = {}
        pending_tokens = None
        if previous is not None and previous.tokens is not None:
            pending = {req: j for j, req in enumerate(previous.sampled)}
            pending_tokens = previous.tokens
            step = self.runner.execute(batch, PendingTokens(pending, pending_tokens))
        else:
            step = self.runner.execute(batch)
        for req, num_new in zip(batch.requests, batch.num_new_tokens):
            req.num_computed_tokens += num_new
        for i, logits in step.prompt_logits.items():
            req = batch.requests[i]
            self._add_prompt_logprobs(req, logits, req.num_computed_tokens - batch.num_new_tokens[i])

        sampled = [batch.requests[i] for i in step.sample_indices]
        launched = _LaunchedStep(sampled, grammars)
        if not sampled:
            return launched
        if grammars:
            self.structured.wait()
        rows = [
            SamplingRow(
                params=r.params,
                prompt_token_ids=r.prompt_token_ids,
                output_token_ids=r.output_token_ids,
                generator=r.generator,
                eos_token_ids=r.eos_token_ids,
                token_bitmask=self.structured.mask(r.grammar) if r.grammar is not None else None,
                # The step before may still be computing this request's last token (penalties need it).
                pending_index=pending.get(r),
            )
            for r in sampled
        ]
        plan = StepPlan.of(rows)
        # Requests that asked for prompt logprobs stay synchronous (those are read back as they are made).
        if (
            not self.async_scheduling
            or plan.needs_host_tokens
            or any(r.params.prompt_logprobs is not None for r in sampled)
        ):
            launched.result = self.sampler(step.logits, rows, plan, pending_tokens)
            return launched
        tokens = self.sampler.sample_on_device(step.logits, rows, plan, pending_tokens)
        logprobs = self.sampler.logprobs_on_device(step.logits, rows, plan, tokens)
        launched.tokens = tokens
        if logprobs is not None:
            launched.plan, launched.rows = plan, rows
        self.counters.overlapped_steps += 1
        launched.host_tokens = to_pinned_host(tokens)
        launched.host_logprobs = logprobs.to_pinned_host() if logprobs is not None else None
        if tokens.device.type == "cuda":
            launched.ready = torch.cuda.Event()
            launched.ready.record()
        for req in sampled:
            req.num_pending_tokens += 1  # the step before may hold one too, until it is applied
        return launched

    def _apply_tokens(self, launched: _LaunchedStep, touched: dict[str, None]) -> None:
        """Appends each sampled token to its request (detokenizing, checking stops), waiting for the copy
        from the device first if the step ran asynchronously."""
        if not launched.sampled:
            return
        result = launched.result
        if result is None:
            if launched.ready is not None:
                launched.ready.synchronize()
            token_ids = launched.host_tokens.tolist()
            if launched.host_logprobs is not None:
                result = output_with_logprobs(token_ids, launched.rows, launched.plan, launched.host_logprobs)
        else:
            token_ids = result.token_ids
        now = time.monotonic()
        deferred = launched.tokens is not None
        for j, req in enumerate(launched.sampled):
            if deferred:
                req.num_pending_tokens -= 1
            if req.is_finished:  # it stopped at the step before (this token was computed in vain), or aborted
                continue
            logprobs = self._decoded(result.logprob_dict(j)) if result is not None else None
            self._append(req, token_ids[j], logprobs, now)
            touched[req.parent_id] = None
        if launched.grammars:  # the next masks, ready before the next forward where the host is quick enough
            self.structured.start_fills(r.grammar for r in launched.sampled if not r.is_finished)

    def _add_prompt_logprobs(self, req: Request, logits: torch.Tensor, start: int) -> None:
        entries = prompt_logprobs(logits, req.prompt_token_ids, req.params.prompt_logprobs, start=start)
        req.prompt_logprobs = (req.prompt_logprobs or []) + [self._decoded(e) for e in entries]

    def _decoded(self, entry: dict[int, Logprob] | None) -> dict[int, Logprob] | None:
        if entry is not None and self.tokenizer is not None:
            for tid, lp in entry.items():
                lp.decoded_token = self.tokenizer.decode([tid], skip_special_tokens=False)
        return entry

    def _append(self, req: Request, token: int, logprobs: dict[int, Logprob] | None, now: float) -> None:
        req.append_token(token)
        self.counters.generation_tokens += 1
        if req.first_token_time is None:
            req.first_token_time = now
        if logprobs is not None and req.logprobs is not None:
            req.logprobs.append(logprobs)
            req.cumulative_logprob += logprobs[token].logprob
        if req.grammar is not None and self._advance_grammar(req, token):
            return
        params = req.params
        num_out = len(req.output_token_ids)
        may_stop = num_out >= params.min_tokens
        if may_stop and token in params.stop_token_ids:
            self._finish(req, "stop", token)
            return
        if may_stop and not params.ignore_eos and token in req.eos_token_ids:
            self._finish(req, "stop", None)
            return
        matched = req.detokenizer.add_token(token, check_stop=may_stop)
        if matched is not None:
            self._finish(req, "stop", matched)
        elif num_out >= req.max_tokens:
            self._finish(req, "length", None)

    def _advance_grammar(self, req: Request, token: int) -> bool:
        """Feed the sampled token to the request's grammar; True when that finished the request."""
        if not req.grammar.accept(token):
            # Only a bug could get here (the token was sampled under the grammar's mask).
            self._finish(req, "abort", "grammar rejected the sampled token")
            return True
        if req.grammar.is_terminated:  # the grammar is complete and took its stop token (EOS): not text
            self._finish(req, "stop", token if token in req.params.stop_token_ids else None)
            return True
        return False

    def _finish(self, req: Request, reason: str, stop_reason: int | str | None) -> None:
        if reason != "stop" or not isinstance(stop_reason, str):
            req.detokenizer.flush()
        req.finish(reason, stop_reason)
        self.scheduler.finish(req)
        self.counters.finished_requests += 1
        self.counters.finished_by_reason[reason] = self.counters.finished_by_reason.get(reason, 0) + 1

    def _make_output(self, parent_id: str) -> RequestOutput:
        parent = self.parents[parent_id]
        finished = all(c.is_finished for c in parent.children)
        outputs, deltas = [], []
        for child in parent.children:
            detok = child.detokenizer
            outputs.append(
                CompletionOutput(
                    index=child.index,
                    text=detok.text,
                    token_ids=list(child.output_token_ids),
                    cumulative_logprob=child.cumulative_logprob if child.logprobs is not None else None,
                    logprobs=child.logprobs,
                    finish_reason=child.finish_reason,
                    stop_reason=child.stop_reason,
                )
            )
            stable = detok.stable_text_len(child.is_finished)
            deltas.append(
                (detok.text[child.sent_text_len : stable], child.output_token_ids[child.sent_token_len :])
            )
            child.sent_text_len = max(child.sent_text_len, stable)
            child.sent_token_len = len(child.output_token_ids)
        first = parent.children[0]
        metrics = RequestMetrics(
            arrival_time=parent.arrival_time,
            first_scheduled_time=first.first_scheduled_time,
            first_token_time=min(
                (c.first_token_time for c in parent.children if c.first_token_time), default=None
            ),
            finished_time=max((c.finished_time or 0.0 for c in parent.children), default=None)
            if finished
            else None,
            num_cached_tokens=max(first.num_cached_tokens, 0),
        )
        if finished:
            del self.parents[parent_id]
        return RequestOutput(
            request_id=parent_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            outputs=outputs,
            finished=finished,
            prompt_logprobs=first.prompt_logprobs,
            metrics=metrics,
            num_cached_tokens=metrics.num_cached_tokens,
            deltas=deltas,
        )


def _token_ids(ids: Any) -> list[int]:
    """A prompt's token ids as plain ints (numpy and torch integers too); anything else is a TypeError."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"prompt_token_ids: must be a list of integers, got {type(ids).__name__}")
    ids = list(ids)
    bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
    if bad:
        raise TypeError(f"prompt_token_ids: must be integers, got {bad[0]!r}")
    return [int(t) for t in ids]
