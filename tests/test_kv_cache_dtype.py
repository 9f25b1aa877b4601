"""kv_cache_dtype (vLLM's option): validation, what "auto" picks, and GGUF models running on each type."""

from __future__ import annotations

import pytest
import torch

from gguf_support import stories_path
from ladle import LLM, SamplingParams
from ladle.config import EngineConfig
from ladle.executor.device import resolve_kv_cache_dtype
from ladle.executor.model_runner import kv_block_bytes


def test_bad_kv_cache_dtype_names_the_field():
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(model="x", kv_cache_dtype="fp4")
    with pytest.raises(ValueError, match="kv_cache_dtype: fp8 needs a CUDA device"):
        resolve_kv_cache_dtype("fp8", torch.float32, torch.device("cpu"), "gguf")
    with pytest.raises(ValueError, match="kv_cache_dtype: fp8 needs a CUDA device"):
        LLM(model=str(stories_path()), kv_cache_dtype="fp8")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        resolve_kv_cache_dtype("int4", torch.float32, torch.device("cpu"), "gguf")


def test_auto_is_float16_for_gguf_on_cpu_else_the_model_dtype():
    cpu = torch.device("cpu")
    assert resolve_kv_cache_dtype("auto", torch.float32, cpu, "gguf") == torch.float16
    assert resolve_kv_cache_dtype("auto", torch.float32, cpu, "safetensors") == torch.float32
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, torch.device("cuda"), "gguf") == torch.bfloat16
    assert resolve_kv_cache_dtype("float32", torch.float32, cpu, "gguf") == torch.float32
    assert resolve_kv_cache_dtype("fp8", torch.bfloat16, torch.device("cuda"), "safetensors") == (
        torch.float8_e4m3fn
    )


@pytest.mark.parametrize(
    "name,dtype", [("auto", torch.float16), ("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_gguf_engine_allocates_and_runs_each_cache_type(name, dtype):
    llm = LLM(model=str(stories_path()), kv_cache_dtype=name)
    engine = llm.llm_engine
    assert engine.runner.kv_caches[0][0].dtype == dtype
    block = kv_block_bytes(engine.runner.model.config, engine.config.block_size, dtype)
    assert block == kv_block_bytes(engine.runner.model.config, engine.config.block_size, torch.float32) * (
        dtype.itemsize / 4
    )
    out = llm.generate("Once upon a time", SamplingParams(temperature=0.0, max_tokens=16))[0]
    assert len(out.outputs[0].token_ids) == 16


def test_serve_accepts_the_flag():
    import argparse

    from ladle.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert parser.parse_args(["--kv-cache-dtype", "float32"]).kv_cache_dtype == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-dtype", "fp4"])
