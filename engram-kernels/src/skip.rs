//! Skipped tests, made visible: the test harness swallows the output of a passing test, so a
//! test that cannot run here (no cluster, no GPU, no io_uring, not root) says so on stderr
//! *and* appends a line to the file `$ENGRAM_SKIP_LOG` names; `scripts/test.sh` sets it and
//! prints the count and the reasons at the end. Where an `ENGRAM_REQUIRE_*` variable is set
//! to 1 the skip is a failure instead ([`skip_unless_required`]).

use std::io::Write;
use std::path::Path;

/// Environment variable naming the file skipped tests append their reasons to.
pub const SKIP_LOG_ENV: &str = "ENGRAM_SKIP_LOG";

/// The test that is running: libtest names each test's thread after it; otherwise the
/// executable's name.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "?".into()),
    }
}

/// Records that the running test skipped (all or part of itself) because of `why`: a line
/// on stderr and, when `$ENGRAM_SKIP_LOG` is set, a line `TEST<TAB>WHY` appended to it.
pub fn skipped(why: &str) {
    let test = current_test();
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV)
        && let Err(e) = append(Path::new(&path), &test, why)
    {
        eprintln!(
            "cannot record the skip in {} ({SKIP_LOG_ENV}): {e}",
            Path::new(&path).display()
        );
    }
}

/// Appends `TEST<TAB>WHY` to `log` in one write with O_APPEND, so concurrent tests never
/// interleave within a line.
fn append(log: &Path, test: &str, why: &str) -> std::io::Result<()> {
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// Whether the environment variable `require_env` is set to `1`.
pub fn required(require_env: &str) -> bool {
    std::env::var_os(require_env).is_some_and(|v| v == "1")
}

/// A skip that `require_env=1` turns into a failure: `Err` with the reason then (the caller
/// fails the test with it), else records the skip ([`skipped`]) and returns `Ok`.
pub fn skip_unless_required(require_env: &str, why: &str) -> Result<(), String> {
    if required(require_env) {
        return Err(format!("{require_env}=1 but this cannot run here: {why}"));
    }
    skipped(why);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_1_makes_a_requirement() {
        // (skip_unless_required itself would record a skip in the suite's real log.)
        assert!(!required("ENGRAM_REQUIRE_SKIP_TEST_NEVER_SET"));
        assert!(!required("PATH"));
    }

    #[test]
    fn skips_append_one_line_each() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("skips");
        append(&log, "a::t", "no GPU\nhere").expect("append");
        append(&log, "b::u", "no\tcluster").expect("append");
        let text = std::fs::read_to_string(&log).expect("read");
        assert_eq!(text, "a::t\tno GPU here\nb::u\tno cluster\n");
    }

    #[test]
    fn the_test_name_is_the_thread_name() {
        let name = current_test();
        assert!(name.contains("the_test_name_is_the_thread_name"), "{name}");
    }
}
