#!/usr/bin/env bash
# One device call for the single-GPU figures (issue 6): GPU tests, then bench latency (with the transformers
# baseline in the same run) and bench throughput, logs and JSON under $OUT (or benchmarks/results).
# Run from the repository root:  TAG=h200 bash benchmarks/gpu_device_run.sh
set -uo pipefail
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:-}:$(pwd)/src"
out="${OUT:-benchmarks/results}"
tag="${TAG:-gpu}"
peak="${PEAK_GBS:-4800}"  # H200 datasheet HBM3e bandwidth; H100 SXM: 3350
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device-$tag.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device-$tag.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_fused.py \
    tests/test_kernels_weight_fusion.py tests/test_gpu_engine.py tests/test_sampler_gpu.py 2>&1 \
    | tail -n 15 | tee "$out/gpu-tests-$tag.log"
fi
python3 -m ladle.cli.main bench latency --preset llama-3.1-8b --baseline "${BASELINE:-transformers}" \
  --peak-bandwidth-gbs "$peak" --output-json "$out/latency-$tag.json" 2>&1 | tail -n 40
python3 -m ladle.cli.main bench throughput --preset llama-3.1-8b \
  --output-json "$out/throughput-llama-3.1-8b-$tag.json" 2>&1 | tail -n 15
