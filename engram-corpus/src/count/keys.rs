//! The corpus's packed n-gram contexts, kept during counting for the n-gram records
//! (`engram-build --records-bytes`): one `u128` per position, the same key the aggregated
//! counter sorts (see [`Packing`]). The row counters say which rows are hot, not which
//! n-grams are; sorting every context of the corpus once gives each n-gram's exact count.
//!
//! The keys are a multiset: which thread adds which document does not change the sorted
//! result, so records come out the same for any thread count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use engram_kernels::EngramLayout;
use engram_kernels::hash::NgramHasher;

use super::lock;
use super::window::Packing;

/// Contexts of the whole corpus, gathered by the counting pipeline.
#[derive(Debug)]
pub struct ContextKeys {
    packing: Packing,
    barrier: Option<i64>,
    max_tokens: u64,
    taken: AtomicU64,
    // (sources,) each source's keys, in the order sources finished
    parts: Mutex<Vec<Vec<u128>>>,
}

impl ContextKeys {
    /// Keeps up to `max_tokens` positions' contexts for `layout`; an error when its contexts
    /// do not pack into 128 bits.
    pub fn new(layout: &EngramLayout, hasher: &NgramHasher, max_tokens: u64) -> Result<Self> {
        let packing = Packing::new(layout).with_context(|| {
            format!(
                "n-gram records need order-{} contexts of the {}-id vocabulary (padding {}) \
                 to pack into 128 bits, and they do not",
                layout.config.max_ngram, layout.compressed_vocab_size, layout.compressed_pad_id
            )
        })?;
        Ok(Self {
            packing,
            barrier: hasher.options().barrier_id,
            max_tokens,
            taken: AtomicU64::new(0),
            parts: Mutex::new(Vec::new()),
        })
    }

    /// Appends the contexts of one document (compressed ids; it starts with left padding)
    /// to `local`.
    pub fn add_document(&self, ids: &[i64], local: &mut Vec<u128>) -> Result<()> {
        let before = self.taken.fetch_add(ids.len() as u64, Ordering::Relaxed);
        if before.saturating_add(ids.len() as u64) > self.max_tokens {
            bail!(
                "n-gram records keep every position of the corpus in memory, at most {} \
                 positions (MAX_RECORD_TOKENS): this corpus has more; build records from a \
                 smaller corpus or without --records-bytes",
                self.max_tokens
            );
        }
        let mut key = self.packing.start();
        for &id in ids {
            key = self.packing.next(key, id, self.barrier)?;
            local.push(key);
        }
        Ok(())
    }

    /// Hands over one source's contexts.
    pub fn push(&self, local: Vec<u128>) {
        if !local.is_empty() {
            lock(&self.parts).push(local);
        }
    }

    /// The key packing, to read n-grams back out of the keys.
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// Every context gathered, in no particular order.
    pub fn into_keys(self) -> Vec<u128> {
        let parts = self.parts.into_inner().unwrap_or_else(|p| p.into_inner());
        let total = parts.iter().map(Vec::len).sum::<usize>();
        let mut parts = parts.into_iter();
        let mut all = parts.next().unwrap_or_default();
        all.reserve_exact(total - all.len());
        for p in parts {
            all.extend_from_slice(&p);
        }
        all
    }
}
