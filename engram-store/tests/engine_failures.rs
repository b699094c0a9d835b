//! An engine that fails (its n-th submit or reap: `submit@N`, `reap@N` in the fault plan)
//! on pread, io_uring and an external engine, through every path (`lookup_into`,
//! `prefetch`, `speculate`, cache seeding): each affected request ends with a typed
//! [`Error::Engine`] naming the engine, the next request succeeds on the rebuilt engine,
//! the failure and rebuild are counted (stats, Prometheus), an idle store uses no CPU and
//! dropping it returns. One I/O thread, queue depth 4, rows far apart (many reads).
//!
//! Every scenario runs under a deadline: a wedge is a test failure, not a hung test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::file_engine::FileFactory;
use common::*;
use engram_store::{
    BackendKind, BackendOptions, Error, Fault, FaultPlan, RowLayout, Store, StoreOptions,
};

/// How long any scenario may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// Scenarios run one at a time: the idle check reads the CPU time of every I/O thread of
/// the process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` on its own thread; fails the test if it has not returned within `limit`
/// (a panic inside `f` is the test's panic).
#[allow(clippy::panic)]
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let h = std::thread::spawn(f);
    let t0 = std::time::Instant::now();
    while !h.is_finished() {
        if t0.elapsed() > limit {
            panic!("{what}: no answer within {limit:?} (wedged)");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// [`within`] for a whole scenario, serialised with the others.
fn scenario(what: &str, f: impl FnOnce() + Send + 'static) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    within(DEADLINE, what, f);
}

#[derive(Debug, Clone, Copy)]
enum Engine {
    Pread,
    Uring,
    External,
}

const ENGINES: [Engine; 3] = [Engine::Pread, Engine::Uring, Engine::External];

fn options(engine: Engine, faults: FaultPlan, cache_bytes: u64) -> Option<StoreOptions> {
    let (kind, factory) = match engine {
        Engine::Pread => (BackendKind::Pread, None),
        Engine::Uring if skip_uring(BackendKind::Uring) => return None,
        Engine::Uring => (BackendKind::Uring, None),
        Engine::External => (
            BackendKind::Pread,
            Some(Arc::new(FileFactory::default()) as Arc<dyn engram_store::EngineFactory>),
        ),
    };
    Some(StoreOptions {
        backend: BackendOptions {
            kind: Some(kind),
            engine: factory,
            queue_depth: 4,
            pread_threads: 2,
            faults: Some(faults),
            ..BackendOptions::default()
        },
        io_workers: 1,
        max_in_flight: 4,
        cache_bytes,
        ..StoreOptions::default()
    })
}

fn plan(fault: Fault, at: u64) -> FaultPlan {
    FaultPlan {
        at: vec![(at, fault)],
        ..FaultPlan::default()
    }
}

/// Rows far apart: one read each.
fn far_ids(rows: u64, n: u64, salt: u64) -> Vec<u64> {
    (0..n).map(|k| (k * 97 + salt * 13) % rows).collect()
}

/// The engine failure is typed and names the engine.
#[allow(clippy::panic)]
fn assert_engine_error(e: &Error, what: &str) {
    match e {
        Error::Engine { engine, cause } => {
            assert!(
                ["pread", "uring", "file"].contains(engine),
                "{what}: engine {engine:?}"
            );
            assert!(cause.contains("injected failure"), "{what}: {cause}");
        }
        other => panic!("{what}: not an engine error: {other:?}"),
    }
}

fn counted(st: &Store, what: &str) {
    let s = st.stats();
    assert!(
        s.engine_failures >= 1,
        "{what}: failures {}",
        s.engine_failures
    );
    assert!(
        s.engine_rebuilds >= 1,
        "{what}: rebuilds {}",
        s.engine_rebuilds
    );
    let text = st.prometheus();
    assert!(
        text.contains(&format!(
            "engram_store_engine_failures_total{{backend=\"{}\"}} {}",
            s.backend, s.engine_failures
        )),
        "{what}: {text}"
    );
    assert!(
        text.contains("engram_store_engine_rebuilds_total"),
        "{what}"
    );
}

/// Threads of this process named `engram-io-*` and their CPU time in clock ticks.
fn io_thread_ticks() -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15): fields after the comm's ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.contains("engram-io-") {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += field(11) + field(12);
    }
    total
}

/// The store after a failure: idle I/O threads use (almost) no CPU over half a second,
/// and dropping the store returns.
fn idle_then_drop(st: Store, what: &str) {
    std::thread::sleep(Duration::from_millis(100));
    let before = io_thread_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let spent = io_thread_ticks().saturating_sub(before);
    // 5 ticks = 50 ms at the usual 100 Hz: a spinning thread burns all 50.
    assert!(
        spent <= 5,
        "{what}: idle I/O threads used {spent} ticks in 0.5 s"
    );
    let what = what.to_string();
    within(
        Duration::from_secs(20),
        &format!("{what}: drop"),
        move || drop(st),
    );
}

fn lookup_path(engine: Engine, fault: Fault, at: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 21);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let Some(o) = options(engine, plan(fault, at), 0) else {
        return;
    };
    let what = format!("lookup_into {engine:?} {fault:?}@{at}");
    scenario(&what.clone(), move || {
        let st = Store::open(&dir, &o).expect("open");
        let rows = st.table().rows(0).expect("rows");
        let rb = st.row_bytes();
        let mut failed = 0;
        for round in 0..6 {
            let ids = far_ids(rows, 24, round);
            let mut out = vec![0u8; ids.len() * rb];
            match st.lookup_into(0, &ids, &mut out) {
                Ok(()) => assert_eq!(out, expected_rows(&s, 0, &ids, rb), "{what}"),
                Err(e) => {
                    assert_engine_error(&e, &what);
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 1, "{what}: one lookup fails, the rest succeed");
        counted(&st, &what);
        idle_then_drop(st, &what);
    });
}

fn prefetch_path(engine: Engine, fault: Fault, at: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 22);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let Some(o) = options(engine, plan(fault, at), 0) else {
        return;
    };
    let what = format!("prefetch {engine:?} {fault:?}@{at}");
    scenario(&what.clone(), move || {
        let st = Store::open(&dir, &o).expect("open");
        let rows = st.table().rows(1).expect("rows");
        let rb = st.row_bytes();
        // Four tickets at once: they share the engine when it fails.
        let batches: Vec<Vec<u64>> = (0..4).map(|k| far_ids(rows, 16, k)).collect();
        let tickets: Vec<_> = batches
            .iter()
            .map(|ids| st.prefetch(1, ids, st.alloc_rows(ids.len()).expect("buf")))
            .collect();
        let mut failed = 0;
        for (ids, t) in batches.iter().zip(tickets) {
            let (buf, r) = t.wait();
            match r {
                Ok(()) => assert_eq!(&buf[..], &expected_rows(&s, 1, ids, rb)[..], "{what}"),
                Err(e) => {
                    assert_engine_error(&e, &what);
                    failed += 1;
                }
            }
        }
        assert!(failed >= 1, "{what}: no ticket saw the failure");
        // The next tickets succeed on the rebuilt engine.
        for k in 10..14 {
            let ids = far_ids(rows, 16, k);
            let (buf, r) = st
                .prefetch(1, &ids, st.alloc_rows(ids.len()).expect("buf"))
                .wait();
            r.expect("after the rebuild");
            assert_eq!(&buf[..], &expected_rows(&s, 1, &ids, rb)[..]);
        }
        counted(&st, &what);
        idle_then_drop(st, &what);
    });
}

/// Requests started with `Store::start` (the service's slot requests) into one
/// completion queue: each gets exactly one completion, by tag.
fn start_path(engine: Engine, fault: Fault, at: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 25);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let Some(o) = options(engine, plan(fault, at), 0) else {
        return;
    };
    let what = format!("start {engine:?} {fault:?}@{at}");
    scenario(&what.clone(), move || {
        let st = Store::open(&dir, &o).expect("open");
        let rows = st.table().rows(1).expect("rows");
        let rb = st.row_bytes();
        let queue = engram_store::Completions::new();
        let round = |first: u64| {
            let batches: Vec<Vec<u64>> = (first..first + 4).map(|k| far_ids(rows, 16, k)).collect();
            for (tag, ids) in batches.iter().enumerate() {
                st.start(
                    1,
                    ids,
                    st.alloc_rows(ids.len()).expect("buf"),
                    tag as u64,
                    &queue,
                );
            }
            let mut seen = [false; 4];
            let mut failed = 0;
            for _ in 0..4 {
                let c = queue.wait(DEADLINE).expect("a completion for every start");
                let tag = c.tag as usize;
                assert!(!seen[tag], "{what}: tag {tag} completed twice");
                seen[tag] = true;
                match c.result {
                    Ok(()) => assert_eq!(
                        &c.out[..],
                        &expected_rows(&s, 1, &batches[tag], rb)[..],
                        "{what}"
                    ),
                    Err(e) => {
                        assert_engine_error(&e, &what);
                        failed += 1;
                    }
                }
            }
            assert!(
                queue.try_next().is_none(),
                "{what}: one completion per start"
            );
            failed
        };
        assert!(round(0) >= 1, "{what}: no request saw the failure");
        assert_eq!(round(10), 0, "{what}: after the rebuild");
        counted(&st, &what);
        idle_then_drop(st, &what);
    });
}

fn speculate_path(engine: Engine, fault: Fault, at: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 23);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let Some(o) = options(engine, plan(fault, at), 1 << 20) else {
        return;
    };
    let what = format!("speculate {engine:?} {fault:?}@{at}");
    scenario(&what.clone(), move || {
        let st = Store::open(&dir, &o).expect("open");
        let rows = st.table().rows(0).expect("rows");
        let rb = st.row_bytes();
        let ids = far_ids(rows, 32, 5);
        let spec = st.speculate(0, &ids).expect("speculate");
        assert!(spec.accepted(), "{what}");
        // Wait until the speculation has ended (failed on the engine).
        for _ in 0..2000 {
            if st.stats().spec_batches == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = st.stats();
        assert_eq!(stats.spec_batches, 1, "{what}: the speculation never ended");
        assert_eq!(stats.spec_failed, 1, "{what}: it failed on the engine");
        let mut out = vec![0u8; ids.len() * rb];
        st.lookup_into(0, &ids, &mut out)
            .expect("after the rebuild");
        assert_eq!(out, expected_rows(&s, 0, &ids, rb), "{what}");
        counted(&st, &what);
        idle_then_drop(st, &what);
    });
}

fn seeding_path(engine: Engine, fault: Fault, at: u64) {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 2000, 24);
    let (dir, m) = make_table(tmp.path(), "t", &s);
    let rows = m.layers[1].rows;
    let hot = far_ids(rows, 64, 3);
    let mut o = match options(engine, plan(fault, at), 1 << 20) {
        Some(o) => o,
        None => return,
    };
    o.profile = Some(engram_store::Profile {
        table_id: 0,
        layers: vec![engram_store::LayerProfile::from_counts(
            m.layers[1].layer_id,
            hot.iter().enumerate().map(|(i, &r)| (r, 1000 - i as u64)),
            64,
        )],
    });
    let what = format!("seeding {engine:?} {fault:?}@{at}");
    scenario(&what.clone(), move || {
        let st = Store::open(&dir, &o).expect("open: seeding survives an engine failure");
        let rb = st.row_bytes();
        assert!(
            hot.iter().all(|&r| st.cache_contains(1, r)),
            "{what}: seeded"
        );
        let mut out = vec![0u8; hot.len() * rb];
        st.lookup_into(1, &hot, &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 1, &hot, rb), "{what}");
        counted(&st, &what);
        idle_then_drop(st, &what);
    });
}

#[test]
fn an_engine_failure_fails_lookups_once_then_they_succeed() {
    for engine in ENGINES {
        for (fault, at) in [
            (Fault::Submit, 0),
            (Fault::Submit, 5),
            (Fault::Reap, 0),
            (Fault::Reap, 3),
        ] {
            lookup_path(engine, fault, at);
        }
    }
}

#[test]
fn an_engine_failure_resolves_every_ticket() {
    for engine in ENGINES {
        for (fault, at) in [
            (Fault::Submit, 2),
            (Fault::Submit, 9),
            (Fault::Reap, 0),
            (Fault::Reap, 2),
        ] {
            prefetch_path(engine, fault, at);
        }
    }
}

#[test]
fn an_engine_failure_completes_every_started_request() {
    for engine in ENGINES {
        for (fault, at) in [(Fault::Submit, 2), (Fault::Reap, 0), (Fault::Reap, 2)] {
            start_path(engine, fault, at);
        }
    }
}

#[test]
fn an_engine_failure_ends_a_speculation() {
    for engine in ENGINES {
        for (fault, at) in [(Fault::Submit, 1), (Fault::Reap, 0)] {
            speculate_path(engine, fault, at);
        }
    }
}

#[test]
fn seeding_survives_an_engine_failure() {
    for engine in ENGINES {
        for (fault, at) in [(Fault::Submit, 0), (Fault::Reap, 0)] {
            seeding_path(engine, fault, at);
        }
    }
}

/// `ENGRAM_IO_FAULTS` syntax for engine failures.
#[test]
fn engine_failures_parse_in_the_env_syntax() {
    let p = FaultPlan::parse("submit@4,reap@2").expect("parse");
    assert_eq!(p.at, vec![(4, Fault::Submit), (2, Fault::Reap)]);
    assert!(FaultPlan::parse("submit=0.1").is_err());
}

/// The resident tiers are engines too: under a fault plan, memory and mmap reads go
/// through the fault engine, so a failed read and a failed engine are the same typed
/// errors as on a device, and the next lookup is right.
#[test]
fn faults_reach_the_resident_tiers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 300, 25);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for kind in [BackendKind::Memory, BackendKind::Mmap] {
        for (fault, name) in [(Fault::Eio, "read"), (Fault::Submit, "engine")] {
            let o = StoreOptions {
                backend: BackendOptions {
                    kind: Some(kind),
                    faults: Some(plan(fault, 0)),
                    ..BackendOptions::default()
                },
                io_workers: 1,
                max_in_flight: 4,
                ..StoreOptions::default()
            };
            let st = Store::open(&dir, &o).expect("open");
            let rb = st.row_bytes();
            let ids = [3u64, 200, 9];
            let mut out = vec![0u8; ids.len() * rb];
            let e = st.lookup_into(0, &ids, &mut out).expect_err("the fault");
            let typed = match (&e, name) {
                (Error::IoAt { .. }, "read") => true,
                (Error::Engine { engine, .. }, "engine") => *engine == kind.name(),
                _ => false,
            };
            assert!(typed, "{kind} {fault:?}: {e:?}");
            st.lookup_into(0, &ids, &mut out).expect("the next lookup");
            assert_eq!(out, expected_rows(&s, 0, &ids, rb), "{kind} {fault:?}");
        }
    }
}
