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
