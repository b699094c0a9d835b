//! Table format v1: the manifest (JSON), the row layouts and the layer-file header.
//! `docs/format.md` describes every byte; this module is its executable form.

use std::path::Path;

use engram_kernels::{EngramConfig, EngramLayout};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::error::{Error, Result};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// `format` field of every manifest.
pub const FORMAT_NAME: &str = "engram-table";
/// File name of the manifest inside a table directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest manifest accepted (a V4.1 manifest is ~10 KB; the limit only stops a symlink to
/// `/dev/zero` or a runaway file from being read into memory).
pub const MAX_MANIFEST_BYTES: engram_files::file::Limit = engram_files::file::Limit {
    what: "manifest",
    name: "MAX_MANIFEST_BYTES",
    bytes: 64 << 20,
};
/// Magic bytes at offset 0 of every layer file.
pub const LAYER_MAGIC: [u8; 8] = *b"ENGRAMLY";
/// Size of the layer-file header; also the offset of the row region (O_DIRECT-aligned).
pub const HEADER_BYTES: u64 = 4096;
/// Page size rows are packed into: no row straddles a page, every page is O_DIRECT-aligned.
pub const PAGE_BYTES: u64 = 4096;
/// Offset of the header checksum (the header's last 8 bytes).
pub const HEADER_CHECKSUM_OFFSET: usize = 4088;
/// Largest row this format accepts (1 MiB).
pub const MAX_ROW_BYTES: u64 = 1 << 20;
/// Largest checksum block (64 MiB).
pub const MAX_BLOCK_BYTES: u64 = 64 << 20;

pub use engram_kernels::quant::RowLayout;

/// Bytes of one row of `dim` values stored as `layout`, or an error if the shape is not
/// representable or the row is above the format's [`MAX_ROW_BYTES`].
pub fn row_bytes(layout: RowLayout, dim: u32) -> Result<u64> {
    let bytes = layout.row_bytes(dim as usize).map_err(|e| Error::Invalid {
        what: "row layout",
        reason: e.to_string(),
    })? as u64;
    if bytes > MAX_ROW_BYTES {
        return Err(Error::Invalid {
            what: "row bytes",
            reason: format!("{bytes} is above the format limit {MAX_ROW_BYTES}"),
        });
    }
    Ok(bytes)
}

/// Where a row lives inside a layer's row region. Rows are packed `rows_per_unit` to a unit
/// of `unit_bytes` (a multiple of [`PAGE_BYTES`]), so no row crosses a page boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of one row (from the row layout and `dim`).
    pub row_bytes: u64,
    /// Rows packed into one unit (at least 1).
    pub rows_per_unit: u64,
    /// Bytes of one unit: a multiple of [`PAGE_BYTES`].
    pub unit_bytes: u64,
}

impl Geometry {
    /// The packing rule of format v1: `rows_per_unit = max(1, 4096 / row_bytes)`,
    /// `unit_bytes = round_up(rows_per_unit * row_bytes, 4096)`.
    pub fn for_row_bytes(row_bytes: u64) -> Self {
        let rows_per_unit = (PAGE_BYTES / row_bytes.max(1)).max(1);
        let unit_bytes = (rows_per_unit * row_bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES;
        Self {
            row_bytes,
            rows_per_unit,
            unit_bytes,
        }
    }

    /// Byte offset of `row` inside the row region.
    #[inline]
    pub fn row_offset(&self, row: u64) -> u64 {
        (row / self.rows_per_unit) * self.unit_bytes + (row % self.rows_per_unit) * self.row_bytes
    }

    /// Bytes of the row region for `rows` rows (whole units).
    pub fn data_bytes(&self, rows: u64) -> Option<u64> {
        rows.div_ceil(self.rows_per_unit)
            .checked_mul(self.unit_bytes)
    }
}

/// Who built the table and from what; not used for addressing. `checkpoint_sha256` binds
/// imported rows to the checkpoint files they came from, so a decoder can refuse a table
/// built from other weights.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// Program and version, e.g. `engram-build 0.1.0`.
    pub tool: String,
    /// Seconds since the Unix epoch when the build finished.
    pub created_unix: u64,
    /// What the rows came from (corpus, checkpoint, `synthetic seed=...`).
    pub source: String,
    /// Free-form notes.
    #[serde(default)]
    pub notes: String,
    /// SHA-256 (64 lower-case hex digits) of each checkpoint file the rows were imported
    /// from, in import order; empty (and absent from the JSON) when the rows were not
    /// imported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoint_sha256: Vec<String>,
}

/// One layer's entry in the manifest: its addressing constants and its data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerManifest {
    /// Position of the layer in `config.layer_ids`.
    pub index: u32,
    /// The Engram layer id.
    pub layer_id: u64,
    /// `seed + 10007 * layer_id`, as a decimal string (it may exceed 2^64).
    pub rng_seed: String,
    /// Multipliers per lag `k = 0..N-1`.
    pub multipliers: Vec<i64>,
    /// Table size per head, order-major.
    pub primes: Vec<u64>,
    /// First row of each head.
    pub offsets: Vec<u64>,
    /// Rows of this layer (`sum(primes)`).
    pub rows: u64,
    /// Data file name, relative to the table directory.
    pub file: String,
    /// Size of the data file in bytes.
    pub file_bytes: u64,
    /// xxh3-64 of the file's header (its first 4088 bytes), as 16 hex digits.
    pub header_xxh3: String,
    /// xxh3-64 of the file's checksum table, as 16 hex digits.
    pub checksums_xxh3: String,
}

/// The table manifest: every constant needed to address and read a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"engram-table"`.
    pub format: String,
    /// Always [`FORMAT_VERSION`] for tables this build writes.
    pub format_version: u32,
    /// A 64-bit id shared by the manifest and every layer header (16 hex digits).
    pub table_id: String,
    /// SHA-256 of the `tokenizer.json` the compression table was built from.
    pub tokenizer_sha256: String,
    /// `V'`.
    pub compressed_vocab_size: u64,
    /// `P[pad_id]`.
    pub compressed_pad_id: i64,
    /// The addressing config (orders, heads, base sizes, layer ids, seed, pad id).
    pub config: EngramConfig,
    /// Row value layout.
    pub row_layout: RowLayout,
    /// Values per row.
    pub dim: u32,
    /// Bytes per row ([`row_bytes`]`(row_layout, dim)`).
    pub row_bytes: u64,
    /// Rows per packing unit.
    pub rows_per_unit: u64,
    /// Bytes per packing unit (a multiple of 4096).
    pub unit_bytes: u64,
    /// Bytes covered by one data-block checksum (a multiple of `unit_bytes`).
    pub block_bytes: u64,
    /// Byte offset of the row region in every layer file.
    pub data_offset: u64,
    /// One entry per `config.layer_ids`, same order.
    pub layers: Vec<LayerManifest>,
    /// Build provenance.
    pub build: BuildInfo,
    /// xxh3-64 of the manifest's canonical JSON without this field, as 16 hex digits
    /// ([`Manifest::checksum`]), so that no field can change unnoticed. Written by every
    /// table writer since it was introduced; absent only in v1 tables written before, which
    /// open unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_xxh3: Option<String>,
}

/// Lower-case hex of a u64, 16 digits.
pub fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_hex64(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

impl Manifest {
    /// A manifest for `layout` (derived with the tokenizer whose file hashes to
    /// `tokenizer_sha256`), rows of `dim` values stored as `row_layout`. File fields are
    /// filled by [`crate::TableWriter`]. `block_bytes = None` picks one unit per block,
    /// so every 4 KiB read can be verified on its own.
    pub fn new(
        layout: &EngramLayout,
        tokenizer_sha256: &str,
        row_layout: RowLayout,
        dim: u32,
        block_bytes: Option<u64>,
        build: BuildInfo,
    ) -> Result<Self> {
        let row_bytes = row_bytes(row_layout, dim)?;
        let geo = Geometry::for_row_bytes(row_bytes);
        let block_bytes = block_bytes.unwrap_or(geo.unit_bytes);
        let table_id = xxh3_64(
            format!(
                "{tokenizer_sha256}/{:?}/{}/{row_layout:?}/{dim}/{}/{}",
                layout.config, layout.compressed_vocab_size, build.created_unix, build.source
            )
            .as_bytes(),
        );
        let layers = layout
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerManifest {
                index: i as u32,
                layer_id: l.layer_id,
                rng_seed: l.rng_seed.to_string(),
                multipliers: l.multipliers.clone(),
                primes: l.primes.clone(),
                offsets: l.offsets.clone(),
                rows: l.total_rows,
                file: format!("layer-{:03}-id{}.bin", i, l.layer_id),
                file_bytes: 0,
                header_xxh3: hex64(0),
                checksums_xxh3: hex64(0),
            })
            .collect();
        let m = Self {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            table_id: hex64(table_id),
            tokenizer_sha256: tokenizer_sha256.to_ascii_lowercase(),
            compressed_vocab_size: layout.compressed_vocab_size,
            compressed_pad_id: layout.compressed_pad_id,
            config: layout.config.clone(),
            row_layout,
            dim,
            row_bytes,
            rows_per_unit: geo.rows_per_unit,
            unit_bytes: geo.unit_bytes,
            block_bytes,
            data_offset: HEADER_BYTES,
            layers,
            build,
            manifest_xxh3: None,
        };
        m.validate_shape(Path::new(MANIFEST_FILE))?;
        Ok(m)
    }

    /// The manifest checksum: xxh3-64 of the compact JSON serialization (no whitespace,
    /// members in declaration order, `manifest_xxh3` omitted) of every other field.
    pub fn checksum(&self) -> Result<u64> {
        let canonical = Self {
            manifest_xxh3: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&canonical).map_err(|e| Error::Invalid {
            what: "manifest",
            reason: format!("cannot serialize: {e}"),
        })?;
        Ok(xxh3_64(&bytes))
    }

    /// Sets `manifest_xxh3` to [`Self::checksum`] (writers call this last).
    pub fn seal(&mut self) -> Result<()> {
        self.manifest_xxh3 = Some(hex64(self.checksum()?));
        Ok(())
    }

    /// The manifest file's bytes (pretty JSON), sealed with its checksum.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut sealed = self.clone();
        sealed.seal()?;
        serde_json::to_vec_pretty(&sealed).map_err(|e| Error::Invalid {
            what: "manifest",
            reason: format!("cannot serialize: {e}"),
        })
    }

    /// The packing geometry.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            row_bytes: self.row_bytes,
            rows_per_unit: self.rows_per_unit,
            unit_bytes: self.unit_bytes,
        }
    }

    /// The table id as a number.
    pub fn table_id_u64(&self) -> Option<u64> {
        parse_hex64(&self.table_id)
    }

    /// Re-derives the addressing layout from the config and `V'` and checks every constant.
    pub fn derive_layout(&self, path: &Path) -> Result<EngramLayout> {
        let bad = |reason: String| Error::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let layout = EngramLayout::new(
            &self.config,
            self.compressed_vocab_size,
            self.compressed_pad_id,
        )
        .map_err(|e| bad(format!("config does not derive a layout: {e}")))?;
        if layout.layers.len() != self.layers.len() {
            return Err(bad(format!(
                "{} layer entries for {} layer ids",
                self.layers.len(),
                layout.layers.len()
            )));
        }
        for (i, (want, got)) in layout.layers.iter().zip(&self.layers).enumerate() {
            let check = |field: &'static str, expected: String, found: String| {
                if expected == found {
                    Ok(())
                } else {
                    Err(Error::Layout {
                        path: path.to_path_buf(),
                        layer_id: got.layer_id,
                        field,
                        expected,
                        found,
                    })
                }
            };
            check("index", i.to_string(), got.index.to_string())?;
            check(
                "layer_id",
                want.layer_id.to_string(),
                got.layer_id.to_string(),
            )?;
            check("rng_seed", want.rng_seed.to_string(), got.rng_seed.clone())?;
            check(
                "multipliers",
                format!("{:?}", want.multipliers),
                format!("{:?}", got.multipliers),
            )?;
            check(
                "primes",
                format!("{:?}", want.primes),
                format!("{:?}", got.primes),
            )?;
            check(
                "offsets",
                format!("{:?}", want.offsets),
                format!("{:?}", got.offsets),
            )?;
            check("rows", want.total_rows.to_string(), got.rows.to_string())?;
        }
        Ok(layout)
    }

    /// Checks the fields that do not need the layout: format, version, row shape, packing.
    pub fn validate_shape(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        if self.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                self.format
            )));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(Error::Version {
                path: path.to_path_buf(),
                expected: FORMAT_VERSION,
                found: self.format_version,
            });
        }
        if self.table_id_u64().is_none() {
            return Err(bad(format!(
                "table_id {:?} is not 16 hex digits",
                self.table_id
            )));
        }
        let sha_ok = self.tokenizer_sha256.len() == 64
            && self
                .tokenizer_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !sha_ok {
            return Err(bad(format!(
                "tokenizer_sha256 {:?} is not 64 lower-case hex digits",
                self.tokenizer_sha256
            )));
        }
        let row_bytes = row_bytes(self.row_layout, self.dim).map_err(|e| bad(e.to_string()))?;
        if row_bytes != self.row_bytes {
            return Err(bad(format!(
                "row_bytes {} but {:?} x {} values needs {row_bytes}",
                self.row_bytes, self.row_layout, self.dim
            )));
        }
        let geo = Geometry::for_row_bytes(row_bytes);
        if geo.rows_per_unit != self.rows_per_unit || geo.unit_bytes != self.unit_bytes {
            return Err(bad(format!(
                "packing rows_per_unit {} unit_bytes {}, format v1 requires {} and {}",
                self.rows_per_unit, self.unit_bytes, geo.rows_per_unit, geo.unit_bytes
            )));
        }
        if self.block_bytes == 0
            || !self.block_bytes.is_multiple_of(self.unit_bytes)
            || self.block_bytes > MAX_BLOCK_BYTES
        {
            return Err(bad(format!(
                "block_bytes {} must be a positive multiple of unit_bytes {} up to {MAX_BLOCK_BYTES}",
                self.block_bytes, self.unit_bytes
            )));
        }
        if self.data_offset != HEADER_BYTES {
            return Err(bad(format!(
                "data_offset {} (format v1 requires {HEADER_BYTES})",
                self.data_offset
            )));
        }
        for l in &self.layers {
            let ok = !l.file.is_empty()
                && !l.file.contains('/')
                && !l.file.contains('\\')
                && l.file != ".."
                && l.file != ".";
            if !ok {
                return Err(bad(format!(
                    "layer {} file name {:?} must be a plain file name",
                    l.layer_id, l.file
                )));
            }
        }
        Ok(())
    }

    /// Parses and fully validates a manifest's bytes (not the layer files).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        // Read the version first so a future format gives a version error, not a parse error.
        #[derive(Deserialize)]
        struct Probe {
            format_version: Option<u32>,
        }
        if let Ok(Probe {
            format_version: Some(v),
        }) = serde_json::from_slice::<Probe>(bytes)
            && v != FORMAT_VERSION
        {
            return Err(Error::Version {
                path: path.to_path_buf(),
                expected: FORMAT_VERSION,
                found: v,
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Manifest {
            path: path.to_path_buf(),
            reason: format!("not a v1 manifest: {e}"),
        })?;
        m.verify_checksum(path)?;
        m.validate_shape(path)?;
        Ok(m)
    }

    /// Checks `manifest_xxh3` when present (v1 tables written before it existed lack it).
    pub fn verify_checksum(&self, path: &Path) -> Result<()> {
        let Some(field) = &self.manifest_xxh3 else {
            return Ok(());
        };
        let stored = parse_hex64(field).ok_or_else(|| Error::Manifest {
            path: path.to_path_buf(),
            reason: format!("manifest_xxh3 {field:?} is not 16 hex digits"),
        })?;
        let computed = self.checksum()?;
        if stored != computed {
            return Err(Error::Manifest {
                path: path.to_path_buf(),
                reason: format!(
                    "manifest_xxh3 is {field} but the fields hash to {}: the manifest was \
                     changed after the table was written",
                    hex64(computed)
                ),
            });
        }
        Ok(())
    }
}

/// The fixed 4096-byte header of a layer file (all integers little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerHeader {
    /// Format version of the file (= [`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Size of this header in bytes (= [`HEADER_BYTES`]).
    pub header_bytes: u32,
    /// Id of the table the file belongs to (= the manifest's `table_id`).
    pub table_id: u64,
    /// Position of the layer in the manifest's `layers`.
    pub layer_index: u32,
    /// Model layer id of the layer (= the manifest's).
    pub layer_id: u64,
    /// Rows in the layer.
    pub rows: u64,
    /// Bytes of one row.
    pub row_bytes: u32,
    /// Rows packed into one unit (see [`Geometry`]).
    pub rows_per_unit: u32,
    /// Bytes of one unit, a multiple of [`PAGE_BYTES`].
    pub unit_bytes: u32,
    /// Bytes covered by one checksum (the last block may be shorter).
    pub block_bytes: u32,
    /// Byte offset of the row region (= [`HEADER_BYTES`]).
    pub data_offset: u64,
    /// Bytes of the row region (whole units).
    pub data_bytes: u64,
    /// Checksum blocks: `ceil(data_bytes / block_bytes)`.
    pub n_blocks: u64,
    /// Byte offset of the checksum table (`data_offset + data_bytes`).
    pub checksums_offset: u64,
    /// xxh3-64 of the checksum table's bytes.
    pub checksums_xxh3: u64,
    /// Length of the whole file in bytes (`checksums_offset + 8 * n_blocks`).
    pub file_bytes: u64,
}

/// Field offsets inside the header (see `docs/format.md`).
pub(crate) mod header_offsets {
    pub const MAGIC: usize = 0;
    pub const FORMAT_VERSION: usize = 8;
    pub const HEADER_BYTES: usize = 12;
    pub const TABLE_ID: usize = 16;
    pub const LAYER_INDEX: usize = 24;
    pub const LAYER_ID: usize = 32;
    pub const ROWS: usize = 40;
    pub const ROW_BYTES: usize = 48;
    pub const ROWS_PER_UNIT: usize = 52;
    pub const UNIT_BYTES: usize = 56;
    pub const BLOCK_BYTES: usize = 60;
    pub const DATA_OFFSET: usize = 64;
    pub const DATA_BYTES: usize = 72;
    pub const N_BLOCKS: usize = 80;
    pub const CHECKSUMS_OFFSET: usize = 88;
    pub const CHECKSUMS_XXH3: usize = 96;
    pub const FILE_BYTES: usize = 104;
    /// First byte of the zero padding that runs to the checksum.
    pub const RESERVED: usize = 112;
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
/// Checks the envelope that the sidecar files (profile, candidates) share: at least `min`
/// bytes, `magic` at offset 0, a little-endian u32 `version` at offset 8, and the xxh3-64 of
/// everything before it in the last 8 bytes. Returns the body's length (the bytes before
/// the checksum), or the offset and reason of the first failure.
pub(crate) fn check_sealed(
    b: &[u8],
    magic: &[u8; 8],
    version: u32,
    min: usize,
) -> std::result::Result<usize, (usize, String)> {
    let min = min.max(16);
    if b.len() < min {
        return Err((
            0,
            format!("{} bytes is shorter than the {min}-byte minimum", b.len()),
        ));
    }
    if b[..8] != magic[..] {
        return Err((
            0,
            format!("bad magic (expected {})", String::from_utf8_lossy(magic)),
        ));
    }
    let body = b.len() - 8;
    let stored = get_u64(b, body);
    let computed = xxhash_rust::xxh3::xxh3_64(&b[..body]);
    if stored != computed {
        return Err((
            body,
            format!("checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"),
        ));
    }
    let found = get_u32(b, 8);
    if found != version {
        return Err((8, format!("version {found}, this build reads {version}")));
    }
    Ok(body)
}

/// The little-endian u32 at `b[at..at + 4]` (the caller checks the bounds).
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
/// The little-endian u64 at `b[at..at + 8]` (the caller checks the bounds).
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl LayerHeader {
    /// Serializes to 4096 bytes with the trailing xxh3-64 checksum.
    pub fn encode(&self) -> Vec<u8> {
        use header_offsets as o;
        let mut b = vec![0u8; HEADER_BYTES as usize];
        b[o::MAGIC..o::MAGIC + 8].copy_from_slice(&LAYER_MAGIC);
        put_u32(&mut b, o::FORMAT_VERSION, self.format_version);
        put_u32(&mut b, o::HEADER_BYTES, self.header_bytes);
        put_u64(&mut b, o::TABLE_ID, self.table_id);
        put_u32(&mut b, o::LAYER_INDEX, self.layer_index);
        put_u64(&mut b, o::LAYER_ID, self.layer_id);
        put_u64(&mut b, o::ROWS, self.rows);
        put_u32(&mut b, o::ROW_BYTES, self.row_bytes);
        put_u32(&mut b, o::ROWS_PER_UNIT, self.rows_per_unit);
        put_u32(&mut b, o::UNIT_BYTES, self.unit_bytes);
        put_u32(&mut b, o::BLOCK_BYTES, self.block_bytes);
        put_u64(&mut b, o::DATA_OFFSET, self.data_offset);
        put_u64(&mut b, o::DATA_BYTES, self.data_bytes);
        put_u64(&mut b, o::N_BLOCKS, self.n_blocks);
        put_u64(&mut b, o::CHECKSUMS_OFFSET, self.checksums_offset);
        put_u64(&mut b, o::CHECKSUMS_XXH3, self.checksums_xxh3);
        put_u64(&mut b, o::FILE_BYTES, self.file_bytes);
        let sum = xxh3_64(&b[..HEADER_CHECKSUM_OFFSET]);
        put_u64(&mut b, HEADER_CHECKSUM_OFFSET, sum);
        b
    }

    /// Parses a header, checking magic, checksum, version and reserved bytes.
    /// Returns the header and its checksum.
    pub fn decode(b: &[u8], path: &Path, layer_id: u64) -> Result<(Self, u64)> {
        use header_offsets as o;
        let hdr_err =
            |field: &'static str, offset: usize, expected: String, found: String| Error::Header {
                path: path.to_path_buf(),
                layer_id,
                field,
                offset: offset as u64,
                expected,
                found,
            };
        if b.len() < HEADER_BYTES as usize {
            return Err(Error::FileSize {
                path: path.to_path_buf(),
                layer_id,
                expected: HEADER_BYTES,
                found: b.len() as u64,
            });
        }
        if b[..8] != LAYER_MAGIC {
            return Err(hdr_err(
                "magic",
                o::MAGIC,
                format!("{:?}", String::from_utf8_lossy(&LAYER_MAGIC)),
                format!("{:?}", String::from_utf8_lossy(&b[..8])),
            ));
        }
        let stored = get_u64(b, HEADER_CHECKSUM_OFFSET);
        let computed = xxh3_64(&b[..HEADER_CHECKSUM_OFFSET]);
        if stored != computed {
            return Err(Error::Checksum {
                path: path.to_path_buf(),
                layer_id,
                what: "layer header",
                offset: 0,
                len: HEADER_CHECKSUM_OFFSET as u64,
                stored,
                computed,
            });
        }
        let version = get_u32(b, o::FORMAT_VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::Version {
                path: path.to_path_buf(),
                expected: FORMAT_VERSION,
                found: version,
            });
        }
        if let Some(pos) = b[o::RESERVED..HEADER_CHECKSUM_OFFSET]
            .iter()
            .position(|&x| x != 0)
            .map(|p| p + o::RESERVED)
        {
            return Err(hdr_err("reserved", pos, "0".into(), b[pos].to_string()));
        }
        if get_u32(b, 28) != 0 {
            return Err(hdr_err(
                "reserved",
                28,
                "0".into(),
                get_u32(b, 28).to_string(),
            ));
        }
        Ok((
            Self {
                format_version: version,
                header_bytes: get_u32(b, o::HEADER_BYTES),
                table_id: get_u64(b, o::TABLE_ID),
                layer_index: get_u32(b, o::LAYER_INDEX),
                layer_id: get_u64(b, o::LAYER_ID),
                rows: get_u64(b, o::ROWS),
                row_bytes: get_u32(b, o::ROW_BYTES),
                rows_per_unit: get_u32(b, o::ROWS_PER_UNIT),
                unit_bytes: get_u32(b, o::UNIT_BYTES),
                block_bytes: get_u32(b, o::BLOCK_BYTES),
                data_offset: get_u64(b, o::DATA_OFFSET),
                data_bytes: get_u64(b, o::DATA_BYTES),
                n_blocks: get_u64(b, o::N_BLOCKS),
                checksums_offset: get_u64(b, o::CHECKSUMS_OFFSET),
                checksums_xxh3: get_u64(b, o::CHECKSUMS_XXH3),
                file_bytes: get_u64(b, o::FILE_BYTES),
            },
            stored,
        ))
    }

    /// The header a layer of `rows` rows must have under `manifest`.
    pub fn expected(
        manifest: &Manifest,
        layer_index: u32,
        layer_id: u64,
        rows: u64,
    ) -> Result<Self> {
        let geo = manifest.geometry();
        let overflow = || Error::Invalid {
            what: "layer size",
            reason: format!("layer {layer_id} with {rows} rows overflows u64"),
        };
        let data_bytes = geo.data_bytes(rows).ok_or_else(overflow)?;
        let n_blocks = data_bytes.div_ceil(manifest.block_bytes);
        let checksums_offset = manifest
            .data_offset
            .checked_add(data_bytes)
            .ok_or_else(overflow)?;
        let file_bytes = n_blocks
            .checked_mul(8)
            .and_then(|c| c.checked_add(checksums_offset))
            .ok_or_else(overflow)?;
        let narrow = |what: &'static str, v: u64| {
            u32::try_from(v).map_err(|_| Error::Invalid {
                what,
                reason: format!("{v} does not fit 32 bits"),
            })
        };
        Ok(Self {
            format_version: FORMAT_VERSION,
            header_bytes: HEADER_BYTES as u32,
            table_id: manifest.table_id_u64().unwrap_or(0),
            layer_index,
            layer_id,
            rows,
            row_bytes: narrow("row_bytes", manifest.row_bytes)?,
            rows_per_unit: narrow("rows_per_unit", manifest.rows_per_unit)?,
            unit_bytes: narrow("unit_bytes", manifest.unit_bytes)?,
            block_bytes: narrow("block_bytes", manifest.block_bytes)?,
            data_offset: manifest.data_offset,
            data_bytes,
            n_blocks,
            checksums_offset,
            checksums_xxh3: 0,
            file_bytes,
        })
    }
}

/// The header checksum: xxh3-64 of the header's first 4088 bytes.
pub fn header_checksum(first_4088: &[u8]) -> u64 {
    xxh3_64(first_4088)
}

/// Checksum of data block `index` (seeded with the block index so swapped blocks fail).
#[inline]
pub fn block_checksum(index: u64, bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, index)
}

/// Checksum of the checksum table bytes.
pub fn checksums_checksum(table: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(table.len() * 8);
    for v in table {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// Parses a 16-hex-digit checksum field of the manifest.
pub fn parse_checksum_field(s: &str) -> Option<u64> {
    parse_hex64(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_object_rejects_unknown_keys() {
        let ok = r#"{"tool":"t","created_unix":1,"source":"s","notes":""}"#;
        assert!(serde_json::from_str::<BuildInfo>(ok).is_ok());
        let extra = r#"{"tool":"t","created_unix":1,"source":"s","notes":"","speed":"fast"}"#;
        let e = serde_json::from_str::<BuildInfo>(extra).expect_err("unknown key");
        assert!(e.to_string().contains("speed"), "{e}");
    }

    #[test]
    fn row_bytes_of_published_layouts() {
        assert_eq!(row_bytes(RowLayout::Bf16, 64).ok(), Some(128));
        assert_eq!(row_bytes(RowLayout::Bf16, 80).ok(), Some(160));
        assert_eq!(row_bytes(RowLayout::V41, 256).ok(), Some(264));
        assert!(row_bytes(RowLayout::Fp8E4m3E8m0 { scale_block: 3 }, 256).is_err());
        assert!(row_bytes(RowLayout::F32, 0).is_err());
        assert!(
            row_bytes(RowLayout::F32, 1 << 20).is_err(),
            "above MAX_ROW_BYTES"
        );
    }

    #[test]
    fn geometry_never_straddles_pages() {
        for rb in [1u64, 2, 128, 160, 264, 1000, 4096, 4097, 10_000] {
            let g = Geometry::for_row_bytes(rb);
            assert_eq!(g.unit_bytes % PAGE_BYTES, 0);
            for r in 0..100 {
                let off = g.row_offset(r);
                let unit = off / g.unit_bytes;
                assert_eq!((off + rb - 1) / g.unit_bytes, unit, "row {r} rb {rb}");
            }
        }
        assert_eq!(Geometry::for_row_bytes(264).rows_per_unit, 15);
    }

    #[test]
    fn header_roundtrip() {
        let h = LayerHeader {
            format_version: 1,
            header_bytes: 4096,
            table_id: 7,
            layer_index: 1,
            layer_id: 15,
            rows: 100,
            row_bytes: 128,
            rows_per_unit: 32,
            unit_bytes: 4096,
            block_bytes: 4096,
            data_offset: 4096,
            data_bytes: 16384,
            n_blocks: 4,
            checksums_offset: 20480,
            checksums_xxh3: 9,
            file_bytes: 20512,
        };
        let b = h.encode();
        let (back, _) = LayerHeader::decode(&b, Path::new("x"), 15).expect("valid");
        assert_eq!(back, h);
        let mut bad = b.clone();
        bad[50] ^= 1;
        assert!(matches!(
            LayerHeader::decode(&bad, Path::new("x"), 15),
            Err(Error::Checksum { .. })
        ));
    }
}
