#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches what the tests need (the DeepSeek
# tokenizer and NVIDIA's NVRTC compiler library, both from PyPI), then
#   cargo test --workspace
#   cargo test -p engram-kernels --features cuda   (every CUDA kernel compiled for sm_90
#                                                  by NVRTC; GPU tests run only with a GPU)
#   bindings/c/test.sh        (the C ABI from C, under valgrind)
#   bindings/python/test.sh   (pip install ./bindings/python in a fresh venv, then pytest)
# Extra arguments go to the first cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-tokenizer.sh >/dev/null
# With the tokenizer in place its tests must run, not skip.
export ENGRAM_REQUIRE_TOKENIZER=1

cargo test --workspace "$@"

ENGRAM_NVRTC_LIB="$(scripts/install-nvrtc.sh)"
export ENGRAM_NVRTC_LIB ENGRAM_REQUIRE_NVRTC=1
cargo test -p engram-kernels --features cuda

# The bindings, as C and Python users build and call them (they use the tools built above).
cargo build -p engram-tools --bins
bindings/c/test.sh
bindings/python/test.sh
