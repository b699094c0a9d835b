//! `manifest_xxh3` binds every manifest field: a changed tokenizer fingerprint, pad id or
//! provenance fails to open (before the checksum existed these opened and even passed
//! `verify_layer`), while tables written before it (no field) keep opening.

mod common;

use common::*;
use engram_store::format::MANIFEST_FILE;
use engram_store::{Error, RowLayout, Table};
use serde_json::Value;

fn edit(path: &std::path::Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("manifest is JSON");
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

#[test]
fn every_field_is_bound_by_the_manifest_checksum() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 101, 5);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    assert!(m.manifest_xxh3.is_some(), "the writer seals the manifest");
    let mpath = dir.join(MANIFEST_FILE);
    let orig = std::fs::read(&mpath).expect("read");
    let opened = Table::open(&dir).expect("opens");
    assert_eq!(opened.manifest(), &m, "what was written is what opens");

    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 7] = [
        ("tokenizer_sha256", |v| {
            v["tokenizer_sha256"] = "0".repeat(64).into()
        }),
        ("config.pad_id", |v| v["config"]["pad_id"] = 3.into()),
        ("compressed_pad_id", |v| v["compressed_pad_id"] = 5.into()),
        ("build.source", |v| {
            v["build"]["source"] = "elsewhere".into()
        }),
        ("build.checkpoint_sha256", |v| {
            v["build"]["checkpoint_sha256"] = serde_json::json!(["ab".repeat(32)]);
        }),
        ("layers.0.file_bytes", |v| {
            v["layers"][0]["file_bytes"] = 1.into();
        }),
        ("manifest_xxh3 itself", |v| {
            v["manifest_xxh3"] = "0123456789abcdef".into();
        }),
    ];
    for (name, change) in cases {
        std::fs::write(&mpath, &orig).expect("restore");
        edit(&mpath, change);
        let e = Table::open(&dir).expect_err(name);
        assert!(matches!(e, Error::Manifest { .. }), "{name}: {e}");
        assert!(
            e.to_string()
                .contains("changed after the table was written"),
            "{name}: {e}"
        );
    }

    // Layout and member order do not matter: the reader re-serializes what it parsed.
    std::fs::write(&mpath, &orig).expect("restore");
    edit(&mpath, |_| {});
    Table::open(&dir).expect("sorted keys, same values");
    let compact: Value = serde_json::from_slice(&orig).expect("json");
    std::fs::write(&mpath, serde_json::to_vec(&compact).expect("json")).expect("write");
    Table::open(&dir).expect("compact JSON, same values");

    // A malformed checksum field is an error, not a skip.
    edit(&mpath, |v| v["manifest_xxh3"] = "xyz".into());
    let e = Table::open(&dir).expect_err("bad field");
    assert!(e.to_string().contains("not 16 hex digits"), "{e}");

    // v1 tables written before the checksum existed have no field and still open; their
    // addressing constants stay guarded by the layout re-derivation.
    std::fs::write(&mpath, &orig).expect("restore");
    edit(&mpath, |v| {
        v.as_object_mut().expect("object").remove("manifest_xxh3");
    });
    let t = Table::open(&dir).expect("an unsealed v1 manifest opens");
    assert!(t.manifest().manifest_xxh3.is_none());
    edit(&mpath, |v| v["config"]["seed"] = 4.into());
    let e = Table::open(&dir).expect_err("seed changed");
    assert!(matches!(e, Error::Layout { .. }), "{e}");
}
