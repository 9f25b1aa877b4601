"""Decode attention alone at small and mid batches: the engine's (tiles, splits) choice for a CUDA graph
against every (BLOCK_N, warps, stages) x splits here, as CUDA-graph replays (Llama-3.1-8B heads, bf16 K/V).
bench_decode_kv.py --sweep covers the large batches. python benchmarks/sweep_decode_splits.py"""

from __future__ import annotations

import functools

import torch
from bench_attention_ab import KVH, _time_with_tiles  # run as a script: benchmarks/ is on sys.path
from bench_decode_kv import _case

from ladle.kernels import triton_attention as ops

TILES = [None, (32, 1, 3), (32, 2, 3), (64, 2, 3), (64, 4, 3), (128, 4, 3), (16, 1, 3)]  # None: the default
SHAPES = [(1, 512), (1, 2048), (8, 512), (8, 2048), (32, 512), (32, 1024), (64, 512)]  # batch x context


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for batch, ctx in SHAPES:
        graph_splits = ops.decode_num_splits(batch, KVH, None, sms)  # as the CUDA graphs choose
        q, k, v, tables, lens = _case(batch, ctx, torch.bfloat16, gen)
        out = torch.empty_like(q)
        results = []
        for tiles in TILES:
            for splits in sorted({1, 2, 4, 8, 16, 32, graph_splits}):
                args = (q, k, v, out, tables, lens, q.shape[-1] ** -0.5, None, splits)
                fn = functools.partial(ops.decode_attention, *args)
                us = _time_with_tiles("LADLE_DECODE_TILES", tiles, fn, f"{batch}x{ctx} s{splits}")
                if us is not None:
                    results.append((us, tiles, splits))
        default = next(us for us, tiles, splits in results if tiles is None and splits == graph_splits)
        results.sort(key=lambda r: r[0])
        best = "; ".join(f"{us:.2f} {tiles} s{splits}" for us, tiles, splits in results[:6])
        print(f"{batch}x{ctx}: default splits={graph_splits} {default:.2f} us; best {best}", flush=True)


if __name__ == "__main__":
    main()
