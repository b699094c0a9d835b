//! The hot-row cache: a byte budget of rows in page-locked DRAM, seeded from a frequency
//! profile and admitting misses dynamically.
//!
//! Policy: S3-FIFO per shard (Yang et al., SOSP 2023): new rows enter a small FIFO (10%);
//! one hit there promotes a row to the main CLOCK (2-bit frequency) when it leaves the
//! FIFO; rows leaving it unused go to a ghost table and are admitted straight to main if
//! they miss again soon. `admit_on_first_miss` turns this into plain CLOCK. A profile pins
//! its hottest rows (seen at least `min_hits` times) into a share of the main capacity
//! that is never evicted; the rest stays dynamic.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engram_kernels::alloc::{AllocError, try_vec};

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result};
use crate::profile::Profile;
use crate::table::Table;

/// Shards (independent locks).
pub const CACHE_SHARDS: usize = 16;
/// Top of the per-slot frequency counter.
const MAX_FREQ: u8 = 3;
/// Frequency value of a slot pinned by the profile: the CLOCK hand skips it.
const PINNED: u8 = u8::MAX;
/// At most this share of each shard may be pinned, so eviction always finds a victim.
pub const MAX_PIN_FRACTION: f64 = 0.95;

/// How a profile seeds the cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedOptions {
    /// Share of the capacity pinned with the profile's hottest rows (never evicted); the
    /// rest stays dynamic. Clamped to [`MAX_PIN_FRACTION`].
    pub pin_fraction: f64,
    /// Rows the profile saw fewer times than this are not pinned (counts of 1 are noise).
    pub min_hits: u64,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            pin_fraction: 0.9,
            min_hits: 2,
        }
    }
}
/// The small FIFO holds 1/10 of each shard (S3-FIFO's ratio).
const SMALL_FIFO_DIVISOR: usize = 10;
/// A cache is capped at the table's rows plus `1 / TABLE_SLOT_SLACK_DIVISOR` of them (and
/// one slot per shard), see [`RowCache::for_table`].
pub const TABLE_SLOT_SLACK_DIVISOR: u64 = 4;
/// Bits of the row id in a cache key (the layer index sits above).
const ROW_BITS: u32 = 48;

/// A multiplicative hasher for u64 keys (keys are row ids or packed token contexts, not
/// attacker-chosen strings); the cache's maps and the builder's candidate counter use it.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        let x = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

type KeyMap = HashMap<u64, u32, BuildHasherDefault<KeyHasher>>;

const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
struct Shard {
    map: KeyMap,
    // (slots,) key per slot or EMPTY
    keys: Vec<u64>,
    freq: Vec<u8>,
    // (slots * row_bytes,)
    data: AlignedBuf,
    // slots [0, small_n): the small FIFO of new rows; [small_n, slots): the main CLOCK
    small_n: usize,
    small_hand: usize,
    small_used: usize,
    // main CLOCK hand and fill, relative to small_n
    hand: usize,
    used: usize,
    // direct-mapped ghost of rows evicted from the small FIFO unused
    ghost: Vec<u64>,
}

/// Cache counters.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Lookups of rows the cache held.
    pub hits: AtomicU64,
    /// Lookups of rows it did not hold.
    pub misses: AtomicU64,
    /// Rows inserted after a miss.
    pub admissions: AtomicU64,
    /// Rows evicted to make room.
    pub evictions: AtomicU64,
    /// Rows inserted from a profile at open.
    pub seeded: AtomicU64,
}

/// A sharded, fixed-size row cache.
#[derive(Debug)]
pub struct RowCache {
    shards: Vec<Mutex<Shard>>,
    row_bytes: usize,
    slots_per_shard: usize,
    admit_on_first_miss: bool,
    /// Hit, miss, admission, eviction and seeding counters.
    pub counters: CacheCounters,
}

#[inline]
fn ghost_index(k: u64, len: usize) -> usize {
    (mix(k) >> 7) as usize & (len - 1)
}

#[inline]
fn key(layer: usize, row: u64) -> u64 {
    ((layer as u64) << ROW_BITS) | row
}

#[inline]
fn mix(k: u64) -> u64 {
    let x = k.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^ (x >> 32)
}

impl RowCache {
    /// A cache for `table` of at most `budget_bytes` of rows, capped at what the table can
    /// use: `1 + 1 / TABLE_SLOT_SLACK_DIVISOR` times its row count (shards are chosen by hash, so a
    /// budget of exactly the table's size would leave some rows out). A budget of a
    /// terabyte on a small table allocates only the table's size.
    pub fn for_table(
        table: &Table,
        budget_bytes: u64,
        admit_on_first_miss: bool,
    ) -> Result<Option<Self>> {
        let mut rows = 0u64;
        for li in 0..table.n_layers() {
            rows = rows.saturating_add(table.rows(li)?);
        }
        let row_bytes = table.row_bytes().max(1) as u64;
        let usable = rows
            .saturating_add(rows / TABLE_SLOT_SLACK_DIVISOR)
            .saturating_add(CACHE_SHARDS as u64)
            .saturating_mul(row_bytes);
        Self::new(
            budget_bytes.min(usable),
            table.row_bytes(),
            admit_on_first_miss,
        )
    }

    /// A cache of at most `budget_bytes` of rows (`row_bytes` each). Zero budget: `None`.
    /// Every buffer is allocated fallibly: a budget the machine cannot hold is an error.
    pub fn new(
        budget_bytes: u64,
        row_bytes: usize,
        admit_on_first_miss: bool,
    ) -> Result<Option<Self>> {
        let slots = usize::try_from(budget_bytes / row_bytes.max(1) as u64).unwrap_or(usize::MAX);
        // Slot indices are u32 in the key map.
        let per = (slots / CACHE_SHARDS).min(u32::MAX as usize);
        if per == 0 {
            return Ok(None);
        }
        let data_bytes = per.checked_mul(row_bytes).ok_or(AllocError {
            what: "cache rows",
            len: per,
            bytes: u64::MAX,
        })?;
        let mut shards = Vec::with_capacity(CACHE_SHARDS);
        for _ in 0..CACHE_SHARDS {
            // The largest buffer first, so an impossible budget fails before the others.
            let data = AlignedBuf::new_pinned(data_bytes)?;
            let mut map = KeyMap::default();
            // Twice the live entries: evictions leave tombstones, and with at most half the
            // capacity live the table always rehashes in place instead of growing, so the
            // steady state never allocates.
            let entries = per.saturating_mul(2);
            map.try_reserve(entries).map_err(|_| AllocError {
                what: "cache key map",
                len: entries,
                bytes: (entries as u64).saturating_mul(16),
            })?;
            let small_n = if admit_on_first_miss || per < 2 {
                0
            } else {
                (per / SMALL_FIFO_DIVISOR).max(1)
            };
            shards.push(Mutex::new(Shard {
                map,
                keys: try_vec(per, EMPTY, "cache keys")?,
                freq: try_vec(per, 0, "cache frequencies")?,
                data,
                small_n,
                small_hand: 0,
                small_used: 0,
                hand: 0,
                used: 0,
                ghost: try_vec(
                    (per - small_n).next_power_of_two(),
                    EMPTY,
                    "cache ghost keys",
                )?,
            }));
        }
        Ok(Some(Self {
            shards,
            row_bytes,
            slots_per_shard: per,
            admit_on_first_miss,
            counters: CacheCounters::default(),
        }))
    }

    fn small_slots(&self) -> usize {
        self.shards
            .first()
            .and_then(|s| s.lock().ok().map(|s| s.small_n))
            .unwrap_or(0)
    }

    /// `"s3fifo"` or `"clock"` (admit every miss).
    pub fn policy(&self) -> &'static str {
        if self.admit_on_first_miss {
            "clock"
        } else {
            "s3fifo"
        }
    }

    /// Rows the cache can hold.
    pub fn capacity_rows(&self) -> usize {
        self.slots_per_shard * CACHE_SHARDS
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.used + s.small_used).unwrap_or(0))
            .sum()
    }

    /// Whether the cache holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, k: u64) -> &Mutex<Shard> {
        &self.shards[(mix(k) as usize) % CACHE_SHARDS]
    }

    /// Whether row `row` of layer `layer` is cached (no counters, no frequency bump).
    pub fn contains(&self, layer: usize, row: u64) -> bool {
        let k = key(layer, row);
        self.shard(k).lock().is_ok_and(|s| s.map.contains_key(&k))
    }

    /// Copies row `row` of layer `layer` into `out` if cached.
    pub fn get(&self, layer: usize, row: u64, out: &mut [u8]) -> bool {
        let k = key(layer, row);
        let Ok(mut s) = self.shard(k).lock() else {
            return false;
        };
        let hit = if let Some(&slot) = s.map.get(&k) {
            let slot = slot as usize;
            let rb = self.row_bytes;
            out.copy_from_slice(&s.data[slot * rb..(slot + 1) * rb]);
            if s.freq[slot] < MAX_FREQ {
                s.freq[slot] += 1;
            }
            true
        } else {
            false
        };
        drop(s);
        if hit {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Offers a row read from the backend.
    pub fn admit(&self, layer: usize, row: u64, bytes: &[u8]) {
        let k = key(layer, row);
        let Ok(mut s) = self.shard(k).lock() else {
            return;
        };
        if s.map.contains_key(&k) {
            return;
        }
        let evicted = if s.small_n == 0 {
            self.insert(&mut s, k, bytes, 0)
        } else {
            let g = ghost_index(k, s.ghost.len());
            if s.ghost[g] == k {
                // Seen recently and evicted unused from the small FIFO: straight to main.
                s.ghost[g] = EMPTY;
                self.insert(&mut s, k, bytes, 0)
            } else {
                self.insert_small(&mut s, k, bytes)
            }
        };
        drop(s);
        self.counters.admissions.fetch_add(1, Ordering::Relaxed);
        if evicted {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A free main slot, or the main CLOCK victim's (unmapped); and whether it evicted.
    fn main_slot(&self, s: &mut Shard) -> (usize, bool) {
        let n = self.slots_per_shard - s.small_n;
        if s.used < n {
            s.used += 1;
            return (s.small_n + s.used - 1, false);
        }
        loop {
            let h = s.small_n + s.hand;
            s.hand = (s.hand + 1) % n;
            if s.freq[h] == PINNED {
                continue;
            }
            if s.freq[h] == 0 {
                let old = s.keys[h];
                s.map.remove(&old);
                return (h, true);
            }
            s.freq[h] -= 1;
        }
    }

    fn place(&self, s: &mut Shard, slot: usize, k: u64, bytes: &[u8], freq: u8) {
        let rb = self.row_bytes;
        s.data[slot * rb..(slot + 1) * rb].copy_from_slice(bytes);
        s.keys[slot] = k;
        s.freq[slot] = freq;
        s.map.insert(k, slot as u32);
    }

    /// Places `k` in the main CLOCK; returns whether it evicted.
    fn insert(&self, s: &mut Shard, k: u64, bytes: &[u8], freq: u8) -> bool {
        let (slot, evicted) = self.main_slot(s);
        self.place(s, slot, k, bytes, freq);
        evicted
    }

    /// S3-FIFO admission: new rows enter the small FIFO; the row it pushes out moves to
    /// main if it was hit meanwhile, else its key goes to the ghost.
    fn insert_small(&self, s: &mut Shard, k: u64, bytes: &[u8]) -> bool {
        let mut evicted = false;
        let slot = if s.small_used < s.small_n {
            s.small_used += 1;
            s.small_used - 1
        } else {
            let slot = s.small_hand;
            s.small_hand = (s.small_hand + 1) % s.small_n;
            let old = s.keys[slot];
            s.map.remove(&old);
            if s.freq[slot] > 0 {
                let (dst, ev) = self.main_slot(s);
                evicted = ev;
                let rb = self.row_bytes;
                s.data.copy_within(slot * rb..(slot + 1) * rb, dst * rb);
                s.keys[dst] = old;
                s.freq[dst] = 0;
                s.map.insert(old, dst as u32);
            } else {
                let g = ghost_index(old, s.ghost.len());
                s.ghost[g] = old;
                evicted = true;
            }
            slot
        };
        self.place(s, slot, k, bytes, 0);
        evicted
    }

    /// Pins a profile's hottest rows (globally ranked by hits) into up to
    /// `options.pin_fraction` of the cache; `read(layer_index, rows, out)` fetches their
    /// bytes. Returns rows seeded.
    pub fn seed(
        &self,
        profile: &Profile,
        options: &SeedOptions,
        layer_index_of: impl Fn(u64) -> Option<usize>,
        mut read: impl FnMut(usize, &[u64], &mut [u8]) -> Result<()>,
    ) -> Result<u64> {
        // Merge layers by hits (rank order within each layer is given).
        let mut cursors: Vec<(usize, &crate::profile::LayerProfile, usize)> = profile
            .layers
            .iter()
            .filter_map(|l| layer_index_of(l.layer_id).map(|i| (i, l, 0usize)))
            .collect();
        let mut chosen: Vec<Vec<u64>> =
            vec![Vec::new(); cursors.iter().map(|c| c.0 + 1).max().unwrap_or(0)];
        let frac = options.pin_fraction.clamp(0.0, MAX_PIN_FRACTION);
        let main_n = self.slots_per_shard - self.small_slots();
        let per_shard_cap = ((main_n as f64 * frac) as usize).min(main_n.saturating_sub(1));
        let mut budget = per_shard_cap * CACHE_SHARDS;
        let mut per_shard = [0usize; CACHE_SHARDS];
        while budget > 0 {
            let best = cursors
                .iter_mut()
                .filter(|c| c.2 < c.1.entries.len())
                .max_by_key(|c| c.1.entries[c.2].1);
            let Some(c) = best else { break };
            let (row, hits) = c.1.entries[c.2];
            if hits < options.min_hits {
                break;
            }
            c.2 += 1;
            let sh = (mix(key(c.0, row)) as usize) % CACHE_SHARDS;
            if per_shard[sh] < per_shard_cap {
                per_shard[sh] += 1;
                chosen[c.0].push(row);
                budget -= 1;
            }
        }
        let mut seeded = 0u64;
        let rb = self.row_bytes;
        for (li, rows) in chosen.iter_mut().enumerate() {
            // In file order: neighbouring rows share reads.
            rows.sort_unstable();
            for chunk in rows.chunks(4096) {
                let mut buf = vec![0u8; chunk.len() * rb];
                read(li, chunk, &mut buf)?;
                for (&row, bytes) in chunk.iter().zip(buf.chunks_exact(rb)) {
                    let k = key(li, row);
                    let mut s = self
                        .shard(k)
                        .lock()
                        .map_err(|_| Error::ShutDown("cache lock poisoned"))?;
                    if !s.map.contains_key(&k) {
                        self.insert(&mut s, k, bytes, PINNED);
                        seeded += 1;
                    }
                }
            }
        }
        self.counters.seeded.fetch_add(seeded, Ordering::Relaxed);
        Ok(seeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_after_admit_and_eviction_bounded() {
        let c = RowCache::new(16 * 4 * 8, 8, true)
            .expect("alloc")
            .expect("some");
        assert_eq!(c.capacity_rows(), 64);
        let mut out = [0u8; 8];
        assert!(!c.get(0, 5, &mut out));
        c.admit(0, 5, &[5u8; 8]);
        assert!(c.get(0, 5, &mut out));
        assert_eq!(out, [5u8; 8]);
        for r in 0..10_000u64 {
            c.admit(1, r, &r.to_le_bytes());
        }
        assert!(c.len() <= 64);
        // Whatever is cached is correct.
        for r in 0..10_000u64 {
            if c.get(1, r, &mut out) {
                assert_eq!(out, r.to_le_bytes());
            }
        }
    }

    #[test]
    fn impossible_budgets_are_errors_not_aborts() {
        // 2^64 - 1 bytes of 1 MiB rows: u32::MAX slots per shard, 4 PiB of row data, beyond
        // any address space: a typed error, not an allocation abort.
        let e = RowCache::new(u64::MAX, 1 << 20, false).expect_err("cannot allocate");
        assert!(
            matches!(e, Error::Alloc(_) | Error::Unavailable { .. }),
            "{e}"
        );
    }

    #[test]
    fn pinned_rows_survive_and_hot_rows_are_kept() {
        let c = RowCache::new(16 * 100 * 8, 8, false)
            .expect("alloc")
            .expect("some");
        let profile = Profile {
            table_id: 0,
            layers: vec![crate::profile::LayerProfile::from_counts(
                7,
                (0..400u64).map(|r| (r, 1000 - r)),
                400,
            )],
        };
        let seeded = c
            .seed(
                &profile,
                &SeedOptions::default(),
                |lid| (lid == 7).then_some(0),
                |_, ids, out| {
                    for (k, &id) in ids.iter().enumerate() {
                        out[k * 8..k * 8 + 8].copy_from_slice(&id.to_le_bytes());
                    }
                    Ok(())
                },
            )
            .expect("seed");
        assert!(seeded > 300, "{seeded}");
        let mut out = [0u8; 8];
        let pinned: Vec<u64> = (0..400u64).filter(|&r| c.get(0, r, &mut out)).collect();
        assert_eq!(pinned.len() as u64, seeded);
        // A scan of cold rows, plus one row hit repeatedly.
        for r in 10_000..60_000u64 {
            if !c.get(0, r, &mut out) {
                c.admit(0, r, &r.to_le_bytes());
            }
            if !c.get(0, 5_000, &mut out) {
                c.admit(0, 5_000, &5_000u64.to_le_bytes());
            }
        }
        for &r in &pinned {
            assert!(c.get(0, r, &mut out), "pinned row {r} evicted");
            assert_eq!(out, r.to_le_bytes());
        }
        assert!(c.get(0, 5_000, &mut out));
        assert!(c.len() <= c.capacity_rows());
    }
}
