#!/usr/bin/env bash
# Issue 6 on one GPU: decode attention bf16 vs fp8 K/V at the throughput shapes, bench throughput of this tree
# against a baseline tree ($OLD_SRC, e.g. main's src) in the same call, the GPU tests and bench latency.
# Logs and JSON under $OUT (or benchmarks/results).   OLD_SRC=/path/to/main/src bash benchmarks/gpu_issue6_ab.sh
# (Calls 3 and 4 of 2026-12-02 ran this script with one more A/B each, of a decode grid order and of a
# heads-first K/V layout, both since dropped: benchmarks/README.md.)
set -uo pipefail
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
new_src="$(pwd)/src"
old_src="${OLD_SRC:?the baseline src folder}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
PYTHONPATH="$new_src" python3 benchmarks/bench_decode_kv.py 2>&1 | grep default | tee "$out/decode-kv.log"
tp() {  # label, src, extra args...
  local label=$1 src=$2; shift 2
  PYTHONPATH="$src" python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b "$@" \
    --output-json "$out/throughput-$label.json" 2>&1 | grep "^Throughput" | sed "s/^/$label: /"
}
{ tp old "$old_src"; tp new "$new_src"; tp new-fp8 "$new_src" --kv-cache-dtype fp8; } | tee "$out/throughput.log"
PYTHONPATH="$new_src" python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
  tests/test_kernels_fused.py tests/test_kernels_weight_fusion.py tests/test_gpu_engine.py tests/test_sampler_gpu.py \
  tests/test_kv_cache_dtype.py 2>&1 | tail -n 8 | tee "$out/gpu-tests.log"
PYTHONPATH="$new_src" python3 -m ladle.cli.main bench latency --preset llama-3.1-8b --baseline none \
  --peak-bandwidth-gbs 4800 --output-json "$out/latency.json" 2>&1 | tail -n 14 | tee "$out/latency.log"
