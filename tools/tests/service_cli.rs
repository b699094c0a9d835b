//! `engram serve` as a process, driven from the command line: `lookup --service` returns
//! the bytes `lookup` reads in-process, `bench --service` runs, `stats` and `/metrics`
//! show the clients, SIGHUP and `engram reload` pick up a replaced table, SIGTERM stops
//! the server and removes its socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let mut server = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
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
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start engram serve");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut banner = String::new();
    err.read_line(&mut banner).expect("banner");
    // Keep draining the server's log (a closed pipe would fail its writes).
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    let metrics = banner
        .split("metrics at http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in {banner:?}"))
        .to_string();
    eventually("the socket", || Path::new(&sock).exists());
    // The PID file names the server (written once it listens), for kill -HUP $(cat ...).
    let pid = std::fs::read_to_string(&pid_file).expect("the PID file");
    assert_eq!(pid.trim(), server.id().to_string());

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
    let mut http = std::net::TcpStream::connect(&metrics).expect("metrics");
    write!(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("get");
    let mut body = String::new();
    http.read_to_string(&mut body).expect("read");
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

    signal(&server, "-TERM");
    let status = server.wait().expect("wait");
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

/// A Mooncake-backed service is not built: asking for one is an error, never a service that
/// quietly reads the local disk instead.
#[test]
fn serve_refuses_the_mooncake_backend() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sock = tmp.path().join("s.sock");
    let (ok, _, err) = engram(&[
        "serve",
        tmp.path().to_str().expect("utf-8"),
        "--socket",
        sock.to_str().expect("utf-8"),
        "--backend",
        "mooncake",
        "--mooncake",
        "127.0.0.1:1",
    ]);
    assert!(!ok, "engram serve --backend mooncake started");
    assert!(err.contains("does not read from Mooncake"), "{err}");
    assert!(!sock.exists(), "a socket was created");
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
