"""PenaltyCounts: the penalties' per-sequence token counts, carried from step to step (dense tables on the
logits' device, or host dicts on the CPU), must always equal counts made afresh from the lists (a plain
Counter over the window, here); apply_penalties on either must follow the documented rules."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from ladle.engine.sampling.penalties import apply_penalties
from ladle.engine.sampling.penalty_counts import PenaltyCounts
from ladle.engine.sampling.types import SamplingRow
from ladle.sampling_params import SamplingParams

VOCAB = 40
DENSE = pytest.mark.parametrize("dense", [True, False], ids=["dense", "dicts"])


def expected_counts(row: SamplingRow, pending_value: int | None) -> tuple[Counter, Counter]:
    """Counter of the window's tokens, and of its output tokens: the documented rule, written plainly."""
    sequence = list(row.prompt_token_ids) + list(row.output_token_ids)
    if pending_value is not None:
        sequence.append(pending_value)
    window = row.params.penalty_window
    start = 0 if window is None or window < 0 else max(0, len(sequence) - window)
    in_vocab = [(pos, t) for pos, t in enumerate(sequence) if pos >= start and 0 <= t < VOCAB]
    return Counter(t for _, t in in_vocab), Counter(
        t for pos, t in in_vocab if pos >= len(row.prompt_token_ids)
    )


def check(counts: PenaltyCounts, rows: list[SamplingRow], pending: list[int | None]) -> None:
    """update() over the rows (the given pending values in flight), then every row against the reference."""
    pending_tokens = torch.tensor([v if v is not None else 0 for v in pending])
    for row, value in zip(rows, pending, strict=True):
        row.pending_index = None if value is None else pending.index(value)
    slots = counts.update(rows, VOCAB, torch.device("cpu"), pending_tokens)
    assert len(set(slots)) == len(rows)
    for row, value, slot in zip(rows, pending, slots, strict=True):
        window, output = expected_counts(row, value)
        assert counts.counted(slot) == (window, output), row.params.penalty_window


def make_rows(rng: random.Random, windows: list[int | None]) -> list[SamplingRow]:
    return [
        SamplingRow(
            SamplingParams(repetition_penalty=1.3, frequency_penalty=0.5, penalty_window=w),
            [rng.randrange(VOCAB) for _ in range(rng.randint(0, 12))],
            [],
        )
        for w in windows
    ]


@DENSE
def test_counts_follow_appends_and_tokens_in_flight_under_every_window(dense: bool) -> None:
    """The engine's pattern under async scheduling: each step one token in flight on the device, which is
    on the host (appended) by the next step; windows smaller than one step's slide, than the prompt, and
    none at all."""
    rng = random.Random(0)
    counts = PenaltyCounts(dense=dense)
    rows = make_rows(rng, [None, -1, 1, 2, 3, 7, 30])
    in_flight: list[int | None] = [None] * len(rows)
    for step in range(25):
        for i, row in enumerate(rows):
            if in_flight[i] is not None:
                row.output_token_ids.append(in_flight[i])
        in_flight = [rng.randrange(VOCAB) if step % 5 != 4 else None for _ in rows]  # some sync steps
        check(counts, rows, in_flight)


@DENSE
def test_rewinds_replaced_tokens_new_lists_and_jumps_rebuild(dense: bool) -> None:
    rng = random.Random(1)
    counts = PenaltyCounts(dense=dense)
    rows = make_rows(rng, [None, 4, 2, 6])
    for row in rows:
        row.output_token_ids.extend(rng.randrange(VOCAB) for _ in range(8))
    check(counts, rows, [None] * 4)
    del rows[0].output_token_ids[-3:]  # rewound in place
    rows[1].output_token_ids[-1] = (rows[1].output_token_ids[-1] + 1) % VOCAB  # newest token replaced
    rows[2].output_token_ids = list(rows[2].output_token_ids) + [5]  # a new list object
    rows[3].output_token_ids.extend(rng.randrange(VOCAB) for _ in range(20))  # a jump past the window
    check(counts, rows, [None, 3, None, 9])
    rows[1].output_token_ids.append(3)
    rows[3].output_token_ids.append(9)
    check(counts, rows, [None] * 4)


@DENSE
def test_out_of_vocab_ids_are_skipped_and_empty_rows_count_nothing(dense: bool) -> None:
    counts = PenaltyCounts(dense=dense)
    rows = [
        SamplingRow(SamplingParams(repetition_penalty=1.2), [VOCAB + 5, 3, -1, 3], [VOCAB]),
        SamplingRow(SamplingParams(presence_penalty=0.4), [], []),
    ]
    check(counts, rows, [None, None])
    rows[1].output_token_ids.append(VOCAB + 1)
    check(counts, rows, [None, None])


@DENSE
def test_slots_are_given_back_reused_and_the_tables_grow(dense: bool) -> None:
    """Sequences missing from a step (finished, preempted) give their slot back; a new sequence reusing it
    starts from zero; more sequences than the tables hold grow them without losing any counts."""
    rng = random.Random(2)
    counts = PenaltyCounts(dense=dense)
    first = make_rows(rng, [None] * 8)
    for row in first:
        row.output_token_ids.extend(rng.randrange(VOCAB) for _ in range(6))
    check(counts, first, [None] * 8)
    capacity = counts.capacity
    assert capacity == 8  # full: new sequences below must take finished ones' slots
    later = [first[0], first[2], *make_rows(rng, [3] * 3)]  # six finished; three new ones arrive
    check(counts, later, [None] * 5)
    assert counts.capacity == capacity  # the new ones took the finished ones' slots
    crowd = later + make_rows(rng, [None, 5] * 10)
    for _ in range(3):
        for row in crowd:
            row.output_token_ids.append(rng.randrange(VOCAB))
        check(counts, crowd, [None] * len(crowd))
    assert counts.capacity >= len(crowd)
    preempted_and_back = crowd[:3]
    check(counts, crowd[3:], [None] * (len(crowd) - 3))
    preempted_and_back[0].output_token_ids.append(1)
    check(counts, preempted_and_back, [None] * 3)


@DENSE
def test_a_new_vocabulary_starts_new_tables(dense: bool) -> None:
    counts = PenaltyCounts(dense=dense)
    row = SamplingRow(SamplingParams(repetition_penalty=1.2), [1, 2, 3], [4])
    counts.update([row], VOCAB, torch.device("cpu"))
    slots = counts.update([row], 2 * VOCAB, torch.device("cpu"))
    assert counts.counted(slots[0])[0] == {1: 1, 2: 1, 3: 1, 4: 1}
    assert counts.window_counts is None or counts.window_counts.shape[1] == 2 * VOCAB


@DENSE
def test_reserved_tables_hold_that_many_sequences_without_growing(dense: bool) -> None:
    """The engine reserves max_num_seqs rows before it sizes the KV pool: they must then never grow."""
    rng = random.Random(3)
    counts = PenaltyCounts(dense=dense)
    counts.reserve(300, VOCAB, torch.device("cpu"))
    assert counts.capacity == 300
    assert counts.nbytes == (2 * 300 * VOCAB * 4 if dense else 0)
    tables = counts.window_counts
    rows = make_rows(rng, [None, 2] * 150)
    check(counts, rows, [None] * 300)
    later = rows[:100] + make_rows(rng, [5] * 200)
    check(counts, later, [None] * 300)
    assert counts.window_counts is tables and counts.capacity == 300


def reference_penalized(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The documented rules, token by token in float64: repetition over the window (divide positive logits,
    multiply negative ones), then frequency * count + presence for the window's output tokens."""
    out = logits.double().clone()
    for i, row in enumerate(rows):
        p = row.params
        if p.penalty_window == 0:
            continue
        window, output = expected_counts(row, None)
        for token in window:
            value = out[i, token]
            out[i, token] = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        for token, count in output.items():
            out[i, token] -= p.frequency_penalty * count + p.presence_penalty
    return out


def test_penalties_applied_from_either_kind_of_counts_follow_the_rules_and_agree() -> None:
    """Over 12 steps of growing outputs (penalized rows mixed with a plain one and a window-0 one), the
    logits edited from dense tables and from host dicts both match the float64 reference, and each other
    bit for bit."""
    rng = random.Random(4)
    settings = [
        SamplingParams(repetition_penalty=1.7),
        SamplingParams(repetition_penalty=0.8, frequency_penalty=0.5, penalty_window=5),
        SamplingParams(presence_penalty=1.1, frequency_penalty=-0.3),
        SamplingParams(),  # no penalties: left alone
        SamplingParams(repetition_penalty=2.0, penalty_window=0),  # window 0: penalties off
        SamplingParams(frequency_penalty=0.7, presence_penalty=0.2, repetition_penalty=1.2, penalty_window=2),
    ]
    rows = [SamplingRow(p, [rng.randrange(VOCAB) for _ in range(rng.randint(0, 9))], []) for p in settings]
    dense, dicts = PenaltyCounts(dense=True), PenaltyCounts(dense=False)
    for _ in range(12):
        logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(rng.randrange(99)))
        from_dense = apply_penalties(logits.clone(), rows, dense)
        from_dicts = apply_penalties(logits.clone(), rows, dicts)
        assert torch.equal(from_dense, from_dicts)
        torch.testing.assert_close(
            from_dicts.double(), reference_penalized(logits, rows), rtol=1e-6, atol=1e-6
        )
        assert not torch.equal(from_dicts, logits)
        for row in rows:
            row.output_token_ids.append(rng.randrange(VOCAB))


@DENSE
def test_tables_first_made_under_inference_mode_take_later_steps(dense: bool) -> None:
    """The engine's profile step samples under inference mode; the steps after it do not."""
    counts = PenaltyCounts(dense=dense)
    row = SamplingRow(SamplingParams(repetition_penalty=1.2), [1, 2], [3])
    with torch.inference_mode():
        apply_penalties(torch.zeros(1, VOCAB), [row], counts)
    row.output_token_ids.append(4)
    out = apply_penalties(torch.ones(1, VOCAB), [row], counts)
    assert counts.counted(0)[0] == {1: 1, 2: 1, 3: 1, 4: 1}
    assert out[0, :6].tolist() == pytest.approx([1, 1 / 1.2, 1 / 1.2, 1 / 1.2, 1 / 1.2, 1])
