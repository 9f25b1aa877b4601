"""Micro-benchmark of the Sampler: the greedy fast path, a repetition-penalized greedy batch (Ollama's
repeat_penalty / repeat_last_n, one token appended to every row per call, as steps do) and a full-featured
batch.

    PYTHONPATH=src python benchmarks/sampler_bench.py [--rows 256] [--vocab 32768] [--device cpu|cuda]

Prints milliseconds per sampler call (median of --iters), for a few batch shapes. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ladle.engine.sampler import Sampler, SamplingRow
from ladle.sampling_params import SamplingParams


def timed(fn: Callable[[], object], device: torch.device, iters: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # the sampler returns Python lists, so each call already ends with a device sync
        samples.append(time.perf_counter() - start)
    # Median and best: on a shared CPU the best is the better estimate of the cost itself.
    return statistics.median(samples) * 1e3, min(samples) * 1e3


def make_logits(shape: str, num_rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """ "flat": N(0, 3^2) logits, a pessimistic case whose top-p 0.95 nucleus holds thousands of tokens.
    "llm": closer to a language model's: a N(0, 2.5^2) bulk plus 32 tokens at 18, 17.4, ... (top-1 holds
    about half the probability at temperature 1; the top-p 0.95 nucleus is a few tokens)."""
    logits = torch.randn(num_rows, vocab, device=device) * (3.0 if shape == "flat" else 2.5)
    if shape == "llm":
        head = torch.rand(num_rows, vocab, device=device).topk(32, dim=-1).indices  # 32 random tokens per row
        values = 18.0 - 0.6 * torch.arange(32, device=device, dtype=logits.dtype)
        logits.scatter_(1, head, values.expand(num_rows, 32).contiguous())
    return logits


def make_rows(kind: str, num_rows: int, vocab: int, device: torch.device, prompt_len: int, output_len: int):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(num_rows):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=g).tolist()
        output = torch.randint(0, vocab, (output_len,), generator=g).tolist()
        if kind == "greedy":
            params = SamplingParams(temperature=0.0)
        elif kind == "random":  # plain temperature sampling, no seed, no truncation
            params = SamplingParams(temperature=0.8)
        elif kind == "typical":  # a common chat setting: temperature + top-p + top-k
            params = SamplingParams(temperature=0.7, top_p=0.9, top_k=40)
        elif kind == "penalized":  # Ollama's repeat_penalty 1.1 over repeat_last_n 64, greedy
            params = SamplingParams(temperature=0.0, repetition_penalty=1.1, penalty_window=64)
        else:  # everything at once, half the rows seeded
            params = SamplingParams(
                temperature=0.8,
                top_k=50 if i % 2 else 0,
                top_p=0.95,
                min_p=0.05,
                repetition_penalty=1.1,
                presence_penalty=0.5,
                frequency_penalty=0.3,
                logit_bias={i % vocab: 1.0, (7 * i) % vocab: -2.0},
                min_tokens=output_len + 1 if i % 4 == 0 else 0,
                max_tokens=output_len + 16,
                seed=i if i % 2 == 0 else None,
                logprobs=5 if i % 3 == 0 else None,
            )
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        rows.append(SamplingRow(params, prompt, output, generator=generator, eos_token_ids=[1]))
    return rows


def _append_one(rows: list[SamplingRow]) -> None:
    for i, row in enumerate(rows):
        row.output_token_ids.append((len(row.output_token_ids) * 31 + i) % 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--shape", choices=("llm", "flat"), default="llm")
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of the full case"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logits = make_logits(args.shape, args.rows, args.vocab, device)
    sampler = Sampler()
    threads = torch.get_num_threads()
    print(f"{args.rows} rows x {args.vocab} vocab, {args.shape} logits, on {device} ({threads} CPU threads)")
    baseline = timed(lambda: logits.argmax(dim=-1).tolist(), device, args.iters)
    print(f"  {'ms per call':<34} {'median':>8} {'best':>8}")
    print(f"  {'bare argmax + tolist (floor)':<34} {baseline[0]:8.3f} {baseline[1]:8.3f}")
    for kind in ("greedy", "penalized", "random", "typical", "full"):
        rows = make_rows(kind, args.rows, args.vocab, device, args.prompt_len, args.output_len)
        if kind == "penalized":
            ms = timed(lambda rows=rows: (_append_one(rows), sampler(logits, rows)), device, args.iters)
        else:
            ms = timed(lambda rows=rows: sampler(logits, rows), device, args.iters)
        print(f"  {kind:<34} {ms[0]:8.3f} {ms[1]:8.3f}")
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(5):
                sampler(logits, rows)
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort_by, row_limit=25))


if __name__ == "__main__":
    main()
