"""Tensor parallelism on real GPUs: TP=2 (NCCL) must give TP=1's greedy tokens.

Builds a model with a published config (qwen3-0.6b preset, or --preset NAME) and seeded random weights in a
temporary Hugging Face folder (safetensors, a small test tokenizer), so it needs no download; then runs the
same prompts with tensor_parallel_size=1 and 2. float32 must match token for token; bfloat16 is reported
(reduction order differs between one GPU and two, so a late divergence between near-tied logits can happen).

    NCCL_NVLS_ENABLE=0 python benchmarks/tp_device_check.py [--preset qwen3-0.6b] [--layers 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_folder(preset: str, layers: int, folder: Path) -> None:
    from ladle.layers.attention import TorchAttentionBackend
    from ladle.model.config import arch_config_from_hf
    from ladle.model.registry import build_model
    from ladle.presets import preset_path
    from tiny_models import build_tokenizer

    raw = json.loads((preset_path(preset) / "config.json").read_text())
    raw["num_hidden_layers"] = min(layers, raw["num_hidden_layers"])
    raw.pop("layer_types", None)
    arch = arch_config_from_hf(raw)
    with torch.device("meta"):
        model = build_model(arch, TorchAttentionBackend())
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            tensors[name] = torch.full(p.shape, 0.0 if model.norm_offset else 1.0)
        else:
            tensors[name] = torch.empty(p.shape).normal_(0.0, 0.05, generator=gen)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(raw))
    build_tokenizer(folder, 384)


def run(folder: Path, tp: int, dtype: str, max_tokens: int, eager: bool = False) -> list[list[int]]:
    from ladle import LLM, SamplingParams
    from ladle.config import EngineConfig

    extra = {"enforce_eager": True} if eager and "enforce_eager" in EngineConfig.__dataclass_fields__ else {}
    llm = LLM(
        str(folder),
        tensor_parallel_size=tp,
        dtype=dtype,
        gpu_memory_utilization=0.5,
        max_model_len=1024,
        max_num_seqs=16,
        **extra,
    )
    prompts = [
        {"prompt_token_ids": [(i * 7 + k) % 300 + 4 for i in range(n)]}
        for k, n in ((0, 5), (1, 60), (2, 300))
    ]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    llm.llm_engine.shutdown()
    tokens = [o.outputs[0].token_ids for o in outs]
    del llm, outs
    gc.collect()  # free this engine's KV pool before the next one sizes its own from free memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tokens


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-0.6b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build_folder(args.preset, args.layers, folder)
        for dtype in ("float32", "bfloat16"):
            one = run(folder, 1, dtype, args.max_tokens)
            # Default (CUDA graphs for decode when the engine captures them) and eager, to tell a graph
            # problem from a sharding one.
            for label, eager in (("default", False), ("eager", True)):
                two = run(folder, 2, dtype, args.max_tokens, eager=eager)
                same = one == two
                first_diff = [
                    next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(one, two)
                ]
                print(
                    f"{args.preset} ({args.layers} layers) {dtype} TP=2 {label}: same tokens as TP=1: {same}; "
                    f"first divergence per prompt: {first_diff}"
                )
                ok &= same or dtype != "float32"
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
