#!/usr/bin/env bash
# Tensor parallelism on a 2-GPU host (e.g. 2x H100): correctness, then throughput TP=1 vs TP=2.
# Run from the repository root:  bash benchmarks/tp_device_check.sh
# NVLink SHARP (NVLS) multicast stays off: it needs fabric-manager set-up these hosts may not have.
set -euo pipefail
export NCCL_NVLS_ENABLE=0
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)/src"
nvidia-smi --query-gpu=name,memory.total --format=csv
python benchmarks/tp_device_check.py --preset qwen3-0.6b --layers 4
mkdir -p benchmarks/results
for tp in 1 2; do
  python -m ladle.cli.main bench throughput --preset llama-3.1-8b --tensor-parallel-size "$tp" \
    --num-prompts "${NUM_PROMPTS:-256}" --output-json "benchmarks/results/throughput-llama-3.1-8b-tp$tp.json"
done
