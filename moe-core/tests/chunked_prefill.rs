//! A prompt prefilled in chunks, each chunk's Engram rows requested while the chunk before
//! it computes, gives the logits of the one-pass prefill (and decoding continues the same
//! way after it). Not bit-exact: a chunk's linear layers go through the packed GEMM when
//! they are large enough and single rows do not (another summation order), the same
//! tolerance as decode vs prefill (`golden::DECODE_PREFILL_TOLERANCE`).

mod common;

use std::path::Path;

use common::{model_b_addressing, tokenizer_available, write_table};
use engram_kernels::rng::SplitMix64;
use engram_store::StoreOptions;
use moe_core::golden::DECODE_PREFILL_TOLERANCE;
use moe_core::session::{EngramSource, PrefillPlan, Session};

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Model B with a table of random rows (in the returned directory), so every Engram
/// block's output depends on them (and the short convolution on the positions before,
/// across chunk boundaries); `None` without the tokenizer.
fn session_with_random_rows() -> Option<(tempfile::TempDir, Session, std::path::PathBuf)> {
    if !tokenizer_available() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stdlib-moe-engram-b");
    let table = dir.path().join("table");
    let deepseek = engram_files::tokenizer::DEEPSEEK_TOKENIZER_SHA256;
    write_table(&table, &model_b_addressing(), deepseek, 8, &[], |i| {
        SplitMix64::keyed(&[7, i as u64]).next_f64() as f32 * 2.0 - 1.0
    });
    let source = EngramSource {
        table,
        options: StoreOptions::default(),
        allow_foreign_table: true,
    };
    let s = Session::load(&model, None, Some(&source)).expect("loads");
    Some((dir, s, model))
}

/// The first `n` raw ids of some Python (BOS first).
fn prompt(s: &Session, n: usize) -> Vec<u32> {
    let text = "import os\nimport sys\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        \
                path = os.path.join(root, name)\n        if os.path.isdir(path):\n            \
                yield from walk(path)\n        else:\n            yield path\n";
    let mut raw = s.encode(&text.repeat(n / 40 + 1)).expect("encodes");
    raw.truncate(n);
    assert_eq!(raw.len(), n, "a prompt of {n} positions");
    raw
}

/// Prefills `raw` in each plan of `plans` and compares the logits, and those of the step
/// after, with the one pass's.
fn check_plans(s: &mut Session, raw: &[u32], plans: &[(usize, bool)]) {
    s.set_prefill_plan(PrefillPlan::default());
    let one_pass = s.prefill(raw).expect("prefill").to_vec();
    let next = 17;
    let after = s.step(next).expect("step").to_vec();
    for &(chunk, pipeline) in plans {
        s.set_prefill_plan(PrefillPlan { chunk, pipeline });
        let l = s.prefill(raw).expect("chunked prefill").to_vec();
        let gap = max_gap(&l, &one_pass);
        eprintln!(
            "{} positions, chunk {chunk} pipeline {pipeline}: max |chunked - one pass| = {gap:e}",
            raw.len()
        );
        assert!(gap <= DECODE_PREFILL_TOLERANCE, "chunk {chunk}: {gap}");
        let gap = max_gap(s.step(next).expect("step"), &after);
        assert!(
            gap <= DECODE_PREFILL_TOLERANCE,
            "chunk {chunk}, the step after: {gap}"
        );
    }
}

#[test]
fn chunked_prefill_gives_the_one_pass_logits() {
    let Some((_dir, mut s, model)) = session_with_random_rows() else {
        return;
    };
    let raw = prompt(&s, 200);
    let one_pass = s.prefill(&raw).expect("prefill").to_vec();
    // The rows matter: the same prompt with Engram zeroed gives other logits.
    let mut zeroed = Session::load(&model, None, None).expect("loads");
    let without = zeroed.prefill(&raw).expect("prefill").to_vec();
    assert!(
        max_gap(&one_pass, &without) > 1e-3,
        "the table made no difference"
    );
    check_plans(
        &mut s,
        &raw,
        &[
            (1, true),
            (7, true),
            (64, true),
            (64, false),
            (199, true),
            (200, true),
        ],
    );
}

/// Past the trained context (256 positions, extended for timing), chunks still give the one
/// pass's logits: the chunks' keys and values at positions past 256 are the one pass's.
#[test]
fn chunked_prefill_past_the_trained_context_gives_the_one_pass_logits() {
    let Some((_dir, mut s, _)) = session_with_random_rows() else {
        return;
    };
    let raw = prompt(&s, 300);
    let trained = s.model.config.max_position_embeddings;
    assert_eq!(trained, 256);
    // Refused at the trained context, before any work.
    match s.prefill(&raw) {
        Err(moe_core::Error::ContextFull { len: 300, max: 256 }) => {}
        other => panic!("expected ContextFull, got {other:?}"),
    }
    let e = s.extend_context(320).expect("extends");
    assert!(
        e.extended() && e.trained == 256 && e.positions == 320,
        "{e:?}"
    );
    assert_eq!(s.model.context(), 320);
    check_plans(&mut s, &raw, &[(128, true), (128, false), (37, true)]);
}
