//! Causal multi-head attention with RoPE over a KV cache.

use super::ops::{Rope, linear, softmax};
use super::zeros;
use crate::error::Result;
use crate::weights::LayerWeights;

/// Scratch for one attention call over `t` new positions.
#[derive(Debug)]
pub struct AttnScratch {
    /// Queries.
    pub q: Vec<f32>, // (max_t, d)
    /// Keys of the new tokens.
    pub k: Vec<f32>, // (max_t, d)
    /// Values of the new tokens.
    pub v: Vec<f32>, // (max_t, d)
    /// Attention outputs before the output projection.
    pub o: Vec<f32>, // (max_t, d)
    /// Attention scores over the cached positions.
    pub scores: Vec<f32>, // (max_t, max_pos)
    qh: Vec<f32>, // (max_t, head_dim) one head's queries, contiguous
    kh: Vec<f32>, // (max_pos, head_dim) one head's keys
    vt: Vec<f32>, // (head_dim, max_pos) one head's values, transposed
    oh: Vec<f32>, // (max_t, head_dim)
}

impl AttnScratch {
    /// Buffers for `max_t` new tokens over up to `max_pos` positions, width `d` in heads
    /// of `head_dim` (allocated once; an error if they do not fit in memory).
    pub fn new(max_t: usize, max_pos: usize, d: usize, head_dim: usize) -> Result<Self> {
        Ok(Self {
            q: zeros(&[max_t, d], "attention queries")?,
            k: zeros(&[max_t, d], "attention keys")?,
            v: zeros(&[max_t, d], "attention values")?,
            o: zeros(&[max_t, d], "attention output")?,
            scores: zeros(&[max_t, max_pos], "attention scores")?,
            qh: zeros(&[max_t, head_dim], "attention head queries")?,
            kh: zeros(&[max_pos, head_dim], "attention head keys")?,
            vt: zeros(&[head_dim, max_pos], "attention head values")?,
            oh: zeros(&[max_t, head_dim], "attention head output")?,
        })
    }
}

/// From this many new positions on, attention runs as two GEMMs per head (scores, then
/// probabilities x values) instead of per-query dot products: in a 173-token prefill the
/// loops were 53% of the forward pass's instructions.
const GEMM_MIN_QUERIES: usize = 8;

/// `out (t, d) = Attn(x (t, d))` for positions `start..start + t`; appends this chunk's keys
/// and values to `k_cache` / `v_cache` (`(max_pos, d)` of this layer).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    w: &LayerWeights,
    rope: &Rope,
    n_heads: usize,
    x: &[f32],
    t: usize,
    start: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    s: &mut AttnScratch,
    out: &mut [f32],
) {
    let d = w.input_norm.len();
    let hd = d / n_heads;
    let (q, k, v) = (&mut s.q[..t * d], &mut s.k[..t * d], &mut s.v[..t * d]);
    linear(q, x, &w.wq, t, d, d);
    linear(k, x, &w.wk, t, d, d);
    linear(v, x, &w.wv, t, d, d);
    for i in 0..t {
        for h in 0..n_heads {
            rope.apply(&mut q[i * d + h * hd..i * d + (h + 1) * hd], start + i);
            rope.apply(&mut k[i * d + h * hd..i * d + (h + 1) * hd], start + i);
        }
    }
    k_cache[start * d..(start + t) * d].copy_from_slice(k);
    v_cache[start * d..(start + t) * d].copy_from_slice(v);
    let scale = 1.0 / (hd as f32).sqrt();
    let keys = start + t;
    if t >= GEMM_MIN_QUERIES {
        for h in 0..n_heads {
            let cols = h * hd..(h + 1) * hd;
            for i in 0..t {
                s.qh[i * hd..(i + 1) * hd].copy_from_slice(&q[i * d..][cols.clone()]);
            }
            for j in 0..keys {
                s.kh[j * hd..(j + 1) * hd].copy_from_slice(&k_cache[j * d..][cols.clone()]);
                for (c, &x) in v_cache[j * d..][cols.clone()].iter().enumerate() {
                    s.vt[c * keys + j] = x;
                }
            }
            let scores = &mut s.scores[..t * keys];
            linear(scores, &s.qh[..t * hd], &s.kh[..keys * hd], t, hd, keys);
            for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
                // Causal: query start + i sees keys 0..=start + i.
                let visible = &mut row[..=start + i];
                for x in visible.iter_mut() {
                    *x *= scale;
                }
                softmax(visible);
                row[start + i + 1..].fill(0.0);
            }
            linear(&mut s.oh[..t * hd], scores, &s.vt[..hd * keys], t, keys, hd);
            for i in 0..t {
                s.o[i * d..][cols.clone()].copy_from_slice(&s.oh[i * hd..(i + 1) * hd]);
            }
        }
    } else {
        for i in 0..t {
            let pos = start + i;
            for h in 0..n_heads {
                let qh = &q[i * d + h * hd..i * d + (h + 1) * hd];
                let scores = &mut s.scores[..=pos];
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kh = &k_cache[j * d + h * hd..j * d + (h + 1) * hd];
                    *sc = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                softmax(scores);
                let oh = &mut s.o[i * d + h * hd..i * d + (h + 1) * hd];
                oh.fill(0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let vh = &v_cache[j * d + h * hd..j * d + (h + 1) * hd];
                    for (a, &b) in oh.iter_mut().zip(vh) {
                        *a += p * b;
                    }
                }
            }
        }
    }
    let o = &s.o[..t * d];
    linear(out, o, &w.wo, t, d, d);
}
