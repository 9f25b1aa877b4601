# Sourced by the benchmarks/gpu_*_call.sh scripts at the start of a device call: the environment they all
# run under, the gguf wheel the device image lacks (ladle imports gguf; carry its wheel in whl/, pure
# Python, its needs are there), and the device's facts written to the file named by $1.
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
ls whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps whl/*.whl
{ date -u; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv;
  python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'; } | tee "$1"
