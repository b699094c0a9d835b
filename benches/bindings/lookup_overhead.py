"""The Python side of the bindings' overhead benchmark (benches/bindings/run.py): the same
loop as src/bin/lookup_overhead.rs through engram.Store.lookup_into into a numpy array.

Usage: python lookup_overhead.py TABLE BACKEND CACHE_BYTES LAYER_ID IDS_FILE ROWS CALLS
"""
import json
import sys
import time

import numpy as np

import engram


def main() -> None:
    table, backend, cache, layer, ids_file, rows, calls = sys.argv[1:8]
    rows, calls, layer = int(rows), int(calls), int(layer)
    ids = np.fromfile(ids_file, dtype="<u8")
    batches = [ids[b * rows:(b + 1) * rows] for b in range(len(ids) // rows)]
    store = engram.Store(table, backend=backend, cache_bytes=int(cache))
    out = np.empty((rows, store.row_bytes), dtype=np.uint8)
    for b in batches:
        store.lookup_into(layer, b, out)
    nb = len(batches)
    lookup_into = store.lookup_into
    t0 = time.perf_counter_ns()
    for k in range(calls):
        lookup_into(layer, batches[k % nb], out)
    ns = (time.perf_counter_ns() - t0) / calls
    print(json.dumps({"harness": "python", "backend": store.backend, "ns_per_call": ns}))


if __name__ == "__main__":
    main()
