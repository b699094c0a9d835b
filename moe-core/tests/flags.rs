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
