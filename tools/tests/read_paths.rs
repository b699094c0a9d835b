//! Every read path returns the memory backend's bytes, checked from the command line:
//! `engram lookup --json` with unverified reads of any read unit, coalescing and queue
//! depth, on pread and io_uring, over dense, sparse and duplicate ids of V4.1-shaped rows
//! (264 B rows that straddle 512 B units: the shape that once overflowed a staging slot).
//! Also `engram bench --pattern burst:B,idle:US`: its JSON's read count and latencies come
//! from the store's own counters (one device read per row of every burst), and bad
//! patterns are clear errors.

use std::process::Command;

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

/// (row, hex) of every record `engram lookup --json` printed.
fn rows(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let d = &v["data"];
            (
                d["row"].as_u64().expect("row"),
                d["hex"].as_str().expect("hex").to_string(),
            )
        })
        .collect()
}

#[test]
fn unverified_reads_of_any_unit_return_the_memory_bytes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("v41");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "3000"]);
    assert!(ok, "synth: {err}");
    // Dense ids from mid-unit, so merged reads reach the cap in the middle of a unit.
    let dense: Vec<String> = (7..2007).map(|r| r.to_string()).collect();
    let sparse: Vec<String> = (0..400u64)
        .map(|k| ((k * 7919) % 20_000).to_string())
        .collect();
    let dup: Vec<String> = [5u64, 5, 0, 17, 5, 16, 0]
        .iter()
        .map(u64::to_string)
        .collect();
    for ids in [dense.join(","), sparse.join(","), dup.join(",")] {
        let base = ["lookup", t, "--layer-index", "1", "--rows", &ids, "--json"];
        let (ok, want, err) = engram(&[&base[..], &["--backend", "memory"]].concat());
        assert!(ok, "memory: {err}");
        let want = rows(&want);
        assert!(!want.is_empty());
        for backend in ["pread", "uring"] {
            if backend == "uring"
                && !engram_store::backend::runnable_here(engram_store::BackendKind::Uring)
                    .expect("required backend")
            {
                continue;
            }
            for extra in [
                &["--no-verify", "--read-unit", "512"][..],
                &[
                    "--no-verify",
                    "--read-unit",
                    "512",
                    "--coalesce-gap-bytes",
                    "8192",
                ],
                &[
                    "--no-verify",
                    "--read-unit",
                    "4096",
                    "--max-read-bytes",
                    "8192",
                ],
                &["--no-verify", "--read-unit", "65536", "--queue-depth", "3"],
                &["--coalesce-gap-bytes", "65536", "--queue-depth", "1"],
            ] {
                let args = [&base[..], &["--backend", backend], extra].concat();
                let (ok, got, err) = engram(&args);
                assert!(ok, "{args:?}: {err}");
                assert!(
                    rows(&got) == want,
                    "{args:?}: bytes differ from the memory backend"
                );
            }
        }
    }
}

#[test]
fn out_of_bounds_read_options_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("t");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "demo", "--base-size", "500"]);
    assert!(ok, "synth: {err}");
    for (flags, needle) in [
        (
            &["--max-read-bytes", "17179869184"][..],
            "MAX_READ_BYTES_LIMIT",
        ),
        (
            &["--coalesce-gap-bytes", "4294967296"],
            "MAX_COALESCE_GAP_BYTES",
        ),
        (&["--queue-depth", "0"], "queue depth"),
        (&["--read-unit", "3000", "--no-verify"], "read unit"),
        (
            &["--queue-depth", "4096", "--max-read-bytes", "16777216"],
            "MAX_STAGING_BYTES",
        ),
    ] {
        let args = [
            &[
                "lookup",
                t,
                "--layer-index",
                "0",
                "--rows",
                "1",
                "--backend",
                "pread",
            ][..],
            flags,
        ]
        .concat();
        let (ok, _, err) = engram(&args);
        assert!(!ok && err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn burst_json_counts_one_device_read_per_row() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("v41");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "3000"]);
    assert!(ok, "synth: {err}");
    for backend in ["pread", "uring"] {
        if backend == "uring"
            && !engram_store::backend::runnable_here(engram_store::BackendKind::Uring)
                .expect("required backend")
        {
            eprintln!("SKIPPED: io_uring is not available here (uring side of the burst test)");
            continue;
        }
        let (ok, out, err) = engram(&[
            "bench",
            t,
            "--backend",
            backend,
            "--queue-depth",
            "8",
            "--pattern",
            "burst:8,idle:200us",
            "--batches",
            "12",
            "--warmup-batches",
            "2",
            "--json",
        ]);
        assert!(ok, "{backend}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one json line");
        let d = &v["data"];
        assert_eq!(d["pattern"]["burst"], 8, "{d}");
        assert_eq!(d["pattern"]["idle_us"].as_f64(), Some(200.0), "{d}");
        // 12 measured bursts of 8 rows in distinct, non-adjacent units: 96 reads, counted
        // by the store (the warm-up's 16 were reset away).
        assert_eq!(d["device_reads"], 96, "{backend}: {d}");
        assert_eq!(d["report"]["stats"]["device_reads"], 96, "{backend}: {d}");
        assert_eq!(d["report"]["stats"]["batches"], 12, "{backend}: {d}");
        assert_eq!(d["report"]["stats"]["rows_requested"], 96, "{backend}: {d}");
        let p50 = d["read_p50_us"].as_f64().expect("read_p50_us");
        let p99 = d["read_p99_us"].as_f64().expect("read_p99_us");
        let batch = d["report"]["batch_p50_us"].as_f64().expect("batch p50");
        assert!(p50 > 0.0 && p99 >= p50, "{backend}: p50 {p50} p99 {p99}");
        // A read is part of its burst: no read's median exceeds the bursts' p99.
        let batch99 = d["report"]["batch_p99_us"].as_f64().expect("batch p99");
        assert!(p50 <= batch99 && batch > 0.0, "{backend}: {d}");
        // The caller's time of a burst holds the I/O thread's (hand-off and delivery on
        // top; 1% for the histogram's rounding).
        let caller = d["caller_burst_us"]["p50"].as_f64().expect("caller p50");
        assert!(
            caller >= batch * 0.99,
            "{backend}: caller {caller} batch {batch}: {d}"
        );
    }
}

#[test]
fn bad_patterns_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let table = tmp.path().join("v41");
    let t = table.to_str().expect("utf-8");
    let (ok, _, err) = engram(&["synth", t, "--preset", "v41", "--base-size", "3000"]);
    assert!(ok, "synth: {err}");
    for (pattern, extra, says) in [
        ("burst:16", &[][..], "needs both"),
        ("burst:16,idle:soon", &[], "expected a number"),
        ("burst:99999,idle:1ms", &[], "MAX_BURST_ROWS"),
        ("burst:4,idle:1ms", &["--threads", "2"][..], "one thread"),
        (
            "burst:4,idle:1ms",
            &["--prefetch-depth", "2"][..],
            "one thread",
        ),
        (
            "burst:4,idle:1ms",
            &["--dist", "zipf:1.0"][..],
            "drop --dist",
        ),
    ] {
        let (ok, _, err) = engram(
            &[
                &["bench", t, "--backend", "pread", "--pattern", pattern][..],
                extra,
            ]
            .concat(),
        );
        assert!(!ok, "{pattern} {extra:?} succeeded");
        assert!(err.contains(says), "{pattern} {extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
