//! `engram`: inspect, verify and exercise Engram tables and addressing.
//!
//! Exit codes: 0 success; 1 a check ran and found mismatches; 2 bad input or an error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engram_tools::cmd;

#[derive(Debug, Parser)]
#[command(
    name = "engram",
    version,
    about = "Inspect, verify and exercise Engram tables and addressing",
    long_about = "Inspect, verify and exercise Engram conditional-memory tables and the \
                  hash that addresses them.\n\nExit codes: 0 success; 1 a check found \
                  mismatches; 2 bad input or an error.",
    after_help = "Run `engram <COMMAND> --help` for each command's options and examples."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check conformance vector files (engram-hash-v1 JSON, engram-forward-v1 safetensors).
    Vectors(cmd::vectors::Args),
    /// Tokenize a text and print its canonical ids and the row ids of every Engram layer.
    Hash(cmd::hash::Args),
    /// Show a table's manifest, sizes and checksums (--verify checks every block).
    Inspect(cmd::inspect::Args),
    /// Print rows of a table as hex or JSON.
    Lookup(cmd::lookup::Args),
    /// Benchmark lookups (rows/s, MB/s, IOPS, latency, hit rate, CPU).
    Bench(cmd::bench::Args),
    /// Measure this disk's O_DIRECT random-read limits and the DRAM gather rate.
    Probe(cmd::probe::Args),
    /// Write a synthetic table of a published shape.
    Synth(cmd::synth::Args),
    /// Replay held-out text as decode traffic: stall, slowdown vs DRAM, hit rates, IOPS.
    Replay(cmd::replay::Args),
    /// Write a synthetic checkpoint in DeepSeek-V4.1-Flash's layout (import tests).
    ReplicaCheckpoint(cmd::replica::Args),
    /// Upload a table to a Mooncake Store cluster (resumable, verified).
    Publish(cmd::mooncake::PublishArgs),
    /// Remove a published table version from Mooncake Store.
    Unpublish(cmd::mooncake::UnpublishArgs),
    /// Write the local skeleton of a table published on Mooncake (no rows).
    Skeleton(cmd::mooncake::SkeletonArgs),
    /// Serve tables to engine processes on this host (Unix socket + shared memory).
    Serve(cmd::serve::Args),
    /// Show a running service's tables and clients.
    Stats(cmd::stats::Args),
    /// Reopen a running service's tables.
    Reload(cmd::reload::Args),
}

fn main() -> ExitCode {
    // An allocation failure exits with a message and status 2, not SIGABRT.
    let _ = engram_oom::install("engram");
    engram_tools::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Vectors(args) => cmd::vectors::run(args),
        Command::Hash(args) => cmd::hash::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Lookup(args) => cmd::lookup::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Replay(args) => cmd::replay::run(args),
        Command::ReplicaCheckpoint(args) => cmd::replica::run(args),
        Command::Publish(args) => cmd::mooncake::publish(args),
        Command::Unpublish(args) => cmd::mooncake::unpublish(args),
        Command::Skeleton(args) => cmd::mooncake::skeleton(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Stats(args) => cmd::stats::run(args),
        Command::Reload(args) => cmd::reload::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
