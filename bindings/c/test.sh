#!/usr/bin/env bash
# The C ABI from C: installs libengram into a temporary prefix (the libraries scripts/test.sh's
# `cargo test` built: `install.sh PREFIX test` compiles nothing more), compiles the C test
# and the example with the system C compiler through pkg-config, and runs them, without
# LD_LIBRARY_PATH (engram.pc's rpath), on a synthetic table against `engram lookup --json`,
# under valgrind (memcheck: catches invalid reads/writes and leaks on both sides of the
# boundary, inside the Rust library too, which AddressSanitizer would not instrument).
# Also links the static library once.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

prefix="$(bindings/c/install.sh "$work/prefix" test)"
# A second install of the same build rewrites nothing.
stamp="$(stat -c %Y.%s "$prefix/lib/libengram.so")"
sleep 1
bindings/c/install.sh "$work/prefix" test >/dev/null 2>&1
[ "$(stat -c %Y.%s "$prefix/lib/libengram.so")" = "$stamp" ] || { echo "a second install rewrote libengram.so" >&2; exit 1; }
if readelf -S "$prefix/lib/libengram.so" | grep -q '\.debug_'; then
  echo "libengram.so is installed with debug sections (not stripped)" >&2; exit 1
fi
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cflags="-std=c11 -Wall -Wextra -Werror -O1 -g"
cc $cflags bindings/c/tests/c/test_engram.c $(pkg-config --cflags --libs engram) -o "$work/test_engram"
cc $cflags bindings/c/examples/lookup.c $(pkg-config --cflags --libs engram) -o "$work/lookup"
cc $cflags bindings/c/examples/lookup.c $(pkg-config --cflags engram) \
  "$prefix/lib/libengram.a" $(pkg-config --libs-only-l --static engram | sed 's/-lengram//') -o "$work/lookup-static"
# No LD_LIBRARY_PATH: the programs find libengram.so through the rpath engram.pc gave them.
unset LD_LIBRARY_PATH

engram="${ENGRAM_BIN_DIR:-$(target_dir)/debug}/engram"
table="$work/table"
"$engram" synth "$table" --preset demo --base-size 2000 >/dev/null 2>&1
# Expected rows: both layers, both ends of each table, a duplicate.
: > "$work/expected"
for layer in 1 15; do
  rows="$(python3 -c "
import json
print(next(l['rows'] for l in json.load(open('$table/manifest.json'))['layers'] if l['layer_id'] == $layer))")"
  ids="0,1,7,7,$((rows / 2)),$((rows - 2)),$((rows - 1))"
  "$engram" lookup "$table" --layer "$layer" --rows "$ids" --json \
    | python3 -c "
import json,sys
for line in sys.stdin:
    d = json.loads(line)['data']
    print(d['layer_id'], d['row'], d['hex'])
" >> "$work/expected"
done

vg=()
if command -v valgrind >/dev/null; then
  vg=(valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
      --show-leak-kinds=definite,indirect --track-origins=yes)
elif [ -n "${CI:-}" ]; then
  echo "valgrind is required in CI (apt-get install valgrind)" >&2
  exit 1
else
  skipped "valgrind is not installed: the C test ran without it"
fi
"${vg[@]}" "$work/test_engram" "$table" "$work/expected"

# The example, dynamic and static, prints what engram lookup prints.
want="$("$engram" lookup "$table" --layer 15 --rows 3,1,4)"
got="$("${vg[@]}" "$work/lookup" "$table" 15 3 1 4)"
[ "$got" = "$want" ] || { echo "example output differs from engram lookup" >&2; exit 1; }
[ "$("$work/lookup-static" "$table" 15 3 1 4)" = "$want" ] || { echo "static example differs" >&2; exit 1; }
if "$work/lookup" "$table" 7 1 2>"$work/err"; then
  echo "an unknown layer should fail" >&2; exit 1
fi
grep -q ENGRAM_ERR_UNKNOWN_LAYER "$work/err"

# The same rows through the storage service: engram_store_open("unix:SOCKET").
sock="$work/engram.sock"
"$engram" serve "$table" --socket "$sock" --backend pread --cache-bytes 1M 2>"$work/serve.log" &
serve_pid=$!
trap 'kill "$serve_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
got="$("${vg[@]}" "$work/lookup" "unix:$sock" 15 3 1 4)"
[ "$got" = "$want" ] || { echo "example through the service differs from engram lookup" >&2; exit 1; }
# A caller holding every ticket of a service client gets ENGRAM_ERR_LIMIT, not a hang.
"${vg[@]}" "$work/test_engram" --held-tickets "unix:$sock"
kill "$serve_pid"
wait "$serve_pid" || { echo "engram serve did not stop cleanly:" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "C ABI: test and example passed under ${vg[0]:-no valgrind}"
