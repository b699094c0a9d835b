//! Corpus -> engram-build -> engram-store -> moe-core decode, end to end: the committed
//! Engram model's table is built from its checkpoint with a profile from a corpus, served
//! by every store backend, and the decoder must reproduce PyTorch's greedy continuation
//! token for token (and its logits within 1e-5), with speculative prefetch on or off.

use std::path::{Path, PathBuf};

use clap::Parser;
use engram_store::{BackendKind, Candidates, Profile, StoreOptions};
use engram_tools::build::{BuildArgs, run};
use moe_core::golden::{self, LOGIT_TOLERANCE};
use moe_core::session::{EngramSource, Session};

#[derive(Debug, Parser)]
struct Build {
    #[command(flatten)]
    args: BuildArgs,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn engram_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo().join("models"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        if dir.join("engram.safetensors").exists() && dir.join("golden.json").exists() {
            out.push(dir);
        }
    }
    out.sort();
    out
}

fn tokenizer_available() -> bool {
    engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_some()
}

#[test]
fn corpus_build_store_decode_matches_pytorch_on_every_backend() {
    if !tokenizer_available() {
        return;
    }
    let models = engram_models();
    assert!(
        !models.is_empty(),
        "no committed Engram model with a golden file under models/"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A small corpus for the profile: the model's own docs and this repo's Python.
    let corpus = repo().join("tools/train");
    for model in models {
        let table = dir.path().join(model.file_name().expect("name"));
        let ckpt = model.join("engram.safetensors");
        let b = Build::parse_from([
            "engram-build",
            corpus.to_str().expect("utf-8"),
            "--include",
            "**/*.py",
            "--import",
            ckpt.to_str().expect("utf-8"),
            "--out",
            table.to_str().expect("utf-8"),
            "--quiet",
        ]);
        run(&b.args).expect("engram-build publishes the table");
        let golden_bytes = std::fs::read(model.join("golden.json")).expect("golden");
        let golden: serde_json::Value = serde_json::from_slice(&golden_bytes).expect("json");
        let profile = Profile::read(&table.join("profile.bin")).expect("profile");
        let candidates = Candidates::read(&table.join("candidates.bin")).expect("candidates");
        for (kind, cache_bytes, speculate) in [
            (BackendKind::Memory, 0, 0),
            (BackendKind::Mmap, 0, 0),
            (BackendKind::Pread, 0, 0),
            (BackendKind::Uring, 0, 0),
            (BackendKind::Uring, 1 << 20, 0),
            (BackendKind::Uring, 1 << 20, 4),
            (BackendKind::Pread, 1 << 20, 4),
        ] {
            if !engram_store::backend::runnable_here(kind).expect("required backend") {
                continue;
            }
            let mut options = StoreOptions {
                cache_bytes,
                profile: (cache_bytes > 0).then(|| profile.clone()),
                ..StoreOptions::default()
            };
            options.backend.kind = Some(kind);
            let source = EngramSource {
                table: table.clone(),
                options,
                allow_foreign_table: false,
            };
            let mut s = Session::load(&model, None, Some(&source)).expect("loads with its table");
            if speculate > 0 {
                s.enable_speculation(candidates.clone(), speculate)
                    .expect("speculation on");
            }
            let label = format!(
                "{} {} cache={cache_bytes} speculate={speculate}",
                model.display(),
                s.memory
                    .as_ref()
                    .map_or("-".to_string(), |m| m.store().backend_name())
            );
            for r in golden::check(&mut s, &golden_bytes).expect("runs") {
                eprintln!("{label}: {r:?}");
                assert!(r.passed(), "{label}: {r:?}");
            }
            if speculate > 0 {
                // Speculation ran: the same tokens came out while rows were read ahead.
                let sp = s.speculation_stats().expect("enabled");
                let st = s
                    .memory
                    .as_ref()
                    .expect("memory")
                    .store()
                    .stats()
                    .expect("stats");
                eprintln!("{label}: {sp:?}, {} speculations", st.spec_batches);
                assert!(sp.positions > 0 && sp.rows_offered > 0, "{label}: {sp:?}");
                assert!(sp.predicted > 0, "{label}: no position had a candidate");
            }
            if kind == BackendKind::Memory {
                // Decode with Engram rows (conv state, per-stream gates) equals prefill.
                let p = &golden["prompts"][0];
                let raw: Vec<u32> = serde_json::from_value(p["raw_ids"].clone()).expect("ids");
                let cont: Vec<u32> =
                    serde_json::from_value(p["greedy_reduced_ids"].clone()).expect("ids");
                let gap = golden::decode_prefill_gap(&mut s, &raw, &cont).expect("runs");
                eprintln!("{label}: max |decode - prefill| = {gap:e}");
                assert!(gap <= golden::DECODE_PREFILL_TOLERANCE, "{label}: {gap}");
            }
        }
        // The rows matter: with Engram off the same model misses PyTorch's logits by far
        // more than the tolerance, so the match above is not an accident of small gates.
        let mut off = Session::load(&model, None, None).expect("loads without Engram");
        let p = &golden["prompts"][0];
        let raw: Vec<u32> = serde_json::from_value(p["raw_ids"].clone()).expect("raw ids");
        off.prefill_all(&raw).expect("prefill");
        let pos = p["logit_positions"][0].as_u64().expect("position") as usize;
        let want: Vec<f32> = serde_json::from_value(p["logits"][0].clone()).expect("logits");
        let diff = off
            .model
            .logits(&off.state, pos)
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff > 100.0 * LOGIT_TOLERANCE,
            "Engram off changes the logits by only {diff}"
        );
        eprintln!(
            "{}: Engram off moves the logits by up to {diff:.3}",
            model.display()
        );
    }
}
