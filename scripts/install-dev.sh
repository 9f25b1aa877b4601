#!/usr/bin/env bash
# Installs ladle for development: CPU PyTorch first (torch 2.13.0 is a local file on these machines; another
# version pulls a multi-GB CUDA build), then ladle with the `dev` extra, the tests' references included.
#
# llama.cpp (llama-cpp-python, the GGUF reference) is built from source for this CPU, once, then reused
# from pip's cache, without two x86 extensions: its AMX matmul crashes on Gemma 3 (SIGSEGV in
# ggml_backend_amx_mul_mat, 0.3.36, seen on a Xeon with AMX) and would sum in another order anyway, and
# AVX512-FP16 turns its float16 vector code into half-precision arithmetic. Without them llama.cpp takes
# its AVX-512 / AVX2 route on every x86 CPU: the one ladle's GGUF kernels reproduce bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP=$(grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')  # the dev extra's pin

pip install torch==2.13.0
if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -mno-avx512fp16"
  export CMAKE_ARGS="-DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'"
fi
pip install -e ".[dev]"

# A wheel that pip's cache kept from a plain build (AMX on) would be taken as is: rebuild it once.
if python -c "import sys, llama_cpp; sys.exit(b'AMX_INT8 = 1' not in llama_cpp.llama_print_system_info())"; then
  echo "install-dev: the cached $LLAMA_CPP was built with AMX; rebuilding it without" >&2
  pip cache remove llama_cpp_python || true
  pip install --force-reinstall --no-deps "$LLAMA_CPP"
fi
