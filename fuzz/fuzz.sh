#!/usr/bin/env bash
# Builds and runs the libFuzzer targets on stable Rust (no cargo-fuzz, no nightly): the
# flags below are the ones `cargo fuzz build --sanitizer none` passes to rustc.
#
#   fuzz/fuzz.sh build [TARGET...]           build (all targets when none named)
#   fuzz/fuzz.sh run TARGET [SECONDS] [ARGS] fuzz, growing fuzz/corpus-full/TARGET from the
#                                            committed fuzz/corpus/TARGET (default 600 s)
#   fuzz/fuzz.sh merge TARGET                minimise corpus-full/TARGET into corpus/TARGET
#                                            (-merge=1, then the largest inputs dropped
#                                            until it fits MAX_CORPUS_BYTES, default 40000)
#   fuzz/fuzz.sh repro TARGET FILE...        run the target once on each file
set -euo pipefail
cd "$(dirname "$0")"

TRIPLE=x86_64-unknown-linux-gnu
# Coverage instrumentation (8-bit counters, PC table, comparison tracing for libFuzzer's
# value profile) and `cfg(fuzzing)`. Passed with --target so build scripts and proc macros
# are not instrumented.
export RUSTFLAGS="${RUSTFLAGS:-} -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 --cfg fuzzing"
BIN=target/$TRIPLE/release
# The memory bounds every run is held to (the invariant "never allocates unbounded").
# -malloc_limit_mb needs a sanitizer's malloc hooks, which a --sanitizer none build lacks;
# fuzz_targets/common.rs enforces the same single-allocation cap in a global allocator.
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10)

cmd=${1:?usage: fuzz.sh build|run|merge|repro ...}
shift
case "$cmd" in
build)
    bins=()
    for t in "$@"; do bins+=(--bin "$t"); done
    nice -n 10 cargo build --release --target "$TRIPLE" "${bins[@]}"
    ;;
run)
    t=${1:?target}
    secs=${2:-600}
    shift $(($# < 2 ? $# : 2))
    mkdir -p "corpus-full/$t" "corpus/$t" "artifacts/$t"
    nice -n 10 "$BIN/$t" "corpus-full/$t" "corpus/$t" "${LIMITS[@]}" \
        -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="artifacts/$t/" "$@"
    ;;
merge)
    t=${1:?target}
    tmp=$(mktemp -d)
    nice -n 10 "$BIN/$t" -merge=1 "${LIMITS[@]}" "$tmp" "corpus/$t" "corpus-full/$t"
    # Keep the committed corpus small: drop the largest inputs until it fits the budget
    # (the full corpus stays in corpus-full/, which git ignores).
    budget=${MAX_CORPUS_BYTES:-40000}
    while [[ $(cat "$tmp"/* 2>/dev/null | wc -c) -gt $budget && $(ls "$tmp" | wc -l) -gt 1 ]]; do
        rm -f "$tmp/$(ls -S "$tmp" | head -1)"
    done
    rm -rf "corpus/$t"
    mv "$tmp" "corpus/$t"
    ;;
repro)
    t=${1:?target}
    shift
    "$BIN/$t" "${LIMITS[@]}" "$@"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
