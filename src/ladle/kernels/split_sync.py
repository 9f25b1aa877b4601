"""What a split launch needs so that its last program to finish can combine the others' partial results in
the same launch (no second kernel): a GPU-scope fence, and per-device arrival counters that every launch
leaves at 0, so a CUDA graph can replay it against the same counters.

Used by split-K decode attention (triton_attention) and split-K GEMV (triton_gemv). Importing this module
needs Triton.
"""

import os

import torch
import triton
import triton.language as tl

# Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is imported) has no inline asm, so split
# kernels skip fence_gpu there (its programs run one by one anyway); read once, not per launch.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def fence_gpu():
    # A one-element tensor is held by every thread, so every thread runs the fence.
    tl.inline_asm_elementwise(
        "fence.acq_rel.gpu; mov.u32 $0, $1;",
        "=r,r",
        [tl.zeros([1], tl.int32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


class SplitCounters:
    """Per-device int32 arrival counters of split launches; each launch leaves the ones it used at 0.
    Launches on one stream run one after another, so they can share one buffer, whichever kernel they are
    (not launches on two streams of one device at once). Grows only outside CUDA-graph capture and never
    frees a buffer it replaces: a graph captured earlier still points at it."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._retired: list[torch.Tensor] = []

    def get(self, device: torch.device, needed: int, caller: str) -> torch.Tensor:
        buf = self._buffers.get(device)
        if buf is not None and buf.numel() >= needed:
            return buf
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{caller}: its split counters would have to grow during CUDA-graph capture; run "
                "the same shape once before capturing it"
            )
        if buf is not None:
            self._retired.append(buf)
        size = max(needed, 1024, 2 * buf.numel() if buf is not None else 0)
        self._buffers[device] = torch.zeros(size, dtype=torch.int32, device=device)
        return self._buffers[device]


SPLIT_COUNTERS = SplitCounters()
