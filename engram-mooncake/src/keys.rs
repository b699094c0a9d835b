//! How a table lives on Mooncake: object keys, the publication descriptor, and the split
//! of a layer-file byte range over chunk objects.
//!
//! A table version is identified by its `table_id` and the xxh3 of its manifest (which
//! records the checksum of every layer header and checksum table, so of every data
//! block): the same key always means the same bytes, a published table is immutable,
//! and a rebuilt table is a new version beside the old one. Objects of one version:
//!
//! ```text
//! engram/{table_id}/{version}/manifest        the manifest (JSON)
//! engram/{table_id}/{version}/f{F}/c{C}       bytes [C x chunk, (C+1) x chunk) of layer file F
//! engram/{table_id}/{version}/publication     the descriptor, written last, after verification
//! engram/names/{name}                         "{table_id}/{version}": the current version of a name
//! ```
//!
//! Layer files are chunked whole (header, rows, checksum table), so one rule maps any file
//! offset to an object; readers fetch only ranges of chunks. Switching a name to a new
//! version is one `upsert` of its name object.

use engram_store::Manifest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Smallest chunk object (one checksum block).
pub const MIN_CHUNK_BYTES: u64 = 4096;
/// Largest chunk object.
pub const MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Default chunk object size (see `docs/scale-out.md`, "Chunk size").
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 20;
/// Largest descriptor object accepted.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Largest manifest object accepted (as `engram_store::table::MAX_MANIFEST_BYTES`).
pub const MAX_MANIFEST_BYTES: u64 = engram_store::table::MAX_MANIFEST_BYTES.bytes;
/// Most files of one publication (layer files).
pub const MAX_FILES: usize = 4096;
/// Longest table name.
pub const MAX_NAME_BYTES: usize = 200;
/// Descriptor `format` field.
pub const DESCRIPTOR_FORMAT: &str = "engram-mooncake";
/// Descriptor format version this build writes and reads.
pub const DESCRIPTOR_VERSION: u32 = 1;

/// The version of a table: xxh3 of its manifest serialised as JSON.
pub fn table_version(m: &Manifest) -> Result<u64> {
    let bytes = serde_json::to_vec(m).map_err(|e| Error::Invalid {
        what: "manifest",
        reason: e.to_string(),
    })?;
    Ok(xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// The keys of one table version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableKeys {
    /// `engram/{table_id}/{version}`.
    pub prefix: String,
}

impl TableKeys {
    /// The keys of the table `m` describes.
    pub fn of(m: &Manifest) -> Result<Self> {
        let id = m.table_id_u64().ok_or_else(|| Error::Invalid {
            what: "table id",
            reason: format!("{:?} is not 16 hex digits", m.table_id),
        })?;
        Ok(Self::from_ids(id, table_version(m)?))
    }

    /// The keys of table `table_id` at `version` ([`table_version`]).
    pub fn from_ids(table_id: u64, version: u64) -> Self {
        Self {
            prefix: format!("engram/{table_id:016x}/{version:016x}"),
        }
    }

    /// Parses `{table_id}/{version}` (the value of a name object).
    pub fn parse_pointer(s: &str) -> Result<Self> {
        let bad = || Error::Invalid {
            what: "table pointer",
            reason: format!("{s:?}: expected 16 hex digits / 16 hex digits"),
        };
        let (id, ver) = s.trim().split_once('/').ok_or_else(bad)?;
        let hex = |h: &str| {
            (h.len() == 16)
                .then(|| u64::from_str_radix(h, 16).ok())
                .flatten()
        };
        Ok(Self::from_ids(
            hex(id).ok_or_else(bad)?,
            hex(ver).ok_or_else(bad)?,
        ))
    }

    /// `{table_id}/{version}`, what a name object holds.
    pub fn pointer(&self) -> &str {
        self.prefix.strip_prefix("engram/").unwrap_or(&self.prefix)
    }

    /// Key of the table's `manifest.json` object.
    pub fn manifest(&self) -> String {
        format!("{}/manifest", self.prefix)
    }

    /// Key of the publication descriptor ([`Descriptor`]), written last.
    pub fn descriptor(&self) -> String {
        format!("{}/publication", self.prefix)
    }

    /// Chunk `chunk` of layer file `file`.
    pub fn chunk(&self, file: u32, chunk: u64) -> String {
        format!("{}/f{file}/c{chunk}", self.prefix)
    }
}

/// The object that says which version a name points to.
pub fn name_key(name: &str) -> Result<String> {
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::Invalid {
            what: "table name",
            reason: format!("{name:?}: 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ -"),
        });
    }
    Ok(format!("engram/names/{name}"))
}

/// One published file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDesc {
    /// File name inside the table directory.
    pub name: String,
    /// File size in bytes.
    pub bytes: u64,
}

/// The publication descriptor: written last, it says the version is complete and
/// verified, and how it is chunked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// Always [`DESCRIPTOR_FORMAT`].
    pub format: String,
    /// Always [`DESCRIPTOR_VERSION`].
    pub format_version: u32,
    /// The table id (16 hex digits, the manifest's `table_id`).
    pub table_id: String,
    /// 16 hex digits: [`table_version`].
    pub table_version: String,
    /// Bytes per chunk object.
    pub chunk_bytes: u64,
    /// Replicas asked for each object, and whether they are hard-pinned.
    pub replicas: u32,
    /// Whether the objects are hard-pinned (never evicted).
    pub hard_pin: bool,
    /// Layer files in manifest order (file index = position).
    pub files: Vec<FileDesc>,
}

impl Descriptor {
    /// Parses and checks a descriptor object against the keys it was read from.
    pub fn parse(bytes: &[u8], keys: &TableKeys) -> Result<Self> {
        let bad = |reason: String| Error::NotPublished {
            prefix: keys.prefix.clone(),
            reason: format!("bad descriptor {}: {reason}", keys.descriptor()),
        };
        let d: Descriptor = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if d.format != DESCRIPTOR_FORMAT || d.format_version != DESCRIPTOR_VERSION {
            return Err(bad(format!(
                "format {:?} version {}, this build reads {DESCRIPTOR_FORMAT:?} version \
                 {DESCRIPTOR_VERSION}",
                d.format, d.format_version
            )));
        }
        if format!("engram/{}/{}", d.table_id, d.table_version) != keys.prefix {
            return Err(bad(format!(
                "it describes {}/{}",
                d.table_id, d.table_version
            )));
        }
        check_chunk_bytes(d.chunk_bytes)?;
        if d.files.len() > MAX_FILES {
            return Err(Error::Limit {
                what: "files in a publication",
                name: "MAX_FILES",
                limit: MAX_FILES as u64,
                found: d.files.len() as u64,
            });
        }
        Ok(d)
    }

    /// Errors unless the descriptor's files are the layer files of `m`, byte for byte in
    /// size.
    pub fn check_manifest(&self, m: &Manifest, keys: &TableKeys) -> Result<()> {
        let want: Vec<FileDesc> = m
            .layers
            .iter()
            .map(|l| FileDesc {
                name: l.file.clone(),
                bytes: l.file_bytes,
            })
            .collect();
        if want != self.files {
            return Err(Error::Mismatch {
                what: "layer files",
                key: keys.descriptor(),
                expected: format!("{want:?}"),
                found: format!("{:?}", self.files),
            });
        }
        Ok(())
    }
}

/// Errors unless `b` is a valid chunk size (a multiple of 4096 in the limits).
pub fn check_chunk_bytes(b: u64) -> Result<()> {
    if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&b) || !b.is_multiple_of(MIN_CHUNK_BYTES) {
        return Err(Error::Invalid {
            what: "chunk bytes",
            reason: format!(
                "{b}: a multiple of {MIN_CHUNK_BYTES} from {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES}"
            ),
        });
    }
    Ok(())
}

/// One piece of a byte range that falls in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the chunk holding these bytes.
    pub chunk: u64,
    /// Offset inside the chunk object.
    pub src: u64,
    /// Offset inside the range.
    pub at: u64,
    /// Bytes in this piece.
    pub len: u64,
}

/// The pieces of file bytes `[offset, offset + len)` over chunks of `chunk_bytes`.
pub fn pieces(offset: u64, len: u64, chunk_bytes: u64) -> impl Iterator<Item = Piece> {
    debug_assert!(chunk_bytes > 0);
    let end = offset.saturating_add(len);
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let chunk = at / chunk_bytes;
        let src = at - chunk * chunk_bytes;
        let n = (chunk_bytes - src).min(end - at);
        let p = Piece {
            chunk,
            src,
            at: at - offset,
            len: n,
        };
        at += n;
        Some(p)
    })
}

/// Chunks of a file of `bytes` bytes.
pub fn chunk_count(bytes: u64, chunk_bytes: u64) -> u64 {
    bytes.div_ceil(chunk_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_once_and_stay_in_chunks() {
        for (offset, len, chunk) in [
            (0u64, 4096u64, 4096u64),
            (4096, 12288, 8192),
            (100, 1, 4096),
            (8191, 2, 8192),
            (0, 1 << 20, 1 << 16),
            (12_345, 99_999, 4096),
        ] {
            let ps: Vec<Piece> = pieces(offset, len, chunk).collect();
            let mut next = 0;
            for p in &ps {
                assert_eq!(p.at, next, "contiguous");
                assert!(p.len > 0 && p.src + p.len <= chunk, "inside one chunk");
                assert_eq!(p.chunk * chunk + p.src, offset + p.at, "same file byte");
                next += p.len;
            }
            assert_eq!(next, len);
        }
        assert_eq!(pieces(5, 0, 4096).count(), 0);
    }

    #[test]
    fn pointers_and_names() {
        let k = TableKeys::from_ids(0xabc, 0x1234_5678_9abc_def0);
        assert_eq!(k.prefix, "engram/0000000000000abc/123456789abcdef0");
        assert_eq!(TableKeys::parse_pointer(k.pointer()).expect("pointer"), k);
        assert!(TableKeys::parse_pointer("abc/def").is_err());
        assert!(TableKeys::parse_pointer("0000000000000abc").is_err());
        assert_eq!(k.chunk(1, 7), format!("{}/f1/c7", k.prefix));
        assert!(name_key("v41-flash.2").is_ok());
        for bad in ["", "a/b", "sp ace", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(name_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunk_sizes_are_checked() {
        assert!(check_chunk_bytes(4096).is_ok());
        assert!(check_chunk_bytes(DEFAULT_CHUNK_BYTES).is_ok());
        for bad in [0, 4095, 6000, MAX_CHUNK_BYTES + 4096] {
            assert!(check_chunk_bytes(bad).is_err(), "{bad}");
        }
    }
}
