"""The engine's host work per step with the model taken out: the throughput run's 256 requests (prompt and
output lengths uniform in 100-1024, greedy, ignore_eos) on the tiny-llama config, its forward replaced by
zeros, on the CPU. What is left is what a GPU waits for between steps (scheduling, the runner's input
building, the engine's bookkeeping), less the sampler's argmax (timed apart: on a GPU it runs on the device).

PYTHONPATH=src python benchmarks/host_overhead.py [--num-prompts 256] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time

import torch

from ladle import LLM, SamplingParams
from ladle.presets import preset_path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="cProfile the run, top 25 by own time")
    args = p.parse_args()
    llm = LLM(str(preset_path("tiny-llama")), load_format="dummy", max_num_seqs=256, max_model_len=2048)
    eng = llm.llm_engine
    hidden, vocab = eng.arch.hidden_size, eng.arch.vocab_size
    zeros = torch.zeros(256, vocab)
    eng.runner.model.forward = lambda ids, pos, kv, meta: torch.zeros(ids.shape[0], hidden)
    eng.runner.model.compute_logits = lambda h: zeros[: h.shape[0]]
    rng = random.Random(0)
    prompts, params = [], []
    for _ in range(args.num_prompts):
        prompts.append(
            {"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(rng.randint(100, 1024))]}
        )
        params.append(SamplingParams(temperature=0.0, max_tokens=rng.randint(100, 1024), ignore_eos=True))

    steps, sampler_s = [0], [0.0]
    step, sampler = eng.step, eng.sampler

    def counted(*a, **k):
        steps[0] += 1
        return step(*a, **k)

    def timed_sampler(*a, **k):
        t = time.perf_counter()
        out = sampler(*a, **k)
        sampler_s[0] += time.perf_counter() - t
        return out

    eng.step, eng.sampler = counted, timed_sampler
    prof = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    outs = llm.generate(prompts, params)
    if prof:
        prof.disable()
    total = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    host = total - sampler_s[0]
    print(
        f"{steps[0]} steps, {tokens} tokens: {total:.2f} s, of which sampler {sampler_s[0]:.2f} s; "
        f"host without the sampler {host:.2f} s = {host / steps[0] * 1e3:.2f} ms/step"
    )
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
