#!/usr/bin/env bash
# Issue 6, call 1: decode-attention bf16/fp8 sweep, a step profile of the 256-request run, and throughput
# of this tree against the tree in $OLD_SRC (the baseline), alternating. Logs under $OUT.
set -uo pipefail
out="${OUT:-benchmarks/results}"
new_src="$(pwd)/src"
old_src="${OLD_SRC:?path of the baseline src}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"
PYTHONPATH="$new_src" python3 benchmarks/bench_decode_kv.py --sweep 2>&1 | tee "$out/decode-kv.log" | grep -E "best|default"
PYTHONPATH="$new_src" python3 benchmarks/profile_steps.py --num-prompts 256 --kernel-batch 256 --skip-cprofile \
  > "$out/profile-steps.log" 2>&1
grep -A12 "breakdown" "$out/profile-steps.log"
for round in 1 2; do
  for tree in old new; do
    src="$new_src"; [ "$tree" = old ] && src="$old_src"
    PYTHONPATH="$src" python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b \
      --output-json "$out/throughput-$tree-$round.json" 2>&1 | grep "^Throughput" | sed "s/^/$tree $round: /"
  done
done
PYTHONPATH="$new_src" python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b --kv-cache-dtype fp8 \
  --output-json "$out/throughput-new-fp8.json" 2>&1 | grep "^Throughput" | sed "s/^/new fp8: /"
