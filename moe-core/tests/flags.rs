//! Numeric flags are validated before the model loads: a bad value is a usage error (exit
//! 2, one line naming the flag), never garbage with exit 0 (`--temperature 1e-45` printed
//! nonsense before the sampler was fixed; see `sampler::tests`).

use std::process::Command;

fn moe_core(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-core"))
        .args(args)
        .output()
        .expect("moe-core runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_sampler_flags_fail_before_loading() {
    // The model directory does not exist: the error must be about the flag, so the flag
    // was checked first.
    for (flag, value, needle) in [
        ("--temperature", "-1", "temperature -1"),
        ("--temperature", "nan", "temperature NaN"),
        ("--temperature", "inf", "temperature inf"),
        ("--top-p", "0", "top_p 0"),
        ("--top-p", "1.5", "top_p 1.5"),
        ("--top-p", "-0.5", "top_p -0.5"),
        ("--top-p", "nan", "top_p NaN"),
    ] {
        let (code, err) = moe_core(&["generate", "--model", "/nonexistent-model", flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {err}");
        assert!(err.contains(needle), "{flag} {value}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flag} {value}: {err}");
    }
}

#[test]
fn a_missing_model_directory_is_named_as_such() {
    let (code, err) = moe_core(&["generate", "--model", "/nonexistent-model"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the model directory /nonexistent-model does not exist"),
        "{err}"
    );
    assert!(!err.contains("SHA256SUMS"), "{err}");
    // The default is relative to the repository root: run elsewhere, the error says so.
    let tmp = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_moe-core"))
        .args(["generate", "--max-new-tokens", "1"])
        .current_dir(tmp.path())
        .output()
        .expect("moe-core runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("models/stdlib-moe-engram-b does not exist")
            && err.contains("relative to the repository root"),
        "{err}"
    );
}

#[test]
fn cache_bytes_takes_sizes_like_every_engram_command() {
    // The size parses (the error is then about the missing model, not the flag) ...
    for size in ["256K", "64M", "1G", "262144", "0"] {
        let (code, err) = moe_core(&[
            "generate",
            "--model",
            "/nonexistent-model",
            "--cache-bytes",
            size,
        ]);
        assert_eq!(code, 2, "{size}: {err}");
        assert!(err.contains("model directory"), "{size}: {err}");
    }
    // ... and a bad one is a usage error naming the flag.
    let (code, err) = moe_core(&["generate", "--cache-bytes", "12Q"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cache-bytes"), "{err}");
}

#[test]
fn a_mooncake_skeleton_is_not_read_from_local_disk() {
    let tmp = tempfile::tempdir().expect("tmp");
    let skeleton = tmp.path().join("skeleton");
    std::fs::create_dir(&skeleton).expect("mkdir");
    std::fs::write(skeleton.join("manifest.json"), "{}").expect("write");
    std::fs::write(skeleton.join("mooncake.json"), "{}").expect("write");
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/stdlib-moe-engram-b");
    let (code, err) = moe_core(&[
        "generate",
        "--model",
        model,
        "--engram",
        skeleton.to_str().expect("utf-8"),
        "--max-new-tokens",
        "1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is a Mooncake skeleton") && err.contains("--engram-backend mooncake"),
        "{err}"
    );
}

/// `moe-core generate | head -c 1`: the reader goes away mid-stream; the writer ends
/// quietly with status 0 (it panicked on the broken pipe, exit 101).
#[test]
fn a_closed_stdout_ends_generate_quietly() {
    use std::io::Read;
    if engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_none()
    {
        return;
    }
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stdlib-moe-a");
    let mut child = Command::new(env!("CARGO_BIN_EXE_moe-core"))
        .args([
            "generate",
            "--no-engram",
            "--max-new-tokens",
            "200",
            "--model",
        ])
        .arg(&model)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("moe-core runs");
    let mut first = [0u8; 1];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("a first byte");
    // The pipe's read end is closed here (dropped above).
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn prefill_chunk_flags_are_checked_and_reported() {
    for (args, needle) in [
        (&["--no-prefill-pipeline"][..], "--prefill-chunk"),
        (&["--prefill-chunk=-1"][..], "--prefill-chunk"),
        (&["--prefill-chunk", "many"][..], "--prefill-chunk"),
    ] {
        let mut all = vec!["generate", "--model", "/nonexistent-model"];
        all.extend_from_slice(args);
        let (code, err) = moe_core(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    if engram_files::tokenizer::for_tests()
        .expect("ENGRAM_REQUIRE_TOKENIZER is set")
        .is_none()
    {
        return;
    }
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/stdlib-moe-a");
    let mut texts = Vec::new();
    for chunk in [
        &["--prefill-chunk", "0"][..],
        &["--prefill-chunk", "3"][..],
        &["--prefill-chunk", "3", "--no-prefill-pipeline"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_moe-core"))
            .args([
                "generate",
                "--no-engram",
                "--max-new-tokens",
                "8",
                "--json",
                "--model",
            ])
            .arg(&model)
            .args(chunk)
            .output()
            .expect("moe-core runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let d = &v["data"];
        assert_eq!(d["prefill_chunk"].as_u64(), chunk[1].parse().ok(), "{d}");
        assert_eq!(
            d["prefill_pipeline"],
            chunk[1] != "0" && chunk.len() == 2,
            "{d}"
        );
        assert!(d["time_to_first_token_seconds"].as_f64().is_some(), "{d}");
        assert!(d["prefill_stall_seconds"].as_f64().is_some(), "{d}");
        texts.push(d["completion"].clone());
    }
    // Greedy: the same completion however the prompt was prefilled.
    assert!(texts.windows(2).all(|w| w[0] == w[1]), "{texts:?}");
}
