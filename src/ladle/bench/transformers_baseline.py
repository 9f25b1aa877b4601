"""Hugging Face transformers `generate` on the same dummy weights (from_config): the baseline that
`ladle bench latency --baseline transformers` runs in a separate process (so the two never share GPU memory),
on the device and in the dtype the ladle engine uses. `python -m ladle.bench.transformers_baseline CONFIG_DIR`.

Prints one JSON object on its last line: batch-1 decode tokens/s and TTFT, and static-batch output
tokens/s for each batch size that fits (prompts of --input-len random tokens, exactly --output-len new).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generate(model, batch: int, input_len: int, new_tokens: int, vocab: int, device: torch.device) -> float:
    ids = torch.randint(10, vocab, (batch, input_len), device=device)
    mask = torch.ones_like(ids)
    _sync(device)
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
    _sync(device)
    assert out.shape[1] == input_len + new_tokens
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", help="a folder with config.json")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-one-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[16, 64, 256])
    p.add_argument("--device", default="cuda", help="cpu or cuda")
    p.add_argument("--dtype", default="bfloat16", choices=list(_DTYPES))
    args = p.parse_args()

    from transformers import AutoConfig, AutoModelForCausalLM

    device = torch.device(args.device)
    config = AutoConfig.from_pretrained(args.config)
    start = time.perf_counter()
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=_DTYPES[args.dtype]).eval()
    load_s = time.perf_counter() - start
    vocab = config.vocab_size
    _generate(model, 1, 16, 4, vocab, device)  # warm-up

    ttft = _generate(model, 1, args.input_len, 1, vocab, device)
    total = _generate(model, 1, args.input_len, args.batch_one_tokens, vocab, device)
    result = {
        "device": str(device),
        "dtype": args.dtype,
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
            elapsed = _generate(model, batch, args.input_len, args.output_len, vocab, device)
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
