//! The fuzz targets' regression run on stable: every committed corpus input
//! (`fuzz/corpus/TARGET/`) and every past crash (`fuzz/regressions/TARGET/`) through the same
//! function the libFuzzer target calls, which panics on a broken invariant.

use std::path::{Path, PathBuf};

/// A fuzz entry point: runs one input, panics on a broken invariant.
type FuzzFn = fn(&[u8]);

/// Each fuzz target and the function it runs (the bins in `fuzz/fuzz_targets/`).
const TARGETS: &[(&str, FuzzFn)] = &[
    ("manifest", engram_store::fuzz::manifest),
    ("layer_header", engram_store::fuzz::layer_header),
    ("profile", engram_store::fuzz::profile),
    ("records", engram_store::fuzz::records),
    ("pipeline_sim", engram_store::fuzz::pipeline_sim),
    ("safetensors_import", engram_tools::fuzz::safetensors_import),
    ("build_config", engram_tools::fuzz::build_config),
    ("vectors_hash", engram_tools::fuzz::vectors_hash),
    ("model_config", moe_core::fuzz::model_config),
    ("sha256sums", engram_files::fuzz::sha256sums),
    ("candidates", engram_store::fuzz::candidates),
    ("service_protocol", engram_server::fuzz::protocol),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_and_crash_input_parses_without_panicking() {
    for (target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        // Every target has committed seeds: an empty corpus means this test checks nothing.
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no inputs");
        let crashes = files(&fuzz_dir().join("regressions").join(target));
        for path in corpus.iter().chain(&crashes) {
            let bytes = std::fs::read(path).expect("readable input");
            let outcome = std::panic::catch_unwind(|| run(&bytes));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        }
    }
}

#[test]
fn every_fuzz_target_is_listed() {
    let mut bins: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    bins.sort();
    let mut listed: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    listed.sort();
    assert_eq!(bins, listed, "fuzz/fuzz_targets and TARGETS differ");
}
