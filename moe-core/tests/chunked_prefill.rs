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

#[test]
fn chunked_prefill_gives_the_one_pass_logits() {
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stdlib-moe-engram-b");
    // Rows of random values, so every Engram block's output depends on them (and the short
    // convolution on the positions before, across chunk boundaries).
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
    let mut s = Session::load(&model, None, Some(&source)).expect("loads");
    let text = "import os\nimport sys\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        \
                path = os.path.join(root, name)\n        if os.path.isdir(path):\n            \
                yield from walk(path)\n        else:\n            yield path\n";
    let mut raw = s.encode(&text.repeat(4)).expect("encodes");
    raw.truncate(200);
    assert_eq!(raw.len(), 200, "a prompt of 200 positions");
    let one_pass = s.prefill(&raw).expect("prefill").to_vec();
    let next = 17;
    let after = s.step(next).expect("step").to_vec();
    // The rows matter: the same prompt with Engram zeroed gives other logits.
    let mut zeroed = Session::load(&model, None, None).expect("loads");
    let without = zeroed.prefill(&raw).expect("prefill").to_vec();
    assert!(
        max_gap(&one_pass, &without) > 1e-3,
        "the table made no difference"
    );
    for (chunk, pipeline) in [
        (1, true),
        (7, true),
        (64, true),
        (64, false),
        (199, true),
        (200, true),
    ] {
        s.set_prefill_plan(PrefillPlan { chunk, pipeline });
        let l = s.prefill(&raw).expect("chunked prefill").to_vec();
        let gap = max_gap(&l, &one_pass);
        eprintln!("chunk {chunk} pipeline {pipeline}: max |chunked - one pass| = {gap:e}");
        assert!(gap <= DECODE_PREFILL_TOLERANCE, "chunk {chunk}: {gap}");
        let gap = max_gap(s.step(next).expect("step"), &after);
        assert!(
            gap <= DECODE_PREFILL_TOLERANCE,
            "chunk {chunk}, the step after: {gap}"
        );
    }
}
