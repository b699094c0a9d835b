//! Row values: deterministic normal initialisation, zeros, or rows imported from a
//! safetensors checkpoint; encoded to the table's row layout in chunks, so a table of any
//! size streams through a fixed buffer.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use engram_files::file::{FileError, Limit, Sha256Sums, read_regular, sha256_hex};
use engram_kernels::quant::quantize_rows;
use engram_kernels::rng::SplitMix64;
use engram_store::format::RowLayout;
use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use engram_kernels::EngramConfig;

use super::config::{FileConfig, Init};

/// Rows produced and encoded per chunk.
pub const CHUNK_ROWS: u64 = 8192;

/// Row `row` of layer `layer_id` under `--init normal:STD` with hash seed `seed`:
/// Box-Muller over a SplitMix64 stream keyed by (seed, layer id, row). Any row can be
/// regenerated on its own, which is how tables are spot-checked.
pub fn normal_row(seed: u64, layer_id: u64, row: u64, std: f32, out: &mut [f32]) {
    let mut rng = SplitMix64::keyed(&[seed, layer_id, row]);
    for pair in out.chunks_mut(2) {
        // u1 in (0, 1] so the log is finite.
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        pair[0] = (r * theta.cos()) as f32 * std;
        if let Some(second) = pair.get_mut(1) {
            *second = (r * theta.sin()) as f32 * std;
        }
    }
}

/// Largest checkpoint file accepted for import (read whole; a V4.1-size table is ~200 GB
/// and is imported from several files).
pub const MAX_CHECKPOINT_BYTES: Limit = Limit {
    what: "checkpoint",
    name: "MAX_CHECKPOINT_BYTES",
    bytes: 64 << 30,
};

/// The imported checkpoints, read once.
#[derive(Debug)]
pub struct Checkpoints {
    files: Vec<(PathBuf, Vec<u8>)>,
    // SHA-256 of each file, lower-case hex, in `files` order
    sha256: Vec<String>,
}

/// Where one layer's imported rows live.
#[derive(Debug, Clone)]
struct TensorRef {
    file: usize,
    name: String,
}

impl Checkpoints {
    /// Reads every file (a checkpoint of the sizes handled here fits in memory) and its
    /// SHA-256. A file listed in a `SHA256SUMS` beside it must match it (a model directory
    /// exported by `tools/train` has one), so a corrupted checkpoint never becomes a table.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut sha256 = Vec::with_capacity(paths.len());
        for p in paths {
            let bytes = read_regular(p, MAX_CHECKPOINT_BYTES)?;
            let sums_path = Sha256Sums::beside(p);
            let listed = match Sha256Sums::read(&sums_path) {
                Ok(sums) => p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| sums.get(n))
                    .is_some()
                    .then_some(sums),
                Err(FileError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(e) => return Err(e.into()),
            };
            let sha = match listed {
                Some(sums) => sums.check(p, &bytes)?,
                None => sha256_hex(&bytes),
            };
            files.push((p.clone(), bytes));
            sha256.push(sha);
        }
        Self::from_files(files, sha256)
    }

    /// Checkpoints already read: `(path, bytes)` of each file and its SHA-256 (lower-case
    /// hex), in the same order. Every file must be safetensors.
    pub fn from_files(files: Vec<(PathBuf, Vec<u8>)>, sha256: Vec<String>) -> Result<Self> {
        ensure!(
            files.len() == sha256.len(),
            "{} checkpoint files but {} SHA-256 sums",
            files.len(),
            sha256.len()
        );
        for (p, bytes) in &files {
            SafeTensors::deserialize(bytes)
                .with_context(|| format!("{} is not a safetensors file", p.display()))?;
        }
        Ok(Self { files, sha256 })
    }

    /// SHA-256 of each file, lower-case hex, in the order given (recorded in the manifest
    /// as `build.checkpoint_sha256`).
    pub fn sha256(&self) -> &[String] {
        &self.sha256
    }

    /// Every `__metadata__` entry of every file.
    pub fn metadata(&self) -> Result<Vec<(PathBuf, HashMap<String, String>)>> {
        self.files
            .iter()
            .map(|(p, bytes)| {
                let (_, meta) = SafeTensors::read_metadata(bytes)
                    .with_context(|| format!("reading metadata of {}", p.display()))?;
                Ok((p.clone(), meta.metadata().clone().unwrap_or_default()))
            })
            .collect()
    }

    fn find(&self, name: &str) -> Result<TensorRef> {
        let mut found = None;
        for (i, (p, bytes)) in self.files.iter().enumerate() {
            let st = SafeTensors::deserialize(bytes)
                .with_context(|| format!("{} is not a safetensors file", p.display()))?;
            if st.names().contains(&name) {
                ensure!(
                    found.is_none(),
                    "tensor {name:?} is in more than one checkpoint file"
                );
                found = Some(TensorRef {
                    file: i,
                    name: name.to_owned(),
                });
            }
        }
        found.with_context(|| {
            let files: Vec<_> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            format!(
                "tensor {name:?} is not in the checkpoint ({})",
                files.join(", ")
            )
        })
    }
}

/// Produces the f32 values of rows `first..first + count` of one layer.
#[derive(Debug)]
pub enum RowValues<'a> {
    /// N(0, std^2) per row, keyed on (seed, layer id, row).
    Normal {
        /// The build's seed.
        seed: u64,
        /// The layer's id.
        layer_id: u64,
        /// Standard deviation.
        std: f32,
    },
    /// All zeros.
    Zeros,
    /// Rows of a checkpoint tensor, converted to f32.
    Imported {
        /// The layer's tensor (`[rows, dim]`).
        view: safetensors::tensor::TensorView<'a>,
    },
}

impl<'a> RowValues<'a> {
    /// The source for one layer; an imported tensor must be `[rows, dim]` of a float dtype.
    pub fn for_layer(
        init: &Init,
        checkpoints: Option<&'a Checkpoints>,
        seed: u64,
        layer_id: u64,
        rows: u64,
        dim: u32,
    ) -> Result<Self> {
        match init {
            Init::Normal { std } => Ok(RowValues::Normal {
                seed,
                layer_id,
                std: *std,
            }),
            Init::Zeros => Ok(RowValues::Zeros),
            Init::Checkpoint { path, .. } => bail!(
                "rows of checkpoint directory {} are streamed by the FP8 importer, not \
                 produced one by one (records and re-quantisation do not apply to them)",
                path.display()
            ),
            Init::Import { pattern, .. } => {
                let Some(ckpt) = checkpoints else {
                    bail!("import requested but no checkpoint is open")
                };
                let name = pattern.replace("{layer}", &layer_id.to_string());
                let tref = ckpt.find(&name)?;
                let (path, bytes) = &ckpt.files[tref.file];
                let st = SafeTensors::deserialize(bytes)
                    .with_context(|| format!("{} is not a safetensors file", path.display()))?;
                let view = st
                    .tensor(&tref.name)
                    .with_context(|| format!("reading {name:?} from {}", path.display()))?;
                let want = [rows as usize, dim as usize];
                ensure!(
                    view.shape() == want,
                    "tensor {name:?} in {} has shape {:?}, the table layout needs {want:?} \
                     (layer {layer_id}: rows = sum of its primes, dim = values per row)",
                    path.display(),
                    view.shape()
                );
                ensure!(
                    matches!(view.dtype(), Dtype::F32 | Dtype::BF16 | Dtype::F16),
                    "tensor {name:?} has dtype {:?}; import needs F32, BF16 or F16",
                    view.dtype()
                );
                Ok(RowValues::Imported { view })
            }
        }
    }

    /// Encodes rows `first..` into `out` (whole rows of `layout`), `CHUNK_ROWS` rows per
    /// task on the current rayon pool.
    pub fn encode_rows(
        &self,
        first: u64,
        dim: usize,
        layout: RowLayout,
        out: &mut [u8],
    ) -> Result<()> {
        let row_bytes = usize::try_from(engram_store::format::row_bytes(
            layout,
            u32::try_from(dim)?,
        )?)?;
        ensure!(
            row_bytes > 0 && out.len().is_multiple_of(row_bytes),
            "row buffer of {} bytes is not whole rows of {row_bytes}",
            out.len()
        );
        out.par_chunks_mut(CHUNK_ROWS as usize * row_bytes)
            .enumerate()
            .try_for_each_init(
                || vec![0f32; CHUNK_ROWS as usize * dim],
                |vals, (i, bytes)| {
                    let n = bytes.len() / row_bytes;
                    let vals = &mut vals[..n * dim];
                    self.fill(first + (i as u64) * CHUNK_ROWS, dim, vals)?;
                    encode(layout, dim, vals, bytes)
                },
            )
    }

    /// Fills `out` (`count * dim` values) with rows `first..first + count`.
    pub fn fill(&self, first: u64, dim: usize, out: &mut [f32]) -> Result<()> {
        match self {
            RowValues::Zeros => out.fill(0.0),
            RowValues::Normal {
                seed,
                layer_id,
                std,
            } => {
                for (i, row) in out.chunks_exact_mut(dim).enumerate() {
                    normal_row(*seed, *layer_id, first + i as u64, *std, row);
                }
            }
            RowValues::Imported { view } => {
                let data = view.data();
                let width = match view.dtype() {
                    Dtype::F32 => 4,
                    _ => 2,
                };
                let start = first as usize * dim * width;
                let src = data
                    .get(start..start + out.len() * width)
                    .context("checkpoint tensor shorter than its shape")?;
                for (o, b) in out.iter_mut().zip(src.chunks_exact(width)) {
                    *o = match view.dtype() {
                        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        Dtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                        _ => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    };
                }
                if let Some(i) = out.iter().position(|x| !x.is_finite()) {
                    bail!(
                        "checkpoint row {} has a non-finite value at column {}",
                        first + (i / dim) as u64,
                        i % dim
                    );
                }
            }
        }
        Ok(())
    }
}

/// Encodes `values` (`rows * dim` f32) into `out` in the table's row layout.
pub fn encode(layout: RowLayout, dim: usize, values: &[f32], out: &mut [u8]) -> Result<()> {
    quantize_rows(layout, dim, values, out)?;
    Ok(())
}

/// Reads a checkpoint's declared tokenizer fingerprint, if any `__metadata__` value is a JSON
/// object with a `tokenizer_sha256` field (or the key itself is `tokenizer_sha256`).
pub fn declared_tokenizer(meta: &HashMap<String, String>) -> Option<String> {
    if let Some(v) = meta.get("tokenizer_sha256") {
        return Some(v.clone());
    }
    meta.values().find_map(|v| {
        serde_json::from_str::<serde_json::Value>(v)
            .ok()?
            .get("tokenizer_sha256")?
            .as_str()
            .map(str::to_owned)
    })
}

/// The addressing a checkpoint declares in its metadata (any `__metadata__` value that is a
/// JSON object with `layer_ids`), as config defaults: the checkpoint's rows are only valid
/// under the addressing they were trained with.
pub fn declared_config(ckpt: &Checkpoints) -> Result<Option<FileConfig>> {
    for (path, meta) in ckpt.metadata()? {
        for v in meta.values() {
            let Ok(j) = serde_json::from_str::<serde_json::Value>(v) else {
                continue;
            };
            if j.get("layer_ids").is_none() {
                continue;
            }
            let get_u = |k: &str| j.get(k).and_then(serde_json::Value::as_u64);
            let list = |k: &str| {
                j.get(k)
                    .and_then(|v| serde_json::from_value::<Vec<u64>>(v.clone()).ok())
            };
            let row_layout = match j.get("dtype").and_then(|d| d.as_str()) {
                Some("bfloat16" | "bf16") => Some("bf16".to_owned()),
                Some("float16" | "f16") => Some("f16".to_owned()),
                Some("float32" | "f32") => Some("f32".to_owned()),
                _ => None,
            };
            let cfg = FileConfig {
                max_ngram: get_u("max_ngram").map(|n| n as usize),
                heads: get_u("n_heads").map(|n| n as usize),
                base_sizes: list("base_sizes"),
                layers: list("layer_ids"),
                seed: get_u("seed"),
                pad_id: j.get("pad_id").and_then(serde_json::Value::as_i64),
                dim: get_u("head_dim").and_then(|d| u32::try_from(d).ok()),
                row_layout,
                ..FileConfig::default()
            };
            tracing::info!(path = %path.display(), "using the addressing the checkpoint declares");
            return Ok(Some(cfg));
        }
    }
    Ok(None)
}

/// Fails when the build's addressing contradicts what the checkpoint declares.
pub fn check_checkpoint_config(declared: &FileConfig, plan: &EngramConfig, dim: u32) -> Result<()> {
    let mut diffs = Vec::new();
    let mut cmp = |name: &str, d: Option<String>, p: String| {
        if let Some(d) = d.filter(|d| *d != p) {
            diffs.push(format!("{name}: checkpoint {d}, build {p}"));
        }
    };
    cmp(
        "max_ngram",
        declared.max_ngram.map(|v| v.to_string()),
        plan.max_ngram.to_string(),
    );
    cmp(
        "heads",
        declared.heads.map(|v| v.to_string()),
        plan.n_heads.to_string(),
    );
    cmp(
        "base_sizes",
        declared.base_sizes.as_ref().map(|v| format!("{v:?}")),
        format!("{:?}", plan.base_sizes),
    );
    cmp(
        "layers",
        declared.layers.as_ref().map(|v| format!("{v:?}")),
        format!("{:?}", plan.layer_ids),
    );
    cmp(
        "seed",
        declared.seed.map(|v| v.to_string()),
        plan.seed.to_string(),
    );
    cmp(
        "pad_id",
        declared.pad_id.map(|v| v.to_string()),
        plan.pad_id.to_string(),
    );
    cmp("dim", declared.dim.map(|v| v.to_string()), dim.to_string());
    if diffs.is_empty() {
        Ok(())
    } else {
        bail!(
            "the build's addressing contradicts the checkpoint's ({}); its rows are only valid              under the addressing they were trained with",
            diffs.join("; ")
        )
    }
}

/// Checks an imported checkpoint against the build: its declared tokenizer must be the one
/// the table is addressed with.
pub fn check_checkpoint_tokenizer(ckpt: &Checkpoints, tokenizer_sha256: &str) -> Result<()> {
    for (path, meta) in ckpt.metadata()? {
        match declared_tokenizer(&meta) {
            Some(sha) if sha.eq_ignore_ascii_case(tokenizer_sha256) => {}
            Some(sha) => bail!(
                "checkpoint {} was trained with tokenizer {sha}, but this build uses {tokenizer_sha256}: \
                 its rows would be addressed by different hashes (pass the checkpoint's tokenizer with --tokenizer)",
                path.display()
            ),
            None => tracing::warn!(
                path = %path.display(),
                "checkpoint declares no tokenizer_sha256; cannot check it matches the build's tokenizer"
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_rows_are_deterministic_and_normal() {
        let mut a = vec![0f32; 4096];
        let mut b = vec![0f32; 4096];
        normal_row(7, 1, 123, 0.5, &mut a);
        normal_row(7, 1, 123, 0.5, &mut b);
        assert_eq!(a, b);
        normal_row(7, 1, 124, 0.5, &mut b);
        assert_ne!(a, b);
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.05, "std {}", var.sqrt());
    }
}
