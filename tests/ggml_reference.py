"""ggml's own CPU kernels, called through ctypes on the shared libraries llama-cpp-python ships, as the
reference ladle's quantized matmuls must reproduce.

`GGMLReference.mul_mat` builds a one-node ggml graph (ggml_mul_mat of a weight tensor holding the given raw
GGUF rows and a float32 input) and runs it on ggml's CPU backend. Two routes, because llama.cpp takes both:
- plain: the weight lives in an ordinary CPU buffer, as in any ggml program. ggml then quantizes the input
  to the weight type's vec_dot_type (Q8_0 / Q8_1 / Q8_K) and uses llamafile_sgemm, the tiled K-quant
  kernels (8+ rows) or the vec_dot kernels.
- repack: the weight lives in the CPU_REPACK buffer type, which llama.cpp uses by default for the weights
  it can repack on this CPU (on AVX2: Q4_0 and Q4_K with a multiple of 8 rows, Q2_K on AVX-512, IQ4_NL,
  MXFP4). The weight is interleaved 8 rows at a time (Q4_Kx8) and multiplied by gemv/gemm kernels whose
  input is quantized as Q8_K, 4 rows interleaved (Q8_Kx4), the rows after the last multiple of 4 as Q8_K.
  `llama_route` says which route llama.cpp's model loader gives a weight.

`quantize_row` returns ggml's `quantize_row_q8_0/q8_1/q8_K` bytes (the x86 versions this library was built
with) and `quantize_mat_q8_K_4x8` the interleaved Q8_Kx4 layout, for comparing ladle's activation bytes.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

# GGML type ids and block geometry (values per block, bytes per block) of the activation formats.
Q8_0, Q8_1, Q8_K = 8, 9, 15
F32 = 0
_ACT_BLOCK = {Q8_0: (32, 34), Q8_1: (32, 36), Q8_K: (256, 292)}
# ggml's type_traits_cpu[type].vec_dot_type for the types ladle keeps packed.
VEC_DOT_TYPE = {2: Q8_0, 3: Q8_1, 6: Q8_0, 7: Q8_1, 8: Q8_0, 10: Q8_K, 11: Q8_K, 12: Q8_K, 13: Q8_K, 14: Q8_K}
# (values per block, bytes per block) of the weight types.
WEIGHT_BLOCK = {
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
}


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _lib_dir() -> Path | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    path = Path(os.path.dirname(llama_cpp.__file__)) / "lib"
    return path if (path / "libggml-cpu.so").exists() else None


def _fn(lib: ctypes.CDLL, name: str, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


class GGMLReference:
    """ggml's mul_mat and activation quantizers (see the module docstring)."""

    def __init__(self, lib_dir: Path) -> None:
        mode = ctypes.RTLD_GLOBAL
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"), mode=mode)
        cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"), mode=mode)
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._init = _fn(base, "ggml_init", p, _InitParams)
        self._free = _fn(base, "ggml_free", None, p)
        self._new_2d = _fn(base, "ggml_new_tensor_2d", p, p, i32, i64, i64)
        self._mul_mat = _fn(base, "ggml_mul_mat", p, p, p, p)
        self._new_graph = _fn(base, "ggml_new_graph", p, p)
        self._expand = _fn(base, "ggml_build_forward_expand", None, p, p)
        self._alloc = _fn(base, "ggml_backend_alloc_ctx_tensors_from_buft", p, p, p)
        self._buffer_free = _fn(base, "ggml_backend_buffer_free", None, p)
        self._set = _fn(base, "ggml_backend_tensor_set", None, p, p, ctypes.c_size_t, ctypes.c_size_t)
        self._get = _fn(base, "ggml_backend_tensor_get", None, p, p, ctypes.c_size_t, ctypes.c_size_t)
        self._compute = _fn(base, "ggml_backend_graph_compute", i32, p, p)
        self._cpu_buft = _fn(base, "ggml_backend_cpu_buffer_type", p)()
        # C++ symbol (no C declaration in the public headers): ggml_backend_cpu_repack_buffer_type().
        self._repack_buft = _fn(cpu, "_Z35ggml_backend_cpu_repack_buffer_typev", p)()
        _fn(cpu, "ggml_cpu_init", None)()
        self._backend = _fn(cpu, "ggml_backend_cpu_init", p)()
        self._set_threads = _fn(cpu, "ggml_backend_cpu_set_n_threads", None, p, i32)
        self._set_threadpool = _fn(cpu, "ggml_backend_cpu_set_threadpool", None, p, p)
        self._threadpool_params_init = _fn(base, "ggml_threadpool_params_init", None, p, i32)
        self._threadpool_new = _fn(cpu, "ggml_threadpool_new", p, p)
        self._threadpools: dict[int, int] = {}
        self._has_avx2 = bool(_fn(cpu, "ggml_cpu_has_avx2", i32)())
        self._has_avx512 = bool(_fn(cpu, "ggml_cpu_has_avx512", i32)())
        self._quantizers = {
            Q8_0: _fn(cpu, "quantize_row_q8_0", None, p, p, i64),
            Q8_1: _fn(cpu, "quantize_row_q8_1", None, p, p, i64),
            Q8_K: _fn(cpu, "quantize_row_q8_K", None, p, p, i64),
        }
        self._quantize_q8_k_4x8 = _fn(cpu, "ggml_quantize_mat_q8_K_4x8", None, p, p, i64)

    def use_threads(self, threads: int) -> None:
        """Run on a persistent pool of `threads` threads, as llama.cpp's CPU backend does within a graph
        (without one, every graph_compute would start and join its threads)."""
        if threads not in self._threadpools:
            params = ctypes.create_string_buffer(4096)  # struct ggml_threadpool_params (~530 bytes)
            self._threadpool_params_init(params, threads)
            self._threadpools[threads] = self._threadpool_new(params)
        self._set_threads(self._backend, threads)
        self._set_threadpool(self._backend, self._threadpools[threads])

    def llama_route(self, qtype: int, n_rows: int) -> str:
        """ "repack" where llama.cpp's CPU_REPACK buffer takes the weight on this CPU, else "plain"."""
        repackable = (qtype in (2, 12) and self._has_avx2) or (qtype == 10 and self._has_avx512)
        return "repack" if repackable and n_rows % 8 == 0 else "plain"

    def mul_mat(
        self, qtype: int, raw: np.ndarray, x: np.ndarray, threads: int = 2, route: str = "llama"
    ) -> np.ndarray:
        """raw: uint8 [n, row_bytes] GGUF rows of W [n, k]; x: float32 [m, k] -> x @ W.T as ggml computes it."""
        return self.prepare(qtype, raw, x.shape[0], threads, route)(x)

    def prepare(self, qtype: int, raw: np.ndarray, m: int, threads: int = 2, route: str = "llama"):
        """A callable x [m, k] -> y [m, n] with the weight uploaded once (for benchmarks)."""
        return _PreparedMulMat(self, qtype, raw, m, threads, route)

    def quantize_row(self, act_type: int, x: np.ndarray) -> np.ndarray:
        """ggml's quantize_row_<act_type> of each row of x [m, k] -> uint8 [m, row bytes]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        m, k = x.shape
        block, size = _ACT_BLOCK[act_type]
        out = np.zeros(
            (m, k // block * size), dtype=np.uint8
        )  # zeroed: Q8_K leaves bsums unset for zero blocks
        for r in range(m):
            self._quantizers[act_type](x[r].ctypes.data, out[r].ctypes.data, k)
        return out

    def quantize_q8_k_4x8(self, x: np.ndarray) -> np.ndarray:
        """ggml_quantize_mat_q8_K_4x8 of 4 rows [4, k], de-interleaved to 4 rows of Q8_K (d, qs; bsums not
        compared: their Q8_Kx4 order differs) -> (d float32 [4, k/256], qs int8 [4, k])."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        _, k = x.shape
        nb = k // 256
        block = 16 + 1024 + 128
        out = np.zeros(nb * block, dtype=np.uint8)
        self._quantize_q8_k_4x8(x.ctypes.data, out.ctypes.data, k)
        blocks = out.reshape(nb, block)
        d = blocks[:, :16].copy().view(np.float32).T  # [4, nb]
        qs = blocks[:, 16:1040].copy().view(np.int8).reshape(nb, 32, 4, 8)  # 8 bytes of each row in turn
        return d, qs.transpose(2, 0, 1, 3).reshape(4, k)


class _PreparedMulMat:
    def __init__(self, ref: GGMLReference, qtype: int, raw: np.ndarray, m: int, threads: int, route: str):
        if route == "llama":
            route = ref.llama_route(qtype, raw.shape[0])
        self._ref = ref
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        n = raw.shape[0]
        block, size = WEIGHT_BLOCK[qtype]
        k = raw.shape[1] // size * block
        self.shape = (m, n, k)
        params = _InitParams(mem_size=1 << 20, mem_buffer=None, no_alloc=True)
        self._ctx_w, self._ctx = ref._init(params), ref._init(params)
        self._w = ref._new_2d(self._ctx_w, qtype, k, n)
        self._x = ref._new_2d(self._ctx, F32, k, m)
        self._y = ref._mul_mat(self._ctx, self._w, self._x)
        self._graph = ref._new_graph(self._ctx)
        ref._expand(self._graph, self._y)
        self._buf_w = ref._alloc(self._ctx_w, ref._repack_buft if route == "repack" else ref._cpu_buft)
        self._buf = ref._alloc(self._ctx, ref._cpu_buft)
        ref._set(self._w, raw.ctypes.data, 0, raw.nbytes)  # the repack buffer interleaves here
        self._threads = threads

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m, n, k = self.shape
        x = np.ascontiguousarray(x, dtype=np.float32)
        assert x.shape == (m, k)
        y = np.empty((m, n), dtype=np.float32)
        self._ref.use_threads(self._threads)
        self._ref._set(self._x, x.ctypes.data, 0, x.nbytes)
        assert self._ref._compute(self._ref._backend, self._graph) == 0
        self._ref._get(self._y, y.ctypes.data, 0, y.nbytes)
        return y

    def __del__(self) -> None:
        ref = self._ref
        ref._buffer_free(self._buf)
        ref._buffer_free(self._buf_w)
        ref._free(self._ctx)
        ref._free(self._ctx_w)


@lru_cache(maxsize=1)
def ggml_reference() -> GGMLReference | None:
    """The reference, or None when llama-cpp-python (and its ggml libraries) is not installed."""
    lib_dir = _lib_dir()
    return None if lib_dir is None else GGMLReference(lib_dir)
