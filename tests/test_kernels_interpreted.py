"""Without a GPU, ladle's Triton kernel tests run once more under Triton's CPU interpreter, so every `pytest`
(CI included) executes the GEMV, attention, argmax/sampling and PDL kernels' indexing, masks and split
combines on small float32 shapes. TRITON_INTERPRET=1 must be set before Triton is imported, hence a
subprocess. On a GPU the same files run natively instead, and this test skips.

Left to the GPU runs: the few sampling tests whose statistics need large vocabularies or many draws (minutes
in the interpreter), and the fused elementwise kernels, whose libdevice calls the interpreter lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from triton_targets import HAS_TRITON, INTERPRET, ON_GPU

FILES = [
    "test_kernels_gemv.py",
    "test_kernels_attention.py",
    "test_kernels_sampling.py",
    "test_kernels_pdl.py",
]
SLOW_IN_THE_INTERPRETER = [
    "frequencies_follow_softmax",
    "independent_noise",
    "every_block_of_a_large_vocabulary",
    "fully_masked_row",
]


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernel tests run natively")
@pytest.mark.skipif(INTERPRET, reason="this run is the interpreter's already")
def test_kernel_tests_pass_in_the_triton_interpreter() -> None:
    here = Path(__file__).parent
    deselect = " and ".join(f"not {name}" for name in SLOW_IN_THE_INTERPRETER)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", deselect]
    result = subprocess.run(
        command + [str(here / f) for f in FILES],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=here.parent,
    )
    assert result.returncode == 0, (
        f"interpreted kernel tests failed:\n{result.stdout[-4000:]}{result.stderr[-2000:]}"
    )
    assert " passed" in result.stdout.splitlines()[-1], result.stdout[-2000:]
