"""Builds a model on the meta device and fills it with real (or dummy) weights on the target device."""

from __future__ import annotations

import dataclasses

import torch

from ladle.layers.attention import AttentionBackend
from ladle.loader.checkpoint import Checkpoint
from ladle.model.ggml_cpu import use_ggml_numerics
from ladle.model.llama import CausalLM
from ladle.model.registry import build_model


def load_model(
    ckpt: Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    backend: AttentionBackend,
    max_positions: int,
    dummy: bool = False,
    seed: int = 0,
) -> CausalLM:
    ggml = not dummy and ckpt.weights is not None and use_ggml_numerics(ckpt.format, device, dtype)
    arch = dataclasses.replace(ckpt.arch, numerics="ggml") if ggml else ckpt.arch
    with torch.device("meta"):
        model = build_model(arch, backend)
    if dummy or ckpt.weights is None:
        model.load_weights(_dummy_weights(model, seed, device, dtype), device, dtype)
    elif ggml:
        # GGUF's norm weights as stored: ggml multiplies by them, Gemma's (1 + w) included.
        model.load_weights(ckpt.weights(device, dtype, file_norms=True), device, dtype)
        model.enable_ggml_numerics(max_positions)
    else:
        model.load_weights(ckpt.weights(device, dtype), device, dtype)
    model.build_buffers(device, max_positions)
    return model.eval()


def _dummy_weights(model: CausalLM, seed: int, device: torch.device, dtype: torch.dtype):
    """Random weights with the checkpoint's shapes: small normal values keep activations finite, so
    benchmarks run the same arithmetic as real weights (speed does not depend on the values)."""
    # Generated on the target device: filling an 8B-parameter model on the host would take minutes.
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            fill = 0.0 if model.norm_offset else 1.0
            value = torch.full(param.shape, fill, device=device, dtype=dtype)
        else:
            value = torch.empty(param.shape, device=device, dtype=dtype).normal_(
                0.0, 0.02, generator=generator
            )
        yield name, value
