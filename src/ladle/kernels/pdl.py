"""Programmatic dependent launch (PDL, compute capability 9.0 and newer) for ladle's Triton kernels.

A batch-1 decode step is ~290 kernels in a row, most of them a few microseconds long, and each GEMV spends
its first and last microseconds with part of the GPU idle. Launched with PDL, a kernel's programs may be
scheduled as soon as every program of the kernel before it has signalled (pdl_release), instead of after that
kernel has ended; they then block in pdl_wait until it has ended and its writes are visible. What runs
before the wait overlaps the previous kernel's tail: the scheduling itself, and in the GEMV the first load of
its weights, which no kernel ever writes.

The contract each kernel launched with USE_PDL keeps: pdl_wait before its first read of anything an earlier
kernel may write and before its first store (the caching allocator hands a buffer one kernel has just read to
the next kernel's output). A kernel waits for the one before it, which waited for its own predecessor, so the
chain is ordered as without PDL; kernels launched without it (torch's, cuBLAS) start after the previous one
ends, as always. Blocks of a dependent start only once every block of the kernel before has started, so
waiting programs never hold SMs that an earlier kernel still needs.

LADLE_PDL=0 turns it off (e.g. to A/B it). Importing this module needs Triton.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ladle.kernels.split_sync import INTERPRETED

try:  # Triton >= 3.3 (the device has 3.6); older ones run the kernels without PDL
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    TRITON_HAS_PDL = True
except ImportError:  # pragma: no cover - depends on the Triton build
    TRITON_HAS_PDL = False

    @triton.jit
    def gdc_launch_dependents():
        pass

    @triton.jit
    def gdc_wait():
        pass


@functools.cache
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on this device launch with PDL: CUDA with compute capability >= 9.0 (griddepcontrol
    needs sm_90), a Triton that has it, not the CPU interpreter, and LADLE_PDL not 0."""
    if INTERPRETED or not TRITON_HAS_PDL or device.type != "cuda" or os.environ.get("LADLE_PDL", "1") == "0":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_major(index) >= 9


def pdl_launch_options(enabled: bool) -> dict[str, bool]:
    """The launch keyword that asks Triton for a PDL launch; empty when off, so that Triton builds (and the
    interpreter) that do not know it never see it."""
    return {"launch_pdl": True} if enabled else {}


def pdl_kernel_args(device: torch.device) -> dict[str, bool]:
    """What every ladle kernel launch on this device passes: its USE_PDL constexpr and, when on, the launch
    keyword (`kernel[grid](..., **pdl_kernel_args(x.device))`)."""
    enabled = pdl_enabled(device)
    return {"USE_PDL": enabled, **pdl_launch_options(enabled)}


@triton.jit
def pdl_release(USE_PDL: tl.constexpr):
    """Let the next kernel's programs be scheduled (once every program of this kernel has got here)."""
    if USE_PDL:
        gdc_launch_dependents()


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """Block until the previous kernel has ended and its writes are visible."""
    if USE_PDL:
        gdc_wait()


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """The start of a kernel that reads nothing before its predecessor ends: release, then wait."""
    pdl_release(USE_PDL)
    pdl_wait(USE_PDL)
