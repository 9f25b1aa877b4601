"""The benches' random workload: N requests of random-token prompts and output lengths, uniform in ranges.

`ladle bench throughput` and `ladle bench serve` draw the same requests from the same seed, so offline and
served figures measure one workload; benchmarks/throughput_roofline.py replays it too.
"""

from __future__ import annotations

import argparse
import random


def at_least(minimum: int):
    """An argparse type: a whole number >= minimum (a count or a length), else a usage error naming it."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a number > 0 (a rate such as a bandwidth), else a usage error naming it."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def check_range(flag: str, bounds: list[int]) -> None:
    """A MIN MAX pair (--input-len, --output-len) must not be reversed."""
    if bounds[0] > bounds[1]:
        raise ValueError(f"{flag}: MIN must not exceed MAX ({bounds[0]} > {bounds[1]})")


def check_fits(max_model_len: int, input_len: int, output_len: int) -> None:
    """The longest prompt plus its output must fit the model's context, or the run would fail midway."""
    if input_len + output_len > max_model_len:
        raise ValueError(
            f"--input-len/--output-len: prompts of up to {input_len} tokens and outputs of up to {output_len} "
            f"do not fit this model's context of {max_model_len} tokens; lower them to add up to at most "
            f"{max_model_len}"
        )


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
