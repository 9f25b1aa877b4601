"""GGMLWeight: a weight matrix that stays in its GGML block format in memory.

It implements the quantized-weight interface that ladle/layers/linear.py accepts (shape, nbytes, linear,
dequantize, embedding). `linear` runs the native integer kernels (quant/native.py); `embedding` dequantizes
only the looked-up rows, so a quantized token embedding never exists in float32 as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ladle.quant.dequant import QType, dequantize, row_bytes
from ladle.quant.native import NativeKernels, QuantizedInput, native_kernels

# Rows dequantized at a time by the pure-torch fallback of linear(): bounds its float32 temporary.
_FALLBACK_ROWS = 4096


class GGMLWeight:
    """W of shape (out_features, in_features), stored as raw GGML rows (uint8 [out_features, row_bytes])."""

    def __init__(self, raw: torch.Tensor, qtype: QType | int, shape: tuple[int, int]) -> None:
        qtype = QType(qtype)
        out_features, in_features = shape
        expected = (out_features, row_bytes(qtype, in_features))
        if raw.dtype != torch.uint8 or tuple(raw.shape) != expected:
            raise ValueError(
                f"{qtype.name} weight {shape}: expected uint8 bytes of shape {expected}, got "
                f"{raw.dtype} {tuple(raw.shape)}"
            )
        self.raw = raw if raw.stride(-1) == 1 else raw.contiguous()
        self.qtype = qtype
        self.shape = (out_features, in_features)
        self._kernels: NativeKernels | None = native_kernels()
        if self._kernels is not None and not self._kernels.supports(qtype):
            self._kernels = None

    def __repr__(self) -> str:
        return f"GGMLWeight({self.qtype.name}, shape={self.shape})"

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    @property
    def has_fast_matmul(self) -> bool:
        return self._kernels is not None

    @property
    def act_format(self) -> int | None:
        """Weights with equal act_format can share one quantize_input() of their common input; None without
        native kernels."""
        return None if self._kernels is None else self._kernels.act_format(self.qtype)

    def quantize_input(self, x: torch.Tensor) -> QuantizedInput | None:
        """x [..., in_features] quantized as ggml does for this weight (see NativeKernels.quantize_input)."""
        if self._kernels is None:
            return None
        return self._kernels.quantize_input(self.qtype, x.reshape(-1, self.shape[1]))

    def linear(
        self,
        x: torch.Tensor,
        quantized: QuantizedInput | None = None,
        exact: bool = True,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [..., in_features] -> x @ W.T [..., out_features] (float32), computed as llama.cpp does.
        `quantized`: x already quantized by quantize_input of a weight with the same act_format.
        exact=False: added up in the fastest order, not llama.cpp's (for an LM head); `out`: a float32
        [rows, out_features] tensor to write into (with the native kernels; see NativeKernels.matmul)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.shape[1]).float().contiguous()
        if self._kernels is not None:
            y = self._kernels.matmul(self.qtype, self.raw, x2, quantized=quantized, exact=exact, out=out)
        else:
            y = torch.cat(
                [
                    F.linear(x2, dequantize(self.raw[i : i + _FALLBACK_ROWS], self.qtype))
                    for i in range(0, self.shape[0], _FALLBACK_ROWS)
                ],
                dim=-1,
            )
        y = y.reshape(*lead, self.shape[0])
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.raw, self.qtype).to(dtype)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of W, dequantized: [*ids.shape, in_features] float32."""
        rows = self.raw.index_select(0, ids.reshape(-1).long())
        return dequantize(rows, self.qtype).reshape(*ids.shape, self.shape[1])

    @staticmethod
    def stack(weights: Sequence[GGMLWeight]) -> GGMLWeight | None:
        """One weight holding the rows of all of them (e.g. q, k and v, to run one matmul instead of three);
        None when their formats or input sizes differ (Q4_K_M files mix types within a layer)."""
        first = weights[0]
        if any(w.qtype != first.qtype or w.shape[1] != first.shape[1] for w in weights):
            return None
        raw = torch.cat([w.raw for w in weights])
        return GGMLWeight(raw, first.qtype, (raw.shape[0], first.shape[1]))

    def rows(self, index: torch.Tensor) -> GGMLWeight:
        """A new weight made of the given rows (e.g. to undo llama.cpp's Q/K row permutation)."""
        return GGMLWeight(self.raw.index_select(0, index.long()), self.qtype, (index.numel(), self.shape[1]))
