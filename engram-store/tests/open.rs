//! `Table::open` takes the manifest and every layer file from one directory handle, as
//! regular files, the manifest bounded by `MAX_MANIFEST_BYTES`: a device, a FIFO or an
//! oversized manifest is a clear error, never a hang or an unbounded read.

mod common;

use common::publish::{seed_of, write};
use engram_store::table::MAX_MANIFEST_BYTES;
use engram_store::{Error, Table};

#[test]
fn special_or_oversized_files_are_refused_without_blocking() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    let m = write(&dir, 1, false).expect("writes");
    let manifest = dir.join("manifest.json");
    let saved = std::fs::read(&manifest).expect("read");

    std::fs::remove_file(&manifest).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", &manifest).expect("symlink");
    let e = Table::open(&dir).expect_err("a device");
    assert!(matches!(e, Error::Input(_)), "{e}");
    assert!(e.to_string().contains("character device"), "{e}");

    std::fs::remove_file(&manifest).expect("rm");
    let big = vec![b' '; usize::try_from(MAX_MANIFEST_BYTES.bytes).expect("fits") + 1];
    std::fs::write(&manifest, big).expect("write");
    let e = Table::open(&dir).expect_err("too large");
    assert!(e.to_string().contains("MAX_MANIFEST_BYTES"), "{e}");
    std::fs::write(&manifest, &saved).expect("restore");

    // A FIFO in place of a layer file: opening it would block without O_NONBLOCK.
    let layer = dir.join(&m.layers[1].file);
    std::fs::remove_file(&layer).expect("rm");
    let made = std::process::Command::new("mkfifo")
        .arg(&layer)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let e = Table::open(&dir).expect_err("a FIFO");
    assert!(
        e.to_string().contains("FIFO") && e.to_string().contains(&m.layers[1].file),
        "{e}"
    );
}

#[test]
fn tables_at_non_utf8_paths_are_written_replaced_and_opened() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join(std::ffi::OsStr::from_bytes(b"t\xff"));
    write(&dir, 1, false).expect("writes");
    write(&dir, 2, true).expect("replaces");
    assert_eq!(seed_of(&dir), 2);
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
}
