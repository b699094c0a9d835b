//! Kills a table write at every syscall it makes, one at a time, and checks that the path
//! still holds one complete table (the old or the new one, with its extra file), that
//! nothing else is left but the writer's own leftovers, and that the next write cleans
//! them and succeeds.
//!
//! The write runs in a child process (this binary again, with [`CHILD_ENV`] set) under
//! `strace -f -e inject=SYSCALL:signal=KILL:when=N`, for every syscall in [`SYSCALLS`] the
//! write makes and every N up to its count, then once more past the count (it must
//! complete). Scenarios: replacing a table (`RENAME_EXCHANGE`), replacing it with the
//! two-rename fallback (`ENGRAM_PUBLISH_FALLBACK=1`), and a first publication.
//!
//! `harness = false`: strace counts N per thread, and libtest would run the write on a
//! thread of its own while its main thread writes the test output, so the count would mix
//! both. The table writer's own writer threads (one per layer, for the data batches) are
//! counted per thread like strace counts them. Needs strace with ptrace allowed; without it the test prints why and passes,
//! unless `ENGRAM_REQUIRE_STRACE=1` (CI) makes that a failure.

// A test with its own `main`: a panic is how it fails, as in a `#[test]`.
#![allow(clippy::panic)]

mod common;

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use common::publish::{seed_of, version, write};
use common::sys;
use common::sys::listing;
use engram_store::publish::PUBLISH_FALLBACK_ENV;
use engram_store::{Error, TableWriter};

const TEST_NAME: &str = "killed_at_every_syscall_the_path_holds_one_complete_table";
/// `SEED:DIR`: write version SEED of the table at DIR (forced) and exit.
const CHILD_ENV: &str = "ENGRAM_PUBLISH_CRASH_CHILD";

/// Syscalls that create, write, sync, lock, rename or delete, plus `openat` and
/// `getdents64` (the cleanup's directory scans). Those the write does not make on this
/// machine are listed as unused.
const SYSCALLS: [&str; 19] = [
    "openat",
    "open",
    "creat",
    "mkdir",
    "mkdirat",
    "flock",
    "ftruncate",
    "pwrite64",
    "write",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "symlinkat",
    "getdents64",
];

/// The old table's seed and the new one's.
const OLD: u64 = 1;
const NEW: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Replace,
    ReplaceFallback,
    Create,
}

/// What a killed write left at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Old,
    New,
    /// Nothing yet (first publication).
    Nothing,
    /// Fallback killed between its renames: the old table aside, restored by the next write.
    Aside,
}

fn main() -> ExitCode {
    if let Some(job) = std::env::var_os(CHILD_ENV) {
        return child(job);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--ignored")
        || (!filters.is_empty() && !filters.iter().any(|f| TEST_NAME.contains(f.as_str())))
    {
        println!("running 0 tests ({TEST_NAME} filtered out)");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test");
    let Some(exe) = strace_works() else {
        println!("test {TEST_NAME} ... skipped");
        return ExitCode::SUCCESS;
    };
    let mut rows = Vec::new();
    for scenario in [
        Scenario::Replace,
        Scenario::ReplaceFallback,
        Scenario::Create,
    ] {
        rows.extend(sweep(&exe, scenario));
    }
    eprintln!(
        "\nscenario          syscall      kills  left old  left new  nothing  aside  completes at"
    );
    let (mut kills, mut held) = (0, 0);
    for r in &rows {
        eprintln!(
            "{:<17} {:<12} {:>5} {:>9} {:>9} {:>8} {:>6}  N={}",
            format!("{:?}", r.scenario),
            r.syscall,
            r.kills,
            r.old,
            r.new,
            r.nothing,
            r.aside,
            r.kills + 1
        );
        kills += r.kills;
        held += r.old + r.new + r.nothing + r.aside;
    }
    eprintln!("{kills} kills, {held} left a complete table (or, first publication, none)");
    println!("test {TEST_NAME} ... ok");
    ExitCode::SUCCESS
}

/// The child: one forced write of version SEED at DIR.
fn child(job: OsString) -> ExitCode {
    let job = job.to_string_lossy().into_owned();
    let Some((seed, dir)) = job
        .split_once(':')
        .and_then(|(s, d)| Some((s.parse().ok()?, d)))
    else {
        eprintln!("bad {CHILD_ENV}={job:?}: expected SEED:DIR");
        return ExitCode::from(2);
    };
    match write(Path::new(dir), seed, true) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("write failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// This binary's path if strace can trace it and inject a kill, else `None` after saying
/// why (or a panic under `ENGRAM_REQUIRE_STRACE=1`).
fn strace_works() -> Option<PathBuf> {
    let exe = std::env::current_exe().expect("the test binary's path");
    match sys::strace_can_kill(&exe, &["--list"]) {
        Ok(()) => Some(exe),
        Err(why) => {
            sys::skip_unless_required(sys::REQUIRE_STRACE_ENV, TEST_NAME, &why);
            None
        }
    }
}

/// The child writing the new table at `dir`, as `scenario` runs it.
fn child_cmd(exe: &Path, dir: &Path, scenario: Scenario) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_ENV, format!("{NEW}:{}", dir.display()))
        .env_remove(PUBLISH_FALLBACK_ENV)
        // Set by cargo; it only makes the loader try more directories before main.
        .env_remove("LD_LIBRARY_PATH");
    if scenario == Scenario::ReplaceFallback {
        cmd.env(PUBLISH_FALLBACK_ENV, "1");
    }
    cmd
}

fn strace(
    exe: &Path,
    dir: &Path,
    scenario: Scenario,
    strace_args: &[String],
) -> std::process::Output {
    sys::under_strace(&child_cmd(exe, dir, scenario), strace_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("strace runs")
}

/// Per syscall: how many calls the write makes (from one traced run).
fn syscall_counts(
    exe: &Path,
    dir: &Path,
    scenario: Scenario,
    trace: &Path,
) -> Vec<(&'static str, u64)> {
    let args: Vec<String> = [
        "-f",
        "-qq",
        "-o",
        &trace.display().to_string(),
        "-e",
        "trace=all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = strace(exe, dir, scenario, &args);
    assert!(
        out.status.success(),
        "the traced write fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(trace).expect("trace");
    // strace counts `when=N` per thread (the table writer writes each layer's batches on a
    // thread of its own): N runs to the most calls any one thread makes, and a kill lands
    // on the first thread to make its Nth call.
    let mut per_thread: std::collections::HashMap<(&'static str, &str), u64> =
        std::collections::HashMap::new();
    for line in text.lines() {
        // "TID name(args..." ("<... name resumed>" continuations do not start a call).
        let mut words = line.split_whitespace();
        let (Some(tid), Some(call)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(name) = call.split('(').next() else {
            continue;
        };
        if let Some(&s) = SYSCALLS.iter().find(|&&s| s == name) {
            *per_thread.entry((s, tid)).or_default() += 1;
        }
    }
    let mut counts: Vec<(&'static str, u64)> = SYSCALLS.iter().map(|&s| (s, 0)).collect();
    for ((name, _), n) in per_thread {
        if let Some(c) = counts.iter_mut().find(|(s, _)| *s == name) {
            c.1 = c.1.max(n);
        }
    }
    let unused: Vec<&str> = counts.iter().filter(|c| c.1 == 0).map(|c| c.0).collect();
    eprintln!(
        "{scenario:?}: syscalls the write does not make here: {}",
        unused.join(", ")
    );
    counts.retain(|c| c.1 > 0);
    counts
}

#[derive(Debug)]
struct Row {
    scenario: Scenario,
    syscall: &'static str,
    kills: u64,
    old: u64,
    new: u64,
    nothing: u64,
    aside: u64,
}

impl Row {
    fn count(&mut self, left: Left) {
        match left {
            Left::Old => self.old += 1,
            Left::New => self.new += 1,
            Left::Nothing => self.nothing += 1,
            Left::Aside => self.aside += 1,
        }
    }
}

/// Puts the path in the scenario's starting state: the old table, or nothing.
fn prepare(parent: &Path, scenario: Scenario) -> PathBuf {
    let dir = parent.join("t");
    match scenario {
        Scenario::Replace | Scenario::ReplaceFallback => {
            if !matches!(dir.exists().then(|| seed_of(&dir)), Some(OLD)) {
                write(&dir, OLD, true).expect("writes the old table");
            }
        }
        Scenario::Create => {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).expect("rm");
            }
        }
    }
    assert_eq!(
        listing(parent),
        if dir.exists() {
            vec!["t".to_string()]
        } else {
            vec![]
        }
    );
    dir
}

/// Checks what a killed write left.
fn left_after_kill(parent: &Path, dir: &Path, scenario: Scenario, what: &str) -> Left {
    let names = listing(parent);
    for n in &names {
        assert!(
            n == "t" || n == ".t.lock" || n.starts_with(".t.tmp-") || n.starts_with(".t.old-"),
            "{what}: unexpected {n} in {names:?}"
        );
    }
    if dir.exists() {
        return match (seed_of(dir), scenario) {
            (OLD, Scenario::Replace | Scenario::ReplaceFallback) => Left::Old,
            (NEW, _) => Left::New,
            (seed, _) => panic!("{what}: the path holds version {seed}"),
        };
    }
    match scenario {
        Scenario::Create => Left::Nothing,
        Scenario::ReplaceFallback => {
            let aside: Vec<&String> = names.iter().filter(|n| n.starts_with(".t.old-")).collect();
            assert_eq!(aside.len(), 1, "{what}: no table at the path and {names:?}");
            assert_eq!(seed_of(&parent.join(aside[0])), OLD, "{what}");
            Left::Aside
        }
        Scenario::Replace => panic!("{what}: no table at the path: {names:?}"),
    }
}

/// The next writer: restores an old table set aside (seen even by a refused write), cleans
/// every leftover and publishes.
fn next_write_succeeds(parent: &Path, dir: &Path, left: Left, what: &str) {
    if left == Left::Aside {
        let m = version(OLD).manifest().expect("manifest");
        let e = TableWriter::create(dir, &m, false).expect_err("the restored table exists");
        assert!(matches!(e, Error::Exists { .. }), "{what}: {e}");
        assert_eq!(seed_of(dir), OLD, "{what}: the old table is back");
    }
    write(dir, OLD, true).unwrap_or_else(|e| panic!("{what}: the next write fails: {e}"));
    assert_eq!(seed_of(dir), OLD);
    assert_eq!(listing(parent), ["t"], "{what}: leftovers remain");
}

fn sweep(exe: &Path, scenario: Scenario) -> Vec<Row> {
    let tmp = tempfile::tempdir().expect("tmp");
    let parent = tmp.path().join("p");
    std::fs::create_dir(&parent).expect("mkdir");
    let dir = prepare(&parent, scenario);
    let counts = syscall_counts(exe, &dir, scenario, &tmp.path().join("trace"));
    assert_eq!(seed_of(&dir), NEW, "the traced write publishes");
    let mut rows = Vec::new();
    for (syscall, count) in counts {
        let mut row = Row {
            scenario,
            syscall,
            kills: 0,
            old: 0,
            new: 0,
            nothing: 0,
            aside: 0,
        };
        for n in 1..=count + 1 {
            let dir = prepare(&parent, scenario);
            let what = format!("{scenario:?}, killed at {syscall} #{n}");
            let args = sys::kill_at(syscall, n);
            let out = strace(exe, &dir, scenario, &args);
            if n <= count {
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "{what}: expected a kill, got {} ({})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                row.kills += 1;
                let left = left_after_kill(&parent, &dir, scenario, &what);
                row.count(left);
                next_write_succeeds(&parent, &dir, left, &what);
            } else {
                assert!(
                    out.status.success(),
                    "{what}: past the last call the write completes, got {} ({})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(seed_of(&dir), NEW, "{what}");
                assert_eq!(listing(&parent), ["t"], "{what}");
            }
        }
        rows.push(row);
    }
    let total = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
    match scenario {
        Scenario::Create => assert!(total(|r| r.nothing) > 0 && total(|r| r.new) > 0),
        _ => assert!(
            total(|r| r.old) > 0 && total(|r| r.new) > 0,
            "the kills straddle the swap"
        ),
    }
    if scenario == Scenario::ReplaceFallback {
        assert!(
            total(|r| r.aside) > 0,
            "a kill fell between the fallback's renames"
        );
    }
    rows
}
