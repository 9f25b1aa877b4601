"""Sampler tests against references written here in plain Python/numpy (never the sampler's own helpers)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from ladle.engine.sampler import Sampler, SamplingRow, prompt_logprobs
from ladle.sampling_params import SamplingParams

NEG_INF = float("-inf")


# ---------------------------------------------------------------- independent reference, one row at a time


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    finite = x[np.isfinite(x)]
    shifted = x - finite.max()
    return shifted - math.log(np.exp(shifted).sum())


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(x))


def reference_log_distribution(
    logits: np.ndarray, params: SamplingParams, prompt: list[int], output: list[int], eos: list[int]
) -> np.ndarray:
    """The documented pipeline, step by step, in float64 with Python loops."""
    x = logits.astype(np.float64).copy()
    for token, bias in (params.logit_bias or {}).items():
        x[token] += bias
    if len(output) < params.min_tokens:
        for token in set(eos) | set(params.stop_token_ids):
            x[token] = NEG_INF

    window = params.penalty_window
    sequence = prompt + output
    if window is None or window < 0:
        start = 0
    elif window == 0:
        start = len(sequence)
    else:
        start = max(0, len(sequence) - window)
    windowed = sequence[start:]
    windowed_output = [t for pos, t in enumerate(sequence) if pos >= start and pos >= len(prompt)]
    for token in set(windowed):
        if x[token] > 0:
            x[token] /= params.repetition_penalty
        else:
            x[token] *= params.repetition_penalty
    for token, count in Counter(windowed_output).items():
        x[token] -= params.frequency_penalty * count + params.presence_penalty

    if params.temperature < 1e-5:
        one_hot = np.full_like(x, NEG_INF)
        one_hot[int(np.argmax(x))] = 0.0
        return one_hot

    x = x / params.temperature
    if params.top_k > 0:
        kth = sorted(x, reverse=True)[params.top_k - 1]
        x[x < kth] = NEG_INF
    if params.top_p < 1.0:
        probs = softmax(x)
        kept, total = [], 0.0
        for token in sorted(range(len(x)), key=lambda t: -probs[t]):
            kept.append(token)
            total += probs[token]
            if total >= params.top_p:
                break
        mask = np.full(len(x), True)
        mask[kept] = False
        x[mask] = NEG_INF
    if params.min_p > 0.0:
        probs = softmax(x)
        x[probs < params.min_p * probs.max()] = NEG_INF
    return log_softmax(x)


def assert_log_distributions_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    actual_np = actual.double().numpy()
    assert np.array_equal(np.isneginf(actual_np), np.isneginf(expected)), (actual_np, expected)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual_np[finite], expected[finite], atol=2e-5, rtol=1e-5)


# ---------------------------------------------------------------- cases

VOCAB = 40
PROMPT = [3, 5, 5, 7, 11, 13, 3, 21]
OUTPUT = [5, 9, 9, 9, 30, 3, 2]
EOS = [0, 1]

CASES = {
    "plain": SamplingParams(),
    "temperature": SamplingParams(temperature=0.6),
    "hot": SamplingParams(temperature=1.7),
    "top_k": SamplingParams(top_k=5),
    "top_k_1": SamplingParams(top_k=1, temperature=0.8),
    "top_p": SamplingParams(top_p=0.7),
    "top_p_tiny": SamplingParams(top_p=0.01),
    "top_k_top_p": SamplingParams(temperature=0.8, top_k=12, top_p=0.8),
    "min_p": SamplingParams(min_p=0.15),
    "all_truncations": SamplingParams(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05),
    "repetition": SamplingParams(repetition_penalty=1.8),
    "repetition_below_one": SamplingParams(repetition_penalty=0.6),
    "presence": SamplingParams(presence_penalty=1.2),
    "frequency": SamplingParams(frequency_penalty=0.9),
    "negative_presence_frequency": SamplingParams(presence_penalty=-0.5, frequency_penalty=-0.4),
    "all_penalties": SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.3),
    "window_4": SamplingParams(repetition_penalty=1.5, frequency_penalty=0.5, penalty_window=4),
    "window_10": SamplingParams(repetition_penalty=1.5, presence_penalty=0.7, penalty_window=10),
    "window_0": SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0, penalty_window=0),
    "window_all": SamplingParams(repetition_penalty=1.5, frequency_penalty=0.5, penalty_window=-1),
    "logit_bias": SamplingParams(logit_bias={4: 5.0, 6: -100.0, 39: 2.5}),
    "min_tokens": SamplingParams(min_tokens=10, stop_token_ids=[17]),
    "min_tokens_reached": SamplingParams(min_tokens=3, stop_token_ids=[17]),
    "min_tokens_ignore_eos": SamplingParams(min_tokens=10, ignore_eos=True),
    "greedy": SamplingParams(temperature=0.0),
    "greedy_penalized": SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=1.0),
    "greedy_bias": SamplingParams(temperature=0.0, logit_bias={12: 3.0}),
    "everything": SamplingParams(
        temperature=0.9,
        top_k=15,
        top_p=0.85,
        min_p=0.02,
        repetition_penalty=1.2,
        presence_penalty=0.3,
        frequency_penalty=0.2,
        logit_bias={8: 2.0},
        min_tokens=20,
        max_tokens=32,
        stop_token_ids=[16],
    ),
}


def make_logits(num_rows: int, vocab: int = VOCAB, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(num_rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def row_for(params: SamplingParams, generator: torch.Generator | None = None) -> SamplingRow:
    return SamplingRow(params, list(PROMPT), list(OUTPUT), generator=generator, eos_token_ids=list(EOS))


def reference_for(logits_row: torch.Tensor, params: SamplingParams) -> np.ndarray:
    return reference_log_distribution(logits_row.numpy(), params, PROMPT, OUTPUT, EOS)


# ---------------------------------------------------------------- processed distributions


@pytest.mark.parametrize("name", list(CASES))
def test_processed_distribution_single_row(name: str) -> None:
    params = CASES[name]
    for seed in range(3):
        logits = make_logits(1, seed=seed)
        actual = Sampler().processed_logprobs(logits, [row_for(params)])[0]
        assert_log_distributions_close(actual, reference_for(logits[0], params))


def test_processed_distribution_mixed_batch() -> None:
    """All cases in one batch: rows asking for different stages must not leak into each other."""
    params = list(CASES.values())
    logits = make_logits(len(params), seed=42)
    original = logits.clone()
    actual = Sampler().processed_logprobs(logits, [row_for(p) for p in params])
    for i, p in enumerate(params):
        assert_log_distributions_close(actual[i], reference_for(logits[i], p))
    assert torch.equal(logits, original), "the sampler must not edit the logits it is given"


LARGE_VOCAB_CASES = [  # (params, logit scale): a large scale gives a peaked distribution, a small one a flat one
    (SamplingParams(top_k=1), 2.0),
    (SamplingParams(top_k=7), 2.0),
    (SamplingParams(top_k=700), 2.0),
    (SamplingParams(top_k=1500), 2.0),  # past the largest head: sorts
    (SamplingParams(top_p=0.9), 6.0),  # nucleus inside the head
    (SamplingParams(top_p=0.9), 0.3),  # nucleus of ~1500 tokens: runs past the head, falls back to a sort
    (SamplingParams(top_p=0.5, temperature=0.5), 1.0),
    (SamplingParams(top_k=50, top_p=0.8), 0.5),
    (SamplingParams(top_k=1500, top_p=0.7), 0.3),
    (SamplingParams(top_k=1999, top_p=0.99, min_p=0.3), 0.3),
    (SamplingParams(), 1.0),
]


def test_large_vocab_truncation() -> None:
    """Top-k/top-p read a head of the sorted logits when they can; check every route, alone and batched."""
    vocab = 2000
    scales = torch.tensor([scale for _, scale in LARGE_VOCAB_CASES]).unsqueeze(1)
    logits = make_logits(len(LARGE_VOCAB_CASES), vocab=vocab, seed=5, scale=1.0) * scales
    rows = [SamplingRow(p, [1], [2]) for p, _ in LARGE_VOCAB_CASES]
    expected = [
        reference_log_distribution(logits[i].numpy(), p, [1], [2], [])
        for i, (p, _) in enumerate(LARGE_VOCAB_CASES)
    ]
    batched = Sampler().processed_logprobs(logits, rows)
    for i in range(len(rows)):
        assert_log_distributions_close(batched[i], expected[i])
        alone = Sampler().processed_logprobs(logits[i : i + 1], [rows[i]])[0]
        assert_log_distributions_close(alone, expected[i])
    kept = torch.isfinite(batched).sum(dim=-1).tolist()
    assert kept[4] < 256 < kept[5], "the cases should cover both a short and a long nucleus"


def test_top_k_keeps_ties() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 0.0]])
    actual = Sampler().processed_logprobs(logits, [SamplingRow(SamplingParams(top_k=3), [], [])])[0]
    # The third largest value is 2.0, held by two tokens: both stay, as in HF and vLLM.
    assert torch.isfinite(actual).tolist() == [False, True, True, True, True, False]


@pytest.mark.parametrize(("tied", "top_p"), [(0, 0.9), (2, 0.5), (30, 0.25)])
def test_top_p_after_top_k_counts_tokens_tied_past_the_head(tied: int, top_p: float) -> None:
    """top-k 3, then top-p: the 3rd largest value tied by `tied` more tokens far past it (the head read for
    top-k holds k + 1 values). All of them are in the top-p normaliser: leaving them out would make token 0
    alone reach top_p, where with them the nucleus is tokens 0 and 1 (as the float64 reference has it)."""
    logits_row = torch.full((60,), -4.0)
    logits_row[:3] = torch.tensor([3.0, 2.5, 1.0])
    logits_row[10 : 10 + tied] = 1.0
    params = SamplingParams(temperature=1.0, top_k=3, top_p=top_p)
    actual = Sampler().processed_logprobs(logits_row.unsqueeze(0), [SamplingRow(params, [], [])])[0]
    expected = reference_for(logits_row, params)
    assert_log_distributions_close(actual, expected)
    assert torch.isfinite(actual).nonzero().flatten().tolist() == [0, 1]


def test_min_tokens_masks_eos_and_stop_ids() -> None:
    params = SamplingParams(min_tokens=2, stop_token_ids=[5])
    logits = torch.zeros(1, 8)
    logits[0, 0] = logits[0, 5] = logits[0, 6] = 10.0
    row = SamplingRow(params, [1], [3], eos_token_ids=[0, 6])
    actual = Sampler().processed_logprobs(logits, [row])[0]
    assert actual[[0, 5, 6]].tolist() == [NEG_INF] * 3
    row.output_token_ids.append(4)  # min_tokens reached: nothing masked
    assert torch.isfinite(Sampler().processed_logprobs(logits, [row])[0]).all()


# ---------------------------------------------------------------- sampling frequencies


def chi_square_critical(dof: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile; z = 3.719 is the 1 - 1e-4 normal quantile."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3


def assert_frequencies_match(tokens: list[int], expected_probs: np.ndarray) -> None:
    counts = np.bincount(np.asarray(tokens), minlength=len(expected_probs))
    n = len(tokens)
    support = expected_probs > 0
    assert counts[~support].sum() == 0, f"sampled masked tokens: {np.nonzero(counts * ~support)}"
    expected = expected_probs[support] * n
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    if dof > 0:
        assert chi2 < chi_square_critical(dof), (chi2, counts, expected)


FREQ_VOCAB = 8
FREQ_CASES = [
    SamplingParams(temperature=0.8),
    SamplingParams(temperature=1.0, top_k=5),
    SamplingParams(temperature=1.2, top_p=0.75),
    SamplingParams(min_p=0.1, repetition_penalty=1.4, frequency_penalty=0.3),
]


@pytest.mark.parametrize("case", range(len(FREQ_CASES)))
def test_unseeded_sampling_frequencies(case: int) -> None:
    params = FREQ_CASES[case]
    logits_row = torch.tensor([1.0, 0.5, 0.0, -0.3, 1.4, -1.0, 0.2, 0.8])
    prompt, output = [1, 2], [4, 4]
    expected = np.exp(reference_log_distribution(logits_row.numpy(), params, prompt, output, []))
    num_draws = 40_000
    torch.manual_seed(1234)
    # Many identical rows in one call: each row is an independent draw from the same distribution.
    rows = [SamplingRow(params, prompt, output) for _ in range(num_draws)]
    tokens = Sampler()(logits_row.expand(num_draws, FREQ_VOCAB).contiguous(), rows).token_ids
    assert_frequencies_match(tokens, expected)


TRUNCATED_CASES = [
    SamplingParams(temperature=0.9, top_k=12),
    SamplingParams(temperature=1.3, top_p=0.6),
    SamplingParams(temperature=1.0, min_p=0.3),
    SamplingParams(temperature=0.7, top_k=40, top_p=0.9),  # Ollama's defaults
]


@pytest.mark.parametrize("case", range(len(TRUNCATED_CASES)))
def test_unseeded_frequencies_when_truncation_keeps_few_of_a_large_vocabulary(case: int) -> None:
    """Truncation that keeps a few of 300 tokens: on the CPU the race then runs over the kept ones only
    (draw_tokens' compact path); the frequencies must still be the documented distribution's."""
    params = TRUNCATED_CASES[case]
    logits_row = make_logits(1, vocab=300, seed=7, scale=1.5)[0]
    expected = np.exp(reference_log_distribution(logits_row.numpy(), params, [], [], []))
    assert 3 <= (expected > 0).sum() < 150  # under half kept: the compact race is the one that runs
    num_draws = 20_000
    torch.manual_seed(99)
    rows = [SamplingRow(params, [], []) for _ in range(num_draws)]
    tokens = Sampler()(logits_row.expand(num_draws, 300).contiguous(), rows).token_ids
    assert_frequencies_match(tokens, expected)


def test_seeded_sampling_frequencies() -> None:
    params = SamplingParams(temperature=0.9, top_k=6, seed=0)
    logits_row = torch.tensor([1.0, 0.5, 0.0, -0.3, 1.4, -1.0, 0.2, 0.8])
    expected = np.exp(reference_log_distribution(logits_row.numpy(), params, [], [], []))
    # Across seeds (one row per seed) ...
    rows = [SamplingRow(params, [], [], generator=torch.Generator().manual_seed(s)) for s in range(5000)]
    tokens = Sampler()(logits_row.expand(len(rows), FREQ_VOCAB).contiguous(), rows).token_ids
    assert_frequencies_match(tokens, expected)
    # ... and along one seeded request's steps.
    row = SamplingRow(params, [], [], generator=torch.Generator().manual_seed(99))
    sampler = Sampler()
    tokens = [sampler(logits_row.unsqueeze(0), [row]).token_ids[0] for _ in range(3000)]
    assert_frequencies_match(tokens, expected)


# ---------------------------------------------------------------- seeded reproducibility


def step_logits(step: int, num_rows: int, vocab: int = 64) -> torch.Tensor:
    # The same logits for every row at a given step, so that a row's history is the only thing that differs.
    return make_logits(1, vocab=vocab, seed=1000 + step, scale=1.5).expand(num_rows, vocab).contiguous()


def run_seeded(target: SamplingParams, position: int, neighbours: list[SamplingParams], steps: int = 25):
    """Generate `steps` tokens for `target` at row `position` among `neighbours`; returns its tokens."""
    all_params = list(neighbours)
    all_params.insert(position, target)
    rows = [
        SamplingRow(
            p,
            [1, 2, 3],
            [],
            generator=torch.Generator().manual_seed(p.seed) if p.seed is not None else None,
            eos_token_ids=[0],
        )
        for p in all_params
    ]
    sampler = Sampler()
    for step in range(steps):
        out = sampler(step_logits(step, len(rows)), rows)
        for row, token in zip(rows, out.token_ids, strict=True):
            row.output_token_ids.append(token)
    return rows[position].output_token_ids


def test_seed_reproducible_regardless_of_batch() -> None:
    target = SamplingParams(temperature=1.1, top_p=0.95, repetition_penalty=1.2, seed=1234)
    neighbours = [
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0.7),  # unseeded: draws from the global generator
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.5, top_k=10, seed=1234 + 1),
    ]
    torch.manual_seed(0)
    alone = run_seeded(target, 0, [])
    torch.manual_seed(1)
    first = run_seeded(target, 0, neighbours)
    torch.manual_seed(2)
    middle = run_seeded(target, 3, neighbours)
    last = run_seeded(target, 4, neighbours[::-1])
    assert alone == first == middle == last
    assert len(set(alone)) > 3, "the test should exercise real sampling"
    other_seed = run_seeded(target.clone(seed=4321), 0, [])
    assert other_seed != alone


# ---------------------------------------------------------------- greedy and logprobs


def test_greedy_is_argmax_lowest_index_on_ties() -> None:
    logits = torch.tensor([[0.0, 2.0, 5.0, 5.0], [7.0, 7.0, 1.0, 0.0], [-1.0, -3.0, -1.0, -2.0]])
    rows = [SamplingRow(SamplingParams(temperature=0.0), [], []) for _ in range(3)]
    assert Sampler()(logits, rows).token_ids == [2, 0, 0]
    big = make_logits(16, vocab=1000, seed=3)
    rows = [SamplingRow(SamplingParams(temperature=0.0), [], []) for _ in range(16)]
    assert Sampler()(big, rows).token_ids == [int(np.argmax(r)) for r in big.numpy()]


def reference_ranks(logprobs: np.ndarray, tokens) -> dict[int, int]:
    return {t: 1 + int((logprobs > logprobs[t]).sum()) for t in tokens}


def test_logprobs_are_raw_log_softmax_with_ranks() -> None:
    logits = make_logits(4, vocab=300, seed=11)
    params = [
        SamplingParams(temperature=0.0, logprobs=5),
        SamplingParams(temperature=0.7, top_k=3, repetition_penalty=2.0, logprobs=3),  # processing ignored
        SamplingParams(temperature=1.0),  # no logprobs
        SamplingParams(temperature=0.0, logprobs=0),  # just the chosen token
    ]
    rows = [SamplingRow(p, [1, 2], [3]) for p in params]
    out = Sampler()(logits, rows)
    for i, p in enumerate(params):
        if p.logprobs is None:
            assert out.logprobs[i] is None and out.ranks[i] is None
            continue
        ref = log_softmax(logits[i].numpy())
        top = list(np.argsort(-ref, kind="stable")[: p.logprobs])
        chosen = out.token_ids[i]
        assert set(out.logprobs[i]) == set(top) | {chosen}
        assert next(iter(out.logprobs[i])) == chosen  # the chosen token comes first, as in vLLM
        for token, value in out.logprobs[i].items():
            assert value == pytest.approx(ref[token], abs=1e-5)
        assert out.ranks[i] == reference_ranks(ref, out.logprobs[i])
    assert out.ranks[0][out.token_ids[0]] == 1
    as_logprob = out.logprob_dict(0)
    assert as_logprob[out.token_ids[0]].rank == 1
    assert as_logprob[out.token_ids[0]].logprob == out.logprobs[0][out.token_ids[0]]


def test_sampled_token_included_outside_top_k() -> None:
    logits = make_logits(1, vocab=100, seed=4)
    unlikely = int(torch.argmin(logits[0]))
    params = SamplingParams(temperature=0.0, logprobs=2, logit_bias={unlikely: 100.0})
    out = Sampler()(logits, [SamplingRow(params, [], [])])
    assert out.token_ids == [unlikely]
    ref = log_softmax(logits[0].numpy())
    assert len(out.logprobs[0]) == 3
    assert out.logprobs[0][unlikely] == pytest.approx(ref[unlikely], abs=1e-5)  # raw, before the bias
    assert out.ranks[0][unlikely] == 100


def test_prompt_logprobs() -> None:
    prompt = [5, 17, 2, 2, 29, 11, 8]
    logits = make_logits(len(prompt), vocab=30, seed=8)
    result = prompt_logprobs(logits, prompt, num_top=3)
    assert len(result) == len(prompt) and result[0] is None
    for pos in range(1, len(prompt)):
        ref = log_softmax(logits[pos - 1].numpy())
        top = set(np.argsort(-ref, kind="stable")[:3].tolist())
        entry = result[pos]
        assert set(entry) == top | {prompt[pos]}
        for token, lp in entry.items():
            assert lp.logprob == pytest.approx(ref[token], abs=1e-5)
            assert lp.rank == reference_ranks(ref, [token])[token]
    # Chunked prefill: chunks starting at their first position concatenate to the whole.
    chunked = prompt_logprobs(logits[:3], prompt, 3, start=0) + prompt_logprobs(
        logits[3:], prompt, 3, start=3
    )
    assert chunked == result
    assert [list(e) for e in prompt_logprobs(logits, prompt, 0)[1:]] == [[t] for t in prompt[1:]]


def test_tied_logprobs_share_the_best_rank() -> None:
    logits = torch.tensor([[3.0, 3.0, 1.0, 1.0, 0.0]])
    out = Sampler()(logits, [SamplingRow(SamplingParams(temperature=0.0, logprobs=4), [], [])])
    assert out.token_ids == [0]
    assert out.ranks[0] == {0: 1, 1: 1, 2: 3, 3: 3}


def test_penalties_follow_growing_and_rewound_outputs_across_steps() -> None:
    """The sampler keeps token arrays between steps; it must see appends, rewinds and new lists."""
    vocab = 50
    cases = [
        SamplingParams(temperature=0.0, repetition_penalty=1.4, frequency_penalty=0.6),
        SamplingParams(temperature=0.0, presence_penalty=1.5, penalty_window=6),
        SamplingParams(temperature=0.0, frequency_penalty=2.0, repetition_penalty=2.0, penalty_window=3),
    ]
    rows = [SamplingRow(p, [4, 8, 15, 16, 23, 42], []) for p in cases]
    sampler = Sampler()
    for step in range(40):
        logits = make_logits(1, vocab=vocab, seed=step, scale=0.5).expand(len(rows), vocab).contiguous()
        logits[:, 7] += 3.0  # a strong favourite that the penalties must push away
        out = sampler(logits, rows)
        for row, token in zip(rows, out.token_ids, strict=True):
            expected = reference_log_distribution(
                logits[0].numpy(), row.params, row.prompt_token_ids, row.output_token_ids, []
            )
            assert token == int(np.argmax(expected))
            row.output_token_ids.append(token)
        if step == 20:
            del rows[0].output_token_ids[-5:]  # rewound in place (shorter): converted afresh
            rows[1].output_token_ids = list(rows[1].output_token_ids)  # a new list object
            rows[2].output_token_ids[-1] = 49  # in-place edit of the newest token: penalty_window=3 sees it
    assert len(set(rows[0].output_token_ids)) > 3


def test_head_values_from_chunk_maxima_equal_topk() -> None:
    """The CPU's topk for long rows (only values >= the head-th largest chunk maximum can be in the head)
    must give torch's topk values exactly: random rows, rows of ties, a row mostly -inf, an all--inf row."""
    from ladle.engine.sampling.truncation import _head_values

    g = torch.Generator().manual_seed(5)
    vocab = 70_001  # not a multiple of the chunk count
    rows = torch.randn(6, vocab, generator=g)
    rows[1] = torch.randint(0, 4, (vocab,), generator=g).float()  # few distinct values: ties everywhere
    rows[2] = float("-inf")
    rows[2, torch.randperm(vocab, generator=g)[:30]] = torch.randn(30, generator=g)  # fewer finite than head
    rows[3] = float("-inf")
    rows[4, :500] += 10.0  # the whole head packed into the first chunks
    for head in (1, 41, 257, 1025):
        assert torch.equal(_head_values(rows, head), rows.topk(head, dim=-1).values), head
