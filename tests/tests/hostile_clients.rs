//! `engram serve` against hostile clients (issue 20, H1 and M1): a client that turns the
//! completion doorbell it was handed into a blocking, full counter and submits a lookup,
//! five times against `--max-clients 4`; a client that sends its hello one byte a second
//! while the server is told to stop. Afterwards a good client is served and SIGTERM stops
//! the server within a few seconds: no attack holds a thread, a client slot or the stop.
#![allow(clippy::panic)] // tests fail by panicking

mod common;

use common::bin;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engram_client::protocol::{OP_LOOKUP, PROTOCOL_VERSION, Request, Sqe};
use engram_client::raw::RawClient;
use engram_client::{ClientOptions, RemoteStore};
use engram_kernels::EngramConfig;
use engram_store::{RowLayout, RowSource, Store, StoreOptions};
use engram_testbed::synth::{SynthSpec, write_synth};

fn table(dir: &Path) -> PathBuf {
    let spec = SynthSpec {
        config: EngramConfig {
            max_ngram: 3,
            n_heads: 2,
            base_sizes: vec![500, 507],
            layer_ids: vec![1, 4],
            seed: 3,
            pad_id: 2,
        },
        row_layout: RowLayout::Bf16,
        dim: 64,
        seed: 11,
        block_bytes: None,
    };
    let t = dir.join("t");
    write_synth(&t, &spec, true, |_, _, _| {}).expect("synth table");
    t
}

/// A server process, killed if a test fails before stopping it.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `engram serve TABLE --socket DIR/s.sock --max-clients 4`, once it listens.
fn serve(dir: &Path, table: &Path) -> (Served, PathBuf) {
    let sock = dir.join("s.sock");
    let mut child = Command::new(bin("engram"))
        .arg("serve")
        .arg(table)
        .arg("--socket")
        .arg(&sock)
        .args(["--max-clients", "4", "--max-in-flight", "16"])
        .args(["--backend", "memory"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("engram serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("table(s) on") => break,
            Some(Ok(_)) => {}
            _ => panic!("engram serve did not start: {:?}", child.wait()),
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Served(child), sock)
}

/// Sends SIGTERM and waits up to `limit` for the server to exit.
fn stop_within(server: &mut Served, limit: Duration) -> Duration {
    let child = &mut server.0;
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "engram serve exited with {status}");
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("engram serve ignored SIGTERM for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One H1 attack: attach by hand, make the completion doorbell blocking, fill it to
/// 0xfffffffffffffffe (an eventfd's largest count) and submit a lookup, so that the
/// server's ring of that doorbell would block; then go away.
fn doorbell_attack(sock_path: &Path) {
    let c = RawClient::attach(sock_path, 2, 8, 128).expect("the attacker attaches");
    // O_NONBLOCK off on the description the server was given, then the counter full.
    let cq = c.cq_bell.fd();
    rustix::fs::fcntl_setfl(cq, rustix::fs::OFlags::empty()).expect("F_SETFL");
    let _ = rustix::io::write(cq, &0xffff_ffff_ffff_fffeu64.to_ne_bytes());
    c.region
        .write_u64s(c.layout.ids(0), &[1, 2, 3])
        .expect("ids");
    let sqe = Sqe {
        op: OP_LOOKUP,
        slot: 0,
        layer: 0,
        rows: 3,
        tag: 1,
    };
    c.submit(0, sqe).expect("submit");
    // Long enough for the server to serve the lookup and ring the doorbell.
    std::thread::sleep(Duration::from_millis(300));
}

fn good_client_is_served(sock: &Path, table: &Path) {
    let remote = RemoteStore::connect(
        &format!("unix:{}", sock.display()),
        &ClientOptions::default(),
    )
    .expect("a good client attaches after the attacks");
    let local = Store::open(table, &StoreOptions::default()).expect("store");
    let ids = [0u64, 7, 499, 3, 7];
    let rb = remote.row_bytes();
    let (mut a, mut b) = (vec![0u8; ids.len() * rb], vec![0u8; ids.len() * rb]);
    remote.lookup_into(1, &ids, &mut a).expect("lookup");
    local.lookup_into(1, &ids, &mut b).expect("lookup");
    assert!(a == b, "rows through the service differ from the table's");
}

#[test]
fn doorbell_attacks_hold_no_thread_slot_or_stop() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = table(tmp.path());
    let (mut server, sock) = serve(tmp.path(), &table);
    for _ in 0..5 {
        doorbell_attack(&sock);
    }
    good_client_is_served(&sock, &table);
    let took = stop_within(&mut server, Duration::from_secs(5));
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(!sock.exists(), "the socket file is removed on stop");
}

#[test]
fn a_hello_dribbled_one_byte_a_second_does_not_hold_sigterm() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = table(tmp.path());
    let (mut server, sock) = serve(tmp.path(), &table);
    let hello = serde_json::to_vec(&Request::Hello {
        version: PROTOCOL_VERSION,
        table: None,
        slots: 2,
        slot_rows: 8,
        server_spin_us: 0,
    })
    .expect("json");
    let mut frame = (hello.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&hello);
    let mut s = UnixStream::connect(&sock).expect("connect");
    let dribbler = std::thread::spawn(move || {
        for b in frame {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    let took = stop_within(&mut server, Duration::from_secs(3));
    eprintln!("stopped {took:?} after SIGTERM with a hello half sent");
    drop(dribbler);
}

/// `engram serve` with arguments, to its exit: (status, stderr).
fn serve_fails(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(bin("engram"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("engram serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failed_start_removes_its_socket_file_and_never_a_live_servers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = table(tmp.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("addr").to_string();
    let sock = tmp.path().join("other.sock");
    let (code, err) = serve_fails(&[
        table.as_os_str(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "--metrics-addr".as_ref(),
        port.as_ref(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        !sock.exists(),
        "the failed start left {}: {err}",
        sock.display()
    );
    // A second server on a live server's socket fails and leaves that socket alone.
    let (mut live, live_sock) = serve(tmp.path(), &table);
    let (code, err) = serve_fails(&[
        table.as_os_str(),
        "--socket".as_ref(),
        live_sock.as_os_str(),
        "--metrics-addr".as_ref(),
        port.as_ref(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("another server is listening"), "{err}");
    good_client_is_served(&live_sock, &table);
    stop_within(&mut live, Duration::from_secs(5));
}

#[test]
fn max_clients_0_says_why() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = table(tmp.path());
    let sock = tmp.path().join("s.sock");
    let (code, err) = serve_fails(&[
        table.as_os_str(),
        "--socket".as_ref(),
        sock.as_os_str(),
        "--max-clients".as_ref(),
        "0".as_ref(),
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("0 would refuse every client") && !err.contains("above the limit"),
        "{err}"
    );
    assert!(!sock.exists());
}
