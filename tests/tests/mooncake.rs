//! The committed Engram model decodes PyTorch's golden continuation with its table's rows
//! read from a Mooncake cluster: the table is built from the checkpoint, published, and
//! read by a host that has only its skeleton (no rows on local disk), then through the
//! full table. Needs a cluster (`scripts/mooncake-local.sh start`) and
//! `--features mooncake`; skipped without them unless ENGRAM_REQUIRE_MOONCAKE=1.

#[path = "../../engram-mooncake/tests/common/mod.rs"]
mod mc;

use std::path::{Path, PathBuf};

use clap::Parser;
use engram_mooncake::{PublishOptions, TableKeys, fetch_skeleton, open_store, publish, unpublish};
use engram_store::{BackendKind, StoreOptions, Table};
use engram_tools::build::{BuildArgs, run};
use moe_core::golden;
use moe_core::session::{EngramSource, Session};

#[derive(Debug, Parser)]
struct Build {
    #[command(flatten)]
    args: BuildArgs,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn the_decoder_matches_pytorch_with_rows_from_mooncake() {
    let Some(cfg) = mc::cluster("the_decoder_matches_pytorch_with_rows_from_mooncake") else {
        return;
    };
    if engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_none()
    {
        return;
    }
    let model = repo().join("models/stdlib-moe-engram-b");
    let tmp = tempfile::tempdir().expect("tmp");
    let table_dir = tmp.path().join("b");
    let b = Build::parse_from([
        "engram-build",
        repo().join("tools/train").to_str().expect("utf-8"),
        "--include",
        "**/*.py",
        "--import",
        model.join("engram.safetensors").to_str().expect("utf-8"),
        "--out",
        table_dir.to_str().expect("utf-8"),
        "--quiet",
    ]);
    run(&b.args).expect("engram-build");
    let table = Table::open(&table_dir).expect("table");
    let client = mc::connect(&cfg);
    let keys = TableKeys::of(table.manifest()).expect("keys");
    let _ = unpublish(&client, &keys, None);
    publish(&client, &table, &PublishOptions::default(), &mut |_| {}).expect("publish");
    let skeleton = tmp.path().join("skeleton");
    fetch_skeleton(&client, &keys, &skeleton).expect("skeleton");
    let golden_bytes = std::fs::read(model.join("golden.json")).expect("golden");
    for (dir, cache_bytes) in [(&skeleton, 0), (&table_dir, 1 << 20)] {
        let options = StoreOptions {
            cache_bytes,
            ..StoreOptions::default()
        };
        let opened = open_store(dir, &options, &cfg).expect("open on Mooncake");
        assert!(opened.fallback.is_none(), "{:?}", opened.fallback);
        assert_eq!(
            opened.store.backend_kind(),
            BackendKind::External("mooncake")
        );
        let store = opened.store.clone();
        let src = EngramSource {
            table: dir.to_path_buf(),
            options,
            allow_foreign_table: false,
        };
        let mut s = Session::load_with_store(&model, None, &src, opened.store).expect("loads");
        for r in golden::check(&mut s, &golden_bytes).expect("runs") {
            eprintln!("{} on mooncake, cache {cache_bytes}: {r:?}", dir.display());
            assert!(r.passed(), "{}: {r:?}", dir.display());
        }
        assert!(store.stats().device_reads > 0, "rows came from the cluster");
    }
    unpublish(&client, &keys, None).expect("unpublish");
}
