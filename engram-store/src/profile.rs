//! Frequency profiles: per layer, the row ids ranked by how often a corpus hit them.
//! Written by `engram-build`, read by the hot-row cache to seed itself. The byte layout is
//! in `docs/format.md` ("Profile file").

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result, io};
use crate::format::{Manifest, check_sealed, get_u64};

/// File name of the profile inside a table directory (written by `engram-build`).
pub const PROFILE_FILE: &str = "profile.bin";
/// Magic bytes at offset 0 of a profile file.
pub const PROFILE_MAGIC: [u8; 8] = *b"ENGRAMPF";
/// Profile format version.
pub const PROFILE_VERSION: u32 = 1;
/// Largest profile file accepted: 16 B per ranked row, so 4 GiB ranks 268 M rows.
pub const MAX_PROFILE_BYTES: engram_files::file::Limit = engram_files::file::Limit {
    what: "profile",
    name: "MAX_PROFILE_BYTES",
    bytes: 4 << 30,
};

/// One layer's ranked rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerProfile {
    /// The Engram layer id (not the index).
    pub layer_id: u64,
    /// Hits over all rows of the layer, including rows not listed.
    pub total_hits: u64,
    /// `(row id, hits)`, hits descending, ties by row id ascending; row ids distinct.
    pub entries: Vec<(u64, u64)>,
}

impl LayerProfile {
    /// Ranks `counts` (`(row, hits)`, any order, rows distinct) and keeps the `top` hottest.
    pub fn from_counts(
        layer_id: u64,
        counts: impl IntoIterator<Item = (u64, u64)>,
        top: usize,
    ) -> Self {
        let mut entries: Vec<(u64, u64)> = counts.into_iter().filter(|&(_, c)| c > 0).collect();
        let total_hits = entries.iter().map(|&(_, c)| c).sum();
        entries.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        entries.truncate(top);
        Self {
            layer_id,
            total_hits,
            entries,
        }
    }
}

/// A profile: one [`LayerProfile`] per profiled layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// The `table_id` of the table it was measured for (0: not bound to a table).
    pub table_id: u64,
    /// One entry per profiled layer.
    pub layers: Vec<LayerProfile>,
}

impl Profile {
    /// The profile of layer id `layer_id`, if present.
    pub fn layer(&self, layer_id: u64) -> Option<&LayerProfile> {
        self.layers.iter().find(|l| l.layer_id == layer_id)
    }

    /// Serializes (little-endian; see `docs/format.md`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n: usize = self.layers.iter().map(|l| 24 + 16 * l.entries.len()).sum();
        let mut b = Vec::with_capacity(32 + n + 8);
        b.extend_from_slice(&PROFILE_MAGIC);
        b.extend_from_slice(&PROFILE_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.layers.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.table_id.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        for l in &self.layers {
            b.extend_from_slice(&l.layer_id.to_le_bytes());
            b.extend_from_slice(&(l.entries.len() as u64).to_le_bytes());
            b.extend_from_slice(&l.total_hits.to_le_bytes());
            for &(row, hits) in &l.entries {
                b.extend_from_slice(&row.to_le_bytes());
                b.extend_from_slice(&hits.to_le_bytes());
            }
        }
        let sum = xxh3_64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses and validates (checksum, ranking, distinct rows).
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<Self> {
        let bad = |offset: usize, reason: String| Error::Profile {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let body = check_sealed(b, &PROFILE_MAGIC, PROFILE_VERSION, 40)
            .map_err(|(at, reason)| bad(at, reason))?;
        let n_layers = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
        let table_id = get_u64(b, 16);
        let reserved = get_u64(b, 24);
        if reserved != 0 {
            return Err(bad(
                24,
                format!("reserved field is {reserved:#x}, expected 0"),
            ));
        }
        let mut at = 32usize;
        let mut layers = Vec::new();
        for _ in 0..n_layers {
            if at + 24 > body {
                return Err(bad(at, "layer record runs past the end".into()));
            }
            let layer_id = get_u64(b, at);
            let n = get_u64(b, at + 8);
            let total_hits = get_u64(b, at + 16);
            at += 24;
            let need = usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(16))
                .filter(|&need| at.checked_add(need).is_some_and(|end| end <= body))
                .ok_or_else(|| bad(at - 16, format!("{n} entries run past the end")))?;
            // Sized by the file (at most MAX_PROFILE_BYTES): reserved fallibly.
            let mut entries = Vec::new();
            engram_kernels::alloc::try_reserve(&mut entries, need / 16, "profile entries")?;
            let mut seen = std::collections::HashSet::new();
            seen.try_reserve(need / 16)
                .map_err(|_| engram_kernels::alloc::AllocError {
                    what: "profile row set",
                    len: need / 16,
                    bytes: need as u64,
                })?;
            let mut sum = 0u64;
            for k in 0..need / 16 {
                let off = at + 16 * k;
                let e = (get_u64(b, off), get_u64(b, off + 8));
                if let Some(&prev) = entries.last() {
                    let (pr, pc): (u64, u64) = prev;
                    if e.1 > pc || (e.1 == pc && e.0 <= pr) {
                        return Err(bad(
                            off,
                            "entries are not ranked by hits descending, row ascending".into(),
                        ));
                    }
                }
                if !seen.insert(e.0) {
                    return Err(bad(off, format!("row {} listed twice", e.0)));
                }
                sum = sum.saturating_add(e.1);
                entries.push(e);
            }
            if sum > total_hits {
                return Err(bad(
                    at - 8,
                    format!("total_hits {total_hits} below the listed sum {sum}"),
                ));
            }
            at += need;
            layers.push(LayerProfile {
                layer_id,
                total_hits,
                entries,
            });
        }
        if at != body {
            return Err(bad(at, format!("{} trailing bytes", body - at)));
        }
        Ok(Self { table_id, layers })
    }

    /// Writes atomically (temporary name, fsync, rename).
    pub fn write(&self, path: &Path, force: bool) -> Result<()> {
        if path.exists() && !force {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
            f.write_all(&self.to_bytes())
                .map_err(|e| io("write", &tmp, e))?;
            f.sync_all().map_err(|e| io("fsync", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| io("rename", &tmp, e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsync directory", parent, e))?;
        }
        Ok(())
    }

    /// Reads and validates a profile file (a regular file of at most
    /// [`MAX_PROFILE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self> {
        let b = engram_files::file::read_regular(path, MAX_PROFILE_BYTES)?;
        Self::from_bytes(&b, path)
    }

    /// Checks that this profile was measured for `manifest`'s table: the same table id
    /// (unless the profile is unbound, id 0), layer ids of the table, each at most once,
    /// and row ids inside their layer.
    pub fn check_table(&self, manifest: &Manifest, path: &Path) -> Result<()> {
        let bad = |offset: u64, reason: String| Error::Profile {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let table_id = manifest.table_id_u64().unwrap_or(0);
        if self.table_id != 0 && self.table_id != table_id {
            return Err(bad(
                16,
                format!(
                    "measured for table {:016x}, this table is {}",
                    self.table_id, manifest.table_id
                ),
            ));
        }
        let mut seen = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let Some(lm) = manifest.layers.iter().find(|m| m.layer_id == l.layer_id) else {
                return Err(bad(
                    0,
                    format!("layer id {} is not in the table", l.layer_id),
                ));
            };
            if seen.contains(&l.layer_id) {
                return Err(bad(0, format!("layer id {} is profiled twice", l.layer_id)));
            }
            seen.push(l.layer_id);
            if let Some(&(row, _)) = l.entries.iter().find(|&&(row, _)| row >= lm.rows) {
                return Err(bad(
                    0,
                    format!(
                        "layer {}: row {row} is past the layer's {} rows",
                        l.layer_id, lm.rows
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let p = Profile {
            table_id: 5,
            layers: vec![
                LayerProfile::from_counts(1, [(3, 10), (7, 2), (9, 10), (4, 0)], 10),
                LayerProfile::from_counts(15, [(1, 1)], 10),
            ],
        };
        assert_eq!(p.layers[0].entries, vec![(3, 10), (9, 10), (7, 2)]);
        assert_eq!(p.layers[0].total_hits, 22);
        let b = p.to_bytes();
        assert_eq!(
            Profile::from_bytes(&b, Path::new("p")).ok(),
            Some(p.clone())
        );
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(
                Profile::from_bytes(&c, Path::new("p")).is_err(),
                "flip at {i}"
            );
        }
        assert!(Profile::from_bytes(&b[..b.len() - 1], Path::new("p")).is_err());
        // Found by fuzzing: a nonzero reserved field (offset 24) under a valid checksum was
        // accepted, and the profile did not serialize back to its bytes.
        let mut c = b.clone();
        c[24] = 1;
        let body = c.len() - 8;
        let sum = xxh3_64(&c[..body]);
        c[body..].copy_from_slice(&sum.to_le_bytes());
        let e = Profile::from_bytes(&c, Path::new("p")).expect_err("reserved");
        assert!(matches!(e, Error::Profile { offset: 24, .. }), "{e}");
    }

    #[test]
    fn a_profile_must_fit_its_table() {
        let mut config = engram_kernels::Preset::Demo.config();
        config.base_sizes = vec![100; config.base_sizes.len()];
        let layout = engram_kernels::EngramLayout::new(&config, 99_092, 2).expect("layout");
        let (sha, build) = ("0".repeat(64), crate::format::BuildInfo::default());
        let m =
            crate::format::Manifest::new(&layout, &sha, crate::RowLayout::Bf16, 64, None, build)
                .expect("manifest");
        let id = m.table_id_u64().expect("id");
        let (l0, rows0) = (m.layers[0].layer_id, m.layers[0].rows);
        let fits = |table_id, layers| Profile { table_id, layers }.check_table(&m, Path::new("p"));
        let layer = |lid, row| LayerProfile::from_counts(lid, [(row, 3)], 10);
        fits(id, vec![layer(l0, rows0 - 1)]).expect("fits");
        fits(0, vec![layer(l0, 0)]).expect("an unbound profile fits any table of its shape");
        for (what, table_id, layers) in [
            ("other table", id ^ 1, vec![layer(l0, 0)]),
            ("row past the layer", id, vec![layer(l0, rows0)]),
            ("unknown layer", id, vec![layer(999, 0)]),
            ("layer twice", id, vec![layer(l0, 0), layer(l0, 1)]),
        ] {
            let e = fits(table_id, layers).expect_err(what);
            assert!(matches!(e, Error::Profile { .. }), "{what}: {e}");
        }
    }
}
