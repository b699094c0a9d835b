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
        w.write_layer_rows(i, &vec![0u8; l.total_rows as usize * dim as usize * 2])
            .expect("rows");
    }
    w.finish().expect("publishes");
}
