//! Next-token candidate tables: for frequent contexts of a corpus (the last one or two
//! canonical ids), the raw token ids that most often came next, most frequent first.
//! Written by `engram-build` as `candidates.bin` in the table directory; read by decoders
//! to choose which rows to prefetch speculatively ([`crate::Store::speculate`]) one step
//! before the next token is sampled. The byte layout is in `docs/format.md` ("Candidates
//! file").
//!
//! A prediction backs off: the order-2 context (the last two canonical ids) first, then
//! the order-1 context (the last id) fills the remaining places.

use std::path::Path;

use engram_files::file::{Limit, read_regular};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::format::{check_sealed, get_u32, get_u64};

/// Magic bytes at offset 0 of a candidates file.
pub const CANDIDATES_MAGIC: [u8; 8] = *b"ENGRAMCD";
/// Candidates format version.
pub const CANDIDATES_VERSION: u32 = 1;
/// File name inside a table directory.
pub const CANDIDATES_FILE: &str = "candidates.bin";
/// Largest number of candidates per context.
pub const MAX_CANDIDATES_K: usize = 64;
/// Largest candidates file read.
pub const MAX_CANDIDATES_FILE_BYTES: Limit = Limit {
    what: "candidates file",
    name: "MAX_CANDIDATES_FILE_BYTES",
    bytes: 1 << 32,
};
/// An empty candidate place (only after the last real candidate of a context).
pub const NO_CANDIDATE: u32 = u32::MAX;
/// Bytes before the first context record.
pub const CANDIDATES_HEADER_BYTES: usize = 48;
/// Bytes after the last context record (the checksum).
pub const CANDIDATES_TRAILER_BYTES: usize = 8;
/// Largest canonical id a context key holds (the key stores `id + 1` in 32 bits).
pub const MAX_CONTEXT_ID: i64 = u32::MAX as i64 - 1;

/// The key of the order-1 context `b` (the most recent canonical id), if `b` fits.
pub fn order1_key(b: i64) -> Option<u64> {
    (0..=MAX_CONTEXT_ID).contains(&b).then_some(b as u64)
}

/// The key of the order-2 context `(a, b)` (`b` the most recent), if both fit. Its high
/// half is `a + 1`, so it never equals an order-1 key.
pub fn order2_key(a: i64, b: i64) -> Option<u64> {
    let lo = order1_key(b)?;
    let hi = order1_key(a)? + 1;
    Some(hi << 32 | lo)
}

/// Bytes of one context record with `k` candidates.
pub fn record_bytes(k: usize) -> usize {
    8 + 4 * k
}

/// A candidate table (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidates {
    /// The `table_id` of the table it was built with (0: not bound to a table).
    pub table_id: u64,
    /// Corpus positions counted when it was built (informational).
    pub positions: u64,
    k: usize,
    // (contexts,) strictly ascending
    keys: Vec<u64>,
    // (contexts, k) raw ids, padded with NO_CANDIDATE
    ids: Vec<u32>,
}

/// Why a context's list is not valid, if it is not: padding before a real id, a repeated
/// id, or no real id at all.
fn list_error(list: &[u32]) -> Option<String> {
    let real = list.iter().take_while(|&&r| r != NO_CANDIDATE).count();
    if real == 0 {
        return Some("a context without candidates".into());
    }
    if list[real..].iter().any(|&r| r != NO_CANDIDATE) {
        return Some("a candidate after an empty place".into());
    }
    for (i, r) in list[..real].iter().enumerate() {
        if list[..i].contains(r) {
            return Some(format!("candidate {r} listed twice"));
        }
    }
    None
}

impl Candidates {
    /// A table of `k` candidates per context from `(context key, raw ids)` pairs in any
    /// order; a list longer than `k` is cut to `k`, a shorter one padded.
    pub fn new(
        table_id: u64,
        k: usize,
        positions: u64,
        entries: impl IntoIterator<Item = (u64, Vec<u32>)>,
    ) -> Result<Self> {
        if !(1..=MAX_CANDIDATES_K).contains(&k) {
            return Err(Error::Limit {
                what: "candidates per context",
                name: "MAX_CANDIDATES_K",
                limit: MAX_CANDIDATES_K,
                found: k,
            });
        }
        let mut entries: Vec<(u64, Vec<u32>)> = entries.into_iter().collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut keys = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len() * k);
        for (key, mut list) in entries {
            if keys.last() == Some(&key) {
                return Err(Error::Invalid {
                    what: "candidates",
                    reason: format!("context {key:#x} given twice"),
                });
            }
            list.truncate(k);
            list.resize(k, NO_CANDIDATE);
            if let Some(reason) = list_error(&list) {
                return Err(Error::Invalid {
                    what: "candidates",
                    reason: format!("context {key:#x}: {reason}"),
                });
            }
            keys.push(key);
            ids.extend_from_slice(&list);
        }
        Ok(Self {
            table_id,
            positions,
            k,
            keys,
            ids,
        })
    }

    /// Candidates stored per context.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Contexts stored.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no context is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes of the serialized table.
    pub fn file_bytes(&self) -> usize {
        CANDIDATES_HEADER_BYTES + self.len() * record_bytes(self.k) + CANDIDATES_TRAILER_BYTES
    }

    /// The candidates of context `key`, most frequent first (no empty places).
    pub fn get(&self, key: u64) -> Option<&[u32]> {
        let i = self.keys.binary_search(&key).ok()?;
        let list = &self.ids[i * self.k..(i + 1) * self.k];
        let real = list.iter().take_while(|&&r| r != NO_CANDIDATE).count();
        Some(&list[..real])
    }

    /// Up to `k` candidates for the token after `context` (canonical ids, oldest first):
    /// the order-2 context's list, then the order-1 context's for the places left, without
    /// repeats. Clears `out` first; an empty context or one never seen gives none.
    pub fn predict_into(&self, context: &[i64], k: usize, out: &mut Vec<u32>) {
        out.clear();
        let n = context.len();
        if n == 0 || k == 0 {
            return;
        }
        let b = context[n - 1];
        let order2 = if n >= 2 {
            order2_key(context[n - 2], b)
        } else {
            None
        };
        for key in [order2, order1_key(b)].into_iter().flatten() {
            for &r in self.get(key).unwrap_or(&[]) {
                if out.len() == k {
                    return;
                }
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }

    /// Serializes (little-endian; see `docs/format.md`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.file_bytes());
        b.extend_from_slice(&CANDIDATES_MAGIC);
        b.extend_from_slice(&CANDIDATES_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.k as u32).to_le_bytes());
        b.extend_from_slice(&self.table_id.to_le_bytes());
        b.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.positions.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        for (key, list) in self.keys.iter().zip(self.ids.chunks_exact(self.k)) {
            b.extend_from_slice(&key.to_le_bytes());
            for r in list {
                b.extend_from_slice(&r.to_le_bytes());
            }
        }
        let sum = xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and validates (magic, checksum, version, sizes, key order, lists). Never
    /// panics, whatever the bytes.
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<Self> {
        let bad = |offset: usize, reason: String| Error::Candidates {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let body = check_sealed(
            b,
            &CANDIDATES_MAGIC,
            CANDIDATES_VERSION,
            CANDIDATES_HEADER_BYTES + CANDIDATES_TRAILER_BYTES,
        )
        .map_err(|(at, reason)| bad(at, reason))?;
        let k = get_u32(b, 12) as usize;
        if !(1..=MAX_CANDIDATES_K).contains(&k) {
            return Err(bad(12, format!("k = {k}, expected 1..={MAX_CANDIDATES_K}")));
        }
        let table_id = get_u64(b, 16);
        let n = get_u64(b, 24);
        let positions = get_u64(b, 32);
        if get_u64(b, 40) != 0 {
            return Err(bad(40, "reserved field is not zero".into()));
        }
        let rec = record_bytes(k);
        let records = body - CANDIDATES_HEADER_BYTES;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(rec))
            .is_some_and(|need| need == records);
        if !fits {
            return Err(bad(
                24,
                format!("{n} contexts of {rec} bytes do not fill the {records} bytes of records"),
            ));
        }
        let n = records / rec;
        let mut keys = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n * k);
        for i in 0..n {
            let at = CANDIDATES_HEADER_BYTES + i * rec;
            let key = get_u64(b, at);
            if keys.last().is_some_and(|&prev| key <= prev) {
                return Err(bad(
                    at,
                    "contexts are not in strictly ascending key order".into(),
                ));
            }
            let first = ids.len();
            ids.extend((0..k).map(|j| get_u32(b, at + 8 + 4 * j)));
            if let Some(reason) = list_error(&ids[first..]) {
                return Err(bad(at + 8, reason));
            }
            keys.push(key);
        }
        Ok(Self {
            table_id,
            positions,
            k,
            keys,
            ids,
        })
    }

    /// Reads and validates a candidates file (a regular file of at most
    /// [`MAX_CANDIDATES_FILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self> {
        let b = read_regular(path, MAX_CANDIDATES_FILE_BYTES)?;
        Self::from_bytes(&b, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Candidates {
        Candidates::new(
            7,
            3,
            1000,
            [
                (order1_key(5).expect("fits"), vec![10, 11, 12]),
                (order2_key(4, 5).expect("fits"), vec![20, 10]),
                (order1_key(9).expect("fits"), vec![30]),
            ],
        )
        .expect("valid")
    }

    #[test]
    fn keys_do_not_collide_and_reject_what_does_not_fit() {
        assert_ne!(order1_key(5), order2_key(0, 5));
        assert_eq!(order2_key(0, 5), Some(1 << 32 | 5));
        assert_eq!(order1_key(-1), None);
        assert_eq!(order2_key(MAX_CONTEXT_ID + 1, 0), None);
        assert_eq!(
            order2_key(MAX_CONTEXT_ID, MAX_CONTEXT_ID),
            Some(u64::MAX - 1)
        );
    }

    #[test]
    fn predicts_with_backoff_and_without_repeats() {
        let c = sample();
        let mut out = Vec::new();
        c.predict_into(&[4, 5], 3, &mut out);
        assert_eq!(out, [20, 10, 11]);
        c.predict_into(&[3, 5], 3, &mut out);
        assert_eq!(out, [10, 11, 12], "unknown order-2 context backs off");
        c.predict_into(&[5], 2, &mut out);
        assert_eq!(out, [10, 11]);
        c.predict_into(&[1, 2], 3, &mut out);
        assert!(out.is_empty());
        c.predict_into(&[], 3, &mut out);
        assert!(out.is_empty());
        assert_eq!(c.get(order1_key(9).expect("fits")), Some(&[30u32][..]));
    }

    #[test]
    fn roundtrip_and_every_corruption_rejected() {
        let c = sample();
        let b = c.to_bytes();
        assert_eq!(b.len(), c.file_bytes());
        let p = Path::new("candidates.bin");
        assert_eq!(Candidates::from_bytes(&b, p).ok(), Some(c.clone()));
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x04;
            assert!(Candidates::from_bytes(&x, p).is_err(), "flip at {i}");
        }
        for n in 0..b.len() {
            assert!(
                Candidates::from_bytes(&b[..n], p).is_err(),
                "truncated to {n}"
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Candidates::from_bytes(&longer, p).is_err());
    }

    /// Structurally bad files with a valid checksum: each is refused with its offset.
    #[test]
    fn rejects_bad_structure_behind_a_good_checksum() {
        let p = Path::new("c");
        let reseal = |mut b: Vec<u8>| {
            let body = b.len() - 8;
            let sum = xxh3_64(&b[..body]);
            b[body..].copy_from_slice(&sum.to_le_bytes());
            b
        };
        let good = sample().to_bytes();
        let rec = record_bytes(3);
        let first = CANDIDATES_HEADER_BYTES;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("k = 0", {
                let mut b = good.clone();
                b[12..16].copy_from_slice(&0u32.to_le_bytes());
                b
            }),
            ("k too large", {
                let mut b = good.clone();
                b[12..16].copy_from_slice(&65u32.to_le_bytes());
                b
            }),
            ("count too large", {
                let mut b = good.clone();
                b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
            ("keys out of order", {
                let mut b = good.clone();
                let (x, y) = (first, first + rec);
                let a = b[x..x + 8].to_vec();
                let c = b[y..y + 8].to_vec();
                b[x..x + 8].copy_from_slice(&c);
                b[y..y + 8].copy_from_slice(&a);
                b
            }),
            ("padding first", {
                let mut b = good.clone();
                b[first + 8..first + 12].copy_from_slice(&NO_CANDIDATE.to_le_bytes());
                b
            }),
            ("repeated candidate", {
                let mut b = good.clone();
                let v = b[first + 8..first + 12].to_vec();
                b[first + 12..first + 16].copy_from_slice(&v);
                b
            }),
            ("reserved", {
                let mut b = good.clone();
                b[40] = 1;
                b
            }),
        ];
        for (what, b) in cases {
            let e = Candidates::from_bytes(&reseal(b), p).expect_err(what);
            assert!(
                matches!(e, Error::Candidates { .. }),
                "{what}: wrong error {e}"
            );
        }
    }

    #[test]
    fn new_validates() {
        assert!(Candidates::new(0, 0, 0, []).is_err());
        assert!(Candidates::new(0, MAX_CANDIDATES_K + 1, 0, []).is_err());
        assert!(Candidates::new(0, 2, 0, [(1, vec![])]).is_err());
        assert!(Candidates::new(0, 2, 0, [(1, vec![3, 3])]).is_err());
        assert!(Candidates::new(0, 2, 0, [(1, vec![3]), (1, vec![4])]).is_err());
        let c = Candidates::new(0, 2, 0, [(1, vec![3, 4, 5])]).expect("cut to k");
        assert_eq!(c.get(1), Some(&[3u32, 4][..]));
    }

    #[test]
    fn read_and_write_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(CANDIDATES_FILE);
        let c = sample();
        std::fs::write(&p, c.to_bytes()).expect("writes");
        assert_eq!(Candidates::read(&p).expect("reads"), c);
        let e = Candidates::read(dir.path()).expect_err("a directory");
        assert!(matches!(e, Error::Input(_)), "{e}");
    }
}
