//! `include/engram.h` is what cbindgen generates from `src/lib.rs` today: a stale header
//! fails here. `ENGRAM_BLESS=1 cargo test -p engram-ffi --test header` rewrites it.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;

#[test]
fn header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("config");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen parses src/lib.rs")
        .write(&mut generated);
    let path = crate_dir.join("include").join("engram.h");
    if std::env::var_os("ENGRAM_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writes the header");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: run `ENGRAM_BLESS=1 cargo test -p engram-ffi --test header` and commit it",
        path.display()
    );
}
