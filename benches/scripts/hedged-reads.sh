#!/usr/bin/env bash
# Hedged reads, measured: decode-sized synchronous lookups (48 rows, uniform, O_DIRECT,
# io_uring, QD 32) with hedging off and at each given delay, in interleaved rounds; prints
# each run and the median batch p50 / p99 / p999 and read p99 per setting.
#
#   benches/scripts/hedged-reads.sh TABLE [ROUNDS] [HEDGE_US ...]
#   benches/scripts/hedged-reads.sh /work/bench-data/v41-4g 5 1000 3000 10000
set -euo pipefail
cd "$(dirname "$0")/../.."
table=${1:?usage: $0 TABLE [ROUNDS] [HEDGE_US ...]}
rounds=${2:-5}
shift $(( $# >= 2 ? 2 : $# ))
hedges=("0" "${@:-2000}")
cargo build --release -q -p engram-tools --bin engram
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  # Alternate the order of the settings between rounds.
  order=("${hedges[@]}")
  if (( r % 2 == 0 )); then order=($(printf '%s\n' "${hedges[@]}" | tac)); fi
  for h in "${order[@]}"; do
    target/release/engram bench "$table" --backend uring --queue-depth 32 --batch-rows 48 \
      --batches 600 --warmup-batches 20 --hedge-after-us "$h" --seed "$r" --json \
      | sed "s/^/$h /" >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    h, rec = line.split(" ", 1)
    d = json.loads(rec)["data"]["report"]
    runs.setdefault(int(h), []).append(d)
print("hedge_after_us  runs  batch_p50_us  batch_p99_us  batch_p999_us  read_p99_us  iops  hedged/read")
for h in sorted(runs):
    rs = runs[h]
    med = lambda k: statistics.median(r[k] for r in rs)
    hed = statistics.median(r["stats"]["hedged_reads"] / max(1, r["stats"]["device_reads"]) for r in rs)
    spread = lambda k: f'{min(r[k] for r in rs):.0f}-{max(r[k] for r in rs):.0f}'
    print(f"{h:>14}  {len(rs):>4}  {med('batch_p50_us'):>12.0f}  {med('batch_p99_us'):>12.0f}  "
          f"{med('batch_p999_us'):>13.0f}  {med('read_p99_us'):>11.0f}  {med('iops'):>5.0f}  {hed:.4f}"
          f"   (p99 range {spread('batch_p99_us')})")
PY
