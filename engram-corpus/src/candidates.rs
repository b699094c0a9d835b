//! The next-token candidate table (`candidates.bin`): while the corpus is counted, every
//! position's continuation is counted per context (the last canonical id, and the last two);
//! at the end the `k` most frequent continuations of the contexts worth most are kept,
//! within a byte budget. Decoders prefetch the rows of these candidates one step ahead.
//!
//! Counting is exact while the distinct (context, next token) pairs stay below
//! [`MAX_PAIRS`]; past it, each shard drops its rarest pairs (see [`CandidateCounter`]) and
//! the summary says so.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use engram_store::cache::KeyHasher;
use engram_store::candidates::{
    CANDIDATES_HEADER_BYTES, CANDIDATES_TRAILER_BYTES, Candidates, MAX_CANDIDATES_K, order1_key,
    order2_key, record_bytes,
};

/// Distinct (context, next token) pairs counted before pruning starts (about 40 B each).
pub const MAX_PAIRS: usize = 1 << 24;
/// Independent locks over the pair counts.
const SHARDS: usize = 64;
/// Contexts whose candidates were right fewer times than this in the corpus are not kept.
pub const MIN_CONTEXT_HITS: u64 = 2;
/// Default candidates per context.
pub const DEFAULT_K: usize = 8;
/// Default byte budget of the file.
pub const DEFAULT_BYTES: u64 = 16 << 20;

/// A pair key: the context key in the high 64 bits, the next raw id in the low 32.
type PairMap = HashMap<u128, u32, BuildHasherDefault<PairHasher>>;

/// Hashes a pair key by mixing both halves (the cache's hasher takes u64 keys).
#[derive(Debug, Default, Clone, Copy)]
struct PairHasher(KeyHasher);

impl std::hash::Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0.finish()
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }
    fn write_u128(&mut self, v: u128) {
        self.0
            .write_u64((v >> 64) as u64 ^ (v as u64).rotate_left(23));
    }
}

fn pair(context: u64, next: u32) -> u128 {
    u128::from(context) << 32 | u128::from(next)
}

fn shard_of(p: u128) -> usize {
    let x = ((p >> 32) as u64 ^ (p as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 58) as usize % SHARDS
}

#[derive(Debug, Default)]
struct Shard {
    counts: PairMap,
    /// Pairs seen fewer times than this may have been dropped (0: none dropped).
    pruned_below: u32,
}

/// Continuation counts of a whole corpus, shared by the counting workers.
#[derive(Debug)]
pub struct CandidateCounter {
    shards: Vec<Mutex<Shard>>,
    positions: AtomicU64,
}

impl Default for CandidateCounter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            positions: AtomicU64::new(0),
        }
    }
}

/// A worker's scratch for one document.
#[derive(Debug, Default)]
pub struct DocScratch {
    // (shards,) this document's pairs, then their counts
    pending: Vec<Vec<u128>>,
}

/// What the candidate table holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateSummary {
    /// The table file holding the candidates.
    pub file: &'static str,
    /// Candidates kept per context.
    pub k: usize,
    /// Corpus positions counted.
    pub positions: u64,
    /// Distinct contexts seen.
    pub contexts_seen: u64,
    /// Contexts whose candidates fit the byte budget.
    pub contexts_kept: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Corpus positions whose next token is among its context's kept candidates (the
    /// order-2 context if kept, else the order-1 context): the in-sample accuracy.
    pub in_sample_hit_share: f64,
    /// Pairs seen fewer times than this may be missing (0: counting was exact).
    pub pruned_below: u32,
}

impl CandidateCounter {
    /// Counts one document's continuations: `raw` ids and their `canonical` (compressed)
    /// ids, position for position.
    pub fn observe(&self, raw: &[u32], canonical: &[i64], scratch: &mut DocScratch) -> Result<()> {
        anyhow::ensure!(
            raw.len() == canonical.len(),
            "{} raw ids but {} canonical ids",
            raw.len(),
            canonical.len()
        );
        scratch.pending.resize_with(SHARDS, Vec::new);
        for t in 0..raw.len().saturating_sub(1) {
            let next = raw[t + 1];
            let b = canonical[t];
            let k1 = order1_key(b).with_context(|| format!("canonical id {b} out of range"))?;
            let p = pair(k1, next);
            scratch.pending[shard_of(p)].push(p);
            if t > 0
                && let Some(k2) = order2_key(canonical[t - 1], b)
            {
                let p = pair(k2, next);
                scratch.pending[shard_of(p)].push(p);
            }
        }
        self.positions
            .fetch_add(raw.len().saturating_sub(1) as u64, Ordering::Relaxed);
        for (shard, pending) in self.shards.iter().zip(&mut scratch.pending) {
            if pending.is_empty() {
                continue;
            }
            let mut s = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for &p in pending.iter() {
                let c = s.counts.entry(p).or_insert(0);
                *c = c.saturating_add(1);
            }
            if s.counts.len() > MAX_PAIRS / SHARDS {
                prune(&mut s);
            }
            pending.clear();
        }
        Ok(())
    }

    /// Chooses the contexts to keep (`k` candidates each, at most `budget_bytes` of file)
    /// and builds the table for `table_id`. `None` when the budget holds no context.
    pub fn finish(
        self,
        table_id: u64,
        k: usize,
        budget_bytes: u64,
    ) -> Result<Option<(Candidates, CandidateSummary)>> {
        anyhow::ensure!(
            (1..=MAX_CANDIDATES_K).contains(&k),
            "--candidates-k {k}: expected 1..={MAX_CANDIDATES_K}"
        );
        let fixed = (CANDIDATES_HEADER_BYTES + CANDIDATES_TRAILER_BYTES) as u64;
        let room = budget_bytes.saturating_sub(fixed) / record_bytes(k) as u64;
        let positions = self.positions.load(Ordering::Relaxed);
        let mut pruned_below = 0;
        let mut pairs: Vec<(u128, u32)> = Vec::new();
        for shard in self.shards {
            let s = match shard.into_inner() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            pruned_below = pruned_below.max(s.pruned_below);
            pairs.extend(s.counts);
        }
        // By context, then count descending, then id ascending: deterministic.
        pairs.sort_unstable_by(|a, b| {
            ((a.0 >> 32) as u64)
                .cmp(&((b.0 >> 32) as u64))
                .then(b.1.cmp(&a.1))
                .then((a.0 as u32).cmp(&(b.0 as u32)))
        });
        let mut contexts = Vec::new();
        let mut i = 0;
        while i < pairs.len() {
            let key = (pairs[i].0 >> 32) as u64;
            let end = i + pairs[i..].partition_point(|p| (p.0 >> 32) as u64 == key);
            let top = &pairs[i..end.min(i + k)];
            let hits: u64 = top.iter().map(|p| u64::from(p.1)).sum();
            contexts.push(Ranked {
                key,
                hits,
                ids: top.iter().map(|p| p.0 as u32).collect(),
            });
            i = end;
        }
        let contexts_seen = contexts.len() as u64;
        // An order-2 list equal to its order-1 list adds nothing: prediction backs off.
        let order1: HashMap<u64, Vec<u32>> = contexts
            .iter()
            .filter(|c| c.key >> 32 == 0)
            .map(|c| (c.key, c.ids.clone()))
            .collect();
        contexts.retain(|c| {
            c.hits >= MIN_CONTEXT_HITS
                && (c.key >> 32 == 0 || order1.get(&(c.key & 0xFFFF_FFFF)) != Some(&c.ids))
        });
        contexts.sort_unstable_by(|a, b| b.hits.cmp(&a.hits).then(a.key.cmp(&b.key)));
        contexts.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        if contexts.is_empty() {
            return Ok(None);
        }
        let in_sample = in_sample_hits(&contexts, &pairs);
        let kept = contexts.len() as u64;
        let c = Candidates::new(
            table_id,
            k,
            positions,
            contexts.into_iter().map(|c| (c.key, c.ids)),
        )?;
        let summary = CandidateSummary {
            file: engram_store::candidates::CANDIDATES_FILE,
            k,
            positions,
            contexts_seen,
            contexts_kept: kept,
            bytes: c.file_bytes() as u64,
            in_sample_hit_share: in_sample as f64 / positions.max(1) as f64,
            pruned_below,
        };
        Ok(Some((c, summary)))
    }
}

/// One context's top continuations.
#[derive(Debug)]
struct Ranked {
    key: u64,
    /// Corpus positions whose next token is among `ids`.
    hits: u64,
    ids: Vec<u32>,
}

/// Positions (over the counted pairs) whose next token a backing-off prediction from the
/// kept `contexts` would have listed first-come: the order-2 context where kept, else the
/// order-1 one. Pairs are sorted by context.
fn in_sample_hits(contexts: &[Ranked], pairs: &[(u128, u32)]) -> u64 {
    let kept: HashMap<u64, &[u32]> = contexts.iter().map(|c| (c.key, &c.ids[..])).collect();
    let mut hits = 0u64;
    for &(p, count) in pairs {
        let key = (p >> 32) as u64;
        let next = p as u32;
        if key >> 32 == 0 {
            continue;
        }
        // Each position has exactly one order-2 pair (except a document's first, which
        // has only its order-1 pair and is left out here).
        let list = kept
            .get(&key)
            .or_else(|| kept.get(&(key & 0xFFFF_FFFF)))
            .copied()
            .unwrap_or(&[]);
        if list.contains(&next) {
            hits += u64::from(count);
        }
    }
    hits
}

/// Halves a shard's distinct pairs or more: drops every pair seen fewer times than a
/// threshold that doubles until the shard is at most three quarters full.
fn prune(s: &mut Shard) {
    let target = MAX_PAIRS / SHARDS * 3 / 4;
    let mut below = s.pruned_below.max(2);
    while s.counts.len() > target {
        s.counts.retain(|_, c| *c >= below);
        s.pruned_below = below;
        below = below.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(docs: &[&[u32]]) -> CandidateCounter {
        let c = CandidateCounter::default();
        let mut scratch = DocScratch::default();
        for d in docs {
            let canonical: Vec<i64> = d.iter().map(|&r| i64::from(r % 50)).collect();
            c.observe(d, &canonical, &mut scratch).expect("observes");
        }
        c
    }

    #[test]
    fn keeps_the_most_frequent_continuations() {
        // After 1: 2 three times, 3 once; after (5, 1): 3 twice.
        let c = count(&[&[1, 2, 1, 2, 1, 2], &[5, 1, 3], &[5, 1, 3], &[9]]);
        let (t, s) = c.finish(42, 2, 1 << 20).expect("ok").expect("some");
        assert_eq!(t.table_id, 42);
        assert_eq!(t.k(), 2);
        assert_eq!(s.positions, 5 + 2 + 2);
        let mut out = Vec::new();
        t.predict_into(&[1], 2, &mut out);
        assert_eq!(out, [2, 3]);
        t.predict_into(&[5, 1], 2, &mut out);
        assert_eq!(out, [3, 2]);
        // (2, 1) -> [2] differs from the order-1 list of 1, so it is kept; the order-1
        // list fills the second place.
        t.predict_into(&[2, 1], 2, &mut out);
        assert_eq!(out, [2, 3]);
        assert!(s.in_sample_hit_share > 0.5, "{s:?}");
    }

    #[test]
    fn budget_keeps_the_contexts_worth_most() {
        let c = count(&[&[1, 2, 1, 2, 1, 2, 1, 2], &[7, 8]]);
        let one = (CANDIDATES_HEADER_BYTES + CANDIDATES_TRAILER_BYTES + record_bytes(1)) as u64;
        let (t, _) = c.finish(0, 1, one).expect("ok").expect("one context");
        assert_eq!(t.len(), 1);
        // Order-1 context 1 -> 2 (4 hits) and 2 -> 1 (3 hits) beat 7 -> 8 (1 hit, below
        // MIN_CONTEXT_HITS anyway); 1 -> 2 is worth most.
        assert_eq!(t.get(order1_key(1).expect("fits")), Some(&[2u32][..]));
        let c = count(&[&[7, 8]]);
        assert!(
            c.finish(0, 1, 1 << 20).expect("ok").is_none(),
            "nothing frequent"
        );
        let c = count(&[&[1, 2, 1, 2]]);
        assert!(c.finish(0, 1, 10).expect("ok").is_none(), "no room");
        assert!(count(&[]).finish(0, 0, 1 << 20).is_err(), "k = 0");
    }

    #[test]
    fn same_table_whatever_the_document_order() {
        let docs: Vec<Vec<u32>> = (0..40u32)
            .map(|d| (0..30).map(|i| (d * 7 + i * i) % 13).collect())
            .collect();
        let fwd: Vec<&[u32]> = docs.iter().map(Vec::as_slice).collect();
        let rev: Vec<&[u32]> = docs.iter().rev().map(Vec::as_slice).collect();
        let a = count(&fwd)
            .finish(1, 4, 1 << 20)
            .expect("ok")
            .expect("some");
        let b = count(&rev)
            .finish(1, 4, 1 << 20)
            .expect("ok")
            .expect("some");
        assert_eq!(a.0.to_bytes(), b.0.to_bytes());
    }

    #[test]
    fn pruning_drops_rare_pairs_and_says_so() {
        let mut s = Shard::default();
        for i in 0..(MAX_PAIRS / SHARDS + 1) as u128 {
            s.counts.insert(i, 1);
        }
        s.counts.insert(u128::MAX, 5);
        prune(&mut s);
        assert_eq!(s.pruned_below, 2);
        assert_eq!(s.counts.len(), 1);
    }
}
