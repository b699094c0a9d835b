//! The counting pipeline: read -> tokenize (parallel over documents) -> compress -> count
//! row hits per layer with exact counters.
//!
//! Counting is the memory-bound part of a build: the V4.1 shape hits 48 rows per token
//! (2 layers x 3 orders x 8 heads) spread over 3 GB of counters, and one increment per hit
//! costs a cache and TLB miss each (measured: 0.52 / 0.37 x tokenizer-only throughput on 1 /
//! 2 threads). Two things make it cheap, and neither changes a single count:
//!
//! - **Pre-aggregation** ([`Strategy::Aggregated`]). A worker packs each position's context
//!   (its N most recent ids after padding) into one `u128` key and buffers
//!   [`WINDOW_TOKENS`] of them. A flush sorts the keys. With the most recent id in the top
//!   field every order-n n-gram is a key prefix, so equal n-grams of every order are
//!   adjacent: each distinct context is hashed once per layer, and each distinct order-n
//!   n-gram becomes one update per head that carries its count (CPython's standard library:
//!   ~16 updates per token instead of 48).
//! - **Partitioned updates.** Updates wait in per-shard buckets ([`SHARD_ROWS`] rows, 8 MiB
//!   of counters on huge pages) and are applied bucket after bucket, so the increments walk
//!   the table in address order, one shard at a time, without a TLB miss each.
//!
//! Counters are `u32` per row and saturate at `u32::MAX` (4,294,967,295 hits on one row);
//! a saturated row keeps its rank at the top and the summary reports how many saturated.
//! Every update adds a positive count with saturation, so a row ends at
//! `min(u32::MAX, hits)` whatever the order and grouping of its updates: the counters are
//! the same whatever the thread count, the window or the strategy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use engram_kernels::hash::NgramHasher;
use engram_kernels::{CompressionTable, EngramLayout};
use engram_store::profile::LayerProfile;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use crate::candidates::{CandidateCounter, DocScratch};
use crate::corpus::{self, CorpusOptions, Input, Skip};

mod keys;
mod pending;
mod shard;
mod window;

pub use keys::ContextKeys;
pub use window::Packing;

use shard::Shard;
use window::Worker;

const SHARD_SHIFT: u32 = 21;
/// Rows per counter shard (2 MiB of byte counters, one huge page): the unit that updates are
/// applied in.
pub const SHARD_ROWS: u64 = 1 << SHARD_SHIFT;
/// Most rows a table may have to be counted (256 GiB of counters, beyond any machine's RAM).
pub const MAX_COUNTED_ROWS: u64 = 1 << 38;
/// Positions a worker buffers before it sorts them (16 MiB of keys). A larger window finds
/// more repeats (CPython's standard library, V4.1 shape: 15.8 updates per token at 2^18
/// positions, 13.8 at 2^20, 10.6 for the whole corpus at once).
pub const WINDOW_TOKENS: usize = 1 << 20;
/// Updates a worker holds before it applies them (128 MiB). Applying many at once lets
/// updates share the cache lines they miss on (16 M updates over V4.1's 12 M lines of
/// counters: ~0.55 misses per update instead of ~0.85 for 4 M).
const MAX_PENDING_UPDATES: usize = 1 << 24;
/// Memory a worker's buffers take, about: keys, counts and pending updates.
pub const WORKER_BYTES: u64 = (WINDOW_TOKENS * (16 + 4) + MAX_PENDING_UPDATES * 8) as u64;

// A group's count is at most the window's positions and travels in 32 bits.
const _: () = assert!(WINDOW_TOKENS <= u32::MAX as usize);

/// Hit counters of every row of every layer, in shards of [`SHARD_ROWS`] contiguous rows
/// (a byte per row while the row's count fits, see `shard`).
///
/// Workers never increment one counter per hit: they buffer updates per shard
/// (`pending`) and apply a whole bucket under the shard's lock with plain increments.
#[derive(Debug)]
pub struct Counters {
    // (shards,); global row g = layer_base + row
    shards: Vec<Mutex<Shard>>,
    // (layers + 1,) prefix sums of the layers' rows
    layer_base: Vec<u64>,
}

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
        let total = layer_base[layer_base.len() - 1];
        anyhow::ensure!(
            total <= MAX_COUNTED_ROWS,
            "table too large to count: {total} rows, at most {MAX_COUNTED_ROWS}"
        );
        let shards = (0..total.div_ceil(SHARD_ROWS))
            .map(|i| {
                let rows = (total - i * SHARD_ROWS).min(SHARD_ROWS);
                Ok(Mutex::new(Shard::new(usize::try_from(rows)?)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { shards, layer_base })
    }

    /// Bytes the counters occupy: one per row (a shard where more than 1 row in 32 passes
    /// 254 hits moves to four per row).
    pub fn bytes(layout: &EngramLayout) -> u64 {
        layout.layers.iter().map(|l| l.total_rows).sum()
    }

    /// The rows of layer `layer` with at least one hit, as `(row, hits)` in row order.
    pub fn touched(&self, layer: usize) -> Vec<(u64, u64)> {
        let (lo, hi) = (self.layer_base[layer], self.layer_base[layer + 1]);
        let mut out = Vec::new();
        let mut g = lo;
        while g < hi {
            let shard = (g >> SHARD_SHIFT) as usize;
            let start = g - (shard as u64) * SHARD_ROWS;
            let end = (hi - (shard as u64) * SHARD_ROWS).min(SHARD_ROWS);
            let base = g - start;
            lock(&self.shards[shard]).each_nonzero(start as usize..end as usize, |i, c| {
                out.push((base + i as u64 - lo, u64::from(c)));
            });
            g += end - start;
        }
        out
    }
}

/// Locks `m`. A poisoned lock means another worker panicked mid-apply; counting is then moot
/// (the build fails on that panic), so keep going with the data as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// How a worker turns positions into counter updates. Both give identical counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Strategy {
    /// Sort a window of packed contexts; one update per head per distinct n-gram.
    Aggregated,
    /// One update per hit: for layouts whose contexts do not pack into 128 bits.
    Direct,
}

impl Strategy {
    /// [`Strategy::Aggregated`] when a context of `layout` packs into a `u128`, else
    /// [`Strategy::Direct`].
    pub fn for_layout(layout: &EngramLayout) -> Self {
        if Packing::new(layout).is_some() {
            return Self::Aggregated;
        }
        tracing::info!(
            max_ngram = layout.config.max_ngram,
            vocab = layout.compressed_vocab_size,
            pad = layout.compressed_pad_id,
            "n-gram contexts do not pack into 128 bits: counting one update per hit"
        );
        Self::Direct
    }
}

/// Live totals, readable while the pipeline runs (for progress).
#[derive(Debug, Default)]
pub struct Progress {
    /// Sources (files, stdin) finished.
    pub sources_done: AtomicU64,
    /// Bytes of text read.
    pub bytes: AtomicU64,
    /// Documents tokenized.
    pub documents: AtomicU64,
    /// Tokens counted.
    pub tokens: AtomicU64,
}

/// What the pipeline saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CountSummary {
    /// Sources (files, stdin) read.
    pub sources: u64,
    /// Documents tokenized.
    pub documents: u64,
    /// Bytes of text read.
    pub bytes: u64,
    /// Tokens counted.
    pub tokens: u64,
    /// Skipped files or records, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Runs the pipeline over `sources` on the current rayon pool with `strategy` (usually
/// [`Strategy::for_layout`]; an error if `layout` does not allow it). With `candidates`,
/// also counts every position's continuation for the candidate table; with `keys`, every
/// position's context is also kept there (for n-gram records).
#[allow(clippy::too_many_arguments)]
pub fn count(
    strategy: Strategy,
    sources: &[Input],
    options: &CorpusOptions,
    tokenizer: &Tokenizer,
    table: &CompressionTable,
    layout: &EngramLayout,
    hasher: &NgramHasher,
    counters: &Counters,
    candidates: Option<&CandidateCounter>,
    progress: &Progress,
    keys: Option<&ContextKeys>,
) -> Result<CountSummary> {
    let workers = workers(strategy, layout, hasher, counters)?;
    let results: Vec<Result<Vec<(String, Skip)>>> = sources
        .par_iter()
        .map(|source| {
            let docs = corpus::read(source, options);
            let mut compressed = Vec::new();
            let mut contexts = Vec::new();
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
                compressed.clear();
                for &id in ids {
                    compressed.push(table.compress_id(i64::from(id)).with_context(|| {
                        format!("the tokenizer produced id {id}, outside the compression table")
                    })?);
                }
                if let Some(c) = candidates {
                    c.observe(ids, &compressed, &mut doc_scratch)?;
                }
                // Each document is its own sequence: it starts with left padding.
                mine(&workers).add_document(&compressed)?;
                if let Some(k) = keys {
                    k.add_document(&compressed, &mut contexts)?;
                }
            }
            if let Some(k) = keys {
                k.push(contexts);
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
    flush(workers)?;
    Ok(summary)
}

/// Counts documents that are already compressed ids (each its own sequence, starting with
/// left padding) on the current rayon pool: the counting stage alone.
pub fn count_documents(
    strategy: Strategy,
    docs: &[Vec<i64>],
    layout: &EngramLayout,
    hasher: &NgramHasher,
    counters: &Counters,
) -> Result<()> {
    let workers = workers(strategy, layout, hasher, counters)?;
    docs.par_iter()
        .try_for_each(|doc| mine(&workers).add_document(doc))?;
    flush(workers)
}

/// One worker per thread of the current pool. A thread locks only its own (uncontended),
/// and only around counting, so nothing that may run other pool jobs happens under the lock.
fn workers<'a>(
    strategy: Strategy,
    layout: &EngramLayout,
    hasher: &'a NgramHasher,
    counters: &'a Counters,
) -> Result<Vec<Mutex<Worker<'a>>>> {
    (0..rayon::current_num_threads().max(1))
        .map(|_| Worker::new(counters, hasher, layout, strategy, WINDOW_TOKENS).map(Mutex::new))
        .collect()
}

/// The calling pool thread's worker.
fn mine<'w, 'a>(workers: &'w [Mutex<Worker<'a>>]) -> MutexGuard<'w, Worker<'a>> {
    lock(&workers[rayon::current_thread_index().unwrap_or(0) % workers.len()])
}

/// Applies what every worker still holds.
fn flush(workers: Vec<Mutex<Worker<'_>>>) -> Result<()> {
    workers
        .into_par_iter()
        .try_for_each(|w| w.into_inner().unwrap_or_else(|p| p.into_inner()).flush())
}

/// Tokenizes every document without counting: the baseline the build is measured against.
pub fn tokenize_only(
    sources: &[Input],
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
    /// Cache size as a fraction of the table's rows (one of [`CURVE_FRACTIONS`]).
    pub fraction_of_rows: f64,
    /// That size in rows.
    pub rows: u64,
    /// Share of the profiled lookups the hottest `rows` rows serve, in [0, 1].
    pub hit_share: f64,
}

/// Fractions of a table's rows reported in every profile.
pub const CURVE_FRACTIONS: [f64; 5] = [0.0001, 0.001, 0.01, 0.1, 1.0];

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use engram_kernels::hash::{HashOptions, HashOutput};
    use engram_kernels::{EngramConfig, EngramLayout};
    use proptest::prelude::{Just, ProptestConfig, any, prop_assert, prop_oneof, proptest};
    use proptest::strategy::Strategy as _;

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

    fn layout(max_ngram: usize, n_heads: usize, base: u64, vocab: u64, pad: i64) -> EngramLayout {
        let config = EngramConfig {
            max_ngram,
            n_heads,
            base_sizes: vec![base; max_ngram - 1],
            layer_ids: vec![1, 4],
            seed: 7,
            pad_id: pad,
        };
        EngramLayout::new(&config, vocab, pad).expect("valid")
    }

    /// Every counter, in global row order.
    fn snapshot(c: &Counters) -> Vec<u32> {
        c.shards
            .iter()
            .flat_map(|s| {
                let s = lock(s);
                (0..s.rows()).map(move |o| s.get(o)).collect::<Vec<_>>()
            })
            .collect()
    }

    /// The straightforward counter the fast path replaces: hash every position of every
    /// document and add one saturating hit per head, on top of `start` in every counter.
    fn naive(
        layout: &EngramLayout,
        hasher: &NgramHasher,
        docs: &[Vec<i64>],
        start: u32,
    ) -> Vec<u32> {
        let base: Vec<u64> = std::iter::once(0)
            .chain(layout.layers.iter().scan(0, |acc, l| {
                *acc += l.total_rows;
                Some(*acc)
            }))
            .collect();
        let mut hits: HashMap<u64, u64> = HashMap::new();
        for doc in docs.iter().filter(|d| !d.is_empty()) {
            let mut rows = vec![0u64; doc.len() * hasher.n_hash_heads()];
            for (li, &layer_base) in base[..layout.layers.len()].iter().enumerate() {
                hasher
                    .hash_into(li, doc, 1, doc.len(), HashOutput::RowId, &mut rows)
                    .expect("shapes agree");
                for &r in &rows {
                    *hits.entry(layer_base + r).or_default() += 1;
                }
            }
        }
        (0..base[base.len() - 1])
            .map(|g| {
                let total = u64::from(start) + hits.get(&g).copied().unwrap_or(0);
                total.min(u64::from(u32::MAX)) as u32
            })
            .collect()
    }

    /// Counts `docs` round-robin over `workers` workers with the given strategy and window.
    fn fast(
        layout: &EngramLayout,
        hasher: &NgramHasher,
        docs: &[Vec<i64>],
        start: u32,
        strategy: Strategy,
        window: usize,
        workers: usize,
    ) -> Result<Vec<u32>> {
        let counters = Counters::new(layout)?;
        for s in &counters.shards {
            let mut s = lock(s);
            for o in 0..s.rows() {
                s.set(o, start)?;
            }
        }
        let mut ws = (0..workers)
            .map(|_| Worker::new(&counters, hasher, layout, strategy, window))
            .collect::<Result<Vec<_>>>()?;
        for (i, doc) in docs.iter().enumerate() {
            ws[i % workers].add_document(doc)?;
        }
        for w in &mut ws {
            w.flush()?;
        }
        drop(ws);
        Ok(snapshot(&counters))
    }

    fn case_strategy()
    -> impl proptest::strategy::Strategy<Value = (EngramLayout, Vec<Vec<i64>>, Option<i64>)> {
        (
            2usize..=5,
            1usize..=3,
            2u64..60,
            prop_oneof![3 => 2u64..40, 1 => (1u64 << 31)..=(1u64 << 32)],
            any::<u64>(),
        )
            .prop_flat_map(|(n, k, base, vocab, seed)| {
                // Few distinct ids, so that n-grams repeat; with a large vocabulary, take them
                // from its top to exercise the widest fields.
                let lo = vocab.saturating_sub(6) as i64;
                let id = prop_oneof![0i64..vocab.min(6) as i64, lo..vocab as i64];
                (
                    0i64..vocab as i64,
                    proptest::collection::vec(proptest::collection::vec(id, 0..80), 0..6),
                    prop_oneof![Just(None), Just(Some(0i64)), Just(Some(1i64))],
                )
                    .prop_map(move |(pad, docs, barrier)| {
                        let config = EngramConfig {
                            max_ngram: n,
                            n_heads: k,
                            base_sizes: vec![base; n - 1],
                            layer_ids: vec![0, 3],
                            seed,
                            pad_id: pad,
                        };
                        let layout = EngramLayout::new(&config, vocab, pad).expect("valid");
                        (layout, docs, barrier)
                    })
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Both strategies, any window and any split over workers give the naive counter's
        /// exact counts, saturation included.
        #[test]
        fn fast_counting_matches_naive(
            (layout, docs, barrier) in case_strategy(),
            window in 1usize..=64,
            workers in 1usize..=3,
            near_max in any::<bool>(),
        ) {
            let hasher = NgramHasher::new(&layout, HashOptions { barrier_id: barrier })
                .expect("valid");
            let start = if near_max { u32::MAX - 3 } else { 0 };
            let want = naive(&layout, &hasher, &docs, start);
            // Wide contexts (5 x 32-bit ids) do not pack: Direct only.
            for strategy in [Strategy::for_layout(&layout), Strategy::Direct] {
                let got = fast(&layout, &hasher, &docs, start, strategy, window, workers)
                    .expect("counts");
                prop_assert!(got == want, "{:?} differs from the naive counter", strategy);
            }
        }
    }

    #[test]
    fn concurrent_workers_match_naive() {
        // A few shards' worth of rows so that the four threads' sweeps collide on shards.
        let layout = layout(4, 8, 200_000, 30, 2);
        assert!(layout.layers.iter().map(|l| l.total_rows).sum::<u64>() > 2 * SHARD_ROWS);
        let hasher = NgramHasher::new(&layout, HashOptions::default()).expect("valid");
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let docs: Vec<Vec<i64>> = (0..12)
            .map(|d| {
                (0..200 + 37 * d)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (rng % 30) as i64
                    })
                    .collect()
            })
            .collect();
        let threads = 4;
        let all: Vec<Vec<i64>> = (0..threads).flat_map(|_| docs.clone()).collect();
        let want = naive(&layout, &hasher, &all, 0);
        let counters = Counters::new(&layout).expect("small");
        std::thread::scope(|s| {
            for t in 0..threads {
                let (counters, hasher, layout, docs) = (&counters, &hasher, &layout, &docs);
                s.spawn(move || {
                    let mut w = Worker::new(counters, hasher, layout, Strategy::Aggregated, 97 + t)
                        .expect("valid");
                    for d in docs {
                        w.add_document(d).expect("counts");
                    }
                    w.flush().expect("applies");
                });
            }
        });
        assert!(snapshot(&counters) == want);
    }

    #[test]
    fn strategy_follows_the_key_width() {
        // 17-bit ids: orders up to 7 pack into 128 bits.
        assert_eq!(
            Strategy::for_layout(&layout(7, 1, 10, 99_092, 2)),
            Strategy::Aggregated
        );
        assert_eq!(
            Strategy::for_layout(&layout(8, 1, 10, 99_092, 2)),
            Strategy::Direct
        );
        // 32-bit ids: exactly 4 fields fit.
        assert_eq!(
            Strategy::for_layout(&layout(4, 1, 10, 1 << 32, 2)),
            Strategy::Aggregated
        );
        assert_eq!(
            Strategy::for_layout(&layout(5, 1, 10, 1 << 32, 2)),
            Strategy::Direct
        );
        // A negative padding id has no field.
        assert_eq!(
            Strategy::for_layout(&layout(3, 1, 10, 100, -1)),
            Strategy::Direct
        );

        let wide = layout(8, 1, 10, 99_092, 2);
        let hasher = NgramHasher::new(&wide, HashOptions::default()).expect("valid");
        let counters = Counters::new(&wide).expect("small");
        let err = Worker::new(&counters, &hasher, &wide, Strategy::Aggregated, 16)
            .expect_err("does not pack");
        assert!(format!("{err:#}").contains("128 bits"), "{err:#}");
    }

    #[test]
    fn ids_outside_the_key_are_an_error() {
        let l = layout(3, 2, 10, 10, 2);
        let hasher = NgramHasher::new(&l, HashOptions::default()).expect("valid");
        let counters = Counters::new(&l).expect("small");
        let mut w = Worker::new(&counters, &hasher, &l, Strategy::Aggregated, 16).expect("valid");
        for bad in [16i64, -1] {
            let err = w.add_document(&[1, bad]).expect_err("does not fit 4 bits");
            assert!(format!("{err:#}").contains("does not fit"), "{err:#}");
        }
    }
}
