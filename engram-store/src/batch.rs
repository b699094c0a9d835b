//! Batch planning for the block-device backends: dedup ids, sort by file offset, align to
//! the read unit, coalesce neighbours under a cap, and scatter rows back to output slots.
//! All vectors are reused across batches: no allocation in the steady state.

use crate::format::Geometry;

/// One device read: `len` bytes at `offset`, serving `pairs[pair_start..pair_end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    pub offset: u64,
    pub len: u64,
    pub pair_start: u32,
    pub pair_end: u32,
}

/// How reads are shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanParams {
    /// File offset of the row region.
    pub data_offset: u64,
    /// Bytes of the row region.
    pub data_bytes: u64,
    /// Reads start and end on multiples of this (relative to `data_offset`); a power of two
    /// or the checksum block size when reads are verified.
    pub align: u64,
    /// Merge two reads when the gap between them is at most this many bytes.
    pub coalesce_gap_bytes: u64,
    /// Never build a read longer than this (bounds staging and read amplification).
    pub max_read_bytes: u64,
}

/// A reusable plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// (row id, output slot), sorted by row id; duplicates adjacent.
    pub pairs: Vec<(u64, u32)>,
    pub reads: Vec<ReadOp>,
    /// Distinct rows in the batch.
    pub unique_rows: u64,
}

impl Plan {
    /// A plan with room for `rows` rows without reallocating.
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            pairs: Vec::with_capacity(rows),
            reads: Vec::with_capacity(rows),
            unique_rows: 0,
        }
    }

    /// Plans reads for `ids` (output slot `slots[k]`, or `k` when `slots` is empty).
    pub fn build(&mut self, ids: &[u64], slots: &[u32], geo: &Geometry, p: &PlanParams) {
        self.pairs.clear();
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
        let mut prev_row = None;
        for (k, &(row, _)) in self.pairs.iter().enumerate() {
            if prev_row == Some(row) {
                // A duplicate is served by the read that serves its first occurrence.
                if let Some(last) = self.reads.last_mut() {
                    last.pair_end = k as u32 + 1;
                }
                continue;
            }
            prev_row = Some(row);
            self.unique_rows += 1;
            let rel = geo.row_offset(row);
            let start = rel / p.align * p.align;
            let end = ((rel + geo.row_bytes).div_ceil(p.align) * p.align).min(p.data_bytes);
            if let Some(last) = self.reads.last_mut() {
                let last_end = last.offset - p.data_offset + last.len;
                if start < last_end || start - last_end <= p.coalesce_gap_bytes {
                    let new_end = end.max(last_end);
                    let new_len = new_end - (last.offset - p.data_offset);
                    if new_len <= p.max_read_bytes || start < last_end {
                        last.len = new_len;
                        last.pair_end = k as u32 + 1;
                        continue;
                    }
                }
            }
            self.reads.push(ReadOp {
                offset: p.data_offset + start,
                len: end - start,
                pair_start: k as u32,
                pair_end: k as u32 + 1,
            });
        }
    }

    /// Copies the rows of `read` from `buf` (the bytes read at `read.offset`) to `out`.
    pub fn scatter(
        &self,
        read: &ReadOp,
        buf: &[u8],
        geo: &Geometry,
        data_offset: u64,
        out: &mut [u8],
    ) {
        let rb = geo.row_bytes as usize;
        for &(row, slot) in &self.pairs[read.pair_start as usize..read.pair_end as usize] {
            let at = (data_offset + geo.row_offset(row) - read.offset) as usize;
            let s = slot as usize * rb;
            out[s..s + rb].copy_from_slice(&buf[at..at + rb]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_sort_coalesce() {
        let geo = Geometry::for_row_bytes(264);
        let p = PlanParams {
            data_offset: 4096,
            data_bytes: 4096 * 100,
            align: 4096,
            coalesce_gap_bytes: 0,
            max_read_bytes: 8192,
        };
        let mut plan = Plan::default();
        // rows 0 and 14 share unit 0; 15 is unit 1 (adjacent); 90 is unit 6.
        plan.build(&[90, 0, 14, 0, 15, 16, 17, 45], &[], &geo, &p);
        assert_eq!(plan.unique_rows, 7);
        let lens: Vec<_> = plan.reads.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(lens, vec![(4096, 8192), (4096 * 4, 4096), (4096 * 7, 4096)]);
        assert_eq!(plan.reads[0].pair_end - plan.reads[0].pair_start, 6);
    }
}
