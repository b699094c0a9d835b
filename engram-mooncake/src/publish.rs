//! Publishing a table on Mooncake (upload, resumable; verify; descriptor; name switch)
//! and removing it.
//!
//! Order of a publication, so that a reader sees a version either complete or absent:
//! manifest object, chunk objects (chunks already present are kept: a rerun resumes),
//! a read-back of every chunk compared with the local file (a chunk that differs is
//! written again and checked once more), then the descriptor, then the name object.
//! Objects are written with `upsert` (a `put` on an existing key keeps the old bytes).

use std::os::unix::fs::FileExt;

use engram_store::{Manifest, Table};
use serde::Serialize;

use crate::buffer::Registered;
use crate::client::{Client, MAX_REPLICAS, RangedGet, Replication};
use crate::error::{Error, Result, code_name, io};
use crate::keys::{
    DEFAULT_CHUNK_BYTES, DESCRIPTOR_FORMAT, DESCRIPTOR_VERSION, Descriptor, FileDesc, TableKeys,
    check_chunk_bytes, chunk_count, name_key,
};

/// Largest upload batch (the registered buffer is twice this: upload and read-back).
pub const MAX_BATCH_BYTES: u64 = 1 << 30;
/// Default upload batch.
pub const DEFAULT_BATCH_BYTES: u64 = 32 << 20;

/// How to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Point this name at the published version (`engram/names/{name}`).
    pub name: Option<String>,
    /// Bytes per chunk object (the last chunk of a file is shorter).
    pub chunk_bytes: u64,
    /// Replicas and pinning asked for every object.
    pub replication: Replication,
    /// Bytes uploaded per call.
    pub batch_bytes: u64,
    /// Place the objects in this client's own segment (it must contribute one): a process
    /// that serves its own reads from memory it holds.
    pub local_segment: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self {
            name: None,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            replication: Replication::default(),
            batch_bytes: DEFAULT_BATCH_BYTES,
            local_segment: false,
        }
    }
}

/// Where a publication is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Writing chunks (skipping those an earlier run left intact).
    Upload,
    /// Reading every chunk back and comparing it with the file.
    Verify,
}

/// Progress of a publication, in bytes of layer files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The phase the counts are for.
    pub phase: Phase,
    /// Bytes of layer files done in this phase.
    pub done_bytes: u64,
    /// Bytes of layer files in all.
    pub total_bytes: u64,
}

/// What a publication did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// `engram/{table_id}/{version}`.
    pub prefix: String,
    /// The name pointed at the version, if one was asked for.
    pub name: Option<String>,
    /// Files published (layer files, in manifest order).
    pub files: usize,
    /// Chunk objects in the publication.
    pub chunks: u64,
    /// Bytes of the published files.
    pub bytes: u64,
    /// Chunks written now.
    pub uploaded_chunks: u64,
    /// Chunks found intact from an earlier, interrupted run.
    pub resumed_chunks: u64,
    /// Chunks that read back different and were written again.
    pub rewritten_chunks: u64,
    /// Bytes read back and compared.
    pub verified_bytes: u64,
}

/// One chunk of one file.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    file: u32,
    index: u64,
    offset: u64,
    len: u64,
}

fn check_options(o: &PublishOptions) -> Result<()> {
    check_chunk_bytes(o.chunk_bytes)?;
    if o.replication.replicas == 0 || o.replication.replicas > MAX_REPLICAS {
        return Err(Error::Invalid {
            what: "replicas",
            reason: format!("{}: expected 1 to {MAX_REPLICAS}", o.replication.replicas),
        });
    }
    if o.batch_bytes < o.chunk_bytes || o.batch_bytes > MAX_BATCH_BYTES {
        return Err(Error::Invalid {
            what: "upload batch bytes",
            reason: format!(
                "{}: expected one chunk ({}) to {MAX_BATCH_BYTES}",
                o.batch_bytes, o.chunk_bytes
            ),
        });
    }
    if let Some(n) = &o.name {
        name_key(n)?;
    }
    Ok(())
}

fn check_codes(op: &'static str, keys: &[String], codes: &[i64]) -> Result<()> {
    if codes.len() != keys.len() {
        return Err(Error::Python {
            op,
            reason: format!("{} results for {} keys", codes.len(), keys.len()),
        });
    }
    for (k, &c) in keys.iter().zip(codes) {
        if c != 0 {
            return Err(Error::Object {
                op,
                key: k.clone(),
                code: c,
                name: code_name(c),
            });
        }
    }
    Ok(())
}

/// Uploads `table` to the cluster `client` talks to, verifies it, and makes it readable.
pub fn publish(
    client: &Client,
    table: &Table,
    options: &PublishOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<PublishReport> {
    check_options(options)?;
    let m = table.manifest();
    let keys = TableKeys::of(m)?;
    let cb = options.chunk_bytes;
    let r = &replication(client, options)?;
    let (files, chunks) = plan_chunks(table, cb);
    check_published_chunking(client, &keys, cb)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let mut report = PublishReport {
        prefix: keys.prefix.clone(),
        name: options.name.clone(),
        files: files.len(),
        chunks: chunks.len() as u64,
        bytes: total,
        ..PublishReport::default()
    };
    let manifest = serde_json::to_vec_pretty(m).map_err(|e| Error::Invalid {
        what: "manifest",
        reason: e.to_string(),
    })?;
    let code = client.upsert_bytes(&keys.manifest(), &manifest, r)?;
    check_codes("upsert", &[keys.manifest()], &[code])?;

    let per_batch = (options.batch_bytes / cb).max(1) as usize;
    let half = per_batch * cb as usize;
    let mut up = Uploader {
        client,
        keys: &keys,
        table,
        replication: r,
        buf: Registered::new(client, 2 * half)?,
        half,
    };
    // Upload what is missing, then read every chunk back and compare.
    let mut done = 0u64;
    for batch in chunks.chunks(per_batch) {
        up.upload_missing(batch, &mut report)?;
        done += batch.iter().map(|c| c.len).sum::<u64>();
        progress(Progress {
            phase: Phase::Upload,
            done_bytes: done,
            total_bytes: total,
        });
    }
    let mut done = 0u64;
    let mut get = RangedGet::default();
    for batch in chunks.chunks(per_batch) {
        up.verify(batch, &mut get, &mut report)?;
        done += batch.iter().map(|c| c.len).sum::<u64>();
        progress(Progress {
            phase: Phase::Verify,
            done_bytes: done,
            total_bytes: total,
        });
    }
    drop(up);
    write_descriptor(client, &keys, m, files, cb, r, options.name.as_deref())?;
    tracing::info!(target: "engram_mooncake", prefix = %keys.prefix, chunks = report.chunks, bytes = report.bytes, "published");
    Ok(report)
}

/// The replication asked for, placed in this client's own segment with `local_segment`.
fn replication(client: &Client, options: &PublishOptions) -> Result<Replication> {
    let mut r = options.replication.clone();
    if options.local_segment {
        if client.config().segment_bytes == 0 {
            return Err(Error::Invalid {
                what: "local segment",
                reason: "this client contributes no segment (segment bytes 0)".into(),
            });
        }
        r.preferred_segment = Some(client.hostname()?);
    }
    Ok(r)
}

/// The layer files and their chunks of `cb` bytes, in manifest order.
fn plan_chunks(table: &Table, cb: u64) -> (Vec<FileDesc>, Vec<Chunk>) {
    let m = table.manifest();
    let mut chunks = Vec::new();
    let mut files = Vec::with_capacity(table.n_layers());
    for (li, lm) in m.layers.iter().enumerate().take(table.n_layers()) {
        files.push(FileDesc {
            name: lm.file.clone(),
            bytes: lm.file_bytes,
        });
        for c in 0..chunk_count(lm.file_bytes, cb) {
            let offset = c * cb;
            chunks.push(Chunk {
                file: li as u32,
                index: c,
                offset,
                len: cb.min(lm.file_bytes - offset),
            });
        }
    }
    (files, chunks)
}

/// A complete publication of this version fixes its chunking: a rerun must keep it.
fn check_published_chunking(client: &Client, keys: &TableKeys, cb: u64) -> Result<()> {
    if let Some(bytes) = client.get_bytes(&keys.descriptor(), crate::keys::MAX_DESCRIPTOR_BYTES)? {
        let d = Descriptor::parse(&bytes, keys)?;
        if d.chunk_bytes != cb {
            return Err(Error::Invalid {
                what: "chunk bytes",
                reason: format!(
                    "{} is published with {}-byte chunks, not {cb}: unpublish it first",
                    keys.prefix, d.chunk_bytes
                ),
            });
        }
    }
    Ok(())
}

/// The upload and verification of one publication through one registered buffer: the
/// lower half holds local bytes, the upper half what is read back.
struct Uploader<'a> {
    client: &'a Client,
    keys: &'a TableKeys,
    table: &'a Table,
    replication: &'a Replication,
    buf: Registered<'a>,
    half: usize,
}

impl Uploader<'_> {
    /// Uploads the chunks of `batch` that the cluster does not hold yet.
    fn upload_missing(&mut self, batch: &[Chunk], report: &mut PublishReport) -> Result<()> {
        let names: Vec<String> = batch
            .iter()
            .map(|c| self.keys.chunk(c.file, c.index))
            .collect();
        let exist = self.client.exist(&names)?;
        let missing: Vec<Chunk> = batch
            .iter()
            .zip(&exist)
            .filter(|&(_, &e)| e != 1)
            .map(|(c, _)| *c)
            .collect();
        report.resumed_chunks += (batch.len() - missing.len()) as u64;
        report.uploaded_chunks += self.upload(&missing)?;
        Ok(())
    }

    /// Reads `chunks` from the local files into the lower half of the buffer and writes
    /// them to the cluster; returns how many.
    fn upload(&mut self, chunks: &[Chunk]) -> Result<u64> {
        if chunks.is_empty() {
            return Ok(0);
        }
        let base = self.buf.base();
        let (mut ks, mut ps, mut ss, mut at) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
        for c in chunks {
            let len = c.len as usize;
            read_local(self.table, &mut self.buf.bytes_mut()[at..at + len], c)?;
            ks.push(self.keys.chunk(c.file, c.index));
            ps.push(base + at);
            ss.push(len);
            at += len;
        }
        // SAFETY: every pointer is `base + at` inside the registered `buf` (the chunks of
        // one batch fit its lower half), filled just above, and `buf` is not touched
        // again until the call returns.
        #[allow(unsafe_code)]
        let codes = unsafe { self.client.upsert_from(&ks, &ps, &ss, self.replication)? };
        check_codes("upsert_from", &ks, &codes)?;
        Ok(ks.len() as u64)
    }

    /// Reads `batch` back and compares it; chunks that differ are written again and the
    /// batch checked once more, after which a difference is an error.
    fn verify(
        &mut self,
        batch: &[Chunk],
        get: &mut RangedGet,
        report: &mut PublishReport,
    ) -> Result<()> {
        for attempt in 0..2 {
            let (client, keys, table, half) = (self.client, self.keys, self.table, self.half);
            let read = |buf: &mut [u8], c: &Chunk| read_local(table, buf, c);
            let bad = verify_batch(client, keys, batch, &mut self.buf, half, get, &read)?;
            if bad.is_empty() {
                break;
            }
            if attempt == 1 {
                let (c, why) = &bad[0];
                return Err(Error::Mismatch {
                    what: "chunk (after rewriting it)",
                    key: keys.chunk(c.file, c.index),
                    expected: "the local file's bytes".into(),
                    found: why.clone(),
                });
            }
            for (c, why) in &bad {
                tracing::warn!(target: "engram_mooncake", key = %keys.chunk(c.file, c.index), "chunk read back wrong ({why}); writing it again");
            }
            let again: Vec<Chunk> = bad.iter().map(|(c, _)| *c).collect();
            report.rewritten_chunks += self.upload(&again)?;
        }
        report.verified_bytes += batch.iter().map(|c| c.len).sum::<u64>();
        Ok(())
    }
}

/// Chunk `c` of the local table, read into `buf` (`c.len` bytes).
fn read_local(table: &Table, buf: &mut [u8], c: &Chunk) -> Result<()> {
    let lf = table.layer(c.file as usize)?;
    lf.file
        .read_exact_at(buf, c.offset)
        .map_err(|e| io("read", &lf.path, e))
}

/// Writes the descriptor (the version is then readable) and points `name` at it.
fn write_descriptor(
    client: &Client,
    keys: &TableKeys,
    m: &Manifest,
    files: Vec<FileDesc>,
    cb: u64,
    r: &Replication,
    name: Option<&str>,
) -> Result<()> {
    let d = Descriptor {
        format: DESCRIPTOR_FORMAT.into(),
        format_version: DESCRIPTOR_VERSION,
        table_id: m.table_id.clone(),
        table_version: keys
            .pointer()
            .split_once('/')
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        chunk_bytes: cb,
        replicas: r.replicas,
        hard_pin: r.hard_pin,
        files,
    };
    let bytes = serde_json::to_vec_pretty(&d).map_err(|e| Error::Invalid {
        what: "descriptor",
        reason: e.to_string(),
    })?;
    let code = client.upsert_bytes(&keys.descriptor(), &bytes, r)?;
    check_codes("upsert", &[keys.descriptor()], &[code])?;
    if let Some(name) = name {
        let nk = name_key(name)?;
        let code = client.upsert_bytes(&nk, keys.pointer().as_bytes(), r)?;
        check_codes("upsert", &[nk], &[code])?;
    }
    Ok(())
}

/// Reads `batch` back into the upper half of `buf` and compares it with the local files
/// read into the lower half; the chunks that differ, with what was found.
fn verify_batch(
    client: &Client,
    keys: &TableKeys,
    batch: &[Chunk],
    buf: &mut Registered<'_>,
    half: usize,
    get: &mut RangedGet,
    read_local: &dyn Fn(&mut [u8], &Chunk) -> Result<()>,
) -> Result<Vec<(Chunk, String)>> {
    get.clear();
    let mut at = 0u64;
    for c in batch {
        get.keys.push(keys.chunk(c.file, c.index));
        get.dst.push(vec![half as u64 + at]);
        get.src.push(vec![0]);
        get.len.push(vec![c.len]);
        at += c.len;
    }
    let base = buf.base();
    // SAFETY: `base` is the registered `buf`; the ranges were laid out inside its second
    // half above and nothing reads or writes it until the call returns.
    #[allow(unsafe_code)]
    let got = unsafe { client.get_ranges(base, get)? };
    let mut bad = Vec::new();
    let mut at = 0usize;
    for (k, c) in batch.iter().enumerate() {
        let len = c.len as usize;
        let code = got.get(k).and_then(|v| v.first()).copied().unwrap_or(-1);
        if code != c.len as i64 {
            bad.push((*c, format!("read back {code} ({})", code_name(code))));
        } else {
            let (lo, hi) = buf.bytes_mut().split_at_mut(half);
            read_local(&mut lo[..len], c)?;
            if lo[..len] != hi[at..at + len] {
                bad.push((*c, "different bytes".into()));
            }
        }
        at += len;
    }
    Ok(bad)
}

/// The version a name points to.
pub fn resolve(client: &Client, name: &str) -> Result<TableKeys> {
    let nk = name_key(name)?;
    let v = client
        .get_bytes(&nk, 1024)?
        .ok_or_else(|| Error::NotPublished {
            prefix: nk.clone(),
            reason: format!("no table is published under the name {name:?}"),
        })?;
    TableKeys::parse_pointer(&String::from_utf8_lossy(&v))
}

/// Removes a published version: the descriptor first (readers then see it unpublished),
/// then every object under its prefix; and `name` when it points to this version.
/// Returns the objects removed.
pub fn unpublish(client: &Client, keys: &TableKeys, name: Option<&str>) -> Result<i64> {
    let d = client.remove(&keys.descriptor())?;
    if d != 0 && d != crate::error::OBJECT_NOT_FOUND {
        return Err(Error::Object {
            op: "remove",
            key: keys.descriptor(),
            code: d,
            name: code_name(d),
        });
    }
    let mut removed = i64::from(d == 0);
    let n = client.remove_prefix(&format!("{}/", keys.prefix))?;
    if n < 0 {
        return Err(Error::Object {
            op: "remove_by_regex",
            key: format!("{}/", keys.prefix),
            code: n,
            name: code_name(n),
        });
    }
    removed += n;
    if let Some(name) = name
        && resolve(client, name).ok().as_ref() == Some(keys)
    {
        let nk = name_key(name)?;
        if client.remove(&nk)? == 0 {
            removed += 1;
        }
    }
    tracing::info!(target: "engram_mooncake", prefix = %keys.prefix, removed, "unpublished");
    Ok(removed)
}
