//! Helpers shared by this crate's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use engram_kernels::{EngramConfig, EngramLayout};
use engram_store::{BuildInfo, Manifest, RowLayout, TableWriter};

/// Whether the DeepSeek tokenizer is present (tests that need it return early otherwise,
/// unless `ENGRAM_REQUIRE_TOKENIZER` is set, which makes its absence a failure).
pub fn tokenizer_available() -> bool {
    engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_some()
}

/// The committed model directories under `models/`, sorted.
pub fn committed_models() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("config.json").exists());
    dirs.sort();
    dirs
}

/// The addressing of the committed model `stdlib-moe-engram-b` (its config.json).
pub fn model_b_addressing() -> EngramConfig {
    EngramConfig {
        max_ngram: 3,
        n_heads: 4,
        base_sizes: vec![4967, 4967],
        layer_ids: vec![1],
        seed: 0,
        pad_id: 2,
    }
}

/// Publishes a bf16 table of zero rows (`dim` values each) with `config`'s addressing at
/// `dir`: the shape a model's table must have, without its values. `checkpoint` is the
/// SHA-256 list the manifest records as the checkpoint it was imported from.
pub fn write_zero_table(
    dir: &Path,
    config: &EngramConfig,
    tokenizer_sha256: &str,
    dim: u32,
    checkpoint: &[&str],
) {
    write_table(dir, config, tokenizer_sha256, dim, checkpoint, |_| 0.0);
}

/// [`write_zero_table`] with value `i` of each layer's rows (row-major) set to `value(i)`.
pub fn write_table(
    dir: &Path,
    config: &EngramConfig,
    tokenizer_sha256: &str,
    dim: u32,
    checkpoint: &[&str],
    value: impl Fn(usize) -> f32,
) {
    let layout = EngramLayout::new(config, 99_092, 2).expect("valid");
    let manifest = Manifest::new(
        &layout,
        tokenizer_sha256,
        RowLayout::Bf16,
        dim,
        None,
        BuildInfo {
            checkpoint_sha256: checkpoint.iter().map(|s| (*s).to_owned()).collect(),
            ..BuildInfo::default()
        },
    )
    .expect("manifest");
    let mut w = TableWriter::create(dir, &manifest, false).expect("writer");
    for (i, l) in layout.layers.iter().enumerate() {
        let n = l.total_rows as usize * dim as usize;
        // bf16: the high half of an f32.
        let bytes: Vec<u8> = (0..n)
            .flat_map(|j| ((value(j).to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        w.write_layer_rows(i, &bytes).expect("rows");
    }
    w.finish().expect("publishes");
}
