"""load_gguf: a .gguf file -> ArchConfig + Tokenizer + an iterator of Hugging Face-named weights.

Weights stay on the memory-mapped file where they can: float32 tensors are views of it, and quantized
matrices whose format has a native kernel (Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K) become GGMLWeight
objects over the mapped bytes. Other quantized formats (Q2_K, Q3_K) and everything when no C compiler is
available are expanded to float32 at load. F16/BF16 tensors are yielded in their own dtype (views).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ladle.loader.checkpoint import Checkpoint
from ladle.loader.gguf_config import (
    GGUF_ARCHITECTURES,
    GGUFArchitecture,
    arch_config_from_gguf,
    unpermute_rows,
)
from ladle.loader.gguf_file import GGUFError, GGUFFile, TensorInfo, read_gguf
from ladle.loader.gguf_tokenizer import UnsupportedTokenizerError, load_gguf_tokenizer
from ladle.loader.tokenizer import Tokenizer
from ladle.model.config import ArchConfig
from ladle.quant.dequant import SUPPORTED_TYPES, QType, dequantize
from ladle.quant.native import native_kernels
from ladle.quant.weight import GGMLWeight

__all__ = ["GGUFCheckpoint", "GGUFError", "load_gguf", "open_gguf_checkpoint"]

_PLAIN = {QType.F32, QType.F16, QType.BF16}


@dataclass
class GGUFCheckpoint:
    path: Path
    arch_config: ArchConfig
    tokenizer: Tokenizer
    metadata: dict[str, Any]
    chat_template: str | None
    file: GGUFFile = field(repr=False)
    spec: GGUFArchitecture = field(repr=False)

    def _keeps_quantized(self, info: TensorInfo) -> bool:
        kernels = native_kernels()
        return len(info.shape) == 2 and kernels is not None and kernels.supports(info.qtype)

    def _loaded_names(self) -> Iterator[tuple[str, TensorInfo]]:
        for name, info in self.file.tensors.items():
            hf = self.spec.hf_name(name)
            if hf is not None:
                yield hf, info

    def weights(self, file_norms: bool = False) -> Iterator[tuple[str, torch.Tensor | GGMLWeight]]:
        """(Hugging Face name, tensor or GGMLWeight) for every weight the model needs, in file order.

        file_norms: yield Gemma's norm weights as stored ((1 + w), what ggml multiplies by), for the ggml
        numerics path; by default they become Hugging Face's w (the torch model adds the 1 back)."""
        cfg = self.arch_config
        for hf, info in self._loaded_names():
            value = self._load(info)
            if self.spec.permute_qk and hf.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
                heads = cfg.num_attention_heads if ".q_proj." in hf else cfg.num_key_value_heads
                value = _reorder_rows(value, unpermute_rows(info.shape[0], heads))
            elif self.spec.permute_qk and hf.endswith(("self_attn.q_proj.bias", "self_attn.k_proj.bias")):
                heads = cfg.num_attention_heads if ".q_proj." in hf else cfg.num_key_value_heads
                value = value[torch.tensor(unpermute_rows(info.shape[0], heads))]
            if self.spec.norm_offset and hf.endswith("norm.weight") and not file_norms:
                value = value.float() - self.spec.norm_offset
            yield hf, value

    def _load(self, info: TensorInfo) -> torch.Tensor | GGMLWeight:
        raw = self.file.tensor_bytes(info.name)
        if info.qtype == QType.F32:
            return raw.view(torch.float32).reshape(info.shape)
        if info.qtype == QType.F16:
            return raw.view(torch.float16).reshape(info.shape)
        if info.qtype == QType.BF16:
            return raw.view(torch.bfloat16).reshape(info.shape)
        if self._keeps_quantized(info):
            return GGMLWeight(raw, info.qtype, (info.shape[0], info.shape[1]))
        return dequantize(raw, info.qtype, info.shape)

    def in_memory_bytes(self) -> int:
        """Bytes the weights take once loaded: mapped bytes for tensors kept as stored, 4 per value for
        those expanded to float32 (norms of Gemma too, since the offset is applied in float32)."""
        total = 0
        for hf, info in self._loaded_names():
            expanded = info.qtype not in _PLAIN and not self._keeps_quantized(info)
            if expanded or (self.spec.norm_offset and hf.endswith("norm.weight")):
                total += 4 * int(torch.Size(info.shape).numel())
            else:
                total += info.nbytes
        return total


def _reorder_rows(value: torch.Tensor | GGMLWeight, order: list[int]) -> torch.Tensor | GGMLWeight:
    index = torch.tensor(order)
    if isinstance(value, GGMLWeight):
        return value.rows(index)
    return value.index_select(0, index)


def load_gguf(path: str | Path) -> GGUFCheckpoint:
    """Reads a GGUF file's header, config and tokenizer (weights load lazily through `weights()`).

    Raises GGUFError (a ValueError) naming the file for a corrupt or truncated file, an unknown
    architecture, a tensor type ladle cannot read or a missing required tensor or key.
    """
    path = Path(path)
    gguf = read_gguf(path)
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        supported = ", ".join(sorted(GGUF_ARCHITECTURES))
        raise GGUFError(
            path, f"unsupported architecture {arch!r} (ladle reads GGUF architectures: {supported})"
        )
    spec = GGUF_ARCHITECTURES[arch]

    for name, info in gguf.tensors.items():
        if spec.hf_name(name) is None:
            continue
        if info.qtype not in SUPPORTED_TYPES:
            raise GGUFError(
                path,
                f"tensor {name!r} has type {info.qtype.name}, which ladle cannot read "
                f"(supported: {', '.join(sorted(t.name for t in SUPPORTED_TYPES))})",
            )
    if "token_embd.weight" not in gguf.tensors:
        raise GGUFError(path, "missing tensor 'token_embd.weight'")

    rope_freqs = None
    if "rope_freqs.weight" in gguf.tensors:
        rope_freqs = gguf.tensor_bytes("rope_freqs.weight").view(torch.float32).tolist()
    embed = gguf.tensors["token_embd.weight"]
    try:
        cfg = arch_config_from_gguf(
            meta, rope_freqs=rope_freqs, has_output="output.weight" in gguf.tensors, vocab_size=embed.shape[0]
        )
    except KeyError as exc:
        raise GGUFError(path, f"missing metadata key {exc.args[0]!r}") from None
    except ValueError as exc:
        raise GGUFError(path, str(exc)) from None
    if embed.shape[1] != cfg.hidden_size:
        raise GGUFError(
            path, f"token_embd.weight has shape {embed.shape}, expected rows of {cfg.hidden_size}"
        )
    for i in range(cfg.num_hidden_layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"):
            if f"blk.{i}.{part}.weight" not in gguf.tensors:
                raise GGUFError(path, f"missing tensor 'blk.{i}.{part}.weight'")
    try:
        tokenizer = load_gguf_tokenizer(meta)
    except UnsupportedTokenizerError as exc:
        raise GGUFError(path, str(exc)) from None
    return GGUFCheckpoint(
        path=path,
        arch_config=cfg,
        tokenizer=tokenizer,
        metadata=meta,
        chat_template=tokenizer.chat_template,
        file=gguf,
        spec=spec,
    )


def open_gguf_checkpoint(path: str | Path) -> Checkpoint:
    """The engine's view of a .gguf file (loader/checkpoint.py). GGMLWeight runs on the CPU only; on other
    devices quantized matrices are expanded to the model dtype as they stream. Its weights() also takes
    file_norms (see GGUFCheckpoint.weights), which load_model passes for the ggml numerics path."""
    gguf = load_gguf(path)

    def weights(
        device: torch.device, dtype: torch.dtype, file_norms: bool = False
    ) -> Iterator[tuple[str, Any]]:
        for name, value in gguf.weights(file_norms):
            if isinstance(value, GGMLWeight) and torch.device(device).type != "cpu":
                value = value.dequantize(dtype)
            yield name, value

    return Checkpoint(
        name=str(gguf.path),
        path=gguf.path,
        arch=gguf.arch_config,
        tokenizer=gguf.tokenizer,
        weights=weights,
        format="gguf",
        chat_template=gguf.chat_template,
    )
