#!/usr/bin/env bash
# A local Mooncake Store cluster for tests and measurements, on 127.0.0.1 only:
#
#   scripts/mooncake-local.sh start   # prints the master address (HOST:PORT) as its last line
#   scripts/mooncake-local.sh stop    # stops what start started, by PID
#   scripts/mooncake-local.sh env     # prints the exports a client needs
#
# start installs the pinned wheel (PyPI mooncake-transfer-engine-non-cuda==0.3.13.post1)
# into a project-local virtual environment (target/mooncake/venv, made with the system's
# Python 3.11, whose libpython the embedded client links) and Debian's libibverbs1 (the
# wheel's libraries need it even without RDMA), then starts a master and one storage node
# (a `mooncake_client` contributing MOONCAKE_SEGMENT_BYTES of memory, default 1 GB) that
# holds published tables after the publishing process exits. No metadata server runs:
# clients use P2PHANDSHAKE. Logs and PIDs are in target/mooncake/run/.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL="mooncake-transfer-engine-non-cuda==0.3.13.post1"
ROOT="$PWD/target/mooncake"
VENV="$ROOT/venv"
RUN="$ROOT/run"
PY="${MOONCAKE_PYTHON:-/usr/bin/python3.11}"
[ -x "$PY" ] || PY="$(command -v python3)"
SEGMENT="${MOONCAKE_SEGMENT_BYTES:-1 GB}"
export MC_TCP_BIND_ADDRESS=127.0.0.1

say() { echo "mooncake-local: $*" >&2; }

install() {
    # (grep reads all of ldconfig's output: `grep -q` would end the pipe early, and
    # pipefail would count that as no match.)
    if ! ldconfig -p 2>/dev/null | grep 'libibverbs.so.1 ' >/dev/null; then
        say "installing libibverbs1 (Debian)"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libibverbs1 >&2
    fi
    if ! "$VENV/bin/python" -c 'import mooncake.store' 2>/dev/null; then
        say "installing $WHEEL into $VENV"
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$WHEEL" >&2
        "$VENV/bin/python" -c 'import mooncake.store' >&2
    fi
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() { # PORT PID NAME
    for _ in $(seq 1 100); do
        if "$PY" -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1', $1)))" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$2" 2>/dev/null; then
            say "$3 exited; its log:"; tail -20 "$RUN/$3.log" >&2; return 1
        fi
        sleep 0.2
    done
    say "$3 did not listen on 127.0.0.1:$1 within 20 s"; return 1
}

stop() {
    local pid name
    for name in client master; do
        [ -f "$RUN/$name.pid" ] || continue
        pid="$(cat "$RUN/$name.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
            say "stopped $name ($pid)"
        fi
        rm -f "$RUN/$name.pid"
    done
    rm -f "$RUN/master.addr"
}

start() {
    install
    stop
    mkdir -p "$RUN"
    local pkg="$VENV/lib/python3.11/site-packages/mooncake"
    [ -d "$pkg" ] || pkg="$(echo "$VENV"/lib/python3*/site-packages/mooncake)"
    chmod +x "$pkg/mooncake_master" "$pkg/mooncake_client"
    local rpc metrics node
    rpc="$(free_port)"; metrics="$(free_port)"; node="$(free_port)"
    "$pkg/mooncake_master" --rpc_address=127.0.0.1 --rpc_port="$rpc" \
        --metrics_host=127.0.0.1 --metrics_port="$metrics" \
        --enable_http_metadata_server=false >"$RUN/master.log" 2>&1 &
    echo $! >"$RUN/master.pid"
    wait_port "$rpc" "$(cat "$RUN/master.pid")" master
    "$pkg/mooncake_client" --host=127.0.0.1 --port="$node" \
        --global_segment_size="$SEGMENT" --master_server_address="127.0.0.1:$rpc" \
        --metadata_server=P2PHANDSHAKE --protocol=tcp >"$RUN/client.log" 2>&1 &
    echo $! >"$RUN/client.pid"
    wait_port "$node" "$(cat "$RUN/client.pid")" client
    echo "127.0.0.1:$rpc" >"$RUN/master.addr"
    say "master $(cat "$RUN/master.pid") on 127.0.0.1:$rpc, storage node $(cat "$RUN/client.pid") with $SEGMENT; logs in $RUN"
    say "clients built from this checkout find $VENV themselves; elsewhere: export ENGRAM_MOONCAKE_VENV=$VENV"
    echo "127.0.0.1:$rpc"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env)
        # (Tools built from this checkout find the venv and bind as below without these.)
        echo "export ENGRAM_MOONCAKE_VENV=$VENV MC_TCP_BIND_ADDRESS=127.0.0.1"
        [ -f "$RUN/master.addr" ] && echo "export ENGRAM_MOONCAKE_MASTER=$(cat "$RUN/master.addr")"
        ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
