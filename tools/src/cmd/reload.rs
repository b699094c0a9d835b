//! `engram reload --service PATH`: reopen every table a running service serves (as
//! SIGHUP does); requests in flight finish on the tables they started on.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use engram_client::protocol::{Reply, Request};

/// Reopen a service's tables (its owner or root only).
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  engram reload --service /run/engram/engram.sock")]
pub struct Args {
    /// The service's socket.
    #[arg(long)]
    pub service: PathBuf,
}

/// Runs the command; exit 1 when a table failed to reload (it keeps its old version).
pub fn run(args: Args) -> Result<ExitCode> {
    let reply = engram_client::client::request(&args.service, &Request::Reload)
        .with_context(|| format!("asking {} to reload", args.service.display()))?;
    let Reply::Reloaded { tables } = reply else {
        bail!("unexpected reply {reply:?}");
    };
    let mut failed = false;
    for t in &tables {
        crate::outln!("{}: {}", t.table, t.outcome);
        failed |= t.outcome.starts_with("failed");
    }
    Ok(if failed {
        ExitCode::from(crate::EXIT_MISMATCH)
    } else {
        ExitCode::SUCCESS
    })
}
