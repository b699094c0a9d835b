#!/usr/bin/env bash
# Builds a committed model's Engram table where moe-core looks for it by default,
# target/engram-tables/<model directory name>: engram-build --import of the model's
# engram.safetensors, with the Python standard library the models were trained on as the
# traffic profile (profile.bin, which seeds the hot-row cache). A table already there is kept.
#
#   scripts/build-table.sh [MODEL_DIR] [ROW_LAYOUT] [OUT_DIR]
#
# MODEL_DIR defaults to models/stdlib-moe-engram-b. ROW_LAYOUT defaults to fp8: E4M3 values
# with one E8M0 scale per 32 values, or per row where a row is narrower (the committed
# models' rows hold 8 values: fp8:8, 9 bytes per row instead of bf16's 16); these rows pass
# the quality gate (scripts/row-format-gate.sh, README "Measurements"). bf16 is the exact
# format of the checkpoint. OUT_DIR defaults to target/engram-tables/<model directory name>,
# where moe-core looks by default. Prints the table directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

model=${1:-models/stdlib-moe-engram-b}
layout=${2:-fp8}
model=${model%/}
table=${3:-target/engram-tables/$(basename "$model")}

if [ ! -f "$model/engram.safetensors" ]; then
  echo "build-table: $model has no engram.safetensors (a model without Engram needs no table)" >&2
  exit 2
fi
if [ -f "$table/manifest.json" ]; then
  echo "$table"
  exit 0
fi
if [ "$layout" = fp8 ]; then
  dim=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['engram']['head_dim'])" "$model/config.json")
  layout=fp8:$(( dim < 32 ? dim : 32 ))
fi
scripts/fetch-tokenizer.sh >/dev/null
# Progress goes to stderr; stdout carries only the table's path.
build_tools >&2
stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
phase "engram-build: $model/engram.safetensors -> $table ($layout rows; profile: $stdlib)" \
  "$(target_dir)/release/engram-build" "$stdlib" --include '**/*.py' \
  --exclude '**/test' --exclude '**/encodings' --exclude '**/pydoc_data' --exclude '**/site-packages' \
  --import "$model/engram.safetensors" --row-layout "$layout" --out "$table" >&2
echo "$table"
