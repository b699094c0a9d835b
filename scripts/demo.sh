#!/usr/bin/env bash
# The main job, end to end, on the small committed model: fetch the DeepSeek tokenizer,
# build the tools, turn the model's Engram checkpoint into a published table with
# engram-build (profile from the Python standard library it was trained on), and decode a
# Python completion with moe-core, its Engram rows read from SSD through io_uring with
# O_DIRECT (falling back to pread where io_uring is unavailable) behind a profile-seeded cache.
#
#   [MODEL=models/stdlib-moe-engram-mhc-c] scripts/demo.sh ['PROMPT']
set -euo pipefail
cd "$(dirname "$0")/.."

model=${MODEL:-models/stdlib-moe-engram-b}
prompt=${1:-$'import os\nimport sys\n\n\ndef main():\n'}

scripts/fetch-tokenizer.sh >/dev/null
echo "== building (cargo build --release)" >&2
cargo build --release --quiet -p engram-tools -p moe-core
table=$(scripts/build-table.sh "$model")
# The hot-row cache holds 40% of the table's rows, as a deployment would size it for a table
# far larger than RAM.
cache=$(python3 - "$table/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
rows = sum(l["rows"] for l in m["layers"])
print(f"== table {sys.argv[1].rsplit('/', 1)[0]}: {rows} {m['row_layout']['kind']} rows of {m['dim']} values, "
      f"{m['row_bytes']} bytes per row", file=sys.stderr)
print(rows * m["row_bytes"] * 2 // 5)
PY
)

echo "== moe-core generate (Engram table on SSD: uring backend, O_DIRECT, $cache-byte cache)" >&2
./target/release/moe-core generate --model "$model" --engram "$table" \
  --engram-backend uring --cache-bytes "$cache" --prompt "$prompt" --max-new-tokens 48
