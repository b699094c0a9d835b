//! Bad model directories and mismatched tables are clear errors, never panics.
#![allow(clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{model_b_addressing, tokenizer_available, write_zero_table};
use engram_files::file::{SHA256SUMS_FILE, sha256_hex};
use engram_kernels::EngramConfig;
use engram_store::StoreOptions;
use moe_core::Error;
use moe_core::session::{EngramSource, Session};

const MODEL: &str = "stdlib-moe-engram-b";
/// The committed model with hyper-connections.
const HC_MODEL: &str = "stdlib-moe-engram-mhc-c";

fn model_dir() -> PathBuf {
    committed(MODEL)
}

fn committed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
}

/// The files a model directory's `SHA256SUMS` lists for the decoder.
const MODEL_FILES: [&str; 3] = ["config.json", "vocab.json", "model.safetensors"];

/// A copy of a committed model in a temp dir, for mutation.
fn copy_model(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join("model");
    std::fs::create_dir_all(&out).expect("mkdir");
    for f in MODEL_FILES.iter().chain(&[SHA256SUMS_FILE]) {
        std::fs::copy(committed(name).join(f), out.join(f)).expect("copy");
    }
    out
}

/// Rewrites `SHA256SUMS` for the files present, as the exporter does after an edit, so a
/// deliberate change reaches the check it is meant for.
fn reseal(model: &Path) {
    let mut text = String::new();
    for f in MODEL_FILES {
        if let Ok(bytes) = std::fs::read(model.join(f)) {
            text.push_str(&format!("{}  {f}\n", sha256_hex(&bytes)));
        }
    }
    std::fs::write(model.join(SHA256SUMS_FILE), text).expect("writes");
}

fn rewrite_weights(model: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(model.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d)
                .expect("view");
            (n.clone(), v)
        })
        .collect();
    let meta = HashMap::from([("format".to_owned(), "engram-moe-v1".to_owned())]);
    safetensors::serialize_to_file(views, Some(meta), &model.join("model.safetensors"))
        .expect("writes");
}

fn edit_config(model: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = model.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&p).expect("config")).expect("json");
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).expect("json")).expect("writes");
}

fn load_err(model: &Path) -> String {
    match Session::load(model, None, None) {
        Ok(_) => panic!("{} loaded", model.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_model_directories_are_errors() {
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "missing tensor",
            Box::new(|m| {
                rewrite_weights(m, |t| t.retain(|(n, _, _)| n != "layers.2.mlp.gate.weight"))
            }),
            "layers.2.mlp.gate.weight\" is missing",
        ),
        (
            "wrong shape",
            Box::new(|m| {
                rewrite_weights(m, |t| {
                    for (n, s, d) in t.iter_mut() {
                        if n == "norm.weight" {
                            *s = vec![s[0] - 1];
                            d.truncate(d.len() - 2);
                        }
                    }
                })
            }),
            "\"norm.weight\" has shape [95]",
        ),
        (
            "unexplained tensor",
            Box::new(|m| {
                rewrite_weights(m, |t| t.push(("extra.weight".into(), vec![1], vec![0, 0])))
            }),
            "unexplained",
        ),
        (
            "config unknown field",
            Box::new(|m| edit_config(m, |c| c["hiden_size"] = 96.into())),
            "unknown field `hiden_size`",
        ),
        (
            "config/weights mismatch",
            Box::new(|m| edit_config(m, |c| c["moe_intermediate_size"] = 128.into())),
            "has shape",
        ),
        (
            "config engram primes",
            Box::new(|m| edit_config(m, |c| c["engram"]["primes"]["1"][0][0] = 5003.into())),
            "engram.primes[1]",
        ),
        (
            "tokenizer mismatch",
            Box::new(|m| edit_config(m, |c| c["tokenizer_sha256"] = "00".repeat(32).into())),
            "the model expects 0000",
        ),
        (
            "missing vocab",
            Box::new(|m| std::fs::remove_file(m.join("vocab.json")).expect("rm")),
            "vocab.json",
        ),
    ];
    check_cases(dir.path(), MODEL, cases);
}

type Mutation = Box<dyn Fn(&Path)>;

/// Each case mutates a fresh copy of `model`, which must then fail to load with an error
/// that mentions the case's needle.
fn check_cases(dir: &Path, model: &str, cases: Vec<(&str, Mutation, &str)>) {
    for (i, (name, mutate, needle)) in cases.into_iter().enumerate() {
        let case_dir = dir.join(format!("{model}-{i}"));
        let m = copy_model(&case_dir, model);
        mutate(&m);
        reseal(&m);
        let err = load_err(&m);
        assert!(
            err.contains(needle),
            "{name}: {err:?} should mention {needle:?}"
        );
    }
}

fn flip_byte(path: &Path, from_end: usize) {
    let mut b = std::fs::read(path).expect("read");
    let at = b.len() - from_end;
    b[at] ^= 0x10;
    std::fs::write(path, b).expect("write");
}

/// Files that differ from `SHA256SUMS`, a missing list and special files are errors that
/// name the file, before any of it is used (a flipped weight bit changed the output with
/// exit 0 before the list existed).
#[test]
fn model_files_are_checked_against_their_sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    type Mutation = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "flipped weight bit",
            Box::new(|m| flip_byte(&m.join("model.safetensors"), 1000)),
            "model.safetensors has SHA-256",
        ),
        (
            "flipped config byte",
            Box::new(|m| flip_byte(&m.join("config.json"), 10)),
            "config.json has SHA-256",
        ),
        (
            "edited vocab",
            Box::new(|m| flip_byte(&m.join("vocab.json"), 10)),
            "vocab.json has SHA-256",
        ),
        (
            "no SHA256SUMS",
            Box::new(|m| std::fs::remove_file(m.join(SHA256SUMS_FILE)).expect("rm")),
            "SHA256SUMS is missing",
        ),
        (
            "weights not listed",
            Box::new(|m| {
                let sums = std::fs::read_to_string(m.join(SHA256SUMS_FILE)).expect("read");
                let kept: String = sums
                    .lines()
                    .filter(|l| !l.ends_with("model.safetensors"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                std::fs::write(m.join(SHA256SUMS_FILE), kept).expect("write");
            }),
            "model.safetensors is not listed",
        ),
        (
            "weights are a FIFO",
            Box::new(|m| {
                let w = m.join("model.safetensors");
                std::fs::remove_file(&w).expect("rm");
                let ok = std::process::Command::new("mkfifo")
                    .arg(&w)
                    .status()
                    .expect("mkfifo")
                    .success();
                assert!(ok);
            }),
            "model.safetensors is a FIFO",
        ),
        (
            "weights are /dev/zero",
            Box::new(|m| {
                let w = m.join("model.safetensors");
                std::fs::remove_file(&w).expect("rm");
                std::os::unix::fs::symlink("/dev/zero", &w).expect("symlink");
            }),
            "character device",
        ),
    ];
    for (i, (name, mutate, needle)) in cases.into_iter().enumerate() {
        let m = copy_model(&dir.path().join(format!("s{i}")), MODEL);
        mutate(&m);
        // No tokenizer needed: the files are checked before it loads.
        let err = load_err(&m);
        assert!(
            err.contains(needle),
            "{name}: {err:?} should mention {needle:?}"
        );
    }
}

#[test]
fn broken_hyper_connection_models_are_errors() {
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let drop_tensor = |name: &'static str| -> Mutation {
        Box::new(move |m| rewrite_weights(m, |t| t.retain(|(n, _, _)| n != name)))
    };
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "mHC fields under format v1",
            Box::new(|m| edit_config(m, |c| c["format"] = "engram-moe-v1".into())),
            "need format \"engram-moe-v2\"",
        ),
        (
            "v2 without hc_eps",
            Box::new(|m| {
                edit_config(m, |c| {
                    c.as_object_mut().expect("object").remove("hc_eps");
                })
            }),
            "needs hc_mult, hc_sinkhorn_iters and hc_eps",
        ),
        (
            "no streams",
            Box::new(|m| edit_config(m, |c| c["hc_mult"] = 0.into())),
            "hc_mult 0: expected 1..=16",
        ),
        (
            "too many streams",
            Box::new(|m| edit_config(m, |c| c["hc_mult"] = 1000.into())),
            "hc_mult 1000",
        ),
        (
            "no Sinkhorn rounds",
            Box::new(|m| edit_config(m, |c| c["hc_sinkhorn_iters"] = 0.into())),
            "hc_sinkhorn_iters 0",
        ),
        (
            "eps out of range",
            Box::new(|m| edit_config(m, |c| c["hc_eps"] = 2.0.into())),
            "hc_eps 2",
        ),
        (
            "Engram branches differ from the streams",
            Box::new(|m| edit_config(m, |c| c["hc_mult"] = 2.into())),
            "engram.hc_mult 4 must equal the residual streams (hc_mult 2)",
        ),
        (
            "missing mixing weights",
            drop_tensor("layers.0.attn_hc.fn"),
            "layers.0.attn_hc.fn\" is missing",
        ),
        (
            "missing head weights",
            drop_tensor("hc_head.base"),
            "hc_head.base\" is missing",
        ),
        (
            "missing per-stream Engram key",
            drop_tensor("layers.1.engram.key_projs.3.weight"),
            "key_projs.3.weight\" is missing",
        ),
        (
            "wrong scale shape",
            Box::new(|m| {
                rewrite_weights(m, |t| {
                    for (n, s, d) in t.iter_mut() {
                        if n == "layers.2.mlp_hc.scale" {
                            *s = vec![2];
                            d.truncate(4);
                        }
                    }
                })
            }),
            "\"layers.2.mlp_hc.scale\" has shape [2]",
        ),
    ];
    check_cases(dir.path(), HC_MODEL, cases);
}

#[test]
fn tables_built_for_something_else_are_refused() {
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let right = model_b_addressing();
    let deepseek = engram_files::tokenizer::DEEPSEEK_TOKENIZER_SHA256;
    let cases = [
        (
            "other-tokenizer",
            right.clone(),
            "1".repeat(64),
            "built for tokenizer",
        ),
        (
            "other-layers",
            EngramConfig {
                layer_ids: vec![2],
                ..right.clone()
            },
            deepseek.into(),
            "addressing",
        ),
        (
            "other-seed",
            EngramConfig {
                seed: 7,
                ..right.clone()
            },
            deepseek.into(),
            "addressing",
        ),
    ];
    // SHA-256 of the model's engram.safetensors, as its SHA256SUMS lists it.
    let sums = engram_files::file::Sha256Sums::read(&model_dir().join(SHA256SUMS_FILE))
        .expect("the committed model has SHA256SUMS");
    let own = sums.get("engram.safetensors").expect("listed");
    for (name, config, sha, needle) in cases {
        let table = dir.path().join(name);
        write_zero_table(&table, &config, &sha, 8, &[own]);
        let source = EngramSource {
            table: table.clone(),
            options: StoreOptions::default(),
            allow_foreign_table: false,
        };
        match Session::load(&model_dir(), None, Some(&source)) {
            Ok(_) => panic!("{name}: a mismatched table was accepted"),
            Err(e) => {
                assert!(matches!(e, Error::TableMismatch { .. }), "{name}: {e:?}");
                assert!(e.to_string().contains(needle), "{name}: {e}");
            }
        }
    }
    // The right addressing with rows that are not the model's (zeros here; random rows
    // decode just as silently wrong) is refused unless explicitly allowed.
    let other = "ab".repeat(32);
    for (name, checkpoint, needle) in [
        ("not-imported", &[][..], "records no checkpoint SHA-256"),
        (
            "other-checkpoint",
            &[other.as_str()][..],
            "imported from checkpoint",
        ),
        (
            "two-checkpoints",
            &[own, own][..],
            "imported from checkpoint",
        ),
    ] {
        let table = dir.path().join(name);
        write_zero_table(&table, &right, deepseek, 8, checkpoint);
        let mut source = EngramSource {
            table,
            options: StoreOptions::default(),
            allow_foreign_table: false,
        };
        match Session::load(&model_dir(), None, Some(&source)) {
            Ok(_) => panic!("{name}: a table of foreign rows was accepted"),
            Err(e) => {
                assert!(matches!(e, Error::TableMismatch { .. }), "{name}: {e:?}");
                assert!(e.to_string().contains(needle), "{name}: {e}");
                assert!(
                    e.to_string().contains("--allow-foreign-table"),
                    "{name}: {e}"
                );
            }
        }
        if name == "not-imported" {
            source.allow_foreign_table = true;
            Session::load(&model_dir(), None, Some(&source)).expect("allowed explicitly");
        }
    }
    // The table imported from the model's checkpoint opens.
    let table = dir.path().join("right");
    write_zero_table(&table, &right, deepseek, 8, &[own]);
    let source = EngramSource {
        table,
        options: StoreOptions::default(),
        allow_foreign_table: false,
    };
    Session::load(&model_dir(), None, Some(&source)).expect("the matching table is accepted");
}

/// A model whose Engram module has no short convolution (DeepSeek-V4.1): `kernel_size` and
/// `conv_dilation` absent from config.json and no `short_conv` tensors. It loads and
/// decodes, and its output differs from the same model with the convolution.
#[test]
fn a_module_without_the_short_convolution_loads_and_decodes() {
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = model_b_addressing();
    let sums = engram_files::file::Sha256Sums::read(&model_dir().join(SHA256SUMS_FILE))
        .expect("the committed model has SHA256SUMS");
    let own = sums.get("engram.safetensors").expect("listed");
    let table = dir.path().join("table");
    let deepseek = engram_files::tokenizer::DEEPSEEK_TOKENIZER_SHA256;
    write_zero_table(&table, &config, deepseek, 8, &[own]);
    // Zero rows, so not the model's own: allowed explicitly (the copy's SHA256SUMS does
    // not list engram.safetensors either).
    let source = EngramSource {
        table,
        options: StoreOptions::default(),
        allow_foreign_table: true,
    };
    let no_conv = copy_model(&dir.path().join("no-conv"), MODEL);
    edit_config(&no_conv, |c| {
        let e = c["engram"].as_object_mut().expect("engram block");
        e.remove("kernel_size");
        e.remove("conv_dilation");
    });
    rewrite_weights(&no_conv, |t| {
        t.retain(|(n, _, _)| !n.contains("short_conv"))
    });
    reseal(&no_conv);
    let prompt = [0u32, 1000, 2000, 3000];
    let mut logits = Vec::new();
    for m in [model_dir(), no_conv.clone()] {
        let mut s = Session::load(&m, None, Some(&source)).expect("loads");
        let raw: Vec<u32> = prompt.to_vec();
        let l = s.prefill(&raw).expect("prefill").to_vec();
        assert!(l.iter().all(|x| x.is_finite()));
        s.step(5).expect("decode step");
        logits.push(l);
    }
    assert_ne!(logits[0], logits[1], "the convolution made no difference");
    // The no-conv config with conv tensors left in is an error naming them.
    let stray = copy_model(&dir.path().join("stray"), MODEL);
    edit_config(&stray, |c| c["engram"]["kernel_size"] = 0.into());
    reseal(&stray);
    let err = load_err(&stray);
    assert!(
        err.contains("short_conv") || err.contains("unexplained"),
        "{err}"
    );
}
