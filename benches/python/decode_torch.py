"""PyTorch eager baseline for moe-core: prefill and cached decode of a committed model,
1 thread, the same weights (bf16 widened to f32) and the same prompt.

Decode uses a KV cache for attention and, for an Engram block, recomputes the module over
the last (kernel - 1) * dilation + 1 positions (all the short convolution can see), so each
step costs what an eager implementation with caches would. With hyper-connections (mHC)
the residual is M streams and each sublayer goes through the model's own mHC modules.
Greedy; prints one JSON line.

Usage: python decode_torch.py MODEL_DIR PROMPT N_NEW [--no-engram]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "train"))
import data  # noqa: E402
import hub  # noqa: E402
from model import hc_post, hc_pre, rope_cos_sin, rotate_half  # noqa: E402


class Cached:
    def __init__(self, model, addr, use_engram: bool):
        self.m, self.addr, self.use_engram = model, addr, use_engram
        cfg = model.cfg
        self.k = [[] for _ in model.layers]
        self.v = [[] for _ in model.layers]
        self.h_in = {i: [] for i, b in enumerate(model.layers) if b.engram is not None}
        self.raw: list[int] = []
        self.cos, self.sin = rope_cos_sin(cfg.max_position_embeddings, cfg.head_dim, cfg.rope_theta)
        e = cfg.engram
        self.window = (4 - 1) * e.max_ngram + 1 if e is not None else 0

    @torch.no_grad()
    def forward(self, red: list[int], raw: list[int]) -> torch.Tensor:
        m, cfg = self.m, self.m.cfg
        start = len(self.raw)
        self.raw += raw
        t = len(red)
        h = m.embed_tokens(torch.tensor([red]))
        hc = m.hc_head is not None
        if hc:
            h = h.unsqueeze(2).expand(1, t, cfg.hc_mult, cfg.hidden_size)
        cos, sin = self.cos[start:start + t], self.sin[start:start + t]
        rows = None
        if self.use_engram and self.addr is not None:
            lo = max(0, start + t - (t + self.window - 1))
            rows = {L: torch.from_numpy(v[:, lo:]) for L, v in self.addr.row_ids(np.asarray([self.raw])).items()}
        for i, blk in enumerate(m.layers):
            if blk.engram is not None and rows is not None:
                self.h_in[i].append(h)
                hs = torch.cat(self.h_in[i], dim=1)
                r = rows[blk.layer_id]
                hs = hs[:, -r.shape[1]:]
                y = blk.engram(r, hs if hc else hs.unsqueeze(2))[:, -t:]
                h = h + (y if hc else y[:, :, 0])
            if hc:
                pre, post, comb = blk.attn_hc.coefficients(h)
                x = blk.input_layernorm(hc_pre(h, pre))
            else:
                x = blk.input_layernorm(h)
            a = blk.self_attn
            q = a.q_proj(x).view(1, t, a.nh, a.hd).transpose(1, 2)
            k = a.k_proj(x).view(1, t, a.nh, a.hd).transpose(1, 2)
            v = a.v_proj(x).view(1, t, a.nh, a.hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            self.k[i].append(k)
            self.v[i].append(v)
            kk, vv = torch.cat(self.k[i], dim=2), torch.cat(self.v[i], dim=2)
            mask = None
            if t > 1:
                mask = torch.ones(t, kk.shape[2], dtype=torch.bool).tril(diagonal=start)
            o = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
            f = a.o_proj(o.transpose(1, 2).reshape(1, t, -1))
            if hc:
                h = hc_post(h, f, post, comb)
                pre, post, comb = blk.mlp_hc.coefficients(h)
                mo, _ = blk.mlp(blk.post_attention_layernorm(hc_pre(h, pre)))
                h = hc_post(h, mo, post, comb)
            else:
                h = h + f
                mo, _ = blk.mlp(blk.post_attention_layernorm(h))
                h = h + mo
        if hc:
            h = m.hc_head(h)
        return m.lm_head(m.norm(h))[0]


def main() -> None:
    torch.set_num_threads(1)
    model_dir, prompt, n_new = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    use_engram = "--no-engram" not in sys.argv
    cj, model, addr, vocab = hub.load_model(model_dir)
    unk = cj["unk_token_id"]
    r2r = {int(r): i for i, r in enumerate(vocab)}
    tok = data.load_tokenizer()
    raw = [data.BOS_ID] + data.encode(tok, prompt)
    red = [r2r.get(x, unk) for x in raw]
    # Warm-up (lazy initialisation inside torch) on a throwaway runner, then time a fresh one.
    Cached(model, addr, use_engram).forward(red, raw)
    runner = Cached(model, addr, use_engram)
    t0 = time.perf_counter()
    logits = runner.forward(red, raw)
    prefill = time.perf_counter() - t0
    ids = []
    t1 = time.perf_counter()
    for _ in range(n_new):
        last = logits[-1].clone()
        last[unk] = -float("inf")
        nxt = int(torch.argmax(last))
        ids.append(nxt)
        if len(ids) == n_new:
            break
        logits = runner.forward([nxt], [int(vocab[nxt])])
    decode = time.perf_counter() - t1
    print(json.dumps({
        "prompt_tokens": len(raw), "new_tokens": len(ids), "ids": ids,
        "prefill_tokens_per_second": len(raw) / prefill,
        "decode_tokens_per_second": (len(ids) - 1) / decode if len(ids) > 1 else 0.0,
        "engram": use_engram and addr is not None,
    }))


if __name__ == "__main__":
    main()
