"""Where the Triton kernel tests can run: on CUDA with Triton, or on the CPU when TRITON_INTERPRET=1 is set
(Triton's interpreter, which must be chosen before Triton is imported) and there is no GPU."""

from __future__ import annotations

import os

import pytest
import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

ON_GPU = torch.cuda.is_available() and HAS_TRITON
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and HAS_TRITON and not torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
needs_kernels = pytest.mark.skipif(
    not (ON_GPU or INTERPRET), reason="needs CUDA and Triton (or TRITON_INTERPRET=1 for the CPU interpreter)"
)
