"""ctypes bindings of the CPU layer ops in quant/csrc/cpu_ops.c (llama.cpp's numerics for everything but the
matmuls): RMSNorm (alone or fused with the residual add), GeGLU/SwiGLU, the rope table, paged attention with
the K/V write, the final logit softcap; and greedy sampling's row argmax (csrc/argmax.c).

The library is the one quant/native.py builds (every csrc/*.c in one file), so the ops share the matmuls'
thread pool. Two layers of API: tensor functions that check their inputs (tests, one-off use), and `lib`, the
raw ctypes handle with argtypes set once, which the model's hot path calls with cached addresses.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import torch

from ladle.quant.native import bind_signatures, native_kernels

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I = ctypes.c_int
_F = ctypes.c_float

# Cache element types as the C code numbers them.
CACHE_DTYPES: dict[torch.dtype, int] = {torch.float16: 0, torch.float32: 1, torch.bfloat16: 2}

# name: (restype, argtypes), as declared in csrc/cpu_ops.c
_SIGNATURES: dict[str, tuple[object, list]] = {
    "ladle_rms_norm": (None, [_P, _P, _P, _I64, _I64, _F, _I]),
    "ladle_residual_rms_norm": (None, [_P, _P, _P, _P, _P, _I64, _I64, _F, _I]),
    "ladle_geglu": (None, [_P, _P, _P, _I64, _I64, _I]),
    "ladle_swiglu": (None, [_P, _P, _P, _I64, _I64, _I]),
    "ladle_gelu_table_entry": (ctypes.c_uint16, [ctypes.c_uint16]),
    "ladle_exp_poly": (None, [_P, _P, _I64]),
    "ladle_softcap": (None, [_P, _I64, _F]),
    "ladle_argmax_rows": (None, [_P, _I64, _I64, _P, _I]),
    "ladle_rope_table": (None, [_F, _F, _P, _I, _I64, _P]),
    "ladle_attention": (
        _I,
        [_P, _P, _P, _I64, _I, _I, _I, _P, _P, _F, _P, _P, _P, _P, _P, _I, _I, _P, _I64, _P, _P, _I]
        + [_F, _F, _I, _P, _I],
    ),
}


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(t: torch.Tensor, name: str, dtype: torch.dtype = torch.float32) -> None:
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor, got {t.dtype} {tuple(t.shape)}")


class CpuOps:
    def __init__(self, lib: ctypes.CDLL) -> None:
        bind_signatures(lib, _SIGNATURES)  # the matmuls' library handle, so the same thread pool
        self.lib = lib

    # -- tensor API -----------------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """rms_norm(x) * weight over the last dimension (float32)."""
        _check(x, "x")
        _check(weight, "weight")
        n = x.shape[-1]
        if weight.numel() != n:
            raise ValueError(f"weight has {weight.numel()} values for rows of {n}")
        y = torch.empty_like(x)
        self.lib.ladle_rms_norm(
            x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.numel() // n, n, eps, _threads()
        )
        return y

    def residual_rms_norm(
        self,
        x: torch.Tensor,
        delta: torch.Tensor,
        delta_weight: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        """x += delta (or rms_norm(delta) * delta_weight), in place; returns rms_norm(x) * weight."""
        for t, name in ((x, "x"), (delta, "delta"), (weight, "weight")):
            _check(t, name)
        if delta_weight is not None:
            _check(delta_weight, "delta_weight")
        if delta.shape != x.shape:
            raise ValueError(f"delta shape {tuple(delta.shape)} != x shape {tuple(x.shape)}")
        n = x.shape[-1]
        y = torch.empty_like(x)
        self.lib.ladle_residual_rms_norm(
            x.data_ptr(), delta.data_ptr(), _ptr(delta_weight), weight.data_ptr(), y.data_ptr(),
            x.numel() // n, n, eps, _threads(),
        )  # fmt: skip
        return y

    def gated(self, kind: str, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """gelu(gate) * up (kind "gelu") or silu(gate) * up ("silu"), as ggml_geglu_split / ggml_swiglu."""
        _check(gate, "gate")
        _check(up, "up")
        if gate.shape != up.shape:
            raise ValueError(f"gate shape {tuple(gate.shape)} != up shape {tuple(up.shape)}")
        fn = {"gelu": self.lib.ladle_geglu, "silu": self.lib.ladle_swiglu}.get(kind)
        if fn is None:
            raise ValueError(f"gated activation must be gelu or silu, got {kind!r}")
        out = torch.empty_like(gate)
        n = gate.shape[-1]
        fn(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel() // n, n, _threads())
        return out

    def gelu_table(self) -> torch.Tensor:
        """The 65536 f16 gelu values, indexed by the f16 bits of x (for tests)."""
        values = [self.lib.ladle_gelu_table_entry(i) for i in range(1 << 16)]
        return torch.tensor(values, dtype=torch.int32).to(torch.int16).view(torch.float16)

    def exp(self, x: torch.Tensor) -> torch.Tensor:
        """ggml's vector expf (for tests)."""
        _check(x, "x")
        y = torch.empty_like(x)
        self.lib.ladle_exp_poly(x.data_ptr(), y.data_ptr(), x.numel())
        return y

    def softcap_(self, x: torch.Tensor, cap: float) -> torch.Tensor:
        _check(x, "x")
        self.lib.ladle_softcap(x.data_ptr(), x.numel(), cap)
        return x

    def argmax_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, n] float32 -> int64 [rows]: torch.argmax(x, dim=-1)'s answer (first index of the largest
        value, or of the first NaN), reading the rows on the kernels' threads."""
        _check(x, "x")
        rows, n = x.shape
        out = torch.empty(rows, dtype=torch.int64)
        self.lib.ladle_argmax_rows(x.data_ptr(), rows, n, out.data_ptr(), _threads())
        return out

    def rope_table(
        self,
        base: float,
        n_dims: int,
        n_pos: int,
        freq_scale: float = 1.0,
        freq_factors: list[float] | None = None,
    ) -> torch.Tensor:
        """[n_pos, n_dims] float32: (cos, sin) of each dimension pair's angle at each position, ggml's way."""
        if n_dims % 2 or n_dims < 2:
            raise ValueError(f"rope dimensions must be even, got {n_dims}")
        factors = None
        if freq_factors is not None:
            if len(freq_factors) != n_dims // 2:
                raise ValueError(
                    f"{len(freq_factors)} rope frequency factors for {n_dims // 2} dimension pairs"
                )
            factors = torch.tensor(freq_factors, dtype=torch.float32)
        out = torch.empty(n_pos, n_dims, dtype=torch.float32)
        self.lib.ladle_rope_table(base, freq_scale, _ptr(factors), n_dims, n_pos, out.data_ptr())
        return out

    def attention(
        self,
        q: torch.Tensor,  # [T, H * D]
        k: torch.Tensor,  # [T, KVH * D]
        v: torch.Tensor,  # [T, KVH * D]
        k_cache: torch.Tensor,  # [blocks, block_size, KVH, D]
        v_cache: torch.Tensor,
        rope: torch.Tensor,  # rope_table(...) with at least max(positions) + 1 rows
        positions: torch.Tensor,  # [T] int64
        slot_mapping: torch.Tensor,  # [T] int64
        block_tables: torch.Tensor,  # [S, max_blocks] int32
        seq_lens: torch.Tensor,  # [S] int32
        query_start: torch.Tensor,  # [S + 1] int32
        num_heads: int,
        q_norm: torch.Tensor | None = None,
        k_norm: torch.Tensor | None = None,
        eps: float = 1e-6,
        q_scale: float = 1.0,
        kq_scale: float = 1.0,
        sliding_window: int | None = None,
    ) -> torch.Tensor:
        """Writes the new K/V into the caches and returns the attention output [T, H * D] (float32)."""
        for t, name in ((q, "q"), (k, "k"), (v, "v"), (rope, "rope")):
            _check(t, name)
        _check(positions, "positions", torch.int64)
        _check(slot_mapping, "slot_mapping", torch.int64)
        for t, name in ((block_tables, "block_tables"), (seq_lens, "seq_lens"), (query_start, "query_start")):
            _check(t, name, torch.int32)
        if k_cache.dtype not in CACHE_DTYPES or k_cache.dtype != v_cache.dtype:
            raise ValueError(f"kv cache dtype must be float16, bfloat16 or float32, got {k_cache.dtype}")
        _check(k_cache, "k_cache", k_cache.dtype)
        _check(v_cache, "v_cache", k_cache.dtype)
        _, block_size, kv_heads, head_dim = k_cache.shape
        tokens = q.shape[0]
        if q.shape[-1] != num_heads * head_dim or k.shape != v.shape or k.shape[-1] != kv_heads * head_dim:
            raise ValueError("q/k/v widths do not match the heads and the cache's head_dim")
        if num_heads % kv_heads:
            raise ValueError(f"{num_heads} heads are not a multiple of {kv_heads} KV heads")
        if rope.shape[1] != head_dim or int(positions.max()) >= rope.shape[0]:
            raise ValueError("rope table too short for these positions (or of another head_dim)")
        if int(query_start[-1]) != tokens or positions.numel() != tokens or slot_mapping.numel() != tokens:
            raise ValueError("query_start/positions/slot_mapping do not cover the batch's tokens")
        out = torch.empty(tokens, num_heads * head_dim, dtype=torch.float32)
        rc = self.lib.ladle_attention(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), tokens, num_heads, kv_heads, head_dim,
            _ptr(q_norm), _ptr(k_norm), eps, rope.data_ptr(), positions.data_ptr(), slot_mapping.data_ptr(),
            k_cache.data_ptr(), v_cache.data_ptr(), CACHE_DTYPES[k_cache.dtype], block_size,
            block_tables.data_ptr(), block_tables.shape[1], seq_lens.data_ptr(), query_start.data_ptr(),
            seq_lens.numel(), q_scale, kq_scale, sliding_window or 0, out.data_ptr(), _threads(),
        )  # fmt: skip
        if rc != 0:
            raise MemoryError("attention: out of memory for its scratch buffers")
        return out


def _threads() -> int:
    return torch.get_num_threads()


def loaded_cpu_ops() -> CpuOps | None:
    """The ops if this process has already loaded the native library (a GGUF model on the CPU did), else
    None: for callers that must not start a compile (the sampler of a model that never needed one)."""
    if native_kernels.cache_info().currsize == 0:
        return None
    return cpu_ops()


@lru_cache(maxsize=1)
def cpu_ops() -> CpuOps | None:
    """The ops, or None when the native library is disabled or cannot be built (no C compiler)."""
    kernels = native_kernels()
    return None if kernels is None else CpuOps(kernels.lib)
