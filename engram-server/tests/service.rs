//! The service end to end in one process (server threads, clients on other threads):
//! bytes equal the in-process store's on every backend, errors are the store's, a broken
//! client is cut off without touching the others, restarts and reloads.

mod common;

use std::sync::Arc;

use common::*;
use engram_client::protocol::{H_CQ_TAIL, H_SQ_TAIL, OP_LOOKUP, Sqe};
use engram_client::raw::RawClient;
use engram_client::{ClientOptions, RemoteStore, ServiceAddress, ServiceError};
use engram_store::{BackendKind, RowSource, Store};

fn client(sock: &std::path::Path, table: Option<&str>) -> RemoteStore {
    let target = ServiceAddress {
        socket: sock.to_path_buf(),
        table: table.map(str::to_string),
    };
    RemoteStore::open(
        &target,
        &ClientOptions {
            slots: 4,
            slot_rows: 512,
            ..ClientOptions::default()
        },
    )
    .expect("attach")
}

#[test]
fn bytes_through_the_service_equal_bytes_in_process_on_every_backend() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(200, 7);
    let table = make_table(tmp.path(), "t", &s);
    for kind in ALL_BACKENDS {
        if !runnable(kind) {
            continue;
        }
        for cache_bytes in [0u64, 64 << 10] {
            let server = serve(
                tmp.path(),
                &[("t", &table)],
                store_options(kind, cache_bytes),
            );
            let remote = client(server.socket(), None);
            let local = Store::open(&table, &store_options(kind, cache_bytes)).expect("store");
            let rb = remote.row_bytes();
            assert_eq!(rb, local.row_bytes());
            assert_eq!(RowSource::manifest(&remote), local.table().manifest());
            for li in 0..2 {
                let rows = remote.rows(li).expect("rows");
                for (n, seed) in [(1usize, 1u64), (48, 2), (48, 2), (512, 3)] {
                    let ids = ids(n, rows, seed + li as u64);
                    let mut a = vec![0u8; n * rb];
                    let mut b = vec![0u8; n * rb];
                    remote.lookup_into(li, &ids, &mut a).expect("remote lookup");
                    local.lookup_into(li, &ids, &mut b).expect("local lookup");
                    assert!(a == b, "{kind} cache {cache_bytes} layer {li} rows {n}");
                    assert!(
                        a == expected_rows(&s, li, &ids, rb),
                        "{kind}: not the table's bytes"
                    );
                    // The same rows through prefetch tickets, several in flight.
                    let tickets: Vec<_> = (0..3)
                        .map(|_| remote.prefetch(li, &ids, remote.alloc_rows(n).expect("buf")))
                        .collect();
                    for t in tickets {
                        let (buf, r) = t.wait();
                        r.expect("prefetch");
                        assert!(buf[..] == a[..], "{kind}: prefetch bytes differ");
                    }
                }
            }
            let st = RowSource::stats(&remote).expect("stats");
            assert!(
                st.batches > 0 && st.backend.starts_with("service("),
                "{st:?}"
            );
            drop(remote);
            server.stop();
        }
    }
}

#[test]
fn threads_share_one_client() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(300, 11);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Pread, 32 << 10),
    );
    let remote = client(server.socket(), Some("t"));
    let rb = remote.row_bytes();
    std::thread::scope(|scope| {
        for t in 0..6u64 {
            let remote = remote.clone();
            let s = &s;
            scope.spawn(move || {
                for k in 0..40u64 {
                    let li = (k % 2) as usize;
                    let ids = ids(
                        1 + (k as usize * 7) % 200,
                        remote.rows(li).expect("rows"),
                        t * 1000 + k,
                    );
                    let want = expected_rows(s, li, &ids, rb);
                    if k % 3 == 0 {
                        let (buf, r) = remote
                            .prefetch(li, &ids, remote.alloc_rows(ids.len()).expect("buf"))
                            .wait();
                        r.expect("prefetch");
                        assert!(buf[..] == want[..]);
                    } else {
                        let mut out = vec![0u8; ids.len() * rb];
                        remote.lookup_into(li, &ids, &mut out).expect("lookup");
                        assert!(out == want);
                    }
                    if k % 5 == 0 {
                        let spec = remote.speculate(li, &ids).expect("speculate");
                        if k % 10 == 0 {
                            spec.cancel();
                        }
                    }
                }
            });
        }
    });
    let stats = server.stats();
    assert_eq!(stats.clients, 1);
    assert!(
        stats.tables[0].requests.requests >= 6 * 40,
        "{:?}",
        stats.tables[0].requests
    );
}

#[test]
fn bad_requests_get_the_stores_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Memory, 0),
    );
    let remote = client(server.socket(), None);
    let rb = remote.row_bytes();
    let rows = remote.rows(0).expect("rows");
    let mut out = vec![0u8; rb];
    let e = remote
        .lookup_into(0, &[rows], &mut out)
        .expect_err("row out of range");
    assert!(
        matches!(e, engram_store::Error::RowOutOfRange { row, .. } if row == rows),
        "{e}"
    );
    let e = remote
        .lookup_into(2, &[0], &mut out)
        .expect_err("layer out of range");
    assert!(
        matches!(
            e,
            engram_store::Error::LayerOutOfRange {
                layer: 2,
                n_layers: 2
            }
        ),
        "{e}"
    );
    let e = remote.lookup_into(0, &[0, 1], &mut out).expect_err("shape");
    assert!(matches!(e, engram_store::Error::Shape { .. }), "{e}");
    let too_many = vec![0u64; remote.max_batch_rows() + 1];
    let e = remote
        .lookup_into(0, &too_many, &mut vec![0u8; too_many.len() * rb])
        .expect_err("limit");
    assert!(
        matches!(
            e,
            engram_store::Error::Limit {
                name: "max_batch_rows",
                ..
            }
        ),
        "{e}"
    );
    // Unknown tables are refused with the names that exist.
    let e = RemoteStore::open(
        &ServiceAddress {
            socket: server.socket().to_path_buf(),
            table: Some("nope".into()),
        },
        &ClientOptions::default(),
    )
    .expect_err("unknown table");
    assert!(
        matches!(&e, ServiceError::Refused { reason, .. } if reason.contains("t (")),
        "{e}"
    );
    // Still serving.
    remote
        .lookup_into(0, &[rows - 1], &mut out)
        .expect("lookup");
}

/// A hand-made client that skips the client library's checks.
fn raw_client(sock_path: &std::path::Path) -> RawClient {
    RawClient::attach(sock_path, 2, 8, 264).expect("attached by hand")
}

#[test]
fn a_client_that_breaks_the_protocol_is_cut_off_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Memory, 0),
    );
    let good = client(server.socket(), None);
    let rb = good.row_bytes();
    let fds0 = open_fds();

    // Ids out of range written straight into the region: a typed error, not a crash.
    let raw = raw_client(server.socket());
    raw.region
        .write_u64s(raw.layout.ids(0), &[u64::MAX])
        .expect("ids");
    raw.submit(
        0,
        Sqe {
            op: OP_LOOKUP,
            slot: 0,
            layer: 0,
            rows: 1,
            tag: 9,
        },
    )
    .expect("submit");
    eventually("an error completion", || {
        raw.region
            .atomic_u32(H_CQ_TAIL)
            .load(std::sync::atomic::Ordering::Acquire)
            == 1
    });
    let mut b = [0u8; 32];
    raw.region.read(raw.layout.cqe(0), &mut b).expect("cqe");
    let c = engram_client::protocol::Cqe::decode(&b);
    assert_eq!(
        (c.slot, c.status, c.tag),
        (0, engram_client::protocol::ST_ERROR, 9)
    );
    let mut text = vec![0u8; c.detail as usize];
    raw.region
        .read(raw.layout.error(0), &mut text)
        .expect("text");
    assert!(
        String::from_utf8_lossy(&text).contains("out of range"),
        "{}",
        String::from_utf8_lossy(&text)
    );

    // A slot beyond its region: disconnected.
    raw.submit(
        1,
        Sqe {
            op: OP_LOOKUP,
            slot: 99,
            layer: 0,
            rows: 1,
            tag: 10,
        },
    )
    .expect("submit");
    eventually("the violation", || {
        server.stats().protocol_violations_total == 1
    });
    eventually("the raw client's detach", || server.clients() == 1);
    drop(raw);
    // Rows beyond a slot, an unknown operation and a ring index from nowhere:
    // disconnected too (each raw client stays until its violation is counted: one that
    // hangs up at once may be dropped for the hang-up before its ring is read).
    for (k, bad) in [
        Sqe {
            op: OP_LOOKUP,
            slot: 0,
            layer: 0,
            rows: 1 << 20,
            tag: 1,
        },
        Sqe {
            op: 77,
            slot: 0,
            layer: 0,
            rows: 1,
            tag: 1,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let raw = raw_client(server.socket());
        raw.submit(0, bad).expect("submit");
        eventually("the violation", || {
            server.stats().protocol_violations_total == 2 + k as u64
        });
        drop(raw);
    }
    let raw = raw_client(server.socket());
    raw.region
        .atomic_u32(H_SQ_TAIL)
        .store(1 << 30, std::sync::atomic::Ordering::Release);
    raw.sq_bell.ring();
    eventually("the fourth violation", || {
        server.stats().protocol_violations_total == 4
    });
    drop(raw);
    eventually("every raw client gone", || server.clients() == 1);
    eventually("their descriptors closed", || open_fds() <= fds0);

    // The good client never noticed.
    let ids = ids(48, good.rows(1).expect("rows"), 4);
    let mut out = vec![0u8; ids.len() * rb];
    good.lookup_into(1, &ids, &mut out).expect("lookup");
    assert!(out == expected_rows(&s, 1, &ids, rb));
}

#[test]
fn a_restarted_server_gives_a_clear_error_then_the_client_reconnects() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Pread, 0),
    );
    let sock = server.socket().to_path_buf();
    let remote = client(&sock, None);
    let rb = remote.row_bytes();
    let mut out = vec![0u8; rb];
    remote.lookup_into(0, &[3], &mut out).expect("lookup");
    server.stop();
    let e = remote
        .lookup_into(0, &[3], &mut out)
        .expect_err("server gone");
    let text = e.to_string();
    assert!(
        text.contains("went away") && text.contains("reconnects"),
        "{text}"
    );
    // No server: the next call says it cannot connect.
    let e = remote
        .lookup_into(0, &[3], &mut out)
        .expect_err("no server");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Pread, 0),
    );
    remote.lookup_into(0, &[3], &mut out).expect("reconnected");
    assert!(out == expected_rows(&s, 0, &[3], rb));
    // A restarted server with a table of another shape: the client says so.
    server.stop();
    let other = make_table(tmp.path(), "t2", &spec(150, 5));
    let _server = serve(
        tmp.path(),
        &[("t", &other)],
        store_options(BackendKind::Pread, 0),
    );
    let _ = remote.lookup_into(0, &[3], &mut out);
    let e = remote
        .lookup_into(0, &[3], &mut out)
        .expect_err("shape changed");
    assert!(e.to_string().contains("changed"), "{e}");
}

#[test]
fn reload_swaps_the_table_without_disturbing_requests() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = spec(200, 1);
    let new = spec(200, 2);
    let table = make_table(tmp.path(), "t", &old);
    let server = Arc::new(serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Pread, 16 << 10),
    ));
    let remote = client(server.socket(), None);
    let rb = remote.row_bytes();
    let rows = remote.rows(0).expect("rows");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let h = scope.spawn(|| {
            let mut k = 0u64;
            let mut saw_new = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || !saw_new {
                let ids = ids(64, rows, k);
                let mut out = vec![0u8; ids.len() * rb];
                remote
                    .lookup_into(0, &ids, &mut out)
                    .expect("lookup during reload");
                let is_old = out == expected_rows(&old, 0, &ids, rb);
                let is_new = out == expected_rows(&new, 0, &ids, rb);
                assert!(is_old || is_new, "rows from neither table");
                saw_new |= is_new;
                k += 1;
                assert!(k < 1_000_000, "never saw the new table");
            }
        });
        make_table(tmp.path(), "t", &new);
        let outcome = server.reload();
        assert_eq!(outcome[0].outcome, "reloaded", "{outcome:?}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().expect("reader");
    });
    // A reload to another shape: attached clients are told to reconnect; new ones work.
    make_table(tmp.path(), "t", &spec(150, 3));
    let outcome = server.reload();
    assert!(outcome[0].outcome.contains("new shape"), "{outcome:?}");
    let mut out = vec![0u8; rb];
    let e = remote
        .lookup_into(0, &[1], &mut out)
        .expect_err("table changed");
    assert!(e.to_string().contains("changed"), "{e}");
    let fresh = client(server.socket(), None);
    fresh.lookup_into(0, &[1], &mut out).expect("new client");
    assert!(out == expected_rows(&spec(150, 3), 0, &[1], rb));
    // A reload that fails keeps serving the table it had.
    std::fs::remove_dir_all(&table).expect("rm");
    let outcome = server.reload();
    assert!(outcome[0].outcome.starts_with("failed"), "{outcome:?}");
    fresh.lookup_into(0, &[1], &mut out).expect("still serving");
}

#[test]
fn several_tables_are_chosen_by_name_or_path() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (sa, sb) = (spec(100, 1), spec(120, 2));
    let a = make_table(tmp.path(), "a", &sa);
    let b = make_table(tmp.path(), "b", &sb);
    let server = serve(
        tmp.path(),
        &[("a", &a), ("b", &b)],
        store_options(BackendKind::Mmap, 0),
    );
    let e = RemoteStore::open(
        &ServiceAddress {
            socket: server.socket().to_path_buf(),
            table: None,
        },
        &ClientOptions::default(),
    )
    .expect_err("ambiguous");
    assert!(e.to_string().contains("name one"), "{e}");
    let by_name = client(server.socket(), Some("b"));
    let by_path = RemoteStore::connect(
        &format!("unix:{}#{}", server.socket().display(), b.display()),
        &ClientOptions::default(),
    )
    .expect("by path");
    let rb = by_name.row_bytes();
    for r in [&by_name, &by_path] {
        let mut out = vec![0u8; rb];
        r.lookup_into(1, &[5], &mut out).expect("lookup");
        assert!(out == expected_rows(&sb, 1, &[5], rb));
    }
}

#[test]
fn prometheus_text_parses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t\"q", &s);
    let mut o = engram_server::ServerOptions::new(
        tmp.path().join("m.sock"),
        vec![engram_server::TableSpec {
            name: "t\"q".into(),
            path: table,
        }],
    );
    o.store = store_options(BackendKind::Pread, 16 << 10);
    o.metrics_addr = Some("127.0.0.1:0".parse().expect("addr"));
    o.max_clients = 8;
    let server = engram_server::Server::start(o).expect("server");
    let remote = client(server.socket(), None);
    let mut out = vec![0u8; 4 * remote.row_bytes()];
    remote
        .lookup_into(0, &[1, 2, 3, 1], &mut out)
        .expect("lookup");
    let addr = server.metrics_addr().expect("metrics address");
    let body = http_get(addr, "/metrics");
    let (head, text) = body.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let families = engram_service_test_prom::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for name in [
        "engram_service_clients",
        "engram_service_table_requests_total",
        "engram_service_client_request_duration_seconds",
        "engram_store_cache_hits_total",
        "engram_store_batch_latency_seconds",
    ] {
        assert!(families.contains_key(name), "{name} missing");
    }
    assert!(text.contains("table=\"t\\\"q\""), "label not escaped");
    assert!(http_get(addr, "/nope").starts_with("HTTP/1.1 404"));
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to the
/// family its `# TYPE` line announced, each family is announced once, names and labels are
/// well formed, values are floats, histogram buckets are cumulative and end in `+Inf`
/// equal to `_count`.
mod engram_service_test_prom {
    use std::collections::BTreeMap;

    fn name_ok(n: &str) -> bool {
        let mut c = n.chars();
        matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }

    fn labels(s: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        let mut rest = s;
        while !rest.is_empty() {
            let (k, v) = rest
                .split_once("=\"")
                .ok_or(format!("label without =\": {s}"))?;
            if !name_ok(k) {
                return Err(format!("bad label name {k:?}"));
            }
            let mut val = String::new();
            let mut chars = v.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => val.push(c),
                        other => return Err(format!("bad escape {other:?} in {s}")),
                    },
                    Some((_, c)) => val.push(c),
                    None => return Err(format!("unterminated label value in {s}")),
                }
            };
            if out.insert(k.to_string(), val).is_some() {
                return Err(format!("label {k} twice in {s}"));
            }
            rest = &v[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        Ok(out)
    }

    pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts: BTreeMap<String, f64> = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") {
                continue;
            }
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (n, k) = t.split_once(' ').ok_or(format!("bad TYPE line {line}"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&k) {
                    return Err(format!("unknown type {k}"));
                }
                if types.insert(n.to_string(), k.to_string()).is_some() {
                    return Err(format!("family {n} announced twice"));
                }
                current = Some((n.to_string(), k.to_string()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                x => x
                    .parse()
                    .map_err(|_| format!("bad value {x:?} in {line}"))?,
            };
            let (name, lab) = match series.split_once('{') {
                Some((n, l)) => (
                    n,
                    labels(
                        l.strip_suffix('}')
                            .ok_or(format!("no closing brace: {line}"))?,
                    )?,
                ),
                None => (series, BTreeMap::new()),
            };
            if !name_ok(name) {
                return Err(format!("bad metric name {name:?}"));
            }
            let (fam, kind) = current
                .clone()
                .ok_or(format!("sample before any TYPE: {line}"))?;
            let suffix = name
                .strip_prefix(fam.as_str())
                .ok_or(format!("{name} outside family {fam}"))?;
            let allowed: &[&str] = match kind.as_str() {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            if !allowed.contains(&suffix) {
                return Err(format!("{name} in {kind} family {fam}"));
            }
            if kind == "histogram" {
                let mut key = lab.clone();
                key.remove("le");
                let key = format!("{name}{key:?}")
                    .replace("_bucket", "")
                    .replace("_count", "");
                if suffix == "_bucket" {
                    let le = lab.get("le").ok_or(format!("bucket without le: {line}"))?;
                    let le: f64 = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().map_err(|_| format!("bad le {le}"))?
                    };
                    buckets.entry(key).or_default().push((le, v));
                } else if suffix == "_count" {
                    counts.insert(key, v);
                }
            }
        }
        for (k, b) in &buckets {
            if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
                return Err(format!("buckets of {k} not cumulative: {b:?}"));
            }
            match (b.last(), counts.get(k)) {
                (Some((le, n)), Some(c)) if le.is_infinite() && n == c => {}
                other => return Err(format!("{k}: +Inf bucket and _count disagree: {other:?}")),
            }
        }
        Ok(types)
    }
}

#[test]
fn clients_with_deep_queues_share_few_store_slots() {
    // 4 clients x 8 prefetches in flight against a store with 8 prefetch slots: each
    // client gets 2 in the store at a time, the rest wait in its ring; nobody blocks on a
    // slot another client's thread holds.
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(300, 13);
    let table = make_table(tmp.path(), "t", &s);
    let mut o = engram_server::ServerOptions::new(
        tmp.path().join("q.sock"),
        vec![engram_server::TableSpec {
            name: "t".into(),
            path: table,
        }],
    );
    o.store = store_options(BackendKind::Pread, 0);
    o.store.max_in_flight = 8;
    o.max_clients = 4;
    let server = engram_server::Server::start(o).expect("server");
    std::thread::scope(|scope| {
        for c in 0..4u64 {
            let sock = server.socket().to_path_buf();
            let s = &s;
            scope.spawn(move || {
                let remote = RemoteStore::open(
                    &ServiceAddress {
                        socket: sock,
                        table: None,
                    },
                    &ClientOptions {
                        slots: 8,
                        slot_rows: 64,
                        ..ClientOptions::default()
                    },
                )
                .expect("attach");
                let rb = remote.row_bytes();
                for round in 0..5u64 {
                    let batches: Vec<Vec<u64>> = (0..8)
                        .map(|k| ids(64, remote.rows(0).expect("rows"), c * 100 + round * 10 + k))
                        .collect();
                    let tickets: Vec<_> = batches
                        .iter()
                        .map(|b| remote.prefetch(0, b, remote.alloc_rows(b.len()).expect("buf")))
                        .collect();
                    for (t, b) in tickets.into_iter().zip(&batches) {
                        let (buf, r) = t.wait();
                        r.expect("prefetch");
                        assert!(buf[..] == expected_rows(s, 0, b, rb)[..]);
                    }
                }
            });
        }
    });
    assert_eq!(server.stats().tables[0].requests.requests, 4 * 5 * 8);
}

#[test]
fn connections_that_never_say_hello_are_counted_and_limited() {
    use engram_server::MAX_HANDSHAKES;
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Memory, 0),
    );
    let silent: Vec<_> = (0..MAX_HANDSHAKES)
        .map(|_| std::os::unix::net::UnixStream::connect(server.socket()).expect("connect"))
        .collect();
    // The accept loop takes them in order; one more is refused at once, with the reason.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let e = RemoteStore::connect(
        &format!("unix:{}", server.socket().display()),
        &ClientOptions::default(),
    )
    .expect_err("refused while the handshakes are full");
    assert!(e.to_string().contains("MAX_HANDSHAKES"), "{e}");
    drop(silent);
    eventually("a client attaches once the silent ones left", || {
        RemoteStore::connect(
            &format!("unix:{}", server.socket().display()),
            &ClientOptions::default(),
        )
        .is_ok()
    });
}

#[test]
fn a_caller_holding_every_slot_gets_a_limit_error_not_a_hang() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(100, 5);
    let table = make_table(tmp.path(), "t", &s);
    let server = serve(
        tmp.path(),
        &[("t", &table)],
        store_options(BackendKind::Memory, 0),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let sock = server.socket().to_path_buf();
    // On a thread of its own: a hang fails the test at the timeout instead of blocking it.
    std::thread::spawn(move || {
        let remote = client(&sock, None);
        let rb = remote.row_bytes();
        let slots = 4; // `client` asks for 4 slots
        let mut held = Vec::new();
        let mut limits = 0;
        for k in 0..300u64 {
            let t = remote.prefetch(0, &[k % 100], remote.alloc_rows(1).expect("buf"));
            if held.len() == slots {
                let (_, r) = t.wait();
                let e = r.expect_err("a limit error");
                assert!(
                    matches!(&e, engram_store::Error::Remote(_))
                        && e.to_string().contains("ENGRAM_SERVICE_MAX_TICKETS"),
                    "{e}"
                );
                limits += 1;
            } else {
                held.push(t);
            }
        }
        let mut out = vec![0u8; rb];
        let e = remote
            .lookup_into(0, &[1], &mut out)
            .expect_err("a lookup while every slot is held");
        assert!(e.to_string().contains("prefetch tickets held"), "{e}");
        let n = held.len();
        for t in held {
            t.wait().1.expect("held rows");
        }
        remote.lookup_into(0, &[1], &mut out).expect("served again");
        let _ = tx.send((n, limits));
    });
    let (held, limits) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("300 prefetches with held tickets finish (no hang)");
    assert_eq!((held, limits), (4, 296));
}
