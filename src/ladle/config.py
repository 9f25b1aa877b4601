"""EngineConfig: every engine-wide number in one place, with the reason beside it."""

from __future__ import annotations

from dataclasses import dataclass

# fp8 (alias fp8_e4m3): e4m3 without scales, as vLLM's uncalibrated fp8 cache; CUDA only.
KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "float32", "fp8", "fp8_e4m3")


@dataclass
class EngineConfig:
    model: str
    dtype: str = "auto"  # auto: float32 on CPU (exact and fast there), the checkpoint's dtype on CUDA
    # K/V cache element type (vLLM's option): auto = the model dtype, except GGUF models on the CPU, which
    # get float16 as llama.cpp does by default (half the memory, and llama.cpp's numerics).
    kv_cache_dtype: str = "auto"
    device: str = "auto"  # auto: cuda when available, else cpu
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    load_format: str = "auto"  # or "dummy": random weights from config.json, for benchmarks
    tensor_parallel_size: int = 1
    # How tensor-parallel ranks are started: "mp" (processes on this host) or "ray" (a Ray cluster's nodes).
    distributed_executor_backend: str = "mp"
    seed: int = 0
    # 16 tokens per block: small enough that a partial last block wastes little, large enough that block
    # tables and prefix hashes stay cheap (the same choice as vLLM).
    block_size: int = 16
    # Tokens one step may process. Large enough to prefill a typical prompt in one step, small enough that
    # a long prompt doesn't stall running decodes for long (chunked prefill splits the rest).
    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    # CPU has no "free memory" to size by; the KV pool gets this many bytes (LADLE_CPU_KV_CACHE_BYTES).
    cpu_kv_cache_bytes: int = 2 << 30
    # Overrides the computed pool size (tests use it to force preemption).
    num_kv_blocks: int | None = None
    attention_backend: str = "auto"  # auto: triton on CUDA when available, else torch
    # True: no CUDA graphs (every step runs eagerly), as vLLM's option of that name.
    enforce_eager: bool = False
    tokenizer: str | None = None  # a folder with tokenizer.json, when the model folder has none
    # vLLM's option of that name: schedule and launch step N+1 before reading step N's sampled tokens back,
    # so host work (scheduling, inputs, detokenizing, stop checks) overlaps the GPU's work. Tokens and
    # outputs are the same; a request that stops at step N computes one discarded token in step N+1.
    # None: on for one CUDA device (the CPU computes what it launches, so there is nothing to overlap).
    async_scheduling: bool | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}"
            )
        if self.load_format not in ("auto", "dummy", "safetensors", "gguf"):
            raise ValueError(
                f"load_format must be auto, dummy, safetensors or gguf, got {self.load_format!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(
                f"max_model_len must be >= 1 (or None for the model's own), got {self.max_model_len}"
            )
        if self.max_num_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("max_num_batched_tokens and max_num_seqs must be >= 1")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.async_scheduling and self.tensor_parallel_size > 1:
            # The ranks' runners take every input token from the host; the step before's can't be there yet.
            raise ValueError("async_scheduling: not supported with tensor_parallel_size > 1 (leave it unset)")
        if self.distributed_executor_backend not in ("mp", "ray"):
            raise ValueError(
                f"distributed_executor_backend must be mp or ray, got {self.distributed_executor_backend!r}"
            )
