//! Publication: one writer per path (a second fails at once, clearly), leftovers of killed
//! writers cleaned by the next write and never failing it, an interrupted fallback
//! replacement restored, `--force` never deleting what is not a table, extra files
//! published with the table, and readers that open while the table is replaced always
//! seeing one complete version. Kills at every syscall are in `publish_crash.rs`.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use common::expected_rows;
use common::publish::{seed_of, version, write};
use common::sys::listing;
use engram_store::{Error, Table, TableWriter};
use engram_testbed::synth::write_synth_rows;

#[test]
fn a_second_writer_fails_at_once_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    let s = version(1);
    let first = TableWriter::create(&dir, &s.manifest().expect("manifest"), true).expect("first");
    let e = TableWriter::create(&dir, &s.manifest().expect("manifest"), true)
        .expect_err("the path is locked");
    assert!(matches!(e, Error::Locked { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("another writer"), "{msg}");
    assert!(
        msg.contains(&format!("process {}", std::process::id())),
        "{msg}"
    );
    assert!(
        msg.contains(".t.lock") && msg.contains("wait for it"),
        "{msg}"
    );
    drop(first);
    assert_eq!(
        listing(tmp.path()),
        Vec::<String>::new(),
        "an abandoned write leaves nothing"
    );
    write(&dir, 2, false).expect("the lock is free again");
    assert_eq!(seed_of(&dir), 2);
    assert_eq!(
        listing(tmp.path()),
        ["t"],
        "the lock file is deleted when done"
    );
}

#[test]
fn leftovers_of_killed_writers_are_deleted_by_the_next_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    write(&dir, 1, false).expect("writes");
    let junk = |name: &str| {
        let p = tmp.path().join(name);
        std::fs::create_dir_all(p.join("sub")).expect("mkdir");
        std::fs::write(p.join("sub/x"), b"partial").expect("write");
    };
    // Temporaries (before or after their swap), old tables a fallback replacement left
    // aside, the trash of older writers, a stale lock file.
    for name in [".t.tmp-4242-17", ".t.tmp-1-2.old", ".t.old-9-99"] {
        junk(name);
    }
    std::fs::write(tmp.path().join(".t.lock"), b"123\n").expect("stale lock");
    // Siblings of other tables, or not in the writer's naming scheme: never touched.
    let others = [
        ".t.tmp-x",
        ".t.tmpfoo",
        ".tt.tmp-1-2",
        ".t.tmp-1-2-3",
        ".t.old-1",
        "t2",
    ];
    for name in others {
        junk(name);
    }
    write(&dir, 2, true).expect("leftovers never fail a write");
    assert_eq!(seed_of(&dir), 2);
    let mut want: Vec<String> = others.iter().map(|s| s.to_string()).collect();
    want.push("t".into());
    want.sort();
    assert_eq!(listing(tmp.path()), want);
}

#[test]
fn an_interrupted_fallback_replacement_is_restored_by_the_next_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    write(&dir, 1, false).expect("writes");
    // What a kill between the fallback's two renames leaves: the old table aside, the
    // new one still temporary, nothing at the path.
    std::fs::rename(&dir, tmp.path().join(".t.old-77-1000")).expect("aside");
    std::fs::create_dir(tmp.path().join(".t.tmp-77-999")).expect("tmp");
    // Even a write that is refused (no force) first puts the old table back.
    let e = write(&dir, 2, false).expect_err("the restored table exists");
    assert!(matches!(e, Error::Exists { .. }), "{e}");
    assert_eq!(seed_of(&dir), 1);
    assert_eq!(listing(tmp.path()), ["t"]);
    write(&dir, 2, true).expect("replaces");
    assert_eq!(seed_of(&dir), 2);
}

#[test]
fn force_never_replaces_what_is_not_a_table() {
    let tmp = tempfile::tempdir().expect("tmp");
    let notes = tmp.path().join("notes");
    std::fs::create_dir(&notes).expect("mkdir");
    std::fs::write(notes.join("todo.txt"), b"keep me").expect("write");
    let file = tmp.path().join("file");
    std::fs::write(&file, b"keep me").expect("write");
    for path in [&notes, &file] {
        let e = write(path, 1, true).expect_err("refused");
        assert!(matches!(e, Error::NotATable { .. }), "{e}");
        assert!(e.to_string().contains("refusing to replace"), "{e}");
    }
    assert_eq!(
        std::fs::read(notes.join("todo.txt")).expect("kept"),
        b"keep me"
    );
    assert_eq!(std::fs::read(&file).expect("kept"), b"keep me");
    // An empty directory is replaced; a symlink is replaced, its target left alone.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    write(&empty, 1, true).expect("replaces an empty directory");
    assert_eq!(seed_of(&empty), 1);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).expect("symlink");
    write(&link, 2, true).expect("replaces the link");
    assert_eq!(seed_of(&link), 2);
    assert!(
        !link
            .symlink_metadata()
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(seed_of(&empty), 1);
    let mut want = vec!["empty", "file", "link", "notes"];
    want.sort();
    assert_eq!(listing(tmp.path()), want);
}

#[test]
fn extra_files_are_published_with_the_table_or_not_at_all() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    let s = version(1);
    let m = s.manifest().expect("manifest");
    let mut w = TableWriter::create(&dir, &m, false).expect("create");
    write_synth_rows(&mut w, &s, |_, _, _| {}).expect("rows");
    for bad in [
        "",
        ".hidden",
        "a/b",
        "manifest.json",
        m.layers[0].file.as_str(),
    ] {
        let e = w.add_file(bad, b"x").expect_err("refused");
        assert!(e.to_string().contains("plain file name"), "{bad:?}: {e}");
    }
    w.add_file("profile.bin", b"profile").expect("adds");
    assert!(w.add_file("profile.bin", b"again").is_err(), "added twice");
    assert!(!dir.exists(), "nothing is visible before finish");
    drop(w);
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
    let mut w = TableWriter::create(&dir, &m, false).expect("create");
    write_synth_rows(&mut w, &s, |_, _, _| {}).expect("rows");
    w.add_file("profile.bin", b"profile").expect("adds");
    w.finish().expect("publishes");
    assert_eq!(
        std::fs::read(dir.join("profile.bin")).expect("published"),
        b"profile"
    );
}

#[test]
fn an_open_table_keeps_reading_its_version_after_a_replacement() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("t");
    write(&dir, 1, false).expect("writes");
    let old = Table::open(&dir).expect("opens");
    write(&dir, 2, true).expect("replaces (and deletes the old version's files)");
    assert_eq!(listing(tmp.path()), ["t"]);
    for layer in 0..old.n_layers() {
        old.verify_layer(layer)
            .expect("the held files still verify");
    }
    let mut got = vec![0u8; old.row_bytes()];
    old.read_rows_simple(1, &[5], &mut got).expect("reads");
    assert_eq!(got, expected_rows(&version(1), 1, &[5], old.row_bytes()));
    assert_eq!(seed_of(&dir), 2);
}

#[test]
fn readers_opening_during_replacements_see_one_complete_version() {
    const REPLACEMENTS: u64 = 60;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir: PathBuf = tmp.path().join("t");
    write(&dir, 0, false).expect("writes");
    let done = AtomicBool::new(false);
    let (opened, retried) = std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let (mut opened, mut retried) = (0u64, 0u64);
                    while !done.load(Ordering::Acquire) {
                        match Table::open(&dir) {
                            Ok(t) => {
                                let seed = t
                                    .manifest()
                                    .build
                                    .source
                                    .strip_prefix("synthetic seed=")
                                    .and_then(|s| s.parse::<u64>().ok())
                                    .expect("a version's seed");
                                // Rows from the files this open holds, even if the version
                                // is deleted meanwhile: the same version's rows.
                                let mut got = vec![0u8; t.row_bytes()];
                                t.read_rows_simple(0, &[3], &mut got).expect("reads");
                                assert_eq!(
                                    got,
                                    expected_rows(&version(seed), 0, &[3], t.row_bytes())
                                );
                                opened += 1;
                            }
                            Err(Error::Replaced { .. }) => retried += 1,
                            Err(e) => panic!("a reader saw a broken table: {e}"),
                        }
                    }
                    (opened, retried)
                })
            })
            .collect();
        for seed in 1..=REPLACEMENTS {
            write(&dir, seed, true).expect("replaces");
        }
        done.store(true, Ordering::Release);
        readers
            .into_iter()
            .map(|r| r.join().expect("reader"))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    });
    eprintln!(
        "{opened} opens during {REPLACEMENTS} replacements, {retried} gave up after {} attempts",
        engram_store::table::OPEN_ATTEMPTS
    );
    assert!(opened > 0);
    assert_eq!(seed_of(&dir), REPLACEMENTS);
}
