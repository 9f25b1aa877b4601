"""GPU kernel time of decode steps (CUDA graphs replaying) at given batch sizes: which kernels the step's time
goes to. python benchmarks/profile_decode.py --preset llama-3.1-8b --batch-sizes 1 256"""

from __future__ import annotations

import argparse
import os
import random

import torch

from ladle import LLM, SamplingParams
from ladle.presets import preset_path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="llama-3.1-8b")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=14, help="kernels listed per batch size")
    p.add_argument(
        "--keep-pdl",
        action="store_true",
        help="leave programmatic dependent launch on: kernel times then include waiting for the kernel before",
    )
    args = p.parse_args()
    if not args.keep_pdl:
        # Under PDL a kernel's programs start before its predecessor ends and wait, so the profiler's per-kernel
        # times overlap and their sum exceeds the step: off, the table is a breakdown (LADLE_PDL, kernels/pdl.py).
        os.environ["LADLE_PDL"] = "0"
    llm = LLM(str(preset_path(args.preset)), load_format="dummy")
    eng = llm.llm_engine
    rng = random.Random(0)
    for batch in args.batch_sizes:
        # Long enough that no request ends while later ones are still prefilling (a batch of 256 x 800 takes
        # ~100 chunked-prefill steps of 2048 tokens): every request must still run when the profile starts.
        prefill_steps = batch * args.input_len // 1024 + 10
        params = SamplingParams(temperature=0.0, max_tokens=prefill_steps + args.steps + 10, ignore_eos=True)
        for i in range(batch):
            ids = [rng.randrange(10, eng.arch.vocab_size) for _ in range(args.input_len)]
            eng.add_request(f"b{batch}-{i}", {"prompt_token_ids": ids}, params)
        children = [c for parent in eng.parents.values() for c in parent.children]
        while not all(c.output_token_ids for c in children):
            eng.step()
        eng.step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                eng.step()
        total = sum(e.self_device_time_total for e in prof.key_averages())
        running = sum(not c.is_finished for c in children)
        assert running == batch, f"only {running} of {batch} requests were decoding"
        pdl = "on: kernel times overlap" if args.keep_pdl else "off"
        print(
            f"\n== batch {batch}: {total / args.steps / 1e3:.3f} ms of GPU kernels per decode step (PDL {pdl})"
        )
        print(
            prof.key_averages().table(
                sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60
            )
        )
        for request_id in list(eng.parents):
            eng.abort_request(request_id)
        while eng.has_unfinished_requests():
            eng.step()


if __name__ == "__main__":
    main()
