"""Tile sweep for the Triton attention kernels at Llama-3.1-8B shapes (32 heads, 8 KV heads, head_dim 128,
block 16, bf16): decode (achieved GB/s of K/V read) and a 2048-token mixed step (ms). Prints the fastest
(BLOCK_N, num_warps, num_stages) of each as LADLE_DECODE_TILES / LADLE_PREFILL_TILES, checked against the
default's output. python benchmarks/sweep_attention.py [--env-out best.env]"""

from __future__ import annotations

import argparse
import itertools
import os

import torch
from triton.testing import do_bench

from ladle.kernels import triton_attention as ops

H, KVH, D, BS = 32, 8, 128, 16


def _setup(seq_lens, query_lens, gen):
    blocks = [-(-s // BS) for s in seq_lens]
    total = sum(blocks)
    perm = torch.randperm(total, generator=gen)
    tables = torch.zeros(len(seq_lens), max(blocks), dtype=torch.int32)
    pos = 0
    for i, nb in enumerate(blocks):
        tables[i, :nb] = perm[pos : pos + nb]
        pos += nb
    k_cache = torch.randn(total, BS, KVH, D, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(sum(query_lens), H, D, device="cuda", dtype=torch.bfloat16)
    qs = [0]
    for n in query_lens:
        qs.append(qs[-1] + n)
    return (
        q,
        k_cache,
        v_cache,
        tables.cuda(),
        torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        torch.tensor(qs, dtype=torch.int32, device="cuda"),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env-out", default=None)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    decode_cases = []
    for batch, ctx in [(256, 1024), (64, 600), (1, 4096)]:
        q, kc, vc, tables, lens, _ = _setup([ctx] * batch, [1] * batch, gen)
        splits = ops.decode_num_splits(batch, KVH, None, sms)
        nbytes = batch * ctx * KVH * D * 2 * 2
        decode_cases.append((f"decode b={batch} ctx={ctx}", q, kc, vc, tables, lens, splits, nbytes))

    def run_decode(case):
        _, q, kc, vc, tables, lens, splits, _ = case
        out = torch.empty_like(q)
        ops.decode_attention(q, kc, vc, out, tables, lens, D**-0.5, None, splits)
        return out

    # A mixed step: 256 decodes at ~800 context plus 1792 prompt tokens (7 prompts of 256 after 256 cached).
    seq_lens = [800] * 256 + [512] * 7
    query_lens = [1] * 256 + [256] * 7
    mq, mkc, mvc, mtables, mlens, mqs = _setup(seq_lens, query_lens, gen)
    block_q = ops.prefill_block_q(H, KVH)
    ws, wb = ops.build_work_list(query_lens, block_q)
    ws = torch.tensor(ws, dtype=torch.int32, device="cuda")
    wb = torch.tensor(wb, dtype=torch.int32, device="cuda")

    def run_mixed():
        out = torch.empty_like(mq)
        ops.prefill_attention(mq, mkc, mvc, out, mtables, mlens, mqs, ws, wb, D**-0.5, None, block_q)
        return out

    results = {}
    for name, env, configs, cases in [
        ("decode", "LADLE_DECODE_TILES", itertools.product([32, 64, 128], [4, 8], [2, 3, 4]), decode_cases),
        ("mixed", "LADLE_PREFILL_TILES", itertools.product([32, 64, 128], [4, 8], [2, 3]), [None]),
    ]:
        os.environ.pop(env, None)
        refs = [run_decode(c) if c else run_mixed() for c in cases]
        best = None
        print(f"\n== {name}")
        for cfg in configs:
            os.environ[env] = ",".join(map(str, cfg))
            try:
                times, ok = [], True
                for case, ref in zip(cases, refs):
                    fn = (lambda c=case: run_decode(c)) if case else run_mixed
                    out = fn()
                    ok &= bool(((out.float() - ref.float()).norm() / ref.float().norm()) < 1e-2)
                    times.append(do_bench(fn, warmup=10, rep=50, return_mode="median"))
            except Exception as exc:  # a tile too big for shared memory
                print(f"{cfg}: failed ({type(exc).__name__})")
                continue
            detail = "  ".join(
                f"{c[0]}: {t * 1e3:7.1f} us {c[-1] / t / 1e6:6.0f} GB/s" if c else f"mixed: {t * 1e3:7.1f} us"
                for c, t in zip(cases, times)
            )
            total = sum(times)
            print(f"{cfg}: total {total * 1e3:8.1f} us  ok={ok}  {detail}", flush=True)
            if ok and (best is None or total < best[0]):
                best = (total, cfg)
        os.environ.pop(env, None)
        results[env] = best[1]
        print(f"best {name}: {best[1]} ({best[0] * 1e3:.1f} us)")
    if args.env_out:
        with open(args.env_out, "w") as f:
            for env, cfg in results.items():
                f.write(f"export {env}={','.join(map(str, cfg))}\n")


if __name__ == "__main__":
    main()
