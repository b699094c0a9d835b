//! `engram vectors` and the hash-vector checker against the committed conformance files,
//! plus the bad-input cases: every one must be a clear error, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use engram_tools::vectors::{HashCheckOptions, check_hash_file};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/conformance")
        .join(name)
}

fn engram(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .expect("the engram binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn load_vectors() -> Value {
    let text = std::fs::read_to_string(data("engram-hash-v1.json")).expect("vectors present");
    serde_json::from_str(&text).expect("valid JSON")
}

fn write_json(dir: &tempfile::TempDir, name: &str, v: &Value) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, serde_json::to_vec(v).expect("serialises")).expect("writes");
    p
}

#[test]
fn committed_hash_vectors_all_match() {
    let report = check_hash_file(&data("engram-hash-v1.json"), &HashCheckOptions::default())
        .expect("file is well formed");
    assert_eq!(report.cases, 7);
    assert_eq!(report.checked, 1620);
    assert_eq!(report.mismatch_count, 0, "{:?}", report.mismatches);
    let (code, stdout, _) = engram(&[
        "vectors",
        data("engram-hash-v1.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "vectors: 7 cases, 1620 indices, all match");
}

#[test]
fn a_wrong_index_is_reported_with_its_location() {
    let mut v = load_vectors();
    let idx = &mut v["cases"][1]["expected"]["layers"][1]["head_indices"][1][4][2];
    let old = idx.as_u64().expect("an index");
    *idx = Value::from(old + 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write_json(&dir, "mutated.json", &v);
    let (code, stdout, _) = engram(&["vectors", p.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{stdout}");
    let layer = v["cases"][1]["config"]["layer_ids"][1]
        .as_u64()
        .expect("layer id");
    let want = format!(
        "layer {layer} b=1 t=4 head 2: got {old}, expected {}",
        old + 1
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stdout.contains("1 mismatches"), "{stdout}");
}

#[test]
fn wrong_layout_fields_are_mismatches() {
    let mut v = load_vectors();
    v["cases"][0]["expected"]["layers"][0]["multipliers"][1] = Value::from(7);
    v["cases"][2]["expected"]["half_bound"] = Value::from(5);
    v["cases"][3]["expected"]["layers"][0]["primes"][0][0] = Value::from(2);
    v["cases"][0]["expected"]["layers"][0]["mix"][0][3][1] = Value::from(-1);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write_json(&dir, "mutated.json", &v);
    let report = check_hash_file(&p, &HashCheckOptions::default()).expect("well formed");
    assert_eq!(report.mismatch_count, 4, "{:?}", report.mismatches);
    let all = report.mismatches.join("\n");
    for field in ["multipliers", "half_bound", "primes", "mix b=0 t=3 n=3"] {
        assert!(all.contains(field), "{field} not reported in:\n{all}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = load_vectors();
    let mut cases: Vec<(&str, Value, &str)> = Vec::new();
    let mut zero_heads = base.clone();
    zero_heads["cases"][0]["config"]["n_heads"] = Value::from(0);
    cases.push(("zero-heads", zero_heads, "n_heads"));
    let mut unigram = base.clone();
    unigram["cases"][0]["config"]["max_ngram"] = Value::from(1);
    cases.push(("max-ngram-1", unigram, "max_ngram"));
    let mut empty = base.clone();
    empty["cases"][0]["input_ids"] = Value::Array(vec![]);
    cases.push(("empty-batch", empty, "input_ids is empty"));
    let mut out_of_range = base.clone();
    out_of_range["cases"][0]["input_ids"][0][2] = Value::from(1_000_000);
    cases.push(("id-out-of-range", out_of_range, "out of range"));
    let mut ragged = base.clone();
    ragged["cases"][1]["input_ids"][1] = Value::Array(vec![Value::from(1)]);
    cases.push(("ragged", ragged, "ragged"));
    let mut bad_table = base.clone();
    bad_table["compression_tables"]["deepseek-bpe-129280"]["lookup_sha256_i32le"] =
        Value::from("00");
    cases.push(("bad-table-sha", bad_table, "SHA-256"));
    cases.push((
        "wrong-format",
        serde_json::json!({"format": "other", "cases": []}),
        "format",
    ));
    for (name, value, needle) in cases {
        let p = write_json(&dir, &format!("{name}.json"), &value);
        let (code, stdout, stderr) = engram(&["vectors", p.to_str().expect("utf-8")]);
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: {stderr:?} should mention {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    let not_json = dir.path().join("not.json");
    std::fs::write(&not_json, "{ this is not json").expect("writes");
    let (code, _, stderr) = engram(&["vectors", not_json.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not an engram-hash-v1 file"), "{stderr}");
    let (code, _, stderr) = engram(&["vectors", "/nonexistent/vectors.json"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/vectors.json"), "{stderr}");
}

#[test]
fn hash_rejects_a_tokenizer_that_is_not_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "not json at all").expect("writes");
    let (code, _, stderr) = engram(&[
        "hash",
        "--text",
        "x",
        "--tokenizer",
        p.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a valid tokenizer.json"), "{stderr}");
    let (code, _, stderr) = engram(&[
        "hash",
        "--text",
        "x",
        "--tokenizer",
        "/nonexistent/tok.json",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/tok.json"), "{stderr}");
}

#[test]
fn forward_vectors_through_the_cli() {
    let (code, stdout, stderr) = engram(&[
        "vectors",
        data("engram-forward-v1.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "vectors: 3 cases, 99412 values, all match");
    let (code, stdout, _) = engram(&[
        "vectors",
        data("engram-hash-v1.json").to_str().expect("utf-8"),
        data("engram-forward-v1-b.safetensors")
            .to_str()
            .expect("utf-8"),
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("indices, all match") && stdout.contains("values, all match"),
        "{stdout}"
    );
    // An index whose file hash disagrees is an error, not a silent pass.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut index: Value = serde_json::from_str(
        &std::fs::read_to_string(data("engram-forward-v1.json")).expect("index"),
    )
    .expect("json");
    index["cases"][0]["sha256"] = Value::from("00".repeat(32));
    for c in index["cases"].as_array().expect("cases") {
        let f = c["file"].as_str().expect("file");
        std::fs::copy(data(f), dir.path().join(f)).expect("copy");
    }
    let p = write_json(&dir, "index.json", &index);
    let (code, _, stderr) = engram(&["vectors", p.to_str().expect("utf-8")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("SHA-256"), "{stderr}");
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "vectors",
            data("engram-hash-v1.json").to_str().expect("utf-8"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    // Read nothing and close the pipe: the child's next write gets EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
