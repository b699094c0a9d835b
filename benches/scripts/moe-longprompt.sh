#!/usr/bin/env bash
# moe-core on a long prompt of held-out code: time to first token with the Engram rows from
# the memory backend and from io_uring + a cache, prefilled in one pass, in chunks whose
# rows are requested one chunk ahead (pipelined), and in chunks without the pipeline.
#
#   benches/scripts/moe-longprompt.sh [--rounds R] [--tokens N] [--chunks "C ..."]
#                                      [--caches "SIZE ..."] [--model DIR] [--text DIR]
#                                      [--runs FILE]
#
#   --rounds R      interleaved rounds; every row runs once per round, the order rotating
#                   by one row each round (default 5)
#   --tokens N      prompt length in tokens, BOS included (default 4096); the committed
#                   models are trained on 256 positions, so the context is extended to N
#                   (`moe-core generate --context-length N`): RoPE extrapolates past 256,
#                   the output is not what the model learned, and only the timing counts
#   --chunks "C"    chunk sizes for the chunked rows (default "512 1024")
#   --caches "S"    uring cache budgets: sizes (256K) or a percentage of the table's rows,
#                   rows x row_bytes (default "10% 1%")
#   --model DIR     the model (default models/stdlib-moe-engram-b); its table is built by
#                   scripts/build-table.sh where moe-core finds it
#   --text DIR      held-out code: its *.py files, sorted by path (C locale), are
#                   concatenated until the prompt holds N tokens (default pip's
#                   pip/_internal under /usr/lib/python3/dist-packages: never in the
#                   models' training corpus, the Python standard library)
#   --runs FILE     also keep every run's JSON line (round, row, the `moe-core --json`)
#   --report FILE   measure nothing: summarize runs kept with --runs (and the same --text)
#
# Prints the files the prompt used, the load average per round, every row's median
# [min..max] of time to first token, of its ratio to the memory backend's run with the
# same prefill in the same round, of the stall in prefill, device reads and bytes, rows
# read (unique per request) and cache hit rate, and whether every run generated the same
# token. Run it alone on the disk (the uring rows
# read with O_DIRECT); the project's own helpers take `flock /tmp/engram-disk.lock`.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=5 tokens=4096 chunks="512 1024" caches="10% 1%"
model=models/stdlib-moe-engram-b
text=/usr/lib/python3/dist-packages/pip/_internal
runs_out= report=
while [ $# -gt 0 ]; do
  case $1 in -h|--help) ;; *) [ $# -ge 2 ] || { echo "moe-longprompt: $1 needs a value" >&2; exit 2; } ;; esac
  case $1 in
    --rounds) rounds=$2 ;;
    --tokens) tokens=$2 ;;
    --chunks) chunks=$2 ;;
    --caches) caches=$2 ;;
    --model) model=${2%/} ;;
    --text) text=${2%/} ;;
    --runs) runs_out=$2 ;;
    --report) report=$2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "moe-longprompt: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift 2
done
for n in "$rounds" "$tokens"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "moe-longprompt: expected a positive count, got $n" >&2; exit 2; }
done
[ -d "$text" ] || { echo "moe-longprompt: no text directory $text" >&2; exit 2; }

# summarize RUNS: the table, from lines of round, row name and moe-core's JSON.
summarize() {
  python3 - "$1" "$text" <<'PY'
import json, os, statistics, sys

runs, by_round, order = {}, {}, []
for line in open(sys.argv[1]):
    r, name, rec = line.rstrip("\n").split("\t", 2)
    if name not in runs:
        order.append(name)
    d = json.loads(rec)["data"]
    runs.setdefault(name, []).append(d)
    by_round.setdefault(r, {})[name] = d

# The files the prompt used (the text's *.py, sorted by path as `LC_ALL=C sort` does):
# whole ones, then the one cut.
text = sys.argv[2]
files = sorted((os.path.join(d, f) for d, _, fs in os.walk(text) for f in fs if f.endswith(".py")),
               key=os.fsencode)
first = runs[order[0]][0]
used = len(first["prompt"].encode())
done, whole, cut = 0, [], None
for f in files:
    size = os.path.getsize(f)
    if done + size > used:
        cut = (f, used - done)
        break
    whole.append(f)
    done += size
rel = lambda f: os.path.relpath(f, text)
print(f"prompt: {first['prompt_tokens']} tokens (BOS included) = {used} bytes: the files of "
      f"{text} in this order: " + ", ".join(rel(f) for f in whole)
      + (f", then the first {cut[1]} bytes of {rel(cut[0])}" if cut and cut[1] else ""))
print(f"context: {first['context_length']} positions (trained: {first['trained_context']}; "
      f"extended: {first['context_extended']})")

def cell(xs, fmt):
    xs = sorted(xs)
    return f"{fmt(statistics.median(xs))} [{fmt(xs[0])}..{fmt(xs[-1])}]"

def prefill(name):
    return name.split(", ", 1)[1] if ", " in name else name

ms = lambda x: f"{x:,.1f}" if x >= 10 else f"{x:.2f}"
count = lambda x: f"{x:,.0f}"
print()
print("| backend, prefill | TTFT (ms) | TTFT / memory's, same prefill and round | stall in prefill (ms) "
      "| device reads | device KiB | rows read | hit rate |")
print("|---|---|---|---|---|---|---|---|")
for name in order:
    v = runs[name]
    st = [d["store"] or {} for d in v]
    base = next(n for n in order if n.startswith("memory, ") and prefill(n) == prefill(name))
    ratios = [rs[name]["time_to_first_token_seconds"] / rs[base]["time_to_first_token_seconds"]
              for rs in by_round.values() if name in rs and base in rs]
    print(f"| {name} | {cell([d['time_to_first_token_seconds'] * 1e3 for d in v], ms)} "
          f"| {cell(ratios, lambda x: f'{x:.2f}')} "
          f"| {cell([d['prefill_stall_seconds'] * 1e3 for d in v], ms)} "
          f"| {cell([s.get('device_reads', 0) for s in st], count)} "
          f"| {cell([s.get('device_bytes', 0) / 1024 for s in st], count)} "
          f"| {cell([s.get('rows_read', 0) for s in st], count)} "
          + (f"| {cell([s['cache_hit_rate'] * 100 for s in st], lambda x: f'{x:.1f}%')} |"
             if not name.startswith("memory, ") else "| - |"))
print()
print("(the memory backend's device bytes are the table, loaded when the store opens; "
      "it reads nothing during the prefill)")
tokens = {tuple(d["raw_ids"]) for v in runs.values() for d in v}
n = sum(len(v) for v in runs.values())
if len(tokens) == 1:
    print(f"every run ({n}) generated the same token: raw id {next(iter(tokens))[0]}")
else:
    print(f"RUNS DIFFER: {n} runs generated {len(tokens)} different tokens: {sorted(tokens)}")
    sys.exit(1)
PY
}
if [ -n "$report" ]; then
  summarize "$report"
  exit
fi

cargo build --release -q -p moe-core -p engram-tools
table=$(scripts/build-table.sh "$model")
bin=target/release/moe-core

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Whole files, sorted, until there is surely more text than N tokens (code is 2-4 bytes a
# token); --prompt-tokens N then keeps exactly the first N.
find "$text" -name '*.py' -type f | LC_ALL=C sort >"$work/files"
: >"$work/prompt.py"
while read -r f; do
  cat "$f" >>"$work/prompt.py"
  if [ "$(stat -c %s "$work/prompt.py")" -gt $(( tokens * 8 )) ]; then break; fi
done <"$work/files"

# Cache budgets: a percentage is of the table's rows (rows x row_bytes), in bytes.
cache_bytes() {
  case $1 in
    *%) python3 - "$table/manifest.json" "${1%\%}" <<'PY' ;;
import json, sys
m = json.load(open(sys.argv[1]))
rows = sum(l["rows"] for l in m["layers"])
print(int(rows * m["row_bytes"] * float(sys.argv[2]) / 100))
PY
    *) echo "$1" ;;
  esac
}

# Rows: NAME|ARGS
rows=()
modes=("one pass|")
for c in $chunks; do
  modes+=("chunks of $c, pipelined|--prefill-chunk $c" "chunks of $c, no pipeline|--prefill-chunk $c --no-prefill-pipeline")
done
for m in "${modes[@]}"; do rows+=("memory, ${m%%|*}|--engram-backend memory --cache-bytes 0 ${m#*|}"); done
for c in $caches; do
  b=$(cache_bytes "$c")
  for m in "${modes[@]}"; do
    rows+=("uring + $c cache ($b B), ${m%%|*}|--engram-backend uring --cache-bytes $b ${m#*|}")
  done
done

echo "moe-longprompt: $model, table $table, $tokens-token prompt, ${#rows[@]} rows x $rounds rounds, $(date -u +%FT%TZ)"
: >"$work/runs"
for r in $(seq 1 "$rounds"); do
  echo "round $r: $(uptime)"
  n=${#rows[@]}
  for i in $(seq 0 $(( n - 1 ))); do
    k=$(( (i + r - 1) % n ))
    row=${rows[$k]}
    # shellcheck disable=SC2086 # the row's flags are words
    json=$("$bin" generate --model "$model" --engram "$table" ${row#*|} \
      --prompt-file "$work/prompt.py" --prompt-tokens "$tokens" --context-length "$tokens" \
      --max-new-tokens 1 --json 2>"$work/stderr") || { cat "$work/stderr" >&2; exit 1; }
    printf '%s\t%s\t%s\n' "$r" "${row%%|*}" "$json" >>"$work/runs"
  done
done
echo "after: $(uptime)"
grep -m1 warning "$work/stderr" || true
[ -z "$runs_out" ] || cp "$work/runs" "$runs_out"

summarize "$work/runs"
