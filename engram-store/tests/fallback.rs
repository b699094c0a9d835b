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

#[test]
fn uring_faults_fall_back_to_pread_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::Bf16, 64, 50, 1);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    for fault in [UringFault::Setup, UringFault::Probe] {
        let st = open_with(&dir, Some(BackendKind::Uring), Some(fault));
        assert_eq!(st.backend_kind(), BackendKind::Pread);
        let why = st.fallback_reason().expect("a reason");
        assert!(why.contains("io_uring") && why.contains("Fix"), "{why}");
        let mut out = vec![0u8; 3 * 128];
        st.lookup_into(0, &[1, 2, 3], &mut out).expect("lookup");
        assert_eq!(out, expected_rows(&s, 0, &[1, 2, 3], 128));
    }
    // Registration failure keeps io_uring, with unregistered buffers (when io_uring works).
    let st = open_with(&dir, Some(BackendKind::Uring), Some(UringFault::Register));
    let mut out = vec![0u8; 128];
    st.lookup_into(1, &[9], &mut out).expect("lookup");
    assert_eq!(out, expected_rows(&s, 1, &[9], 128));
    match st.fallback_reason() {
        None => assert_eq!(st.backend_kind(), BackendKind::Uring),
        Some(why) => {
            // This machine has no io_uring at all.
            eprintln!("skipping the io_uring part: {why}");
            assert_eq!(st.backend_kind(), BackendKind::Pread);
        }
    }
}

const CHILD: &str = "ENGRAM_STORE_TEST_CHILD";

fn run_child(test: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1");
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
    // Forced uring that cannot start falls back to pread.
    run_child(
        "child_env_backend",
        &[
            ("ENGRAM_IO_BACKEND", "uring"),
            ("ENGRAM_URING_FAULT", "setup"),
            ("EXPECT_BACKEND", "pread"),
        ],
    );
}

#[test]
fn child_env_backend() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let s = spec(RowLayout::F16, 80, 40, 2);
    let (dir, _) = make_table(tmp.path(), "t", &s);
    let st = open_with(&dir, None, None);
    let want = std::env::var("EXPECT_BACKEND").unwrap_or_default();
    let got = st.backend_kind().name();
    if want == "uring" && st.fallback_reason().is_some() {
        eprintln!("io_uring unavailable here: {:?}", st.fallback_reason());
        assert_eq!(got, "pread");
    } else {
        assert_eq!(got, want);
    }
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
