"""ModelRunner: turns a scheduled batch into tensors, runs the model and returns the logits to sample from.

It owns the KV-cache tensors (one K and one V block pool per layer) and the device; the scheduler only sees
block ids.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from ladle.engine.request import Request
from ladle.engine.scheduler import ScheduledBatch
from ladle.layers.attention import AttentionMetadata
from ladle.model.config import ArchConfig
from ladle.model.llama import CausalLM
from ladle.quant.row_groups import sequence_rows


@dataclass
class StepLogits:
    # Rows of `logits` belong to these batch positions: requests that reach the end of their known tokens
    # this step and so sample a new one (a prefill still in progress doesn't).
    sample_indices: list[int]
    logits: torch.Tensor  # [len(sample_indices), vocab] float32
    # batch position -> logits for each of its new tokens, for requests that asked for prompt logprobs.
    prompt_logits: dict[int, torch.Tensor]


@dataclass
class PendingTokens:
    """The tokens an earlier step sampled that the host has not read back yet (async scheduling): a
    request scheduled to decode one of them gets it from here, on the device, instead of all_token_ids."""

    index: dict[Request, int]  # request -> its row of `tokens`
    tokens: torch.Tensor  # [sampled rows] int64, on the runner's device


def kv_block_bytes(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        device: torch.device,
        dtype: torch.dtype,
        block_size: int,
        kv_cache_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.kv_cache_dtype = kv_cache_dtype or dtype  # the attention backends convert on write and read
        self.block_size = block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.graphs = None  # DecodeGraphs once capture_graphs() ran (CUDA only)
        self._wants_output_rows = getattr(model, "ggml_forward", None) is not None

    def allocate_kv_cache(self, num_blocks: int) -> None:
        cfg = self.model.config
        shape = (num_blocks, self.block_size, cfg.num_key_value_heads, cfg.head_dim)
        # torch.empty: pages are touched only when written, so an unused CPU budget costs nothing.
        self.kv_caches = [
            (
                torch.empty(shape, dtype=self.kv_cache_dtype, device=self.device),
                torch.empty(shape, dtype=self.kv_cache_dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]

    def capture_graphs(self, max_num_seqs: int, max_model_len: int) -> float:
        """Captures decode CUDA graphs for batch sizes up to max_num_seqs; returns the seconds it took."""
        from ladle.executor.cuda_graphs import DecodeGraphs, capture_sizes
        from ladle.kernels.triton_attention import decode_num_splits

        cfg = self.model.config
        num_sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        self.graphs = DecodeGraphs(
            self.model,
            self.kv_caches,
            capture_sizes(max_num_seqs),
            max_blocks_per_seq=-(-max_model_len // self.block_size),
            block_size=self.block_size,
            max_model_len=max_model_len,
            device=self.device,
            num_splits_for=lambda b: decode_num_splits(b, cfg.num_key_value_heads, None, num_sms),
        )
        self.graphs.capture()
        return self.graphs.capture_seconds

    @torch.inference_mode()
    def profile_run(self, num_tokens: int, num_seqs: int, sampler=None) -> None:
        """One step of num_tokens prompt tokens over num_seqs sequences, logits for every sequence and a
        sampling pass over them: the largest step the scheduler can hand out, for measuring peak memory.
        Runs on a throwaway KV cache just big enough."""
        num_seqs = max(1, min(num_seqs, num_tokens))
        per_seq = [num_tokens // num_seqs + (1 if i < num_tokens % num_seqs else 0) for i in range(num_seqs)]
        size = self.block_size
        blocks = [-(-n // size) for n in per_seq]
        saved = self.kv_caches
        self.allocate_kv_cache(sum(blocks))
        try:
            tables = torch.zeros(num_seqs, max(blocks), dtype=torch.int32)
            slots, first = [], 0
            for i, (n, nb) in enumerate(zip(per_seq, blocks)):
                tables[i, :nb] = torch.arange(first, first + nb, dtype=torch.int32)
                slots.extend(range(first * size, first * size + n))
                first += nb
            query_start = [0]
            for n in per_seq:
                query_start.append(query_start[-1] + n)
            dev = self.device
            meta = AttentionMetadata(
                slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
                block_tables=tables.to(dev),
                query_start=torch.tensor(query_start, dtype=torch.int32, device=dev),
                seq_lens=torch.tensor(per_seq, dtype=torch.int32, device=dev),
                query_lens_host=per_seq,
                seq_lens_host=per_seq,
                block_size=size,
                max_query_len=max(per_seq),
                max_seq_len=max(per_seq),
            )
            ids = torch.randint(0, self.model.config.vocab_size, (num_tokens,), device=dev)
            positions = torch.cat([torch.arange(n, device=dev) for n in per_seq])
            hidden = self.model(ids, positions, self.kv_caches, meta)
            last = torch.tensor([b - 1 for b in query_start[1:]], device=dev)
            logits = self.model.compute_logits(hidden[last])
            del hidden
            if sampler is not None:
                sampler(logits)
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
        finally:
            self.kv_caches = saved

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch, pending: PendingTokens | None = None) -> StepLogits:
        input_ids: list[int] = []
        patch_rows: list[int] = []  # rows of input_ids whose token is in `pending`, and where in it
        patch_from: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        last_rows: list[int] = []
        sample_indices: list[int] = []
        prompt_rows: dict[int, tuple[int, int]] = {}
        size = self.block_size
        for i, (req, num_new) in enumerate(zip(batch.requests, batch.num_new_tokens)):
            start = req.num_computed_tokens
            end = start + num_new
            row0 = len(input_ids)
            blocks = req.block_ids
            if num_new == 1:  # a decode: the common case at large batches, without per-token generators
                if pending is not None and start >= len(req.all_token_ids):  # sampled, not read back yet
                    patch_rows.append(len(input_ids))
                    patch_from.append(pending.index[req])
                    input_ids.append(0)
                else:  # (a tensor-parallel worker's all_token_ids is a TokenWindow: no len, no pending)
                    input_ids.append(req.all_token_ids[start])
                positions.append(start)
                slots.append(blocks[start // size] * size + start % size)
            else:
                input_ids.extend(req.all_token_ids[start:end])
                positions.extend(range(start, end))
                slots.extend(blocks[p // size] * size + p % size for p in range(start, end))
            query_lens.append(num_new)
            seq_lens.append(end)
            if end == req.num_tokens:
                sample_indices.append(i)
                last_rows.append(len(input_ids) - 1)
            if req.params.prompt_logprobs is not None and start < req.num_prompt_tokens:
                prompt_rows[i] = (row0, len(input_ids))

        num_seqs = len(batch)
        max_blocks = max(len(r.block_ids) for r in batch.requests)
        tables = np.zeros((num_seqs, max_blocks), dtype=np.int32)
        for i, req in enumerate(batch.requests):
            tables[i, : len(req.block_ids)] = req.block_ids
        max_query_len = max(query_lens)
        patch = self._pending_patch(patch_rows, patch_from, pending)
        graphs = self.graphs
        if (
            graphs is not None
            and max_query_len == 1
            and not prompt_rows
            and len(sample_indices) == num_seqs
            and graphs.graph_size(num_seqs) is not None
        ):
            # Decode-only: host buffers go straight into the graph's static inputs; no other host sync.
            logits = graphs.run(
                self._host(input_ids, torch.int64),
                self._host(positions, torch.int64),
                self._host(slots, torch.int64),
                self._host(seq_lens, torch.int32),
                self._host(tables, torch.int32),
                patch,
            )
            return StepLogits(sample_indices=sample_indices, logits=logits, prompt_logits={})

        query_start = [0]
        for q in query_lens:
            query_start.append(query_start[-1] + q)
        num_tokens = len(input_ids)
        # Two host-to-device copies per step (pinned memory, asynchronous): everything int64, then int32.
        longs = self._to_device(input_ids + positions + slots + last_rows, torch.int64)
        ints = self._to_device(query_start + seq_lens, torch.int32)
        meta = AttentionMetadata(
            slot_mapping=longs[2 * num_tokens : 3 * num_tokens],
            block_tables=self._to_device(tables, torch.int32),
            query_start=ints[: num_seqs + 1],
            seq_lens=ints[num_seqs + 1 :],
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            block_size=size,
            max_query_len=max_query_len,
            max_seq_len=max(seq_lens),
            # Only the ggml numerics path reads it (llama.cpp's last layer runs on the output rows alone).
            output_rows=_output_rows(last_rows, prompt_rows, num_tokens) if self._wants_output_rows else None,
        )
        step_rows, sampled_rows = self._sequence_layouts(query_lens, meta.output_rows, len(last_rows))
        ids = longs[:num_tokens]
        if patch is not None:
            ids.index_copy_(0, *patch)
        with step_rows:
            hidden = self.model(ids, longs[num_tokens : 2 * num_tokens], self.kv_caches, meta)
        with sampled_rows:
            if not last_rows:
                logits = hidden.new_empty(0, 0).float()
            elif len(last_rows) == num_tokens:
                logits = self.model.compute_logits(hidden)
            else:
                logits = self.model.compute_logits(hidden[longs[3 * num_tokens :]])
        prompt_logits = {i: self.model.compute_logits(hidden[a:b]) for i, (a, b) in prompt_rows.items()}
        return StepLogits(sample_indices=sample_indices, logits=logits, prompt_logits=prompt_logits)

    def _pending_patch(
        self, rows: list[int], sources: list[int], pending: PendingTokens | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(rows of the step's input ids, the tokens to put there), both on the device, for the decodes
        whose input token the step before sampled; None when there are none."""
        if not rows:
            return None
        index = self._to_device(rows + sources, torch.int64)
        return index[: len(rows)], pending.tokens.index_select(0, index[len(rows) :])

    def _sequence_layouts(
        self, query_lens: list[int], output_rows: list[int] | None, num_sampled: int
    ) -> tuple[AbstractContextManager, AbstractContextManager]:
        """For the ggml numerics path: the step's rows per sequence (all rows, and the output rows the last
        layer keeps), then the sampled rows' (one per sequence), so that each sequence's quantized matmuls
        add up as llama.cpp's would for that sequence alone (quant/row_groups.py)."""
        if not self._wants_output_rows:
            return nullcontext(), nullcontext()
        outputs = list(query_lens)
        if output_rows is not None:
            outputs = [0] * len(query_lens)
            seq, end = 0, query_lens[0]
            for row in output_rows:
                while row >= end:
                    seq += 1
                    end += query_lens[seq]
                outputs[seq] += 1
        return sequence_rows(query_lens, [n for n in outputs if n]), sequence_rows([1] * num_sampled)

    def _host(self, values, dtype: torch.dtype) -> torch.Tensor:
        host = (
            torch.from_numpy(values) if isinstance(values, np.ndarray) else torch.tensor(values, dtype=dtype)
        )
        return host.pin_memory() if self.device.type == "cuda" else host

    def _to_device(self, values, dtype: torch.dtype) -> torch.Tensor:
        return self._host(values, dtype).to(self.device, non_blocking=True)


def _output_rows(
    last_rows: list[int], prompt_rows: dict[int, tuple[int, int]], num_tokens: int
) -> list[int] | None:
    """The batch rows whose logits this step computes (sampled rows and prompt-logprob ranges); None: all."""
    rows = set(last_rows)
    for a, b in prompt_rows.values():
        rows.update(range(a, b))
    return None if len(rows) == num_tokens else sorted(rows)
