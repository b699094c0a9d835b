//! `engram stats --service PATH`: what a running service is doing, for people (or
//! `--json`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use engram_client::protocol::{Reply, Request};

use crate::json_line;

/// Show a running service's tables and clients.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  engram stats --service /run/engram/engram.sock")]
pub struct Args {
    /// The service's socket.
    #[arg(long)]
    pub service: PathBuf,
    /// Print one JSON Lines record.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let reply = engram_client::client::request(&args.service, &Request::Stats)
        .with_context(|| format!("asking {} for stats", args.service.display()))?;
    let Reply::Stats(s) = reply else {
        bail!("unexpected reply {reply:?}");
    };
    if args.json {
        json_line("service_stats", &serde_json::to_value(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "service {}: {} client(s) attached, {} connections, {} refused, {} protocol violations, {} reloads",
        s.socket,
        s.clients,
        s.connections_total,
        s.refused_total,
        s.protocol_violations_total,
        s.reloads_total
    );
    for t in &s.tables {
        let st = &t.store;
        crate::outln!(
            "table {} ({}) backend {} epoch {}: {} client(s), {} requests, {} rows, {} errors, {} in flight, \
             latency p50 {:.1} us p99 {:.1} us; cache {} of {} rows, hit rate {:.1}%; {} device reads ({} bytes)",
            t.name,
            t.path,
            t.backend,
            t.epoch,
            t.clients,
            t.requests.requests,
            t.requests.rows,
            t.requests.errors,
            t.requests.in_flight,
            t.requests.latency.p50_us,
            t.requests.latency.p99_us,
            st.cache_rows,
            st.cache_capacity_rows,
            st.cache_hit_rate * 100.0,
            st.device_reads,
            st.device_bytes
        );
    }
    for c in &s.client_list {
        crate::outln!(
            "  client {} (pid {}, uid {}) on {}: {} requests, {} rows, {} errors, {} in flight, p50 {:.1} us p99 {:.1} us",
            c.id,
            c.pid,
            c.uid,
            c.table,
            c.requests.requests,
            c.requests.rows,
            c.requests.errors,
            c.requests.in_flight,
            c.requests.latency.p50_us,
            c.requests.latency.p99_us
        );
    }
    Ok(ExitCode::SUCCESS)
}
