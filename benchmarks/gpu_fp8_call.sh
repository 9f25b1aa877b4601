#!/usr/bin/env bash
# Issue 6, fp8 decode attention, one device call: the attention kernels of this tree against $OLD_SRC's (bf16
# and fp8 K/V; SWEEP=1 adds a tile sweep), bench throughput old/new x auto/fp8 alternating, the GPU tests and
# bench latency (PROFILE=1: then profile_steps.py with fp8 K/V). Logs and JSON under $OUT (or benchmarks/results).
#   OLD_SRC=/path/to/baseline/src [SWEEP=1] [ROUNDS=2] [SKIP_LATENCY=1] [PROFILE=1] bash benchmarks/gpu_fp8_call.sh
set -uo pipefail
out="${OUT:-benchmarks/results}"
tmp=$(mktemp -d)  # per-run JSONs; merged into $out/throughput.json at the end (the device returns 8 files)
new_src="$(pwd)/src"
old_src="${OLD_SRC:?the baseline src folder}"
mkdir -p "$out"
source benchmarks/gpu_device_setup.sh "$out/attention-ab.log"
sweep=()
[ "${SWEEP:-0}" = 1 ] && sweep=(--sweep)
PYTHONPATH="$new_src" timeout 300 python3 benchmarks/bench_attention_ab.py --old-src "$old_src" "${sweep[@]}" \
  --json "$out/attention-ab.json" 2>&1 | tee -a "$out/attention-ab.log"
tp() {  # label, src, extra args...
  local label=$1 src=$2; shift 2
  PYTHONPATH="$src" timeout 120 python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b "$@" \
    --output-json "$tmp/$(date +%s%N)-$label.json" 2>&1 | grep "^Throughput" | sed "s/^/$label: /"
}
{ tp old "$old_src"; tp new "$new_src"; tp old-fp8 "$old_src" --kv-cache-dtype fp8; tp new-fp8 "$new_src" --kv-cache-dtype fp8;
  [ "${ROUNDS:-1}" = 2 ] && { tp new-fp8 "$new_src" --kv-cache-dtype fp8; tp old-fp8 "$old_src" --kv-cache-dtype fp8; tp new "$new_src"; tp old "$old_src"; }
} 2>&1 | tee "$out/throughput.log"
python3 -c 'import json, sys; json.dump([json.load(open(f)) for f in sorted(sys.argv[2:])], open(sys.argv[1], "w"), indent=1)' \
  "$out/throughput.json" "$tmp"/*.json 2>/dev/null
PYTHONPATH="$new_src" timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
  tests/test_kernels_fused.py tests/test_kernels_weight_fusion.py tests/test_gpu_engine.py tests/test_sampler_gpu.py \
  tests/test_kv_cache_dtype.py 2>&1 | tail -n 30 | tee "$out/gpu-tests.log"
[ "${SKIP_LATENCY:-0}" = 1 ] || PYTHONPATH="$new_src" timeout 150 python3 -m ladle.cli.main bench latency \
  --preset llama-3.1-8b --baseline none --peak-bandwidth-gbs 4800 --output-json "$tmp/latency.json" 2>&1 \
  | tail -n 14 | tee "$out/latency.log"
cp "$tmp/latency.json" "$out/" 2>/dev/null
[ "${PROFILE:-0}" = 1 ] && PYTHONPATH="$new_src" timeout 150 python3 benchmarks/profile_steps.py --num-prompts 256 \
  --kernel-batch 256 --skip-cprofile --kv-cache-dtype fp8 2>&1 | grep -v Warn | head -n 40 | tee "$out/profile-fp8.log"
