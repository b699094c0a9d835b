//! The Rust decoder against the PyTorch reference it was trained with: logits at the
//! recorded positions (max abs error) and the exact greedy continuation, for every committed
//! model whose Engram is off (models with Engram are checked end to end in `tests/`, where
//! their table is built with `engram-build`).

use std::path::{Path, PathBuf};

use moe_core::sampler::{Sampler, SamplerConfig};
use moe_core::session::Session;

/// Largest |rust - torch| allowed on a logit (both f32 from the same bf16-widened weights).
pub const LOGIT_TOLERANCE: f32 = 1e-4;

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
    match engram_kernels::tokenizer::resolve_path(None) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("ENGRAM_REQUIRE_TOKENIZER").is_none(),
                "ENGRAM_REQUIRE_TOKENIZER is set but: {e}"
            );
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// Checks one model against its golden file; `session` decides whether Engram is on.
pub fn check_golden(session: &mut Session, golden: &serde_json::Value) {
    for p in golden["prompts"].as_array().expect("prompts") {
        let name = p["name"].as_str().unwrap_or("?");
        let raw: Vec<u32> = serde_json::from_value(p["raw_ids"].clone()).expect("raw ids");
        let want_ids: Vec<u32> =
            serde_json::from_value(p["greedy_reduced_ids"].clone()).expect("greedy ids");
        session.prefill_all(&raw).expect("prefill");
        let positions: Vec<usize> =
            serde_json::from_value(p["logit_positions"].clone()).expect("positions");
        let mut worst = 0f32;
        for (i, &pos) in positions.iter().enumerate() {
            if pos >= raw.len() {
                continue;
            }
            let want: Vec<f32> = serde_json::from_value(p["logits"][i].clone()).expect("logits");
            let got = session.model.logits(&session.state, pos);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                worst = worst.max((g - w).abs());
            }
        }
        assert!(
            worst <= LOGIT_TOLERANCE,
            "{name}: max |logit error| {worst}"
        );
        let mut sampler = Sampler::new(
            SamplerConfig::default(),
            session.vocab.unk(),
            session.model.config.vocab_size,
        )
        .expect("greedy");
        let mut next = sampler.sample(session.model.logits(&session.state, raw.len() - 1));
        let mut got_ids = vec![next];
        while got_ids.len() < want_ids.len() {
            next = sampler.sample(session.step(next).expect("step"));
            got_ids.push(next);
        }
        assert_eq!(got_ids, want_ids, "{name}: greedy continuation differs");
        eprintln!(
            "{name}: max |logit error| {worst:.2e}, {} greedy tokens equal",
            got_ids.len()
        );
    }
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
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).expect("golden"))
                .expect("json");
        let mut s = Session::load(&dir, None, None).expect("loads");
        check_golden(&mut s, &golden);
        checked += 1;
    }
    assert!(
        checked > 0,
        "no committed model without Engram has a golden file"
    );
}
