#!/usr/bin/env bash
# The main job on a small embedded default: fetch the DeepSeek tokenizer, build, and show
# how a Python snippet is tokenized, compressed and hashed into Engram table rows
# (official demo configuration: orders 2-3, 8 heads, layers 1 and 15).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/fetch-tokenizer.sh >/dev/null
cargo build --release --quiet -p engram-tools --bin engram
text=${1:-'def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)'}
./target/release/engram vectors tests/data/conformance/engram-hash-v1.json
./target/release/engram hash --preset demo --bos 0 --text "$text"
