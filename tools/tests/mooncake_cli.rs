//! `engram publish` / `lookup --backend mooncake` / `skeleton` / `unpublish` from the
//! command line: rows read back through Mooncake (full table and skeleton) are the memory
//! backend's bytes; an unreachable cluster falls back to the local table with the reason;
//! a build without the client says so; `engram serve --backend mooncake` serves the
//! published table's rows to `lookup --service` clients; Mooncake's own glog lines stay off
//! stderr. Needs a cluster for the first part (`scripts/mooncake-local.sh start`,
//! ENGRAM_MOONCAKE_MASTER).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Running;

fn engram(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .env_remove("GLOG_minloglevel")
        .env_remove("ENGRAM_MOONCAKE_VENV")
        .output()
        .expect("run engram");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hexes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            v["data"]["hex"].as_str().expect("hex").to_string()
        })
        .collect()
}

#[test]
fn lookup_through_mooncake_returns_the_memory_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("v41");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "3000"]);
    assert!(ok, "synth: {err}");
    let ids: Vec<String> = (0..300u64)
        .map(|k| ((k * 7919) % 20_000).to_string())
        .collect();
    let ids = ids.join(",");
    let base = ["lookup", t, "--layer-index", "1", "--rows", &ids, "--json"];
    let (ok, want, err) = engram(&[&base[..], &["--backend", "memory"]].concat());
    assert!(ok, "memory: {err}");
    let want = hexes(&want);

    // No cluster at this address: the full table falls back, with the reason.
    let down = ["--backend", "mooncake", "--mooncake", "127.0.0.1:1"];
    let (ok, got, err) = engram(&[&base[..], &down[..]].concat());
    if !engram_mooncake::CLIENT_COMPILED {
        assert!(!ok && err.contains("not compiled in"), "{err}");
        engram_kernels::skip::skipped(
            "the cluster part: engram is built without --features mooncake",
        );
        return;
    }
    assert!(ok, "fallback: {err}");
    assert!(err.contains("reading the local table"), "{err}");
    assert_eq!(hexes(&got), want);

    let required = std::env::var("ENGRAM_REQUIRE_MOONCAKE").is_ok_and(|v| v == "1");
    let Some(master) = std::env::var("ENGRAM_MOONCAKE_MASTER")
        .ok()
        .filter(|m| !m.is_empty())
    else {
        assert!(
            !required,
            "ENGRAM_REQUIRE_MOONCAKE=1 but ENGRAM_MOONCAKE_MASTER is unset"
        );
        engram_kernels::skip::skipped(
            "the cluster part: no Mooncake cluster (ENGRAM_MOONCAKE_MASTER unset)",
        );
        return;
    };
    let m = master.as_str();
    let (ok, _, err) = engram(&["unpublish", t, "--mooncake", m]);
    assert!(ok, "unpublish of nothing: {err}");
    let (ok, out, err) = engram(&[
        "publish",
        t,
        "--mooncake",
        m,
        "--name",
        "cli-test",
        "--quiet",
    ]);
    assert!(ok && out.is_empty(), "publish: {err}");
    let up = ["--backend", "mooncake", "--mooncake", m];
    let (ok, got, err) = engram(&[&base[..], &up[..]].concat());
    assert!(ok, "lookup on mooncake: {err}");
    assert!(!err.contains("local table"), "no fallback: {err}");
    assert_no_glog(&err, "lookup");
    assert!(got.contains("\"backend\":\"mooncake\""));
    assert_eq!(hexes(&got), want, "bytes through Mooncake");

    let (served, log) = serve_and_lookup(t, m, &ids, tmp.path());
    assert_eq!(
        served, want,
        "bytes through engram serve --backend mooncake"
    );
    assert_no_glog(&log, "serve");

    let skel = tmp.path().join("skeleton");
    let s = skel.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["skeleton", "cli-test", s, "--mooncake", m]);
    assert!(ok, "skeleton: {err}");
    // Read without --backend mooncake, the skeleton says how to read it.
    let (ok, _, err) = engram(&sbase_local(s, &ids));
    assert!(
        !ok && err.contains("is a Mooncake skeleton") && err.contains("--backend mooncake"),
        "a skeleton read locally: {err}"
    );
    let sbase = ["lookup", s, "--layer-index", "1", "--rows", &ids, "--json"];
    let (ok, got, err) = engram(&[&sbase[..], &up[..]].concat());
    assert!(ok, "lookup through the skeleton: {err}");
    assert_eq!(hexes(&got), want, "bytes through the skeleton");

    let (ok, _, err) = engram(&["unpublish", "--name", "cli-test", "--mooncake", m]);
    assert!(ok, "unpublish: {err}");
    let (ok, _, err) = engram(&[&sbase[..], &up[..]].concat());
    assert!(
        !ok && err.contains("not published"),
        "a skeleton of an unpublished table: {err}"
    );
    // The advice is to publish the full table, never the skeleton itself.
    assert!(
        err.contains("publish the full table") && !err.contains(&format!("engram publish {s}")),
        "{err}"
    );
}

/// Mooncake's glog lines ("I1207 12:00:00.000000 ...", "WARNING: Logging before
/// InitGoogleLogging()") are off stderr unless GLOG_minloglevel asks for them.
#[track_caller]
fn assert_no_glog(stderr: &str, what: &str) {
    assert!(
        !stderr.lines().any(|l| {
            let b = l.as_bytes();
            l.contains("InitGoogleLogging")
                || (b.len() > 5
                    && b"IWEF".contains(&b[0])
                    && b[1..5].iter().all(u8::is_ascii_digit))
        }),
        "{what}: Mooncake's log on stderr: {stderr}"
    );
}

/// `engram serve T --backend mooncake` on a socket in `dir`, rows `ids` of layer index 1
/// looked up through it (`lookup --service`), then SIGTERM; returns the rows' hex and the
/// server's stderr.
#[allow(clippy::panic)]
fn serve_and_lookup(
    t: &str,
    master: &str,
    ids: &str,
    dir: &std::path::Path,
) -> (Vec<String>, String) {
    let sock = dir.join("serve.sock");
    let s = sock.to_str().expect("utf-8");
    let mut server = Running(
        Command::new(env!("CARGO_BIN_EXE_engram"))
            .args([
                "serve",
                t,
                "--socket",
                s,
                "--backend",
                "mooncake",
                "--mooncake",
                master,
            ])
            .env_remove("GLOG_minloglevel")
            .env_remove("ENGRAM_MOONCAKE_VENV")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start engram serve"),
    );
    let mut stderr = server.0.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        all
    });
    let t0 = Instant::now();
    while !sock.exists() {
        if let Ok(Some(status)) = server.0.try_wait() {
            let log = log.join().unwrap_or_default();
            panic!("engram serve --backend mooncake exited ({status}): {log}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no socket within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let args = [
        "lookup",
        t,
        "--layer-index",
        "1",
        "--rows",
        ids,
        "--json",
        "--service",
        s,
    ];
    let (ok, got, err) = engram(&args);
    assert!(ok, "lookup --service: {err}");
    let ok = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM");
    let status = server.0.wait().expect("wait for engram serve");
    let log = log.join().unwrap_or_default();
    assert!(
        status.success(),
        "engram serve after SIGTERM: {status}: {log}"
    );
    (hexes(&got), log)
}

fn sbase_local<'a>(s: &'a str, ids: &'a str) -> [&'a str; 7] {
    ["lookup", s, "--layer-index", "1", "--rows", ids, "--json"]
}

/// A skeleton (rows only on the cluster) read with a local backend is refused with the
/// flags that read it, not reported as a checksum mismatch.
#[test]
fn a_skeleton_is_not_read_from_local_disk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "demo", "--base-size", "500"]);
    assert!(ok, "synth: {err}");
    std::fs::write(table.join(engram_mooncake::SKELETON_MARKER), "{}").expect("marker");
    let (ok, _, err) = engram(&["lookup", t, "--layer-index", "0", "--rows", "1"]);
    assert!(
        !ok && err.contains("is a Mooncake skeleton") && err.contains("--backend mooncake"),
        "{err}"
    );
    assert!(!err.contains("checksum"), "{err}");
}
