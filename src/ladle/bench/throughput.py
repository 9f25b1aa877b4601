"""`ladle bench throughput`: offline throughput, like `vllm bench throughput`.

N requests with random token prompts and output lengths (uniform in a range, ignore_eos), all submitted at
once; reports requests/s, total and output tokens/s.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ladle.bench.workload import at_least, check_fits, check_range, make_requests
from ladle.config import KV_CACHE_DTYPES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model path (a Hugging Face folder or .gguf)")
    p.add_argument(
        "--preset", help="a config shipped with ladle (dummy weights), e.g. llama-3.1-8b, tiny-llama"
    )
    p.add_argument("--load-format", default=None, help="auto or dummy (default: dummy with --preset)")
    p.add_argument("--num-prompts", type=at_least(1), default=256)
    p.add_argument("--input-len", type=at_least(1), nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=at_least(1), nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--dtype", default="auto")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES), help="fp8: CUDA only")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-num-seqs", type=at_least(1), default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    # Sampling that reads a request's own tokens (penalties) or returns more than tokens (logprobs): what
    # a served workload may ask, and what async scheduling must overlap too.
    p.add_argument("--logprobs", type=int, default=None, help="top logprobs returned per token")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    # Greedy by default (the figures in benchmarks/README.md); vllm bench throughput samples at temperature 1.
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    add_async_scheduling_argument(p)
    p.add_argument(
        "--tensor-parallel-size", "-tp", type=int, default=1, help="GPUs (or CPU processes) per model"
    )
    p.add_argument(
        "--distributed-executor-backend", default="mp", choices=["mp", "ray"], help="how TP ranks start"
    )
    p.add_argument(
        "--output-json", default=None, help="where to write the JSON result (default benchmarks/results/)"
    )


def model_arguments(args: argparse.Namespace) -> tuple[str, str]:
    from ladle.presets import preset_path

    if args.preset:
        return str(preset_path(args.preset)), args.load_format or "dummy"
    if not args.model:
        raise SystemExit("ladle bench: give --model PATH or --preset NAME")
    return args.model, args.load_format or "auto"


def add_async_scheduling_argument(p: argparse.ArgumentParser) -> None:
    """--[no-]async-scheduling, for both benches (the A/B of the engine's overlap)."""
    p.add_argument(
        "--async-scheduling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="overlap host work with the GPU's (default: on for one CUDA device)",
    )


def build_warm_engine(args: argparse.Namespace, model: str, load_format: str, **engine_options: Any):
    """The benchmarked LLM, its construction time, and one short warm-up request already run, so one-time
    costs (allocator, kernels) land in neither a throughput nor a latency figure."""
    from ladle import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        model,
        load_format=load_format,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        device=args.device,
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        attention_backend=args.attention_backend,
        enforce_eager=args.enforce_eager,
        async_scheduling=args.async_scheduling,
        **engine_options,
    )
    ready_s = time.perf_counter() - start
    llm.generate([{"prompt_token_ids": [11, 12, 13]}], SamplingParams(max_tokens=4, ignore_eos=True))
    return llm, ready_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ladle import SamplingParams
    from ladle.bench.results import write_result

    model, load_format = model_arguments(args)
    check_range("--input-len", args.input_len)
    check_range("--output-len", args.output_len)
    llm, engine_ready_s = build_warm_engine(
        args,
        model,
        load_format,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        tensor_parallel_size=args.tensor_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
    )
    check_fits(llm.llm_engine.max_model_len, args.input_len[1], args.output_len[1])
    vocab = llm.llm_engine.arch.vocab_size
    requests = make_requests(args.num_prompts, args.input_len, args.output_len, vocab, args.seed)
    prompts = [{"prompt_token_ids": token_ids} for token_ids, _ in requests]
    params = [
        SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_tokens=n_out,
            ignore_eos=True,
            logprobs=args.logprobs,
            repetition_penalty=args.repetition_penalty,
        )
        for _, n_out in requests
    ]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    prompt_tokens = sum(len(p["prompt_token_ids"]) for p in prompts)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {
        "model": model,
        "load_format": load_format,
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(args.num_prompts / elapsed, 3),
        "output_tokens_per_s": round(output_tokens / elapsed, 2),
        "total_tokens_per_s": round((prompt_tokens + output_tokens) / elapsed, 2),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "dtype": str(llm.llm_engine.dtype),
        "kv_cache_dtype": args.kv_cache_dtype,
        "logprobs": args.logprobs,
        "repetition_penalty": args.repetition_penalty,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "kv_blocks": llm.llm_engine.kv.num_blocks,
        "preemptions": llm.llm_engine.scheduler.num_preemptions,
        "tensor_parallel_size": args.tensor_parallel_size,
        "attention_backend": llm.llm_engine.attention_backend.name,
        "cuda_graphs": llm.llm_engine.runner.graphs is not None,
        "engine_ready_s": round(engine_ready_s, 2),
        "graph_capture_s": round(llm.llm_engine.graph_capture_seconds, 2),
        "memory_profile": llm.llm_engine.memory_profile,
    }
    llm.llm_engine.shutdown()
    path = write_result("throughput", result, path=args.output_json)
    print(
        f"Throughput: {result['requests_per_s']:.2f} requests/s, {result['total_tokens_per_s']:.1f} total tokens/s, "
        f"{result['output_tokens_per_s']:.1f} output tokens/s ({output_tokens} output tokens in {elapsed:.1f} s)"
    )
    print(f"Result written to {path}")
    return result
