//! One shard of hit counters: a byte per row, the few rows that pass 254 hits in a side
//! table, and four bytes per row once too many rows have.
//!
//! A build over a real corpus touches ~10% of a V4.1 table's rows and leaves 99.9% of the
//! touched ones under 255 hits (CPython's standard library: 51.7 k of 40.5 M rows per layer
//! pass it, 48 pass 65,534). Bytes instead of `u32` cells quarter the memory that has to be
//! zeroed, paged in and pulled through the caches, which is what counting costs. Counts are
//! exact either way: a row reads as `min(u32::MAX, hits)`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use anyhow::{Context, Result};
use memmap2::{Advice, MmapMut};

/// Transparent huge page size on x86-64 and most aarch64 kernels. Mappings that are a
/// multiple of it are placed on its boundary by Linux >= 6.7, so they can be huge pages.
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// A narrow cell holding this value has its count in the side table.
const ESCAPE: u8 = u8::MAX;
/// A narrow shard widens to `u32` cells once more than `rows / WIDEN_DIVISOR` of its rows
/// are in the side table (a few hundred per 2 M-row shard on real code; the bound keeps a
/// hot corpus from growing the side table past a quarter of the wide cells' size).
const WIDEN_DIVISOR: usize = 32;

/// `rows` zeroed counters.
#[derive(Debug)]
pub(super) struct Shard {
    rows: usize,
    cells: Cells,
}

#[derive(Debug)]
enum Cells {
    /// One byte per row; [`ESCAPE`] marks a row whose count is in `big`.
    Narrow {
        bytes: MmapMut,
        big: HashMap<u32, u32, BuildHasherDefault<RowHasher>>,
    },
    /// One `u32` per row.
    Wide(MmapMut),
}

impl Shard {
    pub(super) fn new(rows: usize) -> Result<Self> {
        anyhow::ensure!(
            u32::try_from(rows).is_ok(),
            "a counter shard of {rows} rows: at most {} rows",
            u32::MAX
        );
        Ok(Self {
            rows,
            cells: Cells::Narrow {
                bytes: zeroed(rows)?,
                big: HashMap::default(),
            },
        })
    }

    /// Adds `offset << 32 | count` updates, saturating at `u32::MAX`.
    pub(super) fn add(&mut self, updates: &[u64]) -> Result<()> {
        let rest = match &mut self.cells {
            Cells::Wide(map) => {
                add_wide(wide(map, self.rows), updates);
                return Ok(());
            }
            Cells::Narrow { bytes, big } => {
                match add_narrow(
                    &mut bytes[..self.rows],
                    big,
                    self.rows / WIDEN_DIVISOR,
                    updates,
                ) {
                    None => return Ok(()),
                    Some(done) => &updates[done..],
                }
            }
        };
        self.widen()?;
        self.add(rest)
    }

    /// Rows in the shard.
    #[cfg(test)]
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// The count of row `offset`.
    pub(super) fn get(&self, offset: usize) -> u32 {
        match &self.cells {
            Cells::Wide(map) => wide_ref(map, self.rows)[offset],
            Cells::Narrow { bytes, big } => match bytes[offset] {
                ESCAPE => big.get(&(offset as u32)).copied().unwrap_or(0),
                b => u32::from(b),
            },
        }
    }

    /// Calls `f(offset, count)` for every row in `range` with a nonzero count, in order.
    pub(super) fn each_nonzero(
        &self,
        range: std::ops::Range<usize>,
        mut f: impl FnMut(usize, u32),
    ) {
        match &self.cells {
            Cells::Wide(map) => {
                for (i, &c) in wide_ref(map, self.rows)[range.clone()].iter().enumerate() {
                    if c > 0 {
                        f(range.start + i, c);
                    }
                }
            }
            Cells::Narrow { bytes, .. } => {
                for (i, &b) in bytes[range.clone()].iter().enumerate() {
                    if b > 0 {
                        f(range.start + i, self.get(range.start + i));
                    }
                }
            }
        }
    }

    /// Moves to `u32` cells.
    fn widen(&mut self) -> Result<()> {
        let bytes = self.rows.checked_mul(4).context("counter bytes overflow")?;
        let mut map = zeroed(bytes)?;
        let cells = wide(&mut map, self.rows);
        for (offset, c) in cells.iter_mut().enumerate() {
            *c = self.get(offset);
        }
        tracing::debug!(rows = self.rows, "hit counter shard widened to 32 bits");
        self.cells = Cells::Wide(map);
        Ok(())
    }

    /// Sets row `offset` to `count` (tests: start from a chosen state).
    #[cfg(test)]
    pub(super) fn set(&mut self, offset: usize, count: u32) -> Result<()> {
        match &mut self.cells {
            Cells::Wide(map) => wide(map, self.rows)[offset] = count,
            Cells::Narrow { bytes, big } => {
                big.remove(&(offset as u32));
                if count < u32::from(ESCAPE) {
                    bytes[offset] = count as u8;
                } else {
                    bytes[offset] = ESCAPE;
                    big.insert(offset as u32, count);
                }
            }
        }
        if matches!(&self.cells, Cells::Narrow { big, .. } if big.len() > self.rows / WIDEN_DIVISOR)
        {
            self.widen()?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn is_wide(&self) -> bool {
        matches!(self.cells, Cells::Wide(_))
    }
}

/// Applies updates to byte cells; returns how many it applied if the side table outgrew
/// `max_big` entries before the end (the shard must then widen).
fn add_narrow(
    cells: &mut [u8],
    big: &mut HashMap<u32, u32, BuildHasherDefault<RowHasher>>,
    max_big: usize,
    updates: &[u64],
) -> Option<usize> {
    for (i, &u) in updates.iter().enumerate() {
        let (offset, count) = ((u >> 32) as usize, u as u32);
        let cell = &mut cells[offset];
        let sum = u32::from(*cell).saturating_add(count);
        if sum < u32::from(ESCAPE) {
            *cell = sum as u8;
            continue;
        }
        if *cell == ESCAPE {
            let c = big.entry(offset as u32).or_default();
            *c = c.saturating_add(count);
        } else {
            *cell = ESCAPE;
            big.insert(offset as u32, sum);
            if big.len() > max_big {
                return Some(i + 1);
            }
        }
    }
    None
}

/// Applies updates to `u32` cells. The updates are independent (a repeated offset only
/// chains its own adds), so the CPU overlaps their cache misses.
fn add_wide(cells: &mut [u32], updates: &[u64]) {
    for &u in updates {
        let c = &mut cells[(u >> 32) as usize];
        *c = c.saturating_add(u as u32);
    }
}

/// The `u32` cells at the start of a mapping of at least `rows * 4` bytes.
fn wide(map: &mut MmapMut, rows: usize) -> &mut [u32] {
    // A mapping is page-aligned: the cast cannot fail.
    bytemuck::cast_slice_mut(&mut map[..rows * 4])
}

fn wide_ref(map: &MmapMut, rows: usize) -> &[u32] {
    bytemuck::cast_slice(&map[..rows * 4])
}

/// `bytes` zeroed bytes in an anonymous mapping (the kernel zeroes pages on first touch;
/// a failed reservation is an error, not an abort), advised to use transparent huge pages
/// when large: gigabytes in 4 KiB pages cost a page fault per 4 KiB and a TLB miss per
/// update.
fn zeroed(bytes: usize) -> Result<MmapMut> {
    let huge = bytes >= HUGE_PAGE_BYTES;
    let len = if huge {
        bytes.next_multiple_of(HUGE_PAGE_BYTES)
    } else {
        bytes.max(1)
    };
    let map =
        MmapMut::map_anon(len).with_context(|| format!("reserving {len} bytes of hit counters"))?;
    if huge {
        // Only advice: without transparent huge pages the counters work the same.
        if let Err(e) = map.advise(Advice::HugePage) {
            tracing::debug!(error = %e, "no transparent huge pages for the hit counters");
        }
    }
    Ok(map)
}

/// Hashes a row offset with one multiply (SipHash would cost more than the lookup).
#[derive(Debug, Default, Clone, Copy)]
struct RowHasher(u64);

impl Hasher for RowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{ProptestConfig, prop_assert_eq, prop_oneof, proptest};
    use proptest::strategy::{Just, Strategy as _};

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Byte cells, the side table, widening and saturation read like plain saturating
        /// `u32` counters.
        #[test]
        fn matches_u32_counters(
            (rows, updates) in (1usize..200).prop_flat_map(|rows| {
                let count = prop_oneof![
                    6 => 1u32..4,
                    2 => 1u32..300,
                    1 => Just(u32::MAX / 3),
                    1 => Just(u32::MAX),
                ];
                (Just(rows), proptest::collection::vec((0..rows, count), 0..400))
            }),
            chunk in 1usize..50,
        ) {
            let mut shard = Shard::new(rows).expect("small");
            let mut want = vec![0u32; rows];
            let packed: Vec<u64> =
                updates.iter().map(|&(o, c)| (o as u64) << 32 | u64::from(c)).collect();
            for &(o, c) in &updates {
                want[o] = want[o].saturating_add(c);
            }
            for part in packed.chunks(chunk) {
                shard.add(part).expect("applies");
            }
            for (o, &w) in want.iter().enumerate() {
                prop_assert_eq!(shard.get(o), w);
            }
            let mut seen = Vec::new();
            shard.each_nonzero(0..rows, |o, c| seen.push((o, c)));
            let nonzero: Vec<(usize, u32)> =
                want.iter().enumerate().filter(|&(_, &c)| c > 0).map(|(o, &c)| (o, c)).collect();
            prop_assert_eq!(seen, nonzero);
        }
    }

    #[test]
    fn widens_when_many_rows_outgrow_a_byte() {
        let rows = 320;
        let mut shard = Shard::new(rows).expect("small");
        // 10 rows in the side table: exactly rows / WIDEN_DIVISOR, still narrow.
        let big: Vec<u64> = (0..10).map(|o| o << 32 | 300).collect();
        shard.add(&big).expect("applies");
        assert!(!shard.is_wide());
        shard.add(&[10 << 32 | 255, 11 << 32 | 7]).expect("applies");
        assert!(shard.is_wide());
        assert_eq!(
            (0..12).map(|o| shard.get(o)).collect::<Vec<_>>(),
            [300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 255, 7]
        );
        shard
            .add(&[3 << 32 | u64::from(u32::MAX)])
            .expect("applies");
        assert_eq!(shard.get(3), u32::MAX);
    }
}
