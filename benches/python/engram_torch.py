"""The Engram module forward in PyTorch eager on CPU, side by side with the Rust bench
(`cargo bench -p engram-benches --bench kernels`): same shapes, same math (the
engram-forward-v1 README's 12 steps, written the way the reference demo writes them).

First checks itself against tests/data/conformance/engram-forward-v1-a.safetensors, then
prints JSON lines: shape, mode (decode batch 1 / 64, prefill T), best-of-N milliseconds per
call and microseconds per token.

Usage: python engram_torch.py [--threads N]   (needs torch and numpy; not used by CI)
"""

import argparse
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
EPS_KQ = torch.finfo(torch.float32).eps  # 2^-23
EPS_CONV = 1e-5


def rmsnorm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


class Engram:
    def __init__(self, wv, bv, wk, bk, n1, n2, nc, conv_w, dilation):
        self.wv, self.bv = wv, bv  # (d, d_mem), (d)
        self.wk, self.bk = wk, bk  # (M, d, d_mem), (M, d)
        self.n1, self.n2, self.nc = n1, n2, nc  # (M, d)
        self.conv_w = conv_w  # (M*d, 1, w)
        self.M, self.d = wk.shape[0], wk.shape[1]
        self.w = conv_w.shape[-1]
        self.dil = dilation

    def gate(self, e, h):
        # e (B, T, d_mem), h (B, T, M, d) -> u (B, T, M, d)
        v = F.linear(e, self.wv, self.bv)
        k = torch.einsum("btc,mdc->btmd", e, self.wk) + self.bk
        kn = rmsnorm(k, self.n1, EPS_KQ)
        qn = rmsnorm(h, self.n2, EPS_KQ)
        s = (kn * qn).sum(-1) / math.sqrt(self.d)
        logit = torch.sign(s) * torch.sqrt(s.abs().clamp_min(1e-6))
        alpha = torch.sigmoid(logit)
        return alpha.unsqueeze(-1) * v.unsqueeze(2)

    def prefill(self, e, h):
        u = self.gate(e, h)
        B, T, M, d = u.shape
        x = rmsnorm(u, self.nc, EPS_CONV).reshape(B, T, M * d).transpose(1, 2)
        pad = (self.w - 1) * self.dil
        z = F.conv1d(F.pad(x, (pad, 0)), self.conv_w, dilation=self.dil, groups=M * d)
        z = z.transpose(1, 2).reshape(B, T, M, d)
        return u + F.silu(z)

    def decode(self, e, h, hist, pos):
        # e (B, 1, d_mem), h (B, 1, M, d); hist (L, B, M*d) ring of past conv inputs
        u = self.gate(e, h)
        B, _, M, d = u.shape
        x = rmsnorm(u, self.nc, EPS_CONV).reshape(B, M * d)
        L = hist.shape[0]
        z = self.conv_w[:, 0, self.w - 1] * x
        for j in range(self.w - 1):
            lag = (self.w - 1 - j) * self.dil
            z = z + self.conv_w[:, 0, j] * hist[(pos - lag) % L]
        hist[pos % L] = x
        return u + F.silu(z.reshape(B, 1, M, d))


def load_safetensors(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["config"])
    out = {}
    for name, t in header.items():
        dt = {"F32": np.float32, "I64": np.int64}[t["dtype"]]
        a, b = t["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dt).reshape(t["shape"]).copy())
    return meta, out


def from_file(meta, t):
    M = meta["hc_mult"]
    st = lambda f: torch.stack([t[f.format(m)] for m in range(M)])
    return Engram(
        t["value_proj.weight"], t["value_proj.bias"], st("key_projs.{}.weight"), st("key_projs.{}.bias"),
        st("norm1.{}.weight"), st("norm2.{}.weight"), st("short_conv.norms.{}.weight"),
        t["short_conv.conv.weight"], meta["conv_dilation"],
    )


def self_check():
    meta, t = load_safetensors(ROOT / "tests/data/conformance/engram-forward-v1-a.safetensors")
    mod = from_file(meta, t)
    table = t["multi_head_embedding.embedding.weight"]
    ids = t["input.row_ids"]
    e = table[ids].reshape(ids.shape[0], ids.shape[1], -1)
    y = mod.prefill(e, t["input.hidden_states"])
    exp = t["expected.y"]
    err = ((y - exp).abs() / (1 + exp.abs())).max().item()
    assert err <= 1e-5, f"torch port disagrees with the vectors: {err}"
    return err


def random_module(d, M, dm, n, gen):
    r = lambda *s, scale=1.0: (torch.rand(*s, generator=gen) - 0.5) * scale
    ws = 2 / math.sqrt(dm)
    return Engram(
        r(d, dm, scale=ws), r(d, scale=0.1), r(M, d, dm, scale=ws), r(M, d, scale=0.1),
        r(M, d) + 1, r(M, d) + 1, r(M, d) + 1, r(M * d, 1, 4), n,
    )


def best_ms(f, repeats):
    f()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    err = self_check()
    print(json.dumps({"type": "self_check", "data": {"case": "a", "max_measure": err}}))
    gen = torch.Generator().manual_seed(0)
    shapes = [("demo", 1024, 4, 1024, 3, 4096), ("v41", 2048, 4, 6144, 4, 512)]
    with torch.inference_mode():
        for shape, d, M, dm, n, T in shapes:
            mod = random_module(d, M, dm, n, gen)
            for B in (1, 64):
                e = torch.randn(B, 1, dm, generator=gen)
                h = torch.randn(B, 1, M, d, generator=gen)
                hist = torch.zeros(3 * n, B, M * d)
                pos = [0]

                def step():
                    mod.decode(e, h, hist, pos[0])
                    pos[0] += 1

                ms = best_ms(step, 20)
                print(json.dumps({"type": "bench", "data": {"shape": shape, "mode": f"decode_b{B}", "ms_per_call": ms, "us_per_token": ms * 1e3 / B}}))
            e = torch.randn(1, T, dm, generator=gen)
            h = torch.randn(1, T, M, d, generator=gen)
            ms = best_ms(lambda: mod.prefill(e, h), 3)
            print(json.dumps({"type": "bench", "data": {"shape": shape, "mode": f"prefill_t{T}", "ms_per_call": ms, "us_per_token": ms * 1e3 / T}}))


if __name__ == "__main__":
    main()
