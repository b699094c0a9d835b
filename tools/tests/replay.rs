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

fn replay(table: &Path, held: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args = vec![
        "replay",
        s(table),
        "--text",
        s(held),
        "--include",
        "**/*.py",
        "--step-us",
        "300",
        "--max-steps",
        "40",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(env!("CARGO_BIN_EXE_engram"), &args);
    let v = out
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("one JSON line"))
        .unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

const FIELDS: [&str; 41] = [
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
];

#[test]
fn replay_reports_every_field() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, held) = fixture(dir.path());
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
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, held) = fixture(dir.path());
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
fn a_modelled_mtp_head_is_as_accurate_as_told() {
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, held) = fixture(dir.path());
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
    if tokenizer().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, held) = fixture(dir.path());
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
