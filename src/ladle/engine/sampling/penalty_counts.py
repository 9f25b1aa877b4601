"""The penalties' token counts per sequence, kept on the logits' device from one step to the next.

Rebuilding [rows, vocab] masks from every row's whole prompt and output each step cost the host ~3-4 ms a
step at 256 rows of ~800 tokens (list walks, numpy concatenation, a multi-MB upload) and the GPU as much in
scatters. Here each penalized sequence owns a row of two [slots, vocab] int32 tables, and a step only adds
its new tokens (usually one, and under async scheduling that one is still on the device, never read back)
and, under a penalty_window, takes out the tokens that slid out of the window. vLLM's persistent batch keeps
the same kind of state for its penalties.

On the CPU the counts are dicts instead (`dense=False`): a step's penalties then touch only the tokens in
each window, where dense [rows, vocab] passes cost ~1 ms each at Gemma's 262k vocabulary (4.5 ms a step
for 4 rows, a fifth of a 270M model's step).

A sequence is known by its output list object (the engine's request keeps one list for its life). Output
lists are expected to grow by appends: a shorter list (a rewind), a replaced newest token or a new list
object rebuild the sequence's counts from its lists; an in-place edit of an older token is not looked for.
Prompt lists must not be edited in place (give the row a new list). Sequences missing from a step's
penalized rows give their slot back (finished or preempted; a preempted one is rebuilt when it returns), so
call update once a step with all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ladle.engine.sampling.types import SamplingRow, device_tensor, host_to_device


@dataclass
class _Slot:
    index: int  # row of the tables
    prompt: list[int]  # the row's prompt list: a new one means a new sequence
    # The output list, whose id keys the slot: holding it keeps that id from going to another list.
    output: list[int]
    num_positions: int  # prompt + output positions counted so far (a token in flight included)
    # The newest counted host output token and its position: an in-place replacement of it is seen.
    last_output_position: int
    last_output_token: int | None


class PenaltyCounts:
    """Per sequence, over the last `penalty_window` tokens of prompt + output (all of them without a window):
    the window's count of every token (repetition: seen = count > 0) and of its output tokens (frequency and
    presence). dense: [slots, vocab] tables on the logits' device (`window_counts`, `output_counts`), or
    per-slot dicts on the host; None picks dense everywhere but on the CPU."""

    def __init__(self, dense: bool | None = None) -> None:
        self._dense_choice = dense
        self._store: _DenseTables | _HostDicts | None = None
        self._slots: dict[int, _Slot] = {}  # id(output list) -> slot
        self._free: list[int] = []
        self._vocab_size: int | None = None
        self._device: torch.device | None = None

    @property
    def dense(self) -> bool:
        return isinstance(self._store, _DenseTables)

    @property
    def window_counts(self) -> torch.Tensor | None:
        """dense: [capacity, vocab] int32, the window's count of each token."""
        return self._store.window if isinstance(self._store, _DenseTables) else None

    @property
    def output_counts(self) -> torch.Tensor | None:
        """dense: [capacity, vocab] int32, the window's count of each output token."""
        return self._store.output if isinstance(self._store, _DenseTables) else None

    @property
    def capacity(self) -> int:
        """How many sequences the tables hold now."""
        return self._store.capacity if self._store is not None else 0

    @property
    def nbytes(self) -> int:
        return self._store.nbytes if self._store is not None else 0

    def update(
        self,
        rows: Sequence[SamplingRow],
        vocab_size: int,
        device: torch.device,
        pending_tokens: torch.Tensor | None = None,
    ) -> list[int]:
        """Bring the rows' counts up to date (their token in flight, pending_index, counted from the device
        without a host sync when dense) and return their slots."""
        self._ensure_tables(vocab_size, device)
        self._release_all_but(rows)
        arriving = sum(1 for row in rows if id(row.output_token_ids) not in self._slots)
        if arriving > len(self._free):
            self._grow(len(self._slots) + arriving)
        plan = _UpdatePlan(vocab_size)
        slots: list[int] = []
        for row in rows:
            slot = self._slots.get(id(row.output_token_ids))
            fresh = slot is None or not _still_valid(slot, row)
            if slot is None:
                slot = _Slot(self._free.pop(), row.prompt_token_ids, row.output_token_ids, 0, -1, None)
                self._slots[id(row.output_token_ids)] = slot
            if fresh:
                slot.prompt = row.prompt_token_ids
                plan.reset.append(slot.index)
            plan.add_row(slot, row, fresh)
            slots.append(slot.index)
        if plan.pending and pending_tokens is None:
            raise ValueError("rows with a pending_index need the pending_tokens they index")
        assert self._store is not None
        self._store.apply(plan, pending_tokens)
        return slots

    def sparse(self, slots: list[int]) -> tuple[np.ndarray, ...]:
        """Not dense: the counted tokens of the given slots as (rows, tokens) of the window, and (rows,
        tokens, counts) of its output, rows numbering `slots`' positions."""
        assert isinstance(self._store, _HostDicts)
        return self._store.sparse(slots)

    def counted(self, slot: int) -> tuple[dict[int, int], dict[int, int]]:
        """The slot's (window, output) counts as token -> count dicts (for tests and debugging)."""
        assert self._store is not None
        return self._store.counted(slot)

    def reserve(self, num_slots: int, vocab_size: int, device: torch.device) -> None:
        """Allocate the tables for num_slots sequences now (the engine does so before it sizes the KV pool
        on a GPU, so that they never grow into memory the pool took)."""
        self._ensure_tables(vocab_size, device)
        if self.capacity < num_slots:
            self._grow(num_slots)

    def _release_all_but(self, rows: Sequence[SamplingRow]) -> None:
        """Give back the slots of sequences this step's penalized rows don't include (finished, preempted),
        before any new sequence needs one."""
        present = {id(row.output_token_ids) for row in rows}
        for key in [k for k in self._slots if k not in present]:
            self._free.append(self._slots.pop(key).index)

    def _ensure_tables(self, vocab_size: int, device: torch.device) -> None:
        device = _resolved(device)  # "cuda" and "cuda:0" are one device: don't start over between them
        if vocab_size == self._vocab_size and device == self._device:
            return
        self._vocab_size, self._device = vocab_size, device
        dense = self._dense_choice if self._dense_choice is not None else device.type != "cpu"
        self._store = _DenseTables(vocab_size, device) if dense else _HostDicts()
        self._slots, self._free = {}, []

    def _grow(self, needed: int) -> None:
        """At least `needed` rows, and at least double (rare: the size follows the most penalized sequences
        seen at once, at most max_num_seqs)."""
        assert self._store is not None
        old = self._store.capacity
        new = max(needed, 8, 2 * old)
        self._store.grow(new)
        self._free.extend(range(new - 1, old - 1, -1))


class _DenseTables:
    """The counts as two [capacity, vocab] int32 tables on the logits' device, edited by scatters."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        # Normal tensors even when first made under inference mode (the engine's profile step): the tables
        # are edited in place by every later step, which an inference tensor refuses.
        with torch.inference_mode(False):
            empty = torch.zeros(0, vocab_size, dtype=torch.int32, device=device)
        self.window, self.output = empty, empty.clone()

    @property
    def capacity(self) -> int:
        return self.window.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.window, self.output))

    def grow(self, new: int) -> None:
        old = self.capacity
        grown = []
        with torch.inference_mode(False):
            for table in (self.window, self.output):
                bigger = torch.zeros(new, table.shape[1], dtype=table.dtype, device=table.device)
                bigger[:old] = table
                grown.append(bigger)
        self.window, self.output = grown

    def apply(self, plan: _UpdatePlan, pending_tokens: torch.Tensor | None) -> None:
        device = self.window.device
        if plan.reset:
            index = device_tensor(plan.reset, torch.long, device)
            self.window.index_fill_(0, index, 0)
            self.output.index_fill_(0, index, 0)
        pending_flat = None
        if plan.pending:  # slot * vocab + token of the tokens in flight, on the device (never read back)
            assert pending_tokens is not None
            slots = device_tensor([s for s, _ in plan.pending], torch.long, device)
            index = device_tensor([i for _, i in plan.pending], torch.long, device)
            pending_flat = slots * plan.vocab_size + pending_tokens.index_select(0, index).long()
        for table, flat, delta, arrays in (
            (self.window, plan.window_flat, plan.window_delta, plan.window_arrays),
            (self.output, plan.output_flat, plan.output_delta, plan.output_arrays),
        ):
            host_flat = np.concatenate([np.asarray(flat, dtype=np.int64), *arrays])
            host_delta = np.concatenate(
                [np.asarray(delta, dtype=np.int32), np.ones(len(host_flat) - len(flat), dtype=np.int32)]
            )
            index = host_to_device(torch.from_numpy(host_flat), device)
            values = host_to_device(torch.from_numpy(host_delta), device)
            if pending_flat is not None:
                index = torch.cat((index, pending_flat))
                values = torch.cat((values, torch.ones(len(pending_flat), dtype=torch.int32, device=device)))
            if index.numel():
                table.view(-1).index_add_(0, index, values)

    def counted(self, slot: int) -> tuple[dict[int, int], dict[int, int]]:
        result = []
        for table in (self.window, self.output):
            row = table[slot].cpu()
            tokens = row.nonzero().flatten().tolist()
            result.append(dict(zip(tokens, row[tokens].tolist(), strict=True)))
        return result[0], result[1]


class _HostDicts:
    """The counts as token -> count dicts per slot (only counts > 0), for applying to the counted tokens."""

    def __init__(self) -> None:
        self.window: list[dict[int, int]] = []
        self.output: list[dict[int, int]] = []

    @property
    def capacity(self) -> int:
        return len(self.window)

    nbytes = 0

    def grow(self, new: int) -> None:
        old = self.capacity
        self.window.extend({} for _ in range(new - old))
        self.output.extend({} for _ in range(new - old))

    def apply(self, plan: _UpdatePlan, pending_tokens: torch.Tensor | None) -> None:
        for slot in plan.reset:
            self.window[slot].clear()
            self.output[slot].clear()
        vocab = plan.vocab_size
        pending = []
        if plan.pending:  # a host tensor on the CPU: reading it costs no sync
            assert pending_tokens is not None
            tokens = pending_tokens.cpu().tolist()
            pending = [(s * vocab + tokens[i], 1) for s, i in plan.pending]
        for dicts, flat, delta, arrays in (
            (self.window, plan.window_flat, plan.window_delta, plan.window_arrays),
            (self.output, plan.output_flat, plan.output_delta, plan.output_arrays),
        ):
            edits = list(zip(flat, delta, strict=True)) + pending
            for array in arrays:
                values, counts = np.unique(array, return_counts=True)
                edits.extend(zip(values.tolist(), counts.tolist(), strict=True))
            for f, d in edits:
                counts_of = dicts[f // vocab]
                token = f % vocab
                count = counts_of.get(token, 0) + d
                if count:
                    counts_of[token] = count
                else:
                    del counts_of[token]

    def sparse(self, slots: list[int]) -> tuple[np.ndarray, ...]:
        arrays = []
        for dicts, with_counts in ((self.window, False), (self.output, True)):
            chosen = [dicts[s] for s in slots]
            lengths = [len(d) for d in chosen]
            arrays.append(np.repeat(np.arange(len(slots), dtype=np.int64), lengths))
            arrays.append(np.fromiter((t for d in chosen for t in d), dtype=np.int64, count=sum(lengths)))
            if with_counts:
                counts = (c for d in chosen for c in d.values())
                arrays.append(np.fromiter(counts, dtype=np.float32, count=sum(lengths)))
        return tuple(arrays)

    def counted(self, slot: int) -> tuple[dict[int, int], dict[int, int]]:
        return dict(self.window[slot]), dict(self.output[slot])


def _resolved(device: torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _still_valid(slot: _Slot, row: SamplingRow) -> bool:
    """Whether the counts can be carried forward: the same prompt list, nothing rewound, the newest counted
    host token unchanged. (The output list is the same: the slot was found by its id.)"""
    if slot.prompt is not row.prompt_token_ids:
        return False
    if slot.num_positions > len(row.prompt_token_ids) + row.num_output_tokens:
        return False
    pos = slot.last_output_position
    if pos >= 0 and slot.last_output_token is not None:
        return pos < len(row.output_token_ids) and row.output_token_ids[pos] == slot.last_output_token
    return True


def _window_start(num_positions: int, window: int | None) -> int:
    """First position of prompt + output that the penalties look at (penalty_window None or -1: all)."""
    if window is None or window < 0:
        return 0
    return max(0, num_positions - window)


class _UpdatePlan:
    """One step's edits to the counts, gathered on the host; the store applies them (on the device, a few
    scatters)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.reset: list[int] = []
        self.window_flat: list[int] = []  # slot * vocab + token
        self.window_delta: list[int] = []  # +1 or -1
        self.output_flat: list[int] = []
        self.output_delta: list[int] = []
        self.window_arrays: list[np.ndarray] = []  # whole windows of rebuilt slots (+1 each)
        self.output_arrays: list[np.ndarray] = []
        self.pending: list[tuple[int, int]] = []  # (slot, index into pending_tokens): +1 in both tables

    def add_row(self, slot: _Slot, row: SamplingRow, fresh: bool) -> None:
        prompt, output = row.prompt_token_ids, row.output_token_ids
        num_prompt, num_host = len(prompt), len(prompt) + len(output)
        total = num_prompt + row.num_output_tokens  # the token in flight is the last position
        window = row.params.penalty_window
        start = _window_start(total, window)
        if fresh or start > slot.num_positions:  # a new sequence, or a jump past the whole window
            if not fresh:
                self.reset.append(slot.index)
            self._add_window(slot.index, prompt, output, start, min(total, num_host))
        else:
            for pos in range(_window_start(slot.num_positions, window), start):  # slid out of the window
                self._edit(slot.index, _token_at(prompt, output, pos), -1, pos >= num_prompt)
            for pos in range(slot.num_positions, min(total, num_host)):
                self._edit(slot.index, _token_at(prompt, output, pos), +1, pos >= num_prompt)
        if row.pending_index is not None and total - 1 >= start and slot.num_positions < total:
            self.pending.append((slot.index, row.pending_index))
        slot.num_positions = total
        if output:
            slot.last_output_position, slot.last_output_token = len(output) - 1, output[-1]

    def _edit(self, slot: int, token: int, delta: int, is_output: bool) -> None:
        if not 0 <= token < self.vocab_size:  # an id past the logits can't be sampled or penalized
            return
        flat = slot * self.vocab_size + token
        self.window_flat.append(flat)
        self.window_delta.append(delta)
        if is_output:
            self.output_flat.append(flat)
            self.output_delta.append(delta)

    def _add_window(self, slot: int, prompt: list[int], output: list[int], start: int, end: int) -> None:
        num_prompt = len(prompt)
        prompt_part = np.asarray(prompt[start:num_prompt], dtype=np.int64)
        output_part = np.asarray(
            output[max(0, start - num_prompt) : max(0, end - num_prompt)], dtype=np.int64
        )
        base = slot * self.vocab_size
        for part, is_output in ((prompt_part, False), (output_part, True)):
            part = part[(part >= 0) & (part < self.vocab_size)] + base
            self.window_arrays.append(part)
            if is_output:
                self.output_arrays.append(part)


def _token_at(prompt: list[int], output: list[int], pos: int) -> int:
    return prompt[pos] if pos < len(prompt) else output[pos - len(prompt)]
