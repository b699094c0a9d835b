//! The io_uring fallback chain and `ENGRAM_IO_BACKEND`, on any machine.
//!
//! Environment variables are process-wide, so the env tests re-run this test binary as a
//! child process with the variable set and one child test selected.

mod common;

use common::*;
use engram_store::{BackendKind, BackendOptions, RowLayout, Store, StoreOptions, UringFault};

fn open_with(dir: &std::path::Path, kind: Option<BackendKind>, fault: Option<UringFault>) -> Store {
    Store::open(
        dir,
        &StoreOptions {
            backend: BackendOptions {
                kind,
                uring_fault: fault,
                pread_threads: 2,
                ..Default::default()
            },
            io_workers: 1,
            ..Default::default()
        },
    )
    .expect("open")
}

fn try_open(
    dir: &std::path::Path,
    kind: Option<BackendKind>,
    fault: Option<UringFault>,
) -> engram_store::Result<Store> {
    Store::open(
        dir,
        &StoreOptions {
            backend: BackendOptions {
                kind,
                uring_fault: fault,
                pread_threads: 2,
                ..Default::default()
            },
            io_workers: 1,
            ..Default::default()
        },
    )
}

/// Without an explicit backend, io_uring that cannot start falls back to pread with the
/// reason; asked for explicitly, it is an error with the reason, never a silent pread.
#[test]
fn uring_faults_fall_back_only_when_auto() {
    // ENGRAM_REQUIRE_URING (set by scripts/test.sh) forbids the fallback in this process:
    // the fallback itself is tested in a child without it.
    run_child_without_require("child_uring_faults_fall_back");
}

#[test]
#[ignore = "a child role, run in a child process by the test beside it"]
fn child_uring_faults_fall_back() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!(
            "SKIPPED: child_uring_faults_fall_back is a child role (ENGRAM_STORE_TEST_CHILD unset)"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 50, 1);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for fault in [UringFault::Setup, UringFault::Probe] {
        let st = open_with(&dir, None, Some(fault));
        assert_eq!(st.backend_kind(), BackendKind::Pread);
        let why = st.fallback_reason().expect("a reason");
        assert!(
            why.contains("io_uring") && why.contains("injected") && why.contains("pread"),
            "{why}"
        );
        let mut out = vec![0u8; 3 * 128];
        st.lookup_into(0, &[1, 2, 3], &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 0, &[1, 2, 3], 128));
        let e = try_open(&dir, Some(BackendKind::Uring), Some(fault))
            .expect_err("explicit uring does not fall back");
        assert!(e.to_string().contains("injected"), "{e}");
    }
    if skip_uring(BackendKind::Uring) {
        return;
    }
    // Registration failure keeps io_uring, with unregistered buffers.
    let st = open_with(&dir, Some(BackendKind::Uring), Some(UringFault::Register));
    assert_eq!(st.backend_kind(), BackendKind::Uring);
    assert!(st.fallback_reason().is_none());
    let mut out = vec![0u8; 128];
    st.lookup_into(1, &[9], &mut out).expect("lookup");
    assert_eq!(out, expected_rows(&s, 1, &[9], 128));
}

/// With ENGRAM_REQUIRE_URING=1 a fallback is an error that says why.
#[test]
fn require_uring_turns_the_fallback_into_an_error() {
    run_child(
        "child_require_uring",
        &[
            ("ENGRAM_REQUIRE_URING", "1"),
            ("ENGRAM_URING_FAULT", "setup"),
        ],
    );
}

#[test]
#[ignore = "a child role, run in a child process by the test beside it"]
fn child_require_uring() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!("SKIPPED: child_require_uring is a child role (ENGRAM_STORE_TEST_CHILD unset)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, _) = make_table(tmp.path(), "t", &spec(RowLayout::Bf16, 64, 50, 1));
    let e = try_open(&dir, None, None).expect_err("fallback refused");
    let msg = e.to_string();
    assert!(
        msg.contains("ENGRAM_REQUIRE_URING") && msg.contains("injected"),
        "{msg}"
    );
}

/// An unknown `ENGRAM_URING_FAULT` or `ENGRAM_IO_FAULTS` value is an error, not ignored.
#[test]
fn unknown_fault_values_are_errors() {
    run_child("child_unknown_fault", &[("ENGRAM_URING_FAULT", "setpu")]);
    run_child(
        "child_unknown_fault",
        &[("ENGRAM_IO_FAULTS", "eio=0.1,oops")],
    );
}

#[test]
#[ignore = "a child role, run in a child process by the test beside it"]
fn child_unknown_fault() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!("SKIPPED: child_unknown_fault is a child role (ENGRAM_STORE_TEST_CHILD unset)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (dir, _) = make_table(tmp.path(), "t", &spec(RowLayout::Bf16, 64, 50, 1));
    let e = try_open(&dir, Some(BackendKind::Pread), None).expect_err("bad env");
    assert!(e.to_string().contains("expected"), "{e}");
}

const CHILD: &str = "ENGRAM_STORE_TEST_CHILD";

fn run_child_without_require(test: &str) {
    run_child_env(test, &[], &["ENGRAM_REQUIRE_URING"]);
}

fn run_child(test: &str, env: &[(&str, &str)]) {
    run_child_env(test, env, &[]);
}

fn run_child_env(test: &str, env: &[(&str, &str)], remove: &[&str]) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD, "1");
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn child");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child {test} {env:?} failed:\n{text}");
    assert!(text.contains("1 passed"), "child did not run:\n{text}");
}

#[test]
fn env_forces_every_backend() {
    for (name, expect) in [
        ("memory", "memory"),
        ("mmap", "mmap"),
        ("pread", "pread"),
        ("uring", "uring"),
        ("auto", "uring"),
    ] {
        run_child(
            "child_env_backend",
            &[("ENGRAM_IO_BACKEND", name), ("EXPECT_BACKEND", expect)],
        );
    }
    // Auto with io_uring that cannot start falls back to pread (unless required).
    run_child_env(
        "child_env_backend",
        &[
            ("ENGRAM_IO_BACKEND", "auto"),
            ("ENGRAM_URING_FAULT", "setup"),
            ("EXPECT_BACKEND", "pread"),
        ],
        &["ENGRAM_REQUIRE_URING"],
    );
}

#[test]
#[ignore = "a child role, run in a child process by the test beside it"]
fn child_env_backend() {
    if std::env::var_os(CHILD).is_none() {
        eprintln!("SKIPPED: child_env_backend is a child role (ENGRAM_STORE_TEST_CHILD unset)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::F16, 80, 40, 2);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let mut want = std::env::var("EXPECT_BACKEND").unwrap_or_default();
    if want == "uring" && skip_uring(BackendKind::Uring) {
        if std::env::var("ENGRAM_IO_BACKEND").as_deref() == Ok("uring") {
            return;
        }
        want = "pread".into();
    }
    let st = open_with(&dir, None, None);
    assert_eq!(st.backend_kind().name(), want);
    let rb = st.row_bytes();
    let ids = [0u64, 5, 5, 17];
    let mut out = vec![0u8; ids.len() * rb];
    st.lookup_into(1, &ids, &mut out).expect("lookup");
    assert_eq!(out, expected_rows(&s, 1, &ids, rb));
}

#[test]
fn sqpoll_and_unverified_512_byte_reads_return_the_same_rows() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Fp8E4m3E8m0 { scale_block: 32 }, 256, 120, 6);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for (sqpoll, verify, read_unit) in [(true, true, 4096), (false, false, 512), (true, false, 512)]
    {
        for kind in [BackendKind::Uring, BackendKind::Pread] {
            if skip_uring(kind) {
                continue;
            }
            let st = Store::open(
                &dir,
                &StoreOptions {
                    backend: BackendOptions {
                        kind: Some(kind),
                        sqpoll,
                        verify,
                        read_unit,
                        pread_threads: 2,
                        queue_depth: 4,
                        ..Default::default()
                    },
                    io_workers: 1,
                    ..Default::default()
                },
            )
            .expect("open");
            let rb = st.row_bytes();
            for li in 0..2 {
                let rows = st.table().rows(li).expect("rows");
                let ids: Vec<u64> = (0..rows).step_by(3).chain([0, rows - 1, 7, 7]).collect();
                let mut out = vec![0u8; ids.len() * rb];
                st.lookup_into(li, &ids, &mut out).expect("lookup");
                assert!(
                    out == expected_rows(&s, li, &ids, rb),
                    "{kind} sqpoll={sqpoll} verify={verify} unit={read_unit}"
                );
                let stats = st.stats();
                if !verify && read_unit == 512 {
                    // 264 B rows need one or two 512 B sectors, never a whole page.
                    assert!(
                        stats.read_amplification < 4.0,
                        "{}",
                        stats.read_amplification
                    );
                }
            }
        }
    }
}

/// Hedged reads need a wait that times out (`IORING_FEAT_EXT_ARG`, Linux 5.11): on a
/// kernel without it (injected here) io_uring with hedging is refused with an error naming
/// the kernel, never a hedge that silently waits forever; pread hedges without it.
#[test]
fn hedging_on_uring_without_ext_arg_is_refused() {
    if skip_uring(BackendKind::Uring) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 100, 2);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let open = |kind| {
        Store::open(
            &dir,
            &StoreOptions {
                backend: BackendOptions {
                    kind: Some(kind),
                    uring_fault: Some(UringFault::NoExtArg),
                    hedge_after_us: 500,
                    pread_threads: 2,
                    ..Default::default()
                },
                io_workers: 1,
                ..Default::default()
            },
        )
    };
    let e = open(BackendKind::Uring).expect_err("hedging without EXT_ARG");
    let msg = e.to_string();
    assert!(
        matches!(e, engram_store::Error::Unavailable { .. })
            && msg.contains("IORING_FEAT_EXT_ARG")
            && msg.contains("Linux "),
        "{msg}"
    );
    let st = open(BackendKind::Pread).expect("pread hedges without it");
    let mut out = vec![0u8; st.row_bytes()];
    st.lookup_into(0, &[7], &mut out).expect("lookup");
    assert_eq!(out, expected_rows(&s, 0, &[7], st.row_bytes()));
}
