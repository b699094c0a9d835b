//! Multi-head n-gram hashing: canonical ids `[B][T]` -> head indices or row ids
//! `[B][T][(N-1)*K]` (`ENGRAM-SPEC.md` sections 3 and 6).
//!
//! The fast path computes each order's mix once per position (all K heads of an order
//! share it) and reduces it by every head's prime with a precomputed reciprocal
//! ([`FastMod`]), so the inner loop has no division. It is property-tested against
//! [`crate::reference::head_indices`].

use crate::error::{Error, Result};
use crate::fastmod::FastMod;
use crate::layout::{EngramLayout, LayerLayout};

/// Options that change hashing semantics. The default reproduces the reference exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashOptions {
    /// Opt-in look-back barrier (off by default). A position holding this canonical id, and
    /// every position before it, is treated like a position before the start of the
    /// sequence (it reads as the padding id) for every n-gram that would reach back across
    /// it; the barrier position itself hashes as all-padding.
    ///
    /// This is our reading of third-party reports that DeepSeek-V4.1 deployments stop the
    /// n-gram look-back at id `-1` (per-request histories, masked non-text positions). The
    /// official demo has no barrier: it hashes `-1` as a number, which is what `None` does.
    pub barrier_id: Option<i64>,
}

/// What the hasher writes per head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashOutput {
    /// The index inside the head's own table, in `[0, prime)`.
    HeadIndex,
    /// The row in the layer's single table: head index + head offset.
    RowId,
}

/// One layer's hashing constants, prepared for the fast path.
#[derive(Debug, Clone)]
struct LayerHasher {
    layer_id: u64,
    multipliers: Vec<i64>,
    // (heads,) order-major
    divisors: Vec<FastMod>,
    offsets: Vec<u64>,
}

/// A prepared hasher for every layer of an [`EngramLayout`].
#[derive(Debug, Clone)]
pub struct NgramHasher {
    max_ngram: usize,
    n_heads: usize,
    pad: i64,
    options: HashOptions,
    layers: Vec<LayerHasher>,
}

impl NgramHasher {
    /// Prepares reciprocals for every prime of every layer.
    pub fn new(layout: &EngramLayout, options: HashOptions) -> Result<Self> {
        let layers = layout
            .layers
            .iter()
            .map(|l: &LayerLayout| {
                let divisors = l
                    .primes
                    .iter()
                    .map(|&p| FastMod::new(p).ok_or(Error::Overflow { what: "prime < 2" }))
                    .collect::<Result<Vec<_>>>()?;
                Ok(LayerHasher {
                    layer_id: l.layer_id,
                    multipliers: l.multipliers.clone(),
                    divisors,
                    offsets: l.offsets.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            max_ngram: layout.config.max_ngram,
            n_heads: layout.config.n_heads,
            pad: layout.compressed_pad_id,
            options,
            layers,
        })
    }

    /// Hash heads per position, `(N - 1) * K`.
    pub fn n_hash_heads(&self) -> usize {
        (self.max_ngram - 1) * self.n_heads
    }

    /// Largest n-gram order `N`.
    pub fn max_ngram(&self) -> usize {
        self.max_ngram
    }

    /// The options this hasher applies.
    pub fn options(&self) -> HashOptions {
        self.options
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer ids in layout order.
    pub fn layer_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.layers.iter().map(|l| l.layer_id)
    }

    /// Hashes canonical ids `ids` (`[batch][seq_len]`, row-major) for the layer at
    /// `layer_index` into `out` (`[batch][seq_len][(N-1)*K]`).
    pub fn hash_into(
        &self,
        layer_index: usize,
        ids: &[i64],
        batch: usize,
        seq_len: usize,
        kind: HashOutput,
        out: &mut [u64],
    ) -> Result<()> {
        let layer = self.layer(layer_index)?;
        if batch == 0 || seq_len == 0 {
            return Err(Error::EmptyBatch {
                what: "hashing needs at least one row and one position",
            });
        }
        let tokens = batch.checked_mul(seq_len).ok_or(Error::Overflow {
            what: "batch * seq_len",
        })?;
        if ids.len() != tokens {
            return Err(Error::Shape {
                what: "ids [batch][seq_len]",
                expected: tokens,
                found: ids.len(),
            });
        }
        let heads = self.n_hash_heads();
        let expected = tokens.checked_mul(heads).ok_or(Error::Overflow {
            what: "output length",
        })?;
        if out.len() != expected {
            return Err(Error::Shape {
                what: "output [batch][seq_len][heads]",
                expected,
                found: out.len(),
            });
        }
        for (row, out_row) in ids
            .chunks_exact(seq_len)
            .zip(out.chunks_exact_mut(seq_len * heads))
        {
            self.hash_row(layer, row, kind, out_row);
        }
        Ok(())
    }

    /// Hashes only the last position of `window` (the most recent `<= N` canonical ids of a
    /// sequence, oldest first; fewer than N means the sequence started inside the window).
    /// This is the decode-time form: `out` has `(N-1)*K` entries.
    pub fn hash_last_into(
        &self,
        layer_index: usize,
        window: &[i64],
        kind: HashOutput,
        out: &mut [u64],
    ) -> Result<()> {
        let window = &window[window.len().saturating_sub(self.max_ngram)..];
        if window.is_empty() {
            return Err(Error::EmptyBatch {
                what: "decode hashing needs the current token",
            });
        }
        let layer = self.layer(layer_index)?;
        if out.len() != self.n_hash_heads() {
            return Err(Error::Shape {
                what: "output [heads]",
                expected: self.n_hash_heads(),
                found: out.len(),
            });
        }
        let start = self.start_after_barrier(window, window.len() - 1);
        self.hash_position(layer, window, window.len() - 1, start, kind, out);
        Ok(())
    }

    fn layer(&self, layer_index: usize) -> Result<&LayerHasher> {
        self.layers
            .get(layer_index)
            .ok_or_else(|| Error::UnknownLayer {
                layer_id: layer_index as u64,
                known: self.layer_ids().collect(),
            })
    }

    fn start_after_barrier(&self, row: &[i64], t: usize) -> usize {
        match self.options.barrier_id {
            Some(bar) => {
                let lo = (t + 1).saturating_sub(self.max_ngram);
                (lo..=t).rev().find(|&i| row[i] == bar).map_or(0, |i| i + 1)
            }
            None => 0,
        }
    }

    fn hash_row(&self, layer: &LayerHasher, row: &[i64], kind: HashOutput, out: &mut [u64]) {
        let heads = self.n_hash_heads();
        let mut start = 0usize;
        for (t, out_t) in out.chunks_exact_mut(heads).enumerate() {
            if self.options.barrier_id == Some(row[t]) {
                start = t + 1;
            }
            self.hash_position(layer, row, t, start, kind, out_t);
        }
    }

    /// Hashes position `t` of `row`; ids before `start` read as padding.
    #[inline(always)]
    fn hash_position(
        &self,
        layer: &LayerHasher,
        row: &[i64],
        t: usize,
        start: usize,
        kind: HashOutput,
        out: &mut [u64],
    ) {
        let k_heads = self.n_heads;
        let mut mix: i64 = 0;
        for k in 0..self.max_ngram {
            let x = if t >= k && t - k >= start {
                row[t - k]
            } else {
                self.pad
            };
            mix ^= x.wrapping_mul(layer.multipliers[k]);
            if k == 0 {
                continue;
            }
            // `mix` now covers order n = k + 1; its heads are (n - 2) * K .. (n - 1) * K.
            let lo = (k - 1) * k_heads;
            let divs = &layer.divisors[lo..lo + k_heads];
            let dst = &mut out[lo..lo + k_heads];
            match kind {
                HashOutput::HeadIndex => {
                    for (o, d) in dst.iter_mut().zip(divs) {
                        *o = d.rem_euclid_i64(mix);
                    }
                }
                HashOutput::RowId => {
                    let offs = &layer.offsets[lo..lo + k_heads];
                    for ((o, d), off) in dst.iter_mut().zip(divs).zip(offs) {
                        *o = d.rem_euclid_i64(mix) + off;
                    }
                }
            }
        }
    }
}

/// The per-order mixes `mix_n` (n = 2..=N) of every position, `[B][T][N-1]`, for debugging
/// and the conformance vectors' optional `mix` field. Same padding and barrier rules as
/// [`NgramHasher`].
pub fn mixes(
    layer: &LayerLayout,
    max_ngram: usize,
    compressed_pad_id: i64,
    options: HashOptions,
    ids: &[i64],
    seq_len: usize,
) -> Vec<i64> {
    let mut out = Vec::with_capacity(ids.len() * (max_ngram - 1));
    for row in ids.chunks(seq_len.max(1)) {
        let mut start = 0usize;
        for t in 0..row.len() {
            if options.barrier_id == Some(row[t]) {
                start = t + 1;
            }
            let mut mix: i64 = 0;
            for k in 0..max_ngram {
                let x = if t >= k && t - k >= start {
                    row[t - k]
                } else {
                    compressed_pad_id
                };
                mix ^= x.wrapping_mul(layer.multipliers[k]);
                if k > 0 {
                    out.push(mix);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::layout::EngramConfig;
    use crate::reference;

    fn layout_strategy() -> impl Strategy<Value = EngramLayout> {
        (
            2usize..=5,
            1usize..=8,
            1u64..5000,
            1u64..300_000,
            0u64..(1 << 40),
            -3i64..50,
        )
            .prop_flat_map(|(n, k, base, vocab, seed, pad)| {
                (
                    proptest::collection::vec(1u64..base + 1, n - 1),
                    proptest::collection::vec(0u64..40, 1..3),
                )
                    .prop_map(move |(base_sizes, mut layer_ids)| {
                        layer_ids.sort_unstable();
                        layer_ids.dedup();
                        let config = EngramConfig {
                            max_ngram: n,
                            n_heads: k,
                            base_sizes,
                            layer_ids,
                            seed,
                            pad_id: pad,
                        };
                        EngramLayout::new(&config, vocab, pad).expect("valid by construction")
                    })
            })
    }

    fn ids_strategy() -> impl Strategy<Value = (usize, usize, Vec<i64>)> {
        (1usize..4, 1usize..40).prop_flat_map(|(b, t)| {
            let id = prop_oneof![
                8 => 0i64..300_000,
                1 => any::<i64>(),
                1 => -3i64..0,
            ];
            (Just(b), Just(t), proptest::collection::vec(id, b * t))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn fast_matches_reference(
            layout in layout_strategy(),
            (batch, seq, ids) in ids_strategy(),
            barrier in prop_oneof![Just(None), Just(Some(-1i64)), Just(Some(0i64))],
        ) {
            let options = HashOptions { barrier_id: barrier };
            let hasher = NgramHasher::new(&layout, options).expect("layout is valid");
            let heads = hasher.n_hash_heads();
            for (li, layer) in layout.layers.iter().enumerate() {
                let want = reference::head_indices(
                    layer, layout.config.max_ngram, layout.config.n_heads,
                    layout.compressed_pad_id, barrier, &ids, batch, seq);
                let mut got = vec![0u64; batch * seq * heads];
                hasher.hash_into(li, &ids, batch, seq, HashOutput::HeadIndex, &mut got)
                    .expect("shapes agree");
                prop_assert_eq!(&got, &want);
                hasher.hash_into(li, &ids, batch, seq, HashOutput::RowId, &mut got)
                    .expect("shapes agree");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert_eq!(*g, w + layer.offsets[i % heads]);
                }
                // Decode form: the last position from a window of the most recent ids.
                for b in 0..batch {
                    let row = &ids[b * seq..(b + 1) * seq];
                    let mut last = vec![0u64; heads];
                    hasher.hash_last_into(li, row, HashOutput::HeadIndex, &mut last)
                        .expect("shapes agree");
                    let off = (b * seq + seq - 1) * heads;
                    prop_assert_eq!(&last[..], &want[off..off + heads]);
                }
            }
        }
    }

    #[test]
    fn barrier_blocks_look_back() {
        let config = EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![101, 103],
            layer_ids: vec![0],
            seed: 1,
            pad_id: 0,
        };
        let layout = EngramLayout::new(&config, 1000, 0).expect("valid");
        let hasher = NgramHasher::new(
            &layout,
            HashOptions {
                barrier_id: Some(-1),
            },
        )
        .expect("valid");
        let plain = NgramHasher::new(&layout, HashOptions::default()).expect("valid");
        let heads = hasher.n_hash_heads();
        let mut with_barrier = vec![0u64; 5 * heads];
        hasher
            .hash_into(
                0,
                &[7, 8, -1, 9, 10],
                1,
                5,
                HashOutput::HeadIndex,
                &mut with_barrier,
            )
            .expect("shapes");
        let mut fresh = vec![0u64; 2 * heads];
        plain
            .hash_into(0, &[9, 10], 1, 2, HashOutput::HeadIndex, &mut fresh)
            .expect("shapes");
        // After the barrier the sequence behaves as if it started fresh at id 9.
        assert_eq!(&with_barrier[3 * heads..], &fresh[..]);
        let mut all_pad = vec![0u64; heads];
        plain
            .hash_into(0, &[0], 1, 1, HashOutput::HeadIndex, &mut all_pad)
            .expect("shapes");
        assert_eq!(&with_barrier[2 * heads..3 * heads], &all_pad[..]);
    }

    #[test]
    fn shape_errors() {
        let layout = EngramLayout::new(&EngramConfig::demo(), 99_092, 2).expect("valid");
        let hasher = NgramHasher::new(&layout, HashOptions::default()).expect("valid");
        let mut out = vec![0u64; 16];
        assert!(matches!(
            hasher.hash_into(0, &[], 0, 0, HashOutput::RowId, &mut out),
            Err(Error::EmptyBatch { .. })
        ));
        assert!(matches!(
            hasher.hash_into(0, &[1, 2], 1, 1, HashOutput::RowId, &mut out),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            hasher.hash_into(0, &[1], 1, 1, HashOutput::RowId, &mut out[..3]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            hasher.hash_into(5, &[1], 1, 1, HashOutput::RowId, &mut out),
            Err(Error::UnknownLayer { .. })
        ));
    }
}
