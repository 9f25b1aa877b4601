"""llama.cpp's CPU numerics for a loaded Llama-family or Gemma 3 model: the forward pass that GGUF models run
on the CPU, so that ladle's logits follow llama.cpp's (and greedy tokens equal them).

The matmuls are the model's own Linear layers (GGMLWeight's ggml-format kernels, or dense float32); every
other op is one call into quant/csrc/cpu_ops.c: the first RMSNorm, then per layer the attention (q/k norm,
rope, Gemma's q scale, f16 K/V write, paged attention), the residual add fused with the next norm (with
Gemma's sandwich norm of the branch output), the gated activation, and the add + norm again. Everything a
layer needs that does not change between steps (weight addresses, rope tables, scales) is gathered once
here. When every matmul is a packed GGML kernel (the usual GGUF case) the whole stack is one native call
(quant/csrc/ggml_forward.c, the same ops in the same order); the per-op loop below is its reference and
the path for dense weights, biases and matmuls that tests swap in.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ladle.kernels.cpu_ops import CACHE_DTYPES, CpuOps, cpu_ops
from ladle.kernels.ggml_stack import StackLayer, StackStep, bind_stack, stack_weight
from ladle.layers.attention import AttentionMetadata
from ladle.layers.linear import TiedLMHead
from ladle.layers.norm import RMSNorm
from ladle.model.config import ArchConfig, RopeConfig
from ladle.quant.native import choose_method
from ladle.quant.row_groups import row_group_sizes
from ladle.quant.weight import GGMLWeight


def use_ggml_numerics(checkpoint_format: str, device: torch.device, dtype: torch.dtype) -> bool:
    """GGUF files on the CPU in float32 run llama.cpp's numerics (LADLE_GGML_NUMERICS=0 turns it off);
    everything else keeps the transformers-matching torch layers."""
    if checkpoint_format != "gguf" or torch.device(device).type != "cpu" or dtype != torch.float32:
        return False
    if os.environ.get("LADLE_GGML_NUMERICS", "1").lower() in ("0", "false", "no", "off"):
        return False
    return cpu_ops() is not None


def _f32(value: float) -> float:
    return float(np.float32(value))


def _inv_sqrt_f32(value: float) -> float:
    """1.0f / sqrtf(value), as llama.cpp computes its attention scales."""
    return float(np.float32(1.0) / np.sqrt(np.float32(value)))


def rope_table(ops: CpuOps, rope: RopeConfig, head_dim: int, max_positions: int) -> torch.Tensor:
    """ggml's cos/sin table for this rope setting: linear scaling as freq_scale, llama3 as its stored
    per-pair divisors (rope_freqs)."""
    scaling = rope.scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    freq_scale = 1.0
    if kind == "linear":
        freq_scale = _f32(np.float32(1.0) / np.float32(scaling["factor"]))
    elif kind == "llama3" and rope.freq_factors is None:
        raise ValueError("llama3 rope scaling without rope_freqs factors cannot run with ggml numerics")
    elif kind not in ("default", "linear", "llama3"):
        raise ValueError(f"unsupported rope_scaling type {kind!r} for ggml numerics")
    return ops.rope_table(rope.theta, head_dim, max_positions, freq_scale, rope.freq_factors)


MatMul = Callable[[torch.Tensor], torch.Tensor]


def _matmul(module: nn.Module) -> MatMul:
    """The layer's x -> x @ W.T (+ b) without nn.Module's call machinery (hooks are never used here): the
    quantized kernel directly when there is no bias. Either way the result is a new contiguous float32
    tensor (the model runs in float32 on this path), which the C ops rely on."""
    if getattr(module, "quantized", None) is not None and module.bias is None:
        return module.quantized.linear
    return module.forward


def _grouped(fns: list[MatMul]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """x -> [fn(x) for fn in fns], quantizing x once when every fn is a quantized kernel of the same
    activation format (q/k/v, gate/up): ggml quantizes a matmul's input the same way for each of them."""
    weights = [getattr(fn, "__self__", None) for fn in fns]
    formats = {getattr(w, "act_format", None) for w in weights}
    if len(formats) == 1 and None not in formats and all(fn == w.linear for fn, w in zip(fns, weights)):
        first = weights[0]

        def shared(x: torch.Tensor) -> list[torch.Tensor]:
            quantized = first.quantize_input(x)
            return [w.linear(x, quantized) for w in weights]

        return shared
    return lambda x: [fn(x) for fn in fns]


@dataclass
class _Layer:
    """One decoder layer's matmuls and constant addresses."""

    q_proj: MatMul
    k_proj: MatMul
    v_proj: MatMul
    o_proj: MatMul
    gate_proj: MatMul
    up_proj: MatMul
    down_proj: MatMul
    input_norm: int  # weight addresses (float32, contiguous)
    post_attn_norm: int | None  # Gemma: the norm of the attention output before the residual add
    ffn_norm: int
    post_ffn_norm: int | None  # Gemma: the norm of the MLP output before the residual add
    q_norm: int | None
    k_norm: int | None
    rope: int
    q_scale: float
    kq_scale: float
    sliding_window: int
    qkv: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    gate_up: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    # The layer for the one-call native stack (ggml_forward.c); None when a matmul is not a packed GGML
    # kernel (dense weights, a bias, or one swapped in by a test), which keeps the per-op path.
    native: StackLayer | None = None

    def __post_init__(self) -> None:
        self.regroup()

    def regroup(self) -> None:
        """Rebuilds the shared-input groups and the native layer from the matmul fields (call after
        replacing any of them)."""
        self.qkv = _grouped([self.q_proj, self.k_proj, self.v_proj])
        self.gate_up = _grouped([self.gate_proj, self.up_proj])
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        weights = [_packed(getattr(self, n)) for n in names]
        if None in weights:
            self.native = None
            return
        self.native = StackLayer(
            *(stack_weight(w) for w in weights),
            self.input_norm, self.post_attn_norm, self.ffn_norm, self.post_ffn_norm, self.q_norm, self.k_norm,
            self.rope, self.q_scale, self.kq_scale, self.sliding_window,
        )  # fmt: skip


def _packed(fn: MatMul) -> GGMLWeight | None:
    """The GGMLWeight whose native kernel fn is, if it is one."""
    weight = getattr(fn, "__self__", None)
    if isinstance(weight, GGMLWeight) and weight.has_fast_matmul and fn == weight.linear:
        return weight
    return None


def _weight(norm: RMSNorm) -> int:
    if norm.weight.dtype != torch.float32 or not norm.weight.is_contiguous():
        norm.weight = nn.Parameter(norm.weight.float().contiguous(), requires_grad=False)
    # The stored value is what ggml multiplies by ((1 + w) for Gemma, kept from the file): a torch
    # forward of this module must not add 1 again.
    norm.unit_offset = False
    return norm.weight.data_ptr()


class GGMLForward:
    """Callable as the model's forward: (input_ids, positions, kv_caches, meta) -> final hidden states."""

    def __init__(self, model: nn.Module, max_positions: int) -> None:
        ops = cpu_ops()
        if ops is None:
            raise ValueError(
                "ggml numerics need the native CPU kernels (a C compiler), which are unavailable"
            )
        cfg: ArchConfig = model.config
        if cfg.family not in ("llama", "gemma3"):
            raise ValueError(f"ggml numerics: unsupported model family {cfg.family!r}")
        self.ops, self.lib = ops, ops.lib
        self.cfg = cfg
        self.model = model
        self.gemma = cfg.family == "gemma3"
        self.eps = _f32(cfg.rms_norm_eps)
        self.glu = self.lib.ladle_geglu if cfg.hidden_act.startswith("gelu") else self.lib.ladle_swiglu
        if cfg.hidden_act not in ("gelu_pytorch_tanh", "gelu_tanh", "silu", "swish"):
            raise ValueError(f"ggml numerics: unsupported activation {cfg.hidden_act!r}")
        stack = model.model
        self.embedding_scale = (
            torch.tensor(np.sqrt(np.float32(cfg.hidden_size)), dtype=torch.float32)
            if cfg.embedding_scale != 1.0
            else None
        )
        tables: dict[tuple, torch.Tensor] = {}
        self.tables = tables  # kept alive: the layers hold their addresses
        if self.gemma:
            # f_attention_scale = 1.0f / sqrtf(query_pre_attn_scalar), applied to q after rope.
            q_scale, kq_scale = _inv_sqrt_f32(round(cfg.attention_scale**-2, 6)), 1.0
        else:
            q_scale = 1.0
            kq_scale = _f32(cfg.attention_scale) if cfg.attention_scale else _inv_sqrt_f32(cfg.head_dim)
        self.layers: list[_Layer] = []
        for i, layer in enumerate(stack.layers):
            rope = cfg.rope_for_layer(i)
            key = (rope.theta, repr(sorted((rope.scaling or {}).items())), tuple(rope.freq_factors or ()))
            if key not in tables:
                tables[key] = rope_table(ops, rope, cfg.head_dim, max_positions)
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                _Layer(
                    q_proj=_matmul(attn.q_proj),
                    k_proj=_matmul(attn.k_proj),
                    v_proj=_matmul(attn.v_proj),
                    o_proj=_matmul(attn.o_proj),
                    gate_proj=_matmul(mlp.gate_proj),
                    up_proj=_matmul(mlp.up_proj),
                    down_proj=_matmul(mlp.down_proj),
                    input_norm=_weight(layer.input_layernorm),
                    post_attn_norm=_weight(layer.post_attention_layernorm) if self.gemma else None,
                    ffn_norm=_weight(
                        layer.pre_feedforward_layernorm if self.gemma else layer.post_attention_layernorm
                    ),
                    post_ffn_norm=_weight(layer.post_feedforward_layernorm) if self.gemma else None,
                    q_norm=_weight(attn.q_norm) if attn.q_norm is not None else None,
                    k_norm=_weight(attn.k_norm) if attn.k_norm is not None else None,
                    rope=tables[key].data_ptr(),
                    q_scale=q_scale,
                    kq_scale=kq_scale,
                    sliding_window=cfg.window_for_layer(i) or 0,
                )
            )
        self.final_norm = _weight(stack.norm)
        self.max_positions = max_positions
        bind_stack(self.lib)
        self._stack_key: tuple | None = None
        self._stack: ctypes.Array | None = None
        self._logits = _ReusedBuffer()

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        cfg, lib, eps = self.cfg, self.lib, self.eps
        nth = torch.get_num_threads()
        tokens = input_ids.shape[0]
        hidden, heads, kv_heads, head_dim = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        x = self.model.model.embed_tokens(input_ids)
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        if self.embedding_scale is not None:
            x.mul_(self.embedding_scale)  # ggml_scale by sqrtf(n_embd), in float32
        positions, slots = _as(positions, torch.int64), _as(meta.slot_mapping, torch.int64)
        tables = _as(meta.block_tables, torch.int32)
        seq_lens, query_start = _as(meta.seq_lens, torch.int32), _as(meta.query_start, torch.int32)
        if tokens and int(positions.max()) >= self.max_positions:
            raise ValueError(f"position {int(positions.max())} is beyond the model's {self.max_positions}")
        rows = meta.output_rows
        selected = torch.tensor(rows, dtype=torch.int64) if rows is not None and len(rows) < tokens else None
        stack = self._native_stack(kv_caches) if tokens else None
        if stack is not None:
            return self._stack_forward(
                stack, x, positions, slots, tables, seq_lens, query_start, selected, kv_caches
            )
        pos_p, slot_p, table_p = positions.data_ptr(), slots.data_ptr(), tables.data_ptr()
        lens_p, start_p, num_seqs = seq_lens.data_ptr(), query_start.data_ptr(), seq_lens.numel()
        block_size, max_blocks = kv_caches[0][0].shape[1], tables.shape[1]
        cache_dtype = CACHE_DTYPES[kv_caches[0][0].dtype]
        x_p = x.data_ptr()
        h = torch.empty(tokens, hidden, dtype=torch.float32)
        h_p = h.data_ptr()
        out = torch.empty(tokens, hidden, dtype=torch.float32)
        attn = torch.empty(tokens, heads * head_dim, dtype=torch.float32)
        attn_p = attn.data_ptr()
        act = torch.empty(tokens, cfg.intermediate_size, dtype=torch.float32)
        act_p = act.data_ptr()
        lib.ladle_rms_norm(x_p, self.layers[0].input_norm, h_p, tokens, hidden, eps, nth)
        last = len(self.layers) - 1
        for i, (layer, (k_cache, v_cache)) in enumerate(zip(self.layers, kv_caches)):
            q, k, v = layer.qkv(h)
            rc = lib.ladle_attention(
                q.data_ptr(), k.data_ptr(), v.data_ptr(), tokens, heads, kv_heads, head_dim,
                layer.q_norm, layer.k_norm, eps, layer.rope, pos_p, slot_p,
                k_cache.data_ptr(), v_cache.data_ptr(), cache_dtype, block_size, table_p, max_blocks,
                lens_p, start_p, num_seqs, layer.q_scale, layer.kq_scale, layer.sliding_window, attn_p, nth,
            )  # fmt: skip
            if rc != 0:
                raise MemoryError("attention: out of memory for its scratch buffers")
            o = layer.o_proj(attn)
            if i == last and selected is not None:
                # llama.cpp keeps only the rows it outputs after the last attention (ggml_get_rows on
                # inp_out_ids), so that layer's MLP matmuls see that many rows: so do we.
                x, o = x.index_select(0, selected), o.index_select(0, selected)
                tokens, x_p = x.shape[0], x.data_ptr()
                h, act = h[:tokens], act[:tokens]
                out = torch.zeros(tokens, hidden, dtype=torch.float32)
            lib.ladle_residual_rms_norm(
                x_p, o.data_ptr(), layer.post_attn_norm, layer.ffn_norm, h_p, tokens, hidden, eps, nth
            )
            gate, up = layer.gate_up(h)
            self.glu(gate.data_ptr(), up.data_ptr(), act_p, tokens, cfg.intermediate_size, nth)
            down = layer.down_proj(act)
            next_norm, dst = (self.final_norm, out) if i == last else (self.layers[i + 1].input_norm, h)
            lib.ladle_residual_rms_norm(
                x_p, down.data_ptr(), layer.post_ffn_norm, next_norm, dst.data_ptr(), tokens, hidden, eps, nth
            )
        if selected is None:
            return out
        # rows nobody reads stay zero
        return torch.zeros(input_ids.shape[0], hidden, dtype=torch.float32).index_copy_(0, selected, out)

    def _native_stack(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> ctypes.Array | None:
        """The layers as one C array for ladle_decoder_stack, with these caches' addresses; None when a
        layer has no native form or the matmuls are asked to run another way (LADLE_QUANT_MATMUL=float)."""
        natives = [layer.native for layer in self.layers]
        if None in natives or choose_method(0, 0) != "ggml":
            return None
        key = (id(kv_caches), kv_caches[0][0].data_ptr(), *map(id, natives))
        if key != self._stack_key:
            stack = (StackLayer * len(natives))()
            for i, (native, (k_cache, v_cache)) in enumerate(zip(natives, kv_caches)):
                stack[i] = native
                stack[i].k_cache, stack[i].v_cache = k_cache.data_ptr(), v_cache.data_ptr()
            self._stack, self._stack_key = stack, key
        return self._stack

    def _stack_forward(
        self,
        stack: ctypes.Array,
        x: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        tables: torch.Tensor,
        seq_lens: torch.Tensor,
        query_start: torch.Tensor,
        selected: torch.Tensor | None,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The per-op loop of __call__ in one native call (ggml_forward.c: the same ops in the same order)."""
        cfg = self.cfg
        tokens = x.shape[0]
        # rows nobody reads stay zero
        out = (torch.zeros if selected is not None else torch.empty)(
            tokens, cfg.hidden_size, dtype=torch.float32
        )
        k_cache = kv_caches[0][0]
        # the rows per sequence each matmul is told, as GGMLWeight.linear asks row_groups for its row count
        groups = row_group_sizes(tokens)
        output_groups = row_group_sizes(selected.numel()) if selected is not None else None
        step = StackStep(
            tokens, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.intermediate_size, self.eps, self.glu is self.lib.ladle_geglu, CACHE_DTYPES[k_cache.dtype],
            k_cache.shape[1], positions.data_ptr(), slots.data_ptr(), tables.data_ptr(), tables.shape[1],
            seq_lens.data_ptr(), query_start.data_ptr(), seq_lens.numel(),
            selected.data_ptr() if selected is not None else None,
            selected.numel() if selected is not None else 0,
            _ptr(groups), _ptr(output_groups), _numel(groups), _numel(output_groups),
            self.final_norm, x.data_ptr(), out.data_ptr(),
        )  # fmt: skip
        rc = self.lib.ladle_decoder_stack(
            stack, len(self.layers), ctypes.byref(step), torch.get_num_threads()
        )
        if rc == -1:
            raise MemoryError("decoder stack: out of memory for its buffers")
        if rc != 0:
            raise ValueError("decoder stack: a native matmul does not support one of the weights")
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The LM head's hidden @ W.T when W is a packed GGML weight (None otherwise: the caller runs the
        module), into a reused output buffer: a fresh [32, 262144] float32 result is a 32 MiB mmap whose page
        faults cost ~15 ms a step on this VM, a quarter of the matmul. The logits feed no later layer, so
        their products are added in the fastest order (from 8 rows, whole blocks: ~1.4x faster than ggml's
        lane order; Q8_0 on AMX tiles where the CPU has them), not llama.cpp's: they differ from its logits
        in the last bits (~1e-7 relative), which can only matter to an argmax between two logits that close."""
        weight = self._lm_head_weight()
        if weight is None or choose_method(0, 0) != "ggml" or hidden.dim() != 2:
            return None
        out = self._logits.get(hidden.shape[0], weight.shape[0])
        return weight.linear(_contig(hidden), exact=False, out=out)

    def _lm_head_weight(self) -> GGMLWeight | None:
        head = self.model.lm_head
        if isinstance(head, TiedLMHead):
            weight = self.model.model.embed_tokens.quantized
        elif getattr(head, "bias", None) is None:
            weight = getattr(head, "quantized", None)
        else:
            return None
        return weight if isinstance(weight, GGMLWeight) and weight.has_fast_matmul else None

    def softcap_(self, logits: torch.Tensor, cap: float) -> torch.Tensor:
        """Gemma's final logit softcap, ggml's way (scale by 1/cap, tanhf, scale by cap)."""
        return self.ops.softcap_(_contig(logits.float()), _f32(cap))


class _ReusedBuffer:
    """A float32 [m, n] output whose memory is handed out again once nobody holds the last result: callers
    that keep a result keep theirs; the engine, which drops each step's logits, gets the same memory back
    every step. Each result is a new view of the kept tensor, so any tensor still holding the memory (the
    result, or a view of it) shows in its storage's use count, whatever Python's reference counting does."""

    def __init__(self) -> None:
        self._tensor: torch.Tensor | None = None

    def get(self, m: int, n: int) -> torch.Tensor:
        t = self._tensor
        if t is None or t.shape != (m, n) or not _unshared(t):
            t = self._tensor = torch.empty(m, n, dtype=torch.float32)
        return t.view(m, n)


def _unshared(t: torch.Tensor) -> bool:
    # holders of the storage: the kept tensor and the storage object made here to ask
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return use_count is not None and use_count(t.untyped_storage()._cdata) == 2


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _numel(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel()


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()
