#!/usr/bin/env bash
# Import throughput side by side with a direct-I/O copy of the same shard (README,
# Measurements): interleaved pairs, each under the shared disk lock, the shard's page cache
# dropped before each run; the table and the copy are deleted after each run.
#
#   scripts/bench-import.sh REPLICA_DIR SCRATCH_DIR [PAIRS]
#
# REPLICA_DIR from `engram replica-checkpoint REPLICA_DIR --vocab-size 1600000 --layers 1`
# (one layer, about 10 GB); SCRATCH_DIR on the same disk, with room for the table (about
# the shard's size). Needs target/release/engram-build (`cargo build --release -p
# engram-tools`). Prints one line per pair and the median ratio; ENGRAM_BUILD overrides the
# binary, ENGRAM_LOCK the lock file (default /tmp/engram-disk.lock). With ENGRAM_BUILD_BASE
# (another engram-build, such as an older commit's) each pair also runs that import, after
# the copy, and its ratio is printed beside.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
replica=$1 scratch=$2 pairs=${3:-3}
build=${ENGRAM_BUILD:-target/release/engram-build}
lock=${ENGRAM_LOCK:-/tmp/engram-disk.lock}
shard=$(python3 - "$replica" <<'EOF'
import json, os, sys
d = sys.argv[1]
m = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]
print(os.path.join(d, next(v for k, v in m.items() if k.endswith("engram.embed.weight"))))
EOF
)
mkdir -p "$scratch"
table=$scratch/bench-import-table copy=$scratch/bench-import-copy
rm -rf "$table" "$copy"
drop() {
  python3 -c 'import os,sys; fd=os.open(sys.argv[1],0); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$1"
}
# One run under the lock: prints "seconds cpu_seconds peak_rss_kb load1".
timed() {
  flock "$lock" bash -c '
    python3 -c "import os,sys; fd=os.open(sys.argv[1],0); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)" "$1"
    shift
    log=$(mktemp)
    load=$(cut -d" " -f1 /proc/loadavg)
    /usr/bin/time -f "%e %U %S %M" -o "$log" "$@" >/dev/null 2>&1 || { cat "$log"; exit 1; }
    read -r e u s m < <(tail -1 "$log")
    rm -f "$log"
    echo "$e $(echo "$u + $s" | bc) $m $load"
  ' _ "$shard" "$@"
}
base=${ENGRAM_BUILD_BASE:-}
ratios=() base_ratios=()
for i in $(seq 1 "$pairs"); do
  read -r ie ic im il < <(timed "$build" --import "$replica" --out "$table" --quiet)
  rm -rf "$table"
  read -r de dc dm dl < <(timed dd if="$shard" of="$copy" bs=8M iflag=direct oflag=direct)
  rm -f "$copy"
  r=$(echo "scale=3; $de / $ie" | bc)
  ratios+=("$r")
  line="pair $i: import ${ie} s (${ic} CPU-s, peak RSS ${im} KB, load ${il}) / dd ${de} s (${dc} CPU-s, load ${dl}) = ${r}x"
  if [ -n "$base" ]; then
    read -r be bc _ bl < <(timed "$base" --import "$replica" --out "$table" --quiet)
    rm -rf "$table"
    br=$(echo "scale=3; $de / $be" | bc)
    base_ratios+=("$br")
    line="$line; base import ${be} s (${bc} CPU-s, load ${bl}) = ${br}x"
  fi
  echo "$line"
done
drop "$shard"
median() {
  printf '%s\n' "$@" | sort -n | awk -v what="$what" '{a[NR]=$1} END {printf "%s: median %.2fx of %d pairs (min %.2fx, max %.2fx)\n", what, (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), NR, a[1], a[NR]}'
}
what=import median "${ratios[@]}"
[ -z "$base" ] || what="base import" median "${base_ratios[@]}"
