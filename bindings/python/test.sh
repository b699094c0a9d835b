#!/usr/bin/env bash
# The Python package as a user installs it: a fresh project-local virtual environment
# (target/venv-py, recreated each run), `pip install ./bindings/python` (pip fetches maturin
# from PyPI as the build backend and builds the Rust extension; dev profile here so CI
# reuses the workspace's compiled crates), then the pytest suite (numpy only).
# Needs the workspace tools built (target/debug/engram, engram-build); scripts/test.sh
# builds them first.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/venv-py
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy pytest
MATURIN_PEP517_ARGS="${MATURIN_PEP517_ARGS:---profile dev}" \
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./bindings/python
cd bindings/python
"../../$venv/bin/python" -m pytest -q tests "$@"
