"""`ladle bench latency`: decode speed against the memory-bandwidth roofline, TTFT, and static-batch output
throughput by batch size, optionally beside Hugging Face transformers on the same dummy weights.

A decode step must read every weight once plus each sequence's K/V, so its fastest possible time is
(weight bytes + KV bytes) / peak bandwidth; the report gives the measured step time's fraction of that.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ladle.bench.throughput import add_async_scheduling_argument, build_warm_engine, model_arguments
from ladle.bench.workload import at_least, check_fits, positive_float
from ladle.config import KV_CACHE_DTYPES

if TYPE_CHECKING:  # torch is imported where it is used: --help stays fast
    import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model path (a Hugging Face folder or .gguf)")
    p.add_argument("--preset", help="a config shipped with ladle (dummy weights), e.g. llama-3.1-8b")
    p.add_argument("--load-format", default=None, help="auto or dummy (default: dummy with --preset)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES), help="fp8: CUDA only")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--input-len", type=at_least(1), default=512, help="prompt tokens (TTFT is measured on one)"
    )
    # The decode phase is the tokens after the first, so at least one of them.
    p.add_argument("--output-len", type=at_least(2), default=128, help="new tokens per request")
    p.add_argument(
        "--batch-sizes", type=at_least(1), nargs="+", default=[1, 8, 32], help="decode-latency batches"
    )
    p.add_argument(
        "--throughput-batch-sizes",
        type=at_least(1),
        nargs="+",
        default=[1, 8, 32, 64, 128, 256],
        help="static batches for output tokens/s by batch size (the plot)",
    )
    p.add_argument(
        "--peak-bandwidth-gbs",
        type=positive_float,
        default=None,
        help="memory bandwidth for the roofline (default: the GPU's datasheet figure when it is known; "
        "none on a CPU); an H100 SXM is 3350",
    )
    p.add_argument("--baseline", choices=["none", "transformers"], default="none")
    p.add_argument(
        "--baseline-json",
        default=None,
        help="reuse a transformers baseline measured earlier (a latency result JSON, or the baseline's own)",
    )
    p.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    add_async_scheduling_argument(p)
    p.add_argument("--max-num-seqs", type=at_least(1), default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-json", default=None, help="default: benchmarks/results/latency-<time>.json")


def _prompt(rng: random.Random, vocab: int, length: int) -> dict[str, list[int]]:
    return {"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(length)]}


def _decode_run(engine, batch: int, input_len: int, output_len: int, rng: random.Random) -> dict[str, Any]:
    """`batch` requests submitted together; times every engine step. The decode phase is the steps after
    every request has its first token. Its speed is tokens over time, not per step: with async scheduling
    a step's tokens arrive with the next call, and the last call only reads tokens back."""
    from ladle import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    vocab = engine.arch.vocab_size
    ids = [f"lat-{batch}-{i}-{rng.random()}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, _prompt(rng, vocab, input_len), params)
    children = [engine.parents[rid].children[0] for rid in ids]
    steps: list[float] = []
    first_all = None  # index of the step after which every request has its first token
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        steps.append(time.perf_counter() - t0)
        if first_all is None and all(c.output_token_ids for c in children):
            first_all = len(steps) - 1
    total = time.perf_counter() - start
    decode = steps[first_all + 1 :]
    ttft = sum(steps[: first_all + 1])
    # Tokens per sequence after the first: every request here runs to output_len.
    per_seq = min(len(c.output_token_ids) for c in children) - 1
    return {
        "ttft_s": ttft,
        "decode_steps": decode,
        "decode_s": sum(decode),
        "tokens_per_seq": per_seq,
        "total_s": total,
    }


def _model_bytes(engine) -> tuple[int, int]:
    """(bytes a decode step reads from the weights, K/V bytes per token of context)."""
    from ladle.executor.model_runner import kv_block_bytes

    model = engine.runner.model
    weight = 0
    for name, param in model.named_parameters():
        if "embed_tokens" in name and not engine.arch.tie_word_embeddings:
            continue  # only the batch's rows of an untied embedding are read
        weight += param.numel() * param.element_size()
    bs = engine.config.block_size
    return weight, kv_block_bytes(engine.arch, bs, engine.kv_cache_dtype) // bs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ladle import SamplingParams
    from ladle.bench.results import write_result

    model, load_format = model_arguments(args)
    baseline = None
    if args.baseline == "transformers":
        baseline = _transformers_baseline(model, args)
    elif args.baseline_json:
        saved = json.loads(Path(args.baseline_json).read_text())
        baseline = saved.get("transformers", saved)

    rng = random.Random(args.seed)
    llm, ready_s = build_warm_engine(args, model, load_format)
    engine = llm.llm_engine
    check_fits(engine.max_model_len, args.input_len, args.output_len)
    vocab = engine.arch.vocab_size

    # The engine's warm-up prompt is 3 tokens; a first prompt of input_len in this process still pays its
    # one-time costs (kernel variants and GEMM algorithms of that shape: 115-127 ms against 25-45 ms for the
    # next on the H200), which would land in batch 1's TTFT. Its own generator keeps the measured prompts.
    warm_up = _prompt(random.Random(args.seed + 1), vocab, args.input_len)
    llm.generate([warm_up], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))

    weight_bytes, kv_per_token = _model_bytes(engine)
    peak_gbs, peak_source = _peak_bandwidth(args.peak_bandwidth_gbs, engine.device)
    if peak_gbs is None:
        print(f"No roofline: {peak_source}; pass --peak-bandwidth-gbs", flush=True)
    latency: dict[str, Any] = {}
    for batch in args.batch_sizes:
        r = _decode_run(engine, batch, args.input_len, args.output_len, rng)
        step_s = r["decode_s"] / r["tokens_per_seq"]  # time per output token, as vLLM's mean TPOT
        mean_context = args.input_len + args.output_len / 2
        figures = latency[str(batch)] = {
            "ttft_ms": round(r["ttft_s"] * 1e3, 2),
            "tpot_ms": round(step_s * 1e3, 3),
            "median_step_ms": round(statistics.median(r["decode_steps"]) * 1e3, 3),
            "decode_tokens_per_s": round(batch / step_s, 1),
            "roofline_step_ms": None,
            "roofline_fraction": None,
        }
        line = (
            f"batch {batch:4d}: TTFT {figures['ttft_ms']:8.1f} ms  TPOT {step_s * 1e3:7.2f} ms  "
            f"decode {batch / step_s:9.1f} tok/s"
        )
        if peak_gbs is not None:
            floor_s = (weight_bytes + batch * mean_context * kv_per_token) / (peak_gbs * 1e9)
            figures["roofline_step_ms"] = round(floor_s * 1e3, 3)
            figures["roofline_fraction"] = round(floor_s / step_s, 3)
            line += f"  roofline {floor_s * 1e3:6.2f} ms ({floor_s / step_s:.0%} of peak bandwidth)"
        print(line, flush=True)

    static: dict[str, float] = {}
    for batch in args.throughput_batch_sizes:
        prompts = [_prompt(rng, vocab, args.input_len) for _ in range(batch)]
        params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True)
        start = time.perf_counter()
        outs = llm.generate(prompts, params)
        elapsed = time.perf_counter() - start
        static[str(batch)] = round(sum(len(o.outputs[0].token_ids) for o in outs) / elapsed, 1)
        print(f"static batch {batch:4d}: {static[str(batch)]:9.1f} output tok/s", flush=True)

    result = {
        "model": model,
        "load_format": load_format,
        "dtype": str(engine.dtype),
        "kv_cache_dtype": args.kv_cache_dtype,
        "attention_backend": engine.attention_backend.name,
        "cuda_graphs": engine.runner.graphs is not None,
        "engine_ready_s": round(ready_s, 2),
        "graph_capture_s": round(engine.graph_capture_seconds, 2),
        "memory_profile": engine.memory_profile,
        "kv_blocks": engine.kv.num_blocks,
        "concurrent_1k_token_requests": engine.kv.num_blocks * engine.config.block_size // 1024,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "peak_bandwidth_gbs": peak_gbs,
        "peak_bandwidth_source": peak_source,
        "weight_bytes_per_step": weight_bytes,
        "kv_bytes_per_token": kv_per_token,
        "latency": latency,
        "static_batch_output_tokens_per_s": static,
        "transformers": baseline,
    }
    path = write_result("latency", result, path=args.output_json)
    print(f"Engine ready in {ready_s:.1f} s (graph capture {engine.graph_capture_seconds:.1f} s)")
    print(
        f"KV pool: {engine.kv.num_blocks} blocks, {result['concurrent_1k_token_requests']} 1k-token requests"
    )
    if baseline:
        print(f"transformers: {json.dumps(baseline)}")
    try:
        plot = _plot(static, baseline, path.with_suffix(".png"))
        print(f"Plot written to {plot}")
    except ImportError:
        print("No plot: matplotlib is not installed (pip install 'ladle[bench]')")
    print(f"Result written to {path}")
    return result


def _peak_bandwidth(given: float | None, device: torch.device) -> tuple[float | None, str]:
    """(GB/s for the roofline, where it came from): the flag, else the GPU's datasheet figure."""
    if given is not None:
        return given, "--peak-bandwidth-gbs"
    if device.type != "cuda":
        return None, "a CPU's memory bandwidth is not known here"
    import torch

    from ladle.bench.hardware import datasheet_bandwidth_gbs

    name = torch.cuda.get_device_name(device)
    gbs = datasheet_bandwidth_gbs(name)
    if gbs is None:
        return None, f"the datasheet bandwidth of {name} is not known here"
    return gbs, f"datasheet ({name})"


def _transformers_baseline(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """transformers generate on the device and in the dtype the ladle engine will use, in its own process
    (it runs first and exits, so the two never share GPU memory), at the same static batches."""
    from ladle.executor.device import resolve_device, resolve_dtype

    config_file = Path(model) / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"--baseline transformers: {model} has no config.json (it builds transformers' model from a "
            "Hugging Face folder or a --preset; a GGUF file has none)"
        )
    config = json.loads(config_file.read_text())
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, config.get("torch_dtype") or config.get("dtype"))
    batches = [str(b) for b in args.throughput_batch_sizes if b > 1]
    cmd = [sys.executable, "-m", "ladle.bench.transformers_baseline", model]
    cmd += ["--input-len", str(args.input_len), "--output-len", str(args.output_len)]
    cmd += ["--device", device.type, "--dtype", str(dtype).removeprefix("torch."), "--batch-sizes", *batches]
    print("baseline:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        print(f"transformers baseline failed: {reason}", file=sys.stderr)
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _plot(static: dict[str, float], baseline: dict[str, Any] | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([int(b) for b in static], list(static.values()), "o-", label="ladle")
    if baseline and baseline.get("static_batch"):
        points = {int(b): v for b, v in baseline["static_batch"].items() if v}
        ax.plot(list(points), list(points.values()), "s--", label="transformers generate")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (static batch)")
    ax.set_ylabel("output tokens/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
