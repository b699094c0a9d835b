//! `engram lookup TABLE --layer L --rows 1,2,3`: row bytes as hex or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_store::StoreOptions;

use crate::json_line;

/// Print rows of a table.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  engram lookup /data/table --layer 1 --rows 0,17,17,384000000\n  \
    ENGRAM_IO_BACKEND=mmap engram lookup /data/table --layer 14 --rows 5 --json\n  \
    engram lookup /data/table --service /run/engram/engram.sock --layer 1 --rows 0,17\n  \
    engram lookup /data/table --layer 1 --rows 0,1,2,3 --backend pread --no-verify --read-unit 512\n\n\
    --layer is the Engram layer id (as in the manifest), or the index with --layer-index."
)]
/// Print rows of a table as hex or JSON.
pub struct Args {
    /// Table directory.
    pub table: PathBuf,
    /// Engram layer id.
    #[arg(long, required_unless_present = "layer_index")]
    pub layer: Option<u64>,
    /// Layer index (0-based position in the manifest) instead of the id.
    #[arg(long, conflicts_with = "layer")]
    pub layer_index: Option<usize>,
    /// Row ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub rows: Vec<u64>,
    /// How the table is read (backend, cache, verification).
    #[command(flatten)]
    pub read: super::read_args::ReadArgs,
    /// Read through a running service instead.
    #[command(flatten)]
    pub service: super::read_args::ServiceArgs,
    /// Print JSON Lines records instead of text.
    #[arg(long)]
    pub json: bool,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let opts = StoreOptions {
        backend: args.read.backend_options()?,
        io_workers: 1,
        max_batch_rows: args.rows.len().max(1),
        ..StoreOptions::default()
    };
    let (store, fallback) = args.service.open(&args.table, 1, opts.max_batch_rows, || {
        args.read.open_store(&args.table, &opts)
    })?;
    let layout = store.layout();
    let layer = match (args.layer, args.layer_index) {
        (Some(id), _) => layout.layer_index(id)?,
        (None, Some(i)) => i,
        (None, None) => anyhow::bail!("give --layer or --layer-index"),
    };
    let layer_id = store.manifest().layers.get(layer).map(|l| l.layer_id);
    let rb = store.row_bytes();
    let mut out = vec![0u8; args.rows.len() * rb];
    store
        .lookup_into(layer, &args.rows, &mut out)
        .context("looking up rows")?;
    for (row, bytes) in args.rows.iter().zip(out.chunks_exact(rb)) {
        if args.json {
            json_line(
                "row",
                &serde_json::json!({
                    "layer_id": layer_id,
                    "layer_index": layer,
                    "row": row,
                    "backend": store.backend_name(),
                    "row_layout": store.manifest().row_layout,
                    "hex": hex(bytes),
                }),
            );
        } else {
            crate::outln!("{row}: {}", hex(bytes));
        }
    }
    if let Some(why) = fallback {
        tracing::info!("{why}");
    }
    Ok(ExitCode::SUCCESS)
}
