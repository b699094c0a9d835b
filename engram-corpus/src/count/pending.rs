//! Counter updates bucketed by shard until a worker applies them.

use std::sync::TryLockError;

use anyhow::Result;

use super::shard::Shard;
use super::{Counters, SHARD_ROWS, SHARD_SHIFT, lock};

/// Updates staged per shard before they move to its bucket: one cache line.
const STAGE: usize = 8;

/// A shard's staged updates, aligned to a cache line.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Stage([u64; STAGE]);

/// Counter updates waiting to be applied, bucketed by shard.
///
/// A push lands in its shard's staging line; a full line moves to the shard's bucket in
/// one copy. All staging lines are one block (23 KiB for V4.1's 367 shards) that stays in
/// cache, so a push costs a cache hit instead of a miss on one of hundreds of bucket tails
/// (software write-combining, as in radix partitioning).
#[derive(Debug)]
pub(super) struct Pending {
    // (shards,) each update is `offset_in_shard << 32 | count`
    buckets: Vec<Vec<u64>>,
    // (shards,) the newest updates of each shard, and how many of its slots are used
    stage: Vec<Stage>,
    staged: Vec<u8>,
    pub(super) len: usize,
    // shards that were busy during a sweep, applied at its end
    deferred: Vec<usize>,
}

impl Pending {
    pub(super) fn new(counters: &Counters) -> Self {
        let shards = counters.shards.len();
        Self {
            buckets: vec![Vec::new(); shards],
            stage: vec![Stage::default(); shards],
            staged: vec![0; shards],
            len: 0,
            deferred: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, global_row: u64, count: u32) {
        let shard = (global_row >> SHARD_SHIFT) as usize;
        let offset = global_row & (SHARD_ROWS - 1);
        let used = usize::from(self.staged[shard]);
        let line = &mut self.stage[shard].0;
        line[used] = offset << 32 | u64::from(count);
        if used + 1 == STAGE {
            self.buckets[shard].extend_from_slice(line);
            self.staged[shard] = 0;
        } else {
            self.staged[shard] = (used + 1) as u8;
        }
        self.len += 1;
    }

    /// Applies every shard's updates in shard order. A shard another worker is applying is
    /// skipped and applied after the sweep, so two sweeps never queue behind each other
    /// shard by shard.
    pub(super) fn apply(&mut self, counters: &Counters) -> Result<()> {
        self.deferred.clear();
        for shard in 0..self.buckets.len() {
            if self.staged[shard] == 0 && self.buckets[shard].is_empty() {
                continue;
            }
            match counters.shards[shard].try_lock() {
                Ok(mut s) => self.apply_shard(shard, &mut s)?,
                Err(TryLockError::Poisoned(p)) => self.apply_shard(shard, &mut p.into_inner())?,
                Err(TryLockError::WouldBlock) => self.deferred.push(shard),
            }
        }
        for i in 0..self.deferred.len() {
            let shard = self.deferred[i];
            self.apply_shard(shard, &mut lock(&counters.shards[shard]))?;
        }
        self.len = 0;
        Ok(())
    }

    fn apply_shard(&mut self, shard: usize, cells: &mut Shard) -> Result<()> {
        let staged = usize::from(self.staged[shard]);
        cells.add(&self.buckets[shard])?;
        cells.add(&self.stage[shard].0[..staged])?;
        self.buckets[shard].clear();
        self.staged[shard] = 0;
        Ok(())
    }
}
