"""The Triton GEMV (ladle.kernels.triton_gemv) against cuBLAS (F.linear) at decode batch 1, 2, 4 in bf16 on
the weight shapes of Llama-3.1-8B, Qwen3-8B and Gemma-3-1B (and the 128256-row LM head).

usage: PYTHONPATH=src python benchmarks/bench_gemv.py --out gemv.json
       TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/bench_gemv.py --smoke   (CPU: checks it runs)

Times are CUDA-graph replays of back-to-back calls (as the engine's decode graphs run them), each call on
another of several weight copies totalling > 256 MB, so every call streams its weight from HBM, not the
H200's 50 MB L2; TB/s counts the bytes of weight, x and output. Per shape the Triton kernel is timed with
default_config and with a sweep, staged to fit a few minutes (each new config is a compile):
  1. M=1, split_k=1: every (block_n, block_k, num_warps) of the grid with 8..64 weight elements per thread;
  2. M=1, split_k 2/4/8 on the 4 best of 1, where the row blocks alone give < 4 programs per SM;
  3. M=2 and M=4: the 6 best configs of M=1, and default_config;
  4. num_stages 1 and 3 on each M's best.
Every Triton result is checked against F.linear (max abs err in the table and the JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from ladle.kernels.triton_gemv import GemvConfig, default_config, gemv
from ladle.presets import preset_path


def _model_shapes() -> dict[tuple[int, int], list[str]]:
    """(N, K) -> the projections that have it, from the shipped presets' config.json (ladle.presets). qkv is
    q, k and v fused: (q heads + 2 kv heads) x head dim."""
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in ("llama-3.1-8b", "qwen3-8b", "gemma-3-1b"):
        c = json.loads((preset_path(name) / "config.json").read_text())
        hidden, heads, kv_heads = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        head_dim = c.get("head_dim") or hidden // heads
        for proj, nk in {
            "qkv": ((heads + 2 * kv_heads) * head_dim, hidden),
            "o": (hidden, heads * head_dim),
            "gate_up": (2 * c["intermediate_size"], hidden),
            "down": (hidden, c["intermediate_size"]),
        }.items():
            shapes.setdefault(nk, []).append(f"{name} {proj}")
        if name == "llama-3.1-8b":
            shapes.setdefault((c["vocab_size"], hidden), []).append(f"{name} lm_head")
    return shapes


GRID_BLOCK_N = (4, 8, 16, 32, 64)
GRID_BLOCK_K = (128, 256, 512, 1024)
GRID_WARPS = (2, 4, 8)
GRID_SPLITS = (2, 4, 8)


def base_grid(k: int) -> list[GemvConfig]:
    """split_k=1 configs with 8..64 weight elements per thread: fewer leave the loads too narrow to keep
    bytes in flight, more spill once M=4's products are live."""
    return [
        GemvConfig(block_n=bn, block_k=bk, split_k=1, num_warps=w, num_stages=2)
        for bn, bk, w in itertools.product(GRID_BLOCK_N, GRID_BLOCK_K, GRID_WARPS)
        if 8 <= bn * bk // (32 * w) <= 64 and bk <= max(128, triton.next_power_of_2(k))
    ]


def split_variants(cfgs: list[GemvConfig], n: int, k: int, sm_count: int) -> list[GemvConfig]:
    """Splits of cfgs where the row blocks alone give < 4 programs per SM and each split keeps >= 2
    chunks."""
    return [
        replace(c, split_k=s)
        for c in cfgs
        for s in GRID_SPLITS
        if triton.cdiv(n, c.block_n) < 4 * sm_count and triton.cdiv(triton.cdiv(k, c.block_k), s) >= 2
    ]


class Timer:
    """Seconds per call of fn(weight) over rotating weight copies: CUDA-graph replays on a GPU, wall-clock
    single calls on the CPU (the interpreter: only that it runs)."""

    def __init__(self, weights: list[torch.Tensor], calls: int, replays: int):
        self.weights, self.calls, self.replays = weights, calls, replays

    def __call__(self, fn) -> float:
        if not self.weights[0].is_cuda:
            start = time.perf_counter()
            fn(self.weights[0])
            return time.perf_counter() - start
        for w in self.weights:  # compiles, and sizes split counters, outside capture
            fn(w)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(self.calls):
                fn(self.weights[i % len(self.weights)])
        graph.replay()
        times = []
        for _ in range(self.replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / self.calls)
        del graph
        return statistics.median(times)


def _entry(cfg: GemvConfig | None, seconds: float, nbytes: int, err: float | None) -> dict:
    return {
        "config": asdict(cfg) if cfg is not None else None,
        "us": seconds * 1e6,
        "tb_s": nbytes / seconds / 1e12,
        "max_abs_err": err,
    }


def bench_shape(n: int, k: int, ms: list[int], args, sm_count: int, device: str) -> list[dict]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    weight_bytes = n * k * torch.finfo(dtype).bits // 8
    copies = max(2, math.ceil(args.rotate_mb * 2**20 / weight_bytes)) if device == "cuda" else 1
    weights = [torch.randn(n, k, device=device, dtype=dtype) * 0.02 for _ in range(copies)]
    calls = max(copies, math.ceil(args.bytes_per_replay_gb * 1e9 / weight_bytes))
    calls = min(calls, 4000) - min(calls, 4000) % copies
    timer = Timer(weights, calls, args.replays)
    grid = args.grid if args.grid is not None else base_grid(k)
    results, ranked_m1 = [], []
    for m in ms:
        x = torch.randn(m, k, device=device, dtype=dtype)
        nbytes = weight_bytes + (m * k + m * n) * torch.finfo(dtype).bits // 8
        ref = F.linear(x, weights[0])

        swept: dict[GemvConfig, tuple[float, float]] = {}

        def run(cfg: GemvConfig, x=x, ref=ref, w0=weights[0], swept=swept) -> None:
            if cfg in swept:
                return
            try:
                err = (gemv(x, w0, config=cfg).float() - ref.float()).abs().max().item()
                swept[cfg] = (timer(lambda w: gemv(x, w, config=cfg)), err)
            except (
                Exception
            ) as exc:  # a config the compiler refuses (resources) loses, it doesn't stop the run
                print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                swept[cfg] = (math.inf, math.nan)

        cublas = timer(lambda w, x=x: F.linear(x, w))
        default = default_config(n, k, m, sm_count)
        run(default)
        for cfg in grid if m == ms[0] else [c for c, _ in ranked_m1[: args.top]]:
            run(cfg)
        if m == ms[0] and args.grid is None:
            for cfg in split_variants(sorted(swept, key=lambda c: swept[c][0])[:4], n, k, sm_count):
                run(cfg)
        best = min(swept, key=lambda c: swept[c][0])
        for stages in args.stages:
            run(replace(best, num_stages=stages))
        ranked = sorted(swept.items(), key=lambda kv: kv[1][0])
        if m == ms[0]:
            ranked_m1 = ranked
        best, (best_s, best_err) = ranked[0]
        results.append(
            {
                "n": n,
                "k": k,
                "m": m,
                "bytes": nbytes,
                "cublas": _entry(None, cublas, nbytes, None),
                "default": _entry(default, swept[default][0], nbytes, swept[default][1]),
                "best": _entry(best, best_s, nbytes, best_err),
                "sweep": [_entry(c, s, nbytes, e) for c, (s, e) in ranked],
            }
        )
    del weights
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


def _cfg_str(c: dict) -> str:
    return f"bn{c['block_n']} bk{c['block_k']} s{c['split_k']} w{c['num_warps']} st{c['num_stages']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="two tiny shapes, three configs (CPU ok)")
    parser.add_argument("--m", default="1,2,4", help="batch sizes; the first is the one fully swept")
    parser.add_argument("--only", default="", help="comma-separated NxK shapes to run (default: all)")
    parser.add_argument("--top", type=int, default=6, help="configs of the first M re-timed at the others")
    parser.add_argument("--rotate-mb", type=float, default=256, help="weight copies total at least this")
    parser.add_argument("--bytes-per-replay-gb", type=float, default=1.5)
    parser.add_argument("--replays", type=int, default=5)
    args = parser.parse_args()
    args.stages = (1, 3)
    args.grid = None
    ms = [int(v) for v in args.m.split(",")]
    if args.smoke:
        shapes = {(40, 100): ["smoke ragged"], (96, 256): ["smoke even"]}
        ms = ms[:2]
        args.grid = [GemvConfig(16, 32), GemvConfig(8, 64, split_k=2), GemvConfig(32, 128, split_k=2)]
        args.stages, args.replays = (), 1
    else:
        shapes = _model_shapes()
        if args.only:
            wanted = {tuple(int(v) for v in s.split("x")) for s in args.only.split(",")}
            shapes = {nk: names for nk, names in shapes.items() if nk in wanted}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("no CUDA device: run with TRITON_INTERPRET=1 (and --smoke) to check the script on the CPU")
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 4
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (TRITON_INTERPRET=1)"
    print(f"{gpu}, {sm_count} SMs, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    header = (
        f"{'shape':<42} {'M':>1} | {'cuBLAS us':>9} {'TB/s':>5} | {'default us':>10} {'TB/s':>5} | "
        f"{'best config':<26} {'us':>7} {'TB/s':>5} {'vs cuBLAS':>9} | {'max err':>8}"
    )
    print(header, flush=True)
    started = time.perf_counter()
    rows = []
    for (n, k), names in shapes.items():
        shape_start = time.perf_counter()
        for r in bench_shape(n, k, ms, args, sm_count, device):
            r["names"] = names
            rows.append(r)
            cb, df, bs = r["cublas"], r["default"], r["best"]
            err = max(df["max_abs_err"], bs["max_abs_err"])
            label = f"{n}x{k} {names[0]}" + (f" +{len(names) - 1}" if len(names) > 1 else "")
            print(
                f"{label:<42} {r['m']:>1} | {cb['us']:9.2f} {cb['tb_s']:5.2f} | {df['us']:10.2f} "
                f"{df['tb_s']:5.2f} | {_cfg_str(bs['config']):<26} {bs['us']:7.2f} {bs['tb_s']:5.2f} "
                f"{cb['us'] / bs['us']:8.2f}x | {err:8.2g}",
                flush=True,
            )
        print(
            f"  ({len(rows[-1]['sweep'])} configs at M={ms[-1]}; {time.perf_counter() - shape_start:.0f} s)"
        )
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    if args.out:
        meta = {"device": gpu, "sm_count": sm_count, "torch": torch.__version__, "triton": triton.__version__}
        args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
