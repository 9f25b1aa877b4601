"""`ladle bench serve`: load against a running server, like `vllm bench serve`.

N streaming requests to the OpenAI completions route, sent at a given rate (Poisson arrivals) or with at
most C in flight; reports request throughput, output tokens/s, and TTFT / TPOT / ITL mean, median and p99.
The prompts are random token ids drawn exactly as `ladle bench throughput` draws them (same seed, same
ranges, same vocabulary), so the served and offline figures describe the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from ladle.bench.workload import at_least, check_range, make_requests


def add_arguments(p: argparse.ArgumentParser) -> None:
    host = os.environ.get("LADLE_HOST", "127.0.0.1:11434")
    default_url = host if "://" in host else f"http://{host}"
    p.add_argument(
        "--base-url", default=default_url, help="the server (default LADLE_HOST or 127.0.0.1:11434)"
    )
    p.add_argument("--model", default=None, help="served model id (default: the only one the server lists)")
    p.add_argument("--api-key", default=os.environ.get("LADLE_API_KEY"))
    p.add_argument("--num-prompts", type=at_least(1), default=256)
    p.add_argument("--input-len", type=at_least(1), nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=at_least(1), nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (default: all at once)"
    )
    p.add_argument(
        "--max-concurrency", type=at_least(1), default=None, help="at most this many requests in flight"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=None, help="default: asked from the server (/api/show)")
    p.add_argument("--output-json", default=None, help="where to write the JSON result")


@dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    latency: float = 0.0
    ttft: float = 0.0
    output_tokens: int = 0
    itl: list[float] = field(default_factory=list)  # gaps between streamed chunks after the first


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {
        "mean": statistics.fmean(ordered) * 1000,
        "median": statistics.median(ordered) * 1000,
        "p99": p99 * 1000,
    }


async def _one(client, model: str, prompt: list[int], max_tokens: int) -> RequestResult:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = RequestResult()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    result.error = data["error"].get("message", "error")
                    return result
                now = time.perf_counter()
                if data.get("choices"):
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                if data.get("usage"):
                    result.output_tokens = data["usage"]["completion_tokens"]
        result.latency = time.perf_counter() - start
        result.ok = True
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        result.error = repr(exc)
    return result


async def _run(args: argparse.Namespace) -> tuple[list[RequestResult], float, str, int]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, timeout=httpx.Timeout(None), limits=limits
    ) as client:
        model = args.model
        if model is None:
            ids = [m["id"] for m in _json_or_error(await client.get("/v1/models"), "--base-url")["data"]]
            if len(ids) != 1:
                raise ValueError(f"--model: the server serves {ids}; name one")
            model = ids[0]
        vocab = args.vocab_size
        if vocab is None:
            info = _json_or_error(await client.post("/api/show", json={"model": model}), "--model")
            sizes = [v for k, v in (info.get("model_info") or {}).items() if k.endswith(".vocab_size")]
            if not sizes:
                raise ValueError(f"--vocab-size: the server does not say the vocabulary size of {model!r}")
            vocab = sizes[0]
        requests = make_requests(args.num_prompts, args.input_len, args.output_len, vocab, args.seed)
        # Warm-up, as `bench throughput` does, so one-time costs stay out of the figures.
        await _one(client, model, [11, 12, 13], 4)

        gate = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        rng = random.Random(args.seed)

        async def limited(prompt: list[int], n_out: int) -> RequestResult:
            if gate is None:
                return await _one(client, model, prompt, n_out)
            async with gate:
                return await _one(client, model, prompt, n_out)

        tasks = []
        start = time.perf_counter()
        for prompt, n_out in requests:
            tasks.append(asyncio.ensure_future(limited(prompt, n_out)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(args.request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start, model, vocab


def _json_or_error(response, flag: str) -> dict[str, Any]:
    """The answer's JSON, or a one-line error naming the flag and what the server said."""
    if response.is_success:
        return response.json()
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        message = None
    raise ValueError(
        f"{flag}: HTTP {response.status_code} from {response.url}: {message or response.text[:200]}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ladle.bench.results import write_result

    check_range("--input-len", args.input_len)
    check_range("--output-len", args.output_len)
    results, elapsed, model, vocab = asyncio.run(_run(args))
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    result = {
        "base_url": args.base_url,
        "model": model,
        "vocab_size": vocab,
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
        "max_concurrency": args.max_concurrency,
        "completed": len(ok),
        "failed": len(failed),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "output_tokens_per_s": round(output_tokens / elapsed, 2),
        "output_tokens": output_tokens,
        "ttft_ms": percentiles([r.ttft for r in ok]),
        "tpot_ms": percentiles(tpot),
        "itl_ms": percentiles([gap for r in ok for gap in r.itl]),
    }
    path = write_result("serve", result, path=args.output_json)
    print(f"Successful requests: {len(ok)} (failed: {len(failed)}) in {elapsed:.2f} s")
    print(f"Request throughput:  {result['requests_per_s']:.2f} requests/s")
    print(f"Output throughput:   {result['output_tokens_per_s']:.1f} tokens/s ({output_tokens} tokens)")
    for name in ("ttft", "tpot", "itl"):
        s = result[f"{name}_ms"]
        print(f"{name.upper():<5} ms: mean {s['mean']:.2f}  median {s['median']:.2f}  p99 {s['p99']:.2f}")
    if failed:
        print(f"First error: {failed[0].error}")
    print(f"Result written to {path}")
    return result
