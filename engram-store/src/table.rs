//! Writing (streaming, atomic publication) and opening (validating) table directories.

use std::ffi::OsString;
use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use engram_files::file::{Limit, open_regular_at, read_regular_at};
use engram_kernels::EngramLayout;

use crate::buffer::AlignedBuf;
use crate::error::{Error, Result, io, io_at};
use crate::format::{
    FORMAT_VERSION, Geometry, HEADER_BYTES, LayerHeader, MANIFEST_FILE, Manifest, block_checksum,
    checksums_checksum, header_offsets, hex64, parse_checksum_field,
};
use crate::publish::{Target, open_dir, replaced_since};
use crate::write_behind::WriteBehind;

/// Largest `manifest.json` accepted (one of a 1000-layer, 64-head table is under 4 MiB).
pub const MAX_MANIFEST_BYTES: Limit = Limit {
    what: "manifest",
    name: "MAX_MANIFEST_BYTES",
    bytes: 16 << 20,
};

/// Times [`Table::open`] starts over when the table is replaced while it is being opened.
pub const OPEN_ATTEMPTS: u32 = 3;

/// Fsyncs a directory so renames inside it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync directory", dir, e))
}

/// Bytes a layer file's rows are gathered into before one write: whole checksum blocks, at
/// least one. Large writes keep the system time per GB low (one 4 KiB `pwrite` per block
/// cost a third of a checkpoint import's CPU). A layer being written holds
/// [`crate::write_behind::WRITE_BATCHES`] of them.
pub const WRITE_BATCH_BYTES: usize = 8 << 20;

/// One layer file being written: rows are packed into units, units into checksum blocks,
/// whole blocks into a batch that is handed at once to the layer's writer thread
/// ([`WriteBehind`]), which writes it while the next batch is filled. The data region goes
/// through a second, `O_DIRECT` descriptor where the file system takes one (no page-cache
/// copy, no dirty pages for the final fsync to wait on); the header and the checksum table
/// through the ordinary one.
#[derive(Debug)]
struct LayerSink {
    path: PathBuf,
    file: File,
    // Writes the data region's batches behind the filling.
    behind: WriteBehind,
    header: LayerHeader,
    geo: Geometry,
    block_bytes: usize,
    // (n * block_bytes,) page-aligned: the blocks gathered for the next write
    batch: AlignedBuf,
    // bytes of `batch` filled; the block being filled starts at `block_start`
    fill: usize,
    block_start: usize,
    rows_in_unit: u64,
    rows_written: u64,
    // file offset of `batch[0]`
    batch_offset: u64,
    checksums: Vec<u64>,
}

impl LayerSink {
    /// Appends `rows` rows that `pack` writes in place, one unit's run at a time.
    fn fill_rows(&mut self, mut rows: u64, mut pack: impl FnMut(&mut [u8])) -> Result<()> {
        let rb = self.geo.row_bytes as usize;
        while rows > 0 {
            let k = (self.geo.rows_per_unit - self.rows_in_unit).min(rows);
            let n = k as usize * rb;
            pack(&mut self.batch.as_mut_slice()[self.fill..self.fill + n]);
            rows -= k;
            self.fill += n;
            self.rows_in_unit += k;
            self.rows_written += k;
            if self.rows_in_unit == self.geo.rows_per_unit {
                self.close_unit()?;
            }
        }
        Ok(())
    }

    /// Pads the current unit with zeros to its full size; closes a full block.
    fn close_unit(&mut self) -> Result<()> {
        let ub = self.geo.unit_bytes as usize;
        // Blocks, and so units, start at multiples of `unit_bytes` in the batch.
        let unit_end = (self.fill - self.block_start).div_ceil(ub).max(1) * ub + self.block_start;
        self.batch.as_mut_slice()[self.fill..unit_end].fill(0);
        self.fill = unit_end;
        self.rows_in_unit = 0;
        if self.fill - self.block_start == self.block_bytes {
            self.close_block();
            if self.fill == self.batch.len() {
                self.write_batch()?;
            }
        }
        Ok(())
    }

    /// Checksums the block being filled (full, or the layer's last).
    fn close_block(&mut self) {
        if self.fill == self.block_start {
            return;
        }
        let index = self.checksums.len() as u64;
        let bytes = &self.batch.as_slice()[self.block_start..self.fill];
        self.checksums.push(block_checksum(index, bytes));
        self.block_start = self.fill;
    }

    /// Hands the closed blocks of the batch to the writer thread.
    fn write_batch(&mut self) -> Result<()> {
        let len = self.block_start;
        if len == 0 {
            return Ok(());
        }
        let at = self.batch_offset;
        self.behind.submit(&mut self.batch, len, at)?;
        self.batch_offset += len as u64;
        self.fill -= self.block_start;
        debug_assert_eq!(self.fill, 0, "a batch is written at block boundaries");
        self.block_start = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(u64, u64)> {
        if self.rows_written != self.header.rows {
            return Err(Error::Writer(format!(
                "layer {} got {} rows, its table has {}",
                self.header.layer_id, self.rows_written, self.header.rows
            )));
        }
        if self.rows_in_unit > 0 {
            self.close_unit()?;
        }
        self.close_block();
        self.write_batch()?;
        // Every batch on disk before the checksum table, the header and the fsync.
        self.behind.finish()?;
        if self.checksums.len() as u64 != self.header.n_blocks
            || self.batch_offset != self.header.checksums_offset
        {
            return Err(Error::Writer(format!(
                "layer {}: wrote {} blocks ending at {}, expected {} ending at {}",
                self.header.layer_id,
                self.checksums.len(),
                self.batch_offset,
                self.header.n_blocks,
                self.header.checksums_offset
            )));
        }
        let mut table = Vec::with_capacity(self.checksums.len() * 8);
        for c in &self.checksums {
            table.extend_from_slice(&c.to_le_bytes());
        }
        self.file
            .write_all_at(&table, self.header.checksums_offset)
            .map_err(|e| io_at("write", &self.path, self.header.checksums_offset, e))?;
        self.header.checksums_xxh3 = checksums_checksum(&self.checksums);
        let hdr = self.header.encode();
        self.file
            .write_all_at(&hdr, 0)
            .map_err(|e| io_at("write", &self.path, 0, e))?;
        self.file
            .sync_all()
            .map_err(|e| io("fsync", &self.path, e))?;
        let header_sum = parse_u64_le(&hdr[crate::format::HEADER_CHECKSUM_OFFSET..]);
        Ok((header_sum, self.header.checksums_xxh3))
    }
}

/// A second descriptor of `path` for the data region: `O_DIRECT` when the file system takes
/// it and `data_offset` is page-aligned (every batch then is), else a clone of `file`.
fn data_descriptor(path: &Path, file: &File, data_offset: u64) -> Result<(File, bool)> {
    if data_offset.is_multiple_of(crate::format::PAGE_BYTES) {
        use std::os::unix::fs::OpenOptionsExt;
        match FsOpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(io("open O_DIRECT", path, e)),
        }
    }
    Ok((file.try_clone().map_err(|e| io("dup", path, e))?, false))
}

fn parse_u64_le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Streams a table to a temporary directory beside `dir` and publishes it atomically
/// (see [`crate::publish`]): at every instant `dir` holds a complete table, the old one or
/// the new one. Holds an exclusive lock on `dir` from [`TableWriter::create`] until it is
/// finished or dropped, so a second writer to the same path fails at once.
///
/// Layers are written in index order; within a layer rows arrive in row-id order, in chunks
/// of any number of whole rows. Memory use is [`crate::write_behind::WRITE_BATCHES`]
/// batches of [`WRITE_BATCH_BYTES`] plus 8 bytes per checksum block.
/// Files such as the traffic profile join the table with [`TableWriter::add_file`] before
/// [`TableWriter::finish`] publishes everything at once.
#[derive(Debug)]
pub struct TableWriter {
    target: Target,
    tmp_name: OsString,
    tmp: PathBuf,
    force: bool,
    manifest: Manifest,
    current: Option<(usize, LayerSink)>,
    done: Vec<bool>,
    extra_files: Vec<String>,
    finished: bool,
}

impl TableWriter {
    /// Starts a table at `dir` (which must not exist unless `force`). File fields of
    /// `manifest` are filled in by [`TableWriter::finish`]. Fails at once with
    /// [`Error::Locked`] while another writer is writing to `dir`; deletes what killed
    /// writers left beside it.
    pub fn create(dir: &Path, manifest: &Manifest, force: bool) -> Result<Self> {
        manifest.validate_shape(&dir.join(MANIFEST_FILE))?;
        manifest.derive_layout(&dir.join(MANIFEST_FILE))?;
        // Checked before locking too, so a refused write touches nothing beside the path.
        if !force && dir.symlink_metadata().is_ok() {
            return Err(Error::Exists {
                path: dir.to_path_buf(),
            });
        }
        let target = Target::lock(dir)?;
        if !force && target.exists()? {
            return Err(Error::Exists {
                path: dir.to_path_buf(),
            });
        }
        let (tmp_name, tmp) = target.make_temporary()?;
        tracing::debug!(path = %dir.display(), tmp = %tmp.display(), lock = %target.lock_path().display(), "writing a table");
        Ok(Self {
            target,
            tmp_name,
            tmp,
            force,
            manifest: manifest.clone(),
            current: None,
            done: vec![false; manifest.layers.len()],
            extra_files: Vec::new(),
            finished: false,
        })
    }

    /// The manifest being written.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Records the SHA-256 of the checkpoint files the rows came from
    /// (`build.checkpoint_sha256`), for an importer that hashes them while it streams the
    /// rows and so knows them only at the end. Not part of the table id.
    pub fn set_checkpoint_sha256(&mut self, sha256: Vec<String>) -> Result<()> {
        if self.finished {
            return Err(Error::Writer("set_checkpoint_sha256 after finish".into()));
        }
        self.manifest.build.checkpoint_sha256 = sha256;
        Ok(())
    }

    fn open_layer(&self, index: usize) -> Result<LayerSink> {
        let lm = &self.manifest.layers[index];
        let header = LayerHeader::expected(&self.manifest, index as u32, lm.layer_id, lm.rows)?;
        let path = self.tmp.join(&lm.file);
        let file = FsOpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        file.write_all_at(&vec![0u8; HEADER_BYTES as usize], 0)
            .map_err(|e| io_at("write", &path, 0, e))?;
        let block_bytes =
            usize::try_from(self.manifest.block_bytes).map_err(|_| Error::Invalid {
                what: "block_bytes",
                reason: "does not fit usize".into(),
            })?;
        let (data, direct) = data_descriptor(&path, &file, header.data_offset)?;
        let (behind, batch) = WriteBehind::start(
            &path,
            &file,
            data,
            direct,
            (WRITE_BATCH_BYTES / block_bytes).max(1) * block_bytes,
        )?;
        Ok(LayerSink {
            path,
            file,
            behind,
            geo: self.manifest.geometry(),
            block_bytes,
            batch,
            fill: 0,
            block_start: 0,
            rows_in_unit: 0,
            rows_written: 0,
            batch_offset: header.data_offset,
            checksums: Vec::with_capacity(usize::try_from(header.n_blocks).unwrap_or(0)),
            header,
        })
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some((index, sink)) = self.current.take() {
            let (header_sum, sums_sum) = sink.finish()?;
            let (layer_id, rows) = {
                let lm = &self.manifest.layers[index];
                (lm.layer_id, lm.rows)
            };
            let expected = LayerHeader::expected(&self.manifest, index as u32, layer_id, rows)?;
            let lm = &mut self.manifest.layers[index];
            lm.header_xxh3 = hex64(header_sum);
            lm.checksums_xxh3 = hex64(sums_sum);
            lm.file_bytes = expected.file_bytes;
            self.done[index] = true;
        }
        Ok(())
    }

    /// Appends whole rows (`bytes.len()` a multiple of `row_bytes`) to layer `layer_index`.
    /// Moving to a later layer closes the previous one, which must then be complete.
    pub fn write_layer_rows(&mut self, layer_index: usize, bytes: &[u8]) -> Result<()> {
        let rb = self.manifest.row_bytes as usize;
        if !bytes.len().is_multiple_of(rb) {
            return Err(Error::Shape {
                what: "row bytes chunk (multiple of row_bytes)",
                expected: rb,
                found: bytes.len(),
            });
        }
        let mut at = 0;
        self.write_layer_rows_with(layer_index, (bytes.len() / rb) as u64, |dst| {
            dst.copy_from_slice(&bytes[at..at + dst.len()]);
            at += dst.len();
        })
    }

    /// Appends `rows` rows to layer `layer_index`, written in place by `pack`: it is called
    /// with consecutive runs of whole rows (`dst.len()` a multiple of `row_bytes`, the rows
    /// of one unit at most) and fills every byte, in row order. Saves the copy of
    /// [`Self::write_layer_rows`] when rows are assembled from other buffers. Ordering
    /// rules are those of `write_layer_rows`.
    pub fn write_layer_rows_with(
        &mut self,
        layer_index: usize,
        rows: u64,
        pack: impl FnMut(&mut [u8]),
    ) -> Result<()> {
        if self.finished {
            return Err(Error::Writer("write after finish".into()));
        }
        if layer_index >= self.manifest.layers.len() {
            return Err(Error::LayerOutOfRange {
                layer: layer_index,
                n_layers: self.manifest.layers.len(),
            });
        }
        match &self.current {
            Some((i, _)) if *i == layer_index => {}
            _ => {
                if self.done[layer_index] {
                    return Err(Error::Writer(format!(
                        "layer index {layer_index} was already completed"
                    )));
                }
                if let Some((i, _)) = &self.current
                    && *i > layer_index
                {
                    return Err(Error::Writer(format!(
                        "layers must be written in index order: {layer_index} after {i}"
                    )));
                }
                self.close_current()?;
                let sink = self.open_layer(layer_index)?;
                self.current = Some((layer_index, sink));
            }
        }
        let Some((_, sink)) = self.current.as_mut() else {
            return Err(Error::Writer("no open layer".into()));
        };
        if sink.rows_written + rows > sink.header.rows {
            return Err(Error::Writer(format!(
                "layer index {layer_index}: {} rows written plus {rows} exceeds {}",
                sink.rows_written, sink.header.rows
            )));
        }
        sink.fill_rows(rows, pack)
    }

    /// Adds a file (such as the traffic profile) to the table directory: written and
    /// fsynced inside the temporary directory now, published with the table by
    /// [`TableWriter::finish`] or not at all. `name` is a plain file name that is neither
    /// the manifest nor a layer file, and is added once.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.add_file_with(name, |path| {
            let mut f = FsOpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| io("create", path, e))?;
            f.write_all(bytes).map_err(|e| io("write", path, e))?;
            f.sync_all().map_err(|e| io("fsync", path, e))
        })
    }

    /// [`TableWriter::add_file`] for a file too large to hold in memory (such as n-gram
    /// records): `write(path)` creates the file at `path` inside the temporary directory
    /// and fsyncs it before returning. The name is checked first; a `write` that fails
    /// leaves the table unpublishable only until the writer is dropped.
    pub fn add_file_with(
        &mut self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        if self.finished {
            return Err(Error::Writer("add_file after finish".into()));
        }
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains('/')
            && !name.contains('\\')
            && !name.contains('\0');
        let taken = name == MANIFEST_FILE
            || self.manifest.layers.iter().any(|l| l.file == name)
            || self.extra_files.iter().any(|f| f == name);
        if !plain || taken {
            return Err(Error::Invalid {
                what: "extra table file name",
                reason: format!(
                    "{name:?} must be a plain file name, not hidden, not {MANIFEST_FILE}, \
                     a layer file or a file already added"
                ),
            });
        }
        // A layer whose rows are all in is closed (its buffered rows written) first, so
        // the file lands after the rows on disk, as it would unbuffered.
        if self
            .current
            .as_ref()
            .is_some_and(|(_, sink)| sink.rows_written == sink.header.rows)
        {
            self.close_current()?;
        }
        let path = self.tmp.join(name);
        write(&path)?;
        if !path.is_file() {
            return Err(Error::Writer(format!(
                "extra table file {name:?} was not created at {}",
                path.display()
            )));
        }
        self.extra_files.push(name.to_owned());
        Ok(())
    }

    /// Closes the last layer, writes the manifest, fsyncs every file and the directory,
    /// then publishes it at the table path in one atomic step and deletes the table it
    /// replaced. Returns the final manifest.
    pub fn finish(mut self) -> Result<Manifest> {
        self.close_current()?;
        if let Some(missing) = self.done.iter().position(|d| !d) {
            // Layers with zero rows are impossible (primes >= 2), so a missing one is an error.
            return Err(Error::Writer(format!(
                "layer index {missing} (id {}) was never written",
                self.manifest.layers[missing].layer_id
            )));
        }
        let mpath = self.tmp.join(MANIFEST_FILE);
        self.manifest.seal()?;
        let json = self.manifest.to_json()?;
        {
            let mut f = FsOpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&mpath)
                .map_err(|e| io("create", &mpath, e))?;
            f.write_all(&json).map_err(|e| io("write", &mpath, e))?;
            f.write_all(b"\n").map_err(|e| io("write", &mpath, e))?;
            f.sync_all().map_err(|e| io("fsync", &mpath, e))?;
        }
        sync_dir(&self.tmp)?;
        self.target.publish(&self.tmp_name, self.force)?;
        self.finished = true;
        tracing::debug!(path = %self.target.path().display(), table_id = %self.manifest.table_id, "published");
        Ok(self.manifest.clone())
    }
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if !self.finished {
            // An abandoned build leaves nothing behind (best effort; the next writer deletes
            // what is left). Runs before `target` releases the lock.
            self.target.remove_sibling(&self.tmp_name);
        }
    }
}

/// Options for [`Table::open_with`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// SHA-256 of the caller's `tokenizer.json`; a different table tokenizer is an error.
    pub expected_tokenizer_sha256: Option<String>,
}

/// One validated layer file.
#[derive(Debug)]
pub struct LayerFile {
    /// The layer file.
    pub path: PathBuf,
    /// The open file, validated against the header and manifest.
    pub file: File,
    /// The file's decoded header.
    pub header: LayerHeader,
    /// (n_blocks,) xxh3 of every data block.
    pub checksums: Vec<u64>,
}

/// An opened, validated table. Cheap to share behind an `Arc`.
///
/// Every file is opened relative to one handle on the table directory, so the manifest and
/// the layer files always come from the same version even while a writer replaces the
/// table (see [`crate::publish`]).
#[derive(Debug)]
pub struct Table {
    dir: PathBuf,
    manifest: Manifest,
    layout: EngramLayout,
    layers: Vec<LayerFile>,
}

/// What a full verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Checksum blocks checked.
    pub blocks: u64,
    /// Bytes checked.
    pub bytes: u64,
}

impl Table {
    /// Opens and validates `dir` (manifest, layout, every header and checksum table).
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &OpenOptions::default())
    }

    /// [`Table::open`] with options. A table replaced while it is being opened is opened
    /// again (the new version), up to [`OPEN_ATTEMPTS`] times, then [`Error::Replaced`].
    /// Backends that open a layer file again (`O_DIRECT`) check it is the same inode.
    pub fn open_with(dir: &Path, options: &OpenOptions) -> Result<Self> {
        let mut attempt = 1;
        loop {
            let handle = open_dir(dir)?;
            match open_files(&handle, dir, options) {
                Ok((manifest, layout, layers)) => {
                    return Ok(Self {
                        dir: dir.to_path_buf(),
                        manifest,
                        layout,
                        layers,
                    });
                }
                Err(e) if replaced_since(dir, &handle) => {
                    if attempt >= OPEN_ATTEMPTS {
                        return Err(Error::Replaced {
                            path: dir.to_path_buf(),
                        });
                    }
                    tracing::debug!(path = %dir.display(), error = %e, attempt, "the table was replaced while it was being opened; opening the new one");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Errors unless the table was built with the tokenizer whose file hashes to `sha256`.
    pub fn check_tokenizer(&self, sha256: &str) -> Result<()> {
        if sha256.eq_ignore_ascii_case(&self.manifest.tokenizer_sha256) {
            Ok(())
        } else {
            Err(Error::TokenizerMismatch {
                path: self.dir.join(MANIFEST_FILE),
                expected: sha256.to_ascii_lowercase(),
                found: self.manifest.tokenizer_sha256.clone(),
            })
        }
    }

    /// The table directory as it was opened.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// The addressing layout re-derived (and checked) at open.
    pub fn layout(&self) -> &EngramLayout {
        &self.layout
    }
    /// Engram layers in the table; layer indices are `0..n_layers()`.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }
    /// The layer file at index `index`, or [`Error::LayerOutOfRange`].
    pub fn layer(&self, index: usize) -> Result<&LayerFile> {
        self.layers.get(index).ok_or(Error::LayerOutOfRange {
            layer: index,
            n_layers: self.layers.len(),
        })
    }
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.manifest.row_bytes as usize
    }
    /// How rows are packed into units.
    pub fn geometry(&self) -> Geometry {
        self.manifest.geometry()
    }
    /// Rows of layer `index`.
    pub fn rows(&self, index: usize) -> Result<u64> {
        Ok(self.layer(index)?.header.rows)
    }

    /// Errors if any id is beyond layer `layer`'s rows.
    pub fn check_ids(&self, layer: usize, ids: &[u64]) -> Result<()> {
        check_row_ids(layer, ids, self.rows(layer)?)
    }

    /// File offset of `row` in any layer file (unchecked row).
    #[inline]
    pub fn row_file_offset(&self, row: u64) -> u64 {
        self.manifest.data_offset + self.manifest.geometry().row_offset(row)
    }

    /// Checks `bytes`, the data block `block` of layer `layer` as read from the file.
    pub fn verify_block(&self, layer: usize, block: u64, bytes: &[u8]) -> Result<()> {
        let lf = self.layer(layer)?;
        let stored = lf
            .checksums
            .get(usize::try_from(block).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| Error::Invalid {
                what: "block index",
                reason: format!("{block} >= {}", lf.checksums.len()),
            })?;
        let computed = block_checksum(block, bytes);
        if stored != computed {
            return Err(Error::Checksum {
                path: lf.path.clone(),
                layer_id: lf.header.layer_id,
                what: "data block",
                offset: self.manifest.data_offset + block * self.manifest.block_bytes,
                len: bytes.len() as u64,
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Byte range `(file offset, len)` of data block `block` in layer `layer`.
    pub fn block_range(&self, layer: usize, block: u64) -> Result<(u64, u64)> {
        let h = &self.layer(layer)?.header;
        let bb = self.manifest.block_bytes;
        let start = block * bb;
        let len = bb.min(h.data_bytes.saturating_sub(start));
        Ok((h.data_offset + start, len))
    }

    /// Reads every data block of layer `layer` and checks its checksum.
    pub fn verify_layer(&self, layer: usize) -> Result<VerifyReport> {
        let lf = self.layer(layer)?;
        let mut buf = vec![0u8; self.manifest.block_bytes as usize];
        let mut report = VerifyReport::default();
        for b in 0..lf.header.n_blocks {
            let (off, len) = self.block_range(layer, b)?;
            let chunk = &mut buf[..len as usize];
            lf.file
                .read_exact_at(chunk, off)
                .map_err(|e| io_at("read", &lf.path, off, e))?;
            self.verify_block(layer, b, chunk)?;
            report.blocks += 1;
            report.bytes += len;
        }
        Ok(report)
    }

    /// Reads rows with plain `pread` (no cache, no planning): the simplest reference path.
    pub fn read_rows_simple(&self, layer: usize, ids: &[u64], out: &mut [u8]) -> Result<()> {
        self.check_ids(layer, ids)?;
        let rb = self.row_bytes();
        if out.len() != ids.len() * rb {
            return Err(Error::Shape {
                what: "output bytes",
                expected: ids.len() * rb,
                found: out.len(),
            });
        }
        let lf = self.layer(layer)?;
        let geo = self.geometry();
        let mut block = vec![0u8; self.manifest.block_bytes as usize];
        for (i, &row) in ids.iter().enumerate() {
            let rel = geo.row_offset(row);
            let b = rel / self.manifest.block_bytes;
            let (off, len) = self.block_range(layer, b)?;
            let chunk = &mut block[..len as usize];
            lf.file
                .read_exact_at(chunk, off)
                .map_err(|e| io_at("read", &lf.path, off, e))?;
            self.verify_block(layer, b, chunk)?;
            let within = (rel - b * self.manifest.block_bytes) as usize;
            out[i * rb..(i + 1) * rb].copy_from_slice(&chunk[within..within + rb]);
        }
        Ok(())
    }
}

/// The manifest and every layer file, opened relative to the directory handle `dir`.
fn open_files(
    dir: &File,
    dir_path: &Path,
    options: &OpenOptions,
) -> Result<(Manifest, EngramLayout, Vec<LayerFile>)> {
    let mpath = dir_path.join(MANIFEST_FILE);
    let bytes = read_regular_at(dir, Path::new(MANIFEST_FILE), &mpath, MAX_MANIFEST_BYTES)?;
    let manifest = Manifest::from_json(&bytes, &mpath)?;
    if let Some(want) = &options.expected_tokenizer_sha256
        && !want.eq_ignore_ascii_case(&manifest.tokenizer_sha256)
    {
        return Err(Error::TokenizerMismatch {
            path: mpath,
            expected: want.to_ascii_lowercase(),
            found: manifest.tokenizer_sha256.clone(),
        });
    }
    let layout = manifest.derive_layout(&mpath)?;
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, lm) in manifest.layers.iter().enumerate() {
        layers.push(open_layer(dir, dir_path, &manifest, i, lm)?);
    }
    Ok((manifest, layout, layers))
}

fn open_layer(
    dir: &File,
    dir_path: &Path,
    m: &Manifest,
    index: usize,
    lm: &crate::format::LayerManifest,
) -> Result<LayerFile> {
    let path = dir_path.join(&lm.file);
    let (file, size) = open_regular_at(dir, Path::new(&lm.file), &path)?;
    let mut hdr = vec![0u8; HEADER_BYTES as usize];
    if size < HEADER_BYTES {
        return Err(Error::FileSize {
            path,
            layer_id: lm.layer_id,
            expected: lm.file_bytes,
            found: size,
        });
    }
    file.read_exact_at(&mut hdr, 0)
        .map_err(|e| io_at("read header", &path, 0, e))?;
    let (header, header_sum) = LayerHeader::decode(&hdr, &path, lm.layer_id)?;
    let expected = LayerHeader::expected(m, index as u32, lm.layer_id, lm.rows)?;
    check_header_fields(&path, lm.layer_id, &expected, &header)?;
    let manifest_sum = parse_checksum_field(&lm.header_xxh3);
    if manifest_sum != Some(header_sum) {
        return Err(Error::Checksum {
            path,
            layer_id: lm.layer_id,
            what: "layer header (vs manifest header_xxh3)",
            offset: crate::format::HEADER_CHECKSUM_OFFSET as u64,
            len: 8,
            stored: manifest_sum.unwrap_or(0),
            computed: header_sum,
        });
    }
    if lm.file_bytes != expected.file_bytes || size != expected.file_bytes {
        return Err(Error::FileSize {
            path,
            layer_id: lm.layer_id,
            expected: expected.file_bytes,
            found: size,
        });
    }
    let checksums = read_checksum_table(&file, &path, lm, &header)?;
    Ok(LayerFile {
        path,
        file,
        header,
        checksums,
    })
}

/// Every field of a layer file's `header` must equal the one `expected` from the manifest:
/// the first that differs is an error naming it and its offset.
fn check_header_fields(
    path: &Path,
    layer_id: u64,
    expected: &LayerHeader,
    header: &LayerHeader,
) -> Result<()> {
    use header_offsets as o;
    let fields: [(&'static str, usize, u64, u64); 15] = [
        (
            "header_bytes",
            o::HEADER_BYTES,
            u64::from(expected.header_bytes),
            u64::from(header.header_bytes),
        ),
        ("table_id", o::TABLE_ID, expected.table_id, header.table_id),
        (
            "layer_index",
            o::LAYER_INDEX,
            u64::from(expected.layer_index),
            u64::from(header.layer_index),
        ),
        ("layer_id", o::LAYER_ID, expected.layer_id, header.layer_id),
        ("rows", o::ROWS, expected.rows, header.rows),
        (
            "row_bytes",
            o::ROW_BYTES,
            u64::from(expected.row_bytes),
            u64::from(header.row_bytes),
        ),
        (
            "rows_per_unit",
            o::ROWS_PER_UNIT,
            u64::from(expected.rows_per_unit),
            u64::from(header.rows_per_unit),
        ),
        (
            "unit_bytes",
            o::UNIT_BYTES,
            u64::from(expected.unit_bytes),
            u64::from(header.unit_bytes),
        ),
        (
            "block_bytes",
            o::BLOCK_BYTES,
            u64::from(expected.block_bytes),
            u64::from(header.block_bytes),
        ),
        (
            "data_offset",
            o::DATA_OFFSET,
            expected.data_offset,
            header.data_offset,
        ),
        (
            "data_bytes",
            o::DATA_BYTES,
            expected.data_bytes,
            header.data_bytes,
        ),
        ("n_blocks", o::N_BLOCKS, expected.n_blocks, header.n_blocks),
        (
            "checksums_offset",
            o::CHECKSUMS_OFFSET,
            expected.checksums_offset,
            header.checksums_offset,
        ),
        (
            "file_bytes",
            o::FILE_BYTES,
            expected.file_bytes,
            header.file_bytes,
        ),
        (
            "format_version",
            o::FORMAT_VERSION,
            u64::from(FORMAT_VERSION),
            u64::from(header.format_version),
        ),
    ];
    for (field, offset, want, got) in fields {
        if want != got {
            return Err(Error::Header {
                path: path.to_path_buf(),
                layer_id,
                field,
                offset: offset as u64,
                expected: want.to_string(),
                found: got.to_string(),
            });
        }
    }
    Ok(())
}

/// Reads a layer file's checksum table (8 bytes per block) and checks it against its own
/// checksum in the header and the manifest's `checksums_xxh3`.
fn read_checksum_table(
    file: &File,
    path: &Path,
    lm: &crate::format::LayerManifest,
    header: &LayerHeader,
) -> Result<Vec<u64>> {
    let n = usize::try_from(header.n_blocks).map_err(|_| Error::Invalid {
        what: "n_blocks",
        reason: "does not fit usize".into(),
    })?;
    let mut raw = vec![0u8; n * 8];
    file.read_exact_at(&mut raw, header.checksums_offset)
        .map_err(|e| io_at("read checksum table", path, header.checksums_offset, e))?;
    let checksums: Vec<u64> = raw.chunks_exact(8).map(parse_u64_le).collect();
    let computed = checksums_checksum(&checksums);
    let manifest_sums = parse_checksum_field(&lm.checksums_xxh3);
    if computed != header.checksums_xxh3 || manifest_sums != Some(computed) {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            layer_id: lm.layer_id,
            what: "checksum table",
            offset: header.checksums_offset,
            len: raw.len() as u64,
            stored: header.checksums_xxh3,
            computed,
        });
    }
    Ok(checksums)
}

/// Errors if any of `ids` is not below `rows` (the rows of layer index `layer`).
pub(crate) fn check_row_ids(layer: usize, ids: &[u64], rows: u64) -> Result<()> {
    if let Some((index, &row)) = ids.iter().enumerate().find(|&(_, &r)| r >= rows) {
        return Err(Error::RowOutOfRange {
            layer,
            index,
            row,
            rows,
        });
    }
    Ok(())
}
