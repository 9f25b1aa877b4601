"""Device and dtype choice, and how many KV blocks fit."""

from __future__ import annotations

import torch

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for, but PyTorch sees no CUDA device here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {name!r} is not supported (use cpu or cuda)")
    return device


def resolve_kv_cache_dtype(
    name: str, model_dtype: torch.dtype, device: torch.device, checkpoint_format: str
) -> torch.dtype:
    """The K/V cache's element type: auto is the model dtype, except float16 for GGUF models on the CPU
    (llama.cpp's default cache type, which its numerics round K, V, q and the probabilities to)."""
    if name == "auto":
        if checkpoint_format == "gguf" and device.type == "cpu":
            return torch.float16
        return model_dtype
    if name in ("fp8", "fp8_e4m3"):
        # Half the K/V bytes of bf16 that decode attention reads; the Triton kernels widen tiles as they load.
        if device.type != "cuda":
            raise ValueError(
                f"kv_cache_dtype: {name} needs a CUDA device (on the CPU use float16 or bfloat16)"
            )
        # e4m3 conversions (Triton's, and the PTX cvt the attention kernels use) start with Ada/Hopper.
        # (Without a GPU here, e.g. resolving a config ahead of time, the device's own start reports that.)
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            if (major, minor) < (8, 9):
                raise ValueError(
                    f"kv_cache_dtype: {name} needs a GPU of compute capability 8.9 or newer (this one is "
                    f"{major}.{minor}); use auto"
                )
        return torch.float8_e4m3fn
    if name not in ("float16", "bfloat16", "float32"):
        raise ValueError(
            f"kv_cache_dtype: unknown dtype {name!r}; use auto, float16, bfloat16, float32 or fp8 (CUDA)"
        )
    dtype = _DTYPES[name]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("kv_cache_dtype: bfloat16 is not supported by this GPU; use float16")
    return dtype


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: str | None) -> torch.dtype:
    if name == "auto":
        if device.type == "cpu":
            return torch.float32  # exact, and the fastest path for torch's CPU kernels
        if checkpoint_dtype in ("float16", "half"):
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        dtype = _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype: unknown dtype {name!r}; use auto, float32, float16 or bfloat16") from None
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype: bfloat16 is not supported by this GPU; use float16")
    return dtype
