//! Batch planning for the block-device backends: dedup ids, sort by file offset, align to
//! the read unit, coalesce neighbours under a cap, and scatter rows back to output slots.
//! All vectors are reused across batches: no allocation in the steady state.
//!
//! The planner's promise, which the driver and the staging slots rely on: every read it
//! builds starts and ends on the read unit (or at the end of the row region), lies inside
//! the row region, is at most `max_read_bytes` long, and contains every row it serves.

use crate::error::{Error, Result};
use crate::format::Geometry;

/// Largest `max_read_bytes` a caller may ask for (bounds staging and read amplification).
pub const MAX_READ_BYTES_LIMIT: u64 = 16 << 20;
/// Largest coalescing gap a caller may ask for.
pub const MAX_COALESCE_GAP_BYTES: u64 = 1 << 20;

/// Which file a read goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The layer's own file: serves `Plan::pairs`.
    Rows,
    /// The records file: serves `Plan::rec_pairs`.
    Records,
}

/// One device read: `len` bytes at file `offset` of `source`, serving
/// `pairs[pair_start..pair_end]` (or `rec_pairs[..]` for records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    /// Byte offset of the read in the file, aligned to the read unit.
    pub offset: u64,
    /// Bytes to read, a multiple of the read unit.
    pub len: u64,
    /// First (row, slot) pair the read serves.
    pub pair_start: u32,
    /// One past the last pair the read serves.
    pub pair_end: u32,
    /// Which file the read goes to.
    pub source: Source,
}

/// A layer's records, for planning: rows that miss together in one record are read from
/// it in one unit instead of from their own pages.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlan<'a> {
    /// The layer's records (index and checksums).
    pub records: &'a crate::records::LayerRecords,
    /// The records file's shape.
    pub shape: crate::records::RecordShape,
    /// Longest coalesced records read (at least one unit).
    pub max_read_bytes: u64,
}

/// Marks a pair moved to `rec_pairs` (slots are batch positions, far below this).
const TAKEN: u32 = u32::MAX;

/// How reads are shaped; build with [`PlanParams::new`], which checks the bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanParams {
    /// File offset of the row region.
    pub data_offset: u64,
    /// Bytes of the row region.
    pub data_bytes: u64,
    /// Reads start and end on multiples of this (relative to `data_offset`): the read unit,
    /// or the checksum block when reads are verified.
    pub align: u64,
    /// Merge two reads when the gap between them is at most this many bytes.
    pub coalesce_gap_bytes: u64,
    /// No read is longer than this; at least [`PlanParams::row_extent_bytes`].
    pub max_read_bytes: u64,
}

impl PlanParams {
    /// A checked read shape for rows of `geo` in a row region of `data_bytes` bytes at
    /// `data_offset`. `max_read_bytes` is raised to the longest extent a single row can
    /// need, so that every row fits one read.
    pub fn new(
        geo: &Geometry,
        data_offset: u64,
        data_bytes: u64,
        align: u64,
        coalesce_gap_bytes: u64,
        max_read_bytes: u64,
    ) -> Result<Self> {
        let bad = |what, reason: String| Err(Error::Invalid { what, reason });
        if align == 0 || !align.is_multiple_of(512) {
            return bad(
                "read alignment",
                format!("{align} is not a multiple of 512"),
            );
        }
        if !data_offset.is_multiple_of(512) || !data_bytes.is_multiple_of(512) {
            return bad(
                "row region",
                format!("offset {data_offset} and length {data_bytes} must be multiples of 512"),
            );
        }
        if geo.row_bytes == 0 {
            return bad("row bytes", "0".into());
        }
        if max_read_bytes > MAX_READ_BYTES_LIMIT {
            return Err(limit(
                "longest read",
                "MAX_READ_BYTES_LIMIT",
                MAX_READ_BYTES_LIMIT,
                max_read_bytes,
            ));
        }
        if coalesce_gap_bytes > MAX_COALESCE_GAP_BYTES {
            return Err(limit(
                "coalescing gap",
                "MAX_COALESCE_GAP_BYTES",
                MAX_COALESCE_GAP_BYTES,
                coalesce_gap_bytes,
            ));
        }
        let extent = Self::row_extent_bytes(geo, align).ok_or(Error::Invalid {
            what: "read alignment",
            reason: format!("{align} with {}-byte rows overflows", geo.row_bytes),
        })?;
        Ok(Self {
            data_offset,
            data_bytes,
            align,
            coalesce_gap_bytes,
            max_read_bytes: max_read_bytes.max(extent),
        })
    }

    /// The longest aligned extent one row can need: its bytes rounded out to `align` on
    /// both sides. When `align` is a multiple of the packing unit, rows never cross an
    /// alignment boundary and one unit of `align` suffices.
    pub fn row_extent_bytes(geo: &Geometry, align: u64) -> Option<u64> {
        if align.is_multiple_of(geo.unit_bytes) {
            Some(align)
        } else {
            geo.row_bytes
                .div_ceil(align)
                .checked_add(1)?
                .checked_mul(align)
        }
    }
}

fn limit(what: &'static str, name: &'static str, limit: u64, found: u64) -> Error {
    Error::Limit {
        what,
        name,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        found: usize::try_from(found).unwrap_or(usize::MAX),
    }
}

/// A reusable plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// (row id, output slot), sorted by row id; duplicates adjacent.
    pub pairs: Vec<(u64, u32)>,
    /// (records file offset of the row, output slot), sorted by offset.
    pub rec_pairs: Vec<(u64, u32)>,
    /// Device reads, sorted by source and offset, each serving a run of pairs.
    pub reads: Vec<ReadOp>,
    /// Distinct rows in the batch.
    pub unique_rows: u64,
    /// Distinct rows served from records.
    pub record_rows: u64,
    /// (record, position, first pair, end pair) of rows found in records
    marks: Vec<(u32, u8, u32, u32)>,
}

impl Plan {
    /// A plan with room for `rows` rows without reallocating.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            pairs: Vec::with_capacity(rows),
            rec_pairs: Vec::with_capacity(rows),
            reads: Vec::with_capacity(rows),
            unique_rows: 0,
            record_rows: 0,
            marks: Vec::with_capacity(rows),
        }
    }

    /// Plans reads for `ids` (output slot `slots[k]`, or `k` when `slots` is empty). Ids
    /// must be rows of the region `p` describes (the store checks them first); slots
    /// must fit `u32`.
    pub fn build(
        &mut self,
        ids: &[u64],
        slots: &[u32],
        geo: &Geometry,
        p: &PlanParams,
        records: Option<&RecordPlan<'_>>,
    ) {
        debug_assert!(slots.is_empty() || slots.len() == ids.len());
        debug_assert!(ids.len() < TAKEN as usize);
        debug_assert!(slots.iter().all(|&s| s != TAKEN));
        self.pairs.clear();
        self.rec_pairs.clear();
        self.reads.clear();
        if slots.is_empty() {
            self.pairs
                .extend(ids.iter().enumerate().map(|(k, &r)| (r, k as u32)));
        } else {
            self.pairs
                .extend(ids.iter().copied().zip(slots.iter().copied()));
        }
        self.pairs.sort_unstable();
        self.unique_rows = 0;
        self.record_rows = 0;
        if let Some(rp) = records {
            self.take_record_rows(rp);
        }
        let (align, rb) = (p.align, geo.row_bytes);
        let mut prev_row = None;
        for (k, &(row, _)) in self.pairs.iter().enumerate() {
            let k = k as u32;
            if prev_row == Some(row) {
                // A duplicate is served by the read that serves its first occurrence.
                if let Some(last) = self.reads.last_mut() {
                    last.pair_end = k + 1;
                }
                continue;
            }
            prev_row = Some(row);
            self.unique_rows += 1;
            let rel = geo.row_offset(row);
            let start = rel / align * align;
            let end = ((rel + rb).div_ceil(align) * align).min(p.data_bytes);
            debug_assert!(rel + rb <= p.data_bytes, "row {row} beyond the row region");
            debug_assert!(end > start && end - start <= p.max_read_bytes);
            if let Some(last) = self.reads.last_mut().filter(|r| r.source == Source::Rows) {
                let last_start = last.offset - p.data_offset;
                let last_end = last_start + last.len;
                let new_end = end.max(last_end);
                // Rows arrive in offset order, so `start >= last_start`. Merge when the
                // row begins within the gap after the last read (or inside it) and the
                // merged read stays under the cap; otherwise start a new read, which may
                // overlap the last one by less than a row's extent.
                if start <= last_end.saturating_add(p.coalesce_gap_bytes)
                    && new_end - last_start <= p.max_read_bytes
                {
                    last.len = new_end - last_start;
                    last.pair_end = k + 1;
                    continue;
                }
            }
            self.reads.push(ReadOp {
                offset: p.data_offset + start,
                len: end - start,
                pair_start: k,
                pair_end: k + 1,
                source: Source::Rows,
            });
        }
    }

    /// Moves the pairs of rows that share a record with another row of the batch to
    /// `rec_pairs`, and plans unit-aligned reads of those records.
    fn take_record_rows(&mut self, rp: &RecordPlan<'_>) {
        self.marks.clear();
        let mut k = 0;
        while k < self.pairs.len() {
            let row = self.pairs[k].0;
            let mut e = k + 1;
            while e < self.pairs.len() && self.pairs[e].0 == row {
                e += 1;
            }
            if let Some((rec, pos)) = rp.records.find(row) {
                self.marks.push((rec, pos, k as u32, e as u32));
            }
            k = e;
        }
        self.marks.sort_unstable();
        let mut i = 0;
        while i < self.marks.len() {
            let rec = self.marks[i].0;
            let mut j = i + 1;
            while j < self.marks.len() && self.marks[j].0 == rec {
                j += 1;
            }
            // One row alone costs one read either way: records pay off from two rows.
            if j - i >= 2 {
                for &(_, pos, start, end) in &self.marks[i..j] {
                    let at = rp.records.data_offset
                        + rp.shape.row_offset(u64::from(rec), u32::from(pos));
                    for q in start..end {
                        let pair = &mut self.pairs[q as usize];
                        self.rec_pairs.push((at, pair.1));
                        pair.1 = TAKEN;
                    }
                    self.record_rows += 1;
                }
            }
            i = j;
        }
        if self.rec_pairs.is_empty() {
            return;
        }
        self.pairs.retain(|&(_, slot)| slot != TAKEN);
        self.rec_pairs.sort_unstable();
        self.unique_rows += self.record_rows;
        let ub = u64::from(rp.shape.unit_bytes);
        let base = rp.records.data_offset;
        for (k, &(at, _)) in self.rec_pairs.iter().enumerate() {
            let k = k as u32;
            let start = (at - base) / ub * ub;
            if let Some(last) = self
                .reads
                .last_mut()
                .filter(|r| r.source == Source::Records)
            {
                let last_start = last.offset - base;
                let last_end = last_start + last.len;
                if start < last_end {
                    last.pair_end = k + 1;
                    continue;
                }
                if start == last_end && last.len + ub <= rp.max_read_bytes.max(ub) {
                    last.len += ub;
                    last.pair_end = k + 1;
                    continue;
                }
            }
            self.reads.push(ReadOp {
                offset: base + start,
                len: ub,
                pair_start: k,
                pair_end: k + 1,
                source: Source::Records,
            });
        }
    }

    /// Copies the rows of `read` from `buf` (the `read.len` bytes read at `read.offset`)
    /// to their slots in `out`. An extent outside `buf` or `out` is a planner bug,
    /// reported as an error rather than a panic.
    pub fn scatter(
        &self,
        read: &ReadOp,
        buf: &[u8],
        geo: &Geometry,
        data_offset: u64,
        out: &mut [u8],
    ) -> Result<()> {
        let rb = geo.row_bytes as usize;
        let range = read.pair_start as usize..read.pair_end as usize;
        let pairs = match read.source {
            Source::Rows => self.pairs.get(range),
            Source::Records => self.rec_pairs.get(range),
        }
        .unwrap_or(&[]);
        for &(key, slot) in pairs {
            // Rows pairs hold row ids, records pairs the row's file offset.
            let (row, file_offset) = match read.source {
                Source::Rows => (key, data_offset + geo.row_offset(key)),
                Source::Records => (key, key),
            };
            let at = file_offset
                .checked_sub(read.offset)
                .and_then(|a| usize::try_from(a).ok());
            let s = slot as usize * rb;
            let src = at.and_then(|a| buf.get(a..a + rb));
            match (src, out.get_mut(s..s + rb)) {
                (Some(src), Some(dst)) => dst.copy_from_slice(src),
                _ => {
                    debug_assert!(false, "row {row} outside read {read:?} or slot {slot}");
                    return Err(Error::Invalid {
                        what: "read plan",
                        reason: format!(
                            "row {row} (slot {slot}) is outside read {}+{} or the output",
                            read.offset, read.len
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn params(geo: &Geometry, rows: u64, align: u64, gap: u64, cap: u64) -> PlanParams {
        let data_bytes = geo.data_bytes(rows).expect("size");
        PlanParams::new(geo, 4096, data_bytes, align, gap, cap).expect("valid params")
    }

    #[test]
    fn dedup_sort_coalesce() {
        let geo = Geometry::for_row_bytes(264);
        let p = params(&geo, 1500, 4096, 0, 8192);
        let mut plan = Plan::default();
        // rows 0 and 14 share unit 0; 15 is unit 1 (adjacent); 90 is unit 6.
        plan.build(&[90, 0, 14, 0, 15, 16, 17, 45], &[], &geo, &p, None);
        assert_eq!(plan.unique_rows, 7);
        let lens: Vec<_> = plan.reads.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(lens, vec![(4096, 8192), (4096 * 4, 4096), (4096 * 7, 4096)]);
        assert_eq!(plan.reads[0].pair_end - plan.reads[0].pair_start, 6);
    }

    /// The reproduction of the staging overflow: 264 B rows with a 512 B read unit and
    /// dense ids used to grow one read past the cap (69,120 B into a 65,536 B slot).
    #[test]
    fn straddling_rows_never_grow_a_read_past_the_cap() {
        let geo = Geometry::for_row_bytes(264);
        let p = params(&geo, 20_000, 512, 0, 65_536);
        let ids: Vec<u64> = (0..5000).collect();
        let mut plan = Plan::default();
        plan.build(&ids, &[], &geo, &p, None);
        assert!(
            plan.reads.iter().all(|r| r.len <= 65_536),
            "{:?}",
            plan.reads
        );
        // Rows over 4 KiB with a 4 KiB unit: the same class.
        let geo = Geometry::for_row_bytes(5200);
        let p = params(&geo, 400, 4096, 0, 16_384);
        let ids: Vec<u64> = (0..300).collect();
        plan.build(&ids, &[], &geo, &p, None);
        assert!(
            plan.reads.iter().all(|r| r.len <= 16_384),
            "{:?}",
            plan.reads
        );
    }

    #[test]
    fn bounds_on_options() {
        let geo = Geometry::for_row_bytes(264);
        assert!(PlanParams::new(&geo, 4096, 8192, 4096, 0, MAX_READ_BYTES_LIMIT + 1).is_err());
        assert!(
            PlanParams::new(&geo, 4096, 8192, 4096, MAX_COALESCE_GAP_BYTES + 1, 65536).is_err()
        );
        assert!(PlanParams::new(&geo, 4096, 8192, 1000, 0, 65536).is_err());
        // A cap below one row's extent is raised to it.
        let p = PlanParams::new(&geo, 4096, 8192, 512, 0, 0).expect("raised");
        assert_eq!(p.max_read_bytes, 1024);
    }

    /// The byte at file offset `i` of a file whose every byte depends on its offset.
    fn byte_at(i: u64) -> u8 {
        (i.wrapping_mul(0x9E37_79B9) >> 7) as u8
    }

    fn file_bytes(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(byte_at).collect()
    }

    /// A naive reader: one read of exactly the row's bytes per id.
    fn naive(geo: &Geometry, data_offset: u64, ids: &[u64]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * geo.row_bytes as usize);
        for &r in ids {
            out.extend(file_bytes(data_offset + geo.row_offset(r), geo.row_bytes));
        }
        out
    }

    fn arb_case() -> impl Strategy<Value = (u64, u64, u64, u64, u64, Vec<u64>, bool)> {
        (
            prop_oneof![1u64..600, 600u64..9000],
            prop_oneof![
                Just(512u64),
                Just(1024),
                Just(4096),
                Just(8192),
                Just(65536),
                Just(12288)
            ],
            prop_oneof![Just(0u64), 0u64..20_000],
            prop_oneof![Just(0u64), 4096u64..200_000],
            1u64..3000,
            any::<u64>(),
            any::<bool>(),
        )
            .prop_flat_map(|(rb, align, gap, cap, rows, seed, with_slots)| {
                let ids = prop_oneof![
                    // dense runs
                    (0..rows, 1usize..120)
                        .prop_map(move |(s, n)| (s..(s + n as u64).min(rows)).collect::<Vec<_>>()),
                    // sparse, with duplicates
                    proptest::collection::vec(0..rows, 1..300),
                    // few distinct rows repeated
                    proptest::collection::vec(0..rows.min(5), 1..50),
                ];
                (
                    Just(rb),
                    Just(align),
                    Just(gap),
                    Just(cap),
                    Just(rows),
                    ids,
                    Just(with_slots ^ (seed & 1 == 1)),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn plan_matches_one_read_per_row((rb, align, gap, cap, rows, ids, with_slots) in arb_case()) {
            let geo = Geometry::for_row_bytes(rb);
            let data_offset = 4096u64;
            let data_bytes = geo.data_bytes(rows).expect("size");
            let p = PlanParams::new(&geo, data_offset, data_bytes, align, gap, cap).expect("params");
            let slots: Vec<u32> = if with_slots {
                (0..ids.len() as u32).rev().collect()
            } else {
                Vec::new()
            };
            let mut plan = Plan::default();
            plan.build(&ids, &slots, &geo, &p, None);
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(plan.unique_rows, distinct.len() as u64);
            // Pair ranges partition the pairs, in order.
            let mut next = 0u32;
            for r in &plan.reads {
                prop_assert_eq!(r.pair_start, next);
                prop_assert!(r.pair_end > r.pair_start);
                next = r.pair_end;
                let rel = r.offset - data_offset;
                prop_assert!(r.len > 0 && r.len <= p.max_read_bytes, "read {:?} cap {}", r, p.max_read_bytes);
                prop_assert!(rel.is_multiple_of(align));
                prop_assert!(rel + r.len <= data_bytes);
                prop_assert!((rel + r.len).is_multiple_of(align) || rel + r.len == data_bytes);
            }
            prop_assert_eq!(next as usize, ids.len());
            let rbu = rb as usize;
            let mut out = vec![0u8; ids.len() * rbu];
            for r in &plan.reads {
                let buf = file_bytes(r.offset, r.len);
                prop_assert!(plan.scatter(r, &buf, &geo, data_offset, &mut out).is_ok());
            }
            let want = naive(&geo, data_offset, &ids);
            if with_slots {
                // slot of id k is ids.len() - 1 - k
                for (k, chunk) in want.chunks_exact(rbu).enumerate() {
                    let s = ids.len() - 1 - k;
                    prop_assert_eq!(&out[s * rbu..(s + 1) * rbu], chunk);
                }
            } else {
                prop_assert_eq!(out, want);
            }
        }
    }
}
