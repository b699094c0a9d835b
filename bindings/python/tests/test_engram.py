"""The engram Python package against the workspace's own tools and the conformance vectors."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest

import engram
from conftest import CONFORMANCE, hold_tickets, read_safetensors, run, tool, write_safetensors

BACKENDS = ["memory", "mmap", "pread", "uring"]


def cli_rows(table, layer_id: int, ids, backend: str) -> np.ndarray:
    """Rows as `engram lookup --json` prints them."""
    out = run(
        tool("engram"), "lookup", str(table), "--layer", str(layer_id),
        "--rows", ",".join(str(i) for i in ids), "--backend", backend, "--json",
    )
    rows = [json.loads(line)["data"] for line in out.splitlines() if line.strip()]
    assert [r["row"] for r in rows] == [int(i) for i in ids]
    return np.stack([np.frombuffer(bytes.fromhex(r["hex"]), dtype=np.uint8) for r in rows])


def some_ids(store: engram.Store, layer_id: int, n: int, seed: int) -> np.ndarray:
    rows = store.layer_rows(layer_id)
    ids = np.random.default_rng(seed).integers(0, rows, size=n, dtype=np.uint64)
    ids[0], ids[-1] = 0, rows - 1  # both ends of the table
    return ids


def test_metadata(synth_table):
    with engram.Store(synth_table, backend="memory") as s:
        assert s.layer_ids == [1, 15]
        assert s.row_bytes == 128
        assert s.row_layout == {"kind": "bf16", "dim": 64, "scale_block": 0, "row_bytes": 128}
        assert s.n_hash_heads == 16 and s.max_ngram == 3
        assert s.backend == "memory"
        assert s.layer_rows(15) > s.layer_rows(1) > 0
        assert "Store(layers=[1, 15]" in repr(s)
    with pytest.raises(engram.EngramError) as e:
        s.row_bytes
    assert e.value.kind == "shut_down"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_rows_equal_engram_lookup(synth_table, backend, cache_bytes):
    store = engram.Store(synth_table, backend=backend, cache_bytes=cache_bytes)
    for layer_id in store.layer_ids:
        ids = some_ids(store, layer_id, 40, seed=layer_id)
        ids[5] = ids[6]  # a duplicate
        want = cli_rows(synth_table, layer_id, ids, "memory")
        got = store.lookup(layer_id, ids)
        assert got.dtype == np.uint8 and got.shape == (40, 128)
        assert np.array_equal(got, want)
        # Twice, so the cached path is compared too.
        assert np.array_equal(store.lookup(layer_id, ids), want)
        out = np.zeros((40, 128), dtype=np.uint8)
        assert store.lookup_into(layer_id, ids, out) is None
        assert np.array_equal(out, want)
        buf = bytearray(40 * 128)
        store.lookup_into(layer_id, ids.tolist(), buf)
        assert bytes(buf) == want.tobytes()
        t = store.prefetch(layer_id, ids.astype(np.int64))
        assert t.rows == 40
        assert np.array_equal(t.wait(), want)
        assert np.array_equal(t.wait(), want)  # waiting again gives the same rows
        assert t.ready()
    stats = store.stats()
    assert stats["rows_requested"] > 0 and stats["backend"] in BACKENDS


def test_bad_input_raises_engram_error(synth_table, tmp_path):
    s = engram.Store(synth_table, backend="memory")
    ids = np.array([1, 2, 3], dtype=np.uint64)
    cases = [
        ("unknown_layer", lambda: s.lookup(7, ids)),
        ("unknown_layer", lambda: s.prefetch(7, ids)),
        ("out_of_range", lambda: s.lookup(1, np.array([s.layer_rows(1)], dtype=np.uint64))),
        ("out_of_range", lambda: s.lookup(1, np.array([-1], dtype=np.int64))),
        ("buffer_size", lambda: s.lookup_into(1, ids, np.zeros((2, 128), np.uint8))),
        ("buffer_size", lambda: s.lookup_into(1, ids, np.zeros((3, 129), np.uint8))),
        ("buffer_size", lambda: s.lookup_into(1, ids, bytearray(10))),
        ("invalid_argument", lambda: s.lookup_into(1, ids, np.zeros((3, 32), np.float32))),
        ("invalid_argument", lambda: s.lookup_into(1, ids, np.zeros((3, 256), np.uint8)[:, ::2])),
        ("invalid_argument", lambda: s.lookup_into(1, ids, bytes(384))),
        ("invalid_argument", lambda: s.lookup_into(1, ids, "not a buffer")),
        ("invalid_argument", lambda: s.lookup(1, np.zeros(3, np.float64))),
        ("invalid_argument", lambda: s.lookup(1, ["a"])),
        ("buffer_size", lambda: s.dequantize(np.zeros(100, np.uint8))),
        ("unknown_layer", lambda: s.row_ids(2, [1, 2, 3], canonical=True)),
        ("invalid_argument", lambda: s.row_ids(1, np.zeros((1, 2, 3), np.int64), canonical=True)),
        ("not_found", lambda: engram.Store(tmp_path / "missing")),
        ("unavailable", lambda: engram.Store("unix:/nonexistent/engram.sock")),
        ("invalid_argument", lambda: engram.Store(synth_table, backend="floppy")),
        ("limit", lambda: engram.Store(synth_table, io_workers=100000)),
        ("limit", lambda: s.lookup(1, np.zeros(s.max_batch_rows + 1, np.uint64))),
    ]
    for kind, call in cases:
        with pytest.raises(engram.EngramError) as e:
            call()
        assert e.value.kind == kind, (kind, str(e.value))
        assert e.value.code == engram.ERROR_KINDS.index(kind) + 1
        assert str(e.value)
    ro = np.zeros((3, 128), np.uint8)
    ro.setflags(write=False)
    with pytest.raises(engram.EngramError):
        s.lookup_into(1, ids, ro)
    # A bad row id in a prefetch surfaces on wait, every time.
    t = s.prefetch(1, np.array([0, 10**12], dtype=np.uint64))
    for _ in range(2):
        with pytest.raises(engram.EngramError) as e:
            t.wait()
        assert e.value.kind == "out_of_range" and "10000000000" in str(e.value)
    t.release()
    with pytest.raises(engram.EngramError):
        t.wait()


def test_corrupt_table_is_an_error(synth_table, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(synth_table, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(engram.EngramError) as e:
        engram.Store(bad)
    assert e.value.kind == "corrupt"


def test_prefetch_many_in_flight_and_from_threads(synth_table):
    store = engram.Store(synth_table, backend="pread", max_batch_rows=4096)
    layer = 15
    ids = [some_ids(store, layer, 300, seed=k) for k in range(24)]
    want = [store.lookup(layer, i) for i in ids]
    tickets = [store.prefetch(layer, i) for i in ids]
    outs = [np.empty((300, 128), np.uint8) for _ in ids]
    for t, o, w in zip(tickets, outs, want):
        assert t.wait(o) is o
        assert np.array_equal(o, w)
    errors = []

    def worker(k):
        try:
            for _ in range(20):
                if not np.array_equal(store.prefetch(layer, ids[k]).wait(), want[k]):
                    errors.append(k)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_dequantize_matches_bf16(synth_table):
    s = engram.Store(synth_table, backend="memory")
    rows = s.lookup(1, some_ids(s, 1, 10, seed=3))
    got = s.dequantize(rows)
    # bf16 is the upper half of an f32.
    want = (rows.view("<u2").astype(np.uint32) << 16).view(np.float32)
    assert got.dtype == np.float32 and got.shape == (10, 64)
    assert np.array_equal(got, want, equal_nan=True)


def test_hashing_canonical_ids(synth_table):
    s = engram.Store(synth_table, backend="memory")
    seq = np.array([5, 17, 17, 99_000, -1, 3], dtype=np.int64)
    one = s.row_ids(1, seq, canonical=True)
    assert one.dtype == np.uint64 and one.shape == (6, 16)
    batch = s.row_ids(1, np.stack([seq, seq[::-1].copy()]), canonical=True)
    assert batch.shape == (2, 6, 16)
    assert np.array_equal(batch[0], one)
    # Position t depends only on the last max_ngram ids: hashing a window gives its rows.
    assert np.array_equal(s.row_ids(1, seq[2:5], canonical=True)[-1], one[4])
    rows = s.layer_rows(1)
    assert (one < rows).all()
    assert not np.array_equal(s.row_ids(15, seq, canonical=True), one)


def test_raw_ids_without_a_tokenizer_say_how_to_get_one(synth_table, tmp_path, monkeypatch):
    monkeypatch.delenv("ENGRAM_TOKENIZER", raising=False)
    monkeypatch.setenv("ENGRAM_CACHE_DIR", str(tmp_path / "empty-cache"))
    s = engram.Store(synth_table, backend="memory")
    for _ in range(2):  # the failure is remembered, and reported the same way again
        with pytest.raises(engram.EngramError) as e:
            s.row_ids(1, [1, 2, 3])
        assert e.value.kind == "tokenizer", str(e.value)
        assert "scripts/fetch-tokenizer.sh" in str(e.value) and "ENGRAM_TOKENIZER" in str(e.value)
    assert s.row_ids(1, [1, 2, 3], canonical=True).shape == (3, 16)


def forward_cases():
    return sorted(CONFORMANCE.glob("engram-forward-v1-*.safetensors"))


@pytest.mark.parametrize("path", forward_cases(), ids=lambda p: p.stem)
def test_official_memory_vectors_through_the_package(path, tokenizer, tmp_path):
    """engram-forward-v1: table imported with engram-build, then hash -> lookup -> dequantise
    through the package reproduces the official module's memory vectors e exactly."""
    tensors, meta = read_safetensors(path)
    cfg = json.loads(meta["config"])
    tok_sha = hashlib.sha256(tokenizer.read_bytes()).hexdigest()
    layer_id = cfg["layer_id"]
    decl = {
        "layer_ids": cfg["layer_ids"], "max_ngram": cfg["max_ngram"],
        "n_heads": cfg["n_head_per_ngram"], "base_sizes": cfg["base_sizes"],
        "seed": cfg["hash_seed"], "pad_id": cfg["pad_id"], "head_dim": cfg["head_dim"],
        "dtype": "float32", "tokenizer_sha256": tok_sha,
    }
    # Every layer of the config needs a tensor; only the case's layer has the real one.
    plan = tmp_path / "dry"
    summary = run(
        tool("engram-build"), "--out", str(plan), "--dry-run", "--json", "--tokenizer", str(tokenizer),
        "--layers", ",".join(map(str, cfg["layer_ids"])), "--max-ngram", str(cfg["max_ngram"]),
        "--heads", str(cfg["n_head_per_ngram"]),
        "--base-sizes", ",".join(map(str, cfg["base_sizes"])),
        "--seed", str(cfg["hash_seed"]), "--pad-id", str(cfg["pad_id"]),
        "--dim", str(cfg["head_dim"]), "--row-layout", "f32",
    )
    rows_per_layer = json.loads(summary.splitlines()[-1])["data"]["estimate"]["rows_per_layer"]
    weights = {}
    for lid, rows in zip(cfg["layer_ids"], rows_per_layer):
        w = tensors["multi_head_embedding.embedding.weight"] if lid == layer_id else np.zeros((rows, cfg["head_dim"]))
        assert w.shape[0] == rows
        weights[f"layers.{lid}.engram.embedding.weight"] = w
    ckpt = tmp_path / "engram.safetensors"
    write_safetensors(ckpt, weights, {"engram": json.dumps(decl)})
    table = tmp_path / "table"
    run(tool("engram-build"), "--import", str(ckpt), "--out", str(table), "--tokenizer", str(tokenizer),
        "--row-layout", "f32", "--quiet")

    store = engram.Store(table, backend="uring", tokenizer=tokenizer, cache_bytes=1 << 16)
    input_ids = tensors["input.input_ids"]  # (B, T) raw ids, some negative
    row_ids = store.row_ids(layer_id, input_ids)
    assert np.array_equal(row_ids, tensors["input.row_ids"].astype(np.uint64))
    # Without tokenizer= the package finds it as the CLIs do ($ENGRAM_TOKENIZER, then the
    # cache scripts/fetch-tokenizer.sh writes): the same row ids.
    assert np.array_equal(engram.Store(table).row_ids(layer_id, input_ids), row_ids)
    # The canonical path agrees with the raw one.
    assert np.array_equal(store.row_ids(layer_id, tensors["input.compressed_ids"], canonical=True), row_ids)
    b, t, h = row_ids.shape
    ticket = store.prefetch(layer_id, row_ids.reshape(-1))
    rows = store.lookup(layer_id, row_ids.reshape(-1))
    assert np.array_equal(ticket.wait(), rows)
    e = store.dequantize(rows).reshape(b, t, h * cfg["head_dim"])
    assert np.array_equal(e, tensors["expected.e"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_held_tickets_raise_limit_not_hang(synth_table, backend):
    """300 prefetches whose tickets are all held (issue 20, H2): kind "limit" once the
    store's LOCAL_MAX_TICKETS slots are held, never a hang. Needs the store's own limit
    error (engram-store); before it the 65th prefetch hangs and this fails at its timeout."""
    store = engram.Store(synth_table, backend=backend)
    held, limits = hold_tickets(store, 1)
    assert held + limits == 300 and held >= 1
    assert engram.LOCAL_MAX_TICKETS == 64


def test_token_ids_are_integers_within_the_vocabulary(synth_table):
    """Issue 20, M2: floats, NaN and inf are refused (5.9 used to hash as 5), and canonical
    ids beyond the compressed vocabulary are out of range, as from C."""
    s = engram.Store(synth_table)
    good = s.row_ids(1, [5, 17, 3], canonical=True)
    for bad in ([5.9, 17, 3], [5.0, 17.0, 3.0], [float("nan"), 1, 2], [float("inf"), 1, 2],
                np.array([5.9, 17, 3]), np.array([1, 2], np.float32), [True, False], ["5", "6"]):
        with pytest.raises(engram.EngramError) as e:
            s.row_ids(1, bad, canonical=True)
        assert e.value.kind == "invalid_argument", (bad, str(e.value))
    for bad in ([5, 2**40, 3], np.array([2**63 - 1], np.int64), np.array([2**64 - 1], np.uint64)):
        with pytest.raises(engram.EngramError) as e:
            s.row_ids(1, bad, canonical=True)
        assert e.value.kind == "out_of_range", (bad, str(e.value))
    # Integers of any dtype, and negative padding ids, still hash.
    assert np.array_equal(s.row_ids(1, np.array([5, 17, 3], np.int32), canonical=True), good)
    assert np.array_equal(s.row_ids(1, np.array([5, 17, 3], np.uint16), canonical=True), good)
    assert s.row_ids(1, [-1, 5, 3], canonical=True).shape == (3, s.n_hash_heads)


def test_ids_and_out_that_overlap_are_refused(synth_table):
    """Issue 20: ids that are a view of out (`buf[:8*n].view(np.uint64)` as ids, buf as
    out) would be overwritten by rows while being read; refused, nothing written."""
    s = engram.Store(synth_table, cache_bytes=1 << 20)
    n = 3
    buf = np.zeros(n * s.row_bytes, np.uint8)
    ids = buf[: 8 * n].view(np.uint64)
    ids[:] = [0, 1, 2]
    with pytest.raises(engram.EngramError) as e:
        s.lookup_into(1, ids, buf)
    assert e.value.kind == "invalid_argument" and "overlap" in str(e.value)
    assert list(ids) == [0, 1, 2]
    tail = buf[s.row_bytes : s.row_bytes + 8 * n].view(np.uint64)
    with pytest.raises(engram.EngramError):
        s.lookup_into(1, tail, buf)
    # Separate buffers (a copy of the ids) work.
    s.lookup_into(1, ids.copy(), buf)
    assert np.array_equal(buf.reshape(n, -1), s.lookup(1, [0, 1, 2]))
