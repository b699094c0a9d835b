#!/usr/bin/env bash
# Decode and prefill speed of moe-core next to PyTorch eager (KV cache, 1 thread) on the
# same committed weights and prompt, for each model (by default every committed one: A
# MoE, B MoE + Engram, C MoE + Engram + mHC, so the rows compare what Engram and mHC
# cost per token), plus the Engram cost of each store backend for the models with Engram.
# Needs a Python with PyTorch (tools/train/README.md: .venv-train, or ENGRAM_TORCH_PYTHON).
#
#   [PROMPT=...] [RUNS=3] scripts/bench-decode.sh [MODEL_DIR|all] [N_NEW]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
n_new=${2:-240}
py=${ENGRAM_TORCH_PYTHON:-.venv-train/bin/python}
prompt=${PROMPT:-$'import os\nimport sys\n\n\ndef main():\n'}
export RAYON_NUM_THREADS=1

if [ "$which" = all ]; then
  models=$(ls -d models/*/ | while read -r d; do [ -f "$d/config.json" ] && echo "${d%/}"; done)
else
  models=${which%/}
fi

scripts/fetch-tokenizer.sh >/dev/null
cargo build --release --quiet -p engram-tools -p moe-core

# Median over runs of each speed field (one JSON object per input line).
speeds() { python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in sys.stdin.read().split("\n") if l.startswith("{")]
runs = [r.get("data", r) for r in runs]
keys = ("prefill_tokens_per_second", "decode_tokens_per_second", "stall_us_per_token")
out = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys if k in runs[0]}
if "store" in runs[0] and runs[0]["store"]:
    out["hit"] = runs[0]["store"]["cache_hit_rate"]
print(json.dumps(out | {"runs": len(runs)}))'; }
runs=${RUNS:-3}

for model in $models; do
  table=
  if [ -f "$model/engram.safetensors" ]; then
    table=$(scripts/build-table.sh "$model")
  fi
  torch() { for _ in $(seq "$runs"); do $py benches/python/decode_torch.py "$model" "$prompt" "$n_new" "$@"; done | speeds; }
  rust() { for _ in $(seq "$runs"); do ./target/release/moe-core generate --model "$model" ${table:+--engram "$table"} \
             --prompt "$prompt" --max-new-tokens "$n_new" --json "$@"; done | speeds; }
  echo "== $(basename "$model"): PyTorch eager (1 thread) vs moe-core (1 thread), $n_new new tokens, median of $runs runs"
  if [ -n "$table" ]; then
    echo "torch  engram : $(torch)"
    echo "rust   engram : $(rust --engram-backend memory --cache-bytes 0)"
    echo "torch  no-engr: $(torch --no-engram)"
    echo "rust   no-engr: $(rust --no-engram)"
    echo "== $(basename "$model"): Engram cost per backend (moe-core, decode tokens/s and store stall per token)"
    for b in memory mmap pread; do echo "$b: $(rust --engram-backend $b --cache-bytes 0)"; done
    # Cold SSD: O_DIRECT bypasses the page cache; no hot-row cache.
    echo "uring cold, no cache: $(rust --engram-backend uring --cache-bytes 0)"
    echo "uring + profile-seeded cache (64 MiB): $(rust --engram-backend uring --cache-bytes 67108864)"
  else
    echo "torch  : $(torch)"
    echo "rust   : $(rust)"
  fi
done
