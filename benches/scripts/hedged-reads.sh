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
      | sed "s/^/$r $h /" >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs, by_round = {}, {}
for line in open(sys.argv[1]):
    r, h, rec = line.split(" ", 2)
    d = json.loads(rec)["data"]["report"]
    runs.setdefault(int(h), []).append(d)
    by_round.setdefault(int(r), {})[int(h)] = d
print("round  hedge_after_us  batch_p50_us  batch_p99_us  batch_p999_us  read_p99_us  iops  hedged/read")
for r in sorted(by_round):
    for h, d in sorted(by_round[r].items()):
        hed = d["stats"]["hedged_reads"] / max(1, d["stats"]["device_reads"])
        print(f"{r:>5}  {h:>14}  {d['batch_p50_us']:>12.0f}  {d['batch_p99_us']:>12.0f}  "
              f"{d['batch_p999_us']:>13.0f}  {d['read_p99_us']:>11.0f}  {d['iops']:>5.0f}  {hed:.4f}")
print()
print("hedge_after_us  median ratio to no hedging in the same round (min-max): batch p50, p99, p999, IOPS")
for h in sorted(runs):
    if h == 0:
        continue
    ratios = {k: [by_round[r][h][k] / by_round[r][0][k] for r in by_round if h in by_round[r] and 0 in by_round[r]]
              for k in ("batch_p50_us", "batch_p99_us", "batch_p999_us", "iops")}
    cell = lambda v: f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"
    print(f"{h:>14}  " + "  ".join(cell(ratios[k]) for k in ("batch_p50_us", "batch_p99_us", "batch_p999_us", "iops")))
PY
