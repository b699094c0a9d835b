//! The service against client processes: a client killed with SIGKILL mid-stream leaks
//! nothing and disturbs no one; a client of another user is refused (by the socket's mode,
//! and by the peer-credential rule when the mode is loosened). The clients are this test
//! binary run again in a child role ([`child_process`]).
#![allow(clippy::panic)] // tests fail by panicking

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use engram_client::{ClientOptions, RemoteStore};
use engram_server::{AllowRule, Server, ServerOptions, TableSpec};
use engram_store::{BackendKind, RowSource};

const CHILD_ENV: &str = "ENGRAM_SERVICE_TEST_CHILD";

/// The child role: `loop:SOCKET` looks rows up until killed (saying `attached` first);
/// `attach:SOCKET` attaches once and prints `CHILD: ok` or `CHILD: error: ...`.
#[test]
#[ignore = "a child role run by the other tests"]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (what, sock) = role.split_once(':').expect("role");
    let r = RemoteStore::connect(
        &format!("unix:{sock}"),
        &ClientOptions {
            slots: 4,
            slot_rows: 256,
            ..ClientOptions::default()
        },
    );
    match what {
        "attach" => match r {
            Ok(_) => println!("\nCHILD: ok (uid {})", rustix::process::getuid().as_raw()),
            Err(e) => println!("\nCHILD: error: {e}"),
        },
        "loop" => {
            let store = r.expect("attach");
            println!("attached");
            let rows = store.rows(0).expect("rows");
            let mut out = vec![0u8; 200 * store.row_bytes()];
            for k in 0u64.. {
                let ids = ids(200, rows, k);
                let t = store.prefetch(0, &ids, store.alloc_rows(200).expect("buf"));
                store.lookup_into(0, &ids, &mut out).expect("lookup");
                let (buf, res) = t.wait();
                res.expect("prefetch");
                assert!(buf[..] == out[..]);
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn child(exe: &Path, role: &str) -> Command {
    let mut c = Command::new(exe);
    c.args([
        "--ignored",
        "--exact",
        "child_process",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_ENV, role)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| {
            m.lines()
                .filter(|l| l.contains("memfd:engram-client-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_client_killed_mid_stream_leaks_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(2000, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Pread, 64 << 10),
    );
    let other = RemoteStore::connect(
        &format!("unix:{}", server.socket().display()),
        &ClientOptions::default(),
    )
    .expect("attach");
    let rb = other.row_bytes();
    let (fds0, maps0) = (open_fds(), memfd_mappings());
    let exe = std::env::current_exe().expect("exe");
    for round in 0..2 {
        let mut c = child(&exe, &format!("loop:{}", server.socket().display()))
            .spawn()
            .expect("spawn child");
        let mut said = String::new();
        let mut out = BufReader::new(c.stdout.take().expect("stdout"));
        while !said.contains("attached") {
            let mut line = String::new();
            assert!(
                out.read_line(&mut line).expect("read") > 0,
                "child said {said:?}"
            );
            said.push_str(&line);
        }
        eventually("the child's requests", || {
            server
                .stats()
                .client_list
                .iter()
                .any(|c| c.id != other.client_id() && c.requests.requests > 20)
        });
        drop(out);
        c.kill().expect("SIGKILL");
        let status = c.wait().expect("wait");
        // The test's own ends of the child's pipes are not the server's descriptors.
        drop(c);
        assert!(!status.success(), "round {round}: the child was not killed");
        eventually("the killed client's detach", || server.clients() == 1);
        eventually("its descriptors closed", || open_fds() <= fds0);
        eventually("its region unmapped", || memfd_mappings() <= maps0);
        let st = server.stats();
        assert_eq!(
            st.tables[0].requests.in_flight, 0,
            "requests left in flight"
        );
        assert_eq!(st.protocol_violations_total, 0);
        // The other client goes on.
        let ids = ids(100, other.rows(1).expect("rows"), round);
        let mut out = vec![0u8; ids.len() * rb];
        other
            .lookup_into(1, &ids, &mut out)
            .expect("lookup after the kill");
        assert!(out == expected_rows(&s, 1, &ids, rb));
    }
}

fn run_as_nobody(exe: &Path, role: &str) -> String {
    let out = child(exe, role)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("spawn as uid 65534");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("CHILD: "))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "the child said nothing useful: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[test]
fn a_client_of_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        if let Err(e) = engram_kernels::skip::skip_unless_required(
            "ENGRAM_REQUIRE_ROOT",
            "refusing another user's client needs root (to start a client as uid 65534); CI runs as root",
        ) {
            panic!(
                "{e} (this test runs as uid {})",
                rustix::process::geteuid().as_raw()
            );
        }
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tmp");
    let table = make_table(tmp.path(), "t", &spec(100, 5));
    // The child binary where uid 65534 can run it.
    let exe = tmp.path().join("client");
    std::fs::copy(std::env::current_exe().expect("exe"), &exe).expect("copy test binary");
    let start = |allow: AllowRule| {
        let mut o = ServerOptions::new(
            tmp.path().join("s.sock"),
            vec![TableSpec {
                name: "t".into(),
                path: table.clone(),
            }],
        );
        o.store = store_options(BackendKind::Memory, 0);
        o.allow = allow;
        o.max_clients = 8;
        Server::start(o).expect("server")
    };
    let server = start(AllowRule::default());
    let role = format!("attach:{}", server.socket().display());
    let mode = std::fs::metadata(server.socket())
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The socket's mode stops it first.
    let said = run_as_nobody(&exe, &role);
    assert!(
        said.contains("cannot connect") && said.contains("ermission denied"),
        "{said}"
    );
    // With the mode loosened by mistake, the credential rule still refuses.
    std::fs::set_permissions(server.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let said = run_as_nobody(&exe, &role);
    assert!(
        said.contains("refused") && said.contains("uid 65534"),
        "{said}"
    );
    assert!(server.stats().refused_total >= 1);
    // The negative control: the same user, allowed, attaches.
    server.stop();
    let server = start(AllowRule {
        uids: vec![65534],
        gid: None,
    });
    std::fs::set_permissions(server.socket(), std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    assert_eq!(run_as_nobody(&exe, &role), "ok (uid 65534)");
}
