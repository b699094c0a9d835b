//! N-gram records: packed copies of the rows of all heads of frequent n-grams, so that a
//! cache miss on such an n-gram costs one device read instead of one per head.
//!
//! `records.bin` is an optional sidecar in the table directory, written by `engram-build
//! --records-bytes` and bound to the table by `table_id`. A record holds the `K` rows
//! (one per hash head) of one n-gram, in head order; the store reads a record instead of
//! the rows' own pages when at least two of the record's rows miss the cache in one batch.
//! Rows keep their normal place in the layer files: records are copies, so a table with
//! records returns the same bytes as one without (tested). The byte layout is in
//! `docs/format.md` ("Records file").

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result, io, io_at};
use crate::format::{PAGE_BYTES, block_checksum, checksums_checksum};

/// File name of the records inside a table directory.
pub const RECORDS_FILE: &str = "records.bin";
/// Magic bytes at offset 0.
pub const RECORDS_MAGIC: [u8; 8] = *b"ENGRAMRC";
/// Records format version.
pub const RECORDS_VERSION: u32 = 1;
/// Bytes of the header (the first page).
const HEADER_BYTES: u64 = 4096;
/// Offset of the header checksum.
const HEADER_SUM_AT: usize = 4088;
/// Offset of the per-layer directory in the header.
const DIR_AT: usize = 48;
/// Bytes per directory entry.
const DIR_ENTRY: usize = 64;
/// Most layers a records file describes (directory entries that fit the header).
pub const MAX_RECORD_LAYERS: usize = (HEADER_SUM_AT - DIR_AT) / DIR_ENTRY;
/// Most records per layer (bounds the index the store holds in memory).
pub const MAX_RECORDS_PER_LAYER: u64 = 1 << 28;

/// Shape shared by every record of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordShape {
    /// Rows per record (the hash heads of one n-gram order).
    pub rows_per_record: u32,
    /// Bytes of one row (= the table's).
    pub row_bytes: u32,
    /// Records packed into one unit; no record crosses a unit.
    pub records_per_unit: u32,
    /// Bytes per unit, a multiple of 4096; also the checksum block.
    pub unit_bytes: u32,
}

impl RecordShape {
    /// The packing rule: `records_per_unit = max(1, 4096 / record_bytes)`, units rounded up
    /// to whole pages.
    pub fn new(rows_per_record: u32, row_bytes: u32) -> Result<Self> {
        let record = u64::from(rows_per_record) * u64::from(row_bytes);
        if rows_per_record == 0 || row_bytes == 0 || record > 64 << 20 {
            return Err(Error::Invalid {
                what: "record shape",
                reason: format!("{rows_per_record} rows of {row_bytes} bytes"),
            });
        }
        let per_unit = (PAGE_BYTES / record).max(1);
        let unit = (per_unit * record).div_ceil(PAGE_BYTES) * PAGE_BYTES;
        Ok(Self {
            rows_per_record,
            row_bytes,
            records_per_unit: per_unit as u32,
            unit_bytes: unit as u32,
        })
    }

    /// Bytes of one record: `rows_per_record * row_bytes`.
    pub fn record_bytes(&self) -> u64 {
        u64::from(self.rows_per_record) * u64::from(self.row_bytes)
    }

    /// Byte offset of record `r`'s row at position `pos` inside a layer's data region.
    pub fn row_offset(&self, r: u64, pos: u32) -> u64 {
        let rpu = u64::from(self.records_per_unit);
        (r / rpu) * u64::from(self.unit_bytes)
            + (r % rpu) * self.record_bytes()
            + u64::from(pos) * u64::from(self.row_bytes)
    }

    fn data_bytes(&self, n_records: u64) -> u64 {
        n_records.div_ceil(u64::from(self.records_per_unit)) * u64::from(self.unit_bytes)
    }

    /// Size of a records file that [`RecordsWriter`] writes with `records_per_layer` records
    /// in each of `layers` layers (`None` on overflow): what a byte budget buys.
    pub fn file_bytes(&self, layers: u64, records_per_layer: u64) -> Option<u64> {
        if layers == 0 || records_per_layer == 0 {
            return Some(HEADER_BYTES);
        }
        let index = records_per_layer
            .checked_mul(u64::from(self.rows_per_record))?
            .checked_mul(8)?;
        let units = records_per_layer.div_ceil(u64::from(self.records_per_unit));
        let layer = round_page(index)
            .checked_add(units.checked_mul(u64::from(self.unit_bytes))?)?
            .checked_add(round_page(units.checked_mul(8)?))?;
        // The last layer's checksum table ends the file, unpadded.
        (layer.checked_mul(layers)?.checked_add(HEADER_BYTES)? - round_page(units * 8))
            .checked_add(units * 8)
    }
}

/// One layer's records as the store uses them.
#[derive(Debug)]
pub struct LayerRecords {
    /// The Engram layer id (for messages).
    pub layer_id: u64,
    /// Records in the layer.
    pub n_records: u64,
    /// File offset of the data region.
    pub data_offset: u64,
    /// Bytes of the data region, whole units.
    pub data_bytes: u64,
    /// Row id -> (record, position); a row in several records maps to the first.
    index: HashMap<u64, (u32, u8)>,
    /// (units,) xxh3 of every unit
    checksums: Vec<u64>,
}

impl LayerRecords {
    /// The record holding `row`, and its position in it.
    #[inline]
    pub fn find(&self, row: u64) -> Option<(u32, u8)> {
        self.index.get(&row).copied()
    }

    /// Distinct rows the records cover.
    pub fn rows_covered(&self) -> usize {
        self.index.len()
    }

    /// Every covered row with its record and position (for verification), in no order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, (u32, u8))> + '_ {
        self.index.iter().map(|(&row, &at)| (row, at))
    }
}

/// An opened, validated records file.
#[derive(Debug)]
pub struct Records {
    /// The records file.
    pub path: PathBuf,
    /// The open file (reads use it through the device backends).
    pub file: File,
    /// The shape shared by every record.
    pub shape: RecordShape,
    /// (table layers,) records of each layer index (empty where the file has none)
    pub layers: Vec<Option<LayerRecords>>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn round_page(v: u64) -> u64 {
    v.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// One layer's directory entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DirEntry {
    layer_index: u32,
    n_records: u64,
    index_offset: u64,
    data_offset: u64,
    data_bytes: u64,
    checksums_offset: u64,
    index_xxh3: u64,
    checksums_xxh3: u64,
}

impl DirEntry {
    fn encode(&self, b: &mut [u8]) {
        b[0..4].copy_from_slice(&self.layer_index.to_le_bytes());
        b[4..8].fill(0);
        for (i, v) in [
            self.n_records,
            self.index_offset,
            self.data_offset,
            self.data_bytes,
            self.checksums_offset,
            self.index_xxh3,
            self.checksums_xxh3,
        ]
        .into_iter()
        .enumerate()
        {
            b[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Self {
        Self {
            layer_index: le32(b, 0),
            n_records: le64(b, 8),
            index_offset: le64(b, 16),
            data_offset: le64(b, 24),
            data_bytes: le64(b, 32),
            checksums_offset: le64(b, 40),
            index_xxh3: le64(b, 48),
            checksums_xxh3: le64(b, 56),
        }
    }
}

/// Writes a records file: per layer, the row ids of each record and their bytes.
#[derive(Debug)]
pub struct RecordsWriter {
    path: PathBuf,
    file: File,
    table_id: u64,
    shape: RecordShape,
    dir: Vec<DirEntry>,
    next: u64,
}

impl RecordsWriter {
    /// Creates `path` (which must not exist) for records of `shape`.
    pub fn create(path: &Path, table_id: u64, shape: RecordShape) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io("create", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            table_id,
            shape,
            dir: Vec::new(),
            next: HEADER_BYTES,
        })
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| io_at("write", &self.path, at, e))
    }

    /// Adds layer `layer_index`: `rows` holds `rows_per_record` row ids per record (head
    /// order); `fill(row, out)` writes a row's bytes. Layers in increasing index order.
    pub fn add_layer(
        &mut self,
        layer_index: u32,
        rows: &[u64],
        mut fill: impl FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let k = self.shape.rows_per_record as usize;
        if rows.is_empty() || !rows.len().is_multiple_of(k) {
            return Err(Error::Writer(format!(
                "records of layer {layer_index}: {} row ids is not a positive multiple of {k}",
                rows.len()
            )));
        }
        if self.dir.len() >= MAX_RECORD_LAYERS
            || self
                .dir
                .last()
                .is_some_and(|d| d.layer_index >= layer_index)
        {
            return Err(Error::Writer(format!(
                "records layer {layer_index} out of order or too many layers"
            )));
        }
        let n = (rows.len() / k) as u64;
        let index_offset = self.next;
        let mut index = Vec::with_capacity(rows.len() * 8);
        for r in rows {
            index.extend_from_slice(&r.to_le_bytes());
        }
        self.write_at(&index, index_offset)?;
        let data_offset = round_page(index_offset + index.len() as u64);
        let data_bytes = self.shape.data_bytes(n);
        let ub = self.shape.unit_bytes as usize;
        let rb = self.shape.row_bytes as usize;
        let mut unit = vec![0u8; ub];
        let mut sums = Vec::with_capacity(usize::try_from(data_bytes / ub as u64).unwrap_or(0));
        for (u, chunk) in rows
            .chunks(k * self.shape.records_per_unit as usize)
            .enumerate()
        {
            unit.fill(0);
            for (j, &row) in chunk.iter().enumerate() {
                fill(row, &mut unit[j * rb..(j + 1) * rb])?;
            }
            sums.push(block_checksum(u as u64, &unit));
            self.write_at(&unit, data_offset + (u * ub) as u64)?;
        }
        let checksums_offset = data_offset + data_bytes;
        let mut table = Vec::with_capacity(sums.len() * 8);
        for s in &sums {
            table.extend_from_slice(&s.to_le_bytes());
        }
        self.write_at(&table, checksums_offset)?;
        self.next = round_page(checksums_offset + table.len() as u64);
        self.dir.push(DirEntry {
            layer_index,
            n_records: n,
            index_offset,
            data_offset,
            data_bytes,
            checksums_offset,
            index_xxh3: xxh3_64(&index),
            checksums_xxh3: checksums_checksum(&sums),
        });
        Ok(())
    }

    /// Writes the header and fsyncs.
    pub fn finish(self) -> Result<()> {
        let mut h = vec![0u8; HEADER_BYTES as usize];
        h[0..8].copy_from_slice(&RECORDS_MAGIC);
        h[8..12].copy_from_slice(&RECORDS_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(self.dir.len() as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.table_id.to_le_bytes());
        h[24..28].copy_from_slice(&self.shape.rows_per_record.to_le_bytes());
        h[28..32].copy_from_slice(&self.shape.row_bytes.to_le_bytes());
        h[32..36].copy_from_slice(&self.shape.records_per_unit.to_le_bytes());
        h[36..40].copy_from_slice(&self.shape.unit_bytes.to_le_bytes());
        for (i, d) in self.dir.iter().enumerate() {
            d.encode(&mut h[DIR_AT + i * DIR_ENTRY..DIR_AT + (i + 1) * DIR_ENTRY]);
        }
        let sum = xxh3_64(&h[..HEADER_SUM_AT]);
        h[HEADER_SUM_AT..].copy_from_slice(&sum.to_le_bytes());
        self.write_at(&h, 0)?;
        (&self.file)
            .flush()
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io("fsync", &self.path, e))
    }
}

/// What a records file must agree with: the facts of the table it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsBinding {
    /// The table's `table_id` (0 when the manifest has none).
    pub table_id: u64,
    /// Bytes of one row of the table (every layer's rows have this size).
    pub row_bytes: usize,
    /// Hash heads, the rows of one record.
    pub n_heads: usize,
    /// (table layers,) `(layer id, rows)` of each layer index
    pub layers: Vec<(u64, u64)>,
}

impl RecordsBinding {
    /// The binding of an opened table.
    pub fn of(table: &crate::table::Table) -> Result<Self> {
        let layers = (0..table.n_layers())
            .map(|i| Ok((table.manifest().layers[i].layer_id, table.rows(i)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            table_id: table.manifest().table_id_u64().unwrap_or(0),
            row_bytes: table.row_bytes(),
            n_heads: table.layout().config.n_heads,
            layers,
        })
    }
}

/// A validated records file apart from its file handle: what [`Records::open`] checks,
/// also reachable from bytes in memory (the fuzz target and its regression test).
#[derive(Debug)]
pub struct RecordsIndex {
    /// Geometry of the records: rows per record, row bytes, records per read unit.
    pub shape: RecordShape,
    /// (table layers,) records of each layer index (empty where the file has none)
    pub layers: Vec<Option<LayerRecords>>,
}

impl RecordsIndex {
    /// Validates a whole records file held in memory (as [`Records::open`] would the file).
    #[doc(hidden)]
    pub fn from_bytes(bytes: &[u8], path: &Path, binding: &RecordsBinding) -> Result<Self> {
        let size = bytes.len() as u64;
        Self::parse(path, size, binding, &mut |buf: &mut [u8], at: u64| {
            let range = usize::try_from(at)
                .ok()
                .and_then(|at| Some(at..at.checked_add(buf.len())?));
            let src = range
                .and_then(|r| bytes.get(r))
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    /// Validates a records file of `size` bytes read through `read_at(buf, offset)`.
    fn parse(
        path: &Path,
        size: u64,
        binding: &RecordsBinding,
        read_at: &mut dyn FnMut(&mut [u8], u64) -> std::io::Result<()>,
    ) -> Result<Self> {
        let bad = |offset: u64, reason: String| Error::Records {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        if size < HEADER_BYTES {
            return Err(bad(0, format!("{size} bytes is shorter than the header")));
        }
        let mut h = vec![0u8; HEADER_BYTES as usize];
        read_at(&mut h, 0).map_err(|e| io_at("read header", path, 0, e))?;
        if h[..8] != RECORDS_MAGIC {
            return Err(bad(0, "bad magic (expected ENGRAMRC)".into()));
        }
        let stored = le64(&h, HEADER_SUM_AT);
        let computed = xxh3_64(&h[..HEADER_SUM_AT]);
        if stored != computed {
            return Err(bad(
                HEADER_SUM_AT as u64,
                format!(
                    "header checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
                ),
            ));
        }
        let version = le32(&h, 8);
        if version != RECORDS_VERSION {
            return Err(bad(
                8,
                format!("version {version}, this build reads {RECORDS_VERSION}"),
            ));
        }
        let n_layers = le32(&h, 12) as usize;
        let table_id = le64(&h, 16);
        let want_id = binding.table_id;
        if table_id != want_id {
            return Err(bad(
                16,
                format!("written for table_id {table_id:016x}, this table is {want_id:016x}"),
            ));
        }
        let k = le32(&h, 24);
        let shape = RecordShape::new(k, le32(&h, 28))?;
        if shape.row_bytes as usize != binding.row_bytes
            || k as usize != binding.n_heads
            || le32(&h, 32) != shape.records_per_unit
            || le32(&h, 36) != shape.unit_bytes
        {
            return Err(bad(
                24,
                format!(
                    "shape {k} rows x {} B ({} per {}-byte unit) does not fit this table \
                     ({} heads x {} B)",
                    le32(&h, 28),
                    le32(&h, 32),
                    le32(&h, 36),
                    binding.n_heads,
                    binding.row_bytes
                ),
            ));
        }
        if n_layers > MAX_RECORD_LAYERS {
            return Err(bad(12, format!("{n_layers} layers")));
        }
        let mut layers: Vec<Option<LayerRecords>> =
            (0..binding.layers.len()).map(|_| None).collect();
        for i in 0..n_layers {
            let at = DIR_AT + i * DIR_ENTRY;
            let d = DirEntry::decode(&h[at..at + DIR_ENTRY]);
            let li = d.layer_index as usize;
            let (layer_id, rows) = *binding.layers.get(li).ok_or_else(|| {
                bad(
                    at as u64,
                    format!("layer index {li} is not a layer of the table"),
                )
            })?;
            if layers[li].is_some() || d.n_records == 0 || d.n_records > MAX_RECORDS_PER_LAYER {
                return Err(bad(at as u64, format!("bad entry for layer index {li}")));
            }
            let index_len = d.n_records * u64::from(k) * 8;
            let n_units = d.n_records.div_ceil(u64::from(shape.records_per_unit));
            let consistent = d.index_offset >= HEADER_BYTES
                && d.index_offset.is_multiple_of(PAGE_BYTES)
                && d.data_offset == round_page(d.index_offset + index_len)
                && d.data_bytes == shape.data_bytes(d.n_records)
                && d.checksums_offset == d.data_offset + d.data_bytes
                && d.checksums_offset + n_units * 8 <= size;
            if !consistent {
                return Err(bad(
                    at as u64,
                    format!("inconsistent offsets for layer index {li}"),
                ));
            }
            let mut raw = vec![0u8; index_len as usize];
            read_at(&mut raw, d.index_offset)
                .map_err(|e| io_at("read records index", path, d.index_offset, e))?;
            if xxh3_64(&raw) != d.index_xxh3 {
                return Err(bad(
                    d.index_offset,
                    "records index checksum mismatch".into(),
                ));
            }
            let mut index = HashMap::with_capacity(raw.len() / 8);
            for (j, chunk) in raw.chunks_exact(8).enumerate() {
                let row = le64(chunk, 0);
                if row >= rows {
                    return Err(bad(
                        d.index_offset + 8 * j as u64,
                        format!("row {row} is out of range ({rows} rows)"),
                    ));
                }
                let rec = (j / k as usize) as u32;
                let pos = (j % k as usize) as u8;
                index.entry(row).or_insert((rec, pos));
            }
            let mut raw = vec![0u8; (n_units * 8) as usize];
            read_at(&mut raw, d.checksums_offset)
                .map_err(|e| io_at("read records checksums", path, d.checksums_offset, e))?;
            let checksums: Vec<u64> = raw.chunks_exact(8).map(|c| le64(c, 0)).collect();
            if checksums_checksum(&checksums) != d.checksums_xxh3 {
                return Err(bad(
                    d.checksums_offset,
                    "records checksum table mismatch".into(),
                ));
            }
            layers[li] = Some(LayerRecords {
                layer_id,
                n_records: d.n_records,
                data_offset: d.data_offset,
                data_bytes: d.data_bytes,
                index,
                checksums,
            });
        }
        Ok(Self { shape, layers })
    }
}

/// Makes every checksum that [`RecordsIndex::from_bytes`] checks agree with the bytes of a
/// whole records file in memory (each layer's index and checksum table where they lie
/// inside `file`, then the header), so a fuzzer reaches the checks behind them.
#[doc(hidden)]
pub fn fix_checksums(file: &mut [u8]) {
    if file.len() < HEADER_BYTES as usize {
        return;
    }
    let n_layers = (le32(file, 12) as usize).min(MAX_RECORD_LAYERS);
    let shape = RecordShape::new(le32(file, 24), le32(file, 28)).ok();
    let section = |file: &[u8], at: u64, len: u64| -> Option<std::ops::Range<usize>> {
        let at = usize::try_from(at).ok()?;
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        (end <= file.len()).then_some(at..end)
    };
    for i in 0..n_layers {
        let at = DIR_AT + i * DIR_ENTRY;
        let mut d = DirEntry::decode(&file[at..at + DIR_ENTRY]);
        let k = u64::from(le32(file, 24));
        if let Some(r) = d
            .n_records
            .checked_mul(k)
            .and_then(|n| n.checked_mul(8))
            .and_then(|len| section(file, d.index_offset, len))
        {
            d.index_xxh3 = xxh3_64(&file[r]);
        }
        if let Some(r) = shape
            .and_then(|s| {
                d.n_records
                    .div_ceil(u64::from(s.records_per_unit))
                    .checked_mul(8)
            })
            .and_then(|len| section(file, d.checksums_offset, len))
        {
            let sums: Vec<u64> = file[r].chunks_exact(8).map(|c| le64(c, 0)).collect();
            d.checksums_xxh3 = checksums_checksum(&sums);
        }
        d.encode(&mut file[at..at + DIR_ENTRY]);
    }
    let sum = xxh3_64(&file[..HEADER_SUM_AT]);
    file[HEADER_SUM_AT..HEADER_BYTES as usize].copy_from_slice(&sum.to_le_bytes());
}

impl Records {
    /// Opens and validates `path` against `table` (table id, row size, heads, layers,
    /// every section's checksum); unit checksums are checked on every read.
    pub fn open(path: &Path, table: &crate::table::Table) -> Result<Self> {
        let (file, size) = engram_files::file::open_regular(path).map_err(|e| Error::Records {
            path: path.to_path_buf(),
            offset: 0,
            reason: e.to_string(),
        })?;
        let binding = RecordsBinding::of(table)?;
        let RecordsIndex { shape, layers } =
            RecordsIndex::parse(path, size, &binding, &mut |buf: &mut [u8], at: u64| {
                file.read_exact_at(buf, at)
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            shape,
            layers,
        })
    }

    /// Checks that unit `u` of layer index `layer` (its bytes: `unit`) is zero after its
    /// last record, as the format says (`engram inspect --verify`; the unit checksum alone
    /// would also accept a writer's nonzero padding).
    pub fn verify_unit_padding(&self, layer: usize, u: u64, unit: &[u8]) -> Result<()> {
        let Some(Some(l)) = self.layers.get(layer) else {
            return Err(Error::Invalid {
                what: "records",
                reason: format!("layer index {layer} has no records"),
            });
        };
        let rpu = u64::from(self.shape.records_per_unit);
        let used = l.n_records.saturating_sub(u * rpu).min(rpu);
        let from = (used * self.shape.record_bytes()).min(unit.len() as u64) as usize;
        match unit[from..].iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(Error::Records {
                path: self.path.clone(),
                offset: l.data_offset + u * u64::from(self.shape.unit_bytes) + (from + i) as u64,
                reason: format!(
                    "nonzero padding after the {used} records of unit {u} of layer {}",
                    l.layer_id
                ),
            }),
        }
    }

    /// Checks every unit inside a read of `buf` at file `offset` (unit-aligned) of layer
    /// index `layer`'s records.
    pub fn verify_read(&self, layer: usize, offset: u64, buf: &[u8]) -> Result<()> {
        let Some(Some(l)) = self.layers.get(layer) else {
            return Err(Error::Invalid {
                what: "records",
                reason: format!("layer index {layer} has no records"),
            });
        };
        let ub = self.shape.unit_bytes as usize;
        let first = (offset - l.data_offset) / ub as u64;
        for (i, unit) in buf.chunks(ub).enumerate() {
            let u = first + i as u64;
            let stored = l.checksums.get(u as usize).copied().unwrap_or(0);
            let computed = block_checksum(u, unit);
            if unit.len() != ub || stored != computed {
                return Err(Error::Checksum {
                    path: self.path.clone(),
                    layer_id: l.layer_id,
                    what: "records unit",
                    offset: l.data_offset + u * ub as u64,
                    len: unit.len() as u64,
                    stored,
                    computed,
                });
            }
        }
        Ok(())
    }
}
