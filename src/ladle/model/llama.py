"""The Llama family: Llama 2/3.x, Mistral (sliding window), Qwen2/2.5 (q/k/v bias), Qwen3 (q/k norm).

Module names mirror Hugging Face's so checkpoints load by name. The model sees a flat batch of tokens plus
AttentionMetadata and knows nothing of scheduling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ladle.kernels.availability import fused_ops_enabled
from ladle.layers.activation import fused_gated_kind, get_activation
from ladle.layers.attention import AttentionBackend, AttentionMetadata
from ladle.layers.linear import Linear, TiedLMHead, VocabEmbedding, dense_linear
from ladle.layers.norm import RMSNorm
from ladle.layers.rotary import RotaryEmbedding
from ladle.model.config import ArchConfig

KVCache = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    def __init__(
        self, cfg: ArchConfig, layer: int, backend: AttentionBackend, norm_offset: bool = False
    ) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        bias = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, unit_offset=norm_offset)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, unit_offset=norm_offset)
        else:
            self.q_norm = self.k_norm = None
        self.rotary = RotaryEmbedding(self.head_dim, cfg.rope_for_layer(layer))
        self.scale = cfg.attention_scale if cfg.attention_scale is not None else self.head_dim**-0.5
        self.sliding_window = cfg.window_for_layer(layer)
        self.backend = backend
        self.qkv_weight: torch.Tensor | None = None  # set by fuse_weights(): q, k, v stacked
        self.qkv_bias: torch.Tensor | None = None

    def fuse_weights(self) -> None:
        """One GEMM for q, k and v (the three weights become views of the stacked one)."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if any(p.quantized is not None for p in projs):
            return
        self.qkv_weight = _stack_weights(projs)
        if self.q_proj.bias is not None:
            self.qkv_bias = torch.cat([p.bias for p in projs])

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata
    ) -> torch.Tensor:
        tokens = x.shape[0]
        if self.qkv_weight is not None:
            sizes = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
            q, k, v = dense_linear(x, self.qkv_weight, self.qkv_bias).split(sizes, dim=-1)
            q = q.view(tokens, self.num_heads, self.head_dim)
            k = k.view(tokens, self.num_kv_heads, self.head_dim)
            v = v.view(tokens, self.num_kv_heads, self.head_dim)
        else:
            q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
            k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
            v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        # A decode-only batch on the Triton backend: norms, rotary, cache write and attention in one launch.
        out = self.backend.decode_with_rotary(
            positions, q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, self.sliding_window, self.rotary,
            self.q_norm, self.k_norm,
        )  # fmt: skip
        if out is not None:
            return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))
        # Backends whose cache write is a plain slot store let the rotary kernel do it, and the q/k norms
        # (one launch for what is otherwise two to five).
        kv_written = self.backend.kv_write_in_rotary and self.rotary.rotate_and_write_kv(
            positions, q, k, v, kv_cache[0], kv_cache[1], meta.slot_mapping, self.q_norm, self.k_norm
        )
        if not kv_written:
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = self.rotary(positions, q, k)
        out = self.backend.forward(
            q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, self.sliding_window, kv_written=kv_written
        )
        return self.o_proj(out.reshape(tokens, self.num_heads * self.head_dim))


class GatedMLP(nn.Module):
    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = get_activation(cfg.hidden_act)
        # Activations with a one-kernel Triton act(gate) * up on the GPU (fused_ops.gated_act_mul): is it
        # tanh-GELU (True), SiLU (False), or neither (None: torch's ops).
        self.fused_gelu_tanh = fused_gated_kind(cfg.hidden_act)
        self.gate_up_weight: torch.Tensor | None = None  # set by fuse_weights(): gate and up stacked

    def fuse_weights(self) -> None:
        projs = (self.gate_proj, self.up_proj)
        if any(p.quantized is not None or p.bias is not None for p in projs):
            return
        self.gate_up_weight = _stack_weights(projs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_weight is not None:
            gate_up = dense_linear(x, self.gate_up_weight)
            if self.fused_gelu_tanh is not None and fused_ops_enabled(gate_up):
                from ladle.kernels.fused_ops import gated_act_mul  # Triton loads only on GPU machines

                return self.down_proj(gated_act_mul(gate_up, self.fused_gelu_tanh))
            gate, up = gate_up.chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def _stack_weights(projs) -> torch.Tensor:
    """Concatenates the layers' weights along the output dimension and makes each layer's weight a view of
    the result, so the fused and the separate forms share memory (and loaders still see every name)."""
    stacked = torch.cat([p.weight for p in projs])
    start = 0
    for p in projs:
        rows = p.weight.shape[0]
        p.weight = nn.Parameter(stacked[start : start + rows], requires_grad=False)
        start += rows
    return stacked


class LlamaDecoderLayer(nn.Module):
    """forward returns (mlp output, residual) without adding them: the next layer's input norm (or the
    stack's final norm) adds them in the same kernel. The sums are the same as x + ... done in turn.

    output_norm: a norm the returned output still needs before that add (None here; Gemma's post-feedforward
    norm), which the next add applies in its kernel: the stack passes it on as the next forward's x_norm."""

    output_norm: RMSNorm | None = None

    def __init__(self, cfg: ArchConfig, layer: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer, backend)
        self.mlp = GatedMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions, x, kv_cache, meta, residual=None, x_norm=None):
        h, residual = self.input_layernorm.add_forward(x, residual, x_norm)  # residual None: the first layer
        h = self.self_attn(positions, h, kv_cache, meta)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class DecoderStack(nn.Module):
    """Embedding, decoder layers, final norm: Hugging Face's `model.` submodule."""

    def __init__(
        self, cfg: ArchConfig, backend: AttentionBackend, layer_cls: type[nn.Module], norm_offset: bool
    ) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer_cls(cfg, i, backend) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, unit_offset=norm_offset)
        self.embedding_scale = cfg.embedding_scale

    def forward(self, input_ids, positions, kv_caches, meta):
        x = self.embed_tokens(input_ids)
        if self.embedding_scale != 1.0:
            # Gemma rounds the scale to the activation dtype before multiplying; so do we.
            x = x * torch.tensor(self.embedding_scale, dtype=x.dtype)
        # Each layer hands its output and the residual stream on unsummed, and names the norm its output still
        # needs, if any (see LlamaDecoderLayer): the next add applies both.
        residual, x_norm = None, None
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, residual = layer(positions, x, kv_cache, meta, residual, x_norm)
            x_norm = layer.output_norm
        return self.norm.add_forward(x, residual, x_norm)[0]


class CausalLM(nn.Module):
    """A decoder-only language model: hidden states for a flat batch, and logits for chosen rows."""

    layer_cls: type[nn.Module] = LlamaDecoderLayer
    norm_offset = False  # True for Gemma's (1 + weight) norms

    def __init__(self, cfg: ArchConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.config = cfg
        self.model = DecoderStack(cfg, backend, self.layer_cls, self.norm_offset)
        if cfg.tie_word_embeddings:
            self.lm_head: nn.Module = TiedLMHead(self.model.embed_tokens)
        else:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size)
        self.ggml_forward: Any = None  # GGMLForward once enable_ggml_numerics() ran (GGUF on the CPU)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        if self.ggml_forward is not None:
            return self.ggml_forward(input_ids, positions, kv_caches, meta)
        return self.model(input_ids, positions, kv_caches, meta)

    def enable_ggml_numerics(self, max_positions: int) -> None:
        """From now on forward() runs llama.cpp's CPU numerics (model/ggml_cpu.py); the weights must be
        loaded with norms as ggml multiplies by them (GGUF's stored values)."""
        from ladle.model.ggml_cpu import GGMLForward

        self.ggml_forward = GGMLForward(self, max_positions)
        self.config.numerics = "ggml"

    def fuse_weights(self) -> None:
        """Stacks q/k/v and gate/up weights so each is one GEMM (the GPU path; a no-op for quantized)."""
        for module in self.modules():
            if isinstance(module, (Attention, GatedMLP)):
                module.fuse_weights()

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.ggml_forward.logits(hidden) if self.ggml_forward is not None else None
        if logits is None:
            logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        if cap and self.ggml_forward is not None:
            return self.ggml_forward.softcap_(logits, cap)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def build_buffers(self, device: torch.device, max_positions: int) -> None:
        """Fills the rotary tables, one per distinct rope setting, shared by the layers that use it (the
        ggml numerics path builds its own, ggml's way)."""
        if self.ggml_forward is not None:
            return
        tables: dict[tuple, torch.Tensor] = {}
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                key = module.table_key()
                if key not in tables:
                    tables[key] = module.build_table(max_positions, device)
                module.cos_sin = tables[key]

    # -- weights ---------------------------------------------------------------------------------------
    def expected_weight_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters()}

    def load_weights(
        self, weights: Iterable[tuple[str, Any]], device: torch.device, dtype: torch.dtype
    ) -> None:
        """Loads (Hugging Face name, tensor or quantized weight) pairs; raises ValueError naming what is
        missing or unexpected, so a wrong checkpoint fails before any request runs."""
        expected = self.expected_weight_names()
        loaded: set[str] = set()
        for raw_name, tensor in weights:
            name = _normalize_name(raw_name)
            if name is None or (name == "lm_head.weight" and self.config.tie_word_embeddings):
                continue
            if isinstance(tensor, torch.Tensor):
                tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            module_name, _, param = name.rpartition(".")
            try:
                module = self.get_submodule(module_name)
            except AttributeError:
                raise ValueError(f"unexpected weight {raw_name!r} for {self.config.architecture}") from None
            if param == "weight" and hasattr(module, "set_weight"):
                module.set_weight(tensor)
            elif param == "bias" and getattr(module, "bias", None) is not None:
                if tuple(tensor.shape) != tuple(module.bias.shape):
                    raise ValueError(
                        f"{raw_name}: shape {tuple(tensor.shape)}, expected {tuple(module.bias.shape)}"
                    )
                module.bias = nn.Parameter(tensor, requires_grad=False)
            else:
                raise ValueError(f"unexpected weight {raw_name!r} for {self.config.architecture}")
            loaded.add(name)
        missing = sorted(expected - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"checkpoint is missing {len(missing)} weights: {shown}")


def _normalize_name(name: str) -> str | None:
    # Multimodal Gemma 3 checkpoints nest the text model; ladle serves the text part only.
    for prefix in ("language_model.model.", "model.language_model."):
        if name.startswith(prefix):
            return "model." + name[len(prefix) :]
    if name.startswith("language_model.lm_head."):
        return name[len("language_model.") :]
    if name.startswith(
        ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
    ):
        return None
    if "rotary_emb.inv_freq" in name:
        return None
    return name
