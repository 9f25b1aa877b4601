"""Builds and loads ladle's native CPU kernels: every csrc/*.c file (the GGML-format matmuls, the thread pool
they share, other CPU ops) in one library.

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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ladle.quant.row_groups import row_group_sizes

log = logging.getLogger(__name__)

_CSRC = Path(__file__).parent / "csrc"


def _sources() -> list[Path]:
    return sorted(_CSRC.glob("*.c"))


def _source_digest_input() -> bytes:
    """Every file the build reads (sources and headers), so editing any of them rebuilds."""
    return b"".join(p.name.encode() + p.read_bytes() for p in sorted(_CSRC.glob("*.[ch]")))


# "ggml" (the default, also "auto" and the old name "int8") computes what llama.cpp computes: activations
# quantized to the weight type's vec_dot_type (Q8_0, Q8_1 or Q8_K) and integer dot products, bit-exact but
# for the order of float additions (ggml_matmul.c). "float" multiplies float activations with the decoded
# weights (ggml_float_matmul.c): no activation rounding, so *not* llama.cpp's numbers; for comparisons.
# LADLE_QUANT_MATMUL=ggml|float|auto overrides the method callers ask for with "auto".
_METHODS = ("ggml", "int8", "float")


def choose_method(qtype: int, rows: int) -> str:
    """The method "auto" means for a product of `rows` activation rows with a qtype weight: "ggml" for every
    type and size (llama.cpp's numbers), unless LADLE_QUANT_MATMUL=float."""
    mode = os.environ.get("LADLE_QUANT_MATMUL", "auto")
    return "float" if mode == "float" else "ggml"


@dataclass(frozen=True)
class QuantizedInput:
    """Activations quantized once for every weight of one activation format (NativeKernels.act_format),
    e.g. q/k/v or gate/up, whatever their exact types: `data` is the kernels' internal layout."""

    act_format: int
    data: torch.Tensor
    shape: tuple[int, int]


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
            # A warning: a failed -march=native build falls back to the portable (much slower) flags.
            log.warning("kernel build failed: %s\n%s", " ".join(cmd), result.stderr[-2000:])
            return False
        os.replace(tmp_out, output)  # atomic: a concurrent process sees the old file or the whole new one
    return True


def bind_signatures(lib: ctypes.CDLL, signatures: dict[str, tuple[object, list]]) -> None:
    """Sets each named function's (restype, argtypes), once, so calls convert their arguments cheaply."""
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


class NativeKernels:
    """ctypes wrapper of the compiled library."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        i32, i64, ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
        # name: (restype, argtypes), as declared in csrc/*.c
        matmul_head = [i32, ptr, i64, i64, i64]  # qtype, weight rows, row bytes, rows, k
        signatures: dict[str, tuple[object, list]] = {
            "ladle_supports": (i32, [i32]),
            "ladle_has_avx2": (i32, []),
            "ladle_has_vnni": (i32, []),
            "ladle_has_amx": (i32, []),
            "ladle_act_format": (i32, [i32]),
            "ladle_act_row_bytes": (i64, [i32, i64]),
            "ladle_quantize_activations": (None, [i32, ptr, i64, i64, ptr, i32]),
            "ladle_activations_to_ggml": (None, [i32, ptr, i64, i64, ptr]),
            "ladle_matmul_float": (i32, [*matmul_head, ptr, i64, ptr, ptr, i32]),
            "ladle_matmul_quantized": (i32, [*matmul_head, ptr, i64, ptr, i64, ptr, i32]),
            "ladle_matmul_quantized_any_order": (i32, [*matmul_head, ptr, i64, ptr, i32]),
        }
        bind_signatures(lib, signatures)
        self._lib = lib
        self.lib = lib  # the raw handle, shared by the other bindings of this library (kernels/cpu_ops.py)
        self.has_avx2 = bool(lib.ladle_has_avx2())
        self.has_vnni = bool(lib.ladle_has_vnni())
        self.has_amx = bool(lib.ladle_has_amx())  # AMX tiles, for the LM head's any-order product

    def supports(self, qtype: int) -> bool:
        return bool(self._lib.ladle_supports(int(qtype)))

    def act_row_bytes(self, qtype: int, k: int) -> int:
        """Bytes per row of the internal quantized activations qtype's kernel reads."""
        return int(self._lib.ladle_act_row_bytes(int(qtype), k))

    def act_format(self, qtype: int) -> int:
        """0: Q8_0/Q8_1 activations (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights), 1: Q8_K (K-quants)."""
        return int(self._lib.ladle_act_format(int(qtype)))

    def quantize_input(self, qtype: int, x: torch.Tensor) -> QuantizedInput:
        """x [m, k] float32 quantized as ggml does for qtype's vec_dot_type, in the kernels' layout: pass it
        to matmul(..., quantized=) of every weight with the same act_format that multiplies x."""
        x = x.float().contiguous()
        m, k = x.shape
        out = torch.empty(m, self.act_row_bytes(qtype, k), dtype=torch.uint8)
        self._lib.ladle_quantize_activations(
            int(qtype), x.data_ptr(), m, k, out.data_ptr(), torch.get_num_threads()
        )
        return QuantizedInput(self.act_format(qtype), out, (m, k))

    def quantize_activations(self, qtype: int, x: torch.Tensor) -> torch.Tensor:
        """[m, k] float32 -> the bytes ggml's quantize_row_<vec_dot_type> gives (uint8 [m, row bytes]):
        block_q8_0 (f16 d, i8 qs[32]), block_q8_1 (f16 d, f16 s, i8 qs[32]) or, for K-quants, block_q8_K
        (f32 d, i8 qs[256], i16 bsums[16]). For tests and inspection."""
        q = self.quantize_input(qtype, x)
        m, k = q.shape
        block, size = (256, 292) if q.act_format else (32, 36 if int(qtype) in (3, 7) else 34)
        out = torch.empty(m, k // block * size, dtype=torch.uint8)
        self._lib.ladle_activations_to_ggml(int(qtype), q.data.data_ptr(), m, k, out.data_ptr())
        return out

    def matmul(
        self,
        qtype: int,
        weight: torch.Tensor,
        x: torch.Tensor | None,
        method: str = "auto",
        quantized: QuantizedInput | None = None,
        exact: bool = True,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [m, k] float32 @ W.T, with W the raw rows of `weight` (uint8 [n, row_bytes]) -> [m, n].

        method "ggml" ("int8", "auto") is llama.cpp's arithmetic (see _METHODS); "float" keeps the activations
        in float32. `quantized` (from quantize_input, same act_format) replaces x for the ggml method.
        exact=False (ggml method): the same products, added in the fastest order rather than llama.cpp's, for
        results that feed nothing later (an LM head's logits): they differ from ggml's in the last bits.
        `out`: a contiguous float32 [m, n] tensor to write the result into (ggml method), returned.
        """
        if method == "auto":
            method = choose_method(qtype, 0)
        if method not in _METHODS:
            raise ValueError(f"unknown quantized matmul method {method!r}")
        if method == "float":
            if x is None:
                raise ValueError("the float method needs the float activations")
            return self._matmul_float(qtype, weight, x)
        if quantized is None:
            quantized = self.quantize_input(qtype, x)
        elif quantized.act_format != self.act_format(qtype):
            raise ValueError(
                f"activations quantized for format {quantized.act_format}, not GGML type {qtype}"
            )
        (m, k), n = quantized.shape, weight.shape[0]
        y = torch.empty(m, n, dtype=torch.float32) if out is None else out
        if y.shape != (m, n) or y.dtype != torch.float32 or not y.is_contiguous():
            raise ValueError(f"matmul output: expected a contiguous float32 {(m, n)} tensor")
        if not exact:
            rc = self._lib.ladle_matmul_quantized_any_order(
                int(qtype), weight.data_ptr(), weight.stride(0), n, k, quantized.data.data_ptr(), m,
                y.data_ptr(), torch.get_num_threads(),
            )  # fmt: skip
            self._check(rc, qtype, k)
            return y
        sizes = row_group_sizes(m)
        rc = self._lib.ladle_matmul_quantized(
            int(qtype),
            weight.data_ptr(),
            weight.stride(0),
            n,
            k,
            quantized.data.data_ptr(),
            m,
            None if sizes is None else sizes.data_ptr(),
            0 if sizes is None else sizes.numel(),
            y.data_ptr(),
            torch.get_num_threads(),
        )
        self._check(rc, qtype, k)
        return y

    def _matmul_float(self, qtype: int, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        m, k = x.shape
        n = weight.shape[0]
        y = torch.empty(m, n, dtype=torch.float32)
        scratch = torch.empty(m * (k // 32), dtype=torch.float32)
        rc = self._lib.ladle_matmul_float(
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
        self._check(rc, qtype, k)
        return y

    @staticmethod
    def _check(rc: int, qtype: int, k: int) -> None:
        if rc == -2:
            raise MemoryError("native matmul: out of memory for its row plan")
        if rc != 0:
            raise ValueError(f"native matmul does not support GGML type {int(qtype)} with k={k}")


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
