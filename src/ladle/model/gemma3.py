"""Gemma 3 text models: interleaved sliding-window and global layers, q/k norm, (1 + weight) RMSNorms,
four norms per layer (sandwich), GeGLU, embeddings scaled by sqrt(hidden_size)."""

from __future__ import annotations

from torch import nn

from ladle.layers.attention import AttentionBackend
from ladle.layers.norm import RMSNorm
from ladle.model.config import ArchConfig
from ladle.model.llama import Attention, CausalLM, GatedMLP


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, cfg: ArchConfig, layer: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer, backend, norm_offset=True)
        self.mlp = GatedMLP(cfg)
        eps = cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps, unit_offset=True)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps, unit_offset=True)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, unit_offset=True)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, eps, unit_offset=True)

    @property
    def output_norm(self) -> RMSNorm:
        """forward's output still needs post_feedforward_layernorm: the stack's next add applies it."""
        return self.post_feedforward_layernorm

    def forward(self, positions, x, kv_cache, meta, residual=None, x_norm=None):
        """(output, residual) unsummed, as LlamaDecoderLayer; the output is the MLP's, before output_norm.
        x_norm: the previous layer's output_norm (None for the first layer)."""
        h, residual = self.input_layernorm.add_forward(x, residual, x_norm)  # residual None: the first layer
        attn = self.self_attn(positions, h, kv_cache, meta)
        h, residual = self.pre_feedforward_layernorm.add_forward(
            attn, residual, self.post_attention_layernorm
        )
        return self.mlp(h), residual


class Gemma3ForCausalLM(CausalLM):
    layer_cls = Gemma3DecoderLayer
    norm_offset = True
