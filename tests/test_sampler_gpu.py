"""The sampler on CUDA: same distributions as the numpy reference, seeded rows batch-invariant on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ladle.engine.sampler import Sampler, SamplingRow
from ladle.sampling_params import SamplingParams
from test_sampler import (
    CASES,
    EOS,
    LARGE_VOCAB_CASES,
    OUTPUT,
    PROMPT,
    assert_frequencies_match,
    assert_log_distributions_close,
    make_logits,
    reference_log_distribution,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def test_processed_distributions_on_cuda() -> None:
    params = list(CASES.values())
    logits = make_logits(len(params), seed=42)
    rows = [SamplingRow(p, list(PROMPT), list(OUTPUT), eos_token_ids=list(EOS)) for p in params]
    actual = Sampler().processed_logprobs(logits.to(CUDA), rows).cpu()
    for i, p in enumerate(params):
        expected = reference_log_distribution(logits[i].numpy(), p, PROMPT, OUTPUT, EOS)
        assert_log_distributions_close(actual[i], expected)

    scales = torch.tensor([scale for _, scale in LARGE_VOCAB_CASES]).unsqueeze(1)
    logits = make_logits(len(LARGE_VOCAB_CASES), vocab=2000, seed=5, scale=1.0) * scales
    rows = [SamplingRow(p, [1], [2]) for p, _ in LARGE_VOCAB_CASES]
    actual = Sampler().processed_logprobs(logits.to(CUDA), rows).cpu()
    for i, (p, _) in enumerate(LARGE_VOCAB_CASES):
        assert_log_distributions_close(
            actual[i], reference_log_distribution(logits[i].numpy(), p, [1], [2], [])
        )


def test_sampling_frequencies_on_cuda() -> None:
    params = SamplingParams(temperature=0.9, top_p=0.9, repetition_penalty=1.3)
    logits_row = torch.tensor([1.0, 0.5, 0.0, -0.3, 1.4, -1.0, 0.2, 0.8])
    expected = np.exp(reference_log_distribution(logits_row.numpy(), params, [1], [4], []))
    torch.cuda.manual_seed(3)
    rows = [SamplingRow(params, [1], [4]) for _ in range(40_000)]
    tokens = Sampler()(logits_row.to(CUDA).expand(len(rows), 8).contiguous(), rows).token_ids
    assert_frequencies_match(tokens, expected)


def test_seeded_rows_batch_invariant_on_cuda() -> None:
    vocab = 262_144  # Gemma 3's vocabulary: large enough for multi-block kernels
    target = SamplingParams(temperature=1.0, top_p=0.95, top_k=0, repetition_penalty=1.1, seed=77)
    others = [
        SamplingParams(temperature=0.8, seed=5),
        SamplingParams(temperature=0.7, top_k=40),
        SamplingParams(temperature=0.0),
    ]

    def run(position: int, neighbours: list[SamplingParams], num_fillers: int) -> list[int]:
        all_params = list(neighbours) + [SamplingParams(temperature=1.0)] * num_fillers
        all_params.insert(position, target)
        rows = [
            SamplingRow(
                p,
                [1, 2, 3],
                [],
                generator=torch.Generator(device=CUDA).manual_seed(p.seed) if p.seed is not None else None,
            )
            for p in all_params
        ]
        sampler = Sampler()
        for step in range(12):
            base = make_logits(1, vocab=vocab, seed=step, scale=2.5).to(CUDA)
            out = sampler(base.expand(len(rows), vocab).contiguous(), rows)
            for row, token in zip(rows, out.token_ids, strict=True):
                row.output_token_ids.append(token)
        return rows[position].output_token_ids

    alone = run(0, [], 0)
    assert alone == run(2, others, 0) == run(1, others, 60) == run(63, others, 60)
    assert len(set(alone)) > 3


def test_unseeded_batches_take_the_one_pass_race_with_the_right_frequencies() -> None:
    """Rows with no seed and no truncation are drawn by the fused Triton race, which divides by each row's
    temperature itself; greedy rows beside them keep their argmax."""
    pytest.importorskip("triton")
    from ladle.engine.sampling.draw import fused_draw_applies

    logits_row = torch.tensor([1.0, 0.5, 0.0, -0.3, 1.4, -1.0, 0.2, 0.8])
    hot, cold = SamplingParams(temperature=1.5), SamplingParams(temperature=0.5)
    params = [hot, cold, SamplingParams(temperature=0.0)] * 15_000
    rows = [SamplingRow(p, [1], []) for p in params]
    logits = logits_row.to(CUDA).expand(len(rows), 8).contiguous()
    assert fused_draw_applies(logits, [None])
    torch.cuda.manual_seed(9)
    tokens = np.array(Sampler()(logits, rows).token_ids)
    for offset, p in ((0, hot), (1, cold)):
        expected = np.exp(reference_log_distribution(logits_row.numpy(), p, [1], [], []))
        assert_frequencies_match(tokens[offset::3].tolist(), expected)
    assert set(tokens[2::3].tolist()) == {4}  # the argmax
