#!/usr/bin/env bash
# Issue 6, async scheduling, one device call: bench throughput with --async-scheduling and
# --no-async-scheduling alternating (fp8 and bf16 K/V), bench latency both ways (batch 1/8/32 and a static
# batch of 256), then the GPU tests (PROFILE=1: the kernels of a batch-1 decode step, async). Logs and JSON
# under $OUT (or benchmarks/results).
#   [ROUNDS=2] [SKIP_TESTS=1] [PROFILE=1] bash benchmarks/gpu_async_call.sh
set -uo pipefail
export PYTHONPATH="$(pwd)/src"
out="${OUT:-benchmarks/results}"
tmp=$(mktemp -d)
mkdir -p "$out"
source benchmarks/gpu_device_setup.sh "$out/device.log"
tp() {  # label, extra args...
  local label=$1; shift
  timeout 120 python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b "$@" \
    --output-json "$tmp/$(date +%s%N)-$label.json" 2>&1 | grep "^Throughput" | sed "s/^/$label: /"
}
{ for _ in $(seq "${ROUNDS:-1}"); do
    tp async-fp8 --kv-cache-dtype fp8 --async-scheduling; tp sync-fp8 --kv-cache-dtype fp8 --no-async-scheduling
    tp sync-bf16 --no-async-scheduling; tp async-bf16 --async-scheduling
  done; } 2>&1 | tee "$out/throughput.log"
python3 -c 'import json, sys; json.dump([json.load(open(f)) for f in sorted(sys.argv[2:])], open(sys.argv[1], "w"), indent=1)' \
  "$out/throughput.json" "$tmp"/*.json 2>/dev/null
lat() {  # label, extra args...
  local label=$1; shift
  timeout 120 python3 -m ladle.cli.main bench latency --preset llama-3.1-8b --baseline none \
    --peak-bandwidth-gbs 4800 --throughput-batch-sizes 256 --output-json "$out/latency-$label.json" "$@" 2>&1 \
    | grep -E "^batch|^static|^Engine" | sed "s/^/$label: /"
}
{ lat async --async-scheduling; lat sync --no-async-scheduling; } 2>&1 | tee "$out/latency.log"
[ "${SKIP_TESTS:-0}" = 1 ] || timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
  tests/test_kernels_fused.py tests/test_kernels_weight_fusion.py tests/test_gpu_engine.py tests/test_sampler_gpu.py \
  tests/test_kv_cache_dtype.py 2>&1 | tail -n 30 | tee "$out/gpu-tests.log"
[ "${PROFILE:-0}" = 1 ] && timeout 150 python3 benchmarks/profile_decode.py --batch-sizes 1 2>&1 \
  | grep -v Warn | head -n 40 | tee "$out/profile-decode-batch1.log"
exit 0
