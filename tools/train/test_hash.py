"""Conformance of tools/train against tests/data/conformance (pytest or `python test_hash.py`).

* engram-hash-v1.json: compression (incl. the DeepSeek table's SHA-256), half_bound,
  multipliers, primes, offsets, total_rows, mix and head_indices of every case.
* engram-forward-v1-{a,b,c}.safetensors: the Engram module of model.py, every intermediate
  at |got - exp| <= 1e-5 * (1 + |exp|), `e` exact; row ids end to end from the raw ids.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engram_addr as ea  # noqa: E402

FORWARD_CASES = ["a", "b", "c"]


def _load_vectors():
    with open(ea.HASH_VECTORS) as f:
        return json.load(f)


def _case_lookup(doc, case):
    comp = case["compression"]
    if "table" in comp:
        table = doc["compression_tables"][comp["table"]]
        lookup = ea.lookup_from_merged(table)
        assert int(lookup.max()) + 1 == table["compressed_vocab_size"]
        assert ea.lookup_sha256_i32le(lookup) == table["lookup_sha256_i32le"]
        return lookup, table["compressed_vocab_size"]
    return np.asarray(comp["lookup"], dtype=np.int64), comp["compressed_vocab_size"]


def test_deepseek_compression_table():
    lookup, vp, table = ea.load_deepseek_compression()
    assert len(lookup) == 129280 and vp == 99092
    for raw, can in table["samples"].items():
        assert lookup[int(raw)] == can


def test_hash_vectors():
    doc = _load_vectors()
    n_checked = 0
    for case in doc["cases"]:
        cfg, exp = case["config"], case["expected"]
        lookup, vp = _case_lookup(doc, case)
        addr = ea.EngramAddressing(lookup=lookup, compressed_vocab_size=vp, max_ngram=cfg["max_ngram"],
                                   n_heads=cfg["n_heads"], base_sizes=cfg["base_sizes"], layer_ids=cfg["layer_ids"],
                                   seed=cfg["seed"], pad_id=cfg["pad_id"])
        ids = np.asarray(case["input_ids"], dtype=np.int64)
        c = ea.compress(ids, lookup)
        assert c.tolist() == exp["compressed_ids"], case["name"]
        assert addr.pad_c == exp["compressed_pad_id"], case["name"]
        assert ea.half_bound(vp) == exp["half_bound"], case["name"]
        rows = addr.row_ids(ids)
        assert len(exp["layers"]) == len(cfg["layer_ids"])
        for lay in exp["layers"]:
            L = lay["layer_id"]
            assert [int(x) for x in addr.multipliers[L]] == lay["multipliers"], (case["name"], L)
            assert addr.primes[L] == lay["primes"], (case["name"], L)
            assert addr.offsets[L].tolist() == lay["offsets"], (case["name"], L)
            assert addr.total_rows[L] == lay["total_rows"], (case["name"], L)
            hi = ea.head_indices(c, addr.multipliers[L], addr.primes[L], cfg["max_ngram"], addr.pad_c)
            assert hi.tolist() == lay["head_indices"], (case["name"], L)
            assert (rows[L] - addr.offsets[L]).tolist() == lay["head_indices"], (case["name"], L)
            if "mix" in lay:
                mix = ea.ngram_mix(c, addr.multipliers[L], cfg["max_ngram"], addr.pad_c)
                assert mix.tolist() == lay["mix"], (case["name"], L)
            n_checked += 1
    assert n_checked >= 7


def _forward_case(name: str):
    import torch
    from safetensors import safe_open

    from model import Engram, EngramConfig

    path = ea.CONFORMANCE_DIR / f"engram-forward-v1-{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["config"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    ecfg = EngramConfig(layer_ids=meta["layer_ids"], max_ngram=meta["max_ngram"], n_head_per_ngram=meta["n_head_per_ngram"],
                        n_embed_per_ngram=meta["n_embed_per_ngram"], base_sizes=meta["base_sizes"], hc_mult=meta["hc_mult"],
                        seed=meta["hash_seed"], pad_id=meta["pad_id"], compressed_vocab_size=meta["compressed_vocab_size"],
                        conv_zero_init=False)
    assert meta["kernel_size"] == ecfg.kernel_size and meta["conv_dilation"] == ecfg.max_ngram

    # end-to-end addressing: raw ids -> compressed ids -> head indices -> rows
    lookup, vp, _ = ea.load_deepseek_compression()
    addr = ea.EngramAddressing(lookup=lookup, compressed_vocab_size=vp, max_ngram=ecfg.max_ngram,
                               n_heads=ecfg.n_head_per_ngram, base_sizes=ecfg.base_sizes, layer_ids=ecfg.layer_ids,
                               seed=ecfg.seed, pad_id=ecfg.pad_id)
    L = meta["layer_id"]
    raw = tensors["input.input_ids"].numpy()
    assert ea.compress(raw, lookup).tolist() == tensors["input.compressed_ids"].tolist()
    assert [int(x) for x in addr.multipliers[L]] == meta["multipliers"]
    assert addr.primes[L] == meta["primes"] and addr.total_rows[L] == meta["total_rows"]
    assert addr.offsets[L].tolist() == tensors["multi_head_embedding.offsets"].tolist() == meta["offsets"]
    rows = addr.row_ids(raw)[L]
    assert rows.tolist() == tensors["input.row_ids"].tolist()
    assert (rows - addr.offsets[L]).tolist() == tensors["input.head_indices"].tolist()

    mod = Engram(meta["hidden_size"], ecfg, addr.total_rows[L], addr.offsets[L].tolist())
    params = {k: v for k, v in tensors.items() if not k.startswith(("input.", "expected."))}
    missing, unexpected = mod.load_state_dict(params, strict=True), None
    del missing, unexpected
    trace: dict = {}
    with torch.no_grad():
        mod(torch.from_numpy(rows), tensors["input.hidden_states"], trace)
    worst = 0.0
    for key, exp in tensors.items():
        if not key.startswith("expected."):
            continue
        got = trace[key[len("expected."):]]
        assert got.shape == exp.shape, (name, key, got.shape, exp.shape)
        if key == "expected.e":
            assert torch.equal(got, exp), (name, key)
            continue
        measure = ((got - exp).abs() / (1 + exp.abs())).max().item()
        worst = max(worst, measure)
        assert measure <= 1e-5, (name, key, measure)
    return worst


def test_forward_vectors():
    for name in FORWARD_CASES:
        _forward_case(name)


if __name__ == "__main__":
    test_deepseek_compression_table()
    print("compression table: V' = 99092, SHA-256 ok")
    test_hash_vectors()
    print("engram-hash-v1: all cases ok")
    for name in FORWARD_CASES:
        print(f"engram-forward-v1-{name}: ok, worst |got-exp|/(1+|exp|) = {_forward_case(name):.2e}")
