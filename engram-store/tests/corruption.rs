//! Damaged tables fail to open, or fail the affected lookup, with an error naming the file
//! and offset; never a panic and never wrong rows.

mod common;

use std::fs::OpenOptions as FsOpen;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use engram_store::format::{HEADER_BYTES, MANIFEST_FILE};
use engram_store::{BackendKind, Error, OpenOptions, RowLayout, Table};

fn flip(path: &Path, offset: u64) {
    let f = FsOpen::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x04;
    f.write_all_at(&b, offset).expect("write");
}

fn setup(
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    engram_store::Manifest,
) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 100 + name.len() as u64, 5);
    let (dir, m) = make_table(tmp.path(), name, &s);
    (tmp, dir, m)
}

#[test]
fn flipped_data_bit_fails_the_affected_lookup_on_every_backend() {
    let (_tmp, dir, m) = setup("flip");
    let layer_file = dir.join(&m.layers[1].file);
    // Row 40 lives in unit 1 (32 rows of 128 B per 4 KiB unit): flip a byte inside it.
    let geo = m.geometry();
    let off = m.data_offset + geo.row_offset(40) + 3;
    flip(&layer_file, off);
    let t = Table::open(&dir).expect("opening checks headers, not every block");
    let e = t.verify_layer(1).expect_err("verify must fail");
    match &e {
        Error::Checksum { path, offset, .. } => {
            assert_eq!(path, &layer_file);
            assert_eq!(*offset, m.data_offset + 4096);
        }
        other => unreachable!("unexpected {other}"),
    }
    assert!(e.to_string().contains("offset 8192"), "{e}");
    t.verify_layer(0).expect("other layer is fine");
    for kind in ALL_BACKENDS {
        let opened = engram_store::Store::open(
            &dir,
            &engram_store::StoreOptions {
                backend: engram_store::BackendOptions {
                    kind: Some(kind),
                    ..Default::default()
                },
                io_workers: 1,
                ..Default::default()
            },
        );
        let st = match opened {
            Ok(st) => st,
            Err(e) => {
                // The memory tier verifies everything at load: it refuses the table.
                assert_eq!(kind, BackendKind::Memory);
                assert!(matches!(e, Error::Checksum { .. }), "{e}");
                assert!(e.to_string().contains(&layer_file.display().to_string()));
                continue;
            }
        };
        let rb = st.row_bytes();
        let mut out = vec![0u8; rb];
        let e = st.lookup_into(1, &[40], &mut out).expect_err("corrupt row");
        assert!(matches!(e, Error::Checksum { .. }), "{kind}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&layer_file.display().to_string()) && msg.contains("offset 8192"),
            "{msg}"
        );
        // Rows in other blocks are still served, and correctly.
        st.lookup_into(1, &[3], &mut out).expect("clean row");
        st.lookup_into(0, &[40], &mut out).expect("other layer");
    }
}

#[test]
fn flipped_header_bit_fails_open() {
    let (_tmp, dir, m) = setup("hdr");
    let f = dir.join(&m.layers[0].file);
    flip(&f, 41); // inside `rows`
    let e = Table::open(&dir).expect_err("must fail");
    assert!(matches!(e, Error::Checksum { .. }), "{e}");
    assert!(e.to_string().contains(&f.display().to_string()));
}

#[test]
fn flipped_checksum_table_fails_open() {
    let (_tmp, dir, m) = setup("sums");
    let f = dir.join(&m.layers[1].file);
    let len = std::fs::metadata(&f).expect("stat").len();
    flip(&f, len - 3);
    let e = Table::open(&dir).expect_err("must fail");
    assert!(
        matches!(
            e,
            Error::Checksum {
                what: "checksum table",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn truncated_file_fails_open() {
    for cut in [1u64, 4096, 100_000] {
        let (_tmp, dir, m) = setup("trunc");
        let f = dir.join(&m.layers[0].file);
        let len = std::fs::metadata(&f).expect("stat").len();
        let new_len = len.saturating_sub(cut);
        FsOpen::new()
            .write(true)
            .open(&f)
            .expect("open")
            .set_len(new_len)
            .expect("truncate");
        let e = Table::open(&dir).expect_err("must fail");
        assert!(matches!(e, Error::FileSize { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&f.display().to_string()), "{msg}");
    }
    let (_tmp, dir, m) = setup("tiny");
    let f = dir.join(&m.layers[0].file);
    FsOpen::new()
        .write(true)
        .open(&f)
        .expect("open")
        .set_len(100)
        .expect("truncate");
    assert!(matches!(Table::open(&dir), Err(Error::FileSize { .. })));
    // Extended files are rejected too.
    let (_tmp, dir, m) = setup("ext");
    let f = dir.join(&m.layers[1].file);
    let len = std::fs::metadata(&f).expect("stat").len();
    FsOpen::new()
        .write(true)
        .open(&f)
        .expect("open")
        .set_len(len + 1)
        .expect("extend");
    assert!(matches!(Table::open(&dir), Err(Error::FileSize { .. })));
}

#[test]
fn wrong_version_fails_open() {
    let (_tmp, dir, m) = setup("ver");
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).expect("read");
    std::fs::write(
        &mpath,
        text.replace("\"format_version\": 1", "\"format_version\": 2"),
    )
    .expect("write");
    let e = Table::open(&dir).expect_err("must fail");
    assert!(
        matches!(
            e,
            Error::Version {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    std::fs::write(&mpath, text).expect("restore");
    Table::open(&dir).expect("restored");
    // A header claiming version 2 (with a valid header checksum) is rejected as well.
    let f = dir.join(&m.layers[0].file);
    let file = FsOpen::new().read(true).write(true).open(&f).expect("open");
    let mut hdr = vec![0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut hdr, 0).expect("read");
    hdr[8] = 2;
    let sum = xxhash_sum(&hdr[..4088]);
    hdr[4088..].copy_from_slice(&sum.to_le_bytes());
    file.write_all_at(&hdr, 0).expect("write");
    let e = Table::open(&dir).expect_err("must fail");
    assert!(matches!(e, Error::Version { found: 2, .. }), "{e}");
}

fn xxhash_sum(b: &[u8]) -> u64 {
    engram_store::format::header_checksum(b)
}

#[test]
fn missing_layer_file_fails_open() {
    let (_tmp, dir, m) = setup("miss");
    let f = dir.join(&m.layers[1].file);
    std::fs::remove_file(&f).expect("rm");
    let e = Table::open(&dir).expect_err("must fail");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    std::fs::remove_file(dir.join(MANIFEST_FILE)).expect("rm");
    let e = Table::open(&dir).expect_err("must fail");
    assert!(e.to_string().contains(MANIFEST_FILE), "{e}");
}

#[test]
fn tokenizer_mismatch_fails_open() {
    let (_tmp, dir, m) = setup("tok");
    let other = "0".repeat(64);
    let e = Table::open_with(
        &dir,
        &OpenOptions {
            expected_tokenizer_sha256: Some(other.clone()),
        },
    )
    .expect_err("must fail");
    assert!(matches!(e, Error::TokenizerMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&other));
    let ok = Table::open_with(
        &dir,
        &OpenOptions {
            expected_tokenizer_sha256: Some(m.tokenizer_sha256.to_uppercase()),
        },
    );
    assert!(ok.is_ok());
}

#[test]
fn tampered_manifest_constants_fail_open() {
    let (_tmp, dir, m) = setup("lay");
    let mpath = dir.join(MANIFEST_FILE);
    let orig = std::fs::read_to_string(&mpath).expect("read");
    let p0 = m.layers[0].primes[0];
    let cases = [
        orig.replacen(&p0.to_string(), &(p0 + 2).to_string(), 1),
        orig.replacen("\"seed\": 3", "\"seed\": 4", 1),
        orig.replacen(
            "\"compressed_vocab_size\": 99092",
            "\"compressed_vocab_size\": 99093",
            1,
        ),
        orig.replacen("\"row_bytes\": 128", "\"row_bytes\": 130", 1),
        orig.replacen("{", "[", 1),
        String::new(),
    ];
    for (i, text) in cases.iter().enumerate() {
        assert_ne!(text, &orig, "case {i} must change the manifest");
        std::fs::write(&mpath, text).expect("write");
        let e = Table::open(&dir).expect_err("must fail");
        assert!(
            e.to_string().contains("manifest.json")
                || matches!(e, Error::Checksum { .. } | Error::Header { .. }),
            "case {i}: {e}"
        );
    }
}

#[test]
fn writer_is_atomic_and_checks_order() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 30, 1);
    let m = s.manifest().expect("manifest");
    let dir = tmp.path().join("t");
    {
        let mut w = engram_store::TableWriter::create(&dir, &m, false).expect("create");
        w.write_layer_rows(0, &vec![0u8; 128 * 3]).expect("rows");
        assert!(w.write_layer_rows(0, &[0u8; 5]).is_err(), "partial row");
        // Dropped without finish: nothing is published, nothing is left behind.
    }
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
    let mut w = engram_store::TableWriter::create(&dir, &m, false).expect("create");
    w.write_layer_rows(0, &vec![0u8; 128 * 3]).expect("rows");
    // Moving on with an incomplete layer is an error.
    assert!(w.write_layer_rows(1, &[0u8; 128]).is_err());
    drop(w);
    make_table(tmp.path(), "t", &s);
    assert!(matches!(
        engram_store::TableWriter::create(&dir, &m, false),
        Err(Error::Exists { .. })
    ));
    // force replaces atomically.
    let s2 = spec(RowLayout::Bf16, 64, 30, 2);
    engram_testbed::synth::write_synth(&dir, &s2, true, |_, _, _| {}).expect("force");
    let t = Table::open(&dir).expect("open");
    let mut out = vec![0u8; 128];
    t.read_rows_simple(0, &[7], &mut out).expect("read");
    assert_eq!(out, expected_rows(&s2, 0, &[7], 128));
}

#[test]
fn file_truncated_after_open_fails_the_affected_reads_not_the_process() {
    // A device read that comes back short (here: the file shrank under an open store) is an
    // error naming the file and offset, on both block-device paths; the batch drains its
    // in-flight reads before returning, and reads below the cut keep working.
    for kind in [BackendKind::Uring, BackendKind::Pread] {
        let (_tmp, dir, m) = setup("cut");
        let Some(st) = try_store(&dir, kind, 0, 8) else {
            continue;
        };
        let f = dir.join(&m.layers[0].file);
        let rows = st.table().rows(0).expect("rows");
        let geo = m.geometry();
        let cut = m.data_offset + geo.row_offset(rows / 2) / 4096 * 4096;
        FsOpen::new()
            .write(true)
            .open(&f)
            .expect("open")
            .set_len(cut)
            .expect("truncate");
        let rb = st.row_bytes();
        let ids: Vec<u64> = (0..rows).collect();
        let mut out = vec![0u8; ids.len() * rb];
        let e = st
            .lookup_into(0, &ids, &mut out)
            .expect_err("reads past the cut fail");
        let msg = e.to_string();
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("offset"),
            "{kind}: {msg}"
        );
        let mut one = vec![0u8; rb];
        st.lookup_into(0, &[1], &mut one).expect("below the cut");
        assert_eq!(
            one,
            common::expected_rows(&spec(RowLayout::Bf16, 64, 103, 5), 0, &[1], rb)
        );
    }
}
