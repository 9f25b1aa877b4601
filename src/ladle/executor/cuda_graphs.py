"""CUDA graphs for decode-only steps.

A decode step of an 8B model launches a few hundred kernels that each run for microseconds; launched one by
one from Python, the launches cost more than the work at small batches. A graph captured per batch size
replays them all with one launch.

Every input lives in a static buffer sized for the largest batch: token ids, positions, KV slots, sequence
lengths and block tables (max_blocks_per_seq wide, so any context fits). A batch of n runs the graph of the
smallest captured size b >= n; rows n..b-1 are padding: slot -1 (the KV write skips it) and length 0 (the
attention gives zeros), so they touch nothing. The attention metadata holds only device tensors and the
batch shape: the decode kernel's split count is fixed per batch size, independent of context lengths.
"""

from __future__ import annotations

import time

import torch

from ladle.layers.attention import AttentionMetadata
from ladle.model.llama import CausalLM

# 1, 2, 4, 8, then every 16: padding wastes at most 15 rows, and the capture list stays short (~20 graphs).
DEFAULT_BATCH_SIZES = [1, 2, 4, 8] + list(range(16, 1025, 16))


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in DEFAULT_BATCH_SIZES if b < max_num_seqs]
    return sizes + [max_num_seqs]


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        batch_sizes: list[int],
        max_blocks_per_seq: int,
        block_size: int,
        max_model_len: int,
        device: torch.device,
        num_splits_for: callable,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.batch_sizes = sorted(batch_sizes)
        self.max_batch = self.batch_sizes[-1]
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.device = device
        self.num_splits_for = num_splits_for
        n = self.max_batch
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slots = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.capture_seconds = 0.0

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:b],
            block_tables=self.block_tables[:b],
            query_start=self.query_start[: b + 1],
            seq_lens=self.seq_lens[:b],
            query_lens_host=[1] * b,
            seq_lens_host=[1] * b,
            block_size=self.block_size,
            max_query_len=1,
            max_seq_len=self.max_model_len,
            decode_num_splits=self.num_splits_for(b),
        )

    def _forward(self, b: int) -> torch.Tensor:
        hidden = self.model(self.input_ids[:b], self.positions[:b], self.kv_caches, self._meta(b))
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        pool = None
        # Largest first: the smaller graphs then fit inside the memory pool the largest one reserved.
        for b in reversed(self.batch_sizes):
            self._forward(b)  # warm-up: Triton compiles, cuBLAS picks its kernels, outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[b] = self._forward(b)
            if pool is None:
                pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start

    def graph_size(self, num_seqs: int) -> int | None:
        for b in self.batch_sizes:
            if b >= num_seqs:
                return b
        return None

    def run(
        self,
        input_ids: torch.Tensor,  # [n] int64, on the device
        positions: torch.Tensor,
        slots: torch.Tensor,
        seq_lens: torch.Tensor,  # [n] int32
        block_tables: torch.Tensor,  # [n, w] int32
        patch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits [n, vocab] float32 (a view into the graph's output: read it before the next replay).

        The inputs are pinned host tensors, copied without waiting (the step before may still be running).
        patch: (rows, tokens) on the device, input tokens the step before sampled and the host hasn't read."""
        n = input_ids.shape[0]
        b = self.graph_size(n)
        assert b is not None
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slots[:n].copy_(slots, non_blocking=True)
        self.seq_lens[:n].copy_(seq_lens, non_blocking=True)
        self.block_tables[:n, : block_tables.shape[1]].copy_(block_tables, non_blocking=True)
        if patch is not None:
            self.input_ids.index_copy_(0, *patch)
        if b > n:
            self.slots[n:b].fill_(-1)
            self.seq_lens[n:b].fill_(0)
        self.graphs[b].replay()
        return self.logits[b][:n]
