//! The counting pipeline: read -> tokenize (parallel over documents) -> compress -> hash ->
//! count row hits per layer with exact counters.
//!
//! Counters are `u32` per row and saturate at `u32::MAX` (4,294,967,295 hits on one row);
//! a saturated row keeps its rank at the top and the summary reports how many saturated.
//! Counting is commutative, so the result is the same whatever the thread count.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use anyhow::{Context, Result};
use engram_kernels::hash::{HashOutput, NgramHasher};
use engram_kernels::{CompressionTable, EngramLayout};
use engram_store::profile::LayerProfile;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::corpus::{self, CorpusOptions, Skip, Source};

/// Hit counters of every row of every layer.
#[derive(Debug)]
pub struct Counters {
    // (layers,) each (total_rows,)
    layers: Vec<Vec<AtomicU32>>,
}

impl Counters {
    /// Zeroed counters for every layer of `layout`.
    pub fn new(layout: &EngramLayout) -> Result<Self> {
        let layers = layout
            .layers
            .iter()
            .map(|l| {
                let rows = usize::try_from(l.total_rows).context("table too large to count")?;
                Ok(std::iter::repeat_with(|| AtomicU32::new(0))
                    .take(rows)
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Bytes the counters occupy.
    pub fn bytes(layout: &EngramLayout) -> u64 {
        layout.layers.iter().map(|l| l.total_rows * 4).sum()
    }

    #[inline]
    fn hit(&self, layer: usize, row: u64) {
        let c = &self.layers[layer][row as usize];
        // Saturating increment: a plain fetch_add would wrap a hot row back to zero.
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1));
    }

    /// The counts of one layer.
    pub fn layer(&self, layer: usize) -> impl ExactSizeIterator<Item = u32> + '_ {
        self.layers[layer].iter().map(|c| c.load(Ordering::Relaxed))
    }
}

/// Live totals, readable while the pipeline runs (for progress).
#[derive(Debug, Default)]
pub struct Progress {
    pub sources_done: AtomicU64,
    pub bytes: AtomicU64,
    pub documents: AtomicU64,
    pub tokens: AtomicU64,
}

/// What the pipeline saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CountSummary {
    pub sources: u64,
    pub documents: u64,
    pub bytes: u64,
    pub tokens: u64,
    /// Skipped files or records, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Runs the pipeline over `sources` on the current rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn count(
    sources: &[Source],
    options: &CorpusOptions,
    tokenizer: &Tokenizer,
    table: &CompressionTable,
    layout: &EngramLayout,
    hasher: &NgramHasher,
    counters: &Counters,
    progress: &Progress,
) -> Result<CountSummary> {
    let heads = hasher.n_hash_heads();
    let results: Vec<Result<Vec<(String, Skip)>>> = sources
        .par_iter()
        .map(|source| {
            let docs = corpus::read(source, options);
            let mut compressed = Vec::new();
            let mut rows = Vec::new();
            for text in &docs.texts {
                let encoding = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizing {source:?}: {e}"))?;
                let ids = encoding.get_ids();
                progress.documents.fetch_add(1, Ordering::Relaxed);
                progress
                    .tokens
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                if ids.is_empty() {
                    continue;
                }
                compressed.clear();
                for &id in ids {
                    compressed.push(table.compress_id(i64::from(id)).with_context(|| {
                        format!("the tokenizer produced id {id}, outside the compression table")
                    })?);
                }
                rows.resize(ids.len() * heads, 0);
                // Each document is its own sequence: it starts with left padding.
                for li in 0..layout.layers.len() {
                    hasher.hash_into(
                        li,
                        &compressed,
                        1,
                        ids.len(),
                        HashOutput::RowId,
                        &mut rows,
                    )?;
                    for &r in &rows {
                        counters.hit(li, r);
                    }
                }
            }
            progress.bytes.fetch_add(docs.bytes, Ordering::Relaxed);
            progress.sources_done.fetch_add(1, Ordering::Relaxed);
            Ok(docs.skipped)
        })
        .collect();
    let mut summary = CountSummary {
        sources: sources.len() as u64,
        documents: progress.documents.load(Ordering::Relaxed),
        bytes: progress.bytes.load(Ordering::Relaxed),
        tokens: progress.tokens.load(Ordering::Relaxed),
        skipped: Vec::new(),
    };
    for r in results {
        summary
            .skipped
            .extend(r?.into_iter().map(|(what, why)| (what, why.to_string())));
    }
    Ok(summary)
}

/// Tokenizes every document without counting: the baseline the build is measured against.
pub fn tokenize_only(
    sources: &[Source],
    options: &CorpusOptions,
    tokenizer: &Tokenizer,
) -> Result<u64> {
    sources
        .par_iter()
        .map(|source| {
            let docs = corpus::read(source, options);
            let mut tokens = 0u64;
            for text in &docs.texts {
                let encoding = tokenizer
                    .encode(text.as_str(), false)
                    .map_err(|e| anyhow::anyhow!("tokenizing {source:?}: {e}"))?;
                tokens += encoding.get_ids().len() as u64;
            }
            Ok(tokens)
        })
        .sum()
}

/// Ranks one layer's counters into a profile (every touched row kept).
pub fn profile_layer(layer_id: u64, counts: impl Iterator<Item = u32>) -> LayerProfile {
    let touched = counts
        .enumerate()
        .filter(|&(_, c)| c > 0)
        .map(|(r, c)| (r as u64, u64::from(c)));
    LayerProfile::from_counts(layer_id, touched, usize::MAX)
}

/// Share of all hits that land on the `top` most-hit rows of a ranked profile.
pub fn hit_share_of_top(profile: &LayerProfile, top: u64) -> f64 {
    if profile.total_hits == 0 {
        return 0.0;
    }
    let n = usize::try_from(top)
        .unwrap_or(usize::MAX)
        .min(profile.entries.len());
    let hits: u64 = profile.entries[..n].iter().map(|&(_, c)| c).sum();
    hits as f64 / profile.total_hits as f64
}

/// The cache-size curve of a layer of `total_rows` rows at the given fractions of its rows.
pub fn curve(profile: &LayerProfile, total_rows: u64, fractions: &[f64]) -> Vec<CurvePoint> {
    fractions
        .iter()
        .map(|&f| {
            let rows = ((total_rows as f64) * f).ceil() as u64;
            CurvePoint {
                fraction_of_rows: f,
                rows,
                hit_share: hit_share_of_top(profile, rows),
            }
        })
        .collect()
}

/// One point of the cache-size curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    pub fraction_of_rows: f64,
    pub rows: u64,
    pub hit_share: f64,
}

/// Fractions of a table's rows reported in every profile.
pub const CURVE_FRACTIONS: [f64; 5] = [0.0001, 0.001, 0.01, 0.1, 1.0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_curve() {
        let p = profile_layer(1, [0, 5, 1, 5, 0, 9, 0, 0, 0, 0].into_iter());
        assert_eq!(p.entries, [(5, 9), (1, 5), (3, 5), (2, 1)]);
        assert_eq!(p.total_hits, 20);
        assert!((hit_share_of_top(&p, 1) - 0.45).abs() < 1e-12);
        assert!((hit_share_of_top(&p, 100) - 1.0).abs() < 1e-12);
        let c = curve(&p, 10, &[0.1, 0.3]);
        assert_eq!(c[0].rows, 1);
        assert!((c[1].hit_share - 0.95).abs() < 1e-12);
    }

    #[test]
    fn counters_saturate() {
        let layout = EngramLayout::new(
            &engram_kernels::EngramConfig {
                max_ngram: 2,
                n_heads: 1,
                base_sizes: vec![3],
                layer_ids: vec![0],
                seed: 0,
                pad_id: 0,
            },
            10,
            0,
        )
        .expect("valid");
        let c = Counters::new(&layout).expect("small");
        c.layers[0][1].store(u32::MAX - 1, Ordering::Relaxed);
        for _ in 0..3 {
            c.hit(0, 1);
        }
        assert_eq!(c.layer(0).nth(1), Some(u32::MAX));
    }
}
