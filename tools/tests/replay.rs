//! `engram replay` end to end on a small table built by `engram-build`: the JSON record has
//! every field, a resident table never stalls, speculation reports what it read, and bad
//! input is a clear error. No timing is asserted beyond the resident table's zero stall,
//! which holds by construction (DRAM serves the rows on the replay thread before the
//! deadline is reached).
//!
//! Needs the DeepSeek tokenizer (`scripts/fetch-tokenizer.sh`); without it each test prints
//! a skip reason, unless `ENGRAM_REQUIRE_TOKENIZER=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tokenizer() -> Option<PathBuf> {
    engram_files::tokenizer::for_tests().expect("ENGRAM_REQUIRE_TOKENIZER is set")
}

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const CODE: &str = "import os\n\n\ndef walk(root):\n    for name in os.listdir(root):\n        \
                    path = os.path.join(root, name)\n        if os.path.isdir(path):\n            \
                    yield from walk(path)\n        else:\n            yield path\n";

/// A temp dir holding [`fixture`]'s table and held-out text; `None` (the test skips)
/// without the tokenizer.
fn setup() -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    tokenizer()?;
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, held) = fixture(dir.path());
    Some((dir, table, held))
}

/// A table built from a small corpus (with profile and candidates) and held-out text.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).expect("mkdir");
    for i in 0..6 {
        std::fs::write(corpus.join(format!("m{i}.py")), CODE.repeat(i + 1)).expect("write");
    }
    let table = dir.join("table");
    let (code, _, err) = run(
        env!("CARGO_BIN_EXE_engram-build"),
        &[
            s(&corpus),
            "--out",
            s(&table),
            "--preset",
            "demo",
            "--base-size",
            "2000",
            "--layers",
            "1,15",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "engram-build: {err}");
    assert!(table.join("candidates.bin").exists());
    let held = dir.join("held");
    std::fs::create_dir_all(&held).expect("mkdir");
    std::fs::write(held.join("a.py"), CODE.replace("walk", "scan").repeat(3)).expect("write");
    std::fs::write(held.join("b.txt"), "not python").expect("write");
    (table, held)
}

/// `engram replay TABLE --text HELD --include '**/*.py' --json` with `base` then `extra`.
fn replay_with(
    table: &Path,
    held: &Path,
    base: &[&str],
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "replay",
        s(table),
        "--text",
        s(held),
        "--include",
        "**/*.py",
        "--json",
    ];
    args.extend_from_slice(base);
    args.extend_from_slice(extra);
    let (code, out, err) = run(env!("CARGO_BIN_EXE_engram"), &args);
    let v = out
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("one JSON line"))
        .unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

/// A short decode replay.
fn replay(table: &Path, held: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    replay_with(
        table,
        held,
        &["--step-us", "300", "--max-steps", "40"],
        extra,
    )
}

/// A prefill replay.
fn prefill(table: &Path, held: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    replay_with(table, held, &[], extra)
}

const FIELDS: [&str; 48] = [
    "/table",
    "/table_id",
    "/rows",
    "/row_bytes",
    "/backend",
    "/text/files",
    "/text/documents",
    "/text/tokens",
    "/batch",
    "/steps",
    "/tokens",
    "/step_us",
    "/lead_us",
    "/model_layers",
    "/deadline_us",
    "/cache_bytes",
    "/cache_fraction",
    "/seeded_rows",
    "/profile",
    "/records",
    "/speculate",
    "/wall_seconds",
    "/stall_us_per_token/mean",
    "/stall_us_per_token/p50",
    "/stall_us_per_token/p99",
    "/stall_us_per_token/max",
    "/slowdown",
    "/tokens_per_second",
    "/tokens_per_second_resident",
    "/hit_rate",
    "/compulsory_miss_floor",
    "/cold_miss_share",
    "/cold_steps_by_layer",
    "/profile_unseen_share",
    "/reads_per_token",
    "/iops",
    "/speculation/accuracy",
    "/speculation/predictor",
    "/speculation/rows_read_per_token",
    "/late_us/mean",
    "/errors",
    "/device_reads",
    "/queue_depth",
    "/floor/slowdown_floor",
    "/floor/measured_over_floor",
    "/floor/reads_per_step_by_layer",
    "/prefetch",
    "/wait_for_rows",
];

#[test]
fn replay_reports_every_field() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    let (code, v, err) = replay(
        &table,
        &held,
        &[
            "--batch",
            "2",
            "--cache-bytes",
            "10%",
            "--speculate",
            "2",
            "--backend",
            "pread",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["type"], "replay", "{v}");
    let d = &v["data"];
    for f in FIELDS {
        assert!(d.pointer(f).is_some(), "missing {f}: {d}");
    }
    assert_eq!(d["batch"], 2);
    assert_eq!(d["tokens"], d["steps"].as_u64().expect("steps") * 2);
    assert_eq!(d["text"]["files"], 1, "only *.py");
    assert_eq!(d["backend"], "pread");
    assert!(d["seeded_rows"].as_u64().expect("seeded") > 0, "{d}");
    assert_eq!(d["lookups"], d["tokens"].as_u64().expect("tokens") * 2 * 16);
    let floor = d["compulsory_miss_floor"].as_f64().expect("floor");
    let unseen = d["profile_unseen_share"].as_f64().expect("unseen");
    assert!(
        (0.0..=1.0).contains(&floor) && floor <= unseen,
        "floor {floor} unseen {unseen}"
    );
    // The held-out text repeats the corpus's code with other names: the candidates know
    // some of its continuations, and speculation ran.
    let sp = &d["speculation"];
    assert!(sp["accuracy"].as_f64().expect("accuracy") > 0.0, "{sp}");
    assert!(sp["batches"].as_u64().expect("batches") > 0, "{sp}");
    assert!(
        sp["rows_offered_per_token"].as_f64().expect("offered") > 0.0,
        "{sp}"
    );
    // Text output says the same in prose.
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_engram"),
        &[
            "replay",
            s(&table),
            "--text",
            s(&held.join("a.py")),
            "--step-us",
            "300",
            "--max-steps",
            "5",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("slowdown"), "{out}");
}

#[test]
fn a_resident_table_never_stalls() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    let (code, v, err) = replay(&table, &held, &["--backend", "memory", "--no-profile"]);
    assert_eq!(code, 0, "{err}");
    let d = &v["data"];
    assert_eq!(d["slowdown"].as_f64(), Some(0.0), "{d}");
    assert_eq!(d["stall_us_per_token"]["max"].as_f64(), Some(0.0), "{d}");
    assert_eq!(d["profile"], serde_json::Value::Null);
    // Without a profile every first touch is compulsory.
    assert_eq!(
        d["compulsory_miss_floor"].as_f64().map(|f| f > 0.0),
        Some(true)
    );
    assert_eq!(d["profile_unseen_share"].as_f64(), Some(1.0));
    // No cache: every first touch is a cold miss too, and some steps of each layer had one.
    assert_eq!(d["cold_miss_share"], d["compulsory_miss_floor"], "{d}");
    let steps = d["cold_steps_by_layer"].as_array().expect("per layer");
    assert_eq!(steps.len(), 2, "{d}");
    assert!(
        steps
            .iter()
            .all(|x| x.as_f64().is_some_and(|x| x > 0.0 && x <= 1.0)),
        "{d}"
    );
}

#[test]
fn layers_prefetched_in_turn_or_at_once_read_the_same_rows() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    let base = ["--backend", "pread", "--no-profile"];
    let (code, staged, err) = replay(&table, &held, &base);
    assert_eq!(code, 0, "{err}");
    let mut args = base.to_vec();
    args.extend(["--prefetch-at-once", "--sleep-on-rows"]);
    let (code, at_once, err) = replay(&table, &held, &args);
    assert_eq!(code, 0, "{err}");
    let (a, b) = (&staged["data"], &at_once["data"]);
    assert_eq!(a["prefetch"], "by_layer", "{a}");
    assert_eq!(a["wait_for_rows"], "poll", "{a}");
    assert_eq!(b["prefetch"], "at_once", "{b}");
    assert_eq!(b["wait_for_rows"], "sleep", "{b}");
    // Same stream, no cache: the same lookups and the same device reads, layer by layer.
    assert!(u(&a["device_reads"]) > 0, "{a}");
    for key in ["lookups", "device_reads", "errors"] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    assert_eq!(a["cold_steps_by_layer"], b["cold_steps_by_layer"]);
    assert_eq!(u(&a["errors"]), 0);
}

#[test]
fn a_modelled_mtp_head_is_as_accurate_as_told() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    // Without candidates.bin only the modelled head guesses.
    std::fs::remove_file(table.join("candidates.bin")).expect("rm");
    let accuracy = |p: &str| {
        let (code, v, err) = replay(
            &table,
            &held,
            &["--speculate", "1", "--predictor", p, "--cache-bytes", "10%"],
        );
        assert_eq!(code, 0, "{p}: {err}");
        let sp = &v["data"]["speculation"];
        assert_eq!(sp["predictor"], p, "{sp}");
        (
            sp["accuracy"].as_f64().expect("accuracy"),
            sp["rows_offered_per_token"].as_f64().expect("offered"),
        )
    };
    let (always, offered) = accuracy("mtp:1");
    // Only a sequence's first position has no guess before it.
    assert!(always > 0.95, "mtp:1 accuracy {always}");
    assert!(offered > 0.0, "mtp:1 offered nothing");
    assert_eq!(accuracy("mtp:0"), (0.0, 0.0), "mtp:0 with no table guesses");
    let (half, _) = accuracy("mtp:0.5");
    assert!((0.2..0.8).contains(&half), "mtp:0.5 accuracy {half}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    for (extra, says) in [
        (&["--records"][..], "records.bin"),
        (&["--batch", "0"][..], "--batch 0"),
        (&["--lead-us", "999"][..], "--lead-us 999"),
        (&["--model-layers", "10"][..], "--model-layers 10"),
        (&["--cache-bytes", "150%"][..], "--cache-bytes"),
        (&["--speculate", "65"][..], "--speculate 65"),
        (&["--speculate", "1", "--predictor", "mtp:2"][..], "mtp:2"),
        (&["--speculate", "1", "--predictor", "draft"][..], "draft"),
        (&["--predictor", "mtp:0.5"][..], "--speculate K"),
    ] {
        let (code, _, err) = replay(&table, &held, extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
    std::fs::remove_file(table.join("candidates.bin")).expect("rm");
    let (code, _, err) = replay(&table, &held, &["--speculate", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("candidates.bin"), "{err}");
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().expect("a count")
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().expect("a number")
}

#[test]
fn prefill_reports_chunks_that_add_up() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    let (code, v, err) = prefill(
        &table,
        &held,
        &[
            "--prefill",
            "60",
            "--chunk",
            "25",
            "--prompts",
            "2",
            "--prefill-rate",
            "100000",
            "--backend",
            "pread",
            "--no-profile",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let p = &v["data"]["prefill"];
    for field in [
        "ttft_us",
        "ttft_resident_us",
        "device_reads",
        "chunks",
        "hit_rate",
        "misses",
        "unique_share",
        "by_order",
        "iops_while_reading",
        "floor",
        "rows_requested",
    ] {
        assert!(p.get(field).is_some(), "missing {field}: {p}");
    }
    let chunks = p["chunks"].as_array().expect("chunks");
    // 60 tokens in chunks of 25: 25, 25, 10; two prompts.
    assert_eq!(chunks.len(), 6, "{p}");
    let tokens: Vec<u64> = chunks.iter().map(|c| u(&c["tokens"])).collect();
    assert_eq!(tokens, [25, 25, 10, 25, 25, 10]);
    // The demo shape: 16 heads per layer, 2 layers.
    let lookups: u64 = chunks.iter().map(|c| u(&c["lookups"])).sum();
    assert_eq!(lookups, 120 * 16 * 2);
    assert_eq!(u(&p["lookups"]), lookups);
    let unique: u64 = chunks
        .iter()
        .flat_map(|c| {
            c["unique_rows"]
                .as_array()
                .expect("per layer")
                .iter()
                .map(u)
        })
        .sum();
    let misses: u64 = chunks
        .iter()
        .flat_map(|c| c["misses"].as_array().expect("per layer").iter().map(u))
        .sum();
    assert_eq!(u(&p["unique_rows"]), unique);
    assert!(
        unique < lookups,
        "a chunk of code repeats n-grams: {unique} of {lookups}"
    );
    // The store was asked for exactly the deduplicated rows; with no cache each is a miss
    // and needs a device read (some share a block).
    assert_eq!(u(&p["rows_requested"]), unique, "{p}");
    assert_eq!(misses, unique);
    assert_eq!(u(&p["misses"]), misses);
    assert_eq!(f(&p["hit_rate"]), 0.0);
    let reads = u(&p["device_reads"]);
    assert!(
        reads > 0 && reads <= unique,
        "{reads} reads for {unique} rows"
    );
    // Unique shares per order are shares, and they weigh up to the total.
    let orders = p["by_order"].as_array().expect("by_order");
    assert_eq!(orders.len(), 2, "orders 2-3");
    for o in orders {
        assert!((0.0..=1.0).contains(&f(&o["unique_share"])), "{o}");
    }
    // Compute is tokens / rate; the store can only add to it.
    assert!((f(&p["ttft_resident_us"]) - 600.0).abs() < 1.0, "{p}");
    assert!(f(&p["ttft_us"]) >= f(&p["ttft_resident_us"]), "{p}");
    for c in chunks {
        assert!(f(&c["ready_us"]) >= f(&c["issued_us"]), "{c}");
        assert!(f(&c["stall_us"]) >= 0.0, "{c}");
    }
    assert!(p["floor"]["floor_us"].is_null(), "no fio asked for: {p}");
    // The text report says the same.
    let (code, out, err) = run(
        env!("CARGO_BIN_EXE_engram"),
        &[
            "replay",
            s(&table),
            "--text",
            s(&held.join("a.py")),
            "--prefill",
            "50",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("TTFT") && out.contains("floor"), "{out}");
}

#[test]
fn prefill_flags_reject_bad_values() {
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    for (extra, says) in [
        (&["--prefill", "0"][..], "--prefill 0"),
        (&["--prefill", "10", "--chunk", "0"][..], "--chunk 0"),
        (
            &["--prefill", "10", "--prefill-rate", "0"][..],
            "--prefill-rate 0",
        ),
        (
            &["--prefill", "10", "--prefill-rate", "NaN"][..],
            "--prefill-rate NaN",
        ),
        (&["--prefill", "10", "--prompts", "0"][..], "--prompts"),
        (&["--prefill", "10", "--speculate", "2"][..], "--speculate"),
        (
            &["--prefill", "1000000"][..],
            "fewer than --prefill 1000000",
        ),
        (&["--prefill", "10", "--step-us", "300"][..], "--step-us"),
        (&["--chunk", "30"][..], "--prefill"),
        (
            &["--fio-baseline", "--fio-seconds", "0"][..],
            "--fio-seconds 0",
        ),
    ] {
        let (code, _, err) = prefill(&table, &held, extra);
        assert_eq!(code, 2, "{extra:?}: {err}");
        assert!(err.contains(says), "{extra:?}: {err}");
    }
}

/// fio on PATH, or a loud skip (`ENGRAM_REQUIRE_FIO=1` makes it a failure).
fn have_fio() -> bool {
    let ok = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("ENGRAM_REQUIRE_FIO").is_none(),
            "ENGRAM_REQUIRE_FIO is set and fio is not on PATH"
        );
        eprintln!("SKIPPED: fio is not on PATH (apt-get install fio)");
    }
    ok
}

#[test]
fn fio_baseline_puts_a_floor_next_to_each_slowdown() {
    if !have_fio() {
        return;
    }
    let Some((_dir, table, held)) = setup() else {
        return;
    };
    let fio = [
        "--fio-baseline",
        "--fio-seconds",
        "0.3",
        "--backend",
        "pread",
        "--queue-depth",
        "8",
    ];
    let (code, v, err) = replay(&table, &held, &fio);
    assert_eq!(code, 0, "{err}");
    let fl = &v["data"]["floor"];
    assert_eq!(fl["fio_random"].as_array().map(Vec::len), Some(2), "{fl}");
    assert!(f(&fl["fio_random"][0]["iops"]) > 0.0, "{fl}");
    let burst = &fl["fio_burst"];
    assert!(u(&burst["burst"]) >= 1, "{fl}");
    assert_eq!(f(&burst["idle_us"]), 300.0);
    // A burst lasts until its slowest read: its median duration is at least a read's
    // median latency (fio's percentiles are bucketed: a little slack).
    let done = f(&burst["burst_done_p50_us"]);
    assert!(done > 0.0 && done >= 0.9 * f(&burst["p50_us"]), "{fl}");
    assert!(f(&burst["burst_done_mean_us"]) > 0.0, "{fl}");
    assert!(f(&fl["burst_floor_us_per_step"]) >= 0.0, "{fl}");
    let floor = f(&fl["slowdown_floor"]);
    assert!(floor >= 0.0, "{fl}");
    let mut args = fio.to_vec();
    args.extend(["--prefill", "100", "--chunk", "30", "--no-profile"]);
    let (code, v, err) = prefill(&table, &held, &args);
    assert_eq!(code, 0, "{err}");
    let p = &v["data"]["prefill"];
    let fl = &p["floor"];
    assert!(f(&fl["iops"]) > 0.0, "{fl}");
    assert!(f(&fl["floor_us"]) >= 0.0, "{fl}");
    assert!(fl["store_over_fio_iops"].is_number(), "{fl}");
    assert!(
        (f(&fl["ttft_extra_us"]) - (f(&p["ttft_us"]) - f(&p["ttft_resident_us"]))).abs() < 1e-6,
        "{p}"
    );
}
