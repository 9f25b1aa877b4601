"""Attention kernels, this tree against another tree's (A/B in one process), bf16 and fp8 (e4m3) K/V, at the
throughput run's shapes (Llama-3.1-8B: 32 heads, 8 KV heads, head_dim 128, block 16).

python benchmarks/bench_attention_ab.py [--old-src OTHER/src] [--sweep] [--json OUT.json]

Decode: batch x context as the CUDA graphs run it (splits from decode_num_splits with no known length), timed
as CUDA-graph replays.
Mixed: 8 sequences x 256 new tokens over 768 cached ones (a chunked-prefill step). Each kernel's output is
checked against a float32 torch reference over the same (rounded) K/V.
--sweep also times this tree's kernels at other (BLOCK_N, warps, stages).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch
from bench_decode_kv import _case  # run as a script: benchmarks/ is on sys.path
from triton.testing import do_bench_cudagraph

from ladle.kernels import triton_attention as new_ops

H, KVH, D, BS = 32, 8, 128, 16
G = H // KVH
TILES = [(16, 1, 3), (32, 1, 3), (32, 2, 3), (64, 1, 3), (64, 2, 3), (64, 4, 3), (64, 4, 4)]
PREFILL_TILES = [(64, 4, 3), (32, 4, 2), (64, 8, 3), (16, 4, 3)]


def _load_old(src: str):
    path = os.path.join(src, "ladle", "kernels", "triton_attention.py")
    spec = importlib.util.spec_from_file_location("old_triton_attention", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gather(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """[length, KVH, D] float32 of one sequence."""
    return cache[table.long()].reshape(-1, KVH, D)[:length].float()


def _ref_decode(q, k, v, tables, ctx, scale):
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for b in range(q.shape[0]):
        kk = _gather(k, tables[b], ctx).repeat_interleave(G, 1)  # [ctx, H, D]
        vv = _gather(v, tables[b], ctx).repeat_interleave(G, 1)
        s = torch.einsum("hd,nhd->hn", q[b].float(), kk) * scale
        out[b] = torch.einsum("hn,nhd->hd", s.softmax(-1), vv)
    return out


def _ref_mixed(q, k, v, tables, q_len, seq_len, scale):
    num = tables.shape[0]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
    causal = torch.arange(seq_len, device=q.device)[None, :] <= pos[:, None]
    for b in range(num):
        kk = _gather(k, tables[b], seq_len).repeat_interleave(G, 1)
        vv = _gather(v, tables[b], seq_len).repeat_interleave(G, 1)
        qq = q[b * q_len : (b + 1) * q_len].float()
        s = torch.einsum("thd,nhd->htn", qq, kk) * scale
        s = s.masked_fill(~causal[None], float("-inf"))
        out[b * q_len : (b + 1) * q_len] = torch.einsum("htn,nhd->thd", s.softmax(-1), vv)
    return out


def _rel(out, ref) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def _time(fn) -> float:
    """Median us of fn replayed in a CUDA graph (as the engine runs decode): without one, small launches
    time the host's launch overhead."""
    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3


def _time_with_tiles(env_var: str, tiles, fn, what: str) -> float | None:
    """_time(fn) with env_var naming the tiles (unset: the kernel's defaults); None where it fails."""
    if tiles is None:
        os.environ.pop(env_var, None)
    else:
        os.environ[env_var] = ",".join(map(str, tiles))
    try:
        return _time(fn)
    except Exception as exc:  # a tile too big for shared memory
        print(f"{what} {tiles}: failed ({type(exc).__name__}: {exc})")
        return None
    finally:
        os.environ.pop(env_var, None)


def _label(tiles) -> str:
    return "default" if tiles is None else ",".join(map(str, tiles))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old-src", help="another tree's src/ (its triton_attention.py is the baseline)")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    trees = [("new", new_ops)]
    if args.old_src:
        trees.insert(0, ("old", _load_old(args.old_src)))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    gen = torch.Generator().manual_seed(0)
    scale = D**-0.5
    rows = []

    def record(kind, shape, dtype, tree, tiles, us, nbytes, err):
        gbs = nbytes / us / 1e3
        rows.append(
            dict(kind=kind, shape=shape, dtype=dtype, tree=tree, tiles=tiles, us=us, gbs=gbs, err=err)
        )
        print(
            f"{kind:6s} {shape:10s} {dtype:5s} {tree:3s} {tiles:10s} {us:8.1f} us {gbs:6.0f} GB/s err={err:.1e}"
        )
        sys.stdout.flush()

    for batch, ctx in [(256, 800), (64, 900), (128, 1000), (32, 1000), (1, 4096)]:
        splits = new_ops.decode_num_splits(batch, KVH, None, sms)
        for dname, dtype in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
            q, k, v, tables, lens = _case(batch, ctx, dtype, gen)
            ref = _ref_decode(q, k, v, tables, ctx, scale)
            nbytes = 2 * batch * ctx * KVH * D * k.element_size()
            configs = [(name, mod, None) for name, mod in trees]
            if args.sweep:
                configs += [("new", new_ops, t) for t in TILES]
            for name, mod, tiles in configs:
                out = torch.full_like(q, float("nan"))

                def fn(mod=mod, q=q, k=k, v=v, out=out, tables=tables, lens=lens, splits=splits):
                    mod.decode_attention(q, k, v, out, tables, lens, scale, None, splits)

                us = _time_with_tiles("LADLE_DECODE_TILES", tiles, fn, f"decode {batch}x{ctx} {dname} {name}")
                if us is not None:
                    record("decode", f"{batch}x{ctx}", dname, name, _label(tiles), us, nbytes, _rel(out, ref))

    num, q_len, seq_len = 8, 256, 1024
    for dname, dtype in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
        _, k, v, tables, lens = _case(num, seq_len, dtype, gen)
        q = torch.randn(num * q_len, H, D, device="cuda", dtype=torch.bfloat16)
        ref = _ref_mixed(q, k, v, tables, q_len, seq_len, scale)
        qstart = torch.arange(0, num * q_len + 1, q_len, dtype=torch.int32, device="cuda")
        nbytes = 2 * num * seq_len * KVH * D * k.element_size()
        configs = [(name, mod, None) for name, mod in trees]
        if args.sweep:
            configs += [("new", new_ops, t) for t in PREFILL_TILES]
        for name, mod, tiles in configs:
            block_q = mod.prefill_block_q(H, KVH)
            ws, wb = mod.build_work_list([q_len] * num, block_q)
            ws = torch.tensor(ws, dtype=torch.int32, device="cuda")
            wb = torch.tensor(wb, dtype=torch.int32, device="cuda")
            out = torch.full_like(q, float("nan"))

            def fn(
                mod=mod, q=q, k=k, v=v, out=out, tables=tables, lens=lens, qs=qstart, ws=ws, wb=wb, bq=block_q
            ):
                mod.prefill_attention(q, k, v, out, tables, lens, qs, ws, wb, scale, None, bq)

            us = _time_with_tiles("LADLE_PREFILL_TILES", tiles, fn, f"mixed {dname} {name}")
            if us is not None:
                record(
                    "mixed",
                    f"{num}x{q_len}/{seq_len}",
                    dname,
                    name,
                    _label(tiles),
                    us,
                    nbytes,
                    _rel(out, ref),
                )

    print("\nsummary (us; err vs float32 reference)")
    for r in rows:
        if r["tiles"] == "default":
            print(
                f"  {r['kind']} {r['shape']} {r['dtype']} {r['tree']}: {r['us']:.1f} us ({r['gbs']:.0f} GB/s)"
            )
    best = {}
    for r in rows:
        key = (r["kind"], r["shape"], r["dtype"])
        if r["tree"] == "new" and r["err"] < 2e-2 and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    for key, r in best.items():
        print(f"  best new {key}: {r['tiles']} {r['us']:.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
