//! Hostile inputs and flags from issue 9, through the binaries: each is a clear error (exit
//! 1 or 2, one line naming the file or flag) within seconds; none panics, aborts or hangs.
//! Before: `probe --block-bytes 0` and `--row-bytes 0` panicked, `synth --base-size 1e11`
//! tried a 400 GB allocation, `vectors` on a FIFO hung and on zero cases printed "all
//! match", `--threads` was unbounded, `--print-config` needed `--out`, and a non-UTF-8
//! `--out` panicked after publishing.

use std::path::Path;
use std::process::{Command, Stdio};

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn engram(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_engram"), args)
}

fn build(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_engram-build"), args)
}

fn mkfifo(p: &Path) {
    let ok = Command::new("mkfifo")
        .arg(p)
        .status()
        .expect("mkfifo")
        .success();
    assert!(ok, "mkfifo {}", p.display());
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One line on stderr that contains `needle`, and the expected exit code.
fn assert_error(case: &str, (code, _, err): (i32, String, String), want: i32, needle: &str) {
    assert_eq!(code, want, "{case}: exit {code}: {err}");
    assert!(err.contains(needle), "{case}: {err:?} lacks {needle:?}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{case}: one line expected: {err}"
    );
    assert!(!err.contains("panicked"), "{case}: {err}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data.bin");
    std::fs::write(&file, vec![0u8; 1 << 16]).expect("write");
    let f = s(&file);
    let probe = |extra: &[&str]| {
        let mut a = vec!["probe", "--file", f];
        if !extra.contains(&"--queue-depths") {
            a.extend(["--queue-depths", "1"]);
        }
        if !extra.contains(&"--seconds") {
            a.extend(["--seconds", "0.01"]);
        }
        a.extend_from_slice(extra);
        engram(&a)
    };
    assert_error(
        "probe block 0",
        probe(&["--block-bytes", "0"]),
        2,
        "--block-bytes 0",
    );
    assert_error(
        "probe block 1000",
        probe(&["--block-bytes", "1000"]),
        2,
        "power of two",
    );
    assert_error(
        "probe row 0",
        probe(&["--row-bytes", "0"]),
        2,
        "--row-bytes 0",
    );
    assert_error(
        "probe seconds NaN",
        probe(&["--seconds", "nan"]),
        2,
        "--seconds NaN",
    );
    assert_error(
        "probe qd 0",
        probe(&["--queue-depths", "0"]),
        2,
        "--queue-depths 0",
    );
    assert_error(
        "probe dram 2^60",
        probe(&["--dram-bytes", "1048576T"]),
        2,
        "cannot allocate",
    );
    assert_error(
        "probe dram 2^64",
        probe(&["--dram-bytes", "16777216T"]),
        2,
        "2^64",
    );
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    assert_error(
        "probe FIFO",
        engram(&["probe", "--file", s(&fifo), "--seconds", "0.01"]),
        2,
        "FIFO",
    );

    let out = dir.path().join("synth");
    assert_error(
        "synth base 1e11",
        engram(&["synth", s(&out), "--base-size", "100000000000"]),
        2,
        "check --base-size",
    );
    assert!(!out.exists());

    assert_error(
        "build threads",
        build(&["x", "--out", s(&out), "--threads", "1000000"]),
        2,
        "MAX_THREADS",
    );
    assert_error(
        "bench threads",
        engram(&["bench", s(dir.path()), "--threads", "1000000"]),
        2,
        "MAX_THREADS",
    );
    assert_error(
        "bench ids",
        engram(&["bench", s(dir.path()), "--batches", "1000000000"]),
        2,
        "MAX_BENCH_IDS",
    );
    assert_error(
        "build without --out",
        build(&["x"]),
        2,
        "--out DIR is required",
    );
    // README: `engram-build --preset v41 --print-config > build.toml`, no --out needed.
    let (code, toml, err) = build(&["--preset", "v41", "--print-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(toml.contains("preset = \"v41\""), "{toml}");
}

#[test]
fn special_and_empty_vector_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("v.json");
    mkfifo(&fifo);
    assert_error("vectors FIFO", engram(&["vectors", s(&fifo)]), 2, "FIFO");
    assert_error(
        "vectors /dev/zero",
        engram(&["vectors", "/dev/zero"]),
        2,
        "character device",
    );
    let zero = dir.path().join("zero.json");
    std::fs::write(
        &zero,
        r#"{"format":"engram-hash-v1","compression_tables":{},"cases":[]}"#,
    )
    .expect("write");
    assert_error(
        "vectors with zero cases",
        engram(&["vectors", s(&zero)]),
        2,
        "checks nothing",
    );
    let toml = dir.path().join("build.toml");
    mkfifo(&toml);
    assert_error(
        "build --config FIFO",
        build(&["--config", s(&toml), "--print-config"]),
        2,
        "FIFO",
    );
    assert_error(
        "build --import /dev/zero",
        build(&["--import", "/dev/zero", "--out", s(&dir.path().join("t"))]),
        2,
        "character device",
    );
}

fn tokenizer_available() -> bool {
    engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_some()
}

/// A corpus directory holding special files, published at a non-UTF-8 path with JSON
/// output; then `inspect --verify` catches a corrupted profile (exit 1) and an edited
/// manifest (exit 2).
#[test]
fn special_corpus_files_non_utf8_out_and_verify() {
    use std::os::unix::ffi::OsStrExt;
    if !tokenizer_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).expect("mkdir");
    std::fs::write(corpus.join("a.py"), "def f(x):\n    return x + 1\n").expect("write");
    mkfifo(&corpus.join("b.py"));
    std::os::unix::fs::symlink("/dev/zero", corpus.join("c.py")).expect("symlink");
    let out = dir.path().join(std::ffi::OsStr::from_bytes(b"table-\xff"));
    let status = Command::new(env!("CARGO_BIN_EXE_engram-build"))
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .args(["--base-size", "1000", "--json"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.contains("\"type\":\"summary\""))
        .expect("a summary line");
    assert!(summary.contains("table-\u{fffd}"), "{summary}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\"type\":\"warning\""))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(warnings.iter().any(|w| w.contains("FIFO")), "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.contains("character device")),
        "{warnings:?}"
    );
    assert!(summary.contains("\"skipped\":2"), "{summary}");

    // A sane path for the rest.
    let table = dir.path().join("table");
    std::fs::rename(&out, &table).expect("rename");
    let t = s(&table);
    let (code, text, err) = engram(&["inspect", t, "--verify"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("verify profile:"), "{text}");
    let profile = table.join("profile.bin");
    let mut b = std::fs::read(&profile).expect("profile");
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&profile, &b).expect("write");
    let (code, text, _) = engram(&["inspect", t, "--verify"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("verify profile: FAILED"), "{text}");
    std::fs::remove_file(&profile).expect("rm");
    mkfifo(&profile);
    let (code, text, _) = engram(&["inspect", t, "--verify"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FIFO"), "{text}");
    std::fs::remove_file(&profile).expect("rm");

    let manifest = table.join("manifest.json");
    let orig = std::fs::read_to_string(&manifest).expect("manifest");
    for (what, from, to) in [
        ("pad_id", "\"pad_id\": 2", "\"pad_id\": 3"),
        (
            "compressed_pad_id",
            "\"compressed_pad_id\": ",
            "\"compressed_pad_id\": 1",
        ),
        (
            "tokenizer_sha256",
            "\"tokenizer_sha256\": \"8",
            "\"tokenizer_sha256\": \"9",
        ),
    ] {
        assert!(orig.contains(from), "{what}: {from}");
        std::fs::write(&manifest, orig.replacen(from, to, 1)).expect("write");
        assert_error(
            what,
            engram(&["inspect", t, "--verify"]),
            2,
            "changed after the table was written",
        );
    }
}
