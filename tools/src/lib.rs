//! Shared code of the `engram` and `engram-build` command-line tools. Each subcommand of
//! `engram` lives in `cmd/<name>.rs` with an `Args` (clap) and a `run(Args)`.
#![deny(missing_docs)]

pub mod addressing;
pub mod build;
pub mod checkpoint;
pub mod cmd;
#[doc(hidden)]
pub mod fuzz;
pub mod vectors;
pub mod vectors_forward;

/// Logs to stderr; `RUST_LOG` filters (default: warnings and errors).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: no escape codes in logs written to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Most worker or client threads a `--threads` flag accepts: far above any core count,
/// low enough that a typo cannot exhaust the process's threads or memory for stacks.
pub const MAX_THREADS: usize = 1024;

/// The soft address-space limit (`ulimit -v`) in bytes, if one is set.
pub fn address_space_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::As).current
}

/// Exit code: a check ran and found mismatches.
pub const EXIT_MISMATCH: u8 = 1;
/// Exit code: bad input or an error.
pub const EXIT_ERROR: u8 = 2;

/// Writes one line to stdout. A closed pipe (`engram inspect T | head`) ends the process
/// quietly with status 0, as Unix tools do, instead of panicking like `println!`.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(i32::from(EXIT_ERROR));
    }
}

/// `println!` through [`out_line`].
#[macro_export]
macro_rules! outln {
    () => { $crate::out_line(format_args!("")) };
    ($($arg:tt)*) => { $crate::out_line(format_args!($($arg)*)) };
}

/// A path as a JSON string. `serde_json` refuses (and `json!` panics on) paths that are not
/// UTF-8; those are written lossily (U+FFFD for each invalid byte).
pub fn json_path(path: &std::path::Path) -> serde_json::Value {
    serde_json::Value::String(path.to_string_lossy().into_owned())
}

/// Prints one JSON Lines record with the `{"type": ..., "data": ...}` envelope.
pub fn json_line(kind: &str, data: &serde_json::Value) {
    outln!("{}", serde_json::json!({ "type": kind, "data": data }));
}
