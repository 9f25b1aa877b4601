"""Hugging Face transformers `generate` on the same dummy weights (from_config, bf16): the baseline that
`ladle bench latency --baseline transformers` runs in a separate process (so the two never share GPU memory).

Prints one JSON object on its last line: batch-1 decode tokens/s and TTFT, and static-batch output
tokens/s for each batch size that fits (prompts of --input-len random tokens, exactly --output-len new).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _generate(model, batch: int, input_len: int, new_tokens: int, vocab: int) -> float:
    ids = torch.randint(10, vocab, (batch, input_len), device="cuda")
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    torch.cuda.synchronize()
    assert out.shape[1] == input_len + new_tokens
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", help="a folder with config.json")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-one-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    args = p.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.config)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    load_s = time.perf_counter() - start
    vocab = config.vocab_size
    _generate(model, 1, 16, 4, vocab)  # warm-up

    ttft = _generate(model, 1, args.input_len, 1, vocab)
    total = _generate(model, 1, args.input_len, args.batch_one_tokens, vocab)
    result = {
        "load_s": round(load_s, 2),
        "ttft_ms": round(ttft * 1e3, 2),
        "batch1_decode_tokens_per_s": round((args.batch_one_tokens - 1) / (total - ttft), 2),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "static_batch": {},
    }
    result["static_batch"]["1"] = round(args.batch_one_tokens / total, 2)
    for batch in args.batch_sizes:
        try:
            elapsed = _generate(model, batch, args.input_len, args.output_len, vocab)
        except torch.OutOfMemoryError:
            result["static_batch"][str(batch)] = None
            torch.cuda.empty_cache()
            break
        result["static_batch"][str(batch)] = round(batch * args.output_len / elapsed, 2)
    fitted = {b: v for b, v in result["static_batch"].items() if v}
    best = max(fitted, key=lambda b: fitted[b])
    result["best_batch"] = int(best)
    result["best_output_tokens_per_s"] = fitted[best]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
