//! Test helpers that reach outside the process (strace, facilities a test may require,
//! directory listings), shared with `tools/tests` through `#[path]`.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Set to 1 (CI) to fail instead of skipping when strace cannot trace and kill.
pub const REQUIRE_STRACE_ENV: &str = "ENGRAM_REQUIRE_STRACE";
/// Set to 1 (CI, as root) to fail instead of skipping when a tmpfs cannot be mounted.
pub const REQUIRE_TMPFS_ENV: &str = "ENGRAM_REQUIRE_TMPFS";

/// The names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `cmd` (program, arguments, environment) run under strace with `strace_args`.
pub fn under_strace(cmd: &Command, strace_args: &[String]) -> Command {
    let mut traced = Command::new("strace");
    traced
        .args(strace_args)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => traced.env(key, v),
            None => traced.env_remove(key),
        };
    }
    traced
}

/// strace arguments that kill the traced process (SIGKILL) at the `n`th call of `syscall`
/// (counted per thread), tracing nothing to the output.
pub fn kill_at(syscall: &str, n: u64) -> Vec<String> {
    vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        format!("trace={syscall}"),
        "-e".into(),
        format!("inject={syscall}:signal=KILL:when={n}"),
    ]
}

/// `Ok` if strace can run `exe args` and kill it at its first `openat` (ptrace allowed,
/// fault injection supported), else why not.
pub fn strace_can_kill(exe: &Path, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let probe = under_strace(&cmd, &kill_at("openat", 1))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Err(e) => Err(format!(
            "strace cannot be run ({e}): install it (apt-get install strace)"
        )),
        Ok(out) if out.status.signal() == Some(9) => Ok(()),
        Ok(out) => Err(format!(
            "strace could not kill a traced process ({}; {}): ptrace is probably not allowed here",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Says loudly that `what` is skipped and why, or fails when `require_env` is set to 1.
#[allow(clippy::panic)]
pub fn skip_unless_required(require_env: &str, what: &str, why: &str) {
    if let Err(e) =
        engram_kernels::skip::skip_unless_required(require_env, &format!("{what}: {why}"))
    {
        panic!("{e}");
    }
}
