#!/usr/bin/env bash
# Decode-like bursts after idle, the store against fio on the same file, interleaved.
# Each round runs `engram bench --pattern burst:B,idle:US` (uring, O_DIRECT, one read per
# row) and `fio --iodepth=B --iodepth_batch_submit=B --iodepth_batch_complete_min=B
# --thinktime=US --thinktime_blocks=B` (io_uring, randread 4k, direct) over the table's
# first layer file, order alternating; prints every run, then per side the median of
# the rounds' device-read p50 and p99 with their [min, max], and the median per-round
# ratio store / fio. Every measurement holds the shared disk lock (/tmp/engram-disk.lock).
# SIDES="store store_plain fio" adds the store on a plain ring (ENGRAM_URING_PLAIN=1: no
# single-issuer / deferred task running), for the ring set-up A/B in BENCHMARKS.md.
# RESULTS=FILE keeps the JSON Lines of every run. Store lines carry burst_p50 (whole bursts timed
# by the I/O thread) and caller_burst_p50 / caller_burst_mean (as the caller saw them, the
# hand-off to the I/O thread and the delivery back included).
#
#   benches/scripts/burst-vs-fio.sh TABLE [ROUNDS] [BURST] [IDLE_US] [BURSTS] [-- EXTRA ENGRAM BENCH FLAGS]
#   benches/scripts/burst-vs-fio.sh /work/bench-data/v41-4g 6 16 4700 400
set -euo pipefail
cd "$(dirname "$0")/../.."
table=${1:?usage: $0 TABLE [ROUNDS] [BURST] [IDLE_US] [BURSTS] [-- ENGRAM BENCH FLAGS]}
rounds=${2:-6}
burst=${3:-16}
idle=${4:-4700}
bursts=${5:-400}
shift $(( $# >= 5 ? 5 : $# ))
[[ ${1:-} == -- ]] && shift
extra=("$@")
engram=${ENGRAM:-target/release/engram}
[[ -x $engram ]] || { echo "build first: cargo build --release -p engram-tools --bin engram" >&2; exit 2; }
layer=$(ls "$table"/layer-000-*.bin | head -1)
lock=/tmp/engram-disk.lock
out=${RESULTS:-$(mktemp)}
[[ -n ${RESULTS:-} ]] || trap 'rm -f "$out"' EXIT
run_store() {
  flock "$lock" env ${plain:+ENGRAM_URING_PLAIN=1} "$engram" bench "$table" --backend uring --queue-depth "$burst" \
    --pattern "burst:$burst,idle:${idle}us" --batches "$bursts" --warmup-batches 10 \
    --layer-index 0 --seed "$1" --json "${extra[@]}" \
    | jq -c --arg r "$1" --arg s "${plain:+store_plain}" '{round: ($r|tonumber), side: (if $s == "" then "store" else $s end), p50: .data.read_p50_us,
        p99: .data.read_p99_us, reads: .data.device_reads, burst_p50: .data.report.batch_p50_us,
        burst_p99: .data.report.batch_p99_us, caller_burst_p50: .data.caller_burst_us.p50,
        caller_burst_mean: .data.caller_burst_us.mean}' >>"$out"
}
run_fio() {
  flock "$lock" fio --name=burst --filename="$layer" --direct=1 --ioengine=io_uring \
    --fixedbufs --registerfiles --rw=randread --bs=4k --norandommap --randrepeat=0 \
    --iodepth="$burst" --iodepth_batch_submit="$burst" --iodepth_batch_complete_min="$burst" \
    --thinktime="$idle" --thinktime_blocks="$burst" --number_ios=$((burst * bursts)) \
    --lat_percentiles=1 --thread --output-format=json \
    | jq -c --arg r "$1" '.jobs[0].read | {round: ($r|tonumber), side: "fio",
        p50: (.lat_ns.percentile["50.000000"] / 1000), p99: (.lat_ns.percentile["99.000000"] / 1000),
        clat_p50: (.clat_ns.percentile["50.000000"] / 1000), clat_p99: (.clat_ns.percentile["99.000000"] / 1000),
        slat_mean: (.slat_ns.mean / 1000),
        reads: .total_ios, iops: .iops}' >>"$out"
}
read -r -a sides <<<"${SIDES:-store fio}"
for r in $(seq 1 "$rounds"); do
  # Rotate the order of the sides between rounds.
  n=${#sides[@]}
  for k in $(seq 0 $((n - 1))); do
    s=${sides[$(( (k + r) % n ))]}
    case $s in
      store) plain= run_store "$r" ;;
      store_plain) plain=1 run_store "$r" ;;
      fio) run_fio "$r" ;;
      *) echo "unknown side $s" >&2; exit 2 ;;
    esac
  done
done
cat "$out"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
side = lambda s: [r for r in rows if r["side"] == s]
cell = lambda v: f"{statistics.median(v):.0f} [{min(v):.0f}, {max(v):.0f}]"
for s in ("store", "store_plain", "fio"):
    rs = side(s)
    if not rs:
        continue
    print(f"{s:>5}: read p50 us {cell([r['p50'] for r in rs])}  p99 us {cell([r['p99'] for r in rs])}")
by = {}
for r in rows:
    by.setdefault(r["round"], {})[r["side"]] = r
for s in ("store", "store_plain"):
    for k in ("p50", "p99"):
        ratio = [b[s][k] / b["fio"][k] for b in by.values() if s in b and "fio" in b and b["fio"][k] > 0]
        if ratio:
            print(f"{s} / fio {k}: median {statistics.median(ratio):.2f} [{min(ratio):.2f}, {max(ratio):.2f}] over {len(ratio)} rounds")
PY
