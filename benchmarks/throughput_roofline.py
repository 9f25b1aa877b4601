"""Roofline (lower bound) on the time of `ladle bench throughput --preset llama-3.1-8b`'s workload.

Replays the benchmark's requests (same RNG use, so the same lengths) through ladle's scheduling rule
(decodes first, then chunked prefill in arrival order, within max_num_batched_tokens) and prices each step
with an analytic cost: GEMMs at max(weight read, FLOPs), decode attention at its K/V read, prefill
attention at its causal FLOPs, run one after another. No engine can be faster while scheduling this way
on a machine with these rates, so output_tokens / total_time is an upper bound on output tokens/s.

python benchmarks/throughput_roofline.py [--preset llama-3.1-8b | --config PATH] [--bw B/s --flops FLOP/s]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from ladle.bench.workload import make_requests
from ladle.model.config import ArchConfig, arch_config_from_hf

# (label, memory bandwidth B/s, dense bf16 FLOP/s). "achievable" is an assumption (~90% of the HBM spec,
# ~70% of the dense tensor-core spec), not a measurement; "measured here" are this project's H200 numbers.
PROFILES = [
    ("H100 SXM spec", 3.35e12, 989e12),
    ("H100 SXM achievable (assumed)", 3.0e12, 700e12),
    ("H200 spec", 4.8e12, 989e12),
    ("H200 measured here (copy, matmul)", 4.3e12, 790e12),
]


def body_params(m: ArchConfig) -> int:
    """Matmul parameters every query token goes through (all layers; no LM head)."""
    q, kv = m.num_attention_heads * m.head_dim, m.num_key_value_heads * m.head_dim
    attn = m.hidden_size * q + 2 * m.hidden_size * kv + q * m.hidden_size
    return m.num_hidden_layers * (attn + 3 * m.hidden_size * m.intermediate_size)


def lm_head_params(m: ArchConfig) -> int:
    return m.hidden_size * m.vocab_size


@dataclass(frozen=True)
class Step:
    tokens: int  # T: query tokens in the step
    decode_ctx: tuple[int, ...]  # per decode row, the context it attends over (itself included)
    chunks: tuple[tuple[int, int], ...]  # per prefill chunk, (q, context before it)
    sampled: int  # rows that go through the LM head: decode rows + chunks that end their prompt


def simulate(reqs: list[tuple[int, int]], max_seqs: int, budget_per_step: int) -> list[Step]:
    done_prompt = [0] * len(reqs)  # prompt tokens computed so far
    produced = [0] * len(reqs)  # output tokens sampled so far
    waiting, running = list(range(len(reqs))), []
    steps: list[Step] = []
    while waiting or running:
        while waiting and len(running) < max_seqs:  # all 256 fit here; kept for other --num-prompts
            running.append(waiting.pop(0))
        budget, ctx, chunks, sampled = budget_per_step, [], [], 0
        for r in running:  # decodes first: one token each, attending over prompt + outputs so far
            if done_prompt[r] == reqs[r][0] and budget > 0:
                ctx.append(reqs[r][0] + produced[r])
                produced[r] += 1
                budget -= 1
                sampled += 1
        for r in running:  # then prompt chunks in arrival order, partial chunks continue next step
            left = reqs[r][0] - done_prompt[r]
            if left and budget > 0:
                q = min(left, budget)
                chunks.append((q, done_prompt[r]))
                done_prompt[r] += q
                budget -= q
                if q == left:  # the last chunk samples the first output token
                    produced[r] += 1
                    sampled += 1
        steps.append(Step(budget_per_step - budget, tuple(ctx), tuple(chunks), sampled))
        running = [r for r in running if produced[r] < reqs[r][1]]
    return steps


@dataclass
class Cost:
    gemm: float = 0.0
    decode_attn: float = 0.0
    prefill_attn: float = 0.0
    prefill_steps: float = 0.0  # time of steps with any prefill chunk
    decode_steps: float = 0.0  # time of decode-only steps

    @property
    def total(self) -> float:
        return self.prefill_steps + self.decode_steps


def price(steps: list[Step], m: ArchConfig, a: argparse.Namespace, bw: float, flops: float, kv_b: int):
    attn_flops = a.attn_flops or flops  # by default attention runs at the matmul rate
    weight_bytes = (body_params(m) + lm_head_params(m)) * a.weight_bytes  # every step reads all weights once
    kv_per_token = m.num_hidden_layers * m.num_key_value_heads * m.head_dim * 2 * kv_b  # K and V, every layer
    c = Cost()
    for s in steps:
        gemm_flops = 2 * (body_params(m) * s.tokens + lm_head_params(m) * s.sampled)
        g = max(weight_bytes / bw, gemm_flops / flops)
        d = sum(s.decode_ctx) * kv_per_token / bw
        heads_dims = m.num_attention_heads * m.head_dim * m.num_hidden_layers
        p = sum(4 * q * (b + q / 2) for q, b in s.chunks) * heads_dims / attn_flops
        t = g + d + p + a.per_step_overhead_us * 1e-6  # kernels run back to back: no overlap
        c.gemm, c.decode_attn, c.prefill_attn = c.gemm + g, c.decode_attn + d, c.prefill_attn + p
        if s.chunks:
            c.prefill_steps += t
        else:
            c.decode_steps += t
    return c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="llama-3.1-8b", help="a ladle preset (its folder's config.json)")
    p.add_argument("--config", type=Path, help="a config.json (overrides --preset)")
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--weight-bytes", type=float, default=2, help="bytes per weight (2: bf16)")
    p.add_argument(
        "--kv-bytes", type=int, nargs="+", default=[2, 1], help="bytes per K/V element (2 bf16, 1 fp8)"
    )
    p.add_argument("--bw", type=float, help="custom profile: memory bandwidth, B/s")
    p.add_argument("--flops", type=float, help="custom profile: dense matmul FLOP/s")
    p.add_argument("--attn-flops", type=float, help="prefill attention FLOP/s (default: the profile's FLOPS)")
    p.add_argument("--per-step-overhead-us", type=float, default=0.0)
    p.add_argument("--measured-tok-s", type=float, default=10500, help="the H200 run's output tok/s")
    p.add_argument("--target-tok-s", type=float, default=15000, help="the H100 goal, output tok/s")
    a = p.parse_args()

    if a.config:
        cfg_path = a.config
    else:
        from ladle.presets import preset_path

        cfg_path = Path(preset_path(a.preset)) / "config.json"
    m = arch_config_from_hf(json.loads(cfg_path.read_text()))
    # The bench's own requests from its seed (the prompts' tokens are drawn only to keep the RNG in step).
    requests = make_requests(a.num_prompts, a.input_len, a.output_len, m.vocab_size, a.seed)
    reqs = [(len(token_ids), n_out) for token_ids, n_out in requests]
    steps = simulate(reqs, a.max_num_seqs, a.max_num_batched_tokens)
    n_in, n_out = sum(r[0] for r in reqs), sum(r[1] for r in reqs)
    mixed = sum(1 for s in steps if s.chunks)
    rows = sum(len(s.decode_ctx) for s in steps)
    dec_only_rows = sum(len(s.decode_ctx) for s in steps if not s.chunks)

    print(f"model {cfg_path}: {m.architecture}, {m.num_hidden_layers} layers, hidden {m.hidden_size}")
    print(f"  matmul params/token {body_params(m) / 1e9:.3f} B + LM head {lm_head_params(m) / 1e9:.3f} B")
    print(f"  weights read per step {(body_params(m) + lm_head_params(m)) * a.weight_bytes / 1e9:.2f} GB")
    print(f"workload: {a.num_prompts} requests seed {a.seed}, {n_in} prompt / {n_out} output tokens")
    print(f"scheduler: max_num_seqs {a.max_num_seqs}, max_num_batched_tokens {a.max_num_batched_tokens}")
    print(f"  {len(steps)} steps ({mixed} with prefill, {len(steps) - mixed} decode-only)")
    print(
        f"  avg decode batch {rows / len(steps):.1f} per step, {dec_only_rows / max(1, len(steps) - mixed):.1f}"
        " in decode-only steps"
    )
    print(
        "cost: GEMM max(weights/BW, 2*params*T/FLOPS) + decode attn KV/BW + prefill attn causal FLOPs/ATTN,"
    )
    attn = f"{a.attn_flops:.3g}" if a.attn_flops else "= FLOPS"
    print(f"  no overlap, per-step overhead {a.per_step_overhead_us} us, attn FLOPS {attn}")
    profiles = (
        [("custom", a.bw or PROFILES[0][1], a.flops or PROFILES[0][2])] if a.bw or a.flops else PROFILES
    )
    head = f"{'profile':34} {'BW TB/s':>7} {'TFLOPS':>6} {'kv':>2} {'time s':>6} {'out tok/s':>9}"
    print(
        "\n"
        + head
        + f" {'prefill-st s':>12} {'decode-st s':>11} {'GEMM s':>6} {'dec-attn s':>10} {'pf-attn s':>9}"
    )
    bounds = {}
    for label, bw, flops in profiles:
        for kv_b in a.kv_bytes:
            c = bounds[label, kv_b] = price(steps, m, a, bw, flops, kv_b)
            print(
                f"{label:34} {bw / 1e12:7.2f} {flops / 1e12:6.0f} {kv_b:2d} {c.total:6.2f} "
                f"{n_out / c.total:9.0f} {c.prefill_steps:12.2f} {c.decode_steps:11.2f} {c.gemm:6.2f} "
                f"{c.decode_attn:10.2f} {c.prefill_attn:9.2f}"
            )
    print(
        f"\ntarget {a.target_tok_s:.0f} out tok/s takes <= {n_out / a.target_tok_s:.2f} s; "
        f"measured {a.measured_tok_s:.0f} tok/s on H200 took {n_out / a.measured_tok_s:.2f} s"
    )
    for (label, kv_b), c in bounds.items():
        if label.startswith("H200"):  # how close the measured run is to each H200 bound
            print(f"  measured = {a.measured_tok_s * c.total / n_out:.0%} of {label}, kv {kv_b}")


if __name__ == "__main__":
    main()
