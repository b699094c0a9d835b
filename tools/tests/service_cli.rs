//! `engram serve` as a process, driven from the command line: `lookup --service` returns
//! the bytes `lookup` reads in-process, `bench --service` runs, `stats` and `/metrics`
//! show the clients, SIGHUP and `engram reload` pick up a replaced table, SIGTERM stops
//! the server and removes its socket.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use common::Running;

fn engram(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
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

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

fn lookup(t: &str, extra: &[&str]) -> Vec<String> {
    let base = [
        "lookup",
        t,
        "--layer-index",
        "1",
        "--rows",
        "0,5,5,77,300",
        "--json",
    ];
    let (ok, out, err) = engram(&[&base[..], extra].concat());
    assert!(ok, "lookup {extra:?}: {err}");
    hexes(&out)
}

/// Starts `engram ARGS` (a server with `--metrics-addr`) with `env` set; returns it, its
/// metrics address (from its banner, after any log lines) and a thread draining the rest
/// of its log.
#[allow(clippy::panic)]
fn start_server(
    args: &[&str],
    env: Option<(&str, &str)>,
) -> (Running, String, std::thread::JoinHandle<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
    cmd.args(args).stderr(Stdio::piped());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut server = Running(cmd.spawn().expect("start engram serve"));
    let mut err = BufReader::new(server.0.stderr.take().expect("stderr"));
    let mut metrics = None;
    let mut seen = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        if err.read_line(&mut line).expect("server log") == 0 {
            break;
        }
        metrics = line
            .split("metrics at http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .map(str::to_string);
        seen.push_str(&line);
        if metrics.is_some() {
            break;
        }
    }
    let metrics = metrics.unwrap_or_else(|| panic!("no metrics address in {seen:?}"));
    // Keep draining the server's log (a closed pipe would fail its writes).
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    (server, metrics, log)
}

#[test]
fn serve_lookup_bench_stats_reload_and_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&[
        "synth",
        t,
        "--preset",
        "v41",
        "--base-size",
        "500",
        "--seed",
        "1",
    ]);
    assert!(ok, "synth: {err}");
    let sock = tmp.path().join("engram.sock");
    let s = sock.to_str().expect("utf-8");
    let pid_file = tmp.path().join("engram.pid");
    let (mut server, metrics, log) = start_server(
        &[
            "serve",
            t,
            "--socket",
            s,
            "--pid-file",
            pid_file.to_str().expect("utf-8"),
            "--cache-bytes",
            "1M",
            "--metrics-addr",
            "127.0.0.1:0",
            "--backend",
            "pread",
        ],
        None,
    );
    eventually("the socket", || Path::new(&sock).exists());
    // The PID file names the server (written once it listens), for kill -HUP $(cat ...).
    let pid = std::fs::read_to_string(&pid_file).expect("the PID file");
    assert_eq!(pid.trim(), server.0.id().to_string());

    let want = lookup(t, &["--backend", "memory"]);
    assert_eq!(want.len(), 5);
    assert_eq!(
        lookup(t, &["--service", s]),
        want,
        "bytes through the service"
    );
    assert_eq!(lookup("t", &["--service", s]), want, "the table by name");

    let (ok, out, err) = engram(&[
        "bench",
        t,
        "--service",
        s,
        "--batch-rows",
        "48",
        "--batches",
        "30",
        "--threads",
        "2",
        "--prefetch-depth",
        "2",
    ]);
    assert!(ok, "bench: {err}");
    assert!(out.contains("service(pread)"), "{out}");

    let (ok, out, err) = engram(&["stats", "--service", s]);
    assert!(ok, "stats: {err}");
    assert!(
        out.contains("table t (") && out.contains("backend pread"),
        "{out}"
    );
    let body = get_metrics(&metrics);
    assert!(body.contains("engram_service_connections_total "), "{body}");

    // A replaced table is picked up on SIGHUP, and on `engram reload`.
    let (ok, _, err) = engram(&[
        "synth",
        t,
        "--preset",
        "v41",
        "--base-size",
        "500",
        "--seed",
        "2",
        "--force",
    ]);
    assert!(ok, "synth again: {err}");
    assert_eq!(lookup(t, &["--service", s]), want, "not before a reload");
    let new = lookup(t, &["--backend", "memory"]);
    assert_ne!(new, want);
    // SIGHUP by the PID file, as the README does: never by process name.
    let ok = Command::new("sh")
        .args([
            "-c",
            "kill -HUP $(cat \"$0\")",
            pid_file.to_str().expect("utf-8"),
        ])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -HUP $(cat PIDFILE)");
    eventually("the reload", || lookup(t, &["--service", s]) == new);
    let (ok, out, err) = engram(&["reload", "--service", s]);
    assert!(ok && out.contains("t: reloaded"), "{out} {err}");

    signal(&server.0, "-TERM");
    let status = server.0.wait().expect("wait");
    let log = log.join().expect("log");
    assert!(status.success(), "{status}: {log}");
    assert!(!Path::new(&sock).exists(), "socket left behind");
    assert!(!pid_file.exists(), "PID file left behind");
    let (ok, _, err) = engram(&[
        "lookup",
        t,
        "--service",
        s,
        "--layer-index",
        "0",
        "--rows",
        "1",
    ]);
    assert!(!ok && err.contains("cannot connect"), "{err}");
}

/// `engram serve --backend mooncake` reads through Mooncake or not at all: with the cluster
/// out of reach it stops with an error naming Mooncake, never serving the local disk
/// instead. (Serving from a live cluster: `engram-mooncake`'s cluster tests, which need
/// `scripts/mooncake-local.sh`.)
#[test]
fn serve_on_an_unreachable_mooncake_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "100"]);
    assert!(ok, "synth: {err}");
    let sock = tmp.path().join("s.sock");
    let (ok, _, err) = engram(&[
        "serve",
        t,
        "--socket",
        sock.to_str().expect("utf-8"),
        "--backend",
        "mooncake",
        "--mooncake",
        "127.0.0.1:1",
    ]);
    assert!(
        !ok,
        "engram serve --backend mooncake started without a cluster"
    );
    assert!(err.contains("Mooncake"), "{err}");
    assert!(!sock.exists(), "a socket was created");
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn get_metrics(addr: &str) -> String {
    let mut http = std::net::TcpStream::connect(addr).expect("metrics");
    write!(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("get");
    let mut body = String::new();
    http.read_to_string(&mut body).expect("read");
    body
}

/// An engine that breaks under the server (`ENGRAM_IO_FAULTS=reap@4`: the 5th reap of each
/// reactor fails): the request in flight gets a typed error naming the engine, the next
/// ones the right rows, the server keeps serving, `/metrics` counts the failure and the
/// rebuild, and SIGTERM still stops it.
#[test]
fn serve_survives_an_engine_failure() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "500"]);
    assert!(ok, "synth: {err}");
    let sock = tmp.path().join("engram.sock");
    let s = sock.to_str().expect("utf-8");
    let (mut server, metrics, log) = start_server(
        &[
            "serve",
            t,
            "--socket",
            s,
            "--metrics-addr",
            "127.0.0.1:0",
            "--backend",
            "pread",
            "--io-workers",
            "1",
        ],
        Some(("ENGRAM_IO_FAULTS", "reap@4")),
    );
    eventually("the socket", || Path::new(&sock).exists());
    let want = lookup(t, &["--backend", "memory"]);
    let mut failed = 0;
    for _ in 0..8 {
        let (ok, out, err) = engram(&[
            "lookup",
            t,
            "--service",
            s,
            "--layer-index",
            "1",
            "--rows",
            "0,5,5,77,300",
            "--json",
        ]);
        if ok {
            assert_eq!(hexes(&out), want, "rows after the failure");
        } else {
            assert!(err.contains("I/O engine pread failed"), "untyped: {err}");
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "one request saw the engine fail");
    let body = get_metrics(&metrics);
    assert_eq!(
        metric(&body, "engram_store_engine_failures_total{"),
        1,
        "{body}"
    );
    assert_eq!(
        metric(&body, "engram_store_engine_rebuilds_total{"),
        1,
        "{body}"
    );
    signal(&server.0, "-TERM");
    let status = server.0.wait().expect("wait");
    let log = log.join().expect("log");
    assert!(status.success(), "{status}: {log}");
    assert!(!Path::new(&sock).exists(), "socket left behind");
}

/// `engram bench --prefetch-depth 4` with an engine that fails its n-th submit or reap
/// ends by itself (an error or a result), never hangs.
#[test]
fn bench_ends_under_engine_failures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "500"]);
    assert!(ok, "synth: {err}");
    let uring = engram_store::backend::runnable_here(engram_store::BackendKind::Uring)
        .expect("io_uring required here");
    for backend in ["pread", "uring"] {
        if backend == "uring" && !uring {
            continue;
        }
        for fault in ["submit@3", "reap@2", "submit@40", "reap@30"] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
                .args([
                    "bench",
                    t,
                    "--backend",
                    backend,
                    "--prefetch-depth",
                    "4",
                    "--batches",
                    "40",
                    "--batch-rows",
                    "64",
                ])
                .env("ENGRAM_IO_FAULTS", fault)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start engram bench");
            let t0 = Instant::now();
            let status = loop {
                if let Some(st) = child.try_wait().expect("wait") {
                    break st;
                }
                if t0.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    panic!("engram bench --backend {backend} with {fault} hangs");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(
                status.success() || err.contains("I/O engine"),
                "{backend} {fault}: {status}: {err}"
            );
        }
    }
}

/// Without --socket the server listens under $XDG_RUNTIME_DIR (or the current directory)
/// where /run/engram does not exist; a socket directory that does not exist is an error
/// that says what to create.
#[test]
fn serve_defaults_to_a_socket_the_user_can_create() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "demo", "--base-size", "500"]);
    assert!(ok, "synth: {err}");

    let missing = tmp.path().join("no-such-dir/engram.sock");
    let (ok, _, err) = engram(&["serve", t, "--socket", missing.to_str().expect("utf-8")]);
    assert!(!ok, "served on a socket in a missing directory");
    assert!(
        err.contains("no-such-dir does not exist; create it") && err.contains("--socket PATH"),
        "{err}"
    );

    if Path::new("/run/engram").is_dir() {
        engram_kernels::skip::skipped("/run/engram exists here: the user default is not used");
        return;
    }
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir(&xdg).expect("mkdir");
    for (runtime_dir, want) in [
        (Some(&xdg), xdg.join("engram.sock")),
        (None, tmp.path().join("engram.sock")),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.args(["serve", t, "--backend", "pread"])
            .current_dir(tmp.path())
            .stderr(Stdio::piped());
        match runtime_dir {
            Some(d) => cmd.env("XDG_RUNTIME_DIR", d),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        let mut server = cmd.spawn().expect("start engram serve");
        let mut err = BufReader::new(server.stderr.take().expect("stderr"));
        let mut banner = String::new();
        err.read_line(&mut banner).expect("banner");
        eventually("the default socket", || want.exists());
        assert!(
            banner.contains(&format!("on {}", want.display())) || banner.contains("on engram.sock"),
            "{banner}"
        );
        signal(&server, "-TERM");
        assert!(server.wait().expect("wait").success());
        assert!(!want.exists(), "socket left behind");
    }
}
