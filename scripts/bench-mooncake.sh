#!/usr/bin/env bash
# Rows/s and batch latency of one table on the local SSD tier vs Mooncake Store, at 48
# and 1,536 rows per batch, cache off and on (Zipf 1.0 ids, so the cache has hot rows):
#
#   scripts/bench-mooncake.sh TABLE [MASTER]     # MASTER: scripts/mooncake-local.sh start
#
# Configurations: `ssd` (io_uring, O_DIRECT), `mooncake-remote` (the rows in the storage
# node's segment, another process, over TCP), `mooncake-local` (published into this
# process's own segment and read from it). Prints one JSON line per run and a table.
# The `engram` binary must be built with `--features mooncake`.
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE="$1"
MASTER="${2:-$(cat target/mooncake/run/master.addr)}"
ENGRAM="${ENGRAM:-target/release/engram}"
CACHE="${CACHE_BYTES:-32M}"
export ENGRAM_MOONCAKE_VENV="${ENGRAM_MOONCAKE_VENV:-$PWD/target/mooncake/venv}"
export MC_TCP_BIND_ADDRESS=127.0.0.1 GLOG_minloglevel=2
OUT="$(mktemp)"
run() { # LABEL ROWS BATCHES CACHE ARGS...
    local label="$1" rows="$2" batches="$3" cache="$4"
    shift 4
    "$ENGRAM" bench "$TABLE" --batch-rows "$rows" --batches "$batches" --warmup-batches 10 \
        --dist zipf:1.0 --cache-bytes "$cache" --queue-depth 256 --json "$@" 2>/dev/null \
        | sed "s/^/$label $rows $cache /" | tee -a "$OUT" >&2
}
"$ENGRAM" publish "$TABLE" --mooncake "$MASTER" --quiet 2>/dev/null
for cache in 0 "$CACHE"; do
    for spec in "48 300" "1536 40"; do
        set -- $spec
        run ssd "$1" "$2" "$cache" --backend uring
        run mooncake-remote "$1" "$2" "$cache" --backend mooncake --mooncake "$MASTER"
    done
done
# Publishing into this process's segment replaces the storage node's copy of this version.
for cache in 0 "$CACHE"; do
    for spec in "48 300" "1536 40"; do
        set -- $spec
        run mooncake-local "$1" "$2" "$cache" --backend mooncake --mooncake "$MASTER" \
            --mooncake-segment-bytes 512M --mooncake-publish-local
    done
done
python3 - "$OUT" <<'PY'
import json, sys
print(f"{'config':16} {'rows':>5} {'cache':>6} {'rows/s':>10} {'p50 us':>9} {'p99 us':>9} {'hit':>6}")
for line in open(sys.argv[1]):
    label, rows, cache, js = line.split(" ", 3)
    r = json.loads(js)["data"]["report"]
    print(f"{label:16} {rows:>5} {cache:>6} {r['rows_per_s']:>10.0f} {r['batch_p50_us']:>9.0f} "
          f"{r['batch_p99_us']:>9.0f} {r['cache_hit_rate']:>6.3f}")
PY
rm -f "$OUT"
