//! `engram synth OUT --preset demo|engram27b|v41`: a synthetic table of a published shape.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use engram_testbed::synth::{SynthSpec, write_synth};

use crate::json_line;

/// Write a synthetic table (deterministic rows, real manifest and checksums).
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  engram synth /tmp/demo --preset demo --base-size 1000\n  \
    engram synth /data/v41-36g --preset v41 --base-size 2800000   # ~37 GB\n\n\
    Rows are a pure function of (seed, layer index, row id) \
    (engram_testbed::synth::synth_row); sizes scale with --base-size."
)]
pub struct Args {
    /// Output table directory.
    pub out: PathBuf,
    /// Published shape: demo (bf16 x 64), engram27b (bf16 x 80), v41 (fp8 x 256 + 8 scales).
    #[arg(long, default_value = "demo")]
    pub preset: String,
    /// Base table size of every order (default: the preset's).
    #[arg(long)]
    pub base_size: Option<u64>,
    /// Seed of the row contents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bytes per checksum block (default: one 4 KiB unit).
    #[arg(long)]
    pub block_bytes: Option<u64>,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print a JSON Lines summary.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    let mut spec = SynthSpec::preset(&args.preset, args.base_size, args.seed)?;
    spec.block_bytes = args.block_bytes;
    let m = spec.manifest()?;
    let rows: u64 = m.layers.iter().map(|l| l.rows).sum();
    let bytes = crate::build::table_bytes(&m)?;
    // Refuse up front what cannot fit: a --base-size typo must not start writing (and
    // allocating checksum tables for) hundreds of gigabytes.
    let free = crate::build::free_bytes(&args.out)?;
    anyhow::ensure!(
        bytes <= free,
        "{} rows x {} B need {bytes} bytes ({:.1} GB) on disk; the file system holding {} \
         has {free} bytes free (check --base-size)",
        rows,
        m.row_bytes,
        bytes as f64 / 1e9,
        args.out.display()
    );
    eprintln!(
        "writing {} rows x {} B ({:.2} GB) to {}",
        rows,
        m.row_bytes,
        bytes as f64 / 1e9,
        args.out.display()
    );
    let t0 = Instant::now();
    let mut last = 0u64;
    let n_layers = m.layers.len();
    // On a terminal one line rewritten in place every 5%; in a log a line every 25%.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let step = if tty { 5 } else { 25 };
    let m = write_synth(&args.out, &spec, args.force, |li, done, total| {
        let pct = done * 100 / total.max(1);
        if pct / step != last / step || done == total {
            last = pct;
            if tty {
                eprint!("\r  layer {}/{}: {pct:>3}%", li + 1, n_layers);
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("  layer {}/{}: {pct:>3}%", li + 1, n_layers);
            }
        }
    })
    .with_context(|| format!("writing {}", args.out.display()))?;
    if tty {
        eprintln!();
    }
    let secs = t0.elapsed().as_secs_f64();
    let file_bytes: u64 = m.layers.iter().map(|l| l.file_bytes).sum();
    if args.json {
        json_line(
            "synth",
            &serde_json::json!({
                "out": crate::json_path(&args.out), "preset": args.preset, "rows": rows,
                "file_bytes": file_bytes, "seconds": secs,
                "rows_per_layer": m.layers.iter().map(|l| l.rows).collect::<Vec<_>>(),
            }),
        );
    } else {
        crate::outln!(
            "wrote {} ({} rows, {} bytes) in {secs:.1} s ({:.0} MB/s)",
            args.out.display(),
            rows,
            file_bytes,
            file_bytes as f64 / secs / 1e6
        );
    }
    Ok(ExitCode::SUCCESS)
}
