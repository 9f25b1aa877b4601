"""Decode attention at the throughput run's shapes (Llama-3.1-8B: 32 heads, 8 KV heads, head_dim 128, block 16),
bf16 against fp8 (e4m3) K/V: achieved GB/s of K/V read for the default tiles and a few others.

python benchmarks/bench_decode_kv.py [--sweep]   (--sweep: tiles, warps and context splits at batch 256 and 64)
"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
from triton.testing import do_bench

from ladle.kernels import triton_attention as ops

H, KVH, D, BS = 32, 8, 128, 16


def _case(batch: int, ctx: int, dtype: torch.dtype, gen: torch.Generator):
    blocks = -(-ctx // BS)
    perm = torch.randperm(batch * blocks, generator=gen)
    tables = perm.view(batch, blocks).to(torch.int32).cuda()
    k = torch.randn(batch * blocks, BS, KVH, D, device="cuda", dtype=torch.bfloat16).to(dtype)
    v = torch.randn_like(k, dtype=torch.bfloat16).to(dtype)
    q = torch.randn(batch, H, D, device="cuda", dtype=torch.bfloat16)
    lens = torch.full((batch,), ctx, dtype=torch.int32, device="cuda")
    return q, k, v, tables, lens


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sweep", action="store_true", help="also try other (BLOCK_N, warps, stages) and splits")
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiles = list(itertools.product([32, 64, 128], [1, 2, 4], [3]))
    for batch, ctx in [(256, 800), (64, 900), (128, 1000), (32, 1000)]:
        graph_splits = ops.decode_num_splits(batch, KVH, None, sms)  # as the CUDA graphs do
        configs: list = [(None, graph_splits)]
        if args.sweep and batch in (256, 64):
            configs += [
                (t, s) for t in tiles for s in sorted({graph_splits, 2 * graph_splits, 4 * graph_splits})
            ]
        for dtype in (torch.bfloat16, torch.float8_e4m3fn):
            q, k, v, tables, lens = _case(batch, ctx, dtype, gen)
            nbytes = 2 * k.numel() * k.element_size()
            out = torch.empty_like(q)
            ref = None
            best = None
            for cfg, splits in configs:
                if cfg is None:
                    os.environ.pop("LADLE_DECODE_TILES", None)
                else:
                    os.environ["LADLE_DECODE_TILES"] = ",".join(map(str, cfg))

                def fn(q=q, k=k, v=v, out=out, tables=tables, lens=lens, splits=splits):
                    ops.decode_attention(q, k, v, out, tables, lens, D**-0.5, None, splits)

                try:
                    fn()
                    ms = do_bench(fn, warmup=10, rep=60, return_mode="median")
                except Exception as exc:  # a tile too big for shared memory
                    print(f"  {cfg}: failed ({type(exc).__name__})")
                    continue
                if ref is None:
                    ref = out.clone()
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                gbs = nbytes / ms / 1e6
                label = f"{'default' if cfg is None else cfg} splits={splits}"
                print(
                    f"b={batch} ctx={ctx} {str(dtype):20s} {label}: {ms * 1e3:8.1f} us {gbs:6.0f} GB/s err={err:.1e}"
                )
                if err < 1e-2 and (best is None or ms < best[0]):
                    best = (ms, label, gbs)
            print(
                f"best b={batch} ctx={ctx} {dtype}: {best[1]} {best[0] * 1e3:.1f} us {best[2]:.0f} GB/s",
                flush=True,
            )
            os.environ.pop("LADLE_DECODE_TILES", None)


if __name__ == "__main__":
    main()
