//! `engram-build --import CHECKPOINT_DIR` on replicas of DeepSeek-V4.1-Flash's checkpoint
//! (`engram replica-checkpoint`): every row of the table equals the checkpoint's bytes
//! (values then scales) on every backend; the committed models' tables are unchanged;
//! hostile checkpoints are errors naming the tensor and the file and publish nothing; a
//! killed or out-of-space import leaves no half table and keeps the old one.
//!
//! Needs the DeepSeek tokenizer (`scripts/fetch-tokenizer.sh`); without it each test prints
//! a skip reason, unless `ENGRAM_REQUIRE_TOKENIZER=1` (CI) makes that a failure.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use engram_store::{BackendKind, Store, StoreOptions, Table};
use engram_tools::checkpoint::safetensors::ShardHeader;
use engram_tools::checkpoint::{CheckpointDir, replica};

#[path = "../../engram-store/tests/common/sys.rs"]
mod sys;
use sys::listing;

fn tokenizer() -> Option<PathBuf> {
    engram_files::tokenizer::for_tests().expect("ENGRAM_REQUIRE_TOKENIZER is set")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(exe: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn build(args: &[&str]) -> (i32, String, String) {
    run(env!("CARGO_BIN_EXE_engram-build"), args)
}

/// Writes a replica at `dir` with `vocab` as engram_vocab_size and extra flags.
fn replica(dir: &Path, vocab: u64, extra: &[&str]) {
    let v = vocab.to_string();
    let mut args = vec!["replica-checkpoint", s(dir), "--vocab-size", &v];
    args.extend(extra);
    let (code, _, err) = run(env!("CARGO_BIN_EXE_engram"), &args);
    assert_eq!(code, 0, "replica-checkpoint: {err}");
}

/// The checkpoint's bytes of row `row` of layer `layer_id`: values then scales, read from
/// the shard files themselves.
struct Source {
    dir: CheckpointDir,
    headers: std::collections::BTreeMap<String, ShardHeader>,
}

impl Source {
    fn open(dir: &Path) -> Self {
        Self {
            dir: CheckpointDir::open(dir).expect("opens"),
            headers: Default::default(),
        }
    }

    /// Every row of layer `layer_id`, packed as the table stores them.
    fn rows(&mut self, layer_id: u64) -> Vec<u8> {
        let vn = format!("layers.{layer_id}.engram.embed.weight");
        let sn = format!("layers.{layer_id}.engram.embed.scale");
        let v = self.dir.locate(&vn, &mut self.headers).expect("values");
        let sc = self.dir.locate(&sn, &mut self.headers).expect("scales");
        let read = |name: &str, t: &engram_tools::checkpoint::safetensors::TensorInfo| {
            let f =
                std::fs::File::open(self.dir.dir.join(&self.dir.weight_map[name])).expect("shard");
            let mut b = vec![0u8; t.bytes() as usize];
            f.read_exact_at(&mut b, t.begin).expect("reads");
            b
        };
        let (vb, sb) = (read(&vn, &v), read(&sn, &sc));
        let (dim, k) = (v.shape[1] as usize, sc.shape[1] as usize);
        let mut out = Vec::with_capacity(vb.len() + sb.len());
        for (vr, sr) in vb.chunks_exact(dim).zip(sb.chunks_exact(k)) {
            out.extend_from_slice(vr);
            out.extend_from_slice(sr);
        }
        out
    }
}

#[test]
fn every_row_equals_the_checkpoint_bytes_on_every_backend() {
    let Some(_) = tokenizer() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = dir.path().join("ck");
    // Orders and heads left out of config.json: the importer assumes V4.1's.
    replica(&ck, 600, &["--omit-orders-heads", "--seed", "9"]);
    let out = dir.path().join("t");
    let (code, stdout, err) = build(&["--import", s(&ck), "--out", s(&out), "--json"]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .expect("summary");
    assert_eq!(
        summary["data"]["import"]["verified_against_sha256sums"], 2,
        "{summary}"
    );
    let table = Table::open(&out).expect("opens");
    let m = table.manifest();
    assert_eq!(m.config.layer_ids, [1, 14]);
    assert_eq!((m.config.max_ngram, m.config.n_heads), (4, 8));
    assert_eq!(m.row_bytes, 264);
    // The manifest binds the table to the shards it came from.
    let sums = std::fs::read_to_string(ck.join("SHA256SUMS")).expect("sums");
    let listed: Vec<&str> = sums
        .lines()
        .filter(|l| l.contains("00002") || l.contains("00003"))
        .map(|l| &l[..64])
        .collect();
    assert_eq!(m.build.checkpoint_sha256, listed);
    for li in 0..2 {
        table.verify_layer(li).expect("checksums");
    }

    let mut src = Source::open(&ck);
    let want: Vec<Vec<u8>> = [1, 14].iter().map(|&l| src.rows(l)).collect();
    // The replica's bytes are its generator's: the file was written as documented.
    let mut gen_row = vec![0u8; 256];
    replica::tensor_bytes(
        9,
        "layers.14.engram.embed.weight",
        "F8_E4M3",
        77 * 256,
        &mut gen_row,
    );
    assert_eq!(&want[1][77 * 264..77 * 264 + 256], &gen_row[..]);

    let mut backends = vec![BackendKind::Memory, BackendKind::Mmap, BackendKind::Pread];
    if engram_store::backend::runnable_here(BackendKind::Uring).expect("required backend") {
        backends.push(BackendKind::Uring);
    }
    for kind in backends {
        let mut opts = StoreOptions::default();
        opts.backend.kind = Some(kind);
        let store = Store::open(&out, &opts).expect("store opens");
        for (li, want) in want.iter().enumerate() {
            let rows = (want.len() / 264) as u64;
            assert_eq!(rows, table.rows(li).expect("rows"));
            for first in (0..rows).step_by(4096) {
                let ids: Vec<u64> = (first..(first + 4096).min(rows)).collect();
                let mut got = vec![0u8; ids.len() * 264];
                store.lookup_into(li, &ids, &mut got).expect("lookup");
                let at = first as usize * 264;
                assert!(
                    got == want[at..at + got.len()],
                    "{kind:?} layer index {li}: rows {first}.. differ from the checkpoint"
                );
            }
        }
    }
}

/// SHA-256 of every file of the tables `engram-build --import models/M/engram.safetensors`
/// wrote before the streaming importer existed (main at 25203b8).
const COMMITTED: [(&str, &str, &str); 2] = [
    (
        "stdlib-moe-engram-b",
        "8fbb8c31b914de6724e2f34ddc81c490d194c4a3ba69e8e46aa31af64a48b2e5",
        "6d63449274b568aec78121514b794e9cb970508cdddd34ddc59a86ab6c03c9a0",
    ),
    (
        "stdlib-moe-engram-mhc-c",
        "9c69e73465d90c7eead36b984785a9b06e833c104a70cea36bb9891e19c5835b",
        "ba04cdc866e5979a435a5abcd0930958e1213d63fea0ce5777d82b36f11977f9",
    ),
];

#[test]
fn committed_models_import_to_the_same_bytes_as_before() {
    let Some(_) = tokenizer() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    for (model, layer_sha, manifest_sha) in COMMITTED {
        let out = dir.path().join(model);
        // The manifest records the source path as given (and the table id hashes it):
        // run from the workspace root with the path the recorded tables were built with.
        let ckpt = format!("models/{model}/engram.safetensors");
        let o = Command::new(env!("CARGO_BIN_EXE_engram-build"))
            .current_dir(&root)
            .args(["--import", &ckpt, "--out", s(&out), "--quiet"])
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("runs");
        assert!(
            o.status.success(),
            "{model}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let sha =
            |f: &str| engram_files::file::sha256_hex(&std::fs::read(out.join(f)).expect("reads"));
        assert_eq!(sha("layer-000-id1.bin"), layer_sha, "{model}");
        assert_eq!(sha("manifest.json"), manifest_sha, "{model}");
    }
}

/// Overwrites `from` with `to` (same length) in the first bytes of `file` (its header).
fn patch_header(file: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut b = std::fs::read(file).expect("reads");
    let n = 8 + u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize;
    let at = b[..n]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("the text to patch is in the header");
    b[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(file, b).expect("writes");
}

#[test]
fn hostile_checkpoints_are_named_errors_and_publish_nothing() {
    let Some(_) = tokenizer() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    replica(&good, 300, &[]);
    let shard2 = "model-00002-of-00004.safetensors";
    let shard3 = "model-00003-of-00004.safetensors";
    let vals1 = "layers.1.engram.embed.weight";
    let scales1 = "layers.1.engram.embed.scale";
    // A table already at the path must survive every failed import.
    let out = dir.path().join("t");
    assert_eq!(
        build(&["--import", s(&good), "--out", s(&out), "--quiet"]).0,
        0
    );
    let before = std::fs::read(out.join("manifest.json")).expect("manifest");

    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, Vec<&str>, Vec<&str>)> = vec![
        (
            "missing scales tensor",
            Box::new(move |d: &Path| {
                let p = d.join("model.safetensors.index.json");
                let text = std::fs::read_to_string(&p).expect("index");
                let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
                v["weight_map"]
                    .as_object_mut()
                    .expect("map")
                    .remove(scales1);
                std::fs::write(&p, v.to_string()).expect("writes");
            }),
            vec![],
            vec![scales1, "model.safetensors.index.json"],
        ),
        (
            "wrong dtype",
            Box::new(move |d: &Path| patch_header(&d.join(shard2), "F8_E8M0", "F8_E5M2")),
            vec![],
            vec![scales1, shard2, "F8_E5M2"],
        ),
        (
            "wrong shape (header disagrees with its byte range)",
            Box::new(move |d: &Path| {
                let rows = CheckpointDir::open(d)
                    .expect("opens")
                    .config
                    .expect("config")
                    .num_embeddings
                    .expect("rows")
                    .value[0];
                patch_header(
                    &d.join(shard2),
                    &format!("[{rows},256]"),
                    &format!("[{},256]", rows - 1),
                );
            }),
            vec![],
            vec![vals1, shard2],
        ),
        (
            "rows that are not the prime rule's (--heads overrides config.json)",
            Box::new(|_: &Path| {}),
            vec!["--heads", "7"],
            vec!["engram_num_embeddings", "config.json"],
        ),
        (
            "config.json head_dim mismatch",
            Box::new(|d: &Path| {
                let p = d.join("config.json");
                let t = std::fs::read_to_string(&p).expect("config");
                std::fs::write(
                    &p,
                    t.replace("\"engram_head_dim\": 256", "\"engram_head_dim\": 128"),
                )
                .expect("writes");
            }),
            vec![],
            vec!["engram_head_dim", vals1, shard2],
        ),
        (
            "truncated shard",
            Box::new(move |d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(shard3))
                    .expect("opens");
                let len = f.metadata().expect("stat").len();
                f.set_len(len - 5000).expect("truncates");
            }),
            vec![],
            vec!["layers.14.engram.embed.scale", shard3, "truncated"],
        ),
        (
            "corrupted shard (SHA256SUMS)",
            Box::new(move |d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(d.join(shard2))
                    .expect("opens");
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, 5000).expect("reads");
                f.write_all_at(&[b[0] ^ 0x01], 5000).expect("writes");
            }),
            vec![],
            vec![shard2, "SHA256SUMS", "corrupted"],
        ),
        (
            "corrupted scale (E8M0 NaN), no SHA256SUMS",
            Box::new(move |d: &Path| {
                std::fs::remove_file(d.join("SHA256SUMS")).expect("rm");
                let h = ShardHeader::read(&d.join(shard2)).expect("header");
                let at = h.tensors[scales1].begin + 8 * 10 + 3;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(shard2))
                    .expect("opens");
                f.write_all_at(&[0xff], at).expect("writes");
            }),
            vec![],
            vec![scales1, shard2, "row 10 scale 3"],
        ),
        (
            "not a safetensors file",
            Box::new(move |d: &Path| {
                std::fs::write(d.join(shard2), b"\x10\0\0\0\0\0\0\0not json{{{{{{{{")
                    .expect("writes")
            }),
            vec![],
            vec![shard2, "not JSON"],
        ),
    ];
    for (what, damage, flags, needles) in cases {
        let ck = dir.path().join("damaged");
        if ck.exists() {
            std::fs::remove_dir_all(&ck).expect("rm");
        }
        copy_dir(&good, &ck);
        damage(&ck);
        let mut args = vec!["--import", s(&ck), "--out", s(&out), "--force"];
        args.extend(flags);
        let (code, _, err) = build(&args);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {err:?} should mention {n:?}");
        }
        assert_eq!(
            std::fs::read(out.join("manifest.json")).expect("old manifest"),
            before,
            "{what}: the old table was replaced"
        );
        let names = listing(dir.path());
        assert!(
            names.iter().all(|n| !n.contains(".t.tmp-")),
            "{what}: left {names:?}"
        );
        // A fresh path gets nothing at all.
        let fresh = dir.path().join("fresh");
        let mut args = vec!["--import", s(&ck), "--out", s(&fresh), "--quiet"];
        args.extend(if what.contains("--heads") {
            &["--heads", "7"][..]
        } else {
            &[]
        });
        assert_eq!(build(&args).0, 2, "{what}");
        assert!(!fresh.exists(), "{what}: published a table");
    }
    Table::open(&out).expect("the old table still opens");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("ls") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copies");
    }
}

#[test]
fn dry_run_reports_tensors_offsets_and_estimates_without_writing() {
    let Some(_) = tokenizer() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = dir.path().join("ck");
    replica(&ck, 300, &["--layers", "3"]);
    let out = dir.path().join("t");
    // The index file names the checkpoint as well as its directory.
    let index = ck.join("model.safetensors.index.json");
    let (code, stdout, err) = build(&[
        "--import",
        s(&index),
        "--out",
        s(&out),
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let imp = &v["data"]["import"];
    let l = &imp["layers"][0];
    assert_eq!(l["layer_id"], 3);
    assert_eq!(l["values"]["name"], "layers.3.engram.embed.weight");
    assert_eq!(l["values"]["shard"], "model-00002-of-00003.safetensors");
    assert_eq!(l["scales"]["dtype"], "F8_E8M0");
    let h = ShardHeader::read(&ck.join("model-00002-of-00003.safetensors")).expect("header");
    assert_eq!(
        l["scales"]["begin"],
        h.tensors["layers.3.engram.embed.scale"].begin
    );
    assert!(imp["estimate_seconds"].as_f64().expect("seconds") >= 0.0);
    assert!(imp["read_bytes"].as_u64().expect("bytes") > 0);
    assert!(!out.exists());
    // Patterns can be overridden (and a wrong one names the tensor it looked for).
    let (code, _, err) = build(&[
        "--import",
        s(&ck),
        "--out",
        s(&out),
        "--dry-run",
        "--import-scale-pattern",
        "layers.{layer}.engram.embed.scale_inv",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("layers.3.engram.embed.scale_inv"), "{err}");
}

/// Spawns an import with `--json`; returns once it has locked the path and is about to
/// stream (its `begin` event), stopped with SIGSTOP so the test can act before it goes on.
fn spawn_stopped_at_begin(args: &[&str]) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram-build"))
        .args(args)
        .arg("--json")
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
    assert!(begun, "the import ended before its begin event");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("stops");
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn resume(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("continues");
}

#[test]
fn a_killed_import_leaves_the_old_table_and_restarts_from_scratch() {
    let Some(_) = tokenizer() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    replica(&small, 300, &["--layers", "1"]);
    let big = dir.path().join("big");
    replica(&big, 20_000, &["--layers", "1"]);
    let out = dir.path().join("t");
    assert_eq!(
        build(&["--import", s(&small), "--out", s(&out), "--quiet"]).0,
        0
    );
    let before = std::fs::read(out.join("manifest.json")).expect("manifest");
    let mut child = spawn_stopped_at_begin(&["--import", s(&big), "--out", s(&out), "--force"]);
    resume(&child);
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().expect("kills");
    let _ = child.wait();
    assert_eq!(
        std::fs::read(out.join("manifest.json")).expect("old manifest"),
        before
    );
    Table::open(&out).expect("the old table opens");
    // The next import starts over (there is no resume) and cleans up the killed one's files.
    let (code, _, err) = build(&["--import", s(&big), "--out", s(&out), "--force", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let names = listing(dir.path());
    assert!(names.iter().all(|n| !n.contains(".t.tmp-")), "{names:?}");
    assert_ne!(
        std::fs::read(out.join("manifest.json")).expect("manifest"),
        before
    );
}

#[test]
fn out_of_space_while_streaming_leaves_nothing() {
    let Some(_) = tokenizer() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = dir.path().join("ck");
    // One layer of ~24 x 3000 rows: a 20 MB table.
    replica(&ck, 3000, &["--layers", "1"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=120m", "tmpfs", s(&mnt)])
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            sys::skip_unless_required(
                sys::REQUIRE_TMPFS_ENV,
                "the out-of-space import",
                &format!("cannot mount a tmpfs here (needs root): {why}"),
            );
            return;
        }
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let out = mnt.join("t");
    let child = spawn_stopped_at_begin(&["--import", s(&ck), "--out", s(&out)]);
    // The free-space check passed; now leave 2 MiB, far less than the table.
    let st = rustix::fs::statvfs(&mnt).expect("statvfs");
    let fill = st.f_bavail * st.f_frsize - (2 << 20);
    let f = std::fs::File::create(mnt.join("filler")).expect("filler");
    let chunk = vec![1u8; 1 << 20];
    let mut left = fill;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut &f, &chunk[..n]).expect("fills");
        left -= n as u64;
    }
    resume(&child);
    let out_put = child.wait_with_output().expect("waits");
    let err = String::from_utf8_lossy(&out_put.stderr);
    assert_eq!(out_put.status.code(), Some(2), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert_eq!(listing(&mnt), ["filler"], "nothing but the filler is left");
}
