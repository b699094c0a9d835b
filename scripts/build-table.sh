#!/usr/bin/env bash
# Builds a committed model's Engram table where moe-core looks for it by default,
# target/engram-tables/<model directory name>: engram-build --import of the model's
# engram.safetensors, with the Python standard library the models were trained on as the
# traffic profile (profile.bin, which seeds the hot-row cache). A table already there is kept.
#
#   scripts/build-table.sh [MODEL_DIR] [ROW_LAYOUT]
#
# MODEL_DIR defaults to models/stdlib-moe-engram-b; ROW_LAYOUT to fp8 (E4M3 values + one
# E8M0 scale per 32 values: the FP8 rows pass the quality gate, see README "Measurements");
# bf16 is the exact format of the checkpoint. Prints the table directory.
set -euo pipefail
cd "$(dirname "$0")/.."

model=${1:-models/stdlib-moe-engram-b}
layout=${2:-fp8}
model=${model%/}
table=target/engram-tables/$(basename "$model")

if [ ! -f "$model/engram.safetensors" ]; then
  echo "build-table: $model has no engram.safetensors (a model without Engram needs no table)" >&2
  exit 2
fi
if [ -f "$table/manifest.json" ]; then
  echo "$table"
  exit 0
fi
scripts/fetch-tokenizer.sh >/dev/null
cargo build --release --quiet -p engram-tools
stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
echo "== engram-build: $model/engram.safetensors -> $table ($layout rows; profile: $stdlib)" >&2
./target/release/engram-build "$stdlib" --include '**/*.py' \
  --exclude '**/test' --exclude '**/encodings' --exclude '**/pydoc_data' --exclude '**/site-packages' \
  --import "$model/engram.safetensors" --row-layout "$layout" --out "$table" --quiet
echo "$table"
