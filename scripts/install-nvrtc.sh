#!/usr/bin/env bash
# Installs NVIDIA's NVRTC runtime compiler (PyPI nvidia-cuda-nvrtc-cu12, no GPU or driver
# needed) into a folder and prints the directory that holds libnvrtc.so.12.
#
#   usage: scripts/install-nvrtc.sh [TARGET_DIR]     (default: ~/.cache/engram/nvrtc)
#   then:  export ENGRAM_NVRTC_LIB="$(scripts/install-nvrtc.sh)"
#          cargo test -p engram-kernels --features cuda --test cuda_compile
#
# Everything but the final directory goes to stderr, so the output can be captured.
set -euo pipefail

target="${1:-${HOME}/.cache/engram/nvrtc}"
version="${ENGRAM_NVRTC_VERSION:-12.8.*}"

find_lib() {
    find "$target" -name 'libnvrtc.so.12' -print -quit 2>/dev/null || true
}

lib="$(find_lib)"
if [[ -z "$lib" ]]; then
    mkdir -p "$target"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$target" "nvidia-cuda-nvrtc-cu12==${version}" >&2
    lib="$(find_lib)"
fi
if [[ -z "$lib" ]]; then
    echo "install-nvrtc: libnvrtc.so.12 not found under $target after install" >&2
    exit 1
fi
dirname "$lib"
