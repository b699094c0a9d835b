//! Helpers shared by this crate's process-level tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A workspace binary (built by `cargo test --workspace` beside this test's binary).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries (cargo build -p engram-tools -p moe-core)",
        p.display()
    );
    p
}
