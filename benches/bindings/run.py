"""Per-call overhead of the C ABI and the Python package against the Rust API, side by side.

Builds (release) the Rust harness (src/bin/lookup_overhead.rs), libengram and the C harness
(benches/c/lookup_overhead.c, linked with -lengram through pkg-config), and the Python
package (a wheel in target/bench-bindings/wheels, installed into target/venv-bench); synthesises a demo-shaped table; then for every
(backend, rows) runs the three harnesses interleaved, in rotating order, ROUNDS times over
the same ids file. Each run reports nanoseconds per `lookup_into` call (mean of CALLS calls
after a warm-up pass); the table shows the median over rounds and the [min, max] spread.

Usage: python3 benches/bindings/run.py [--rounds 7] [--base-size 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "bench-bindings"
CONFIGS = [("memory", 0), ("uring", 64 << 20)]
ROWS = [48, 1536]
CALLS = {48: 20000, 1536: 2000}


def sh(*args, env=None, capture=True) -> str:
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=capture, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout if capture else ""


def build() -> tuple[list[str], list[str], list[str], dict]:
    sh("cargo", "build", "--release", "-p", "engram-benches", "--bin", "lookup_overhead",
       "-p", "engram-tools", "--bin", "engram", capture=False)
    prefix = sh("bindings/c/install.sh", str(WORK / "prefix"), "release").strip().splitlines()[-1]
    env = dict(os.environ, PKG_CONFIG_PATH=f"{prefix}/lib/pkgconfig")
    flags = sh("pkg-config", "--cflags", "--libs", "engram", env=env).split()
    c_bin = WORK / "lookup_overhead_c"
    sh("cc", "-O2", "-std=c11", "benches/c/lookup_overhead.c", *flags, "-o", str(c_bin))
    venv = ROOT / "target" / "venv-bench"
    if not (venv / "bin" / "python").exists():
        sh(sys.executable, "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    sh(py, "-m", "pip", "install", "--quiet", "numpy")
    wheels = WORK / "wheels"
    for old in wheels.glob("*.whl"):
        old.unlink()
    sh(py, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "./bindings/python",
       env=dict(os.environ, MATURIN_PEP517_ARGS="--profile release"))
    sh(py, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", *map(str, wheels.glob("*.whl")))
    run_env = dict(os.environ, LD_LIBRARY_PATH=f"{prefix}/lib")
    return ([str(ROOT / "target" / "release" / "lookup_overhead")], [str(c_bin)],
            [py, str(ROOT / "benches" / "bindings" / "lookup_overhead.py")], run_env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--base-size", type=int, default=20000)
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rust, c, python, env = build()
    table = WORK / "table"
    sh(str(ROOT / "target" / "release" / "engram"), "synth", str(table), "--preset", "demo",
       "--base-size", str(a.base_size), "--force")
    manifest = json.loads((table / "manifest.json").read_text())
    layer = manifest["layers"][0]
    rng = np.random.default_rng(7)
    ids_files = {}
    for rows in ROWS:
        p = WORK / f"ids-{rows}.u64"
        rng.integers(0, layer["rows"], size=64 * rows, dtype=np.uint64).astype("<u8").tofile(p)
        ids_files[rows] = p
    harnesses = {"rust": rust, "c": c, "python": python}
    results: dict[tuple, list[float]] = {}
    for r in range(a.rounds):
        for backend, cache in CONFIGS:
            for rows in ROWS:
                names = list(harnesses)
                names = names[r % 3:] + names[:r % 3]
                for name in names:
                    out = sh(*harnesses[name], str(table), backend, str(cache), str(layer["layer_id"]),
                             str(ids_files[rows]), str(rows), str(CALLS[rows]), env=env)
                    rec = json.loads(out.strip().splitlines()[-1])
                    assert rec["backend"] == backend, rec
                    results.setdefault((backend, cache, rows, name), []).append(rec["ns_per_call"])
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    print(f"lookup_into, ns per call: median [min, max] of {a.rounds} interleaved rounds; "
          f"demo rows (128 B), table {layer['rows']} rows per layer")
    print("| backend | rows | Rust API | C ABI | Python | C - Rust | Python - Rust |")
    print("|---|---|---|---|---|---|---|")
    for backend, cache in CONFIGS:
        for rows in ROWS:
            med = {}
            cells = []
            for name in harnesses:
                v = results[(backend, cache, rows, name)]
                med[name] = statistics.median(v)
                cells.append(f"{med[name]:,.0f} [{min(v):,.0f}, {max(v):,.0f}]")
            label = backend + (f" + {cache >> 20} MiB cache" if cache else "")
            print(f"| {label} | {rows} | {' | '.join(cells)} | {med['c'] - med['rust']:+,.0f} | "
                  f"{med['python'] - med['rust']:+,.0f} |")
    print(json.dumps({"raw": {"/".join(map(str, k)): v for k, v in results.items()}}))


if __name__ == "__main__":
    main()
