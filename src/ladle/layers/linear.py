"""Linear layers whose weight is either a dense tensor or a quantized weight object.

A quantized weight (ladle/quant) is any object with:
  shape -> (out_features, in_features); nbytes -> int; linear(x) -> x @ W.T; dequantize(dtype) -> Tensor;
  embedding(ids) -> rows of W (for token embeddings).
Loaders call `set_weight`, which accepts either form, so model code never needs to know which it got.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ladle.kernels.availability import fused_ops_enabled


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias). A single row (batch-1 decode, its CUDA graph) takes the Triton GEMV on the GPU:
    on the H200 it streams 8B-model weights 7-21% faster than cuBLAS's batch-1 kernels (4.1-4.5 TB/s of
    4.8 at gate_up and the LM head); from 2 rows on cuBLAS is as fast or faster."""
    if (
        x.dim() == 2
        and x.shape[0] == 1
        and x.dtype in (torch.bfloat16, torch.float16)
        and weight.dtype == x.dtype
        and fused_ops_enabled(x)
    ):
        from ladle.kernels.triton_gemv import gemv  # Triton loads only on GPU machines

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def is_quantized(weight: Any) -> bool:
    return not isinstance(weight, torch.Tensor) and hasattr(weight, "linear")


def _assign(module: nn.Module, weight: Any) -> None:
    """Models are built on the meta device; loading assigns each real weight, so nothing is allocated twice."""
    if is_quantized(weight):
        module.quantized = weight
        module.weight = None  # the dense form is never materialized
    else:
        module.weight = nn.Parameter(weight, requires_grad=False)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.quantized: Any = None

    def set_weight(self, weight: Any) -> None:
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} for a {self.in_features}->{self.out_features} layer"
            )
        _assign(self, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            out = self.quantized.linear(x)
            return out + self.bias if self.bias is not None else out
        return dense_linear(x, self.weight, self.bias)


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim), requires_grad=False)
        self.quantized: Any = None

    def set_weight(self, weight: Any) -> None:
        if tuple(weight.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"embedding of shape {tuple(weight.shape)}, expected {(self.num_embeddings, self.embedding_dim)}"
            )
        _assign(self, weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized.embedding(ids)
        return F.embedding(ids, self.weight)


class TiedLMHead(nn.Module):
    """The output projection that reuses the token embedding's weight (dense or quantized)."""

    def __init__(self, embedding: VocabEmbedding) -> None:
        super().__init__()
        self._embedding = [embedding]  # a list, so the embedding isn't registered (and loaded) twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self._embedding[0]
        if emb.quantized is not None:
            return emb.quantized.linear(x)
        return dense_linear(x, emb.weight)
