//! The Rust decoder against the PyTorch reference it was trained with: logits at the
//! recorded positions and the exact greedy continuation, for every committed model
//! without Engram (models with Engram are checked end to end in `tests/`, where their
//! table is built with `engram-build`); and, for every committed model, decoding one token
//! at a time gives the logits of a prefill of the whole sequence.

mod common;

use std::path::PathBuf;

use common::{committed_models, tokenizer_available};
use moe_core::golden;
use moe_core::session::Session;

fn models() -> Vec<PathBuf> {
    let mut dirs = committed_models();
    dirs.retain(|d| d.join("golden.json").exists());
    dirs
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

#[test]
fn decoding_token_by_token_equals_prefill() {
    if !tokenizer_available() {
        return;
    }
    let mut checked = 0;
    for dir in models() {
        let g: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).expect("golden"))
                .expect("json");
        // Engram off here (no table): the residual streams, attention and the MoE are
        // what decode and prefill must agree on; tests/ checks it with Engram rows. The
        // first prompt only: debug-mode decoding is slow, and the golden checks already
        // run every prompt's greedy continuation through `step`.
        let mut s = Session::load(&dir, None, None).expect("loads");
        let p = &g["prompts"][0];
        let raw: Vec<u32> = serde_json::from_value(p["raw_ids"].clone()).expect("raw ids");
        let cont: Vec<u32> =
            serde_json::from_value(p["greedy_reduced_ids"].clone()).expect("greedy ids");
        let gap = golden::decode_prefill_gap(&mut s, &raw, &cont).expect("runs");
        eprintln!(
            "{} {}: max |decode - prefill| = {gap:e}",
            dir.display(),
            p["name"]
        );
        assert!(
            gap <= golden::DECODE_PREFILL_TOLERANCE,
            "{} {}: decode differs from prefill by {gap}",
            dir.display(),
            p["name"]
        );
        checked += 1;
    }
    assert!(checked > 0, "no committed model has a golden file");
}
