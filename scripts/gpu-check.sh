#!/usr/bin/env bash
# GPU check for the engram-kernels CUDA backend, on a machine with an NVIDIA driver and GPU:
#   1. builds engram-kernels with --features cuda (release),
#   2. runs the CUDA tests (sm_90 compile report, conformance vectors, hashing and
#      dequantization against the CPU) with NVRTC required,
#   3. prints a timing table of each kernel against the CPU path.
# Finishes in well under 5 minutes (each step has its own timeout).
#
# NVRTC: a system libnvrtc.so.12 (CUDA toolkit) is used when the loader finds it; otherwise
# set ENGRAM_NVRTC_LIB to the directory holding it, or let this script run
# scripts/install-nvrtc.sh (needs PyPI access; on a machine without it, install there
# first, e.g. `scripts/install-nvrtc.sh .nvrtc`, bring that folder along and set
# ENGRAM_NVRTC_LIB=.nvrtc/nvidia/cuda_nvrtc/lib).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${ENGRAM_NVRTC_LIB:-}" ]] && ! ldconfig -p 2>/dev/null | grep -c 'libnvrtc\.so\.12' >/dev/null; then
    if dir="$(scripts/install-nvrtc.sh)"; then
        export ENGRAM_NVRTC_LIB="$dir"
    else
        echo "gpu-check: no libnvrtc.so.12 and scripts/install-nvrtc.sh failed" >&2
        exit 2
    fi
fi
if [[ -n "${ENGRAM_NVRTC_LIB:-}" && -d "$ENGRAM_NVRTC_LIB" ]]; then
    # cargo test runs in the crate directory: make the path absolute.
    ENGRAM_NVRTC_LIB="$(cd "$ENGRAM_NVRTC_LIB" && pwd)"
    export ENGRAM_NVRTC_LIB
fi
export ENGRAM_REQUIRE_NVRTC=1
# This script runs where a GPU is: a CUDA engine that fails to start is a failure, not a skip.
export ENGRAM_REQUIRE_GPU=1

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== build (release, --features cuda)"
timeout 180 cargo build --release -p engram-kernels --features cuda --tests

echo "== CUDA tests"
timeout 120 cargo test --release -p engram-kernels --features cuda --test cuda -- --nocapture

echo "== timing: CUDA vs CPU (wall clock per call, GPU times include host<->device copies)"
timeout 120 cargo test --release -p engram-kernels --features cuda --test cuda \
    -- --ignored --nocapture cuda_timing_table
