#!/usr/bin/env bash
# Hashing throughput: Rust fast vs naive vs numpy (the spec's formulas, vectorised), on the
# same inputs in one run; also `cargo bench -p engram-benches --bench hash` (criterion).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-bench
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r benches/python/requirements.txt
fi
# OPENBLAS_* settings slow numpy on some machines; they do not matter for integer code.
ENGRAM_PYTHON="$venv/bin/python" cargo run --release --quiet -p engram-benches --bin hash_side_by_side
