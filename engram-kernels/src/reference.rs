//! Naive reference implementations: the semantics, written as the spec states them.
//!
//! Nothing here is fast. Every optimised routine in the crate is tested against these.

use crate::layout::LayerLayout;

/// Head indices for one layer, `[B][T][(N-1)*K]`, recomputing every n-gram from scratch
/// with hardware division. `barrier`: see [`crate::hash::HashOptions::barrier_id`].
#[allow(clippy::too_many_arguments)]
pub fn head_indices(
    layer: &LayerLayout,
    max_ngram: usize,
    n_heads: usize,
    compressed_pad_id: i64,
    barrier: Option<i64>,
    ids: &[i64],
    batch: usize,
    seq_len: usize,
) -> Vec<u64> {
    let heads = (max_ngram - 1) * n_heads;
    let mut out = vec![0u64; batch * seq_len * heads];
    for b in 0..batch {
        let row = &ids[b * seq_len..(b + 1) * seq_len];
        for t in 0..seq_len {
            // First position whose id may be read: just after the last barrier at or before t.
            let start = match barrier {
                Some(bar) => (0..=t).rev().find(|&i| row[i] == bar).map_or(0, |i| i + 1),
                None => 0,
            };
            for n in 2..=max_ngram {
                let mut mix: i64 = 0;
                for k in 0..n {
                    let x = if t >= k && t - k >= start {
                        row[t - k]
                    } else {
                        compressed_pad_id
                    };
                    mix ^= x.wrapping_mul(layer.multipliers[k]);
                }
                for j in 0..n_heads {
                    let head = (n - 2) * n_heads + j;
                    let p = layer.primes[head] as i128;
                    let idx = i128::from(mix).rem_euclid(p) as u64;
                    out[(b * seq_len + t) * heads + head] = idx;
                }
            }
        }
    }
    out
}

/// Compression, element by element.
pub fn compress(lookup: &[u32], raw: &[i64]) -> Option<Vec<i64>> {
    raw.iter()
        .map(|&x| {
            if x < 0 {
                Some(x)
            } else {
                lookup.get(usize::try_from(x).ok()?).map(|&c| i64::from(c))
            }
        })
        .collect()
}

/// The Engram module forward pass written as the conformance README states it, step by
/// step, one position and one branch at a time, with float64 accumulation and every
/// intermediate rounded to float32 where the reference stores it. Shapes as in
/// [`crate::engram_module`]; the inputs must have been validated (this is the semantics, not an
/// API: it indexes without checks and panics on bad shapes).
pub fn engram_forward(
    config: &crate::engram_module::EngramModuleConfig,
    w: &crate::engram_module::EngramModuleWeights,
    e: &[f32],
    hidden: &[f32],
    batch: usize,
    seq_len: usize,
) -> crate::engram_module::ForwardTrace {
    use crate::gate::SCORE_CLAMP_MIN;
    let (d, m, dm) = (config.hidden_size, config.hc_mult, config.d_mem);
    let (kw, dil) = (config.kernel_size, config.dilation);
    let tokens = batch * seq_len;
    let linear = |wt: &[f32], bias: &[f32], x: &[f32]| -> Vec<f32> {
        (0..d)
            .map(|o| {
                let mut acc = 0f64;
                for i in 0..dm {
                    acc += f64::from(wt[o * dm + i]) * f64::from(x[i]);
                }
                let b = if bias.is_empty() {
                    0.0
                } else {
                    f64::from(bias[o])
                };
                (acc + b) as f32
            })
            .collect()
    };
    let rmsnorm = |x: &[f32], g: &[f32], eps: f32| -> Vec<f32> {
        let ms: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + f64::from(eps)).sqrt();
        x.iter()
            .zip(g)
            .map(|(&v, &g)| (f64::from(v) * r * f64::from(g)) as f32)
            .collect()
    };
    let mut tr = crate::engram_module::ForwardTrace::default();
    for tok in 0..tokens {
        let et = &e[tok * dm..(tok + 1) * dm];
        let v = linear(&w.value_proj_w, &w.value_proj_b, et);
        for b in 0..m {
            let k = linear(&w.key_proj_w[b], &w.key_proj_b[b], et);
            let h = &hidden[(tok * m + b) * d..(tok * m + b + 1) * d];
            let kn = rmsnorm(&k, &w.norm1[b], config.key_norm_eps);
            let qn = rmsnorm(h, &w.norm2[b], config.key_norm_eps);
            let dot: f64 = kn
                .iter()
                .zip(&qn)
                .map(|(&a, &c)| f64::from(a) * f64::from(c))
                .sum();
            let s = (dot / (d as f64).sqrt()) as f32;
            let logit = if s == 0.0 {
                0.0
            } else {
                let mag = f64::from(s.abs().max(SCORE_CLAMP_MIN)).sqrt();
                (if s > 0.0 { mag } else { -mag }) as f32
            };
            let alpha = (1.0 / (1.0 + (-f64::from(logit)).exp())) as f32;
            let u: Vec<f32> = v.iter().map(|&x| alpha * x).collect();
            // Without the convolution (kernel_size 0, V4.1) nothing is normalised: y = u.
            let x = match w.conv_norm.get(b) {
                Some(g) if kw > 0 => rmsnorm(&u, g, config.conv_norm_eps),
                _ => vec![0.0; d],
            };
            tr.k.extend_from_slice(&k);
            tr.k_normed.extend_from_slice(&kn);
            tr.q_normed.extend_from_slice(&qn);
            tr.s.push(s);
            tr.gate_logit.push(logit);
            tr.alpha.push(alpha);
            tr.u.extend_from_slice(&u);
            tr.conv_in_normed.extend_from_slice(&x);
        }
        tr.v.extend_from_slice(&v);
    }
    // Convolution over time, per sequence and channel c = m * d + i.
    let ch = m * d;
    tr.conv_pre_act = vec![0.0; tokens * ch];
    for b in 0..batch {
        for t in 0..seq_len {
            for c in 0..ch {
                let mut acc = 0f64;
                for j in 0..kw {
                    let lag = (kw - 1 - j) * dil;
                    if lag <= t {
                        let x = tr.conv_in_normed[(b * seq_len + t - lag) * ch + c];
                        acc += f64::from(w.conv_w[c * kw + j]) * f64::from(x);
                    }
                }
                tr.conv_pre_act[(b * seq_len + t) * ch + c] = acc as f32;
            }
        }
    }
    tr.conv_out = tr
        .conv_pre_act
        .iter()
        .map(|&z| (f64::from(z) / (1.0 + (-f64::from(z)).exp())) as f32)
        .collect();
    tr.y = tr.u.iter().zip(&tr.conv_out).map(|(u, c)| u + c).collect();
    tr
}
