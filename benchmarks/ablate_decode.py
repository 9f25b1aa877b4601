"""What each op around the weight reads costs inside a decode step: `ladle bench latency` with that op skipped.

The tokens come out wrong; what is measured is the step. Under programmatic dependent launch a kernel's
profiler time overlaps its neighbours' (ladle.kernels.pdl), so the TPOT an op's removal saves is the honest
figure of what fusing it away could win. Ops that can be skipped (CUDA only; the GEMMs always run):

  norm    every residual add + RMSNorm of the decoder stack (RMSNorm.add_forward returns x)
  act     the gated activation (the down projection reads the gate half of gate_up as it is)
  rotary  the rotary embedding and the KV-cache write (attention then reads a stale cache)
  attn    rotary, KV write and attention (o_proj reads q as the attention output)
  all     norm, act and attn together: what is left is the GEMMs, the embedding and the sampler

usage: python benchmarks/ablate_decode.py --preset llama-3.1-8b --batch-sizes 1 8 [--skip norm act ...]

Each ablation runs in its own process (CUDA graphs are captured per process), alternating with unablated
runs (`none`) at the start and the end. Prints each run's lines and the TPOT each skip saves against the
mean of the `none` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SKIPPABLE = ("norm", "act", "rotary", "attn", "all")


def _apply(skip: set[str]) -> None:
    """Patches ladle's layers in this process so the named ops do nothing on CUDA tensors."""
    from ladle.layers.linear import dense_linear
    from ladle.layers.norm import RMSNorm
    from ladle.layers.rotary import RotaryEmbedding
    from ladle.model.llama import Attention, GatedMLP

    if skip & {"norm", "all"}:
        add_forward = RMSNorm.add_forward

        def no_norm(self, x, residual, x_norm=None):
            return (x, x) if x.is_cuda else add_forward(self, x, residual, x_norm)

        RMSNorm.add_forward = no_norm
    if skip & {"act", "all"}:
        mlp_forward = GatedMLP.forward

        def no_act(self, x):
            if not x.is_cuda or self.gate_up_weight is None:
                return mlp_forward(self, x)
            gate_up = dense_linear(x, self.gate_up_weight)
            return self.down_proj(gate_up[:, : gate_up.shape[-1] // 2])

        GatedMLP.forward = no_act
    if skip & {"rotary"}:
        rotate_and_write_kv = RotaryEmbedding.rotate_and_write_kv

        def no_rotary(self, positions, q, *rest, **kw):
            # True means "written": attention then skips its own cache write
            return True if q.is_cuda else rotate_and_write_kv(self, positions, q, *rest, **kw)

        RotaryEmbedding.rotate_and_write_kv = no_rotary
    if skip & {"attn", "all"}:
        attn_forward = Attention.forward

        def no_attn(self, positions, x, kv_cache, meta):
            if not x.is_cuda or self.qkv_weight is None:
                return attn_forward(self, positions, x, kv_cache, meta)
            qkv = dense_linear(x, self.qkv_weight, self.qkv_bias)
            return self.o_proj(qkv[:, : self.num_heads * self.head_dim])

        Attention.forward = no_attn


def _child(skip: set[str], latency_args: list[str]) -> None:
    from ladle.bench import latency

    _apply(skip)
    parser = argparse.ArgumentParser()
    latency.add_arguments(parser)
    latency.run(parser.parse_args(latency_args))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-3.1-8b")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--skip", nargs="+", choices=SKIPPABLE, default=list(SKIPPABLE))
    p.add_argument("--peak-bandwidth-gbs", type=float, default=4800.0)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args()
    latency_args = [
        *("--preset", args.preset, "--baseline", "none", "--throughput-batch-sizes", "1"),
        *("--peak-bandwidth-gbs", str(args.peak_bandwidth_gbs)),
        *("--input-len", str(args.input_len), "--output-len", str(args.output_len), "--batch-sizes"),
        *(str(b) for b in args.batch_sizes),
    ]
    if args.child is not None:
        _child(set(filter(None, args.child.split(","))), [*latency_args, "--output-json", args.json])
        return

    runs = ["none", *args.skip, "none"]
    tpot: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, skip in enumerate(runs):
            out = os.path.join(tmp, f"{i}.json")
            child = [sys.executable, __file__, *sys.argv[1:], "--child", "" if skip == "none" else skip]
            proc = subprocess.run([*child, "--json", out], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                if line.startswith("batch"):
                    print(f"{skip:>6} {args.preset}: {line}", flush=True)
            if proc.returncode != 0:
                sys.exit(f"{skip}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            lat = json.loads(Path(out).read_text())["latency"]
            tpot.setdefault(skip, []).append({b: v["tpot_ms"] for b, v in lat.items()})
    print(f"\nTPOT saved by skipping each op ({args.preset}; none = mean of the first and last runs):")
    for b in map(str, args.batch_sizes):
        base = statistics.mean(r[b] for r in tpot["none"])
        cells = [f"none {base:.3f} ms"]
        cells += [
            f"{s} {base - tpot[s][0][b]:.3f} ms ({(base - tpot[s][0][b]) / base:.1%})" for s in args.skip
        ]
        print(f"  batch {b}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
