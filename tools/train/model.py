"""DeepSeekMoE-style decoder with optional Engram layers and mHC (PyTorch, CPU).

Plain residual (hc_mult = 1):
Block l:  h = h + Engram_l(h)            (only if l in engram.layer_ids; M = 1 branch)
          h = h + Attn(RMSNorm(h))       (RoPE, causal, multi-head)
          h = h + MoE(RMSNorm(h))        (shared experts + softmax top-k routed experts)
Final:    logits = lm_head(RMSNorm(h))

Manifold-constrained hyper-connections (hc_mult = M > 1, ENGRAM-SPEC section 15): the
residual is M streams X (.., M, d); the embedding is copied into every stream; each sublayer
F (attention, MoE) reads y = sum_i pre_i X_i and writes X'_j = post_j F(y) + sum_i comb_ij X_i
with pre/post/comb computed from X (comb doubly stochastic by Sinkhorn-Knopp); Engram reads
stream m as its query and adds Y^(m) to stream m (section 8); the head mixes the streams
with its own weights before the final norm.

Parameter names are the ones exported to models/*/model.safetensors (see models/README.md).
The Engram module reproduces the reference `Engram` class of engram_demo_v1.py exactly
(checked against tests/data/conformance/engram-forward-v1-{a,b,c}.safetensors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class EngramConfig:
    layer_ids: list[int]
    max_ngram: int = 3
    n_head_per_ngram: int = 4
    n_embed_per_ngram: int = 32
    base_sizes: list[int] = field(default_factory=lambda: [5000, 5000])
    hc_mult: int = 1
    kernel_size: int = 4
    seed: int = 0
    pad_id: int = 2
    compressed_vocab_size: int = 99092
    conv_zero_init: bool = True
    value_init_std: float | None = None  # None: reference init (PyTorch default); else N(0, std) weight, zero bias

    @property
    def n_hash_heads(self) -> int:
        return (self.max_ngram - 1) * self.n_head_per_ngram

    @property
    def head_dim(self) -> int:
        return self.n_embed_per_ngram // self.n_head_per_ngram

    @property
    def d_mem(self) -> int:
        return (self.max_ngram - 1) * self.n_embed_per_ngram


@dataclass
class ModelConfig:
    vocab_size: int  # reduced vocabulary incl. the unknown id
    unk_id: int
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 192
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 1024
    aux_loss_alpha: float = 0.01
    norm_topk_prob: bool = False
    tie_word_embeddings: bool = False
    engram: EngramConfig | None = None
    hc_mult: int = 1  # residual streams; 1 = plain residual, > 1 = mHC
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    hc_scale_init: float = 0.01  # training choice (init of the three `scale` gains of every mapping)
    hc_comb_diag_init: float = 0.9  # training choice: comb starts near the identity (diagonal ~0.9)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * g; eps None = machine epsilon of x.dtype (torch nn.RMSNorm default)."""
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float | None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# ---------------------------------------------------------------- Engram (reference math)


class MultiHeadEmbedding(nn.Module):
    def __init__(self, total_rows: int, head_dim: int, offsets: list[int]):
        super().__init__()
        self.embedding = nn.Embedding(total_rows, head_dim)  # init N(0, 1) like the reference
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=True)

    def forward(self, row_ids: torch.Tensor) -> torch.Tensor:
        # row_ids: (B, T, H) already include the offsets -> e: (B, T, H*D_h), head-major
        e = self.embedding(row_ids)
        return e.flatten(-2)


class ShortConv(nn.Module):
    def __init__(self, d: int, hc_mult: int, kernel_size: int, dilation: int, zero_init: bool):
        super().__init__()
        self.d, self.m, self.k, self.dil = d, hc_mult, kernel_size, dilation
        self.norms = nn.ModuleList([RMSNorm(d, 1e-5) for _ in range(hc_mult)])
        self.conv = nn.Conv1d(d * hc_mult, d * hc_mult, kernel_size, groups=d * hc_mult, bias=False, dilation=dilation)
        if zero_init:
            nn.init.zeros_(self.conv.weight)

    def forward(self, u: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        # u: (B, T, M, d)
        b, t, m, d = u.shape
        x = torch.stack([self.norms[i](u[:, :, i]) for i in range(m)], dim=2)
        xc = x.reshape(b, t, m * d).transpose(1, 2)  # channel c = m*d + i
        xc = F.pad(xc, ((self.k - 1) * self.dil, 0))  # causal: zeros before t = 0
        pre = F.conv1d(xc, self.conv.weight, None, dilation=self.dil, groups=m * d)
        pre = pre.transpose(1, 2).reshape(b, t, m, d)
        out = F.silu(pre)
        if trace is not None:
            trace.update(conv_in_normed=x, conv_pre_act=pre, conv_out=out)
        return out


class Engram(nn.Module):
    def __init__(self, d: int, cfg: EngramConfig, total_rows: int, offsets: list[int]):
        super().__init__()
        self.d, self.cfg = d, cfg
        m = cfg.hc_mult
        self.multi_head_embedding = MultiHeadEmbedding(total_rows, cfg.head_dim, offsets)
        self.value_proj = nn.Linear(cfg.d_mem, d)
        self.key_projs = nn.ModuleList([nn.Linear(cfg.d_mem, d) for _ in range(m)])
        self.norm1 = nn.ModuleList([RMSNorm(d, None) for _ in range(m)])  # key norm, eps = dtype eps
        self.norm2 = nn.ModuleList([RMSNorm(d, None) for _ in range(m)])  # query norm, eps = dtype eps
        self.short_conv = ShortConv(d, m, cfg.kernel_size, cfg.max_ngram, cfg.conv_zero_init)
        if cfg.value_init_std is not None:
            # training choice, not part of the reference: with N(0,1) table rows the default init makes
            # Y ~ 0.3 per channel against a residual stream of 0.02 at step 0, which swamps early training
            nn.init.normal_(self.value_proj.weight, std=cfg.value_init_std)
            nn.init.zeros_(self.value_proj.bias)

    def forward(self, row_ids: torch.Tensor, hidden: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        """row_ids (B, T, H); hidden (B, T, M, d) -> Y (B, T, M, d)."""
        e = self.multi_head_embedding(row_ids)
        v = self.value_proj(e)
        ks, kn, qn, ss = [], [], [], []
        for i in range(self.cfg.hc_mult):
            k = self.key_projs[i](e)
            k_hat = self.norm1[i](k)
            q_hat = self.norm2[i](hidden[:, :, i])
            s = (k_hat * q_hat).sum(-1) / math.sqrt(self.d)
            ks.append(k), kn.append(k_hat), qn.append(q_hat), ss.append(s)
        s = torch.stack(ss, dim=-1)  # (B, T, M)
        gate_logit = torch.sign(s) * s.abs().clamp_min(1e-6).sqrt()
        alpha = torch.sigmoid(gate_logit)
        u = alpha.unsqueeze(-1) * v.unsqueeze(2)  # (B, T, M, d)
        conv_out = self.short_conv(u, trace)
        y = u + conv_out
        if trace is not None:
            trace.update(e=e, v=v, k=torch.stack(ks, 2), k_normed=torch.stack(kn, 2), q_normed=torch.stack(qn, 2),
                         s=s, gate_logit=gate_logit, alpha=alpha, u=u, y=y)
        return y


# ---------------------------------------------------------------- mHC (ENGRAM-SPEC section 15)


def sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """comb from its logits (.., M, M): softmax over j + eps, columns normalised, then
    `iters - 1` rounds of rows then columns (each sum + eps). Row i = source stream i."""
    comb = torch.softmax(logits, dim=-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return comb


def hc_mixes(x: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    """(flatten(X) @ fn^T) * rsqrt(mean(flatten(X)^2) + eps): X (.., M, d) -> (.., rows of fn)."""
    flat = x.flatten(-2)
    return (flat @ fn.t()) * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + norm_eps)


def hc_pre(x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Sublayer input y = sum_i pre_i X_i: X (.., M, d), pre (.., M) -> (.., d)."""
    return (pre.unsqueeze(-1) * x).sum(-2)


def hc_post(x: torch.Tensor, f: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """X'_j = post_j f + sum_i comb_ij X_i: X (.., M, d), f (.., d), post (.., M), comb (.., M, M)."""
    return post.unsqueeze(-1) * f.unsqueeze(-2) + torch.einsum("...ij,...id->...jd", comb, x)


class HyperConnection(nn.Module):
    """The mHC mapping around one sublayer: fn ((2+M)M, Md), base ((2+M)M), scale (3)."""

    def __init__(self, d: int, m: int, iters: int, eps: float, norm_eps: float, scale_init: float,
                 comb_diag_init: float):
        super().__init__()
        self.m, self.iters, self.eps, self.norm_eps = m, iters, eps, norm_eps
        self.fn = nn.Parameter(torch.empty((2 + m) * m, m * d))
        nn.init.normal_(self.fn, std=0.02)
        # start as a plain residual: pre = 1/M (y = the mean stream), post = 1, comb ~ identity
        off = math.log((1 - comb_diag_init) / (m - 1)) if m > 1 else 0.0
        comb0 = torch.full((m, m), off) + torch.eye(m) * (math.log(comb_diag_init) - off)
        pre0 = math.log(1 / (m - 1)) if m > 1 else 0.0
        self.base = nn.Parameter(torch.cat([torch.full((m,), pre0), torch.zeros(m), comb0.flatten()]))
        self.scale = nn.Parameter(torch.full((3,), scale_init))

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """X (.., M, d) -> pre (.., M), post (.., M), comb (.., M, M)."""
        m = self.m
        a, b, c = hc_mixes(x, self.fn, self.norm_eps).split([m, m, m * m], dim=-1)
        pre = torch.sigmoid(a * self.scale[0] + self.base[:m]) + self.eps
        post = 2 * torch.sigmoid(b * self.scale[1] + self.base[m:2 * m])
        logits = c * self.scale[2] + self.base[2 * m:]
        comb = sinkhorn(logits.unflatten(-1, (m, m)), self.iters, self.eps)
        return pre, post, comb

    def forward(self, x: torch.Tensor, sublayer) -> tuple[torch.Tensor, object]:
        """X' and whatever else `sublayer(y) -> (f, extra)` returns."""
        pre, post, comb = self.coefficients(x)
        f, extra = sublayer(hc_pre(x, pre))
        return hc_post(x, f, post, comb), extra


class HyperHead(nn.Module):
    """Stream weights before the final norm: w_i = sigmoid(g_i * scale + base_i) + eps."""

    def __init__(self, d: int, m: int, eps: float, norm_eps: float, scale_init: float):
        super().__init__()
        self.eps, self.norm_eps = eps, norm_eps
        self.fn = nn.Parameter(torch.empty(m, m * d))
        nn.init.normal_(self.fn, std=0.02)
        self.base = nn.Parameter(torch.full((m,), math.log(1 / (m - 1)) if m > 1 else 0.0))  # w = 1/M
        self.scale = nn.Parameter(torch.full((1,), scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(hc_mixes(x, self.fn, self.norm_eps) * self.scale + self.base) + self.eps
        return hc_pre(x, w)


# ---------------------------------------------------------------- backbone


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    pos = torch.arange(offset, offset + seq_len, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, hd): rotate-half (NeoX / HF Llama) layout
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, self.nh, self.hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(head_dim)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, d))


class Expert(nn.Module):
    """SwiGLU FFN: down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=False)
        self.up_proj = nn.Linear(d, inter, bias=False)
        self.down_proj = nn.Linear(inter, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.gate = nn.Linear(d, cfg.n_routed_experts, bias=False)  # router
        self.experts = nn.ModuleList([Expert(d, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)])
        self.shared_experts = nn.ModuleList([Expert(d, cfg.moe_intermediate_size) for _ in range(cfg.n_shared_experts)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        xf = x.reshape(-1, d)
        scores = F.softmax(self.gate(xf).float(), dim=-1)  # (N, E)
        topw, topi = torch.topk(scores, self.cfg.num_experts_per_tok, dim=-1)  # ties -> lower index
        if self.cfg.norm_topk_prob:
            topw = topw / topw.sum(-1, keepdim=True)
        out = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            tok, slot = torch.nonzero(topi == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            out.index_add_(0, tok, expert(xf[tok]) * topw[tok, slot].unsqueeze(-1).to(xf.dtype))
        for expert in self.shared_experts:
            out = out + expert(xf)
        aux = xf.new_zeros(())
        if self.training and self.cfg.aux_loss_alpha > 0:
            # DeepSeekMoE expert-level balance loss: alpha * sum_i f_i * P_i,
            # f_i = E/(K*N) * #tokens routed to i, P_i = mean routing prob of i.
            n, ne, k = xf.shape[0], self.cfg.n_routed_experts, self.cfg.num_experts_per_tok
            counts = torch.zeros(ne, dtype=torch.float32).index_add_(0, topi.reshape(-1), torch.ones(n * k))
            f = counts * ne / (k * n)
            p = scores.mean(0)
            aux = self.cfg.aux_loss_alpha * (f * p).sum()
        return out.view(b, t, d), aux


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, engram_layout: dict | None):
        super().__init__()
        self.layer_id = layer_id
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg)
        self.engram = None
        if engram_layout is not None:
            self.engram = Engram(cfg.hidden_size, cfg.engram, engram_layout["total_rows"], engram_layout["offsets"])
        self.attn_hc = self.mlp_hc = None
        if cfg.hc_mult > 1:
            args = (cfg.hidden_size, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.rms_norm_eps,
                    cfg.hc_scale_init, cfg.hc_comb_diag_init)
            self.attn_hc = HyperConnection(*args)
            self.mlp_hc = HyperConnection(*args)

    def forward(self, h, cos, sin, row_ids=None, engram_scale: float = 1.0):
        """h: (B, T, d) for a plain residual, (B, T, M, d) with mHC."""
        hc = self.attn_hc is not None
        if self.engram is not None:
            y = self.engram(row_ids, h if hc else h.unsqueeze(2))  # stream m is the query of branch m
            h = h + engram_scale * (y if hc else y[:, :, 0])

        def attn(x):
            return self.self_attn(self.input_layernorm(x), cos, sin), None

        def ffn(x):
            return self.mlp(self.post_attention_layernorm(x))

        if hc:
            h, _ = self.attn_hc(h, attn)
            return self.mlp_hc(h, ffn)
        h = h + attn(h)[0]
        m, aux = ffn(h)
        return h + m, aux


class MoEEngramLM(nn.Module):
    def __init__(self, cfg: ModelConfig, engram_layouts: dict[int, dict] | None = None):
        """engram_layouts: {layer_id: {"total_rows": int, "offsets": [int]}} from EngramAddressing."""
        super().__init__()
        self.cfg = cfg
        if cfg.engram is not None and cfg.engram.hc_mult != cfg.hc_mult:
            raise ValueError(f"engram.hc_mult {cfg.engram.hc_mult} != hc_mult {cfg.hc_mult}")
        engram_layouts = engram_layouts or {}
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg, i, engram_layouts.get(i)) for i in range(cfg.num_layers)])
        self.hc_head = None
        if cfg.hc_mult > 1:
            self.hc_head = HyperHead(cfg.hidden_size, cfg.hc_mult, cfg.hc_eps, cfg.rms_norm_eps, cfg.hc_scale_init)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self):
        std = 0.02
        for name, p in self.named_parameters():
            if ".engram." in name or name.startswith("hc_head.") or name.split(".")[-2] in ("attn_hc", "mlp_hc"):
                continue  # Engram: reference init (table N(0,1), conv zero); mHC: set by its modules
            if p.dim() >= 2:
                nn.init.normal_(p, std=std)
        for blk in self.layers:  # scaled init of residual outputs
            nn.init.normal_(blk.self_attn.o_proj.weight, std=std / math.sqrt(2 * self.cfg.num_layers))
            for ex in list(blk.mlp.experts) + list(blk.mlp.shared_experts):
                nn.init.normal_(ex.down_proj.weight, std=std / math.sqrt(2 * self.cfg.num_layers))

    def forward(self, ids: torch.Tensor, row_ids: dict[int, torch.Tensor] | None = None, engram_scale: float = 1.0):
        """ids: reduced ids (B, T); row_ids: {layer: (B, T, H)} Engram rows from the raw ids."""
        b, t = ids.shape
        h = self.embed_tokens(ids)
        if self.hc_head is not None:
            h = h.unsqueeze(2).expand(b, t, self.cfg.hc_mult, self.cfg.hidden_size)  # the embedding in every stream
        cos, sin = rope_cos_sin(t, self.cfg.head_dim, self.cfg.rope_theta)
        aux_total = h.new_zeros(())
        for blk in self.layers:
            r = row_ids[blk.layer_id] if blk.engram is not None else None
            h, aux = blk(h, cos, sin, r, engram_scale)
            aux_total = aux_total + aux
        if self.hc_head is not None:
            h = self.hc_head(h)
        return self.lm_head(self.norm(h)), aux_total
