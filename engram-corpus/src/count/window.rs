//! A worker's window of positions: packed n-gram contexts, sorted and aggregated into one
//! counter update per head per distinct n-gram ([`super::Strategy::Aggregated`]), or one
//! update per hit ([`super::Strategy::Direct`]).

use anyhow::{Context, Result};
use engram_kernels::EngramLayout;
use engram_kernels::hash::{HashOutput, NgramHasher};

use super::pending::Pending;
use super::{Counters, MAX_PENDING_UPDATES, Strategy, WINDOW_TOKENS};

/// A position's context packed into a `u128`: N fields of `bits` bits, the oldest id in the
/// lowest field. Sorting keys therefore sorts by the most recent id first, and an order-n
/// n-gram (the n most recent ids) is the key's top n fields.
#[derive(Debug, Clone, Copy)]
pub struct Packing {
    bits: u32,
    max_ngram: usize,
    all_pad: u128,
}

impl Packing {
    /// `None` when ids or the padding id need more than `128 / N` bits, or the padding id is
    /// negative.
    pub fn new(layout: &EngramLayout) -> Option<Self> {
        let pad = u64::try_from(layout.compressed_pad_id).ok()?;
        let max_id = layout.compressed_vocab_size.saturating_sub(1).max(pad);
        let bits = (u64::BITS - max_id.leading_zeros()).max(1);
        let max_ngram = layout.config.max_ngram;
        if u32::try_from(max_ngram).ok()?.checked_mul(bits)? > u128::BITS {
            return None;
        }
        let all_pad = (0..max_ngram).fold(0u128, |k, _| k << bits | u128::from(pad));
        Some(Self {
            bits,
            max_ngram,
            all_pad,
        })
    }

    /// The context of a document's first position, before any id: all padding.
    pub(crate) fn start(&self) -> u128 {
        self.all_pad
    }

    /// Longest n-gram order a key holds (N).
    pub fn max_ngram(&self) -> usize {
        self.max_ngram
    }

    /// The context after `key`'s for the next position, whose id is `id`. A barrier
    /// position hashes as all-padding and hides everything before it (the hasher would
    /// mask it too; resetting keeps equal contexts equal keys).
    #[inline]
    pub(crate) fn next(&self, key: u128, id: i64, barrier: Option<i64>) -> Result<u128> {
        if barrier == Some(id) {
            Ok(self.all_pad)
        } else {
            self.shift_in(key, id)
        }
    }

    /// The context's N ids, oldest first, as the hasher takes them.
    pub fn context(&self, key: u128, out: &mut [i64]) {
        for (j, c) in out.iter_mut().enumerate().take(self.max_ngram) {
            *c = self.field(key, j);
        }
    }

    /// The context after `key`'s, with `id` as the most recent id.
    #[inline]
    fn shift_in(&self, key: u128, id: i64) -> Result<u128> {
        let field = u64::try_from(id)
            .ok()
            .filter(|&f| f.checked_shr(self.bits).unwrap_or(0) == 0)
            .with_context(|| {
                format!(
                    "compressed id {id} does not fit the {}-bit n-gram key (ids are in [0, 2^{}))",
                    self.bits, self.bits
                )
            })?;
        let top = self.bits * (self.max_ngram as u32 - 1);
        Ok(key >> self.bits | u128::from(field) << top)
    }

    /// Field `j` of `key` (0 = the oldest id).
    #[inline]
    fn field(&self, key: u128, j: usize) -> i64 {
        let mask = (1u128 << self.bits) - 1;
        (key >> (self.bits * j as u32) & mask) as i64
    }

    /// The order-`n` n-gram of `key` (its top `n` fields), `2 <= n <= N`.
    #[inline]
    pub fn prefix(&self, key: u128, n: usize) -> u128 {
        key >> (self.bits * (self.max_ngram - n) as u32)
    }
}

/// One worker's buffers. Every document must be followed, eventually, by [`Worker::flush`]:
/// until then its hits sit in the buffers.
#[derive(Debug)]
pub(super) struct Worker<'a> {
    counters: &'a Counters,
    hasher: &'a NgramHasher,
    // Some: Aggregated; None: Direct
    packing: Option<Packing>,
    window_tokens: usize,
    barrier: Option<i64>,
    // (<= window_tokens,) packed contexts; after a sort, the distinct ones
    keys: Vec<u128>,
    // (distinct,) how often each distinct context occurred
    counts: Vec<u32>,
    // (N + 1,) running count of the current order-n group, indexed by n
    group: Vec<u32>,
    // (N,) one context, oldest first
    context: Vec<i64>,
    // (heads,) Aggregated: one context's rows in one layer; Direct: (tokens, heads)
    rows: Vec<u64>,
    pending: Pending,
}

impl<'a> Worker<'a> {
    pub(super) fn new(
        counters: &'a Counters,
        hasher: &'a NgramHasher,
        layout: &EngramLayout,
        strategy: Strategy,
        window_tokens: usize,
    ) -> Result<Self> {
        anyhow::ensure!(
            (1..=WINDOW_TOKENS).contains(&window_tokens),
            "window of {window_tokens} positions: expected 1..={WINDOW_TOKENS}"
        );
        anyhow::ensure!(
            hasher.n_layers() + 1 == counters.layer_base.len(),
            "the hasher has {} layers, the counters {}",
            hasher.n_layers(),
            counters.layer_base.len() - 1
        );
        let packing = match strategy {
            Strategy::Aggregated => Some(Packing::new(layout).with_context(|| {
                format!(
                    "order-{} contexts of a {}-id vocabulary do not pack into 128 bits",
                    layout.config.max_ngram, layout.compressed_vocab_size
                )
            })?),
            Strategy::Direct => None,
        };
        let n = hasher.max_ngram();
        Ok(Self {
            counters,
            hasher,
            packing,
            window_tokens,
            barrier: hasher.options().barrier_id,
            keys: Vec::with_capacity(if packing.is_some() { window_tokens } else { 0 }),
            counts: Vec::new(),
            group: vec![0; n + 1],
            context: vec![0; n],
            rows: vec![0; hasher.n_hash_heads()],
            pending: Pending::new(counters),
        })
    }

    /// Counts one document of compressed ids; it starts with left padding.
    pub(super) fn add_document(&mut self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let Some(p) = self.packing else {
            return self.add_direct(ids);
        };
        let mut key = p.start();
        for &id in ids {
            key = p.next(key, id, self.barrier)?;
            self.keys.push(key);
            if self.keys.len() >= self.window_tokens {
                self.flush_window(p)?;
            }
        }
        Ok(())
    }

    fn add_direct(&mut self, ids: &[i64]) -> Result<()> {
        let len = ids
            .len()
            .checked_mul(self.hasher.n_hash_heads())
            .context("document too long to hash")?;
        self.rows.resize(len, 0);
        for li in 0..self.hasher.n_layers() {
            self.hasher
                .hash_into(li, ids, 1, ids.len(), HashOutput::RowId, &mut self.rows)?;
            let base = self.counters.layer_base[li];
            for &r in &self.rows {
                self.pending.push(base + r, 1);
                if self.pending.len >= MAX_PENDING_UPDATES {
                    self.pending.apply(self.counters)?;
                }
            }
        }
        Ok(())
    }

    /// Sorts the window, turns each distinct n-gram of every order into one update per head
    /// and applies them.
    fn flush_window(&mut self, p: Packing) -> Result<()> {
        self.keys.sort_unstable();
        self.counts.clear();
        let mut distinct = 0;
        for i in 0..self.keys.len() {
            if distinct > 0 && self.keys[distinct - 1] == self.keys[i] {
                self.counts[distinct - 1] += 1;
            } else {
                self.keys[distinct] = self.keys[i];
                self.counts.push(1);
                distinct += 1;
            }
        }
        self.keys.truncate(distinct);

        // Walk backwards so that the first context of an order-n group (the one whose
        // n-prefix differs from its predecessor's) sees the group's whole count; the
        // n-gram's rows are the same for every context of the group. Groups nest: a context
        // that starts an order-n group starts the groups of every higher order too.
        let n_max = p.max_ngram;
        let k_heads = self.hasher.n_hash_heads() / (n_max - 1);
        self.group.fill(0);
        for i in (0..distinct).rev() {
            let key = self.keys[i];
            let lowest = match i.checked_sub(1).map(|j| self.keys[j]) {
                None => 2,
                Some(prev) => (2..=n_max)
                    .find(|&n| p.prefix(prev, n) != p.prefix(key, n))
                    .unwrap_or(n_max),
            };
            for n in 2..=n_max {
                self.group[n] += self.counts[i];
            }
            p.context(key, &mut self.context);
            for li in 0..self.hasher.n_layers() {
                self.hasher
                    .hash_last_into(li, &self.context, HashOutput::RowId, &mut self.rows)?;
                let base = self.counters.layer_base[li];
                for n in lowest..=n_max {
                    let heads = &self.rows[(n - 2) * k_heads..(n - 1) * k_heads];
                    for &r in heads {
                        self.pending.push(base + r, self.group[n]);
                    }
                }
            }
            for n in lowest..=n_max {
                self.group[n] = 0;
            }
            if self.pending.len >= MAX_PENDING_UPDATES {
                self.pending.apply(self.counters)?;
            }
        }
        self.keys.clear();
        Ok(())
    }

    /// Applies everything buffered.
    pub(super) fn flush(&mut self) -> Result<()> {
        if let Some(p) = self.packing {
            self.flush_window(p)?;
        }
        self.pending.apply(self.counters)?;
        Ok(())
    }
}
