#!/usr/bin/env bash
# Issue 6, one device call on the tree sent: the GPU tests, `ladle bench throughput` (fp8 and bf16 K/V),
# `ladle bench latency`, and the kernels of decode steps at PROFILE_BATCHES (default "1 32 128 256", 800-token
# contexts). SAMPLING_AB=1 adds throughput with --logprobs 1 and with --repetition-penalty 1.1, async
# against --no-async-scheduling, alternating. Logs and JSON in $OUT/gpu-check.tgz (or benchmarks/results/).
#   [SKIP_TESTS=1] [SAMPLING_AB=1] [PROFILE_BATCHES="1 256"] bash benchmarks/gpu_check_call.sh
set -uo pipefail
export PYTHONPATH="$(pwd)/src"
# Everything goes into one archive, $OUT/gpu-check.tgz (the device returns at most 8 files).
dest="${OUT:-benchmarks/results}"
out=$(mktemp -d)
mkdir -p "$dest"
source benchmarks/gpu_device_setup.sh "$out/device.log"
# Two async tests need fastapi/uvicorn/openai or xgrammar, which the device lacks (CI runs them on the CPU).
[ "${SKIP_TESTS:-0}" = 1 ] || timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
  tests/test_kernels_fused.py tests/test_kernels_weight_fusion.py tests/test_gpu_engine.py tests/test_sampler_gpu.py \
  tests/test_kv_cache_dtype.py tests/test_async_scheduling.py tests/test_sampler.py tests/test_sampler_penalty_counts.py \
  --deselect tests/test_async_scheduling.py::test_served_with_async_scheduling_streams_transformers_tokens \
  --deselect tests/test_async_scheduling.py::test_rows_that_need_host_tokens_mixed_with_overlapped_ones \
  2>&1 | tail -n 80 | tee "$out/gpu-tests.log"
for kv in fp8 auto; do
  timeout 120 python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b --kv-cache-dtype $kv \
    --output-json "$out/throughput-$kv.json" 2>&1 | grep "^Throughput" | sed "s/^/kv $kv: /"
done | tee "$out/throughput.log"
if [ "${SAMPLING_AB:-0}" = 1 ]; then
  for opt in "--logprobs 1" "--repetition-penalty 1.1"; do
    for mode in --async-scheduling --no-async-scheduling; do
      tag=$(echo "$opt $mode" | tr -c 'a-z0-9\n' '-')
      timeout 120 python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b $opt $mode \
        --output-json "$out/sampling-$tag.json" 2>&1 | grep "^Throughput" | sed "s/^/$opt $mode: /"
    done
  done | tee "$out/sampling-ab.log"
fi
timeout 120 python3 -m ladle.cli.main bench latency --preset llama-3.1-8b --baseline none \
  --peak-bandwidth-gbs 4800 --output-json "$out/latency.json" 2>&1 | grep -E "^batch|^static|^Engine|^KV" \
  | tee "$out/latency.log"
timeout 200 python3 benchmarks/profile_decode.py --input-len 800 --batch-sizes ${PROFILE_BATCHES:-1 32 128 256} \
  2>&1 | grep -v Warn | tee "$out/profile-decode.log"
tar czf "$dest/gpu-check.tgz" -C "$out" .
exit 0
