"""Builds and loads ladle's native CPU kernels: every csrc/*.c file (the GGML-format matmuls, the thread pool
they share) in one library.

The library is compiled on first use with the system C compiler (`cc -O3 -march=native -pthread`) into
~/.cache/ladle/kernels/, keyed by a hash of the source, the flags and the CPU, and called through ctypes,
which releases the GIL. Without a compiler (or with LADLE_NATIVE_KERNELS=0) `native_kernels()` returns
None and callers fall back to float32 weights, so ladle still runs, only slower and bigger.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"


def _sources() -> list[Path]:
    return sorted(_CSRC.glob("*.c"))


def _source_digest_input() -> bytes:
    """Every file the build reads (sources and headers), so editing any of them rebuilds."""
    return b"".join(p.name.encode() + p.read_bytes() for p in sorted(_CSRC.glob("*.[ch]")))


# The int8 path (ggml's way: activations rounded to 8 bits per 32 values) is the fastest but adds ~1% error
# per matmul; the float path is exact up to summation order and, at batch 1, about 1.5-2x slower. "auto"
# takes the float path for K-quant matrices only: in Q4_K_M files those are attn_output and
# ffn_down, whose inputs carry outliers ~100x their RMS, and they are small, so exactness there is cheap.
# LADLE_QUANT_MATMUL=int8|float|auto overrides.
FLOAT_MAX_ROWS = 8
_K_QUANTS = {12, 13, 14}  # Q4_K, Q5_K, Q6_K


def choose_method(qtype: int, rows: int) -> str:
    mode = os.environ.get("LADLE_QUANT_MATMUL", "auto")
    if mode in ("int8", "float"):
        return mode
    return "float" if int(qtype) in _K_QUANTS else "int8"


# Tried in order: the last one is for compilers that do not know -march=native.
_FLAG_SETS = (["-O3", "-march=native", "-pthread"], ["-O3", "-pthread"])


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ladle" / "kernels"


def _cpu_fingerprint() -> str:
    """Distinguishes machines sharing a home directory: -march=native code must not run on a lesser CPU."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{platform.processor()}|{flags}"


def _compile(compiler: str, flags: list[str], output: Path) -> bool:
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        tmp_out = Path(tmp) / output.name
        sources = [str(p) for p in _sources()]
        cmd = [compiler, *flags, "-std=gnu11", "-shared", "-fPIC", *sources, "-o", str(tmp_out), "-lm"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            log.debug("kernel build failed: %s\n%s", " ".join(cmd), result.stderr)
            return False
        os.replace(tmp_out, output)  # atomic: a concurrent process sees the old file or the whole new one
    return True


class NativeKernels:
    """ctypes wrapper of the compiled library."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        lib.ladle_supports.argtypes = [ctypes.c_int]
        lib.ladle_supports.restype = ctypes.c_int
        lib.ladle_has_avx2.restype = ctypes.c_int
        lib.ladle_act_row_bytes.argtypes = [ctypes.c_int, ctypes.c_int64]
        lib.ladle_act_row_bytes.restype = ctypes.c_int64
        lib.ladle_quantize_activations.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        lib.ladle_quantize_activations.restype = None
        lib.ladle_matmul.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        lib.ladle_matmul.restype = ctypes.c_int
        lib.ladle_matmul_float.argtypes = lib.ladle_matmul.argtypes
        lib.ladle_matmul_float.restype = ctypes.c_int
        self._lib = lib
        self.has_avx2 = bool(lib.ladle_has_avx2())

    def supports(self, qtype: int) -> bool:
        return bool(self._lib.ladle_supports(int(qtype)))

    def act_row_bytes(self, qtype: int, k: int) -> int:
        return int(self._lib.ladle_act_row_bytes(int(qtype), k))

    def quantize_activations(self, qtype: int, x: torch.Tensor) -> torch.Tensor:
        """[m, k] float32 -> the quantized activations qtype's kernel reads (uint8 [m, row bytes]): ggml's
        Q8_0 layout (f32 d, f32 s, i8 qs[32] per 32 values) or, for K-quants, Q8_K (f32 d, i16 bsums[16],
        i8 qs[256] per 256 values). For tests and inspection."""
        x = x.float().contiguous()
        m, k = x.shape
        out = torch.empty(m, self.act_row_bytes(qtype, k), dtype=torch.uint8)
        self._lib.ladle_quantize_activations(
            int(qtype), x.data_ptr(), m, k, out.data_ptr(), torch.get_num_threads()
        )
        return out

    def matmul(self, qtype: int, weight: torch.Tensor, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
        """x [m, k] float32 @ W.T, with W the raw rows of `weight` (uint8 [n, row_bytes]) -> [m, n].

        method "float" multiplies float activations with the decoded weights (exact up to summation order);
        "int8" quantizes the activations to 8 bits first, as ggml does (faster for many rows, ~1% error);
        "auto" decides with choose_method().
        """
        m, k = x.shape
        n = weight.shape[0]
        y = torch.empty(m, n, dtype=torch.float32)
        if method == "auto":
            method = choose_method(qtype, m)
        if method == "float":
            scratch = torch.empty(m * (k // 32), dtype=torch.float32)
            fn = self._lib.ladle_matmul_float
        else:
            scratch = torch.empty(m * self.act_row_bytes(qtype, k), dtype=torch.uint8)
            fn = self._lib.ladle_matmul
        rc = fn(
            int(qtype),
            weight.data_ptr(),
            weight.stride(0),
            n,
            k,
            x.data_ptr(),
            m,
            y.data_ptr(),
            scratch.data_ptr(),
            torch.get_num_threads(),
        )
        if rc != 0:
            raise ValueError(f"native matmul does not support GGML type {int(qtype)} with k={k}")
        return y


def build_kernels(flag_sets: tuple[list[str], ...] = _FLAG_SETS) -> NativeKernels | None:
    """Builds (or reuses a cached build of) the library with the first flag set that compiles."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.warning(
            "no C compiler found: quantized GGUF weights will be expanded to float32 (slower, larger)"
        )
        return None
    source = _source_digest_input()
    for flags in flag_sets:
        key = hashlib.sha256(source + repr((compiler, flags, _cpu_fingerprint())).encode()).hexdigest()[:16]
        path = _cache_dir() / f"ggml_matmul-{key}.so"
        if path.is_file() or _compile(compiler, flags, path):
            try:
                return NativeKernels(path)
            except OSError as exc:  # e.g. a truncated file left by a crash: rebuild once
                log.debug("could not load %s: %s", path, exc)
                if _compile(compiler, flags, path):
                    return NativeKernels(path)
    log.warning("building the quantized matmul kernels failed: GGUF weights will be expanded to float32")
    return None


@lru_cache(maxsize=1)
def native_kernels() -> NativeKernels | None:
    """The compiled kernels, building them on first call; None when disabled or no compiler works."""
    if os.environ.get("LADLE_NATIVE_KERNELS", "1").lower() in ("0", "false", "no", "off"):
        return None
    return build_kernels()
