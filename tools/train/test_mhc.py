"""mHC pieces of model.py against ENGRAM-SPEC section 15 recomputed independently in float64
(numpy, explicit loops), plus the reductions the spec states (pytest or `python test_mhc.py`).

* sinkhorn: equal to the float64 loops; the result is doubly stochastic within tolerance;
* HyperConnection (pre/post/comb and the stream update) and HyperHead: equal to float64;
* M = 1 with pre = post = 1 and comb = I: a Block is exactly the plain residual block;
* the Engram module with hc_mult = 4 matches engram-forward-v1 (cases a and c have M = 4).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engram_addr as ea  # noqa: E402
from model import (Block, HyperConnection, HyperHead, ModelConfig, hc_post,  # noqa: E402
                   rope_cos_sin, sinkhorn)

ITERS, EPS, NORM_EPS = 20, 1e-6, 1e-6


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def ref_sinkhorn(logits: np.ndarray, iters: int, eps: float) -> np.ndarray:
    """One (M, M) matrix, float64, written out as in the spec."""
    m = logits.shape[0]
    c = np.zeros((m, m))
    for i in range(m):
        mx = max(logits[i])
        ex = [math.exp(logits[i, j] - mx) for j in range(m)]
        for j in range(m):
            c[i, j] = ex[j] / sum(ex) + eps
    for j in range(m):
        s = sum(c[i, j] for i in range(m))
        for i in range(m):
            c[i, j] /= s + eps
    for _ in range(iters - 1):
        for i in range(m):
            s = sum(c[i, j] for j in range(m))
            for j in range(m):
                c[i, j] /= s + eps
        for j in range(m):
            s = sum(c[i, j] for i in range(m))
            for i in range(m):
                c[i, j] /= s + eps
    return c


def ref_mixes(x: np.ndarray, fn: np.ndarray) -> np.ndarray:
    flat = x.reshape(-1)
    r = 1.0 / math.sqrt(float(np.mean(flat * flat)) + NORM_EPS)
    return np.array([float(np.dot(flat, fn[k])) * r for k in range(fn.shape[0])])


def ref_coefficients(x: np.ndarray, fn: np.ndarray, base: np.ndarray, scale: np.ndarray):
    """One token's X (M, d) -> pre (M), post (M), comb (M, M), float64."""
    m = x.shape[0]
    mix = ref_mixes(x, fn)
    pre = np.array([_sigmoid(mix[i] * scale[0] + base[i]) + EPS for i in range(m)])
    post = np.array([2 * _sigmoid(mix[m + j] * scale[1] + base[m + j]) for j in range(m)])
    logits = np.array([[mix[2 * m + i * m + j] * scale[2] + base[2 * m + i * m + j] for j in range(m)]
                       for i in range(m)])
    return pre, post, ref_sinkhorn(logits, ITERS, EPS)


def _rand_hc(m: int, d: int, seed: int) -> HyperConnection:
    torch.manual_seed(seed)
    hc = HyperConnection(d, m, ITERS, EPS, NORM_EPS, scale_init=0.01, comb_diag_init=0.9)
    with torch.no_grad():  # far from the init, so every term matters
        hc.fn.normal_(0, 0.3)
        hc.base.normal_(0, 1.0)
        hc.scale.copy_(torch.tensor([0.7, -0.5, 1.3]))
    return hc


def test_sinkhorn_matches_float64_and_is_doubly_stochastic():
    rng = np.random.default_rng(0)
    for m in (1, 2, 4, 6):
        logits = rng.normal(0, 1.0, size=(50, m, m))  # at std 2, 20 rounds leave rows ~2 % off
        got = sinkhorn(torch.tensor(logits, dtype=torch.float32), ITERS, EPS).double().numpy()
        for n in range(logits.shape[0]):
            exp = ref_sinkhorn(logits[n], ITERS, EPS)
            assert np.abs(got[n] - exp).max() < 1e-6, (m, n)
            assert np.all(exp > 0)
            # columns are normalised last (exact up to eps), rows converge
            assert np.abs(exp.sum(0) - 1).max() < 1e-5, (m, n, exp.sum(0))
            assert np.abs(exp.sum(1) - 1).max() < 5e-3, (m, n, exp.sum(1))


def test_hyper_connection_matches_float64():
    m, d = 4, 24
    hc = _rand_hc(m, d, 1)
    x = torch.randn(3, 5, m, d)
    w = torch.randn(d, d) * 0.2
    with torch.no_grad():
        pre, post, comb = hc.coefficients(x)
        out, extra = hc(x, lambda y: (torch.tanh(y @ w.t()), "extra"))
    assert extra == "extra"
    fn, base, scale = (t.detach().double().numpy() for t in (hc.fn, hc.base, hc.scale))
    xs, wn = x.double().numpy(), w.double().numpy()
    for b in range(3):
        for t in range(5):
            p, q, c = ref_coefficients(xs[b, t], fn, base, scale)
            assert np.abs(pre[b, t].double().numpy() - p).max() < 1e-6
            assert np.abs(post[b, t].double().numpy() - q).max() < 1e-6
            assert np.abs(comb[b, t].double().numpy() - c).max() < 1e-6
            y = sum(p[i] * xs[b, t, i] for i in range(m))
            f = np.tanh(wn @ y)
            for j in range(m):
                exp = q[j] * f + sum(c[i, j] * xs[b, t, i] for i in range(m))
                assert np.abs(out[b, t, j].double().numpy() - exp).max() < 1e-5, (b, t, j)


def test_hyper_head_matches_float64():
    m, d = 4, 24
    torch.manual_seed(2)
    head = HyperHead(d, m, EPS, NORM_EPS, scale_init=0.01)
    with torch.no_grad():
        head.fn.normal_(0, 0.3)
        head.base.normal_(0, 1.0)
        head.scale.fill_(0.8)
    x = torch.randn(2, 3, m, d)
    with torch.no_grad():
        got = head(x).double().numpy()
    fn, base = head.fn.detach().double().numpy(), head.base.detach().double().numpy()
    for b in range(2):
        for t in range(3):
            xs = x[b, t].double().numpy()
            g = ref_mixes(xs, fn)
            w = [_sigmoid(g[i] * 0.8 + base[i]) + EPS for i in range(m)]
            exp = sum(w[i] * xs[i] for i in range(m))
            assert np.abs(got[b, t] - exp).max() < 1e-5


def test_init_is_a_plain_residual_on_equal_streams():
    """At init pre = 1/M, post = 1 and comb has equal row sums: equal streams stay equal."""
    m, d = 4, 16
    hc = HyperConnection(d, m, ITERS, EPS, NORM_EPS, scale_init=0.0, comb_diag_init=0.9)
    x = torch.randn(2, 3, 1, d).expand(2, 3, m, d)
    with torch.no_grad():
        pre, post, comb = hc.coefficients(x)
        out, _ = hc(x, lambda y: (2 * y, None))
    assert torch.allclose(pre, torch.full_like(pre, 1 / m + EPS))
    assert torch.allclose(post, torch.ones_like(post))
    assert torch.allclose(comb.diagonal(dim1=-2, dim2=-1), torch.full((2, 3, m), 0.9), atol=1e-5)
    assert torch.allclose(out, 3 * x, atol=1e-5)  # X + F(mean X) with F(y) = 2y


def test_one_stream_with_unit_coefficients_is_the_plain_residual():
    """M = 1, pre = post = 1, comb = I: the mHC block computes exactly h + Attn(.) then + MoE(.)."""
    cfg = ModelConfig(vocab_size=32, unk_id=31, hidden_size=16, num_layers=1, num_heads=2, n_routed_experts=4,
                      moe_intermediate_size=8)
    torch.manual_seed(3)
    blk = Block(cfg, 0, None)
    blk.eval()
    h = torch.randn(2, 7, 16)
    cos, sin = rope_cos_sin(7, cfg.head_dim, cfg.rope_theta)
    with torch.no_grad():
        plain, aux_plain = blk(h, cos, sin)
        for name in ("attn_hc", "mlp_hc"):
            hc = HyperConnection(16, 1, ITERS, EPS, NORM_EPS, 0.01, 0.9)
            hc.coefficients = lambda x: (x.new_ones(x.shape[:-1]), x.new_ones(x.shape[:-1]),
                                         x.new_ones(x.shape[:-2] + (1, 1)))
            setattr(blk, name, hc)
        streams, aux_hc = blk(h.unsqueeze(2), cos, sin)
    assert streams.shape == (2, 7, 1, 16)
    assert torch.equal(streams[:, :, 0], plain)
    # and the update itself, for any M: post = 1, comb = I gives X + f in every stream
    x, f = torch.randn(5, 4, 16), torch.randn(5, 16)
    assert torch.equal(hc_post(x, f, torch.ones(5, 4), torch.eye(4).expand(5, 4, 4)), x + f.unsqueeze(1))


def test_engram_forward_vectors_cover_four_branches():
    import test_hash
    from safetensors import safe_open

    seen = []
    for name in test_hash.FORWARD_CASES:
        with safe_open(str(ea.CONFORMANCE_DIR / f"engram-forward-v1-{name}.safetensors"), framework="pt") as f:
            m = json.loads(f.metadata()["config"])["hc_mult"]
        assert test_hash._forward_case(name) <= 1e-5
        seen.append(m)
    assert 4 in seen, seen


if __name__ == "__main__":
    for fn_name, fn in list(globals().items()):
        if fn_name.startswith("test_") and callable(fn):
            fn()
            print(f"{fn_name}: ok")
