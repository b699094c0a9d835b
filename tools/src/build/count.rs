//! The counting pipeline: read -> tokenize (parallel over documents) -> compress -> hash ->
//! count row hits per layer with exact counters.
//!
//! Counters are `u32` per row and saturate at `u32::MAX` (4,294,967,295 hits on one row);
//! a saturated row keeps its rank at the top and the summary reports how many saturated.
//! Counting is commutative, so the result is the same whatever the thread count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use engram_kernels::hash::{HashOutput, NgramHasher};
use engram_kernels::{CompressionTable, EngramLayout};
use engram_store::profile::LayerProfile;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::candidates::{CandidateCounter, DocScratch};
use super::corpus::{self, CorpusOptions, Skip, Source};

/// Hit counters of every row of every layer, in shards of contiguous rows.
///
/// Workers do not increment counters one by one: an atomic read-modify-write per hit
/// serialises the cache misses of a multi-gigabyte table (measured: 0.46 x tokenizer-only
/// throughput for the V4.1 shape). Instead each worker buffers row offsets per shard
/// ([`Batcher`]) and applies a full buffer under the shard's lock with plain increments,
/// which lets the CPU overlap the misses. Counting stays exact and order-independent.
#[derive(Debug)]
pub struct Counters {
    // (shards,) each (shard_rows,) except the last; global row g = layer_base + row
    shards: Vec<Mutex<Vec<u32>>>,
    shard_shift: u32,
    // (layers + 1,) prefix sums of the layers' rows
    layer_base: Vec<u64>,
}

/// Shards per table, at least (bounds lock contention and buffer memory).
const MIN_SHARDS: u64 = 64;
/// Smallest shard: tiny tables need no sharding.
const MIN_SHARD_ROWS: u64 = 4096;
/// Row offsets a worker buffers per shard before applying them.
const BATCH_PER_SHARD: usize = 4096;

impl Counters {
    /// Zeroed counters for every layer of `layout` (pages are zeroed lazily by the OS).
    pub fn new(layout: &EngramLayout) -> Result<Self> {
        let mut layer_base = vec![0u64];
        for l in &layout.layers {
            let last = layer_base[layer_base.len() - 1];
            layer_base.push(
                last.checked_add(l.total_rows)
                    .context("rows overflow u64")?,
            );
        }
        let total = layer_base[layer_base.len() - 1].max(1);
        let shard_rows = total
            .div_ceil(MIN_SHARDS)
            .next_power_of_two()
            .max(MIN_SHARD_ROWS);
        anyhow::ensure!(
            shard_rows <= 1 << 32,
            "table too large to count ({total} rows)"
        );
        let shard_shift = shard_rows.trailing_zeros();
        let n_shards = total.div_ceil(shard_rows);
        let shards = (0..n_shards)
            .map(|i| {
                let rows = (total - i * shard_rows).min(shard_rows);
                Ok(Mutex::new(vec![0u32; usize::try_from(rows)?]))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            shards,
            shard_shift,
            layer_base,
        })
    }

    /// Bytes the counters occupy.
    pub fn bytes(layout: &EngramLayout) -> u64 {
        layout.layers.iter().map(|l| l.total_rows * 4).sum()
    }

    /// A per-worker buffer of pending hits.
    pub fn batcher(&self) -> Batcher<'_> {
        Batcher {
            counters: self,
            pending: vec![Vec::new(); self.shards.len()],
        }
    }

    fn apply(&self, shard: usize, offsets: &[u32]) {
        // A poisoned lock means another worker panicked mid-apply; counting is then moot
        // (the build fails on that panic), so keep going with the data as it is.
        let mut counts = match self.shards[shard].lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for &o in offsets {
            let c = &mut counts[o as usize];
            // Saturate rather than wrap a hot row back to zero.
            *c = c.saturating_add(1);
        }
    }

    /// The rows of layer `layer` with at least one hit, as `(row, hits)` in row order.
    pub fn touched(&self, layer: usize) -> Vec<(u64, u64)> {
        let (lo, hi) = (self.layer_base[layer], self.layer_base[layer + 1]);
        let shard_rows = 1u64 << self.shard_shift;
        let mut out = Vec::new();
        let mut g = lo;
        while g < hi {
            let shard = (g >> self.shard_shift) as usize;
            let start = g - (shard as u64) * shard_rows;
            let end = (hi - (shard as u64) * shard_rows).min(shard_rows);
            let counts = match self.shards[shard].lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            for (i, &c) in counts[start as usize..end as usize].iter().enumerate() {
                if c > 0 {
                    out.push((g - lo + i as u64, u64::from(c)));
                }
            }
            g += end - start;
        }
        out
    }
}

/// One worker's pending hits, per shard. Call [`Batcher::flush`] when done.
#[derive(Debug)]
pub struct Batcher<'a> {
    counters: &'a Counters,
    pending: Vec<Vec<u32>>,
}

impl Batcher<'_> {
    /// Records one hit of `row` in layer `layer`.
    #[inline]
    pub fn hit(&mut self, layer: usize, row: u64) {
        let c = self.counters;
        let g = c.layer_base[layer] + row;
        let shard = (g >> c.shard_shift) as usize;
        let buf = &mut self.pending[shard];
        buf.push((g & ((1u64 << c.shard_shift) - 1)) as u32);
        if buf.len() >= BATCH_PER_SHARD {
            c.apply(shard, buf);
            buf.clear();
        }
    }

    /// Applies every pending hit.
    pub fn flush(&mut self) {
        for (shard, buf) in self.pending.iter_mut().enumerate() {
            if !buf.is_empty() {
                self.counters.apply(shard, buf);
                buf.clear();
            }
        }
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

/// Runs the pipeline over `sources` on the current rayon pool; with `candidates`, also
/// counts every position's continuation for the candidate table.
#[allow(clippy::too_many_arguments)]
pub fn count(
    sources: &[Source],
    options: &CorpusOptions,
    tokenizer: &Tokenizer,
    table: &CompressionTable,
    layout: &EngramLayout,
    hasher: &NgramHasher,
    counters: &Counters,
    candidates: Option<&CandidateCounter>,
    progress: &Progress,
) -> Result<CountSummary> {
    let heads = hasher.n_hash_heads();
    let results: Vec<Result<Vec<(String, Skip)>>> = sources
        .par_iter()
        .map(|source| {
            let docs = corpus::read(source, options);
            let mut compressed = Vec::new();
            let mut rows = Vec::new();
            let mut batch = counters.batcher();
            let mut doc_scratch = DocScratch::default();
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
                if let Some(c) = candidates {
                    c.observe(ids, &compressed, &mut doc_scratch)?;
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
                        batch.hit(li, r);
                    }
                }
            }
            batch.flush();
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
pub fn profile_layer(counters: &Counters, layer: usize, layer_id: u64) -> LayerProfile {
    LayerProfile::from_counts(layer_id, counters.touched(layer), usize::MAX)
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
        let p = LayerProfile::from_counts(1, [(1, 5), (2, 1), (3, 5), (5, 9)], usize::MAX);
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
        if let Ok(mut s) = c.shards[0].lock() {
            s[1] = u32::MAX - 1;
        }
        let mut b = c.batcher();
        for _ in 0..3 {
            b.hit(0, 1);
        }
        b.hit(0, 2);
        b.flush();
        assert_eq!(c.touched(0), [(1, u64::from(u32::MAX)), (2, 1)]);
    }
}
