#!/usr/bin/env bash
# The Mooncake suite (run by scripts/test.sh): engram-mooncake, `engram --backend mooncake`
# and the decoder against a local cluster that scripts/mooncake-local.sh starts on
# 127.0.0.1 (and stops afterwards), or the one ENGRAM_MOONCAKE_MASTER names.
#
# It needs the system Python 3.11 (the client embeds it; PYO3_PYTHON, default
# /usr/bin/python3.11), the wheel from PyPI and Debian's libibverbs1 (apt-get, as root).
# Where any of that is missing it says so plainly and records the skip; with
# ENGRAM_REQUIRE_MOONCAKE=1 that is a failure. ENGRAM_TEST_MOONCAKE=0 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

not_run() {
    if [ "${ENGRAM_REQUIRE_MOONCAKE:-}" = 1 ]; then
        echo "ENGRAM_REQUIRE_MOONCAKE=1 but the Mooncake suite cannot run: $*" >&2
        exit 1
    fi
    echo "== the Mooncake suite did NOT run: $*" >&2
    skipped "the Mooncake suite did not run: $*"
    exit 0
}

[ "${ENGRAM_TEST_MOONCAKE:-1}" = 0 ] && not_run "ENGRAM_TEST_MOONCAKE=0"
python="$(mooncake_python)"
[ -x "$python" ] || not_run "no Python 3.11 at $python to embed (PYO3_PYTHON)"
export PYO3_PYTHON="$python" MC_TCP_BIND_ADDRESS=127.0.0.1

if [ -z "${ENGRAM_MOONCAKE_MASTER:-}" ]; then
    echo "== starting a local Mooncake cluster (scripts/mooncake-local.sh start)" >&2
    if ! master="$(scripts/mooncake-local.sh start | tail -1)" || [ -z "$master" ]; then
        scripts/mooncake-local.sh stop || true
        not_run "the local cluster did not start (scripts/mooncake-local.sh start, above)"
    fi
    trap 'scripts/mooncake-local.sh stop' EXIT
    export ENGRAM_MOONCAKE_MASTER="$master"
fi
# With a cluster up every Mooncake test must run.
export ENGRAM_REQUIRE_MOONCAKE=1
# One cargo invocation (one feature resolution) for the three crates' cluster tests.
phase "cargo test: the Mooncake suite against $ENGRAM_MOONCAKE_MASTER" \
    cargo test -p engram-mooncake -p engram-tools -p engram-e2e \
    --features engram-tools/mooncake,engram-e2e/mooncake \
    --test cluster --test kill_master --test mooncake_cli --test mooncake
# These tests ran here with the client, so the workspace run's skips of them (built there
# without it) are not skips of the suite.
if [ -n "${ENGRAM_SKIP_LOG:-}" ]; then
    sed -i '/Mooncake client is not compiled in\|built without --features mooncake/d' "$ENGRAM_SKIP_LOG"
fi
