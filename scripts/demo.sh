#!/usr/bin/env bash
# The main job, end to end, on the small committed model: fetch the DeepSeek tokenizer,
# build the tools, turn the model's Engram checkpoint into a published table with
# engram-build (profile from the Python standard library it was trained on), and decode a
# Python completion with moe-core, its Engram rows read from SSD through io_uring with
# O_DIRECT (falling back to pread where io_uring is unavailable) behind a profile-seeded cache.
#
#   scripts/demo.sh ['PROMPT']
set -euo pipefail
cd "$(dirname "$0")/.."

model=models/stdlib-moe-engram-b
table=target/engram-tables/stdlib-moe-engram-b
prompt=${1:-$'import os\nimport sys\n\n\ndef main():\n'}

scripts/fetch-tokenizer.sh >/dev/null
echo "== building (cargo build --release)" >&2
cargo build --release --quiet -p engram-tools -p moe-core

if [ ! -f "$table/manifest.json" ]; then
  stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
  echo "== engram-build: $model/engram.safetensors -> $table (profile: $stdlib)" >&2
  ./target/release/engram-build "$stdlib" --include '**/*.py' \
    --exclude '**/test' --exclude '**/encodings' --exclude '**/pydoc_data' --exclude '**/site-packages' \
    --import "$model/engram.safetensors" --out "$table"
fi

echo "== moe-core generate (Engram table on SSD: uring backend, O_DIRECT)" >&2
./target/release/moe-core generate --model "$model" --engram "$table" \
  --engram-backend uring --cache-bytes 262144 --prompt "$prompt" --max-new-tokens 48
