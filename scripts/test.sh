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

# io_uring is required wherever io_uring_setup works, so no io_uring test can pass by
# silently running pread (each skipped test says so where it is unavailable).
if python3 - <<'EOF'
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
params = (ctypes.c_ubyte * 120)()
sys.exit(0 if libc.syscall(425, 8, params) >= 0 else 1)  # io_uring_setup(8, &params)
EOF
then
  export ENGRAM_REQUIRE_URING=1
  echo "io_uring works here: ENGRAM_REQUIRE_URING=1"
else
  echo "io_uring is unavailable here: its tests are skipped, each saying so"
fi

cargo test --workspace "$@"

ENGRAM_NVRTC_LIB="$(scripts/install-nvrtc.sh)"
export ENGRAM_NVRTC_LIB ENGRAM_REQUIRE_NVRTC=1
# ENGRAM_REQUIRE_GPU=1 turns the CUDA tests' "skipped: no CUDA device" into a failure, so a
# broken engine init cannot pass silently. It is set only where a GPU exists (nvidia-smi
# lists one); elsewhere the device tests skip with a printed reason and only the NVRTC
# compile checks run. Set it yourself to insist (e.g. ENGRAM_REQUIRE_GPU=1 scripts/test.sh).
if [[ -z "${ENGRAM_REQUIRE_GPU:-}" ]] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    export ENGRAM_REQUIRE_GPU=1
fi
cargo test -p engram-kernels --features cuda

# The bindings, as C and Python users build and call them (they use the tools built above).
cargo build -p engram-tools --bins
bindings/c/test.sh
bindings/python/test.sh
