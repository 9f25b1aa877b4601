#!/usr/bin/env bash
# Issue 6, one device call: this tree against $OLD_SRC (a baseline's src folder) in the same call: bench
# latency (batch 1/8/32) old then new, bench throughput new/old alternating for each option set of AB_OPTS
# (';'-separated; `plain` is none; default fp8 K/V then bf16), then the GPU tests on this tree. Logs and JSON under $OUT (or
# benchmarks/results).
#   OLD_SRC=/path/to/baseline/src [AB_OPTS="--repetition-penalty 1.1;plain"] [SKIP_LATENCY=1] [SKIP_TESTS=1] \
#     bash benchmarks/gpu_ab_call.sh
set -uo pipefail
out="${OUT:-benchmarks/results}"
tmp=$(mktemp -d)
new_src="$(pwd)/src"
old_src="${OLD_SRC:?the baseline src folder}"
mkdir -p "$out"
source benchmarks/gpu_device_setup.sh "$out/device.log"
lat() {  # label, src
  PYTHONPATH="$2" timeout 120 python3 -m ladle.cli.main bench latency --preset llama-3.1-8b --baseline none \
    --peak-bandwidth-gbs 4800 --throughput-batch-sizes 256 --output-json "$out/latency-$1.json" 2>&1 \
    | grep -E "^batch|^static|^Engine" | sed "s/^/$1: /"
}
[ "${SKIP_LATENCY:-0}" = 1 ] || { lat old "$old_src"; lat new "$new_src"; } 2>&1 | tee "$out/latency.log"
tp() {  # label, src, extra args...
  local label=$1 src=$2; shift 2
  PYTHONPATH="$src" timeout 120 python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b "$@" \
    --output-json "$tmp/$(date +%s%N)-$label.json" 2>&1 | grep "^Throughput" | sed "s/^/$label: /"
}
IFS=';' read -ra option_sets <<< "${AB_OPTS:---kv-cache-dtype fp8;plain}"  # plain: no extra options
round=0
for opts in "${option_sets[@]}"; do  # new first, then old, then the other way round: drift cancels
  tag=$(echo "-$opts" | tr -c 'a-z0-9\n' '-'); [ "$opts" = plain ] && opts=""
  if [ $((round % 2)) = 0 ]; then tp "new$tag" "$new_src" $opts; tp "old$tag" "$old_src" $opts
  else tp "old$tag" "$old_src" $opts; tp "new$tag" "$new_src" $opts; fi
  round=$((round + 1))
done 2>&1 | tee "$out/throughput.log"
python3 -c 'import json, sys; json.dump([json.load(open(f)) for f in sorted(sys.argv[2:])], open(sys.argv[1], "w"), indent=1)' \
  "$out/throughput.json" "$tmp"/*.json 2>/dev/null
[ "${SKIP_TESTS:-0}" = 1 ] || PYTHONPATH="$new_src" timeout 240 python3 -m pytest -q -p no:cacheprovider \
  tests/test_kernels_attention.py tests/test_kernels_fused.py tests/test_kernels_weight_fusion.py \
  tests/test_gpu_engine.py tests/test_sampler_gpu.py tests/test_kv_cache_dtype.py ${EXTRA_TESTS:-} 2>&1 | tail -n 30 | tee "$out/gpu-tests.log"
exit 0
