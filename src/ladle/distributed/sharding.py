"""The tensor-parallel plan: turns a model built (on the meta device) for one device into one rank's slice,
then streams only that rank's part of each weight into it.

The plan works on the shared building blocks (llama.Attention, llama.GatedMLP, the decoder stack's
embedding, the LM head), so every architecture made of them (Llama, Mistral, Qwen2/3, Gemma 3) is covered
without TP code in the model files. A model with any other Linear fails with a clear error rather than
running a replicated (wrong) layer.

Attention heads are split evenly. KV heads are split too when there are at least as many as ranks;
otherwise each KV head is replicated on tp / num_kv_heads ranks, the ranks whose query heads use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ladle.distributed.group import TPGroup
from ladle.distributed.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    Shard,
    TiedParallelLMHead,
    VocabParallelEmbedding,
)
from ladle.layers.attention import AttentionBackend
from ladle.layers.linear import Linear, TiedLMHead, is_quantized
from ladle.loader.checkpoint import Checkpoint
from ladle.loader.hf_folder import safetensors_files
from ladle.model.config import ArchConfig
from ladle.model.llama import Attention, CausalLM, GatedMLP, _normalize_name
from ladle.model.registry import build_model


def check_tp_support(arch: ArchConfig, tp: int) -> None:
    """Raises ValueError when `arch` cannot be split over `tp` ranks, naming the dimension that doesn't divide."""
    heads, kv_heads = arch.num_attention_heads, arch.num_key_value_heads
    problems = []
    if heads % tp:
        problems.append(f"num_attention_heads ({heads})")
    if kv_heads % tp and tp % kv_heads:
        problems.append(f"num_key_value_heads ({kv_heads}; tp must divide it or be a multiple of it)")
    if arch.intermediate_size % tp:
        problems.append(f"intermediate_size ({arch.intermediate_size})")
    if problems:
        raise ValueError(f"tensor_parallel_size: {tp} does not divide this model's " + ", ".join(problems))


def local_arch(arch: ArchConfig, tp: int) -> ArchConfig:
    """The per-rank view: this rank's attention and KV heads (what its KV pool is sized by)."""
    return dataclasses.replace(
        arch,
        num_attention_heads=arch.num_attention_heads // tp,
        num_key_value_heads=max(1, arch.num_key_value_heads // tp),
    )


def _split(total: int, group: TPGroup) -> tuple[int, int]:
    size = total // group.world_size
    return group.rank * size, (group.rank + 1) * size


def _shard_attention(attn: Attention, cfg: ArchConfig, group: TPGroup) -> None:
    tp, d = group.world_size, attn.head_dim
    bias = attn.q_proj.bias is not None
    q0, q1 = _split(cfg.num_attention_heads, group)
    kv = cfg.num_key_value_heads
    if kv >= tp:
        k0, k1 = _split(kv, group)
    else:
        k0 = group.rank // (tp // kv)  # replicated: the KV head this rank's query heads read
        k1 = k0 + 1
    attn.q_proj = ColumnParallelLinear(cfg.hidden_size, (q0 * d, q1 * d), bias)
    attn.k_proj = ColumnParallelLinear(cfg.hidden_size, (k0 * d, k1 * d), bias)
    attn.v_proj = ColumnParallelLinear(cfg.hidden_size, (k0 * d, k1 * d), bias)
    attn.o_proj = RowParallelLinear((q0 * d, q1 * d), cfg.hidden_size, attn.o_proj.bias is not None, group)
    attn.num_heads, attn.num_kv_heads = q1 - q0, k1 - k0


def _shard_mlp(mlp: GatedMLP, cfg: ArchConfig, group: TPGroup) -> None:
    rows = _split(cfg.intermediate_size, group)
    mlp.gate_proj = ColumnParallelLinear(cfg.hidden_size, rows, mlp.gate_proj.bias is not None)
    mlp.up_proj = ColumnParallelLinear(cfg.hidden_size, rows, mlp.up_proj.bias is not None)
    mlp.down_proj = RowParallelLinear(rows, cfg.hidden_size, mlp.down_proj.bias is not None, group)


_PARALLEL = (ColumnParallelLinear, RowParallelLinear, ParallelLMHead)


def apply_tensor_parallel(model: CausalLM, group: TPGroup) -> CausalLM:
    """Replaces the model's layers by this rank's sharded ones, in place (call on the meta device)."""
    cfg = model.config
    check_tp_support(cfg, group.world_size)
    for module in list(model.modules()):
        if isinstance(module, Attention):
            _shard_attention(module, cfg, group)
        elif isinstance(module, GatedMLP):
            _shard_mlp(module, cfg, group)
    stack = model.model
    stack.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, group)
    if isinstance(model.lm_head, TiedLMHead):
        model.lm_head = TiedParallelLMHead(stack.embed_tokens, cfg.vocab_size)
    else:
        model.lm_head = ParallelLMHead(cfg.hidden_size, cfg.vocab_size, group)
    left = [
        name for name, m in model.named_modules() if isinstance(m, Linear) and not isinstance(m, _PARALLEL)
    ]
    if left:
        raise ValueError(
            f"{cfg.architecture}: no tensor-parallel plan for {', '.join(left[:3])}; "
            "run it with tensor_parallel_size=1"
        )
    model.config = local_arch(cfg, group.world_size)
    return model


# -- weights -----------------------------------------------------------------------------------------------
def _shard_of(model: CausalLM, name: str) -> tuple[str | None, Shard | None]:
    """(normalized name or None to skip, shard or None for a replicated weight)."""
    norm = _normalize_name(name)
    if norm is None or (norm == "lm_head.weight" and model.config.tie_word_embeddings):
        return None, None
    module_name, _, param = norm.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return norm, None  # load_weights names the unexpected weight
    shard_for = getattr(module, "shard_for", None)
    return norm, shard_for(param) if shard_for is not None else None


def _pad(tensor: torch.Tensor, shard: Shard) -> torch.Tensor:
    dim, start, end, size = shard
    if end - start == size:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = size - (end - start)
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def shard_tensor(weight: Any, shard: Shard, dtype: torch.dtype) -> Any:
    """This rank's part of a full weight already in memory.

    A quantized weight stays quantized when it can slice itself: `shard(dim, start, end)`, or for a block of
    output rows (column-parallel layers, the vocabulary) `rows(index)`, which GGUF weights have. Otherwise
    (row-parallel o_proj/down_proj, whose columns cut through quantization blocks, or a padded vocabulary
    shard) it is dequantized, then sliced: correct, at the dense form's memory and speed for that layer."""
    dim, start, end, _ = shard
    if is_quantized(weight):
        whole = end - start == shard[3]
        if whole and hasattr(weight, "shard"):
            return weight.shard(dim, start, end)
        if whole and dim == 0 and hasattr(weight, "rows"):
            return weight.rows(torch.arange(start, end))
        weight = weight.dequantize(dtype)
    return _pad(weight.narrow(dim, start, end - start).contiguous(), shard)


def iter_sharded_safetensors(
    model: CausalLM, files: list[Path], device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """Reads only this rank's rows or columns of each tensor (safetensors get_slice on the mapped file)."""
    target = str(device) if device.type == "cuda" else "cpu"
    for file in files:
        with safe_open(str(file), framework="pt", device=target) as f:
            for name in f.keys():
                norm, shard = _shard_of(model, name)
                if norm is None:
                    continue
                if shard is None:
                    tensor = f.get_tensor(name)
                else:
                    dim, start, end, _ = shard
                    part = f.get_slice(name)
                    tensor = part[start:end] if dim == 0 else part[:, start:end]
                    tensor = _pad(tensor, shard)
                yield name, tensor.to(dtype) if tensor.is_floating_point() else tensor


def iter_sharded(model: CausalLM, weights: Iterator[tuple[str, Any]], dtype: torch.dtype):
    """Shards a stream of full weights (GGUF, or any loader without slice reads)."""
    for name, weight in weights:
        norm, shard = _shard_of(model, name)
        if norm is None:
            continue
        yield name, weight if shard is None else shard_tensor(weight, shard, dtype)


def load_rank_model(
    ckpt: Checkpoint,
    group: TPGroup,
    device: torch.device,
    dtype: torch.dtype,
    backend: AttentionBackend,
    max_positions: int,
    dummy: bool = False,
    seed: int = 0,
) -> CausalLM:
    """model_loader.load_model for one tensor-parallel rank."""
    from ladle.loader.model_loader import _dummy_weights

    with torch.device("meta"):
        model = apply_tensor_parallel(build_model(ckpt.arch, backend), group)
    if dummy or ckpt.weights is None:
        # Random per rank: benchmarks only care about shapes (tokens differ from tensor_parallel_size=1).
        weights = _dummy_weights(model, seed + group.rank, device, dtype)
    elif ckpt.format == "safetensors":
        weights = iter_sharded_safetensors(model, safetensors_files(ckpt.path), device, dtype)
    else:
        weights = iter_sharded(model, ckpt.weights(device, dtype), dtype)
    model.load_weights(weights, device, dtype)
    model.build_buffers(device, max_positions)
    return model.eval()
