//! A table's skeleton: what a host needs locally to read a table whose rows live on
//! Mooncake. The manifest, and each layer file with its header and checksum table in
//! place and its row region a hole (sparse: no disk, reads as zeros), so `Table::open`
//! validates it exactly as a full table and the store verifies every block fetched from
//! the cluster against the checksums. About 0.2% of the table (8 bytes per 4 KiB block).
//!
//! A skeleton holds no rows: a marker file ([`SKELETON_MARKER`]) says so, and
//! [`crate::open_store`] never falls back to reading it locally.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use engram_store::format::{LayerHeader, MANIFEST_FILE};
use engram_store::{Manifest, Table};

use crate::buffer::Registered;
use crate::client::{Client, RangedGet};
use crate::error::{Error, Result, code_name, io};
use crate::keys::{Descriptor, MAX_DESCRIPTOR_BYTES, MAX_MANIFEST_BYTES, TableKeys, pieces};

/// File in a skeleton directory naming the publication it was made from.
pub const SKELETON_MARKER: &str = "mooncake.json";
/// Bytes fetched per call while making a skeleton.
const FETCH_BYTES: u64 = 16 << 20;

/// Whether `dir` is a skeleton (its rows live only on Mooncake).
pub fn is_skeleton(dir: &Path) -> bool {
    dir.join(SKELETON_MARKER).exists()
}

/// Why `dir` cannot be read by a local backend, when it is a skeleton (its row regions are
/// holes: every block would fail its checksum): the flags that read it from the cluster.
pub fn local_read_refused(dir: &Path) -> Option<String> {
    is_skeleton(dir).then(|| {
        format!(
            "{} is a Mooncake skeleton ({SKELETON_MARKER}): its rows live only on the cluster; \
             read it with --backend mooncake --mooncake HOST:PORT (moe-core: --engram-backend \
             mooncake --mooncake HOST:PORT), or read a full copy of the table",
            dir.display()
        )
    })
}

/// Writes the skeleton of the published version `keys` to `dir` (which must not exist),
/// through a temporary directory renamed into place, and opens it to validate it.
pub fn fetch_skeleton(client: &Client, keys: &TableKeys, dir: &Path) -> Result<Table> {
    if dir.symlink_metadata().is_ok() {
        return Err(Error::Invalid {
            what: "skeleton directory",
            reason: format!("{} already exists", dir.display()),
        });
    }
    let not_published = |what: &str| Error::NotPublished {
        prefix: keys.prefix.clone(),
        reason: format!("no {what}"),
    };
    let dbytes = client
        .get_bytes(&keys.descriptor(), MAX_DESCRIPTOR_BYTES)?
        .ok_or_else(|| not_published("descriptor"))?;
    let d = Descriptor::parse(&dbytes, keys)?;
    let mbytes = client
        .get_bytes(&keys.manifest(), MAX_MANIFEST_BYTES)?
        .ok_or_else(|| not_published("manifest"))?;
    let m = Manifest::from_json(&mbytes, Path::new(&keys.manifest()))?;
    let got = TableKeys::of(&m)?;
    if &got != keys {
        return Err(Error::Mismatch {
            what: "manifest",
            key: keys.manifest(),
            expected: keys.prefix.clone(),
            found: got.prefix,
        });
    }
    d.check_manifest(&m, keys)?;

    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir.file_name().ok_or_else(|| Error::Invalid {
        what: "skeleton directory",
        reason: format!("{} has no file name", dir.display()),
    })?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.skeleton-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_files(client, keys, &d, &m, &mbytes, &tmp)
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| io("rename", dir, e)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(Table::open(dir)?)
}

fn write_files(
    client: &Client,
    keys: &TableKeys,
    d: &Descriptor,
    m: &Manifest,
    manifest: &[u8],
    tmp: &Path,
) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| io("create directory", tmp, e))?;
    let mpath = tmp.join(MANIFEST_FILE);
    std::fs::write(&mpath, manifest).map_err(|e| io("write", &mpath, e))?;
    let mut buf = Registered::new(client, FETCH_BYTES as usize)?;
    let mut get = RangedGet::default();
    for (li, lm) in m.layers.iter().enumerate() {
        let h = LayerHeader::expected(m, li as u32, lm.layer_id, lm.rows)?;
        let path = tmp.join(&lm.file);
        let f = std::fs::File::create(&path).map_err(|e| io("create", &path, e))?;
        f.set_len(lm.file_bytes)
            .map_err(|e| io("set length", &path, e))?;
        // The header, and the checksum table (which ends the file).
        for (start, end) in [(0, h.data_offset), (h.checksums_offset, h.file_bytes)] {
            let mut at = start;
            while at < end {
                let n = (end - at).min(FETCH_BYTES);
                get.clear();
                let mut k_of = std::collections::HashMap::new();
                for p in pieces(at, n, d.chunk_bytes) {
                    let k = *k_of.entry(p.chunk).or_insert_with(|| {
                        get.keys.push(keys.chunk(li as u32, p.chunk));
                        get.dst.push(Vec::new());
                        get.src.push(Vec::new());
                        get.len.push(Vec::new());
                        get.keys.len() - 1
                    });
                    get.dst[k].push(p.at);
                    get.src[k].push(p.src);
                    get.len[k].push(p.len);
                }
                let base = buf.base();
                // SAFETY: `buf` is registered with `client` ([`Registered`]), the ranges were
                // laid out inside it above, and no reference into it is live during the call.
                #[allow(unsafe_code)]
                let r = unsafe { client.get_ranges(base, &get)? };
                for (k, key) in get.keys.iter().enumerate() {
                    for (j, &want) in get.len[k].iter().enumerate() {
                        let code = r.get(k).and_then(|v| v.get(j)).copied().unwrap_or(-1);
                        if code != want as i64 {
                            return Err(Error::Object {
                                op: "get_into_ranges",
                                key: key.clone(),
                                code,
                                name: code_name(code),
                            });
                        }
                    }
                }
                f.write_all_at(&buf.bytes_mut()[..n as usize], at)
                    .map_err(|e| io("write", &path, e))?;
                at += n;
            }
        }
        f.sync_all().map_err(|e| io("fsync", &path, e))?;
    }
    let marker = serde_json::json!({
        "prefix": keys.prefix,
        "master": client.config().master,
        "note": "skeleton of a table whose rows live on Mooncake: open it with the mooncake backend",
    });
    let mk = tmp.join(SKELETON_MARKER);
    std::fs::write(&mk, marker.to_string()).map_err(|e| io("write", &mk, e))?;
    Ok(())
}
