"""The decode and mixed attention kernels' sm_90 machine code, compiled here without a GPU: registers, shared
memory and the main loop's instruction mix (the largest backward branch), for bf16 and fp8 (e4m3) caches.

python benchmarks/kernel_sass.py [--block-n 32 --warps 1 --stages 3] [--keep DIR]

Triton compiles for a named target with its bundled ptxas, and its cuobjdump disassembles; no device is
needed. The instruction counts are what the 2026-12-02 fp8 work was steered by (benchmarks/README.md); the
device's Triton version should be the one installed here (the H200 image has Triton 3.6).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ladle.kernels import triton_attention as ops

# Llama-3.1-8B: 32 heads, 8 KV heads, head_dim 128, cache block 16.
SHAPE = dict(NUM_KV_HEADS=8, GROUP=4, HEAD_DIM=128, BLOCK_D=128, BLOCK_SIZE=16, USE_WINDOW=False)


# The constexpr switches the engine's usual launch leaves off (a flag left out would be compiled as an i32
# argument, both sides of its `if` then, which fails to compile): the plain decode step, PDL as on sm_90.
SWITCHES = dict(
    GROUP_PAD=4,
    SPLIT_CHUNK=16,
    ROTARY=False,
    HEAD_NORM=False,
    UNIT_OFFSET=False,
    INTERPRETED=False,
    USE_PDL=True,
)


def _compile(kernel, types: dict, consts: dict, warps: int, stages: int):
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    consts = {**{k: v for k, v in SWITCHES.items() if k in constexprs}, **consts}
    missing = constexprs - set(consts)
    if missing:
        raise SystemExit(f"kernel_sass.py: give {kernel.fn.__name__}'s constexprs {sorted(missing)} a value")
    signature = {a: ("constexpr" if a in consts else types.get(a, "i32")) for a in kernel.arg_names}
    aligned = {"q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr", "lse_ptr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names) if a in aligned}
    src = ASTSource(kernel, signature, constexprs=consts, attrs=attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages}
    )


def _loop_mix(sass: str) -> tuple[int, collections.Counter]:
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
    lo, hi = 0, -1
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr and addr - int(target.group(1), 16) > hi - lo:
            lo, hi = int(target.group(1), 16), addr
    body = [op for addr, op, _ in ins if lo <= addr <= hi]
    return len(body), collections.Counter(op.split(".")[0] for op in body)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--block-n", type=int, help="keys per iteration (default: the kernels' defaults)")
    p.add_argument("--warps", type=int)
    p.add_argument("--stages", type=int)
    p.add_argument("--keep", help="write each kernel's ttgir and sass here")
    args = p.parse_args()
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    # batch 256 x 8 KV heads, one split; an older tree (PYTHONPATH=<other>/src) had fixed tiles
    decode_tiles = ops._decode_tiles(2048, 128) if hasattr(ops, "_decode_tiles") else (64, 4, 3)
    prefill_tiles = (64, 4, 3)
    for kind, kernel, tiles in (
        ("decode", ops._decode_kernel, decode_tiles),
        ("mixed", ops._prefill_kernel, prefill_tiles),
    ):
        block_n = args.block_n or tiles[0]
        warps = args.warps or tiles[1]
        stages = args.stages or tiles[2]
        for cache in ("bf16", "fp8e4nv"):
            types = {
                "q_ptr": "*bf16",
                "out_ptr": "*bf16",
                "k_cache_ptr": f"*{cache}",
                "v_cache_ptr": f"*{cache}",
            }
            types.update({"lse_ptr": "*fp32", "scale_log2": "fp32"})
            types.update({a: "*i32" for a in kernel.arg_names if a.endswith("_ptr") and a not in types})
            consts = dict(SHAPE, BLOCK_N=block_n, DOT_PRECISION="tf32")
            if "F16_DOTS" in kernel.arg_names:
                consts["F16_DOTS"] = cache != "bf16"
            if kind == "decode":
                consts.update(BLOCK_H=16, SPLIT=False, MAX_SPLITS=ops.MAX_DECODE_SPLITS)
            else:
                consts.update(GROUP_PAD=4, BLOCK_Q=ops.prefill_block_q(32, 8))
            k = _compile(kernel, types, consts, warps, stages)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                sass = subprocess.run(
                    [f"{bin_dir}/cuobjdump", "-sass", f.name], capture_output=True, text=True
                ).stdout
                res = subprocess.run(
                    [f"{bin_dir}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True
                )
            regs = re.search(r"REG:(\d+)", res.stdout)
            n, mix = _loop_mix(sass)
            top = " ".join(f"{op}:{c}" for op, c in mix.most_common(10))
            print(
                f"{kind:6s} {cache:8s} ({block_n},{warps},{stages}) regs {regs.group(1) if regs else '?'} "
                f"smem {k.metadata.shared} loop {n} instructions: {top}"
            )
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                with open(os.path.join(args.keep, f"{kind}-{cache}.sass"), "w") as f:
                    f.write(sass)
                with open(os.path.join(args.keep, f"{kind}-{cache}.ttgir"), "w") as f:
                    f.write(k.asm["ttgir"])


if __name__ == "__main__":
    main()
