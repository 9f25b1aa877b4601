"""ctypes binding of quant/csrc/ggml_forward.c: a GGUF model's whole decoder stack in one native call.

The C structs are mirrored field for field; `StackLayer` is filled once per layer (weights, norms, rope,
scales) and gets its K/V cache addresses when the caches are known, `StackStep` once per step.
"""

from __future__ import annotations

import ctypes

from ladle.quant.native import bind_signatures

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I = ctypes.c_int
_F = ctypes.c_float


class StackWeight(ctypes.Structure):
    _fields_ = [("data", _P), ("row_bytes", _I64), ("n", _I64), ("k", _I64), ("qtype", _I)]


class StackLayer(ctypes.Structure):
    _fields_ = [
        *((name, StackWeight) for name in ("q", "k", "v", "o", "gate", "up", "down")),
        *(
            (name, _P)
            for name in ("input_norm", "post_attn_norm", "ffn_norm", "post_ffn_norm", "q_norm", "k_norm")
        ),
        ("rope", _P),
        ("q_scale", _F),
        ("kq_scale", _F),
        ("sliding_window", _I),
        ("k_cache", _P),
        ("v_cache", _P),
    ]


class StackStep(ctypes.Structure):
    _fields_ = [
        ("num_tokens", _I64),
        ("hidden", _I),
        ("num_heads", _I),
        ("num_kv_heads", _I),
        ("head_dim", _I),
        ("intermediate", _I),
        ("eps", _F),
        ("gelu", _I),
        ("cache_dtype", _I),
        ("block_size", _I),
        ("positions", _P),
        ("slot_mapping", _P),
        ("block_tables", _P),
        ("max_blocks", _I64),
        ("seq_lens", _P),
        ("query_start", _P),
        ("num_seqs", _I),
        ("output_rows", _P),
        ("num_output_rows", _I64),
        ("groups", _P),
        ("output_groups", _P),
        ("num_groups", _I64),
        ("num_output_groups", _I64),
        ("final_norm", _P),
        ("x", _P),
        ("out", _P),
    ]


_SIGNATURES: dict[str, tuple[object, list]] = {
    "ladle_decoder_stack": (_I, [ctypes.POINTER(StackLayer), _I, ctypes.POINTER(StackStep), _I]),
}


def bind_stack(lib: ctypes.CDLL) -> None:
    bind_signatures(lib, _SIGNATURES)


def stack_weight(weight) -> StackWeight:
    """A GGMLWeight's packed rows as the C side reads them (the weight must outlive the struct)."""
    raw = weight.raw
    return StackWeight(raw.data_ptr(), raw.stride(0), weight.shape[0], weight.shape[1], int(weight.qtype))
