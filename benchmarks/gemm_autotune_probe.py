"""Would a Triton GEMM beat cuBLAS on Llama-3.1-8B's decode and prefill shapes? A probe, not a kernel: for each
(M, projection) it times torch's F.linear (cuBLAS) under CUDA-graph replay and lets Inductor's max-autotune
time its Triton matmul templates on the same shape; Inductor prints its table ("AUTOTUNE mm(...)", best
first, the cuBLAS `mm` among them). Also times cuBLAS with `preferred_blas_library("cublaslt")`.

PYTHONPATH=src python benchmarks/gemm_autotune_probe.py [--m 128,256] [--shapes gate_up,down,qkv,o] [--no-autotune]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

SHAPES = {  # name: (in_features K, out_features N), Llama-3.1-8B
    "qkv": (4096, 6144),
    "o": (4096, 4096),
    "gate_up": (4096, 28672),
    "down": (14336, 4096),
    "lm_head": (4096, 128256),
}


def time_us(fn) -> float:
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="64,128,256,2048")
    p.add_argument("--shapes", default="gate_up,down,qkv,o")
    p.add_argument("--no-autotune", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    peak = {"bf16": 790e12}  # the H200's measured dense bf16 rate (benchmarks/README.md)
    for name in args.shapes.split(","):
        k, n = SHAPES[name]
        # Several weight copies rotated through so that L2 (50 MB) never holds the one being read.
        copies = max(1, int(3 * 50e6 // (n * k * 2)) + 1)
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(copies)]
        for m in (int(v) for v in args.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            us = time_us(lambda x=x, weights=weights: [F.linear(x, w) for w in weights]) / copies
            torch.backends.cuda.preferred_blas_library("cublaslt")
            us_lt = time_us(lambda x=x, weights=weights: [F.linear(x, w) for w in weights]) / copies
            torch.backends.cuda.preferred_blas_library("default")
            flops = 2 * m * n * k
            tbs = n * k * 2 / (us * 1e-6) / 1e12
            print(
                f"{name} M={m} N={n} K={k}: cuBLAS {us:.1f} us ({flops / (us * 1e-6) / 1e12:.0f} TFLOPS, "
                f"{tbs:.2f} TB/s of weights, {flops / (us * 1e-6) / peak['bf16']:.0%} of 790); "
                f"cublasLt {us_lt:.1f} us",
                flush=True,
            )
            if not args.no_autotune:
                compiled = torch.compile(
                    lambda a, b: F.linear(a, b), mode="max-autotune-no-cudagraphs", dynamic=False
                )
                compiled(x, weights[0])  # Inductor prints its AUTOTUNE table for this shape
                torch._dynamo.reset()


if __name__ == "__main__":
    main()
