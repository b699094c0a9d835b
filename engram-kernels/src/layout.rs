//! Validated configuration and the derived per-layer layout: multipliers, primes, offsets.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, invalid};
use crate::primes::next_unused_prime;
use crate::rng::numpy_integers;

/// Largest supported n-gram order; the published configurations use 3 and 4.
pub const MAX_NGRAM_LIMIT: usize = 32;
/// Largest supported number of hash heads per order; the published configurations use 8.
pub const MAX_HEADS_LIMIT: usize = 1024;
/// Seed offset per layer id used by the reference (`seed + 10007 * layer_id`).
pub const LAYER_SEED_STRIDE: u128 = 10_007;

/// The addressing configuration of an Engram model (`engram_demo_v1.py`'s `EngramConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngramConfig {
    /// Largest n-gram order `N`; orders `2..=N` are hashed.
    pub max_ngram: usize,
    /// Hash heads per order `K`.
    pub n_heads: usize,
    /// Base table size per order, for orders `2..=N` (`engram_vocab_size`).
    pub base_sizes: Vec<u64>,
    /// Engram layer ids, in the order used for prime assignment.
    pub layer_ids: Vec<u64>,
    /// Hash seed.
    pub seed: u64,
    /// Raw id used for left padding (compressed before use).
    pub pad_id: i64,
}

impl EngramConfig {
    /// The official demo: orders 2..3, 8 heads, 5 x 129,280 rows per head, layers 1 and 15.
    pub fn demo() -> Self {
        Self {
            max_ngram: 3,
            n_heads: 8,
            base_sizes: vec![646_400; 2],
            layer_ids: vec![1, 15],
            seed: 0,
            pad_id: 2,
        }
    }

    /// The paper's Engram-27B: orders 2..3, 8 heads, 2,262,400 rows per head, layers 2 and 15.
    pub fn engram27b() -> Self {
        Self {
            max_ngram: 3,
            n_heads: 8,
            base_sizes: vec![2_262_400; 2],
            layer_ids: vec![2, 15],
            seed: 0,
            pad_id: 2,
        }
    }

    /// The reported DeepSeek-V4.1-Flash shape: orders 2..4, 8 heads, 16 M rows per head,
    /// layers 1 and 14 (384,006,168 and 384,016,682 rows).
    pub fn v41() -> Self {
        Self {
            max_ngram: 4,
            n_heads: 8,
            base_sizes: vec![16_000_000; 3],
            layer_ids: vec![1, 14],
            seed: 0,
            pad_id: 2,
        }
    }

    /// Number of hash heads per position and layer, `(N - 1) * K`.
    pub fn n_hash_heads(&self) -> usize {
        (self.max_ngram - 1) * self.n_heads
    }

    /// Checks every field; all other methods assume a validated config.
    pub fn validate(&self) -> Result<()> {
        if self.max_ngram < 2 {
            return Err(invalid(
                "max_ngram",
                self.max_ngram,
                "must be at least 2 (orders 2..=N are hashed; there is no unigram table)",
            ));
        }
        if self.max_ngram > MAX_NGRAM_LIMIT {
            return Err(invalid("max_ngram", self.max_ngram, "must be at most 32"));
        }
        if self.n_heads == 0 {
            return Err(invalid("n_heads", 0, "must be at least 1"));
        }
        if self.n_heads > MAX_HEADS_LIMIT {
            return Err(invalid("n_heads", self.n_heads, "must be at most 1024"));
        }
        if self.base_sizes.len() != self.max_ngram - 1 {
            return Err(invalid(
                "base_sizes",
                format!("{:?}", self.base_sizes),
                "needs exactly one entry per order 2..=max_ngram",
            ));
        }
        if let Some(bad) = self.base_sizes.iter().find(|&&s| s == 0 || s >= 1 << 62) {
            return Err(invalid("base_sizes", bad, "each size must be in 1..2^62"));
        }
        if self.layer_ids.is_empty() {
            return Err(invalid(
                "layer_ids",
                "[]",
                "at least one Engram layer is needed",
            ));
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.layer_ids.iter().find(|&&l| !seen.insert(l)) {
            return Err(invalid("layer_ids", dup, "layer ids must be distinct"));
        }
        Ok(())
    }
}

/// Everything needed to address one Engram layer's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerLayout {
    /// The layer id `L` as written in the config.
    pub layer_id: u64,
    /// `seed + 10007 * L`, the generator seed of the multipliers.
    pub rng_seed: u128,
    /// One odd multiplier per lag `k = 0..N-1`.
    pub multipliers: Vec<i64>,
    /// Table size of every head, order-major: `(N - 1) * K` primes.
    pub primes: Vec<u64>,
    /// First row of every head's sub-table (exclusive prefix sums of `primes`).
    pub offsets: Vec<u64>,
    /// Rows of the layer's single table.
    pub total_rows: u64,
}

impl LayerLayout {
    /// The primes of order `n` (`2..=N`), one per head.
    pub fn primes_of_order(&self, n: usize, n_heads: usize) -> &[u64] {
        &self.primes[(n - 2) * n_heads..(n - 1) * n_heads]
    }
}

/// The full addressing layout of a model: config, compressed vocabulary and every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngramLayout {
    /// The config the layout was derived from.
    pub config: EngramConfig,
    /// `V'`, the number of canonical ids after compression.
    pub compressed_vocab_size: u64,
    /// `pad' = P[pad_id]`.
    pub compressed_pad_id: i64,
    /// Exclusive bound of the raw multiplier draws.
    pub half_bound: u64,
    /// One entry per `config.layer_ids`, same order.
    pub layers: Vec<LayerLayout>,
}

/// `max(1, floor(floor((2^63 - 1) / V') / 2))`.
pub fn half_bound(compressed_vocab_size: u64) -> Result<u64> {
    if compressed_vocab_size == 0 {
        return Err(invalid("compressed_vocab_size", 0, "must be at least 1"));
    }
    Ok(((i64::MAX as u64 / compressed_vocab_size) / 2).max(1))
}

/// The per-layer multipliers `m[k] = 2 * r[k] + 1`.
pub fn multipliers(
    seed: u64,
    layer_id: u64,
    max_ngram: usize,
    compressed_vocab_size: u64,
) -> Result<Vec<i64>> {
    let bound = half_bound(compressed_vocab_size)?;
    let rng_seed = u128::from(seed) + LAYER_SEED_STRIDE * u128::from(layer_id);
    numpy_integers(rng_seed, bound, max_ngram)
        .into_iter()
        .map(|r| {
            // r < bound <= 2^62, so 2r + 1 < 2^63.
            i64::try_from(2 * r + 1).map_err(|_| Error::Overflow { what: "multiplier" })
        })
        .collect()
}

impl EngramLayout {
    /// Derives the layout; `compressed_pad_id` is `P[pad_id]` from the compression table.
    pub fn new(
        config: &EngramConfig,
        compressed_vocab_size: u64,
        compressed_pad_id: i64,
    ) -> Result<Self> {
        config.validate()?;
        let half_bound = half_bound(compressed_vocab_size)?;
        let mut used = HashSet::new();
        let mut layers = Vec::with_capacity(config.layer_ids.len());
        for &layer_id in &config.layer_ids {
            let multipliers = multipliers(
                config.seed,
                layer_id,
                config.max_ngram,
                compressed_vocab_size,
            )?;
            let mut primes = Vec::with_capacity(config.n_hash_heads());
            for &base in &config.base_sizes {
                let mut cursor = base - 1;
                for _ in 0..config.n_heads {
                    let p = next_unused_prime(cursor, &used).ok_or(Error::Overflow {
                        what: "table prime",
                    })?;
                    used.insert(p);
                    primes.push(p);
                    cursor = p;
                }
            }
            let mut offsets = Vec::with_capacity(primes.len());
            let mut total: u64 = 0;
            for &p in &primes {
                offsets.push(total);
                total = total
                    .checked_add(p)
                    .ok_or(Error::Overflow { what: "total rows" })?;
            }
            layers.push(LayerLayout {
                layer_id,
                rng_seed: u128::from(config.seed) + LAYER_SEED_STRIDE * u128::from(layer_id),
                multipliers,
                primes,
                offsets,
                total_rows: total,
            });
        }
        Ok(Self {
            config: config.clone(),
            compressed_vocab_size,
            compressed_pad_id,
            half_bound,
            layers,
        })
    }

    /// Index of `layer_id` in `layers`.
    pub fn layer_index(&self, layer_id: u64) -> Result<usize> {
        self.layers
            .iter()
            .position(|l| l.layer_id == layer_id)
            .ok_or_else(|| Error::UnknownLayer {
                layer_id,
                known: self.config.layer_ids.clone(),
            })
    }

    /// The layout of `layer_id`.
    pub fn layer(&self, layer_id: u64) -> Result<&LayerLayout> {
        Ok(&self.layers[self.layer_index(layer_id)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v41_row_counts_match_reports() {
        let layout = EngramLayout::new(&EngramConfig::v41(), 99_092, 2).expect("valid");
        let rows: Vec<u64> = layout.layers.iter().map(|l| l.total_rows).collect();
        assert_eq!(rows, [384_006_168, 384_016_682]);
    }

    #[test]
    fn demo_rows_per_layer() {
        let layout = EngramLayout::new(&EngramConfig::demo(), 99_092, 2).expect("valid");
        let rows: Vec<u64> = layout.layers.iter().map(|l| l.total_rows).collect();
        assert_eq!(rows, [10_344_164, 10_348_242]);
        assert_eq!(layout.half_bound, 46_539_438_283_891);
    }

    #[test]
    fn rejects_bad_configs() {
        let base = EngramConfig::demo();
        let cases: Vec<(EngramConfig, &str)> = vec![
            (
                EngramConfig {
                    max_ngram: 1,
                    base_sizes: vec![],
                    ..base.clone()
                },
                "max_ngram",
            ),
            (
                EngramConfig {
                    n_heads: 0,
                    ..base.clone()
                },
                "n_heads",
            ),
            (
                EngramConfig {
                    base_sizes: vec![10],
                    ..base.clone()
                },
                "base_sizes",
            ),
            (
                EngramConfig {
                    base_sizes: vec![0, 10],
                    ..base.clone()
                },
                "base_sizes",
            ),
            (
                EngramConfig {
                    layer_ids: vec![],
                    ..base.clone()
                },
                "layer_ids",
            ),
            (
                EngramConfig {
                    layer_ids: vec![3, 3],
                    ..base.clone()
                },
                "layer_ids",
            ),
        ];
        for (config, field) in cases {
            let err = EngramLayout::new(&config, 100, 2).expect_err("must be rejected");
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
        assert!(EngramLayout::new(&base, 0, 2).is_err());
    }
}
