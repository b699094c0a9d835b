#!/usr/bin/env bash
# The Python package as a user installs it: a fresh project-local virtual environment
# (target/venv-py, recreated each run), `pip install ./bindings/python` (pip fetches maturin
# from PyPI as the build backend and builds the Rust extension, its output shown; dev
# profile here so it reuses the workspace's compiled crates), then the pytest suite (numpy
# only). Skipped tests are listed (-rs) and recorded in $ENGRAM_SKIP_LOG (conftest.py).
# Needs the workspace tools built (target/debug/engram, engram-build, moe-core);
# scripts/test.sh builds them first.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/venv-py
rm -rf "$venv"
python3 -m venv "$venv" || {
  echo "python3 -m venv failed: install Python's venv module (Debian: apt-get install python3-venv)" >&2
  exit 1
}
"$venv/bin/python" -m pip install --progress-bar off --disable-pip-version-check numpy pytest
# --verbose: pip shows maturin's and cargo's progress while the extension compiles.
MATURIN_PEP517_ARGS="${MATURIN_PEP517_ARGS:---profile dev}" \
  "$venv/bin/python" -m pip install --verbose --disable-pip-version-check ./bindings/python
cd bindings/python
"../../$venv/bin/python" -m pytest -q -rs tests "$@"
