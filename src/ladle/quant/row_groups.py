"""Which rows of a forward pass belong to which sequence, as the quantized matmuls need to know.

llama.cpp's float summation order for a K-quant matmul depends on how many rows the call has: its vec_dot
below 8 rows, its tiled kernel from 8, the repacked Q4_K gemm on whole groups of 4 rows. llama.cpp computes
one sequence per call; ladle batches many. To give every sequence the numbers llama.cpp gives it alone (and
so results that do not depend on the rest of the batch), the matmul kernels take each row's sequence into
account. The model runner states the step's layouts here, as vLLM's forward context does for attention:
the rows per sequence of the whole step, and of the rows kept for the output (the last layer's MLP and the
LM head run on those). A matmul of m rows uses the layout whose rows add up to m; with none, all m rows
count as one sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_LAYOUTS: ContextVar[tuple[tuple[int, ...], ...]] = ContextVar("ladle_row_groups", default=())


@contextmanager
def sequence_rows(*layouts: Sequence[int]) -> Iterator[None]:
    """Within the block, a matmul whose row count equals sum(layout) treats its rows as len(layout)
    sequences of layout[i] consecutive rows each (the first matching layout wins)."""
    token = _LAYOUTS.set(tuple(tuple(int(n) for n in layout) for layout in layouts))
    try:
        yield
    finally:
        _LAYOUTS.reset(token)


def row_groups(m: int) -> tuple[int, ...] | None:
    """The rows per sequence of a matmul of m rows under the current layouts, or None (one sequence)."""
    for layout in _LAYOUTS.get():
        if sum(layout) == m:
            return layout
    return None


def row_group_sizes(m: int) -> torch.Tensor | None:
    """row_groups(m) as the int32 array the native matmuls take, or None (one sequence)."""
    groups = row_groups(m)
    return None if groups is None else torch.tensor(groups, dtype=torch.int32)
