//! `engram bench TABLE`: closed-loop lookup throughput and latency of one store config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use engram_store::size::parse_bytes;
use engram_store::{Profile, StoreOptions};
use engram_testbed::workload::{BenchSpec, RowDist, run_bench};

use super::bench_pattern::{BurstPattern, BurstSpec, run_bursts};

use crate::{MAX_THREADS, json_line};

/// Benchmark lookups against a table.
#[derive(Debug, ClapArgs)]
#[command(
    after_help = "Examples:\n  engram bench /data/v41 --backend uring --queue-depth 32 --batch-rows 4096\n  \
    engram bench /data/v41 --dist zipf:1.0 --cache-bytes 2G --threads 2 --json\n  \
    engram bench /data/v41 --service /run/engram/engram.sock --batch-rows 48 --threads 4\n\n\
    With --service the cache, backend and read options are the server's; --threads \
    threads share one client.\n\n\
    Ids are drawn before the clock starts. Reports rows/s, useful MB/s (rows x row bytes), \
    device MB/s, IOPS, batch latency p50/p99/p999, cache hit rate and CPU seconds.\n\n\
    --pattern burst:B,idle:US replays decode traffic instead of a closed loop: --batches \
    bursts of B random rows (each in its own 4 KiB unit: one device read per row), one \
    lookup each, then US of idle (us, ms or s). read_p50_us / read_p99_us are the device \
    reads (queued to reaped, the submitting syscall included: compare with fio's lat, not its \
    clat, which starts after the submit returns), on the same file:\n  \
    engram bench /data/v41 --backend uring --queue-depth 16 --pattern burst:16,idle:4700us --json\n  \
    fio --name=b --filename=/data/v41/layer-000-id1.bin --direct=1 --ioengine=io_uring --rw=randread \
    --bs=4k --iodepth=16 --iodepth_batch_submit=16 --iodepth_batch_complete_min=16 \
    --thinktime=4700 --thinktime_blocks=16 --number_ios=3200 --lat_percentiles=1\n\
    (benches/scripts/burst-vs-fio.sh runs both, interleaved.)"
)]
pub struct Args {
    /// Table directory.
    pub table: PathBuf,
    /// Backend, cache and I/O options of the store being measured.
    #[command(flatten)]
    pub read: super::read_args::ReadArgs,
    /// Measure through a running `engram serve` instead of an in-process store.
    #[command(flatten)]
    pub service: super::read_args::ServiceArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 1024)]
    pub batch_rows: usize,
    /// Timed batches per thread.
    #[arg(long, default_value_t = 200)]
    pub batches: usize,
    /// Untimed warm-up batches per thread.
    #[arg(long, default_value_t = 20)]
    pub warmup_batches: usize,
    /// uniform or zipf:S.
    #[arg(long, default_value = "uniform")]
    pub dist: String,
    /// Hot-row cache budget (e.g. 512M, 2G; 0 = none).
    #[arg(long, default_value = "0")]
    pub cache_bytes: String,
    /// Seed the cache from this profile file.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Client threads (1..=1024).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Prefetch tickets in flight per thread (0: synchronous lookup_into).
    #[arg(long, default_value_t = 0)]
    pub prefetch_depth: usize,
    /// Only this layer index (default: all, round-robin).
    #[arg(long)]
    pub layer_index: Option<usize>,
    /// Seed of the id stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Decode-like traffic instead of a closed loop: `burst:B,idle:US` (e.g.
    /// `burst:16,idle:4700us`): --batches bursts of B rows on one thread, each followed by
    /// US of idle (us, ms or s; a bare number is us).
    #[arg(long)]
    pub pattern: Option<String>,
    /// Print one JSON Lines record.
    #[arg(long)]
    pub json: bool,
    /// With --backend mooncake: publish the table into this process's own segment
    /// (--mooncake-segment-bytes) first and unpublish it after, to measure reads served by
    /// the process that holds the memory. Replaces any publication of this version.
    #[arg(long)]
    pub mooncake_publish_local: bool,
}

/// Most prefetch tickets in flight per client thread.
pub const MAX_PREFETCH_DEPTH: usize = 4096;
/// Most row ids drawn up front (`threads x (batches + warmup_batches) x batch_rows`, 8 B
/// each: 2 GiB).
pub const MAX_BENCH_IDS: u64 = 1 << 28;

fn validate(args: &Args) -> Result<()> {
    ensure!(
        (1..=MAX_THREADS).contains(&args.threads),
        "--threads {}: must be in 1..={MAX_THREADS} (MAX_THREADS)",
        args.threads
    );
    ensure!(
        args.prefetch_depth <= MAX_PREFETCH_DEPTH,
        "--prefetch-depth {}: at most {MAX_PREFETCH_DEPTH} (MAX_PREFETCH_DEPTH)",
        args.prefetch_depth
    );
    ensure!(args.batches > 0, "--batches must be at least 1");
    if args.pattern.is_some() {
        ensure!(
            args.threads == 1 && args.prefetch_depth == 0,
            "--pattern runs one thread of synchronous lookups: drop --threads and --prefetch-depth"
        );
        ensure!(
            args.dist == "uniform",
            "--pattern draws uniform rows, one per 4 KiB unit: drop --dist {}",
            args.dist
        );
    }
    let ids = (args.threads as u64)
        .checked_mul((args.batches as u64).saturating_add(args.warmup_batches as u64))
        .and_then(|n| n.checked_mul(args.batch_rows as u64))
        .filter(|&n| n <= MAX_BENCH_IDS);
    ensure!(
        ids.is_some(),
        "--threads x (--batches + --warmup-batches) x --batch-rows is above {MAX_BENCH_IDS} \
         row ids (MAX_BENCH_IDS): they are drawn before the clock starts"
    );
    Ok(())
}

/// Runs the command.
pub fn run(args: Args) -> Result<ExitCode> {
    validate(&args)?;
    let pattern = args
        .pattern
        .as_deref()
        .map(BurstPattern::parse)
        .transpose()?;
    let profile = match &args.profile {
        Some(p) => Some(Profile::read(p)?),
        None => None,
    };
    let opts = StoreOptions {
        backend: args.read.backend_options()?,
        io_workers: args.threads,
        max_in_flight: (args.threads * args.prefetch_depth).max(4),
        max_batch_rows: args.batch_rows.max(pattern.map_or(0, |p| p.burst)),
        cache_bytes: parse_bytes(&args.cache_bytes)?,
        profile,
        ..StoreOptions::default()
    };
    let local = if args.mooncake_publish_local {
        anyhow::ensure!(
            args.read.is_mooncake(),
            "--mooncake-publish-local needs --backend mooncake"
        );
        let client = args.read.mooncake_client()?;
        let table = std::sync::Arc::new(engram_store::Table::open(&args.table)?);
        let keys = engram_mooncake::TableKeys::of(table.manifest())?;
        let _ = engram_mooncake::unpublish(&client, &keys, None);
        let po = engram_mooncake::PublishOptions {
            local_segment: true,
            ..engram_mooncake::PublishOptions::default()
        };
        engram_mooncake::publish(&client, &table, &po, &mut |_| {})
            .context("publishing into this process's segment")?;
        let store = engram_mooncake::mooncake_store(std::sync::Arc::clone(&client), table, &opts)?;
        Some((client, keys, store))
    } else {
        None
    };
    let slots = (args.threads.max(1) * args.prefetch_depth.max(1)) as u32;
    let (store, fallback): (std::sync::Arc<dyn engram_store::RowSource>, Option<String>) =
        match &local {
            Some((_, _, st)) => (
                std::sync::Arc::new(st.clone()),
                st.fallback_reason().map(str::to_string),
            ),
            None => args.service.open(&args.table, slots, args.batch_rows, || {
                args.read.open_store(&args.table, &opts)
            })?,
        };
    let spec = BenchSpec {
        batch_rows: args.batch_rows,
        batches: args.batches,
        warmup_batches: args.warmup_batches,
        threads: args.threads,
        dist: RowDist::parse(&args.dist)?,
        seed: args.seed,
        layers: args.layer_index.into_iter().collect(),
        prefetch_depth: args.prefetch_depth,
    };
    let (r, caller_us) = match pattern {
        Some(pattern) => {
            let b = run_bursts(
                store.as_ref(),
                &BurstSpec {
                    pattern,
                    bursts: args.batches,
                    warmup_bursts: args.warmup_batches,
                    layers: spec.layers.clone(),
                    seed: args.seed,
                },
            )?;
            (b.report, Some(b.caller_us))
        }
        None => (run_bench(store.as_ref(), &spec)?, None),
    };
    if let Some((client, keys, st)) = local {
        drop((store, st));
        engram_mooncake::unpublish(&client, &keys, None)?;
    }
    if args.json {
        json_line(
            "bench",
            &serde_json::json!({
                "table": crate::json_path(&args.table), "dist": args.dist, "queue_depth": args.read.queue_depth,
                "cache_bytes": opts.cache_bytes, "fallback": fallback,
                "service": args.service.service.as_deref().map(crate::json_path),
                "pattern": pattern.map(|p| serde_json::json!({
                    "burst": p.burst, "idle_us": p.idle.as_secs_f64() * 1e6,
                })),
                "read_p50_us": r.read_p50_us, "read_p99_us": r.read_p99_us,
                "caller_burst_us": caller_us,
                "device_reads": r.stats.device_reads,
                "report": r,
            }),
        );
    } else if let Some(p) = pattern {
        crate::outln!(
            "{} bursts of {} rows, idle {:.0} us, qd {}: device read p50 {:.0} us p99 {:.0} us \
             ({} reads), burst p50 {:.0} us p99 {:.0} us (as the caller saw it: p50 {:.0} us \
             p99 {:.0} us), CPU {:.2} s",
            r.batches,
            p.burst,
            p.idle.as_secs_f64() * 1e6,
            args.read.queue_depth,
            r.read_p50_us,
            r.read_p99_us,
            r.stats.device_reads,
            r.batch_p50_us,
            r.batch_p99_us,
            caller_p(&caller_us, "p50"),
            caller_p(&caller_us, "p99"),
            r.cpu_seconds
        );
    } else {
        crate::outln!(
            "{} x{} threads, {} batches x {} rows, qd {}, {}: {:.0} rows/s, {:.1} useful MB/s, \
             {:.1} device MB/s, {:.0} IOPS, amplification {:.2}, batch p50 {:.0} us p99 {:.0} us \
             p999 {:.0} us, hit rate {:.3}, CPU {:.2} s ({:.2} cores)",
            r.backend,
            r.threads,
            r.batches,
            r.batch_rows,
            args.read.queue_depth,
            args.dist,
            r.rows_per_s,
            r.useful_mb_per_s,
            r.device_mb_per_s,
            r.iops,
            r.read_amplification,
            r.batch_p50_us,
            r.batch_p99_us,
            r.batch_p999_us,
            r.cache_hit_rate,
            r.cpu_seconds,
            r.cpu_cores
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A quantile of the caller-side burst times (0 when there are none).
fn caller_p(caller_us: &Option<serde_json::Value>, q: &str) -> f64 {
    caller_us
        .as_ref()
        .and_then(|v| v[q].as_f64())
        .unwrap_or(0.0)
}
