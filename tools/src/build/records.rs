//! N-gram records for `engram-build --records-bytes`: which n-grams get a record, and
//! writing `records.bin` into the table before publication.
//!
//! A record packs the `K` rows (one per hash head) of one n-gram of one order in one layer,
//! so that a cache miss on that n-gram costs one device read instead of `K` (the store's
//! side: `engram_store::records`). Records pay off for n-grams that recur, so they go to the
//! n-grams the corpus shows most often: every position's context is kept during counting
//! ([`ContextKeys`]), sorted once, and each distinct n-gram of every order gets its exact
//! count. Candidates are ranked by count (then order, then key: a total order, so the same
//! inputs give the same file for any thread count) and each layer takes the top ones its
//! share of the byte budget holds. Optionally, n-grams whose rows a hot-row cache of a given
//! size would pin from the profile are skipped (`--records-skip-cached`): they rarely miss.

use std::collections::HashSet;

use anyhow::{Context, Result};
use engram_kernels::hash::{HashOutput, NgramHasher};
use engram_store::cache::SeedOptions;
use engram_store::profile::LayerProfile;
use engram_store::records::{MAX_RECORDS_PER_LAYER, RECORDS_FILE, RecordShape, RecordsWriter};
use engram_store::table::TableWriter;
use rayon::prelude::*;

use super::count::{ContextKeys, Packing};

/// Most corpus positions whose contexts are kept for record selection (16 bytes each, see
/// [`ram_bytes`]); a larger corpus is refused with `--records-bytes`.
pub const MAX_RECORD_TOKENS: u64 = 1 << 24;
/// Largest `--records-bytes` (and `--records-skip-cached`) accepted (1 TiB). The budget is
/// also refused above the table's own size: records copy rows.
pub const MAX_RECORDS_BYTES: u64 = 1 << 40;
/// An n-gram seen fewer times than this gets no record (a single occurrence says nothing
/// about recurrence).
pub const MIN_RECORD_COUNT: usize = 2;

/// One n-gram that may get a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Occurrences in the corpus (exact, saturating at `u32::MAX`).
    pub count: u32,
    /// Order n (2..=N).
    pub order: u8,
    /// The smallest context of the corpus whose top `order` fields are the n-gram.
    pub key: u128,
}

/// Memory record selection may take for a corpus of at most [`MAX_RECORD_TOKENS`]
/// positions: a key per position, and per order at most one candidate (32 bytes) per two
/// positions (a candidate occurs at least twice).
pub fn ram_bytes(max_ngram: usize) -> u64 {
    let orders = max_ngram.saturating_sub(1) as u64;
    MAX_RECORD_TOKENS.saturating_mul(16 + 16 * orders)
}

/// Ranks the n-grams of every order that occur at least [`MIN_RECORD_COUNT`] times in
/// `keys` (sorted in place): count descending, then order, then key.
pub(crate) fn rank(keys: &mut [u128], packing: Packing) -> Vec<Candidate> {
    keys.par_sort_unstable();
    let mut out = Vec::new();
    for n in 2..=packing.max_ngram() {
        let mut i = 0;
        while i < keys.len() {
            let gram = packing.prefix(keys[i], n);
            let mut j = i + 1;
            while j < keys.len() && packing.prefix(keys[j], n) == gram {
                j += 1;
            }
            if j - i >= MIN_RECORD_COUNT {
                out.push(Candidate {
                    count: u32::try_from(j - i).unwrap_or(u32::MAX),
                    order: n as u8,
                    key: keys[i],
                });
            }
            i = j;
        }
    }
    out.par_sort_unstable_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.order.cmp(&b.order))
            .then(a.key.cmp(&b.key))
    });
    out
}

/// Records per layer that a file of at most `budget` bytes holds with the same number in
/// each of `layers` layers (0: not even one each).
pub fn records_per_layer(shape: &RecordShape, layers: u64, budget: u64) -> u64 {
    let fits = |n: u64| shape.file_bytes(layers, n).is_some_and(|b| b <= budget);
    let (mut lo, mut hi) = (0u64, MAX_RECORDS_PER_LAYER);
    if fits(hi) {
        return hi;
    }
    // fits(lo) or lo == 0; !fits(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    if fits(lo) && lo > 0 { lo } else { 0 }
}

/// Rows of each layer index that a hot-row cache of `cache_bytes` seeded from the profile
/// with the store's default [`SeedOptions`] pins: the profile's globally hottest rows, as
/// many as the pinned share of the cache holds, each seen at least `min_hits` times. (The
/// cache also spreads rows over shards; this ignores that, so it is close, not exact.)
pub fn cached_rows(
    profile: &[LayerProfile],
    cache_bytes: u64,
    row_bytes: u64,
) -> Vec<HashSet<u64>> {
    let seed = SeedOptions::default();
    let rows = (cache_bytes / row_bytes.max(1)) as f64 * seed.pin_fraction;
    let pinned = usize::try_from(rows as u64).unwrap_or(usize::MAX);
    // (hits, layer index, row), at most `pinned` of each layer: enough for any split.
    let mut hot: Vec<(u64, usize, u64)> = profile
        .iter()
        .enumerate()
        .flat_map(|(li, l)| {
            l.entries
                .iter()
                .take(pinned)
                .take_while(|&&(_, hits)| hits >= seed.min_hits)
                .map(move |&(row, hits)| (hits, li, row))
        })
        .collect();
    hot.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    hot.truncate(pinned);
    let mut out = vec![HashSet::new(); profile.len()];
    for (_, li, row) in hot {
        out[li].insert(row);
    }
    out
}

/// What `choose` picked.
#[derive(Debug, Default)]
pub struct Chosen {
    /// (layers,) `K` row ids per record, head order, best record first.
    pub rows: Vec<Vec<u64>>,
    /// Candidates passed over because a seeded cache holds all their rows, per layer.
    pub skipped_cached: Vec<u64>,
}

/// Picks up to `per_layer` records in each layer from the ranked `candidates`, passing over
/// n-grams all of whose rows are in `cached` (per layer index) when given.
pub(crate) fn choose(
    candidates: &[Candidate],
    packing: Packing,
    hasher: &NgramHasher,
    per_layer: u64,
    cached: Option<&[HashSet<u64>]>,
) -> Result<Chosen> {
    let heads = hasher.n_hash_heads() / (hasher.max_ngram() - 1);
    let want = usize::try_from(per_layer).unwrap_or(usize::MAX);
    let layers: Vec<(Vec<u64>, u64)> = (0..hasher.n_layers())
        .into_par_iter()
        .map(|li| {
            let mut context = vec![0i64; packing.max_ngram()];
            let mut all = vec![0u64; hasher.n_hash_heads()];
            let mut rows = Vec::new();
            let mut skipped = 0u64;
            let hot = cached.and_then(|c| c.get(li));
            for c in candidates {
                if rows.len() / heads >= want {
                    break;
                }
                packing.context(c.key, &mut context);
                hasher.hash_last_into(li, &context, HashOutput::RowId, &mut all)?;
                let n = usize::from(c.order);
                let mine = &all[(n - 2) * heads..(n - 1) * heads];
                if hot.is_some_and(|h| mine.iter().all(|r| h.contains(r))) {
                    skipped += 1;
                    continue;
                }
                rows.extend_from_slice(mine);
            }
            Ok((rows, skipped))
        })
        .collect::<Result<_>>()?;
    let (rows, skipped_cached) = layers.into_iter().unzip();
    Ok(Chosen {
        rows,
        skipped_cached,
    })
}

/// Selects records for a budget of `per_layer` records per layer from the contexts the
/// counting pass kept.
pub fn select(
    keys: ContextKeys,
    hasher: &NgramHasher,
    per_layer: u64,
    cached: Option<&[HashSet<u64>]>,
) -> Result<(Chosen, usize)> {
    let packing = keys.packing();
    let mut all = keys.into_keys();
    let candidates = rank(&mut all, packing);
    drop(all);
    let chosen = choose(&candidates, packing, hasher, per_layer, cached)?;
    Ok((chosen, candidates.len()))
}

/// Writes `records.bin` with `chosen`'s records into the table `writer` is building (it is
/// published with the table); `fill(layer index, row, out)` encodes a row's bytes. Returns
/// the file's size, or `None` when no layer has a record (no file is written).
pub fn write(
    writer: &mut TableWriter,
    shape: RecordShape,
    chosen: &Chosen,
    mut fill: impl FnMut(usize, u64, &mut [u8]) -> Result<()>,
) -> Result<Option<u64>> {
    if chosen.rows.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let table_id = writer.manifest().table_id_u64().unwrap_or(0);
    let mut size = None;
    writer
        .add_file_with(RECORDS_FILE, |path| {
            let mut w = RecordsWriter::create(path, table_id, shape)?;
            for (li, rows) in chosen.rows.iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let index = u32::try_from(li).map_err(|_| {
                    engram_store::Error::Writer(format!("layer index {li} overflows u32"))
                })?;
                w.add_layer(index, rows, |row, out| {
                    fill(li, row, out).map_err(|e| engram_store::Error::Writer(format!("{e:#}")))
                })?;
            }
            w.finish()?;
            size = Some(
                std::fs::metadata(path)
                    .map_err(|e| {
                        engram_store::Error::Writer(format!("stat {}: {e}", path.display()))
                    })?
                    .len(),
            );
            Ok(())
        })
        .context("writing the n-gram records")?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_kernels::hash::HashOptions;
    use engram_kernels::{EngramConfig, EngramLayout};

    fn layout() -> EngramLayout {
        let config = EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![50, 50],
            layer_ids: vec![1, 4],
            seed: 7,
            pad_id: 0,
        };
        EngramLayout::new(&config, 20, 0).expect("valid")
    }

    #[test]
    fn ranks_exact_counts_in_a_total_order() {
        let l = layout();
        let hasher = NgramHasher::new(&l, HashOptions::default()).expect("valid");
        let keys = ContextKeys::new(&l, &hasher, 1000).expect("packs");
        let mut local = Vec::new();
        // "5 6" three times, "6 5" twice, "5 6 5" twice; every other n-gram once.
        keys.add_document(&[5, 6, 5, 6, 5, 6], &mut local)
            .expect("fits");
        keys.push(local);
        let packing = keys.packing();
        let mut all = keys.into_keys();
        let mut shuffled = all.clone();
        shuffled.reverse();
        let ranked = rank(&mut all, packing);
        assert_eq!(ranked, rank(&mut shuffled, packing));
        let summary: Vec<(u32, u8)> = ranked.iter().map(|c| (c.count, c.order)).collect();
        // Order 2: (5 6) x3, (6 5) x2; order 3: (5 6 5) x2, (6 5 6) x2.
        assert_eq!(summary, [(3, 2), (2, 2), (2, 3), (2, 3)]);
        let chosen = choose(&ranked, packing, &hasher, 3, None).expect("hashes");
        assert_eq!(chosen.rows.len(), 2);
        assert!(chosen.rows.iter().all(|r| r.len() == 3 * 2));
        // A cache that holds the top record's rows skips it.
        let hot: Vec<HashSet<u64>> = chosen
            .rows
            .iter()
            .map(|r| r[..2].iter().copied().collect())
            .collect();
        let again = choose(&ranked, packing, &hasher, 3, Some(&hot)).expect("hashes");
        assert_eq!(again.skipped_cached, [1, 1]);
        assert_eq!(again.rows[0][..4], chosen.rows[0][2..]);
    }

    #[test]
    fn too_many_positions_are_refused() {
        let l = layout();
        let hasher = NgramHasher::new(&l, HashOptions::default()).expect("valid");
        let keys = ContextKeys::new(&l, &hasher, 4).expect("packs");
        let mut local = Vec::new();
        let err = keys
            .add_document(&[1, 2, 3, 4, 5], &mut local)
            .expect_err("over the limit");
        assert!(format!("{err:#}").contains("MAX_RECORD_TOKENS"), "{err:#}");
    }

    #[test]
    fn budget_buys_whole_records_per_layer() {
        let shape = RecordShape::new(8, 264).expect("shape");
        assert_eq!(records_per_layer(&shape, 2, 4096), 0);
        let one = shape.file_bytes(2, 1).expect("small");
        assert_eq!(records_per_layer(&shape, 2, one), 1);
        assert_eq!(records_per_layer(&shape, 2, one - 1), 0);
        let n = records_per_layer(&shape, 2, 10 << 20);
        assert!(shape.file_bytes(2, n).expect("fits") <= 10 << 20);
        assert!(shape.file_bytes(2, n + 1).expect("fits") > 10 << 20);
        assert_eq!(
            records_per_layer(&shape, 2, u64::MAX),
            MAX_RECORDS_PER_LAYER
        );
    }
}
