//! Every binary under an address-space limit (`ulimit -v`, 20 to 400 MB): it succeeds or
//! exits with a clear error, never SIGABRT (status 134) from a failed allocation (issue 20,
//! M3: `engram serve` at 20-100 MB, `moe-core generate` at 20 MB and `engram bench
//! --threads 64 --backend uring` at 200 MB aborted).
#![allow(clippy::panic)] // tests fail by panicking

mod common;

use common::bin;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `argv` under `ulimit -v MB` (through sh, so the limit holds from exec on).
fn limited(mb: u64, argv: &[&str]) -> Child {
    let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec {}",
            mb * 1024,
            quoted.join(" ")
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh")
}

/// Waits up to `limit`; a process still running is sent SIGTERM (a server that came up)
/// and must then stop. Returns (exit code or -signal, stderr, whether it was still up).
fn finish(mut child: Child, limit: Duration) -> (i32, String, bool) {
    let t0 = Instant::now();
    let mut up = false;
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > limit {
            up = true;
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t1 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t1.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let code = out
        .status
        .code()
        .unwrap_or_else(|| -out.status.signal().unwrap_or(0));
    (code, String::from_utf8_lossy(&out.stderr).into_owned(), up)
}

#[test]
fn every_binary_under_ulimit_v_errors_clearly_or_succeeds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("table");
    let st = Command::new(bin("engram"))
        .args(["synth", table.to_str().expect("utf-8")])
        .args(["--preset", "demo", "--base-size", "2000"])
        .output()
        .expect("engram synth");
    assert!(st.status.success(), "{st:?}");
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).expect("mkdir");
    std::fs::write(
        corpus.join("a.txt"),
        "def f(x):\n    return x + 1\n".repeat(200),
    )
    .expect("corpus");
    let t = table.to_str().expect("utf-8");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stdlib-moe-a");
    let (engram, build, moe) = (bin("engram"), bin("engram-build"), bin("moe-core"));
    let mut rows = Vec::new();
    for mb in [20u64, 50, 100, 200, 400] {
        let sock = tmp.path().join(format!("s{mb}.sock"));
        let out = tmp.path().join(format!("built{mb}"));
        let cases: [(&str, Vec<String>); 4] = [
            (
                "engram serve",
                vec![
                    engram.display().to_string(),
                    "serve".into(),
                    t.into(),
                    "--socket".into(),
                    sock.display().to_string(),
                ],
            ),
            (
                "engram bench --threads 64 --backend uring",
                [engram.display().to_string(), "bench".into(), t.into()]
                    .into_iter()
                    .chain(
                        ["--threads", "64", "--backend", "uring", "--batches", "20"]
                            .map(String::from),
                    )
                    .collect(),
            ),
            (
                "moe-core generate",
                [
                    moe.display().to_string(),
                    "generate".into(),
                    "--model".into(),
                    model.display().to_string(),
                ]
                .into_iter()
                .chain(["--no-engram", "--max-new-tokens", "3"].map(String::from))
                .collect(),
            ),
            (
                "engram-build",
                [
                    build.display().to_string(),
                    corpus.display().to_string(),
                    "--out".into(),
                    out.display().to_string(),
                ]
                .into_iter()
                .chain(
                    [
                        "--include",
                        "*.txt",
                        "--preset",
                        "demo",
                        "--base-size",
                        "1000",
                        "--quiet",
                    ]
                    .map(String::from),
                )
                .collect(),
            ),
        ];
        for (name, argv) in cases {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (code, err, up) = finish(limited(mb, &argv), Duration::from_secs(20));
            let last = err.lines().last().unwrap_or("").to_string();
            rows.push(format!(
                "{mb:>4} MB  {name:<42} exit {code:>4}{}  {last}",
                if up {
                    " (served, stopped by SIGTERM)"
                } else {
                    ""
                }
            ));
            assert!(
                code != 134 && code != -libc_sigabrt() && code != 101,
                "{name} under ulimit -v {mb} MB: exit {code} (an abort or a panic):\n{err}"
            );
            assert!(
                code == 0 || !err.trim().is_empty(),
                "{name} under ulimit -v {mb} MB: exit {code} without a message"
            );
        }
    }
    eprintln!("{}", rows.join("\n"));
}

fn libc_sigabrt() -> i32 {
    6
}
