//! The MoE FFN: softmax router over the routed experts, top-k (ties to the lower index),
//! shared experts always on. Tokens are grouped per expert so each expert runs one GEMM.

use engram_kernels::alloc::{try_reserve, try_vec_dims};

use super::ops::{linear, silu, softmax};
use super::zeros;
use crate::error::Result;
use crate::weights::{ExpertWeights, LayerWeights};

/// Scratch for one MoE call over up to `max_t` tokens.
#[derive(Debug)]
pub struct MoeScratch {
    /// Router probabilities.
    pub probs: Vec<f32>, // (max_t, experts)
    /// Chosen experts and their weights, `k` per token.
    pub topk: Vec<(usize, f32)>, // (max_t * k)
    /// Tokens routed to the expert being computed.
    pub rows: Vec<usize>, // token indices routed to one expert
    /// Those tokens' inputs, gathered.
    pub xe: Vec<f32>, // (max_t, d)
    /// Gate projections.
    pub gate: Vec<f32>, // (max_t, inter)
    /// Up projections.
    pub up: Vec<f32>, // (max_t, inter)
    /// The expert's outputs.
    pub ye: Vec<f32>, // (max_t, d)
}

impl MoeScratch {
    /// Buffers for up to `max_t` tokens of width `d`, `experts` experts of width `inter`,
    /// `k` per token (allocated once; an error if they do not fit in memory).
    pub fn new(max_t: usize, d: usize, inter: usize, experts: usize, k: usize) -> Result<Self> {
        let mut rows = Vec::new();
        try_reserve(&mut rows, max_t, "expert token rows")?;
        Ok(Self {
            probs: zeros(&[max_t, experts], "router probabilities")?,
            topk: try_vec_dims(&[max_t, k], (0, 0.0), "router top-k")?,
            rows,
            xe: zeros(&[max_t, d], "expert inputs")?,
            gate: zeros(&[max_t, inter], "expert gate")?,
            up: zeros(&[max_t, inter], "expert up")?,
            ye: zeros(&[max_t, d], "expert outputs")?,
        })
    }
}

/// `ye (n, d) = down(silu(gate(x)) * up(x))` for `n` tokens.
fn expert_forward(
    e: &ExpertWeights,
    x: &[f32],
    n: usize,
    d: usize,
    gate: &mut [f32],
    up: &mut [f32],
    ye: &mut [f32],
) {
    let inter = e.gate.len() / d;
    let (g, u) = (&mut gate[..n * inter], &mut up[..n * inter]);
    linear(g, x, &e.gate, n, d, inter);
    linear(u, x, &e.up, n, d, inter);
    for (a, &b) in g.iter_mut().zip(u.iter()) {
        *a = silu(*a) * b;
    }
    linear(&mut ye[..n * d], g, &e.down, n, inter, d);
}

/// `out (t, d) = MoE(x (t, d))`.
pub fn moe(
    w: &LayerWeights,
    top_k: usize,
    norm_topk: bool,
    x: &[f32],
    t: usize,
    s: &mut MoeScratch,
    out: &mut [f32],
) {
    let d = w.input_norm.len();
    let ne = w.experts.len();
    let probs = &mut s.probs[..t * ne];
    linear(probs, x, &w.router, t, d, ne);
    for i in 0..t {
        let p = &mut probs[i * ne..(i + 1) * ne];
        softmax(p);
        let sel = &mut s.topk[i * top_k..(i + 1) * top_k];
        // Top-k by probability, ties to the lower expert index (as torch.topk on CPU).
        let mut taken = 0usize;
        for slot in sel.iter_mut() {
            let mut best = usize::MAX;
            for e in 0..ne {
                if taken & (1 << e) != 0 {
                    continue;
                }
                if best == usize::MAX || p[e] > p[best] {
                    best = e;
                }
            }
            taken |= 1 << best;
            *slot = (best, p[best]);
        }
        if norm_topk {
            let sum: f32 = sel.iter().map(|&(_, w)| w).sum();
            for slot in sel.iter_mut() {
                slot.1 /= sum;
            }
        }
    }
    out[..t * d].fill(0.0);
    for (e, expert) in w.experts.iter().enumerate() {
        s.rows.clear();
        for i in 0..t {
            if s.topk[i * top_k..(i + 1) * top_k]
                .iter()
                .any(|&(x, _)| x == e)
            {
                s.rows.push(i);
            }
        }
        let n = s.rows.len();
        if n == 0 {
            continue;
        }
        for (r, &i) in s.rows.iter().enumerate() {
            s.xe[r * d..(r + 1) * d].copy_from_slice(&x[i * d..(i + 1) * d]);
        }
        expert_forward(
            expert,
            &s.xe[..n * d],
            n,
            d,
            &mut s.gate,
            &mut s.up,
            &mut s.ye,
        );
        for (r, &i) in s.rows.iter().enumerate() {
            let wgt = s.topk[i * top_k..(i + 1) * top_k]
                .iter()
                .find(|&&(x, _)| x == e)
                .map_or(0.0, |&(_, w)| w);
            for (o, &y) in out[i * d..(i + 1) * d]
                .iter_mut()
                .zip(&s.ye[r * d..(r + 1) * d])
            {
                *o += y * wgt;
            }
        }
    }
    for expert in &w.shared {
        expert_forward(expert, &x[..t * d], t, d, &mut s.gate, &mut s.up, &mut s.ye);
        for (o, &y) in out[..t * d].iter_mut().zip(&s.ye[..t * d]) {
            *o += y;
        }
    }
}
