//! The safetensors container without reading the tensors: a shard's header (8-byte
//! little-endian length, then a JSON object of `name -> {dtype, shape, data_offsets}` and an
//! optional `__metadata__`) is parsed from its first bytes, so a 100 GB shard costs one
//! small read, and tensors are located by absolute file offsets. The writer side builds a
//! header for tensors that are then streamed to disk.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use engram_files::file::open_regular;

/// Largest header read (the safetensors reference implementation's own limit).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor of a shard, located by absolute byte offsets in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Safetensors dtype name (`F8_E4M3`, `BF16`, ...).
    pub dtype: String,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// First byte of the tensor in the file.
    pub begin: u64,
    /// One past its last byte.
    pub end: u64,
}

impl TensorInfo {
    /// Bytes of the tensor.
    pub fn bytes(&self) -> u64 {
        self.end - self.begin
    }
}

/// A shard's header.
#[derive(Debug, Clone)]
pub struct ShardHeader {
    /// The shard file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// First byte of the data region (8 + header length).
    pub data_start: u64,
    /// Its tensors by name.
    pub tensors: BTreeMap<String, TensorInfo>,
}

/// Bytes per element of the dtypes whose size is known here; `None` for others (their
/// shape is not checked against their byte range).
pub fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" => 8,
        _ => return None,
    })
}

impl ShardHeader {
    /// Reads and checks the header of the shard at `path`: every tensor's range lies inside
    /// the file (a truncated shard is an error naming the tensor) and matches its shape.
    pub fn read(path: &Path) -> Result<Self> {
        let (file, file_bytes) = open_regular(path)?;
        let mut len = [0u8; 8];
        ensure!(
            file_bytes >= 8,
            "{} is {file_bytes} bytes: too short for a safetensors header (truncated?)",
            path.display()
        );
        file.read_exact_at(&mut len, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let n = u64::from_le_bytes(len);
        ensure!(
            n <= MAX_HEADER_BYTES,
            "{}: safetensors header of {n} bytes is above the {MAX_HEADER_BYTES}-byte limit \
             (not a safetensors file, or corrupted)",
            path.display()
        );
        ensure!(
            8 + n <= file_bytes,
            "{}: safetensors header of {n} bytes runs past the end of the {file_bytes}-byte \
             file (truncated?)",
            path.display()
        );
        let mut text = vec![0u8; n as usize];
        file.read_exact_at(&mut text, 8)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, &text, file_bytes)
    }

    /// Parses header JSON `text` of a file of `file_bytes` bytes.
    pub fn parse(path: &Path, text: &[u8], file_bytes: u64) -> Result<Self> {
        let data_start = 8 + text.len() as u64;
        let json: serde_json::Value = serde_json::from_slice(text).with_context(|| {
            format!(
                "{}: the safetensors header is not JSON (not a safetensors file, or corrupted)",
                path.display()
            )
        })?;
        let Some(obj) = json.as_object() else {
            bail!(
                "{}: the safetensors header is not a JSON object",
                path.display()
            );
        };
        let mut tensors = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |why: &str| {
                anyhow::anyhow!(
                    "tensor {name:?} in {}: {why} (corrupted header?)",
                    path.display()
                )
            };
            let dtype = v
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("no dtype"))?
                .to_owned();
            let shape: Vec<u64> = v
                .get("shape")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .ok_or_else(|| bad("no shape (a list of non-negative integers)"))?;
            let offsets: [u64; 2] = v
                .get("data_offsets")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .ok_or_else(|| bad("no data_offsets ([begin, end])"))?;
            ensure!(
                offsets[0] <= offsets[1],
                bad("data_offsets begin after end")
            );
            let (begin, end) = (
                data_start
                    .checked_add(offsets[0])
                    .ok_or_else(|| bad("offset overflows"))?,
                data_start
                    .checked_add(offsets[1])
                    .ok_or_else(|| bad("offset overflows"))?,
            );
            if end > file_bytes {
                bail!(
                    "tensor {name:?} in {} ends at byte {end} but the file has {file_bytes} \
                     bytes (truncated shard?)",
                    path.display()
                );
            }
            if let Some(w) = dtype_bytes(&dtype) {
                let elems = shape
                    .iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| bad("shape overflows"))?;
                let want = elems.checked_mul(w).ok_or_else(|| bad("shape overflows"))?;
                ensure!(
                    want == end - begin,
                    "tensor {name:?} in {}: shape {shape:?} of {dtype} is {want} bytes but \
                     data_offsets span {} (corrupted header?)",
                    path.display(),
                    end - begin
                );
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    begin,
                    end,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file_bytes,
            data_start,
            tensors,
        })
    }
}

/// A tensor to be written: name, dtype, shape (its bytes follow from them).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Safetensors dtype name.
    pub dtype: &'static str,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// Bytes of the tensor's data.
    pub fn bytes(&self) -> Result<u64> {
        let w = dtype_bytes(self.dtype).with_context(|| format!("dtype {}", self.dtype))?;
        self.shape
            .iter()
            .try_fold(w, |a, &d| a.checked_mul(d))
            .context("tensor size overflows u64")
    }
}

/// An encoded header and each tensor's absolute `(begin, end)` in the file.
pub type EncodedHeader = (Vec<u8>, Vec<(u64, u64)>);

/// The header of a file holding `tensors` in this order, back to back: the 8-byte length,
/// the JSON (padded with spaces to a multiple of 8 bytes, as the reference writer does)
/// and, for each tensor, its absolute `(begin, end)` in the file.
pub fn encode_header(
    tensors: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
) -> Result<EncodedHeader> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut at = 0u64;
    let mut rel = Vec::with_capacity(tensors.len());
    for t in tensors {
        let end = at
            .checked_add(t.bytes()?)
            .context("file size overflows u64")?;
        obj.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype, "shape": t.shape, "data_offsets": [at, end] }),
        );
        rel.push((at, end));
        at = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(obj))?;
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let data_start = 8 + json.len() as u64;
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    let abs = rel
        .into_iter()
        .map(|(b, e)| (data_start + b, data_start + e))
        .collect();
    Ok((out, abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_truncation_names_the_tensor() {
        let specs = vec![
            TensorSpec {
                name: "a".into(),
                dtype: "BF16",
                shape: vec![3, 2],
            },
            TensorSpec {
                name: "b".into(),
                dtype: "F8_E8M0",
                shape: vec![5, 8],
            },
        ];
        let (hdr, abs) = encode_header(&specs, &BTreeMap::new()).expect("encodes");
        assert!(hdr.len().is_multiple_of(8));
        let total = abs[1].1;
        let h = ShardHeader::parse(Path::new("s"), &hdr[8..], total).expect("parses");
        assert_eq!(h.tensors["a"].begin, abs[0].0);
        assert_eq!(h.tensors["b"].bytes(), 40);
        let e = ShardHeader::parse(Path::new("s"), &hdr[8..], total - 1).expect_err("short");
        assert!(format!("{e:#}").contains("\"b\""), "{e:#}");
        assert!(format!("{e:#}").contains("truncated"), "{e:#}");
    }

    #[test]
    fn a_shape_that_disagrees_with_the_offsets_is_an_error() {
        let text = br#"{"t":{"dtype":"F8_E4M3","shape":[2,4],"data_offsets":[0,7]}}"#;
        let e = ShardHeader::parse(Path::new("s"), text, 1000).expect_err("bad");
        assert!(format!("{e:#}").contains("\"t\""), "{e:#}");
    }
}
