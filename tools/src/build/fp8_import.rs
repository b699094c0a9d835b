//! `engram-build --import CHECKPOINT_DIR`: a released checkpoint's FP8 Engram tables
//! (DeepSeek-V4.1-Flash: `ENGRAM-SPEC.md` section 16) streamed into a table, bit-exact.
//!
//! Each layer's values tensor (F8_E4M3 `[rows, dim]`) and scales tensor (F8_E8M0
//! `[rows, dim / B]`) are read as two sequential streams (two threads, large reads,
//! [`super::seq_read`]) and packed row by row into the `fp8_e4m3_e8m0` layout (`dim` value
//! bytes, then `dim / B` scale bytes: `docs/format.md`), copied, never dequantised; the
//! table is written as it is read. The values stream walks its shard in file order, so the
//! shard's SHA-256 is computed on the same pass by a third thread (bytes the values stream
//! does not cover, such as the scales region after the values, are read once more for the
//! hash: 3% of a V4.1 shard). Memory is a fixed set of buffers whatever the checkpoint's
//! size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use engram_files::file::{FileError, Sha256Sums};
use engram_kernels::EngramLayout;
use engram_store::format::RowLayout;
use engram_store::table::TableWriter;
use sha2::{Digest, Sha256};

use super::report::{Mode, Phase};
use super::seq_read::{ALIGN, AlignedBuf, Piece, Pool, ReadMode, SeqReader};
use crate::checkpoint::safetensors::{ShardHeader, TensorInfo};
use crate::checkpoint::{CheckpointDir, EngramJson};

/// Default name of a layer's values tensor (V4.1), `{layer}` = layer id.
pub const DEFAULT_VALUES_PATTERN: &str = "layers.{layer}.engram.embed.weight";
/// Default name of a layer's scales tensor (V4.1).
pub const DEFAULT_SCALES_PATTERN: &str = "layers.{layer}.engram.embed.scale";

/// Bytes per read of the values stream (and of the hash-only reads).
pub const VALUES_READ_BYTES: usize = 8 << 20;
/// Bytes per read of the scales stream.
pub const SCALES_READ_BYTES: usize = 2 << 20;
/// Buffers per stream: reads in flight ahead of the packer.
const POOL_BUFFERS: usize = 4;

/// Memory the import's buffers take, whatever the checkpoint's size: each stream's pool,
/// the hash-only reader's buffer and the table writer's batches (rows are packed into one
/// while the other is written).
pub fn buffer_bytes() -> u64 {
    let slack = 2 * ALIGN as usize;
    (POOL_BUFFERS * (VALUES_READ_BYTES + SCALES_READ_BYTES + 2 * slack)
        + VALUES_READ_BYTES
        + slack
        + engram_store::write_behind::WRITE_BATCHES * engram_store::table::WRITE_BATCH_BYTES)
        as u64
}

/// One layer's two tensors.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The model's layer id (`{layer}` in the tensor names).
    pub layer_id: u64,
    /// Name of the values tensor (F8_E4M3 `[rows, dim]`).
    pub values_name: String,
    /// Shard file holding it (relative to the checkpoint directory).
    pub values_shard: String,
    /// Where it lies in that shard.
    pub values: TensorInfo,
    /// Name of the scales tensor (F8_E8M0 `[rows, dim / B]`).
    pub scales_name: String,
    /// Shard file holding it.
    pub scales_shard: String,
    /// Where it lies in that shard.
    pub scales: TensorInfo,
}

/// What an import will read, found and checked before anything is written.
#[derive(Debug, Clone)]
pub struct ImportPlan {
    /// The checkpoint directory (index, `config.json`).
    pub ckpt: CheckpointDir,
    /// Each layer's tensors, in `engram_layer_ids` order.
    pub layers: Vec<LayerSource>,
    /// The headers of the shards read, by file name.
    pub headers: BTreeMap<String, ShardHeader>,
    /// Values per row.
    pub dim: u32,
    /// Values per scale.
    pub scale_block: u32,
}

impl ImportPlan {
    /// Finds each layer's tensors (`{layer}` in the patterns = the layer id) and checks
    /// their dtypes and shapes. Errors name the tensor and the file.
    pub fn locate(
        ckpt: CheckpointDir,
        layer_ids: &[u64],
        values_pattern: &str,
        scales_pattern: &str,
    ) -> Result<Self> {
        let mut headers = BTreeMap::new();
        let mut layers = Vec::new();
        let mut shape: Option<(u64, u64)> = None;
        for &l in layer_ids {
            let vn = values_pattern.replace("{layer}", &l.to_string());
            let sn = scales_pattern.replace("{layer}", &l.to_string());
            let values = ckpt.locate(&vn, &mut headers)?;
            let scales = ckpt.locate(&sn, &mut headers)?;
            let vs = ckpt.weight_map[&vn].clone();
            let ss = ckpt.weight_map[&sn].clone();
            let vpath = ckpt.dir.join(&vs);
            let spath = ckpt.dir.join(&ss);
            if values.dtype != "F8_E4M3" {
                bail!(
                    "tensor {vn:?} in {} has dtype {}: a checkpoint directory is imported as \
                     F8_E4M3 values + F8_E8M0 scales, copied; for F32/BF16/F16 tables pass \
                     the .safetensors files themselves to --import (re-quantised)",
                    vpath.display(),
                    values.dtype
                );
            }
            if !matches!(scales.dtype.as_str(), "F8_E8M0" | "U8") {
                bail!(
                    "tensor {sn:?} in {} has dtype {}: the scales must be F8_E8M0 (or U8 \
                     holding E8M0 bytes)",
                    spath.display(),
                    scales.dtype
                );
            }
            let [rows, dim] = values.shape[..] else {
                bail!(
                    "tensor {vn:?} in {} has shape {:?}: values must be [rows, dim]",
                    vpath.display(),
                    values.shape
                );
            };
            let [srows, scols] = scales.shape[..] else {
                bail!(
                    "tensor {sn:?} in {} has shape {:?}: scales must be [rows, dim / B]",
                    spath.display(),
                    scales.shape
                );
            };
            ensure!(
                srows == rows,
                "tensor {sn:?} in {} has {srows} rows but {vn:?} in {} has {rows}: a layer's \
                 values and scales must have one row each per table row",
                spath.display(),
                vpath.display()
            );
            ensure!(
                scols > 0 && dim > 0 && dim.is_multiple_of(scols),
                "tensor {sn:?} in {} has {scols} scales per row, which does not divide the \
                 {dim} values per row of {vn:?}",
                spath.display()
            );
            if let Some(prev) = shape {
                ensure!(
                    prev == (dim, scols),
                    "tensor {vn:?} in {} is [{rows}, {dim}] with {scols} scales per row; \
                     earlier layers have {} values and {} scales per row",
                    vpath.display(),
                    prev.0,
                    prev.1
                );
            }
            shape = Some((dim, scols));
            layers.push(LayerSource {
                layer_id: l,
                values_name: vn,
                values_shard: vs,
                values,
                scales_name: sn,
                scales_shard: ss,
                scales,
            });
        }
        let Some((dim, scols)) = shape else {
            bail!("the import has no Engram layers (engram_layer_ids is empty)");
        };
        Ok(Self {
            ckpt,
            layers,
            headers,
            dim: u32::try_from(dim).context("values per row overflow u32")?,
            scale_block: u32::try_from(dim / scols).context("scale block overflows u32")?,
        })
    }

    /// The row layout the tensors give.
    pub fn row_layout(&self) -> RowLayout {
        RowLayout::Fp8E4m3E8m0 {
            scale_block: self.scale_block,
        }
    }

    /// Every layer's rows must equal the prime rule's (`layout`), the tensors' and, where
    /// `config.json` lists them, `engram_num_embeddings`; `engram_head_dim` must equal the
    /// tensors' width.
    pub fn check_rows(&self, layout: &EngramLayout) -> Result<()> {
        let cfg = self.ckpt.config.as_ref();
        if let Some(EngramJson {
            head_dim: Some(hd),
            path,
            ..
        }) = cfg
        {
            let l = &self.layers[0];
            ensure!(
                hd.value == u64::from(self.dim),
                "{} key {} = {} but tensor {:?} in {} has {} values per row",
                path.display(),
                hd.key,
                hd.value,
                l.values_name,
                self.ckpt.dir.join(&l.values_shard).display(),
                self.dim
            );
        }
        let listed = cfg.and_then(|c| c.num_embeddings.as_ref().map(|n| (&c.path, n)));
        if let Some((path, n)) = listed {
            ensure!(
                n.value.len() == self.layers.len(),
                "{} key {} lists {} layers but the import has {} ({:?})",
                path.display(),
                n.key,
                n.value.len(),
                self.layers.len(),
                self.layers.iter().map(|l| l.layer_id).collect::<Vec<_>>()
            );
        }
        for (i, (l, ll)) in self.layers.iter().zip(&layout.layers).enumerate() {
            let rows = l.values.shape[0];
            let file = self.ckpt.dir.join(&l.values_shard);
            let primes = || {
                format!(
                    "the prime rule gives {} rows for layer {} (orders 2..={}, {} heads, bases {:?})",
                    ll.total_rows,
                    l.layer_id,
                    layout.config.max_ngram,
                    layout.config.n_heads,
                    layout.config.base_sizes
                )
            };
            if let Some((path, n)) = listed {
                ensure!(
                    n.value[i] == ll.total_rows,
                    "{} key {}[{i}] = {} (layer {}) but {}: the addressing \
                     (engram_vocab_size, orders, heads) is not the one the table was built \
                     with; override with --base-size / --max-ngram / --heads",
                    path.display(),
                    n.key,
                    n.value[i],
                    l.layer_id,
                    primes()
                );
            }
            ensure!(
                rows == ll.total_rows,
                "tensor {:?} in {} has {rows} rows but {}",
                l.values_name,
                file.display(),
                primes()
            );
        }
        Ok(())
    }

    /// The shards in the order the import reads them, with their sizes.
    pub fn shards(&self) -> Vec<(String, u64)> {
        let mut seen: Vec<(String, u64)> = Vec::new();
        for l in &self.layers {
            for s in [&l.values_shard, &l.scales_shard] {
                if !seen.iter().any(|(n, _)| n == s) {
                    seen.push((s.clone(), self.headers[s].file_bytes));
                }
            }
        }
        seen
    }

    /// Bytes the import reads: every shard once (for its SHA-256) plus each layer's scales
    /// (read beside the values) when its shard walk reaches them separately.
    pub fn read_bytes(&self) -> u64 {
        let shards: u64 = self.shards().iter().map(|(_, b)| b).sum();
        shards + self.layers.iter().map(|l| l.scales.bytes()).sum::<u64>()
    }

    /// The plan as JSON (for `--dry-run` and the summary).
    pub fn to_json(&self) -> serde_json::Value {
        let t = |name: &str, shard: &str, t: &TensorInfo| {
            serde_json::json!({
                "name": name, "shard": shard, "dtype": t.dtype, "shape": t.shape,
                "begin": t.begin, "end": t.end, "bytes": t.bytes(),
            })
        };
        serde_json::json!({
            "checkpoint": crate::json_path(&self.ckpt.dir),
            "index": self.ckpt.index.as_deref().map(crate::json_path),
            "config": self.ckpt.config.as_ref().map(|c| crate::json_path(&c.path)),
            "dim": self.dim,
            "scale_block": self.scale_block,
            "layers": self.layers.iter().map(|l| serde_json::json!({
                "layer_id": l.layer_id,
                "rows": l.values.shape[0],
                "values": t(&l.values_name, &l.values_shard, &l.values),
                "scales": t(&l.scales_name, &l.scales_shard, &l.scales),
            })).collect::<Vec<_>>(),
            "shards": self.shards().iter().map(|(n, b)| serde_json::json!({"file": n, "bytes": b})).collect::<Vec<_>>(),
            "read_bytes": self.read_bytes(),
        })
    }

    /// Prints the plan for a person.
    pub fn print(&self) {
        crate::outln!(
            "checkpoint {} (index {}, config {})",
            self.ckpt.dir.display(),
            self.ckpt
                .index
                .as_deref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.ckpt
                .config
                .as_ref()
                .map_or("none".into(), |c| c.path.display().to_string())
        );
        for l in &self.layers {
            for (what, name, shard, t) in [
                ("values", &l.values_name, &l.values_shard, &l.values),
                ("scales", &l.scales_name, &l.scales_shard, &l.scales),
            ] {
                crate::outln!(
                    "  layer {} {what}: {name} {} {:?} in {shard} bytes {}..{} ({})",
                    l.layer_id,
                    t.dtype,
                    t.shape,
                    t.begin,
                    t.end,
                    super::human(t.bytes())
                );
            }
        }
        for (n, b) in self.shards() {
            crate::outln!(
                "  shard {n}: {} (read whole for its SHA-256)",
                super::human(b)
            );
        }
        crate::outln!(
            "  rows: {} values + {} scales = {} B each (fp8_e4m3_e8m0, B = {})",
            self.dim,
            self.dim / self.scale_block,
            self.dim + self.dim / self.scale_block,
            self.scale_block
        );
    }

    /// Reads up to 256 MiB of the first values tensor as the import would and returns the
    /// rate in bytes/s (for the dry run's time estimate).
    pub fn sample_read_rate(&self, mode: ReadMode) -> Result<(f64, ReadMode)> {
        let l = &self.layers[0];
        let r = SeqReader::open(&self.ckpt.dir.join(&l.values_shard), mode)?;
        let mut buf = AlignedBuf::new(VALUES_READ_BYTES + 2 * ALIGN as usize, ALIGN as usize)?;
        let end = l.values.end.min(l.values.begin + (256 << 20));
        let t0 = Instant::now();
        let mut at = l.values.begin;
        while at < end {
            let b = (at + VALUES_READ_BYTES as u64).min(end);
            r.read(at..b, &mut buf, &l.values_name)?;
            at = b;
        }
        let secs = t0.elapsed().as_secs_f64().max(1e-6);
        Ok(((end - l.values.begin) as f64 / secs, r.mode()))
    }
}

/// What a streamed import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamSummary {
    /// `(shard file, SHA-256)` in import order.
    pub shards: Vec<(String, String)>,
    /// Rows written, all layers.
    pub rows: u64,
    /// Bytes read from the shards (the scales twice: once for the rows, once for the hash).
    pub bytes_read: u64,
    /// Wall time of the streaming, in seconds.
    pub seconds: f64,
    /// How the shards were read (after any fallback from `O_DIRECT`).
    pub read_mode: ReadMode,
    /// Shards whose SHA-256 matched a `SHA256SUMS` beside them.
    pub verified_against_sha256sums: usize,
}

/// A shard's hash in progress: everything before `cursor` has been hashed.
#[derive(Debug)]
struct ShardHash {
    path: PathBuf,
    sha: Sha256,
    cursor: u64,
    file_bytes: u64,
}

/// Streams every layer of `plan` into `writer` (layers in index order) and returns the
/// shards' SHA-256. A shard listed in a `SHA256SUMS` beside the checkpoint must match it.
pub fn stream(
    plan: &ImportPlan,
    writer: &mut TableWriter,
    read_mode: ReadMode,
    mode: Mode,
) -> Result<StreamSummary> {
    let started = Instant::now();
    let row_bytes = (plan.dim + plan.dim / plan.scale_block) as u64;
    let total: u64 = plan
        .layers
        .iter()
        .map(|l| l.values.shape[0] * row_bytes)
        .sum();
    let mut hashes: BTreeMap<String, ShardHash> = BTreeMap::new();
    let order: Vec<String> = plan.shards().into_iter().map(|(n, _)| n).collect();
    for (n, bytes) in plan.shards() {
        hashes.insert(
            n.clone(),
            ShardHash {
                path: plan.ckpt.dir.join(&n),
                sha: Sha256::new(),
                cursor: 0,
                file_bytes: bytes,
            },
        );
    }
    let mut phase = Phase::start(mode, "import", "bytes", total);
    let mut progress = Progress {
        done: 0,
        total,
        started: Instant::now(),
    };
    let mut bytes_read = 0u64;
    let mut effective = read_mode;
    for (li, l) in plan.layers.iter().enumerate() {
        // The values stream finishes its shard's hash when no later layer reads that shard.
        let last_use = !plan.layers[li + 1..]
            .iter()
            .any(|m| m.values_shard == l.values_shard || m.scales_shard == l.values_shard);
        let mut h = hashes
            .remove(&l.values_shard)
            .context("shard hash state missing")?;
        let (n_read, mode_used) = stream_layer(
            plan,
            li,
            writer,
            &mut h,
            last_use,
            read_mode,
            &mut phase,
            &mut progress,
        )?;
        if mode_used != read_mode {
            effective = mode_used;
        }
        bytes_read += n_read;
        hashes.insert(l.values_shard.clone(), h);
    }
    // Shards the values streams did not finish (one holding only scales, or bytes after
    // the last layer's values that a later layer's shard walk did not reach).
    for n in &order {
        let h = hashes.get_mut(n).context("shard hash state missing")?;
        if h.cursor < h.file_bytes {
            bytes_read += hash_rest(h, read_mode)?;
        }
    }
    let done = progress.done;
    phase.finish(done, "read, packed and written");
    let sums_path = plan.ckpt.dir.join("SHA256SUMS");
    let sums = match Sha256Sums::read(&sums_path) {
        Ok(s) => Some(s),
        Err(FileError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let mut shards = Vec::new();
    let mut verified = 0;
    for n in order {
        let h = hashes.remove(&n).context("shard hash state missing")?;
        let sha = crate::checkpoint::replica::hex(&h.sha.finalize());
        if let Some(want) = sums.as_ref().and_then(|s| s.get(&n)) {
            ensure!(
                want == sha,
                "shard {} has SHA-256 {sha} but {} lists {want}: the shard is corrupted \
                 (or the list is stale); nothing was published",
                h.path.display(),
                sums_path.display()
            );
            verified += 1;
        }
        shards.push((n, sha));
    }
    let rows = plan.layers.iter().map(|l| l.values.shape[0]).sum();
    Ok(StreamSummary {
        shards,
        rows,
        bytes_read,
        seconds: started.elapsed().as_secs_f64(),
        read_mode: effective,
        verified_against_sha256sums: verified,
    })
}

/// Rate and ETA for the progress messages.
#[derive(Debug)]
struct Progress {
    done: u64,
    total: u64,
    started: Instant,
}

impl Progress {
    fn message(&self, layer_id: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        let rate = self.done as f64 / secs;
        let eta = (self.total - self.done) as f64 / rate.max(1.0);
        format!("layer {layer_id}, {:.0} MB/s, ETA {eta:.0} s", rate / 1e6)
    }
}

/// Reads and hashes `h`'s file from its cursor to the end.
fn hash_rest(h: &mut ShardHash, read_mode: ReadMode) -> Result<u64> {
    let r = SeqReader::open(&h.path, read_mode)?;
    let mut buf = AlignedBuf::new(VALUES_READ_BYTES + 2 * ALIGN as usize, ALIGN as usize)?;
    let start = h.cursor;
    while h.cursor < h.file_bytes {
        let b = (h.cursor + VALUES_READ_BYTES as u64).min(h.file_bytes);
        let at = r.read(h.cursor..b, &mut buf, "the bytes after the Engram tensors")?;
        h.sha.update(&buf.as_slice()[at]);
        h.cursor = b;
    }
    Ok(h.file_bytes - start)
}

/// Sends `piece` on `tx`; false when the receiver is gone (the packer stopped: its error
/// is the one reported).
fn send<T>(tx: &SyncSender<T>, piece: T) -> bool {
    tx.send(piece).is_ok()
}

/// The values stream of one layer: the shard in file order from the hash cursor through
/// the values (and to the end of the file when `last_use`), every byte hashed once, the
/// values also sent to the packer.
#[allow(clippy::too_many_arguments)]
fn walk_values(
    reader: &SeqReader,
    pool: &Pool,
    l: &LayerSource,
    cursor: &mut u64,
    file_bytes: u64,
    last_use: bool,
    to_hash: &SyncSender<Arc<Piece>>,
    to_pack: &SyncSender<Arc<Piece>>,
    chunk: u64,
) -> Result<u64> {
    let mut read = 0u64;
    // Hash-only reads of [from, to).
    let hash_range = |cursor: &mut u64, read: &mut u64, to: u64, what: &str| -> Result<bool> {
        while *cursor < to {
            let Some(mut buf) = pool.take() else {
                return Ok(false);
            };
            let b = (*cursor + VALUES_READ_BYTES as u64).min(to);
            let at = reader.read(*cursor..b, &mut buf, what)?;
            *read += b - *cursor;
            if !send(to_hash, Arc::new(pool.piece(buf, at, *cursor))) {
                return Ok(false);
            }
            *cursor = b;
        }
        Ok(true)
    };
    if !hash_range(
        cursor,
        &mut read,
        l.values.begin,
        "the bytes before the values tensor",
    )? {
        return Ok(read);
    }
    let mut at = l.values.begin;
    while at < l.values.end {
        let b = (at + chunk).min(l.values.end);
        let Some(mut buf) = pool.take() else {
            return Ok(read);
        };
        let range = reader.read(at..b, &mut buf, &format!("tensor {:?}", l.values_name))?;
        read += b - at;
        let piece = Arc::new(pool.piece(buf, range, at));
        if *cursor == at {
            if !send(to_hash, piece.clone()) {
                return Ok(read);
            }
            *cursor = b;
        }
        if !send(to_pack, piece) {
            return Ok(read);
        }
        at = b;
    }
    if last_use {
        hash_range(
            cursor,
            &mut read,
            file_bytes,
            "the bytes after the values tensor",
        )?;
    }
    Ok(read)
}

/// The scales stream of one layer.
fn read_scales(
    reader: &SeqReader,
    pool: &Pool,
    l: &LayerSource,
    to_pack: &SyncSender<Arc<Piece>>,
    chunk: u64,
) -> Result<u64> {
    let mut at = l.scales.begin;
    while at < l.scales.end {
        let b = (at + chunk).min(l.scales.end);
        let Some(mut buf) = pool.take() else {
            break;
        };
        let range = reader.read(at..b, &mut buf, &format!("tensor {:?}", l.scales_name))?;
        if !send(to_pack, Arc::new(pool.piece(buf, range, at))) {
            break;
        }
        at = b;
    }
    Ok(at - l.scales.begin)
}

/// Rows left in the current piece of one stream.
#[derive(Debug, Default)]
struct Cursor {
    piece: Option<Arc<Piece>>,
    pos: usize,
}

impl Cursor {
    /// The current piece's unread bytes, receiving the next piece when it is used up.
    fn next<'a>(&'a mut self, rx: &Receiver<Arc<Piece>>) -> Option<&'a [u8]> {
        if self
            .piece
            .as_ref()
            .is_none_or(|p| self.pos == p.bytes().len())
        {
            self.piece = Some(rx.recv().ok()?);
            self.pos = 0;
        }
        self.piece.as_ref().map(|p| &p.bytes()[self.pos..])
    }
}

#[allow(clippy::too_many_arguments)]
fn stream_layer(
    plan: &ImportPlan,
    li: usize,
    writer: &mut TableWriter,
    h: &mut ShardHash,
    last_use: bool,
    read_mode: ReadMode,
    phase: &mut Phase,
    progress: &mut Progress,
) -> Result<(u64, ReadMode)> {
    let l = &plan.layers[li];
    let dim = plan.dim as usize;
    let sc = dim / plan.scale_block as usize;
    let rb = dim + sc;
    let rows = l.values.shape[0];
    let vreader = SeqReader::open(&plan.ckpt.dir.join(&l.values_shard), read_mode)?;
    let sreader = SeqReader::open(&plan.ckpt.dir.join(&l.scales_shard), read_mode)?;
    let mode_used = vreader.mode();
    // Whole rows per read, so a piece never splits a row.
    let vchunk = (VALUES_READ_BYTES / dim).max(1) as u64 * dim as u64;
    let schunk = (SCALES_READ_BYTES / sc).max(1) as u64 * sc as u64;
    let slack = 2 * ALIGN as usize;
    let vpool = Pool::new(POOL_BUFFERS, VALUES_READ_BYTES.max(vchunk as usize) + slack)?;
    let spool = Pool::new(POOL_BUFFERS, schunk as usize + slack)?;
    let (tx_v, rx_v) = sync_channel::<Arc<Piece>>(POOL_BUFFERS);
    let (tx_s, rx_s) = sync_channel::<Arc<Piece>>(POOL_BUFFERS);
    let (tx_h, rx_h) = sync_channel::<Arc<Piece>>(POOL_BUFFERS);
    let file_bytes = h.file_bytes;
    let mut cursor = h.cursor;
    let sha = &mut h.sha;
    let values_file = plan.ckpt.dir.join(&l.values_shard);
    let scales_file = plan.ckpt.dir.join(&l.scales_shard);
    let (packed, walked, scaled, hashed) = std::thread::scope(|s| {
        // Each thread owns its senders, so a stream that stops (error or end) is seen by
        // its receiver at once.
        // The pools move in too (a pool's free list is one thread's).
        let (vreader, sreader, cur) = (&vreader, &sreader, &mut cursor);
        let walker = s.spawn(move || {
            walk_values(
                vreader, &vpool, l, cur, file_bytes, last_use, &tx_h, &tx_v, vchunk,
            )
        });
        let scaler = s.spawn(move || read_scales(sreader, &spool, l, &tx_s, schunk));
        let hasher = s.spawn(move || {
            for p in rx_h {
                sha.update(p.bytes());
            }
        });
        let packed = (|| -> Result<()> {
            let (rx_v, rx_s) = (rx_v, rx_s);
            let mut v = Cursor::default();
            let mut sc_cur = Cursor::default();
            let mut done = 0u64;
            while done < rows {
                let Some(vb) = v.next(&rx_v) else {
                    bail!("the values stream of {:?} ended early", l.values_name)
                };
                let vrows = vb.len() / dim;
                let Some(sb) = sc_cur.next(&rx_s) else {
                    bail!("the scales stream of {:?} ended early", l.scales_name)
                };
                let srows = sb.len() / sc;
                let n = vrows.min(srows);
                let (vb, sb) = (&vb[..n * dim], &sb[..n * sc]);
                // NaN checks on each run as it is packed (in cache), located after.
                let (mut vat, mut sat, mut nan) = (0, 0, false);
                writer.write_layer_rows_with(li, n as u64, |dst| {
                    let k = dst.len() / rb;
                    let (vr, sr) = (&vb[vat..vat + k * dim], &sb[sat..sat + k * sc]);
                    nan |= any(vr, e4m3_nan) | any(sr, e8m0_nan);
                    pack_rows(dst, vr, sr, dim, sc);
                    vat += k * dim;
                    sat += k * sc;
                })?;
                if nan {
                    if let Some(i) = first_nan(vb, e4m3_nan) {
                        bail!(
                            "tensor {:?} in {}: row {} column {} is an FP8 E4M3 NaN (0x{:02x}); a \
                             table row must be finite (corrupted shard?)",
                            l.values_name,
                            values_file.display(),
                            done + (i / dim) as u64,
                            i % dim,
                            vb[i]
                        );
                    }
                    if let Some(i) = first_nan(sb, e8m0_nan) {
                        bail!(
                            "tensor {:?} in {}: row {} scale {} is the E8M0 NaN (0xff) \
                             (corrupted shard?)",
                            l.scales_name,
                            scales_file.display(),
                            done + (i / sc) as u64,
                            i % sc
                        );
                    }
                    bail!("internal: a NaN flagged in rows {done}.. was not found again");
                }
                v.pos += n * dim;
                sc_cur.pos += n * sc;
                done += n as u64;
                progress.done += (n * rb) as u64;
                phase.update(progress.done, &progress.message(l.layer_id));
            }
            Ok(())
        })();
        // The receivers are gone now: readers blocked on a send return at once.
        let walked = walker.join();
        let scaled = scaler.join();
        let hashed = hasher.join();
        (packed, walked, scaled, hashed)
    });
    h.cursor = cursor;
    let panicked = |what: &str| anyhow::anyhow!("the {what} thread panicked");
    hashed.map_err(|_| panicked("hashing"))?;
    // A reader's error explains a packer that saw its stream end: report it first.
    let walked = walked.map_err(|_| panicked("values reader"))??;
    let scaled = scaled.map_err(|_| panicked("scales reader"))??;
    packed?;
    Ok((walked + scaled, mode_used))
}

/// FP8 E4M3 NaN: exponent and mantissa all ones.
fn e4m3_nan(b: u8) -> bool {
    b & 0x7f == 0x7f
}

/// The E8M0 NaN.
fn e8m0_nan(b: u8) -> bool {
    b == 0xff
}

/// Whether any byte of `bytes` is flagged by `is_nan` (no early exit: vectorises).
fn any(bytes: &[u8], is_nan: impl Fn(u8) -> bool) -> bool {
    bytes.iter().fold(false, |a, &b| a | is_nan(b))
}

/// Packs `dst.len() / (dim + sc)` rows: each row's `dim` value bytes from `values`, then its
/// `sc` scale bytes from `scales`. The common widths are constants where [`pack_with`] is
/// inlined, so each row is two inline copies rather than two `memcpy` calls.
fn pack_rows(dst: &mut [u8], values: &[u8], scales: &[u8], dim: usize, sc: usize) {
    match (dim, sc) {
        (256, 8) => pack_with(dst, values, scales, 256, 8),
        (512, 16) => pack_with(dst, values, scales, 512, 16),
        (1024, 32) => pack_with(dst, values, scales, 1024, 32),
        _ => pack_with(dst, values, scales, dim, sc),
    }
}

#[inline(always)]
fn pack_with(dst: &mut [u8], values: &[u8], scales: &[u8], dim: usize, sc: usize) {
    for ((o, vr), sr) in dst
        .chunks_exact_mut(dim + sc)
        .zip(values.chunks_exact(dim))
        .zip(scales.chunks_exact(sc))
    {
        o[..dim].copy_from_slice(vr);
        o[dim..].copy_from_slice(sr);
    }
}

/// Index of the first byte of `bytes` that `is_nan` flags (checked 64 bytes at a time, so
/// the common all-finite case vectorises).
fn first_nan(bytes: &[u8], is_nan: impl Fn(u8) -> bool + Copy) -> Option<usize> {
    for (ci, c) in bytes.chunks(64).enumerate() {
        if c.iter().fold(false, |a, &b| a | is_nan(b)) {
            return c.iter().position(|&b| is_nan(b)).map(|i| ci * 64 + i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nan_finds_the_first() {
        let mut v = vec![0u8; 300];
        assert_eq!(first_nan(&v, e4m3_nan), None);
        assert!(!any(&v, e4m3_nan));
        v[200] = 0xff;
        v[250] = 0x7f;
        assert_eq!(first_nan(&v, e4m3_nan), Some(200));
        assert!(any(&v, e8m0_nan));
    }
}
