"""Where a throughput run's time goes: per-step host/GPU breakdown (scheduler, model runner split into decode
and mixed steps, sampler, the rest), the top host functions (cProfile) and the top GPU kernels of a few
decode and mixed steps (torch.profiler).

python benchmarks/profile_steps.py --preset llama-3.1-8b --num-prompts 128
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from collections import defaultdict

import torch

from ladle import LLM, SamplingParams
from ladle.presets import preset_path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="llama-3.1-8b")
    p.add_argument("--num-prompts", type=int, default=128)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--kernel-batch", type=int, default=64, help="decode batch of the GPU kernel table")
    p.add_argument("--skip-cprofile", action="store_true")
    args = p.parse_args()
    llm = LLM(
        str(preset_path(args.preset)),
        load_format="dummy",
        enforce_eager=args.enforce_eager,
        kv_cache_dtype=args.kv_cache_dtype,
        # The breakdown syncs after every runner call, which async scheduling exists to avoid: measure
        # the parts one after another (the async total is `ladle bench throughput`'s).
        async_scheduling=False,
    )
    eng = llm.llm_engine
    rng = random.Random(0)
    vocab = eng.arch.vocab_size
    prompts, params = [], []
    for _ in range(args.num_prompts):
        prompts.append(
            {"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(rng.randint(100, 1024))]}
        )
        params.append(SamplingParams(temperature=0.0, max_tokens=rng.randint(100, 1024), ignore_eos=True))
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, ignore_eos=True))

    # 1. Breakdown, with a device sync after the model runner so its GPU time is charged to it.
    spent: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    execute, schedule, sampler = eng.runner.execute, eng.scheduler.schedule, eng.sampler

    def timed_execute(batch):
        kind = "decode" if max(batch.num_new_tokens) == 1 else "mixed"
        t = time.perf_counter()
        out = execute(batch)
        spent[f"runner host ({kind})"] += time.perf_counter() - t
        torch.cuda.synchronize()
        spent[f"runner host+gpu ({kind})"] += time.perf_counter() - t
        count[f"runner host+gpu ({kind})"] += 1
        count[f"runner host ({kind})"] += 1
        return out

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[name] += time.perf_counter() - t
            count[name] += 1
            return out

        return wrapper

    eng.runner.execute = timed_execute
    eng.scheduler.schedule = timed("schedule", schedule)
    eng.sampler = timed("sampler (incl. the one D2H copy)", sampler)
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    total = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    print(f"\n== breakdown: {total:.2f} s, {tokens} output tokens, {tokens / total:.0f} tok/s")
    spent["engine host outside the runner, sampler and scheduler"] = total - sum(
        v for k, v in spent.items() if not k.startswith("runner host (")
    )
    count["engine host outside the runner, sampler and scheduler"] = 1
    for name in sorted(spent):
        print(
            f"{name:40s} {count[name]:6d} calls {spent[name]:8.2f} s {spent[name] / count[name] * 1e3:8.2f} ms/call"
        )
    eng.runner.execute, eng.scheduler.schedule, eng.sampler = execute, schedule, sampler

    # 2. Host hot spots (cProfile), on a smaller run.
    if not args.skip_cprofile:
        prof = cProfile.Profile()
        prof.enable()
        llm.generate(prompts[:64], params[:64])
        prof.disable()
        print("\n== cProfile (64 requests), top 25 by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)

    # 3. GPU kernels of decode steps at batch 64 and of a mixed step.
    kb = min(args.kernel_batch, len(prompts))
    for rid in range(kb):
        eng.add_request(f"p{rid}", prompts[rid], SamplingParams(max_tokens=300, ignore_eos=True))
    while any(len(c.output_token_ids) < 1 for p in eng.parents.values() for c in p.children):
        eng.step()
    for _ in range(5):
        eng.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
        for _ in range(10):
            eng.step()
    print(f"\n== GPU kernels, 10 decode steps at batch {kb}")
    print(tp.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    # A fresh prompt (one of the running ones would hit the prefix cache and shrink the step).
    fresh = {"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(1024)]}
    eng.add_request("mixed", fresh, SamplingParams(max_tokens=4, ignore_eos=True))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
        eng.step()
    print(f"\n== GPU kernels, one mixed step (a prompt + {kb} decodes)")
    print(tp.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main()
