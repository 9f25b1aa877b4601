"""ModelRunner: turns a scheduled batch into tensors, runs the model and returns the logits to sample from.

It owns the KV-cache tensors (one K and one V block pool per layer) and the device; the scheduler only sees
block ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ladle.engine.scheduler import ScheduledBatch
from ladle.layers.attention import AttentionMetadata
from ladle.model.config import ArchConfig
from ladle.model.llama import CausalLM


@dataclass
class StepLogits:
    # Rows of `logits` belong to these batch positions: requests that reach the end of their known tokens
    # this step and so sample a new one (a prefill still in progress doesn't).
    sample_indices: list[int]
    logits: torch.Tensor  # [len(sample_indices), vocab] float32
    # batch position -> logits for each of its new tokens, for requests that asked for prompt logprobs.
    prompt_logits: dict[int, torch.Tensor]


def kv_block_bytes(arch: ArchConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim
    return per_token * block_size * torch.tensor([], dtype=dtype).element_size()


class ModelRunner:
    def __init__(self, model: CausalLM, device: torch.device, dtype: torch.dtype, block_size: int) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def allocate_kv_cache(self, num_blocks: int) -> None:
        cfg = self.model.config
        shape = (num_blocks, self.block_size, cfg.num_key_value_heads, cfg.head_dim)
        # torch.empty: pages are touched only when written, so an unused CPU budget costs nothing.
        self.kv_caches = [
            (
                torch.empty(shape, dtype=self.dtype, device=self.device),
                torch.empty(shape, dtype=self.dtype, device=self.device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> StepLogits:
        input_ids: list[int] = []
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
            input_ids.extend(req.all_token_ids[start:end])
            positions.extend(range(start, end))
            blocks = req.block_ids
            slots.extend(blocks[p // size] * size + p % size for p in range(start, end))
            query_lens.append(num_new)
            seq_lens.append(end)
            if end == req.num_tokens:
                sample_indices.append(i)
                last_rows.append(len(input_ids) - 1)
            if req.params.prompt_logprobs is not None and start < req.num_prompt_tokens:
                prompt_rows[i] = (row0, len(input_ids))

        max_blocks = max(len(r.block_ids) for r in batch.requests)
        tables = torch.zeros(len(batch), max_blocks, dtype=torch.int32)
        for i, req in enumerate(batch.requests):
            tables[i, : len(req.block_ids)] = torch.tensor(req.block_ids, dtype=torch.int32)
        query_start = [0]
        for q in query_lens:
            query_start.append(query_start[-1] + q)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=tables.to(dev),
            query_start=torch.tensor(query_start, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
            block_size=size,
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
        )
        hidden = self.model(
            torch.tensor(input_ids, dtype=torch.int64, device=dev),
            torch.tensor(positions, dtype=torch.int64, device=dev),
            self.kv_caches,
            meta,
        )
        logits = self.model.compute_logits(hidden[last_rows]) if last_rows else hidden.new_empty(0, 0).float()
        prompt_logits = {i: self.model.compute_logits(hidden[a:b]) for i, (a, b) in prompt_rows.items()}
        return StepLogits(sample_indices=sample_indices, logits=logits, prompt_logits=prompt_logits)
