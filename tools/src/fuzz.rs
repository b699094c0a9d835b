//! Fuzz entry points of the tools' parsers, shared by the libFuzzer targets in `fuzz/` and
//! the regression test over their corpora (`tests/tests/fuzz_corpora.rs`), so the two
//! cannot drift. Each returns normally on any input; a panic, including a failed invariant
//! assertion, is a bug.
#![allow(clippy::panic, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use engram_files::file::sha256_hex;
use engram_store::format::RowLayout;
use safetensors::SafeTensors;

use crate::build::config::FileConfig;
use crate::build::values::{self, Checkpoints, RowValues};
use crate::vectors::{HashCheckOptions, check_hash_text};

/// Most values the import target converts per input (keeps one execution short; the
/// checkpoint's own length already bounds it).
const MAX_IMPORT_VALUES: usize = 1 << 16;

/// `engram-build --config` TOML: a parsed file serializes and parses back to itself; a
/// resolved plan prints (`--print-config`) a file that resolves to the same plan.
pub fn build_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz/build.toml");
    let Ok(file) = FileConfig::from_toml(text, path) else {
        return;
    };
    let again = toml::to_string(&file).expect("a parsed config serializes");
    let back = FileConfig::from_toml(&again, path).expect("a serialized config parses");
    assert_eq!(back, file, "build config round trip");
    let _ = file.resolve(&[PathBuf::from("fuzz/engram.safetensors")]);
    if let Ok(plan) = file.resolve(&[]) {
        let printed = plan.to_toml().expect("a plan prints");
        let reread = FileConfig::from_toml(&printed, path).expect("a printed plan parses");
        let replan = reread.resolve(&[]).expect("a printed plan resolves");
        assert_eq!(
            replan.to_toml().expect("a plan prints"),
            printed,
            "--print-config round trip"
        );
    }
}

/// `engram vectors` on an `engram-hash-v1` JSON file (without a tokenizer).
pub fn vectors_hash(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = check_hash_text(
        text,
        Path::new("fuzz/engram-hash-v1.json"),
        &HashCheckOptions::default(),
    );
}

/// `engram-build --import`: the checkpoint as the build reads it (metadata, declared
/// tokenizer and addressing, the plan they give), then every 2-D tensor as a layer's rows,
/// converted and encoded as bf16 rows.
pub fn safetensors_import(data: &[u8]) {
    let path = PathBuf::from("fuzz/engram.safetensors");
    let Ok(ckpt) =
        Checkpoints::from_files(vec![(path.clone(), data.to_vec())], vec![sha256_hex(data)])
    else {
        return;
    };
    if let Ok(metas) = ckpt.metadata() {
        for (_, meta) in &metas {
            let _ = values::declared_tokenizer(meta);
        }
    }
    if let Ok(Some(declared)) = values::declared_config(&ckpt)
        && let Ok(plan) = declared.resolve(std::slice::from_ref(&path))
    {
        let _ = values::check_checkpoint_config(&declared, &plan.engram, plan.dim);
    }
    let Ok(st) = SafeTensors::deserialize(data) else {
        return;
    };
    for (name, view) in st.tensors() {
        let &[rows, dim] = view.shape() else {
            continue;
        };
        let Some(n) = rows.checked_mul(dim).filter(|&n| n <= MAX_IMPORT_VALUES) else {
            continue;
        };
        let init = crate::build::config::Init::Import {
            files: vec![path.clone()],
            pattern: name.clone(),
        };
        let Ok(source) = RowValues::for_layer(&init, Some(&ckpt), 0, 0, rows as u64, dim as u32)
        else {
            continue;
        };
        let mut f32s = vec![0f32; n];
        if source.fill(0, dim, &mut f32s).is_ok()
            && let Ok(row_bytes) = engram_store::format::row_bytes(RowLayout::Bf16, dim as u32)
        {
            let mut out = vec![0u8; rows * row_bytes as usize];
            let _ = values::encode(RowLayout::Bf16, dim, &f32s, &mut out);
        }
    }
}
