//! `engram-build` end to end: a corpus directory becomes a table the store opens and
//! verifies, with rows that regenerate exactly and a profile the cache can load; imports
//! round-trip; interrupted builds publish nothing; bad input is a clear error; re-runs are
//! byte-identical.
//!
//! Needs the DeepSeek tokenizer (`scripts/fetch-tokenizer.sh`); without it each test prints
//! a skip reason, unless `ENGRAM_REQUIRE_TOKENIZER=1` (CI) makes that a failure.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use engram_kernels::quant::RowLayout;
use engram_store::Table;
use engram_store::profile::Profile;
use engram_tools::build::values::normal_row;

#[path = "../../engram-store/tests/common/sys.rs"]
mod sys;
use sys::listing;

fn tokenizer() -> Option<PathBuf> {
    engram_files::tokenizer::for_tests().expect("ENGRAM_REQUIRE_TOKENIZER is set")
}

fn build(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram-build"))
        .args(args)
        .output()
        .expect("engram-build runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn corpus(dir: &Path) -> PathBuf {
    let root = dir.join("corpus");
    std::fs::create_dir_all(root.join("pkg/test")).expect("mkdir");
    std::fs::write(
        root.join("pkg/a.py"),
        "def add(a, b):\n    return a + b\n\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n",
    )
    .expect("write");
    std::fs::write(
        root.join("pkg/b.py"),
        "import os\nprint(os.path.join('a', 'b'))\n",
    )
    .expect("write");
    std::fs::write(root.join("pkg/test/skip.py"), "x = 1\n").expect("write");
    std::fs::write(root.join("pkg/blob.bin"), b"\x00\x01\x02binary").expect("write");
    std::fs::write(
        root.join("docs.jsonl"),
        "{\"text\": \"hello world\"}\n{\"body\": 1}\n",
    )
    .expect("write");
    root
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const SMALL: [&str; 6] = [
    "--preset",
    "demo",
    "--base-size",
    "1000",
    "--layers",
    "1,15",
];

#[test]
fn corpus_to_verified_table_with_profile() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let out = dir.path().join("table");
    let mut args = vec![s(&root), "--out", s(&out), "--exclude", "**/test", "--json"];
    args.extend(SMALL);
    let (code, stdout, stderr) = build(&args);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON Lines"))
        .collect();
    assert_eq!(lines[0]["type"], "begin");
    assert!(
        lines.iter().any(|l| l["type"] == "warning"),
        "the binary file and bad record warn"
    );
    let summary = lines.last().expect("summary");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["data"]["corpus"]["documents"], 3, "{summary}");

    let table = Table::open(&out).expect("the published table opens");
    for layer in 0..table.n_layers() {
        table.verify_layer(layer).expect("every checksum holds");
    }
    // Rows regenerate exactly from (seed, layer id, row).
    let dim = table.manifest().dim as usize;
    let ids = [0u64, 7, 1234, table.rows(1).expect("rows") - 1];
    let mut got = vec![0u8; ids.len() * table.row_bytes()];
    table.read_rows_simple(1, &ids, &mut got).expect("reads");
    let mut want = vec![0u8; ids.len() * table.row_bytes()];
    for (i, &row) in ids.iter().enumerate() {
        let mut v = vec![0f32; dim];
        normal_row(0, 15, row, 1.0, &mut v);
        engram_kernels::quant::quantize_rows(
            RowLayout::Bf16,
            dim,
            &v,
            &mut want[i * table.row_bytes()..(i + 1) * table.row_bytes()],
        )
        .expect("encodes");
    }
    assert_eq!(got, want);

    let profile = Profile::read(&out.join("profile.bin")).expect("the profile loads");
    assert_eq!(profile.layers.len(), 2);
    assert!(
        profile
            .layers
            .iter()
            .all(|l| l.total_hits > 0 && !l.entries.is_empty())
    );
    assert_eq!(Some(profile.table_id), table.manifest().table_id_u64());
    let options = engram_store::StoreOptions {
        cache_bytes: 1 << 20,
        profile: Some(profile),
        ..engram_store::StoreOptions::default()
    };
    let store =
        engram_store::Store::open(&out, &options).expect("the store seeds from the profile");
    assert!(store.stats().cache_rows > 0, "the cache was seeded");

    // The next-token candidates: bound to the table, k as asked, and what the summary says.
    let c = engram_store::Candidates::read(&out.join("candidates.bin")).expect("candidates");
    assert_eq!(Some(c.table_id), table.manifest().table_id_u64());
    assert_eq!(c.k(), 8);
    assert!(!c.is_empty());
    let cs = &summary["data"]["candidates"];
    assert_eq!(cs["contexts_kept"].as_u64(), Some(c.len() as u64), "{cs}");
    assert_eq!(cs["bytes"].as_u64(), Some(c.file_bytes() as u64), "{cs}");
    assert_eq!(c.positions, cs["positions"].as_u64().expect("positions"));
    // "return a + b" follows "def add(a, b):" in the corpus: after ":\n    " (the last two
    // ids before "return"), the table lists some continuation.
    let tok = engram_files::tokenizer::load(&tokenizer().expect("tokenizer")).expect("loads");
    let table_c =
        engram_kernels::CompressionTable::from_tokenizer(&tok.tokenizer).expect("compression");
    let enc = tok
        .tokenizer
        .encode("def add(a, b):\n    return a + b\n", false)
        .expect("encodes");
    let canon: Vec<i64> = enc
        .get_ids()
        .iter()
        .map(|&r| table_c.compress_id(i64::from(r)).expect("in range"))
        .collect();
    let mut predicted = Vec::new();
    let hits = (2..canon.len())
        .filter(|&t| {
            c.predict_into(&canon[..t], 8, &mut predicted);
            predicted.contains(&enc.get_ids()[t])
        })
        .count();
    assert!(hits > 0, "no position of a corpus line is predicted");

    // --candidates-bytes 0 writes none; a bad k is refused.
    let none = dir.path().join("none");
    let mut args = vec![
        s(&root),
        "--out",
        s(&none),
        "--candidates-bytes",
        "0",
        "--quiet",
    ];
    args.extend(SMALL);
    let (code, _, stderr) = build(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(!none.join("candidates.bin").exists());
    let mut args = vec![
        s(&root),
        "--out",
        s(&none),
        "--candidates-k",
        "0",
        "--force",
    ];
    args.extend(SMALL);
    let (code, _, stderr) = build(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--candidates-k 0"), "{stderr}");
}

#[test]
fn rebuilds_are_byte_identical_whatever_the_thread_count() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let mut outs = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}"));
        let mut args = vec![s(&root), "--out", s(&out), "--threads", threads, "--quiet"];
        args.extend(SMALL);
        let (code, _, stderr) = build(&args);
        assert_eq!(code, 0, "{stderr}");
        outs.push(out);
    }
    let mut names: Vec<_> = std::fs::read_dir(&outs[0])
        .expect("table dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        5,
        "manifest, two layers, profile, candidates: {names:?}"
    );
    for n in names {
        let a = std::fs::read(outs[0].join(&n)).expect("read");
        let b = std::fs::read(outs[1].join(&n)).expect("read");
        assert!(a == b, "{n:?} differs between builds");
    }
}

fn write_checkpoint(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], meta: Option<String>) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .expect("view"),
            )
        })
        .collect();
    let meta = meta.map(|m| std::collections::HashMap::from([("engram".to_owned(), m)]));
    safetensors::serialize_to_file(views, meta, path).expect("writes");
}

#[test]
fn import_round_trips_exactly_and_within_fp8_error() {
    let Some(tok) = tokenizer() else { return };
    let sha = engram_files::tokenizer::load(&tok).expect("loads").sha256;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    // Layout: orders 2-3, 2 heads, base 50, layers [1] -> 4 primes.
    let layout = engram_kernels::EngramLayout::new(
        &engram_kernels::EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![50, 50],
            layer_ids: vec![1],
            seed: 0,
            pad_id: 2,
        },
        99_092,
        2,
    )
    .expect("valid");
    let rows = layout.layers[0].total_rows as usize;
    let dim = 32;
    let values: Vec<f32> = (0..rows * dim)
        .map(|i| ((i as f32) * 0.37).sin() * 3.0)
        .collect();
    let meta = serde_json::json!({
        "layer_ids": [1], "max_ngram": 3, "n_heads": 2, "base_sizes": [50, 50], "seed": 0,
        "pad_id": 2, "head_dim": dim, "dtype": "float32", "tokenizer_sha256": sha,
    })
    .to_string();
    let ckpt = dir.path().join("engram.safetensors");
    write_checkpoint(
        &ckpt,
        &[(
            "layers.1.engram.embedding.weight".into(),
            vec![rows, dim],
            values.clone(),
        )],
        Some(meta.clone()),
    );
    for (layout_flag, exact) in [("f32", true), ("fp8", false)] {
        let out = dir.path().join(format!("imp-{layout_flag}"));
        let (code, _, stderr) = build(&[
            s(&root),
            "--out",
            s(&out),
            "--import",
            s(&ckpt),
            "--row-layout",
            layout_flag,
            "--quiet",
        ]);
        assert_eq!(code, 0, "{stderr}");
        let table = Table::open(&out).expect("opens");
        let ids: Vec<u64> = (0..rows as u64).collect();
        let mut bytes = vec![0u8; rows * table.row_bytes()];
        table.read_rows_simple(0, &ids, &mut bytes).expect("reads");
        let dtype = if exact {
            RowLayout::F32
        } else {
            RowLayout::Fp8E4m3E8m0 { scale_block: 32 }
        };
        let mut back = vec![0f32; rows * dim];
        engram_kernels::quant::dequantize_rows(dtype, dim, &bytes, &mut back).expect("decodes");
        if exact {
            assert_eq!(back, values);
        } else {
            // E4M3 keeps 3 mantissa bits: relative error <= 2^-4 for normal values, and the
            // block scale keeps every value normal unless it is < 2^-6 of the block maximum.
            for (row, (b, v)) in back.chunks(dim).zip(values.chunks(dim)).enumerate() {
                let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (x, y) in b.iter().zip(v) {
                    let tol = (y.abs() / 16.0).max(amax / 448.0 * 2f32.powi(-6));
                    assert!((x - y).abs() <= tol, "row {row}: {x} vs {y}");
                }
            }
        }
    }
    // The wrong tokenizer, a contradicting flag, or a wrong shape are errors.
    let bad_meta = meta.replace(&sha, &"0".repeat(64));
    let bad = dir.path().join("bad.safetensors");
    write_checkpoint(
        &bad,
        &[(
            "layers.1.engram.embedding.weight".into(),
            vec![rows, dim],
            values.clone(),
        )],
        Some(bad_meta),
    );
    let (code, _, stderr) = build(&[
        s(&root),
        "--out",
        s(&dir.path().join("x")),
        "--import",
        s(&bad),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("trained with tokenizer"), "{stderr}");
    let (code, _, stderr) = build(&[
        s(&root),
        "--out",
        s(&dir.path().join("x")),
        "--import",
        s(&ckpt),
        "--heads",
        "4",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("contradicts the checkpoint"), "{stderr}");
    let short = dir.path().join("short.safetensors");
    write_checkpoint(
        &short,
        &[(
            "layers.1.engram.embedding.weight".into(),
            vec![rows - 1, dim],
            values[dim..].to_vec(),
        )],
        Some(meta),
    );
    let (code, _, stderr) = build(&[
        s(&root),
        "--out",
        s(&dir.path().join("x")),
        "--import",
        s(&short),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("has shape"), "{stderr}");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn killed_build_publishes_nothing_and_keeps_the_old_table() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let out = dir.path().join("table");
    let mut args = vec![s(&root), "--out", s(&out), "--quiet"];
    args.extend(SMALL);
    assert_eq!(build(&args).0, 0);
    let before = std::fs::read(out.join("manifest.json")).expect("manifest");
    // A much larger build over the same path (2.4 GiB: still writing when killed, and
    // within the free space of a shared machine), killed while it writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram-build"))
        .args([
            s(&root),
            "--out",
            s(&out),
            "--force",
            "--json",
            "--preset",
            "v41",
            "--base-size",
            "200000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    // Wait for the write phase to report progress, then kill.
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("\"phase\":\"write\"") => break,
            Some(Ok(_)) => {}
            _ => panic!("the build ended before writing"),
        }
    }
    child.kill().expect("kills");
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        std::fs::read(out.join("manifest.json")).expect("old manifest"),
        before
    );
    let table = Table::open(&out).expect("the old table still opens");
    assert_eq!(table.manifest().config.max_ngram, 3);
    // Nothing else at the target path opens as a table.
    let leftovers = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p != &out && p.is_dir() && p.file_name().is_some_and(|n| n != "corpus"))
            .collect()
    };
    for p in leftovers() {
        assert!(Table::open(&p).is_err(), "{} opens", p.display());
    }
    // The next build at that path removes the killed writer's temporary directory.
    let mut again = vec![s(&root), "--out", s(&out), "--quiet", "--force"];
    again.extend(SMALL);
    assert_eq!(build(&again).0, 0);
    assert!(leftovers().is_empty(), "left behind: {:?}", leftovers());
}

#[test]
fn bad_input_is_a_clear_error() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let out = dir.path().join("t");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    std::fs::write(empty.join("e.py"), "").expect("write");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "heads = 8\nhedas = 2\n").expect("write");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![s(&empty), "--out", s(&out)], "no tokens"),
        (
            vec!["/nonexistent/corpus", "--out", s(&out)],
            "/nonexistent/corpus",
        ),
        (
            vec![s(&root), "--out", s(&out), "--config", s(&cfg)],
            "unknown field",
        ),
        (vec![s(&root), "--out", s(&out), "--heads", "0"], "n_heads"),
        (
            vec![s(&root), "--out", s(&out), "--max-ngram", "1"],
            "max_ngram",
        ),
        (
            vec![s(&root), "--out", s(&out), "--init", "normal:x"],
            "not a number",
        ),
        (
            vec![
                s(&root),
                "--out",
                s(&out),
                "--row-layout",
                "fp8",
                "--dim",
                "20",
            ],
            "scale_block",
        ),
        (
            vec![s(&root), "--out", s(&out), "--tokenizer", s(&cfg)],
            "not a valid tokenizer.json",
        ),
        (vec![s(&root), "--out", s(&root)], "already exists"),
    ];
    for (args, needle) in cases {
        let (code, _, stderr) = build(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} should mention {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn dry_run_and_full_disk() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let (code, stdout, _) = build(&[
        s(&root),
        "--out",
        "/tmp/never",
        "--preset",
        "v41",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["data"]["estimate"]["rows"], 384_006_168u64 + 384_016_682);
    assert!(!Path::new("/tmp/never").exists());

    // A 1 MiB tmpfs cannot hold a 4 MiB table: refused before any work, nothing left.
    let Some(small) = Tmpfs::mount(&dir.path().join("small"), "1m") else {
        return;
    };
    let out = small.path.join("t");
    let mut args = vec![s(&root), "--out", s(&out)];
    args.extend(SMALL);
    let (code, _, stderr) = build(&args);
    assert_eq!(code, 2);
    assert!(stderr.contains("not enough free space"), "{stderr}");
    // The message states the headroom it asks for beyond the table.
    assert!(stderr.contains("plus 64.0 MiB of headroom"), "{stderr}");
    assert_eq!(listing(&small.path), Vec::<String>::new());
}

/// A small tmpfs mounted for one test (needs root), unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mkdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(path),
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                sys::skip_unless_required(
                    sys::REQUIRE_TMPFS_ENV,
                    "the full-disk cases",
                    &format!("cannot mount a tmpfs here (needs root): {why}"),
                );
                None
            }
        }
    }

    /// Free bytes as the file system reports them.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.path).expect("statvfs");
        st.f_bavail * st.f_frsize
    }

    /// Fills the file system with `filler` until exactly `keep` bytes are free.
    fn fill_leaving(&self, keep: u64) {
        let mut left = self
            .free()
            .checked_sub(keep)
            .expect("enough free space to fill");
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut f, &chunk[..n]).expect("fills");
            left -= n as u64;
        }
        f.sync_all().expect("fsync");
        assert_eq!(
            self.free(),
            keep,
            "the tmpfs now has exactly {keep} bytes free"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(s(&self.path)).status();
    }
}

const CORPUS_TEXT: &str = "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n";

/// `TINY` addressing: a ~320 KB table, so a small tmpfs holds it with the build's headroom.
const TINY: [&str; 6] = ["--preset", "demo", "--base-size", "10", "--layers", "1,15"];

/// Runs `engram-build -` (corpus on stdin) with `args`; `at_begin` runs once the build has
/// passed its checks and locked its path (its `begin` event), before it reads the corpus.
fn build_from_stdin(args: &[&str], at_begin: impl FnOnce()) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram-build"))
        .arg("-")
        .args(args)
        .args(["--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let begun = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("\"type\":\"begin\""));
    if begun {
        at_begin();
    }
    let mut stdin = child.stdin.take().expect("piped");
    let _ = std::io::Write::write_all(&mut stdin, CORPUS_TEXT.as_bytes());
    drop(stdin);
    lines.for_each(drop);
    let out = child.wait_with_output().expect("waits");
    assert!(
        begun,
        "the build ended before its begin event: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bytes a tmpfs charges for a file of `len` bytes (whole pages).
fn pages(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

#[test]
fn disk_full_while_writing_rows_profile_or_manifest_keeps_the_old_table() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for two tables and the build's headroom, not much more.
    let Some(fs) = Tmpfs::mount(&dir.path().join("mnt"), "80m") else {
        return;
    };
    let out = fs.path.join("t");
    let mut args = vec!["--out", s(&out)];
    args.extend(TINY);
    // The cases below size the free space from the rows and the profile alone.
    args.extend(["--candidates-bytes", "0"]);
    let (code, stderr) = build_from_stdin(&args, || {});
    assert_eq!(code, 0, "{stderr}");
    let old_id = Table::open(&out)
        .expect("opens")
        .manifest()
        .table_id
        .clone();
    let size = |name: &str| std::fs::metadata(out.join(name)).expect("stat").len();
    let layer_bytes: u64 = ["layer-000-id1.bin", "layer-001-id15.bin"]
        .iter()
        .map(|f| pages(size(f)))
        .sum();
    // The replacement has other rows (zeros) but the same files and the same profile size.
    let profile_bytes = pages(size("profile.bin"));
    let mut replace = args.clone();
    replace.extend(["--force", "--init", "zeros"]);
    let cases = [
        ("rows", 8 * 4096, "layer-000-id1.bin"),
        ("profile", layer_bytes, "profile.bin"),
        ("manifest", layer_bytes + profile_bytes, "manifest.json"),
    ];
    for (case, free, file) in cases {
        let (code, stderr) = build_from_stdin(&replace, || fs.fill_leaving(free));
        eprintln!(
            "disk full during the {case}: exit {code}: {}",
            stderr.trim()
        );
        assert_eq!(code, 2, "{case}: {stderr}");
        assert!(
            stderr.contains("No space left on device") && stderr.contains(file),
            "{case}: the error names the file and the cause: {stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{case}: one line: {stderr}"
        );
        // Nothing published, nothing half-written left behind, the old table intact.
        assert_eq!(listing(&fs.path), ["filler", "t"], "{case}");
        let t = Table::open(&out).expect("the old table opens");
        assert_eq!(t.manifest().table_id, old_id, "{case}");
        for layer in 0..t.n_layers() {
            t.verify_layer(layer).expect("verifies");
        }
        let profile = Profile::read(&out.join("profile.bin")).expect("the old profile");
        assert_eq!(
            Some(profile.table_id),
            t.manifest().table_id_u64(),
            "{case}"
        );
        std::fs::remove_file(fs.path.join("filler")).expect("rm filler");
    }
    // With room again the replacement is published, with its profile.
    let (code, stderr) = build_from_stdin(&replace, || {});
    assert_eq!(code, 0, "{stderr}");
    let t = Table::open(&out).expect("opens");
    assert_ne!(t.manifest().table_id, old_id);
    let profile = Profile::read(&out.join("profile.bin")).expect("the new profile");
    assert_eq!(Some(profile.table_id), t.manifest().table_id_u64());
    assert_eq!(listing(&fs.path), ["t"]);
}

#[test]
fn killed_at_each_fsync_and_rename_of_its_publication_engram_build_keeps_a_table() {
    // engram-build's own publication: kill it at every fsync (each layer file, the profile,
    // the manifest, the directory, the parent) and at the swap. Every other syscall of a
    // table write is swept in engram-store's publish_crash test.
    if tokenizer().is_none() {
        return;
    }
    let exe = Path::new(env!("CARGO_BIN_EXE_engram-build"));
    if let Err(why) = sys::strace_can_kill(exe, &["--version"]) {
        sys::skip_unless_required(sys::REQUIRE_STRACE_ENV, "the engram-build kill test", &why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let parent = dir.path().join("p");
    let out = parent.join("t");
    let old = || {
        let st = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args([
                "synth",
                s(&out),
                "--preset",
                "demo",
                "--base-size",
                "10",
                "--force",
            ])
            .output()
            .expect("engram synth runs");
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        Table::open(&out)
            .expect("opens")
            .manifest()
            .table_id
            .clone()
    };
    let old_id = old();
    let mut args = vec![s(&root), "--out", s(&out), "--force", "--quiet"];
    args.extend(TINY);
    let (mut old_left, mut new_left) = (0, 0);
    for (syscall, n) in (1..=7).map(|n| ("fsync", n)).chain([("renameat2", 1)]) {
        let mut cmd = Command::new(exe);
        cmd.args(&args);
        let st = sys::under_strace(&cmd, &sys::kill_at(syscall, n))
            .output()
            .expect("strace runs");
        let what = format!("killed at {syscall} #{n}");
        if st.status.signal() != Some(9) {
            // Past the last fsync the build completes.
            assert!(
                st.status.success() && syscall == "fsync",
                "{what}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
            assert!(n > 5, "{what}: a build makes at least 5 fsyncs");
            assert_eq!(old(), old_id);
            continue;
        }
        let names = listing(&parent);
        assert!(
            names
                .iter()
                .all(|n| n == "t" || n == ".t.lock" || n.starts_with(".t.tmp-")),
            "{what}: {names:?}"
        );
        let t = Table::open(&out).expect("the path holds a table");
        for layer in 0..t.n_layers() {
            t.verify_layer(layer).expect("verifies");
        }
        if t.manifest().table_id == old_id {
            old_left += 1;
            assert!(
                !out.join("profile.bin").exists(),
                "{what}: the old (synthetic) table has no profile"
            );
        } else {
            new_left += 1;
            let profile =
                Profile::read(&out.join("profile.bin")).expect("the new table has its profile");
            assert_eq!(
                Some(profile.table_id),
                t.manifest().table_id_u64(),
                "{what}"
            );
        }
        // The next write cleans up and succeeds.
        assert_eq!(old(), old_id);
        assert_eq!(listing(&parent), ["t"], "{what}");
    }
    assert!(
        old_left > 0 && new_left > 0,
        "kills before and after the swap: {old_left} / {new_left}"
    );
}

#[test]
fn a_second_build_to_the_same_path_fails_at_once_naming_the_first() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = corpus(dir.path());
    let out = dir.path().join("t");
    let mut args = vec!["--out", s(&out), "--force"];
    args.extend(TINY);
    let mut second = None;
    // The first build holds the path's lock while it waits for its corpus on stdin.
    let (code, stderr) = build_from_stdin(&args, || {
        let mut a = vec![s(&root)];
        a.extend(&args);
        second = Some(build(&a));
    });
    assert_eq!(code, 0, "the first build completes: {stderr}");
    let (code, _, stderr) = second.expect("the second build ran");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("another writer (process ") && stderr.contains(".t.lock"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    Table::open(&out).expect("the first build's table");
    assert_eq!(listing(dir.path()), ["corpus", "t"]);
}

/// A corpus whose n-grams recur (the same functions in several files).
fn repetitive_corpus(dir: &Path) -> PathBuf {
    let root = dir.join("rep");
    std::fs::create_dir_all(&root).expect("mkdir");
    for i in 0..6 {
        std::fs::write(
            root.join(format!("m{i}.py")),
            format!(
                "import os\n\n\ndef join_{i}(a, b):\n    return os.path.join(a, b)\n\n\n\
                 class Stack{i}:\n    def push(self, x):\n        self.items.append(x)\n\n\
                 def pop(self):\n        return self.items.pop()\n"
            ),
        )
        .expect("write");
    }
    root
}

/// Builds `root` into `out` with records of `budget` bytes; returns the summary's data.
fn build_with_records(root: &Path, out: &Path, budget: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        s(root),
        "--out",
        s(out),
        "--records-bytes",
        budget,
        "--json",
    ];
    args.extend(SMALL);
    args.extend(extra);
    let (code, stdout, stderr) = build(&args);
    assert_eq!(code, 0, "{stderr}");
    let last = stdout.lines().last().expect("summary");
    let summary: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(summary["type"], "summary");
    summary["data"].clone()
}

/// Writes nonzero padding into the last unit of the first layer with records (checksums
/// made right) in a copy of the table at `out`, and expects `inspect --verify` to fail.
fn padded_unit_is_corruption(out: &Path, recs: &engram_store::records::Records) {
    use engram_store::records::{RECORDS_FILE, fix_checksums};
    let Some(l) = recs.layers.iter().flatten().next() else {
        return;
    };
    let (ub, rpu) = (
        u64::from(recs.shape.unit_bytes),
        u64::from(recs.shape.records_per_unit),
    );
    let last = l.data_bytes / ub - 1;
    let used = l.n_records - last * rpu;
    let pad_at = used * recs.shape.record_bytes();
    if pad_at >= ub {
        eprintln!("SKIPPED: the last records unit has no padding");
        return;
    }
    let copy = out.with_extension("padded");
    let _ = std::fs::remove_dir_all(&copy);
    std::fs::create_dir_all(&copy).expect("mkdir");
    for e in std::fs::read_dir(out).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
    }
    let path = copy.join(RECORDS_FILE);
    let mut file = std::fs::read(&path).expect("records.bin");
    let unit_at = (l.data_offset + last * ub) as usize;
    file[unit_at + pad_at as usize] = 0x5a;
    let sum = engram_store::format::block_checksum(last, &file[unit_at..unit_at + ub as usize]);
    let sums_at = (l.data_offset + l.data_bytes + 8 * last) as usize;
    file[sums_at..sums_at + 8].copy_from_slice(&sum.to_le_bytes());
    fix_checksums(&mut file);
    std::fs::write(&path, &file).expect("write");
    let st = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["inspect", s(&copy), "--verify"])
        .output()
        .expect("engram inspect runs");
    let text =
        String::from_utf8_lossy(&st.stdout).to_string() + &String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{text}");
    assert!(text.contains("nonzero padding"), "{text}");
}

#[test]
fn records_verify_and_serve_the_table_bytes() {
    use engram_store::records::{RECORDS_FILE, Records};
    use engram_store::{BackendKind, BackendOptions, Store, StoreOptions};
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repetitive_corpus(dir.path());
    let out = dir.path().join("table");
    let data = build_with_records(&root, &out, "64K", &["--row-layout", "fp8"]);
    let r = &data["records"];
    assert_eq!(r["file"], RECORDS_FILE, "{data}");
    let size = std::fs::metadata(out.join(RECORDS_FILE))
        .expect("records.bin")
        .len();
    assert_eq!(r["bytes"], size);
    assert!(size <= 64 << 10, "{size} bytes is over the budget");
    assert!(r["records"].as_u64().unwrap_or(0) > 0, "{data}");

    let st = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["inspect", s(&out), "--verify", "--json"])
        .output()
        .expect("engram inspect runs");
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("verify_records") && l.contains("\"ok\":true")),
        "{text}"
    );

    // Every row of every record, looked up record by record (so that a miss reads the
    // record), is the memory backend's row, with records on and off.
    let table = Table::open(&out).expect("opens");
    let recs = Records::open(&out.join(RECORDS_FILE), &table).expect("records open");
    let open = |kind, records| {
        Store::open(
            &out,
            &StoreOptions {
                backend: BackendOptions {
                    kind: Some(kind),
                    ..Default::default()
                },
                records,
                ..Default::default()
            },
        )
        .expect("store opens")
    };
    let memory = open(BackendKind::Memory, false);
    let with = open(BackendKind::Pread, true);
    let without = open(BackendKind::Pread, false);
    let rb = table.row_bytes();
    for (li, l) in recs.layers.iter().enumerate() {
        let Some(l) = l else { continue };
        let mut by_record: Vec<(u32, u8, u64)> = l
            .entries()
            .map(|(row, (rec, pos))| (rec, pos, row))
            .collect();
        by_record.sort_unstable();
        let ids: Vec<u64> = by_record.iter().map(|&(_, _, row)| row).collect();
        let mut want = vec![0u8; ids.len() * rb];
        memory.lookup_into(li, &ids, &mut want).expect("memory");
        for store in [&with, &without] {
            let mut got = vec![0u8; ids.len() * rb];
            store.lookup_into(li, &ids, &mut got).expect("pread");
            assert!(got == want, "layer index {li}: bytes differ");
        }
    }
    // Nonzero padding after a unit's last record, with every checksum made right, is
    // still corruption to `inspect --verify` (issue 20).
    padded_unit_is_corruption(&out, &recs);
    let (sw, so) = (with.stats(), without.stats());
    assert!(sw.record_reads > 0, "records were read: {sw:?}");
    assert_eq!(so.record_reads, 0);
    assert!(
        sw.device_reads < so.device_reads,
        "{} vs {}",
        sw.device_reads,
        so.device_reads
    );
}

#[test]
fn records_are_byte_identical_whatever_the_thread_count() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repetitive_corpus(dir.path());
    let mut files = Vec::new();
    for threads in ["1", "2"] {
        let out = dir.path().join(format!("t{threads}"));
        build_with_records(&root, &out, "32K", &["--threads", threads]);
        files.push(std::fs::read(out.join("records.bin")).expect("records.bin"));
    }
    assert!(
        files[0] == files[1],
        "records.bin differs between 1 and 2 threads"
    );
}

#[test]
fn records_budgets_out_of_range_are_clear_errors() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repetitive_corpus(dir.path());
    let out = dir.path().join("t");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--records-bytes", "4K"],
            "too small for one record per layer",
        ),
        (&["--records-bytes", "1G"], "more than the table's"),
        (&["--records-bytes", "2T"], "MAX_RECORDS_BYTES"),
        (&["--records-skip-cached", "1M"], "needs --records-bytes"),
    ];
    for (flags, msg) in cases {
        let mut args = vec![s(&root), "--out", s(&out)];
        args.extend(SMALL);
        args.extend(flags);
        let (code, _, stderr) = build(&args);
        assert_ne!(code, 0, "{flags:?} should fail");
        assert!(stderr.contains(msg), "{flags:?}: {stderr}");
        assert!(!out.exists(), "{flags:?} published a table");
    }
    // A cache as large as the table skips every record whose rows the profile pins.
    let data = build_with_records(&root, &out, "32K", &["--records-skip-cached", "1G"]);
    let skipped: u64 = data["records"]["skipped_cached"]
        .as_array()
        .expect("per layer")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert!(skipped > 0, "{data}");
}
