# Shared by the scripts (source it): phase lines with their elapsed times, and the one
# command that builds the tools, so scripts/install.sh, scripts/demo.sh and
# scripts/build-table.sh build them the same way (a second build is a no-op).

# Seconds since this script started, as 1m05s.
elapsed() {
    local s=$(( SECONDS - ${1:-0} ))
    if (( s >= 60 )); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# phase DESCRIPTION COMMAND...: prints "== DESCRIPTION", runs the command (its output shows),
# then "== DESCRIPTION: done in T (total T)". A failing command stops the script (set -e)
# after a line that says which phase failed and when.
phase() {
    local what=$1 start=$SECONDS rc=0
    shift
    echo "== $what" >&2
    "$@" || rc=$?
    if (( rc != 0 )); then
        echo "== $what: FAILED (exit $rc) after $(elapsed "$start")" >&2
        return "$rc"
    fi
    echo "== $what: done in $(elapsed "$start") (total $(elapsed))" >&2
}

# The Mooncake client needs the system Python 3.11 (its wheel's libpython).
mooncake_python() {
    echo "${PYO3_PYTHON:-/usr/bin/python3.11}"
}

# build_tools [--mooncake]: cargo build --release of engram, engram-build and moe-core, with
# cargo's own progress. --mooncake adds the Mooncake client (an embedded Python 3.11), which
# `--backend mooncake` and `engram publish|unpublish|skeleton` need.
build_tools() {
    local features=()
    if [ "${1:-}" = --mooncake ]; then
        features=(--features engram-tools/mooncake,moe-core/mooncake)
        PYO3_PYTHON="$(mooncake_python)"
        export PYO3_PYTHON
    fi
    cargo build --release -p engram-tools -p moe-core "${features[@]}"
}

# Where cargo puts what it builds (CARGO_TARGET_DIR or the workspace's target/).
target_dir() {
    cargo metadata --format-version 1 --no-deps \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# scripts/test.sh's one feature set: `cargo test` with these arguments compiles every test,
# the tools the binding tests call and libengram; the binding test scripts reuse that build.
TEST_CARGO_ARGS=(--workspace --features engram-kernels/cuda)

# skipped REASON: records a skip the way engram_kernels::skip does (a line on stderr, and
# "SCRIPT<TAB>REASON" in $ENGRAM_SKIP_LOG when scripts/test.sh set it).
skipped() {
    echo "SKIPPED $(basename "$0"): $*" >&2
    if [ -n "${ENGRAM_SKIP_LOG:-}" ]; then
        printf '%s\t%s\n' "$(basename "$0")" "$*" >>"$ENGRAM_SKIP_LOG"
    fi
}
