"""Whether the Triton kernels can run here (CUDA and the triton package), asked once per process."""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_ops_enabled(x: torch.Tensor) -> bool:
    """Ladle's Triton kernels for this tensor (the fused elementwise ops, GPU sampling, the single-row GEMV):
    CUDA only; LADLE_FUSED_OPS=0 turns these off (not the attention backend), e.g. to A/B them against torch."""
    return x.is_cuda and triton_available() and os.environ.get("LADLE_FUSED_OPS", "1") != "0"
