//! Every benchmark binary answers `--help` with its usage and exit status 0 before doing
//! any work, and bad arguments with the usage and status 2 (no backtrace).

use std::process::Command;

const BINS: [(&str, &str); 5] = [
    ("hash_side_by_side", env!("CARGO_BIN_EXE_hash_side_by_side")),
    ("lookup_overhead", env!("CARGO_BIN_EXE_lookup_overhead")),
    (
        "service_vs_inprocess",
        env!("CARGO_BIN_EXE_service_vs_inprocess"),
    ),
    (
        "store_vs_baselines",
        env!("CARGO_BIN_EXE_store_vs_baselines"),
    ),
    ("build_throughput", env!("CARGO_BIN_EXE_build_throughput")),
];

#[test]
fn help_prints_usage_and_exits_0() {
    for (name, exe) in BINS {
        for flag in ["--help", "-h"] {
            let out = Command::new(exe)
                .arg(flag)
                // A benchmark that ignored --help would start measuring: numpy's side
                // would then fail fast on this bogus interpreter instead of running.
                .env("ENGRAM_PYTHON", "/nonexistent/python3")
                .output()
                .expect("run");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{name} {flag}: {:?}", out.status);
            assert!(
                stdout.contains("Usage") || stdout.contains("usage"),
                "{name} {flag}: {stdout}"
            );
        }
    }
}

#[test]
fn bad_arguments_print_usage_and_exit_2() {
    for (name, args) in [
        ("lookup_overhead", &["only-one"][..]),
        ("service_vs_inprocess", &["nonsense"][..]),
        ("service_vs_inprocess", &[][..]),
        ("hash_side_by_side", &["extra"][..]),
    ] {
        let exe = BINS.iter().find(|(n, _)| *n == name).map(|(_, e)| *e);
        let out = Command::new(exe.expect("known binary"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(stderr.contains("Usage"), "{name} {args:?}: {stderr}");
        assert!(
            !stderr.contains("Stack backtrace"),
            "{name} {args:?}: {stderr}"
        );
    }
}
