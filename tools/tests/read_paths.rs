//! Every read path returns the memory backend's bytes, checked from the command line:
//! `engram lookup --json` with unverified reads of any read unit, coalescing and queue
//! depth, on pread and io_uring, over dense, sparse and duplicate ids of V4.1-shaped rows
//! (264 B rows that straddle 512 B units: the shape that once overflowed a staging slot).

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
