//! Memory vectors (`ENGRAM-SPEC.md` section 7): the rows of a position's hash heads,
//! dequantized and concatenated head by head into `e` (`d_mem = heads * width` wide).
//!
//! Two entry points: [`memory_vectors`] for rows the store has already gathered into one
//! buffer (`[tokens][heads][row_bytes]`, the decode path), and [`gather_rows`] for a table
//! held in memory and indexed by row id (tests, the conformance vectors, small tables).

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quant::{RowLayout, dequantize_row_unchecked};

/// Below this many rows the work stays on the calling thread.
const PAR_MIN_ROWS: usize = 4096;

/// Dequantizes rows already laid out `[tokens][heads][row_bytes]` into `e`
/// (`[tokens][heads * width]`). Because a token's heads are adjacent, `e` is the rows'
/// values in order.
pub fn memory_vectors(
    dtype: RowLayout,
    width: usize,
    heads: usize,
    rows: &[u8],
    e: &mut [f32],
) -> Result<()> {
    let row_bytes = dtype.row_bytes(width)?;
    let token_bytes = row_bytes.checked_mul(heads).ok_or(Error::Overflow {
        what: "heads * row_bytes",
    })?;
    if heads == 0 || !rows.len().is_multiple_of(token_bytes) {
        return Err(Error::Shape {
            what: "rows [tokens][heads][row_bytes]",
            expected: rows.len().div_ceil(token_bytes.max(1)) * token_bytes,
            found: rows.len(),
        });
    }
    let tokens = rows.len() / token_bytes;
    if e.len() != tokens * heads * width {
        return Err(Error::Shape {
            what: "e [tokens][d_mem]",
            expected: tokens * heads * width,
            found: e.len(),
        });
    }
    if tokens * heads >= PAR_MIN_ROWS {
        e.par_chunks_mut(width * 64)
            .zip(rows.par_chunks(row_bytes * 64))
            .try_for_each(|(dst, src)| {
                for (d, s) in dst.chunks_exact_mut(width).zip(src.chunks_exact(row_bytes)) {
                    dequantize_row_unchecked(dtype, s, d)?;
                }
                Ok(())
            })
    } else {
        for (d, s) in e.chunks_exact_mut(width).zip(rows.chunks_exact(row_bytes)) {
            dequantize_row_unchecked(dtype, s, d)?;
        }
        Ok(())
    }
}

/// Gathers and dequantizes `row_ids` (`[tokens][heads]`, flattened) from `table` (all rows of
/// one layer, `[rows][row_bytes]`) into `e` (`[tokens][heads * width]`). Any id past the end
/// of the table is an error naming the id and its index.
pub fn gather_rows(
    dtype: RowLayout,
    width: usize,
    table: &[u8],
    row_ids: &[u64],
    e: &mut [f32],
) -> Result<()> {
    let row_bytes = dtype.row_bytes(width)?;
    if !table.len().is_multiple_of(row_bytes) {
        return Err(Error::Shape {
            what: "table [rows][row_bytes]",
            expected: table.len().div_ceil(row_bytes) * row_bytes,
            found: table.len(),
        });
    }
    let n_rows = (table.len() / row_bytes) as u64;
    if e.len() != row_ids.len() * width {
        return Err(Error::Shape {
            what: "e [tokens][heads * width]",
            expected: row_ids.len() * width,
            found: e.len(),
        });
    }
    if let Some((index, &row)) = row_ids.iter().enumerate().find(|(_, r)| **r >= n_rows) {
        return Err(Error::RowOutOfRange {
            row,
            index,
            rows: n_rows,
        });
    }
    let one = |(dst, &row): (&mut [f32], &u64)| {
        // row < n_rows, so the range is inside the table.
        let start = row as usize * row_bytes;
        dequantize_row_unchecked(dtype, &table[start..start + row_bytes], dst)
    };
    if row_ids.len() >= PAR_MIN_ROWS {
        e.par_chunks_mut(width)
            .zip(row_ids.par_iter())
            .try_for_each(one)
    } else {
        e.chunks_exact_mut(width)
            .zip(row_ids.iter())
            .try_for_each(one)
    }
}

/// Converts signed row ids (as stored in safetensors / numpy int64) to `u64`, rejecting
/// negative ones.
pub fn row_ids_from_i64(ids: &[i64]) -> Result<Vec<u64>> {
    ids.iter()
        .enumerate()
        .map(|(index, &r)| {
            u64::try_from(r).map_err(|_| Error::InvalidValue {
                what: "row id",
                reason: format!("negative row id {r} at index {index}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_rows;

    #[test]
    fn gather_matches_memory_vectors() {
        let width = 8;
        let heads = 3;
        let table_f32: Vec<f32> = (0..10 * width).map(|i| i as f32 * 0.25 - 3.0).collect();
        for dtype in [
            RowLayout::F32,
            RowLayout::Bf16,
            RowLayout::F16,
            RowLayout::Fp8E4m3E8m0 { scale_block: 4 },
        ] {
            let rb = dtype.row_bytes(width).expect("ok");
            let mut table = vec![0u8; 10 * rb];
            quantize_rows(dtype, width, &table_f32, &mut table).expect("q");
            let ids = [3u64, 0, 9, 9, 1, 2];
            let mut e1 = vec![0f32; ids.len() * width];
            gather_rows(dtype, width, &table, &ids, &mut e1).expect("gather");
            let mut rows = Vec::new();
            for &i in &ids {
                rows.extend_from_slice(&table[i as usize * rb..(i as usize + 1) * rb]);
            }
            let mut e2 = vec![0f32; ids.len() * width];
            memory_vectors(dtype, width, heads, &rows, &mut e2).expect("mv");
            assert_eq!(e1, e2);
            if dtype == RowLayout::F32 {
                assert_eq!(e1[..width], table_f32[3 * width..4 * width]);
            }
            let err = gather_rows(dtype, width, &table, &[10], &mut e1[..width]);
            assert!(matches!(err, Err(Error::RowOutOfRange { row: 10, .. })));
            assert!(memory_vectors(dtype, width, heads, &rows[1..], &mut e2).is_err());
            assert!(memory_vectors(dtype, width, heads, &rows, &mut e2[1..]).is_err());
        }
        assert!(row_ids_from_i64(&[1, -1]).is_err());
    }
}
