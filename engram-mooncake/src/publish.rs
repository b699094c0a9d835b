//! Publishing a table on Mooncake (upload, resumable; verify; descriptor; name switch)
//! and removing it.
//!
//! Order of a publication, so that a reader sees a version either complete or absent:
//! manifest object, chunk objects (chunks already present are kept: a rerun resumes),
//! a read-back of every chunk compared with the local file (a chunk that differs is
//! written again and checked once more), then the descriptor, then the name object.
//! Objects are written with `upsert` (a `put` on an existing key keeps the old bytes).

use std::os::unix::fs::FileExt;

use engram_store::Table;
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
    pub chunk_bytes: u64,
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
    Upload,
    Verify,
}

/// Progress of a publication, in bytes of layer files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub done_bytes: u64,
    pub total_bytes: u64,
}

/// What a publication did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// `engram/{table_id}/{version}`.
    pub prefix: String,
    pub name: Option<String>,
    pub files: usize,
    pub chunks: u64,
    pub bytes: u64,
    /// Chunks written now, and chunks found from an earlier run.
    pub uploaded_chunks: u64,
    pub resumed_chunks: u64,
    /// Chunks that read back different and were written again.
    pub rewritten_chunks: u64,
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
    let r = &r;
    let mut chunks = Vec::new();
    let mut files = Vec::with_capacity(table.n_layers());
    for li in 0..table.n_layers() {
        let lm = &m.layers[li];
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
    // A complete publication of this version fixes its chunking: a rerun keeps it.
    if let Some(bytes) = client.get_bytes(&keys.descriptor(), crate::keys::MAX_DESCRIPTOR_BYTES)? {
        let d = Descriptor::parse(&bytes, &keys)?;
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
    let mut buf = Registered::new(client, 2 * half)?;
    let read_local = |buf: &mut [u8], c: &Chunk| -> Result<()> {
        let lf = table.layer(c.file as usize)?;
        lf.file
            .read_exact_at(buf, c.offset)
            .map_err(|e| io("read", &lf.path, e))
    };

    // Upload what is missing.
    let mut done = 0u64;
    for batch in chunks.chunks(per_batch) {
        let names: Vec<String> = batch.iter().map(|c| keys.chunk(c.file, c.index)).collect();
        let exist = client.exist(&names)?;
        let mut up_keys = Vec::new();
        let mut up_ptrs = Vec::new();
        let mut up_sizes = Vec::new();
        let base = buf.base();
        let mut at = 0usize;
        for ((c, k), &e) in batch.iter().zip(&names).zip(&exist) {
            if e == 1 {
                report.resumed_chunks += 1;
                continue;
            }
            let len = c.len as usize;
            read_local(&mut buf.bytes_mut()[at..at + len], c)?;
            up_keys.push(k.clone());
            up_ptrs.push(base + at);
            up_sizes.push(len);
            at += len;
        }
        if !up_keys.is_empty() {
            // SAFETY: every pointer is `base + at` inside the registered `buf`, filled
            // just above, and `buf` is not touched again until the call returns.
            #[allow(unsafe_code)]
            let codes = unsafe { client.upsert_from(&up_keys, &up_ptrs, &up_sizes, r)? };
            check_codes("upsert_from", &up_keys, &codes)?;
            report.uploaded_chunks += up_keys.len() as u64;
        }
        done += batch.iter().map(|c| c.len).sum::<u64>();
        progress(Progress {
            phase: Phase::Upload,
            done_bytes: done,
            total_bytes: total,
        });
    }

    // Read every chunk back and compare.
    let mut done = 0u64;
    let mut get = RangedGet::default();
    for batch in chunks.chunks(per_batch) {
        for attempt in 0..2 {
            let bad = verify_batch(client, &keys, batch, &mut buf, half, &mut get, &read_local)?;
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
            // Write the bad chunks again, then check the batch once more.
            let base = buf.base();
            let (mut ks, mut ps, mut ss, mut at) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
            for (c, why) in &bad {
                tracing::warn!(target: "engram_mooncake", key = %keys.chunk(c.file, c.index), "chunk read back wrong ({why}); writing it again");
                let len = c.len as usize;
                read_local(&mut buf.bytes_mut()[at..at + len], c)?;
                ks.push(keys.chunk(c.file, c.index));
                ps.push(base + at);
                ss.push(len);
                at += len;
            }
            // SAFETY: as for the first upload: ranges of the registered `buf`, filled above.
            #[allow(unsafe_code)]
            let codes = unsafe { client.upsert_from(&ks, &ps, &ss, r)? };
            check_codes("upsert_from", &ks, &codes)?;
            report.rewritten_chunks += ks.len() as u64;
        }
        let n: u64 = batch.iter().map(|c| c.len).sum();
        done += n;
        report.verified_bytes += n;
        progress(Progress {
            phase: Phase::Verify,
            done_bytes: done,
            total_bytes: total,
        });
    }
    drop(buf);

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
    if let Some(name) = &options.name {
        let nk = name_key(name)?;
        let code = client.upsert_bytes(&nk, keys.pointer().as_bytes(), r)?;
        check_codes("upsert", &[nk], &[code])?;
    }
    tracing::info!(target: "engram_mooncake", prefix = %keys.prefix, chunks = report.chunks, bytes = report.bytes, "published");
    Ok(report)
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
