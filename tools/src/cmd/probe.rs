//! `engram probe [--file F]`: this disk's O_DIRECT random-read IOPS and latency at queue
//! depths 1/8/32/128, and this machine's DRAM gather rate.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use engram_files::file::open_regular;
use engram_kernels::alloc::try_vec_dims;
use engram_kernels::rng::SplitMix64;
use engram_store::backend::MAX_QUEUE_DEPTH;
use engram_store::format::MAX_ROW_BYTES;
use engram_store::size::parse_bytes;
use engram_testbed::probe::probe_random_reads;

use crate::json_line;

/// Measure the machine's I/O and memory limits.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  engram probe\n  \
    engram probe --file /data/v41/layer-000-id1.bin --json\n\n\
    Without --file a scratch file of --size bytes is written in the current directory and \
    removed afterwards. Use a file larger than RAM (or a fresh one) so the page cache \
    cannot help; O_DIRECT bypasses it anyway.")]
/// Measure this disk's O_DIRECT random-read limits and the DRAM gather rate.
pub struct Args {
    /// File to read (default: a scratch file in the current directory).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Size of the scratch file.
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Read size.
    #[arg(long, default_value_t = 4096)]
    pub block_bytes: u64,
    /// Queue depths to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub queue_depths: Vec<usize>,
    /// Seconds per queue depth.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Memory used by the DRAM gather test.
    #[arg(long, default_value = "1G")]
    pub dram_bytes: String,
    /// Row size of the DRAM gather test.
    #[arg(long, default_value_t = 264)]
    pub row_bytes: usize,
    /// Print JSON Lines records.
    #[arg(long)]
    pub json: bool,
}

struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Largest read probed (O_DIRECT reads are a power of two from 512 B).
pub const MAX_PROBE_BLOCK_BYTES: u64 = 1 << 20;
/// Longest measurement per queue depth.
pub const MAX_PROBE_SECONDS: f64 = 3600.0;

/// Checks every size and duration flag before any work: a zero read or row size, a
/// non-finite duration or a queue depth the store would refuse is a usage error, not a
/// panic halfway through.
fn validate(args: &Args) -> Result<()> {
    let b = args.block_bytes;
    ensure!(
        b.is_power_of_two() && (512..=MAX_PROBE_BLOCK_BYTES).contains(&b),
        "--block-bytes {b}: must be a power of two in 512..={MAX_PROBE_BLOCK_BYTES} \
         (MAX_PROBE_BLOCK_BYTES)"
    );
    ensure!(
        (1..=MAX_ROW_BYTES).contains(&(args.row_bytes as u64)),
        "--row-bytes {}: must be in 1..={MAX_ROW_BYTES} (the format's MAX_ROW_BYTES)",
        args.row_bytes
    );
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= MAX_PROBE_SECONDS,
        "--seconds {}: must be in (0, {MAX_PROBE_SECONDS}] (MAX_PROBE_SECONDS)",
        args.seconds
    );
    ensure!(
        !args.queue_depths.is_empty(),
        "--queue-depths: give at least one"
    );
    for &qd in &args.queue_depths {
        ensure!(
            (1..=MAX_QUEUE_DEPTH).contains(&qd),
            "--queue-depths {qd}: each must be in 1..={MAX_QUEUE_DEPTH} (MAX_QUEUE_DEPTH)"
        );
    }
    Ok(())
}

/// Random gather of `row_bytes` rows from a `bytes` buffer: rows/s and GB/s. The buffer is
/// allocated fallibly (its size is a flag).
pub fn dram_gather(bytes: usize, row_bytes: usize, seconds: f64) -> Result<(f64, f64)> {
    ensure!(row_bytes > 0, "row bytes must be at least 1");
    let rows = (bytes / row_bytes).max(1);
    let mut mem = try_vec_dims(&[rows, row_bytes], 0u8, "the DRAM gather buffer")?;
    for (i, b) in mem.iter_mut().enumerate() {
        *b = i as u8;
    }
    let batch = 4096;
    let mut out = vec![0u8; batch * row_bytes];
    let mut rng = SplitMix64(7);
    let mut ids = vec![0usize; batch];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < seconds {
        for id in ids.iter_mut() {
            *id = rng.below(rows as u64) as usize;
        }
        for (k, &id) in ids.iter().enumerate() {
            out[k * row_bytes..(k + 1) * row_bytes]
                .copy_from_slice(&mem[id * row_bytes..(id + 1) * row_bytes]);
        }
        n += batch as u64;
    }
    std::hint::black_box(&out);
    let s = t0.elapsed().as_secs_f64();
    Ok((n as f64 / s, n as f64 * row_bytes as f64 / s / 1e9))
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    validate(&args)?;
    let dram_bytes = usize::try_from(parse_bytes(&args.dram_bytes)?)
        .context("--dram-bytes does not fit this machine's address space")?;
    let (path, _scratch) = match &args.file {
        Some(f) => (f.clone(), None),
        None => {
            let size = parse_bytes(&args.size)?;
            let path =
                std::env::current_dir()?.join(format!(".engram-probe-{}", std::process::id()));
            let guard = Scratch(path.clone());
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let chunk = vec![0xA5u8; 8 << 20];
            let mut off = 0u64;
            while off < size {
                let n = (size - off).min(chunk.len() as u64) as usize;
                f.write_all_at(&chunk[..n], off)?;
                off += n as u64;
            }
            f.sync_all()?;
            (path, Some(guard))
        }
    };
    // A regular file only: O_DIRECT reads of a FIFO would block forever.
    let (_, file_bytes) = open_regular(&path)?;
    let len = file_bytes / args.block_bytes * args.block_bytes;
    ensure!(
        len > 0,
        "{} holds {file_bytes} bytes, less than one {} B read",
        path.display(),
        args.block_bytes
    );
    for &qd in &args.queue_depths {
        let r = probe_random_reads(&path, 0, len, args.block_bytes, qd, args.seconds, qd as u64)
            .with_context(|| format!("probing {}", path.display()))?;
        if args.json {
            json_line(
                "probe_disk",
                &serde_json::json!({"file": crate::json_path(&path), "result": r}),
            );
        } else {
            crate::outln!(
                "disk {} B random O_DIRECT reads, QD {:>3}: {:>8.0} IOPS {:>7.1} MB/s, latency mean {:.0} us p50 {:.0} us p99 {:.0} us p999 {:.0} us",
                r.block_bytes,
                qd,
                r.iops,
                r.mb_per_s,
                r.mean_us,
                r.p50_us,
                r.p99_us,
                r.p999_us
            );
            let _ = std::io::stdout().flush();
        }
    }
    // The read unit is chosen by measurement: compare sector-sized reads with page reads at
    // the depth the store runs at.
    if args.block_bytes == 4096 && len >= 4096 {
        let mut units = Vec::new();
        for unit in [512u64, 4096] {
            let r = probe_random_reads(&path, 0, len, unit, 32, args.seconds, 99)
                .with_context(|| format!("probing {} B reads", unit))?;
            units.push((unit, r.iops, r.p99_us));
        }
        let best = if units[0].1 > units[1].1 * 1.1 {
            512
        } else {
            4096
        };
        if args.json {
            json_line(
                "probe_read_unit",
                &serde_json::json!({"qd": 32, "units": units.iter().map(|u| serde_json::json!({"bytes": u.0, "iops": u.1, "p99_us": u.2})).collect::<Vec<_>>(), "recommended_read_unit": best}),
            );
        } else {
            for (unit, iops, p99) in &units {
                crate::outln!("read unit {unit:>4} B at QD 32: {iops:>8.0} IOPS, p99 {p99:.0} us");
            }
            crate::outln!(
                "recommended read unit: {best} B (512 B only when >10% more IOPS; verified \
                 reads always use the 4 KiB checksum block)"
            );
        }
    }
    let (rows_s, gb_s) = dram_gather(dram_bytes, args.row_bytes, args.seconds.min(3.0))?;
    if args.json {
        json_line(
            "probe_dram",
            &serde_json::json!({"row_bytes": args.row_bytes, "rows_per_s": rows_s, "gb_per_s": gb_s}),
        );
    } else {
        crate::outln!(
            "DRAM random gather of {} B rows: {:.2} M rows/s ({:.2} GB/s)",
            args.row_bytes,
            rows_s / 1e6,
            gb_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
