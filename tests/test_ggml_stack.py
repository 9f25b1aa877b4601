"""The one-call native decoder stack (quant/csrc/ggml_forward.c) against the per-op path of model/ggml_cpu.py
that llama.cpp's numerics are checked on (test_gguf_generation.py): the same hidden states and K/V caches,
bit for bit, on a mixed batch (two prefills with only the sampled rows kept by the last layer) and on decode
batches. And the LM head's reused output buffer: the module's own result, never one a caller still holds."""

from __future__ import annotations

import pytest
import torch

from gguf_support import gemma_path, stories_path
from ladle import LLM
from ladle.layers.attention import AttentionMetadata
from ladle.quant.row_groups import sequence_rows

BLOCK = 16


def _meta(lens_before: list[int], lens_new: list[int], tables: torch.Tensor, rows: list[int] | None):
    slots, starts, positions = [], [0], []
    for s, (before, new) in enumerate(zip(lens_before, lens_new)):
        for p in range(before, before + new):
            slots.append(int(tables[s, p // BLOCK]) * BLOCK + p % BLOCK)
            positions.append(p)
        starts.append(starts[-1] + new)
    seq_lens = [b + n for b, n in zip(lens_before, lens_new)]
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots),
        block_tables=tables,
        query_start=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        query_lens_host=lens_new,
        seq_lens_host=seq_lens,
        block_size=BLOCK,
        max_query_len=max(lens_new),
        max_seq_len=max(seq_lens),
        output_rows=rows,
    )
    return torch.tensor(positions), meta


def _run(model, native: bool) -> list[torch.Tensor]:
    ggml = model.ggml_forward
    saved = [layer.native for layer in ggml.layers]
    if not native:
        for layer in ggml.layers:
            layer.native = None
    cfg = model.config
    shape = (8, BLOCK, cfg.num_key_value_heads, cfg.head_dim)
    caches = [
        (torch.zeros(shape, dtype=torch.float16), torch.zeros(shape, dtype=torch.float16))
        for _ in ggml.layers
    ]
    tables = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=torch.int32)
    gen = torch.Generator().manual_seed(0)
    results = []
    try:
        with torch.inference_mode():
            # prefills of 21 and 9 tokens; only their last rows are output (the last layer's row selection)
            for before, new, rows in (
                ([0, 0], [21, 9], [20, 29]),
                ([21, 9], [1, 1], None),
                ([22, 10], [3, 1], None),
            ):
                ids = torch.randint(0, cfg.vocab_size, (sum(new),), generator=gen)
                positions, meta = _meta(before, new, tables, rows)
                # the rows per sequence the runner states (each sequence's matmul order is its own)
                with sequence_rows(new, [1] * len(new) if rows is not None else new):
                    results.append(model(ids, positions, caches, meta))
        results += [c for pair in caches for c in pair]
    finally:
        for layer, native in zip(ggml.layers, saved):
            layer.native = native
    return results


@pytest.mark.parametrize("path_fn", [stories_path, gemma_path], ids=["stories", "gemma"])
def test_native_stack_matches_per_op_path(path_fn) -> None:
    torch.set_num_threads(2)
    llm = LLM(model=str(path_fn()), max_model_len=256, enable_prefix_caching=False)
    model = llm.llm_engine.runner.model
    if model.ggml_forward is None or any(layer.native is None for layer in model.ggml_forward.layers):
        pytest.skip("this model does not run the native stack (no ggml numerics, or dense weights)")
    native, per_op = _run(model, native=True), _run(model, native=False)
    for a, b in zip(native, per_op, strict=True):
        assert torch.equal(
            a.view(torch.int16) if a.dtype == torch.float16 else a.view(torch.int32),
            b.view(torch.int16) if b.dtype == torch.float16 else b.view(torch.int32),
        )


def test_lm_head_reuses_only_a_dropped_buffer() -> None:
    torch.set_num_threads(2)
    llm = LLM(model=str(gemma_path()), max_model_len=256, enable_prefix_caching=False)
    model = llm.llm_engine.runner.model
    if (
        model.ggml_forward is None
        or model.ggml_forward.logits(torch.zeros(1, model.config.hidden_size)) is None
    ):
        pytest.skip("no packed LM head on the ggml path")
    gen = torch.Generator().manual_seed(1)
    h1, h2 = (torch.randn(3, model.config.hidden_size, generator=gen) for _ in range(2))
    with torch.inference_mode():
        expected = [model.lm_head(h).float() for h in (h1, h2)]
        first = model.compute_logits(h1)
        kept = first.clone()
        second = model.compute_logits(h2)  # `first` is still held: a new buffer
        assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)
        view = second[1:]  # only a view of `second` survives: still not free
        address = second.data_ptr()
        del first, second
        third = model.compute_logits(h1)
        assert third.data_ptr() != address and torch.equal(view, expected[1][1:])
        address = third.data_ptr()
        del third
        fourth = model.compute_logits(h2)  # dropped: the same memory again
        assert fourth.data_ptr() == address
        assert torch.equal(fourth, expected[1])
        assert torch.equal(model.compute_logits(h1), expected[0])
