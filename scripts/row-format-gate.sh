#!/usr/bin/env bash
# The Engram row-format quality gate: for each model with Engram, import its tables into
# bf16 rows (exact) and FP8 rows (E4M3 values + one E8M0 scale per block of values, the
# V4.1 row format; the block is the whole row where a row is narrower than 32 values;
# both built by scripts/build-table.sh),
# evaluate validation loss with each (`moe-core eval` on the validation files listed in
# models/corpus.json) and report the loss change. Gate: FP8 costs at most 0.002
# nats/token. Exit 1 if a model fails it.
#
#   scripts/row-format-gate.sh [MODEL_DIR...]     (default: every models/*/ with Engram)
set -euo pipefail
cd "$(dirname "$0")/.."

readonly GATE=0.002
scripts/fetch-tokenizer.sh >/dev/null
cargo build --release --quiet -p engram-tools -p moe-core
if [ "$#" -eq 0 ]; then
  set -- $(ls -d models/*/ | while read -r d; do [ -f "$d/engram.safetensors" ] && echo "${d%/}"; done)
fi
mapfile -t val < <(python3 -c "import json; c = json.load(open('models/corpus.json'))
print('\n'.join(c['stdlib'] + '/' + f for f in c['splits']['val']['files']))")
status=0
for model in "$@"; do
  model=${model%/}
  declare -A loss=()
  for layout in bf16 fp8; do
    table=$(scripts/build-table.sh "$model" "$layout" "target/engram-tables/gate/$(basename "$model")-$layout")
    desc=$(python3 -c "import json, sys; m = json.load(open(sys.argv[1]))
print(f\"{m['row_layout']}, {m['row_bytes']} bytes/row\")" "$table/manifest.json")
    loss[$layout]=$(./target/release/moe-core eval --model "$model" --engram "$table" \
      --engram-backend memory --json "${val[@]}" \
      | python3 -c "import json, sys
for l in sys.stdin:
    d = json.loads(l)['data']
    if d['engram_use'] == 'on': print(f\"{d['loss_nats_per_token']:.6f} {d['tokens']}\")")
    echo "$(basename "$model") $layout ($desc): ${loss[$layout]% *} nats/token over ${loss[$layout]#* } tokens"
  done
  python3 - "$(basename "$model")" "${loss[bf16]% *}" "${loss[fp8]% *}" "$GATE" <<'PY' || status=1
import sys
name, bf16, fp8, gate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
d = fp8 - bf16
print(f"{name}: FP8 - bf16 = {d:+.6f} nats/token (gate <= {gate}): {'pass' if d <= gate else 'FAIL'}")
sys.exit(0 if d <= gate else 1)
PY
  unset loss
done
exit "$status"
