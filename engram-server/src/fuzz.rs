//! Fuzz entry point for the service protocol (issue 20): what a hostile client can send a
//! live server, run in-process against one server started on first use (a synthetic table,
//! memory backend, in a directory under the temporary directory). Shared by the libFuzzer
//! target `fuzz/fuzz_targets/service_protocol.rs` and the regression run over its corpus
//! (`tests/tests/fuzz_corpora.rs`). The first byte picks what the rest is:
//!
//! - 0: raw bytes on a fresh connection, before any hello (a control frame or garbage);
//! - 1: an attached client's ring: the rest is submission entries (32 bytes each) and,
//!   after them, bytes for the slots' id areas, published with a tail the input also picks
//!   (in range or not);
//! - 2: raw bytes on an attached client's socket (control frames after the hello).
//!
//! Invariant after every input: a well-behaved client (attached at start) still gets the
//! right rows, and a new one still attaches: the attacker was cut off or served, alone.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engram_store::RowSource;

use crate::{Server, ServerOptions, TableSpec};
use engram_client::protocol::{H_CQ_TAIL, H_SQ_TAIL, SQE_BYTES};
use engram_client::raw::RawClient;
use engram_client::{ClientOptions, RemoteStore};

struct Fixture {
    _server: Server,
    socket: PathBuf,
    good: RemoteStore,
    want: Vec<u8>,
}

const GOOD_IDS: [u64; 3] = [0, 7, 99];

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("engram-fuzz-service-{}", std::process::id()));
        let table = dir.join("t");
        engram_store::fuzz::write_small_table(&table).expect("table");
        let socket = dir.join("s.sock");
        let mut o = ServerOptions::new(
            socket.clone(),
            vec![TableSpec {
                name: "t".into(),
                path: table.clone(),
            }],
        );
        o.store.backend.kind = Some(engram_store::BackendKind::Memory);
        o.max_clients = 8;
        o.store.max_in_flight = 64;
        let server = Server::start(o).expect("server");
        let good = RemoteStore::connect(
            &format!("unix:{}", socket.display()),
            &ClientOptions {
                slots: 2,
                slot_rows: 16,
                ..ClientOptions::default()
            },
        )
        .expect("good client");
        let mut want = vec![0u8; GOOD_IDS.len() * good.row_bytes()];
        good.lookup_into(0, &GOOD_IDS, &mut want).expect("rows");
        Fixture {
            _server: server,
            socket,
            good,
            want,
        }
    })
}

/// A client attached by hand (2 slots of 4 rows); `None` when refused (too many clients
/// still detaching).
fn attach(f: &Fixture) -> Option<RawClient> {
    RawClient::attach(&f.socket, 2, 4, f.good.row_bytes() as u32).ok()
}

/// Writes `bytes` and waits a little for whatever the server answers.
fn poke(sock: &mut UnixStream, bytes: &[u8]) {
    let _ = sock.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = sock.write_all(bytes);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut b = [0u8; 4096];
    let _ = std::io::Read::read(sock, &mut b);
}

fn ring(f: &Fixture, data: &[u8]) {
    let Some(c) = attach(f) else {
        return;
    };
    let (region, layout) = (&c.region, c.layout);
    let Some((&tail_pick, rest)) = data.split_first() else {
        return;
    };
    let n = (rest.len() / SQE_BYTES).min(layout.ring as usize);
    for (i, e) in rest.chunks_exact(SQE_BYTES).take(n).enumerate() {
        region.write(layout.sqe(i as u32), e).expect("sqe");
    }
    let ids = &rest[n * SQE_BYTES..];
    let id_bytes = layout.slots as usize * layout.slot_rows as usize * 8;
    // Ids: the input's bytes, each taken modulo a little more than the table (some in
    // range, some not).
    let mut area = vec![0u8; id_bytes];
    for (k, chunk) in ids.chunks(8).take(id_bytes / 8).enumerate() {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        let v = u64::from_le_bytes(w) % 130;
        area[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    region.write(layout.ids(0), &area).expect("ids");
    // The tail: the entries written, or (one input in eight) any value.
    let tail = if tail_pick & 7 == 7 {
        u32::from(tail_pick) << 24 | n as u32
    } else {
        n as u32
    };
    region.atomic_u32(H_SQ_TAIL).store(tail, Ordering::Release);
    c.sq_bell.ring();
    let t0 = Instant::now();
    while region.atomic_u32(H_CQ_TAIL).load(Ordering::Acquire) == 0
        && t0.elapsed() < Duration::from_millis(20)
    {
        std::thread::yield_now();
    }
}

/// Runs one input (see the module docs); panics when the good client is no longer served.
pub fn protocol(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let mut sock = UnixStream::connect(&f.socket).expect("connect");
            poke(&mut sock, rest);
        }
        1 => ring(f, rest),
        _ => {
            if let Some(mut c) = attach(f) {
                poke(&mut c.sock, rest);
            }
        }
    }
    let mut got = vec![0u8; f.want.len()];
    f.good
        .lookup_into(0, &GOOD_IDS, &mut got)
        .expect("the good client is still served");
    assert!(got == f.want, "the good client's rows changed");
}
