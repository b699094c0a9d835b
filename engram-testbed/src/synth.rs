//! Synthetic tables: real manifests and checksums, deterministic pseudo-random rows. For
//! benchmarks and tests (`engram synth`).

use std::path::Path;

use engram_kernels::{EngramConfig, EngramLayout, Preset};

use engram_kernels::rng::SplitMix64;
use engram_store::format::{BuildInfo, Manifest, RowLayout};
use engram_store::{Error, Result, TableWriter};

/// SHA-256 recorded by synthetic tables built for the DeepSeek tokenizer shape.
pub const SYNTH_TOKENIZER_SHA256: &str = engram_files::tokenizer::DEEPSEEK_TOKENIZER_SHA256;
/// `V'` of the DeepSeek tokenizer, used by synthetic tables.
pub const SYNTH_COMPRESSED_VOCAB: u64 = 99_092;
/// Rows generated per write call.
const SYNTH_CHUNK_ROWS: usize = 4096;

/// One SplitMix64 step from state `z`.
#[inline]
fn splitmix(z: u64) -> u64 {
    SplitMix64(z).next_u64()
}

/// The bytes of synthetic row `row` of layer index `layer` (deterministic in all inputs).
pub fn synth_row(seed: u64, layer: usize, row: u64, out: &mut [u8]) {
    let mut s = splitmix(seed ^ ((layer as u64) << 56) ^ row.wrapping_mul(0xA24B_AED4_963E_E407));
    for chunk in out.chunks_mut(8) {
        s = splitmix(s);
        let bytes = s.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// What to synthesize.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// The addressing config (layers, orders, heads, base sizes).
    pub config: EngramConfig,
    /// How each row's values are stored.
    pub row_layout: RowLayout,
    /// Values per row.
    pub dim: u32,
    /// Seed of the row bytes ([`synth_row`]).
    pub seed: u64,
    /// Checksum block size in bytes (`None`: one packing unit per block).
    pub block_bytes: Option<u64>,
}

impl SynthSpec {
    /// A published shape with every base size replaced by `base_size` (if given).
    pub fn preset(name: &str, base_size: Option<u64>, seed: u64) -> Result<Self> {
        let preset = name.parse::<Preset>().map_err(|e| Error::Invalid {
            what: "preset",
            reason: e.to_string(),
        })?;
        let mut config = preset.config();
        if let Some(s) = base_size {
            config.base_sizes = vec![s; config.base_sizes.len()];
        }
        let (row_layout, dim) = preset.row_format();
        Ok(Self {
            config,
            row_layout,
            dim,
            seed,
            block_bytes: None,
        })
    }

    /// The manifest this spec writes (before file fields are filled in).
    pub fn manifest(&self) -> Result<Manifest> {
        let layout = EngramLayout::new(&self.config, SYNTH_COMPRESSED_VOCAB, 2).map_err(|e| {
            Error::Invalid {
                what: "config",
                reason: e.to_string(),
            }
        })?;
        Manifest::new(
            &layout,
            SYNTH_TOKENIZER_SHA256,
            self.row_layout,
            self.dim,
            self.block_bytes,
            BuildInfo {
                tool: format!("engram-store {}", env!("CARGO_PKG_VERSION")),
                created_unix: 0,
                source: format!("synthetic seed={}", self.seed),
                notes: String::new(),
                checkpoint_sha256: Vec::new(),
            },
        )
    }
}

/// Writes a synthetic table to `dir`; `progress(layer_index, rows_done, rows_total)` is
/// called after every chunk.
pub fn write_synth(
    dir: &Path,
    spec: &SynthSpec,
    force: bool,
    progress: impl FnMut(usize, u64, u64),
) -> Result<Manifest> {
    let manifest = spec.manifest()?;
    let mut w = TableWriter::create(dir, &manifest, force)?;
    write_synth_rows(&mut w, spec, progress)?;
    w.finish()
}

/// Streams every row of `spec` into `w` (created with `spec.manifest()`), leaving it to
/// the caller to add files and finish.
pub fn write_synth_rows(
    w: &mut TableWriter,
    spec: &SynthSpec,
    mut progress: impl FnMut(usize, u64, u64),
) -> Result<()> {
    let rb = w.manifest().row_bytes as usize;
    let layer_rows: Vec<u64> = w.manifest().layers.iter().map(|l| l.rows).collect();
    let mut buf = vec![0u8; rb * SYNTH_CHUNK_ROWS];
    for (li, rows) in layer_rows.into_iter().enumerate() {
        let mut row = 0u64;
        while row < rows {
            let n = (rows - row).min(SYNTH_CHUNK_ROWS as u64) as usize;
            for (k, out) in buf[..n * rb].chunks_exact_mut(rb).enumerate() {
                synth_row(spec.seed, li, row + k as u64, out);
            }
            w.write_layer_rows(li, &buf[..n * rb])?;
            row += n as u64;
            progress(li, row, rows);
        }
    }
    Ok(())
}
