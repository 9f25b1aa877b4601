"""Decode speed of Gemma 3 270M Q4_K_M on the CPU under three sampling settings: greedy, Ollama's defaults
(temperature 0.8, top-k 40, top-p 0.9) and greedy with repeat_penalty 1.1 over repeat_last_n 64. What the
sampler costs a laptop user, end to end (`LLM.generate`, 4 x 64 or 1 x 128 tokens, ignore_eos).

    PYTHONPATH=src python benchmarks/cpu_sampling_speed.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gguf_support import gemma_path  # noqa: E402  (assembles the demo GGUF on first use)
from ladle import LLM, SamplingParams  # noqa: E402

SETTINGS = {
    "greedy": SamplingParams(temperature=0.0),
    "ollama-default": SamplingParams(temperature=0.8, top_k=40, top_p=0.9),
    "repeat-penalty": SamplingParams(temperature=0.0, repetition_penalty=1.1, penalty_window=64),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    llm = LLM(str(gemma_path()), max_num_seqs=8)
    for num_seqs, num_tokens in ((1, 128), (4, 64)):
        prompts = [{"prompt_token_ids": list(range(1000 + 50 * i, 1200 + 50 * i))} for i in range(num_seqs)]
        for _ in range(args.rounds):
            for name, params in SETTINGS.items():
                params = params.clone(max_tokens=num_tokens, ignore_eos=True)
                start = time.perf_counter()
                llm.generate(prompts, params)
                rate = num_seqs * num_tokens / (time.perf_counter() - start)
                print(f"{num_seqs} x {num_tokens} {name}: {rate:.1f} tok/s", flush=True)


if __name__ == "__main__":
    main()
