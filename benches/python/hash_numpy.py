"""The Engram hash in numpy, vectorised straight from the spec's formulas.

An independent implementation (numpy's own default_rng for the multipliers, a Python
Miller-Rabin for the primes) run on the same inputs as the Rust harness
(`benches/src/bin/hash_side_by_side.rs`): it prints, per shape and batch, the best time
of several runs and a checksum of the head indices, which the harness compares with its own.

Usage: python hash_numpy.py  (prints JSON lines)
"""

import json
import time

import numpy as np

V_PRIME = 99_092
PAD = 2
SHAPES = {
    "demo": dict(max_ngram=3, n_heads=8, base=[646_400] * 2, layers=[1, 15]),
    "v41": dict(max_ngram=4, n_heads=8, base=[16_000_000] * 3, layers=[1, 14]),
}
BATCHES = [(1, 4096), (64, 512)]
REPEATS = 5
MASK = (1 << 64) - 1


def is_prime(n):
    if n < 2:
        return False
    bases = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in bases:
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


def first_layer(shape):
    """Multipliers and primes of the shape's first layer (prime search is global)."""
    n, k = shape["max_ngram"], shape["n_heads"]
    layer = shape["layers"][0]
    half = max(1, (2**63 - 1) // V_PRIME // 2)
    r = np.random.default_rng(0 + 10007 * layer).integers(0, half, size=n, dtype=np.int64)
    mult = (2 * r + 1).astype(np.int64)
    used, primes = set(), []
    for base in shape["base"]:
        cursor = base - 1
        for _ in range(k):
            c = cursor + 1
            while not is_prime(c) or c in used:
                c += 1
            used.add(c)
            primes.append(c)
            cursor = c
    return mult, primes


def splitmix_ids(count, seed):
    """SplitMix64, as benches/src/lib.rs, reduced mod V' (uint64 arithmetic wraps)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    state = (np.arange(1, count + 1, dtype=np.uint64) * golden) + np.uint64(seed)
    z = state
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(V_PRIME)).astype(np.int64)


def hash_numpy(ids, mult, primes, n, k):
    b, t = ids.shape
    padded = np.concatenate([np.full((b, n - 1), PAD, dtype=np.int64), ids], axis=1)
    out = np.empty((b, t, (n - 1) * k), dtype=np.int64)
    mix = np.zeros((b, t), dtype=np.int64)
    with np.errstate(over="ignore"):
        for lag in range(n):
            mix ^= padded[:, n - 1 - lag : n - 1 - lag + t] * mult[lag]
            if lag == 0:
                continue
            for j in range(k):
                head = (lag - 1) * k + j
                out[:, :, head] = np.mod(mix, primes[head])
    return out


def checksum(out):
    flat = out.reshape(-1).astype(np.uint64)
    weights = np.arange(1, flat.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(flat * weights, dtype=np.uint64))


def main():
    for name, shape in SHAPES.items():
        mult, primes = first_layer(shape)
        for b, t in BATCHES:
            ids = splitmix_ids(b * t, 42).reshape(b, t)
            best = float("inf")
            for _ in range(REPEATS):
                start = time.perf_counter()
                out = hash_numpy(ids, mult, primes, shape["max_ngram"], shape["n_heads"])
                best = min(best, time.perf_counter() - start)
            print(json.dumps(dict(shape=name, batch=b, seq=t, seconds=best,
                                  row_ids=int(out.size), checksum=checksum(out))))


if __name__ == "__main__":
    main()
