//! The `engram-forward-v1` conformance vectors: every intermediate and the output, on the
//! naive reference, the fast CPU path, step-by-step decode, and (when a device and driver
//! are present) CUDA; plus end to end from raw token ids through compression and hashing.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Case, TOL, assert_close, forward_files};
use engram_kernels::cpu::{self, SimdLevel};
use engram_kernels::gather::row_ids_from_i64;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::{
    CompressionTable, EngramConfig, EngramLayout, EngramModule, ForwardTrace, RowLayout,
    gather_rows, reference,
};

fn gather_e(case: &Case) -> Vec<f32> {
    let table = case.f32s("multi_head_embedding.embedding.weight");
    let width = case.usize("head_dim");
    let bytes: Vec<u8> = table.iter().flat_map(|x| x.to_le_bytes()).collect();
    let ids = row_ids_from_i64(case.i64s("input.row_ids")).unwrap();
    let mut e = vec![0f32; ids.len() * width];
    gather_rows(RowLayout::F32, width, &bytes, &ids, &mut e).unwrap();
    e
}

fn check_trace(case: &Case, label: &str, tr: &ForwardTrace) -> f64 {
    let mut worst = 0f64;
    for (name, got) in [
        ("v", &tr.v),
        ("k", &tr.k),
        ("k_normed", &tr.k_normed),
        ("q_normed", &tr.q_normed),
        ("s", &tr.s),
        ("gate_logit", &tr.gate_logit),
        ("alpha", &tr.alpha),
        ("u", &tr.u),
        ("conv_in_normed", &tr.conv_in_normed),
        ("conv_pre_act", &tr.conv_pre_act),
        ("conv_out", &tr.conv_out),
        ("y", &tr.y),
    ] {
        let what = format!("case {} {label} expected.{name}", case.name);
        worst = worst.max(assert_close(
            &what,
            got,
            case.f32s(&format!("expected.{name}")),
            TOL,
        ));
    }
    worst
}

#[test]
fn gather_is_exact() {
    for path in forward_files() {
        let case = Case::load(&path);
        assert_eq!(
            gather_e(&case),
            case.f32s("expected.e"),
            "case {}",
            case.name
        );
    }
}

#[test]
fn reference_matches_vectors() {
    for path in forward_files() {
        let case = Case::load(&path);
        let (cfg, w) = case.module();
        let (b, t) = case.batch_seq();
        let e = gather_e(&case);
        let tr = reference::engram_forward(&cfg, &w, &e, case.f32s("input.hidden_states"), b, t);
        let worst = check_trace(&case, "reference", &tr);
        println!("case {}: reference worst measure {worst:.2e}", case.name);
    }
}

#[test]
fn fast_cpu_matches_vectors() {
    // Every SIMD level this CPU has (the override is process-wide; all levels agree to
    // rounding, so other tests running meanwhile are unaffected).
    for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
        if !cpu::supported(level) {
            engram_kernels::skip::skipped(&format!(
                "SIMD level {} is not supported by this CPU",
                level.name()
            ));
            continue;
        }
        cpu::set_level(Some(level)).unwrap();
        fast_cpu_matches_vectors_at_current_level();
    }
    cpu::set_level(None).unwrap();
}

fn fast_cpu_matches_vectors_at_current_level() {
    for path in forward_files() {
        let case = Case::load(&path);
        let (cfg, w) = case.module();
        let (b, t) = case.batch_seq();
        let module = EngramModule::new(cfg, w).unwrap();
        let e = gather_e(&case);
        let hidden = case.f32s("input.hidden_states");
        let tr = module.forward_prefill_traced(&e, hidden, b, t).unwrap();
        let worst = check_trace(&case, "fast cpu (traced)", &tr);
        let mut y = vec![0f32; hidden.len()];
        module
            .forward_prefill(&e, hidden, b, t, &mut y, None)
            .unwrap();
        assert_close("fast cpu y", &y, case.f32s("expected.y"), TOL);
        // Reused scratch, larger first: same result.
        let mut scratch = engram_kernels::PrefillScratch::default();
        let mut big = e.clone();
        big.extend_from_slice(&e);
        let mut big_h = hidden.to_vec();
        big_h.extend_from_slice(hidden);
        let mut y2 = vec![0f32; 2 * hidden.len()];
        module
            .forward_prefill_with(&big, &big_h, 2 * b, t, &mut y2, None, &mut scratch)
            .unwrap();
        module
            .forward_prefill_with(&e, hidden, b, t, &mut y, None, &mut scratch)
            .unwrap();
        assert_close("fast cpu y (scratch)", &y, case.f32s("expected.y"), TOL);
        assert_close(
            "fast cpu y (doubled batch)",
            &y2[..y.len()],
            case.f32s("expected.y"),
            TOL,
        );
        println!(
            "case {}: fast cpu ({}) worst measure {worst:.2e}",
            case.name,
            cpu::level().name()
        );
    }
}

#[test]
fn decode_step_by_step_equals_prefill() {
    for path in forward_files() {
        let case = Case::load(&path);
        let (cfg, w) = case.module();
        let (batch, seq) = case.batch_seq();
        let module = EngramModule::new(cfg, w).unwrap();
        let e = gather_e(&case);
        let hidden = case.f32s("input.hidden_states");
        let (dm, ch) = (cfg.d_mem, cfg.channels());
        let mut y_pre = vec![0f32; hidden.len()];
        module
            .forward_prefill(&e, hidden, batch, seq, &mut y_pre, None)
            .unwrap();
        let mut states: Vec<_> = (0..batch).map(|_| module.new_state().unwrap()).collect();
        let mut scratch = module.decode_scratch(batch);
        let mut y_dec = vec![0f32; hidden.len()];
        let mut e_t = vec![0f32; batch * dm];
        let mut h_t = vec![0f32; batch * ch];
        let mut y_t = vec![0f32; batch * ch];
        for t in 0..seq {
            for b in 0..batch {
                let tok = b * seq + t;
                e_t[b * dm..(b + 1) * dm].copy_from_slice(&e[tok * dm..(tok + 1) * dm]);
                h_t[b * ch..(b + 1) * ch].copy_from_slice(&hidden[tok * ch..(tok + 1) * ch]);
            }
            module
                .forward_decode(&e_t, &h_t, &mut states, &mut y_t, &mut scratch)
                .unwrap();
            for b in 0..batch {
                let tok = b * seq + t;
                y_dec[tok * ch..(tok + 1) * ch].copy_from_slice(&y_t[b * ch..(b + 1) * ch]);
            }
        }
        assert_close("decode vs vectors", &y_dec, case.f32s("expected.y"), TOL);
        assert_close("decode vs prefill", &y_dec, &y_pre, TOL);

        // Prefill of a prefix hands its state to decode for the rest.
        if seq > 2 {
            let split = seq / 2 + 1;
            let mut e_p = Vec::new();
            let mut h_p = Vec::new();
            for b in 0..batch {
                let tok = b * seq;
                e_p.extend_from_slice(&e[tok * dm..(tok + split) * dm]);
                h_p.extend_from_slice(&hidden[tok * ch..(tok + split) * ch]);
            }
            let mut states: Vec<_> = (0..batch).map(|_| module.new_state().unwrap()).collect();
            let mut y_p = vec![0f32; batch * split * ch];
            module
                .forward_prefill(&e_p, &h_p, batch, split, &mut y_p, Some(&mut states))
                .unwrap();
            for t in split..seq {
                for b in 0..batch {
                    let tok = b * seq + t;
                    e_t[b * dm..(b + 1) * dm].copy_from_slice(&e[tok * dm..(tok + 1) * dm]);
                    h_t[b * ch..(b + 1) * ch].copy_from_slice(&hidden[tok * ch..(tok + 1) * ch]);
                }
                module
                    .forward_decode(&e_t, &h_t, &mut states, &mut y_t, &mut scratch)
                    .unwrap();
                for b in 0..batch {
                    let tok = b * seq + t;
                    assert_close(
                        "prefill prefix + decode",
                        &y_t[b * ch..(b + 1) * ch],
                        &y_pre[tok * ch..(tok + 1) * ch],
                        TOL,
                    );
                }
            }
        }
    }
}

/// `deepseek-bpe-129280` from `engram-hash-v1.json` (merged_only encoding).
fn deepseek_table() -> CompressionTable {
    let text = std::fs::read_to_string(common::data_dir().join("engram-hash-v1.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = &doc["compression_tables"]["deepseek-bpe-129280"];
    assert_eq!(t["encoding"], "merged_only");
    let raw = t["raw_vocab_size"].as_u64().unwrap() as usize;
    let mut merged = std::collections::HashMap::new();
    for pair in t["merged"].as_array().unwrap() {
        merged.insert(pair[0].as_u64().unwrap(), pair[1].as_i64().unwrap());
    }
    let mut fresh = 0i64;
    let lookup: Vec<i64> = (0..raw as u64)
        .map(|r| match merged.get(&r) {
            Some(&c) => c,
            None => {
                fresh += 1;
                fresh - 1
            }
        })
        .collect();
    let table =
        CompressionTable::from_lookup(&lookup, t["compressed_vocab_size"].as_u64().unwrap())
            .unwrap();
    assert_eq!(
        table.sha256_i32le(),
        t["lookup_sha256_i32le"].as_str().unwrap()
    );
    table
}

#[test]
fn end_to_end_from_raw_ids() {
    let table = deepseek_table();
    for path in forward_files() {
        let case = Case::load(&path);
        let c = &case.config;
        let config = EngramConfig {
            max_ngram: case.usize("max_ngram"),
            n_heads: case.usize("n_head_per_ngram"),
            base_sizes: c["base_sizes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
            layer_ids: c["layer_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
            seed: c["hash_seed"].as_u64().unwrap(),
            pad_id: c["pad_id"].as_i64().unwrap(),
        };
        let compressed = table.compress(case.i64s("input.input_ids")).unwrap();
        assert_eq!(compressed, case.i64s("input.compressed_ids"));
        let pad = table.compress_id(config.pad_id).unwrap();
        let layout = EngramLayout::new(&config, table.compressed_vocab_size(), pad).unwrap();
        let li = layout.layer_index(c["layer_id"].as_u64().unwrap()).unwrap();
        let hasher = NgramHasher::new(&layout, HashOptions::default()).unwrap();
        let (b, t) = case.batch_seq();
        let heads = hasher.n_hash_heads();
        let mut idx = vec![0u64; b * t * heads];
        hasher
            .hash_into(li, &compressed, b, t, HashOutput::HeadIndex, &mut idx)
            .unwrap();
        assert_eq!(
            idx,
            row_ids_from_i64(case.i64s("input.head_indices")).unwrap()
        );
        hasher
            .hash_into(li, &compressed, b, t, HashOutput::RowId, &mut idx)
            .unwrap();
        assert_eq!(idx, row_ids_from_i64(case.i64s("input.row_ids")).unwrap());

        // Rows -> e -> Y through the fast path.
        let tab = case.f32s("multi_head_embedding.embedding.weight");
        let bytes: Vec<u8> = tab.iter().flat_map(|x| x.to_le_bytes()).collect();
        let width = case.usize("head_dim");
        let mut e = vec![0f32; idx.len() * width];
        gather_rows(RowLayout::F32, width, &bytes, &idx, &mut e).unwrap();
        let (cfg, w) = case.module();
        let module = EngramModule::new(cfg, w).unwrap();
        let hidden = case.f32s("input.hidden_states");
        let mut y = vec![0f32; hidden.len()];
        module
            .forward_prefill(&e, hidden, b, t, &mut y, None)
            .unwrap();
        assert_close("end to end y", &y, case.f32s("expected.y"), TOL);
    }
}
