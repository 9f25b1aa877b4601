"""The benches' random workload: N requests of random-token prompts and output lengths, uniform in ranges.

`ladle bench throughput` and `ladle bench serve` draw the same requests from the same seed, so offline and
served figures measure one workload; benchmarks/throughput_roofline.py replays it too.
"""

from __future__ import annotations

import random


def make_requests(
    num_prompts: int, input_len: list[int], output_len: list[int], vocab: int, seed: int
) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) pairs; lengths uniform in [min, max], token ids in [10, vocab)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        n_in = rng.randint(*input_len)
        n_out = rng.randint(*output_len)
        requests.append(([rng.randrange(10, vocab) for _ in range(n_in)], n_out))
    return requests
