//! The Rust decoder against the PyTorch reference it was trained with: logits at the
//! recorded positions and the exact greedy continuation, for every committed model whose
//! Engram is off (models with Engram are checked end to end in `tests/`, where their table
//! is built with `engram-build`).

use std::path::{Path, PathBuf};

use moe_core::golden;
use moe_core::session::Session;

fn models() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("golden.json").exists());
    dirs.sort();
    dirs
}

fn tokenizer_available() -> bool {
    engram_kernels::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_some()
}

#[test]
fn models_without_engram_match_pytorch() {
    if !tokenizer_available() {
        return;
    }
    let mut checked = 0;
    for dir in models() {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
                .expect("json");
        if !config["engram"].is_null() {
            continue;
        }
        let mut s = Session::load(&dir, None, None).expect("loads");
        let g = std::fs::read(dir.join("golden.json")).expect("golden");
        for r in golden::check(&mut s, &g).expect("runs") {
            eprintln!("{}: {r:?}", dir.display());
            assert!(r.passed(), "{}: {r:?}", dir.display());
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "no committed model without Engram has a golden file"
    );
}
