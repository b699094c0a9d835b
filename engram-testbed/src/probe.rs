//! The device probe: random O_DIRECT reads at a fixed queue depth through the store's own
//! io_uring engine and staging (`engram probe`, `store_vs_baselines`), so the disk's limit
//! is measured the way the store reads.

use engram_kernels::rng::SplitMix64;
use engram_store::backend::MAX_QUEUE_DEPTH;
use engram_store::backend::uring::direct_file_engine;
use engram_store::planner::MAX_READ_BYTES_LIMIT;
use engram_store::reads::{ReadReq, Staging};
use engram_store::{Error, Result, metrics};

fn io_at(op: &'static str, path: &std::path::Path, offset: u64, error: std::io::Error) -> Error {
    Error::IoAt {
        op,
        path: path.to_path_buf(),
        offset,
        error,
    }
}

/// What [`probe_random_reads`] measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProbeResult {
    /// Reads kept in flight.
    pub queue_depth: usize,
    /// Bytes per read.
    pub block_bytes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// Reads per second.
    pub iops: f64,
    /// Bytes read per second, in MB (10^6 bytes).
    pub mb_per_s: f64,
    /// Mean read latency (submit to completion) in microseconds.
    pub mean_us: f64,
    /// Median read latency in microseconds.
    pub p50_us: f64,
    /// 99th-percentile read latency in microseconds.
    pub p99_us: f64,
    /// 99.9th-percentile read latency in microseconds.
    pub p999_us: f64,
}

/// Random `block_bytes` O_DIRECT reads over `[offset, offset + len)` of `path` at queue depth
/// `qd` for `seconds`, through the same staging and io_uring engine the store reads with:
/// the disk's own limit, measured the way the store reads. Every read is reaped before it
/// returns, errors included.
pub fn probe_random_reads(
    path: &std::path::Path,
    offset: u64,
    len: u64,
    block_bytes: u64,
    qd: usize,
    seconds: f64,
    seed: u64,
) -> Result<ProbeResult> {
    let bad = |reason: String| Error::Invalid {
        what: "probe",
        reason,
    };
    if !block_bytes.is_power_of_two()
        || !(512..=MAX_READ_BYTES_LIMIT).contains(&block_bytes)
        || len < block_bytes
        || qd == 0
        || qd > MAX_QUEUE_DEPTH
        || !offset.is_multiple_of(512)
        || !(seconds.is_finite() && seconds > 0.0)
    {
        return Err(bad(format!(
            "block {block_bytes} (a power of two in 512..=16 MiB), range {len} at {offset} \
             (512-aligned), queue depth {qd} (1..={MAX_QUEUE_DEPTH}), {seconds} s"
        )));
    }
    let staging = Staging::new(qd, block_bytes as usize)?;
    let mut engine = direct_file_engine(path, &staging)?;
    let blocks = len / block_bytes;
    let mut rng = SplitMix64(seed);
    let mut hist = metrics::new_hist();
    // (qd,) submit time and file offset of the read in each slot
    let mut started = vec![(std::time::Instant::now(), 0u64); qd];
    let mut done = Vec::with_capacity(qd);
    let mut reads = 0u64;
    let t0 = std::time::Instant::now();
    let deadline = std::time::Duration::from_secs_f64(seconds);
    let mut first_err = None;
    loop {
        if t0.elapsed() < deadline && first_err.is_none() {
            while let Some(lease) = staging.lease(block_bytes as usize)? {
                let slot = lease.slot() as usize;
                let req = ReadReq {
                    file: 0,
                    offset: offset + rng.below(blocks) * block_bytes,
                    tag: 0,
                };
                started[slot] = (std::time::Instant::now(), req.offset);
                if let Err((_, e)) = engine.submit(req, lease) {
                    first_err.get_or_insert(Error::Broken {
                        what: "io_uring probe",
                        reason: e.to_string(),
                    });
                    break;
                }
            }
        }
        if engine.in_flight() == 0 {
            break;
        }
        if let Err(e) = engine.reap(1, None, &mut done) {
            first_err.get_or_insert(Error::Broken {
                what: "io_uring probe",
                reason: e.to_string(),
            });
            // Drop reaps what it can and leaks the rest: nothing is freed under the kernel.
            break;
        }
        for c in done.drain(..) {
            let (t, at) = started[c.lease.slot() as usize];
            metrics::record_ns(&mut hist, t.elapsed().as_nanos() as u64);
            match c.result {
                Ok(n) if n as u64 == block_bytes => reads += 1,
                Ok(n) => {
                    first_err.get_or_insert(io_at(
                        "io_uring read",
                        path,
                        at,
                        std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("short read: {n} of {block_bytes} bytes"),
                        ),
                    ));
                }
                Err(e) => {
                    first_err.get_or_insert(io_at("io_uring read", path, at, e));
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(engine);
    if let Some(e) = first_err {
        return Err(e);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(ProbeResult {
        queue_depth: qd,
        block_bytes,
        reads,
        seconds: secs,
        iops: reads as f64 / secs,
        mb_per_s: reads as f64 * block_bytes as f64 / secs / 1e6,
        mean_us: hist.mean() / 1000.0,
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
    })
}
