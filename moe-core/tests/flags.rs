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

/// `moe-core generate | head -c 1`: the reader goes away mid-stream; the writer ends
/// quietly with status 0 (it panicked on the broken pipe, exit 101).
#[test]
fn a_closed_stdout_ends_generate_quietly() {
    use std::io::Read;
    if engram_kernels::tokenizer::for_tests()
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
