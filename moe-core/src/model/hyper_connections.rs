//! Manifold-constrained hyper-connections (mHC, ENGRAM-SPEC section 15): the residual is
//! `M` streams per position, `X (t, M, d)`. Around each sublayer `F`:
//!
//! ```text
//! mixes = (flatten(X) fn^T) * rsqrt(mean(flatten(X)^2) + norm_eps)   -> a (M), b (M), c (M, M)
//! pre_i  = sigmoid(a_i scale[0] + base_i) + eps
//! post_j = 2 sigmoid(b_j scale[1] + base_{M+j})
//! comb   = Sinkhorn(softmax_j(c_ij scale[2] + base_{2M+iM+j}) + eps)      (doubly stochastic)
//! y = sum_i pre_i X_i ;  f = F(y) ;  X'_j = post_j f + sum_i comb_ij X_i
//! ```
//!
//! and before the final norm `sum_i w_i X_i` with `w_i = sigmoid(g_i scale + base_i) + eps`.
//! Every buffer is in [`HyperScratch`], sized once for the state's chunk length, so a
//! decode step allocates nothing. The arithmetic follows `tools/train/model.py` operation
//! for operation in f32.

use super::ops::linear;
use crate::config::HyperConfig;
use crate::weights::HyperWeights;

/// Buffers of the hyper-connection steps for up to `max_t` positions.
#[derive(Debug)]
pub struct HyperScratch {
    mixes: Vec<f32>, // (max_t, (2 + M) M)
    pre: Vec<f32>,   // (max_t, M)
    post: Vec<f32>,  // (max_t, M)
    comb: Vec<f32>,  // (max_t, M, M)
    /// The sublayer (or head) input, `(max_t, d)`.
    pub y: Vec<f32>,
    row: Vec<f32>, // (M, d): one position's new streams
}

impl HyperScratch {
    /// Buffers for `max_t` positions of `m` streams of width `d`.
    pub fn new(max_t: usize, m: usize, d: usize) -> Self {
        Self {
            mixes: vec![0.0; max_t * (2 + m) * m],
            pre: vec![0.0; max_t * m],
            post: vec![0.0; max_t * m],
            comb: vec![0.0; max_t * m * m],
            y: vec![0.0; max_t * d],
            row: vec![0.0; m * d],
        }
    }
}

#[inline]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// `out (t, rows) = (x fn^T) * rsqrt(mean(x^2) + norm_eps)` per position, `x (t, M d)`.
fn mixes(out: &mut [f32], x: &[f32], fn_: &[f32], t: usize, md: usize, rows: usize, eps: f32) {
    linear(out, x, fn_, t, md, rows);
    for (o, xr) in out.chunks_exact_mut(rows).zip(x.chunks_exact(md)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / md as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for v in o.iter_mut() {
            *v *= r;
        }
    }
}

/// Sinkhorn-Knopp on one `(m, m)` matrix of logits, in place: softmax over each row, plus
/// `eps`, columns normalised, then `iters - 1` rounds of rows then columns (each divided by
/// its sum + `eps`). Row `i` is the source stream, column `j` the destination.
pub fn sinkhorn(c: &mut [f32], m: usize, iters: usize, eps: f32) {
    for row in c.chunks_exact_mut(m) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v = *v / sum + eps;
        }
    }
    normalise_columns(c, m, eps);
    for _ in 1..iters {
        for row in c.chunks_exact_mut(m) {
            let sum = row.iter().sum::<f32>() + eps;
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
        normalise_columns(c, m, eps);
    }
}

fn normalise_columns(c: &mut [f32], m: usize, eps: f32) {
    for j in 0..m {
        let sum = (0..m).map(|i| c[i * m + j]).sum::<f32>() + eps;
        for i in 0..m {
            c[i * m + j] /= sum;
        }
    }
}

/// `y (t, d) = sum_i w_i x_i` with `w (t, M)`, `x (t, M, d)`.
fn weighted_sum(y: &mut [f32], w: &[f32], x: &[f32], m: usize, d: usize) {
    for ((yr, wr), xr) in y
        .chunks_exact_mut(d)
        .zip(w.chunks_exact(m))
        .zip(x.chunks_exact(m * d))
    {
        yr.fill(0.0);
        for (&wi, xi) in wr.iter().zip(xr.chunks_exact(d)) {
            for (a, &b) in yr.iter_mut().zip(xi) {
                *a += wi * b;
            }
        }
    }
}

/// Before a sublayer: computes `pre`, `post` and `comb` of every position of `x (t, M, d)`
/// and returns the sublayer input `y (t, d)`. [`leave`] then applies `post` and `comb`.
pub fn enter<'a>(
    w: &HyperWeights,
    c: &HyperConfig,
    x: &[f32],
    t: usize,
    d: usize,
    s: &'a mut HyperScratch,
) -> &'a [f32] {
    let m = c.streams;
    let rows = (2 + m) * m;
    let mixes_t = &mut s.mixes[..t * rows];
    mixes(mixes_t, x, &w.fn_, t, m * d, rows, c.norm_eps);
    let (base_pre, rest) = w.base.split_at(m);
    let (base_post, base_comb) = rest.split_at(m);
    for (p, mx) in mixes_t.chunks_exact(rows).enumerate() {
        let (a, rest) = mx.split_at(m);
        let (b, cc) = rest.split_at(m);
        for i in 0..m {
            s.pre[p * m + i] = sigmoid(a[i] * w.scale[0] + base_pre[i]) + c.eps;
            s.post[p * m + i] = 2.0 * sigmoid(b[i] * w.scale[1] + base_post[i]);
        }
        let comb = &mut s.comb[p * m * m..(p + 1) * m * m];
        for ((o, &v), &bias) in comb.iter_mut().zip(cc).zip(base_comb) {
            *o = v * w.scale[2] + bias;
        }
        sinkhorn(comb, m, c.sinkhorn_iters, c.eps);
    }
    let y = &mut s.y[..t * d];
    weighted_sum(y, &s.pre[..t * m], x, m, d);
    y
}

/// After a sublayer: `x'_j = post_j f + sum_i comb_ij x_i` for every position, in place,
/// with the coefficients [`enter`] computed. `x (t, M, d)`, `f (t, d)`.
pub fn leave(x: &mut [f32], f: &[f32], m: usize, d: usize, s: &mut HyperScratch) {
    let t = f.len() / d;
    for p in 0..t {
        let xp = &mut x[p * m * d..(p + 1) * m * d];
        let comb = &s.comb[p * m * m..(p + 1) * m * m];
        let fp = &f[p * d..(p + 1) * d];
        for (j, out) in s.row.chunks_exact_mut(d).enumerate() {
            out.fill(0.0);
            for (i, xi) in xp.chunks_exact(d).enumerate() {
                let cij = comb[i * m + j];
                for (a, &b) in out.iter_mut().zip(xi) {
                    *a += cij * b;
                }
            }
            let post = s.post[p * m + j];
            for (a, &b) in out.iter_mut().zip(fp) {
                *a += post * b;
            }
        }
        xp.copy_from_slice(&s.row);
    }
}

/// The head: `y (t, d) = sum_i w_i x_i`, `w_i = sigmoid(g_i scale + base_i) + eps`.
pub fn head<'a>(
    w: &HyperWeights,
    c: &HyperConfig,
    x: &[f32],
    t: usize,
    d: usize,
    s: &'a mut HyperScratch,
) -> &'a [f32] {
    let m = c.streams;
    let g = &mut s.mixes[..t * m];
    mixes(g, x, &w.fn_, t, m * d, m, c.norm_eps);
    for (wp, gr) in s.pre.chunks_exact_mut(m).zip(g.chunks_exact(m)) {
        for ((o, &gi), &bias) in wp.iter_mut().zip(gr).zip(&w.base) {
            *o = sigmoid(gi * w.scale[0] + bias) + c.eps;
        }
    }
    let y = &mut s.y[..t * d];
    weighted_sum(y, &s.pre[..t * m], x, m, d);
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float64 reference of one comb, written out as in the spec.
    fn sinkhorn_f64(logits: &[f64], m: usize, iters: usize, eps: f64) -> Vec<f64> {
        let mut c = vec![0f64; m * m];
        for i in 0..m {
            let row = &logits[i * m..(i + 1) * m];
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
            for j in 0..m {
                c[i * m + j] = (row[j] - max).exp() / sum + eps;
            }
        }
        let cols = |c: &mut Vec<f64>| {
            for j in 0..m {
                let s: f64 = (0..m).map(|i| c[i * m + j]).sum::<f64>() + eps;
                (0..m).for_each(|i| c[i * m + j] /= s);
            }
        };
        cols(&mut c);
        for _ in 1..iters {
            for i in 0..m {
                let s: f64 = c[i * m..(i + 1) * m].iter().sum::<f64>() + eps;
                c[i * m..(i + 1) * m].iter_mut().for_each(|v| *v /= s);
            }
            cols(&mut c);
        }
        c
    }

    #[test]
    fn sinkhorn_is_doubly_stochastic_and_matches_f64() {
        let m = 4;
        let logits: Vec<f64> = (0..m * m)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.3)
            .collect();
        let mut c: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
        sinkhorn(&mut c, m, 20, 1e-6);
        let want = sinkhorn_f64(&logits, m, 20, 1e-6);
        for (a, b) in c.iter().zip(&want) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{a} vs {b}");
        }
        for k in 0..m {
            let row: f32 = c[k * m..(k + 1) * m].iter().sum();
            let col: f32 = (0..m).map(|i| c[i * m + k]).sum();
            assert!((row - 1.0).abs() < 1e-3 && (col - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn unit_coefficients_are_a_plain_residual() {
        // M = 1, post = 1, comb = I: x' = x + f.
        let (m, d, t) = (1, 3, 2);
        let mut s = HyperScratch::new(t, m, d);
        s.post.fill(1.0);
        s.comb.fill(1.0);
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f = [0.5, -1.0, 2.0, 0.0, 1.0, -6.0];
        leave(&mut x, &f, m, d, &mut s);
        assert_eq!(x, vec![1.5, 1.0, 5.0, 4.0, 6.0, 0.0]);
    }

    #[test]
    fn streams_mix_through_comb_columns() {
        // Two streams, comb swaps them, post = (1, 0): x'_0 = f + x_1, x'_1 = x_0.
        let (m, d) = (2, 2);
        let mut s = HyperScratch::new(1, m, d);
        s.post.copy_from_slice(&[1.0, 0.0]);
        s.comb.copy_from_slice(&[0.0, 1.0, 1.0, 0.0]);
        let mut x = vec![1.0, 2.0, 10.0, 20.0];
        leave(&mut x, &[0.5, 0.25], m, d, &mut s);
        assert_eq!(x, vec![10.5, 20.25, 1.0, 2.0]);
    }
}
