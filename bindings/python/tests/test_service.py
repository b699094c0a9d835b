"""engram.Store("unix:PATH"): a table served by `engram serve`.

The last test is the service's acceptance test with all three kinds of client at once: the
Rust CLI (`engram bench --service`, killed with SIGKILL mid-stream), `moe-core generate
--service` (a decoder) and this Python process; the survivors finish with the right output
and the server keeps serving.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import engram
from conftest import ROOT, hold_tickets, run, tool
from test_engram import cli_rows, some_ids


def start_server(table: Path, sock: Path, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [tool("engram"), "serve", str(table), "--socket", str(sock), *extra],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert p.poll() is None, "engram serve exited"
        assert time.monotonic() < deadline, "engram serve never listened"
        time.sleep(0.02)
    return p


def wait_stopped(pid: int) -> None:
    """Waits until every thread of process `pid` is stopped (state T in /proc)."""
    deadline = time.monotonic() + 10
    while True:
        states = []
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass  # the thread exited
        if states and all(st in ("T", "t") for st in states):
            return
        assert time.monotonic() < deadline, f"engram serve never stopped: {states}"
        time.sleep(0.005)


def stop_server(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 0


@pytest.fixture
def service(synth_table, tmp_path):
    sock = tmp_path / "engram.sock"
    p = start_server(synth_table, sock, "--backend", "pread", "--cache-bytes", "1M")
    yield sock
    stop_server(p)


def test_rows_through_the_service_equal_engram_lookup(synth_table, service):
    store = engram.Store(f"unix:{service}")
    assert store.backend == "service(pread)"
    assert store.layer_ids == [1, 15] and store.row_bytes == 128
    for layer_id in store.layer_ids:
        ids = some_ids(store, layer_id, 40, seed=layer_id)
        ids[5] = ids[6]
        want = cli_rows(synth_table, layer_id, ids, "memory")
        assert np.array_equal(store.lookup(layer_id, ids), want)
        tickets = [store.prefetch(layer_id, ids) for _ in range(3)]
        for t in tickets:
            assert np.array_equal(t.wait(), want)
    stats = store.stats()
    assert stats["backend"] == "service(pread)" and stats["batches"] >= 8
    store.reset_stats()
    assert store.stats()["batches"] == 0
    # The table by name and by path.
    for name in ["table", str(synth_table)]:
        s = engram.Store(f"unix:{service}#{name}")
        assert np.array_equal(s.lookup(1, [0, 1]), cli_rows(synth_table, 1, [0, 1], "memory"))


def test_service_errors(synth_table, service):
    cases = [
        ("invalid_argument", lambda: engram.Store(f"unix:{service}", cache_bytes=1 << 20)),
        ("invalid_argument", lambda: engram.Store(f"unix:{service}", backend="mmap")),
        ("unavailable", lambda: engram.Store(f"unix:{service}#no-such-table")),
        ("out_of_range", lambda: engram.Store(f"unix:{service}").lookup(1, [10**9])),
    ]
    for kind, call in cases:
        with pytest.raises(engram.EngramError) as e:
            call()
        assert e.value.kind == kind, (kind, str(e.value))


def test_a_restarted_service_is_reconnected(synth_table, tmp_path):
    sock = tmp_path / "s.sock"
    p = start_server(synth_table, sock)
    store = engram.Store(f"unix:{sock}")
    want = cli_rows(synth_table, 15, [3, 1, 4], "memory")
    assert np.array_equal(store.lookup(15, [3, 1, 4]), want)
    stop_server(p)
    with pytest.raises(engram.EngramError) as e:
        store.lookup(15, [3, 1, 4])
    assert e.value.kind == "shut_down" and "went away" in str(e.value)
    p = start_server(synth_table, sock)
    assert np.array_equal(store.lookup(15, [3, 1, 4]), want)
    stop_server(p)


def generate(*args: str) -> dict:
    out = run(
        tool("moe-core"), "generate", "--json", "--max-new-tokens", "16",
        "--prompt", "def fibonacci(n):\n", *args,
    )
    return json.loads(out)["data"]


def test_three_clients_at_once_one_killed(tmp_path, tokenizer):
    model = ROOT / "models" / "stdlib-moe-engram-b"
    table = tmp_path / "table"
    run(tool("engram-build"), "--import", str(model / "engram.safetensors"), "--out", str(table), "--quiet")
    common = ["--model", str(model), "--engram", str(table), "--tokenizer", str(tokenizer)]
    want = generate(*common, "--engram-backend", "pread")
    sock = tmp_path / "engram.sock"
    server = start_server(table, sock, "--backend", "pread", "--cache-bytes", "256K")
    try:
        bench = subprocess.Popen(
            [tool("engram"), "bench", str(table), "--service", str(sock), "--batch-rows", "48",
             "--batches", "200000", "--warmup-batches", "0", "--prefetch-depth", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        decoder = subprocess.Popen(
            [tool("moe-core"), "generate", "--json", "--max-new-tokens", "16", "--prompt",
             "def fibonacci(n):\n", *common, "--service", str(sock)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        store = engram.Store(f"unix:{sock}")
        layer = store.layer_ids[0]
        ids = some_ids(store, layer, 64, seed=3)
        expect = cli_rows(table, layer, ids, "memory")
        killed = False
        for k in range(200):
            assert np.array_equal(store.lookup(layer, ids), expect)
            assert np.array_equal(store.prefetch(layer, ids).wait(), expect)
            if k == 20:
                assert bench.poll() is None, "the CLI client ended before it was killed"
                bench.send_signal(signal.SIGKILL)
                assert bench.wait(timeout=20) == -signal.SIGKILL
                killed = True
        assert killed
        out, err = decoder.communicate(timeout=600)
        assert decoder.returncode == 0, err
        got = json.loads(out)["data"]
        assert got["ids"] == want["ids"] and got["completion"] == want["completion"]
        assert got["store"]["backend"].startswith("service(")
        # The server keeps serving, and saw no protocol violation.
        assert np.array_equal(engram.Store(f"unix:{sock}").lookup(layer, ids), expect)
        stats = json.loads(run(tool("engram"), "stats", "--service", str(sock), "--json"))["data"]
        assert stats["protocol_violations_total"] == 0
    finally:
        stop_server(server)


def test_held_tickets_through_the_service_raise_limit(service):
    store = engram.Store(f"unix:{service}")
    held, limits = hold_tickets(store, 15)
    assert held + limits == 300 and limits > 0 and held >= 1, (held, limits)
    assert engram.SERVICE_MAX_TICKETS == 16


def test_ctrl_c_interrupts_a_ticket_wait(synth_table, tmp_path):
    """A wait on a server that stopped answering (SIGSTOP) raises KeyboardInterrupt at
    Ctrl-C (SIGINT) instead of blocking until the server wakes."""
    import threading

    sock = tmp_path / "engram.sock"
    p = start_server(synth_table, sock, "--backend", "pread")
    # A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C
    # handler: this test would wait for the SIGCONT. Install it, as an interactive run has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        store = engram.Store(f"unix:{sock}")
        store.lookup(1, [1])
        p.send_signal(signal.SIGSTOP)
        # SIGSTOP lands asynchronously: a server thread spinning on the shared region could
        # still serve a request sent at once. Send it only when every thread has stopped.
        wait_stopped(p.pid)
        ticket = store.prefetch(1, [2])
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        # Wakes the server in any case, so that a wait that ignores Ctrl-C ends (and fails).
        threading.Timer(10, lambda: p.send_signal(signal.SIGCONT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ticket.wait()
        assert time.monotonic() - t0 < 5
        p.send_signal(signal.SIGCONT)
        assert ticket.wait().shape == (1, 128)
    finally:
        signal.signal(signal.SIGINT, previous)
        p.send_signal(signal.SIGCONT)
        stop_server(p)
