//! `engram publish | unpublish | skeleton`: tables on a Mooncake Store cluster
//! (see the `engram-mooncake` crate and `docs/scale-out.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_mooncake::{ClientConfig, PublishOptions, Replication, TableKeys};
use engram_store::Table;
use engram_store::size::parse_bytes;

use crate::build::report::{Mode, Phase};
use crate::json_line;

/// The cluster to talk to.
#[derive(Debug, Clone, ClapArgs)]
pub struct ClusterArgs {
    /// Mooncake master, HOST:PORT (`scripts/mooncake-local.sh start` prints one).
    /// Metadata server, venv, protocol and this host's address: $ENGRAM_MOONCAKE_*.
    #[arg(long, required = true)]
    pub mooncake: String,
}

impl ClusterArgs {
    fn client(&self) -> Result<Arc<engram_mooncake::Client>> {
        let c = ClientConfig::new(&self.mooncake)?;
        Ok(Arc::new(
            engram_mooncake::Client::connect(&c).context("connecting to Mooncake")?,
        ))
    }
}

/// Upload a table to Mooncake Store.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    engram publish /data/v41 --mooncake 10.0.0.5:50051 --replicas 2 --name v41-flash\n  \
    engram publish target/engram-tables/stdlib-moe-engram-b --mooncake \"$(scripts/mooncake-local.sh start | tail -1)\"\n\n\
    Objects are keyed by the table id and a hash of its manifest, so a published version is \
    immutable and a rebuilt table is a new version; --name points a name at it atomically. \
    A rerun resumes (chunks already there are kept); every chunk is read back and compared \
    before the version becomes readable.")]
pub struct PublishArgs {
    /// Table directory.
    pub table: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Copies of every object, on distinct segments.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Let the cluster evict the objects under memory pressure (default: hard-pinned).
    #[arg(long)]
    pub no_hard_pin: bool,
    /// Point this name at the published version.
    #[arg(long)]
    pub name: Option<String>,
    /// Chunk object size (a multiple of 4 KiB, up to 64M).
    #[arg(long, default_value = "4M")]
    pub chunk_bytes: String,
    /// JSON Lines progress and summary.
    #[arg(long)]
    pub json: bool,
    /// Only errors.
    #[arg(long)]
    pub quiet: bool,
}

pub fn publish(args: PublishArgs) -> Result<ExitCode> {
    let mode = Mode::choose(args.json, args.quiet);
    let table = Table::open(&args.table)
        .with_context(|| format!("opening table {}", args.table.display()))?;
    let client = args.cluster.client()?;
    let options = PublishOptions {
        name: args.name.clone(),
        chunk_bytes: parse_bytes(&args.chunk_bytes)?,
        replication: Replication {
            replicas: args.replicas,
            hard_pin: !args.no_hard_pin,
            preferred_segment: None,
        },
        ..PublishOptions::default()
    };
    let total: u64 = table.manifest().layers.iter().map(|l| l.file_bytes).sum();
    let mut phase = Some(Phase::start(mode, "upload", "bytes", total));
    let mut verifying = false;
    let report = engram_mooncake::publish(&client, &table, &options, &mut |p| {
        if p.phase == engram_mooncake::publish::Phase::Verify && !verifying {
            verifying = true;
            if let Some(ph) = phase.take() {
                ph.finish(total, "uploaded");
            }
            phase = Some(Phase::start(mode, "verify", "bytes", total));
        }
        if let Some(ph) = &mut phase {
            ph.update(p.done_bytes, "");
        }
    })
    .with_context(|| format!("publishing {}", args.table.display()))?;
    if let Some(ph) = phase.take() {
        ph.finish(total, "verified");
    }
    match mode {
        Mode::Json => json_line("publish", &serde_json::to_value(&report)?),
        Mode::Quiet => {}
        Mode::Bars | Mode::Log => crate::outln!(
            "published {} as {}{}: {} files, {} chunks ({} uploaded, {} already there, {} \
             rewritten), {} bytes verified",
            args.table.display(),
            report.prefix,
            report
                .name
                .as_ref()
                .map(|n| format!(" (name {n})"))
                .unwrap_or_default(),
            report.files,
            report.chunks,
            report.uploaded_chunks,
            report.resumed_chunks,
            report.rewritten_chunks,
            report.verified_bytes
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Remove a published table version from Mooncake Store.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    engram unpublish /data/v41 --mooncake 10.0.0.5:50051\n  \
    engram unpublish --name v41-flash --mooncake 10.0.0.5:50051\n\n\
    The descriptor goes first, so readers see the version unpublished, never partial.")]
pub struct UnpublishArgs {
    /// Table directory (full or skeleton) whose version to remove.
    #[arg(required_unless_present = "name")]
    pub table: Option<PathBuf>,
    /// The version this name points to (the name is removed too).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long)]
    pub json: bool,
}

pub fn unpublish(args: UnpublishArgs) -> Result<ExitCode> {
    let client = args.cluster.client()?;
    let keys = match (&args.table, &args.name) {
        (Some(dir), _) => {
            let t = Table::open(dir).with_context(|| format!("opening table {}", dir.display()))?;
            TableKeys::of(t.manifest())?
        }
        (None, Some(name)) => engram_mooncake::resolve(&client, name)?,
        (None, None) => anyhow::bail!("give TABLE or --name"),
    };
    let removed = engram_mooncake::unpublish(&client, &keys, args.name.as_deref())?;
    if args.json {
        json_line(
            "unpublish",
            &serde_json::json!({ "prefix": keys.prefix, "objects_removed": removed }),
        );
    } else {
        crate::outln!("unpublished {}: {removed} objects removed", keys.prefix);
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the local skeleton of a published table (manifest, headers, checksums; no rows).
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  \
    engram skeleton v41-flash /data/v41-skeleton --mooncake 10.0.0.5:50051\n  \
    engram lookup /data/v41-skeleton --backend mooncake --mooncake 10.0.0.5:50051 --layer 1 --rows 7\n\n\
    A skeleton is what a host needs to read a table whose rows live on Mooncake: about \
    0.2% of its bytes (8 per 4 KiB block); the row region of each layer file is a hole.")]
pub struct SkeletonArgs {
    /// The published name.
    pub name: String,
    /// Directory to create.
    pub out: PathBuf,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub fn skeleton(args: SkeletonArgs) -> Result<ExitCode> {
    let client = args.cluster.client()?;
    let keys = engram_mooncake::resolve(&client, &args.name)?;
    let t = engram_mooncake::fetch_skeleton(&client, &keys, &args.out)
        .with_context(|| format!("writing the skeleton {}", args.out.display()))?;
    crate::outln!(
        "skeleton of {} ({}) at {}: {} layers",
        args.name,
        keys.prefix,
        args.out.display(),
        t.n_layers()
    );
    Ok(ExitCode::SUCCESS)
}
