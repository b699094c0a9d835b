//! Drives `fio` (io_uring engine, O_DIRECT, 4 KiB random reads) on a table's file: the
//! baseline the store's device reads are compared with, side by side in the same run
//! (`engram replay --fio-baseline`, `store_vs_baselines ssd`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What one fio run measured. Latencies are fio's `lat`: from the read's submission to its
/// completion, the submitting `io_uring_enter` included, which is the clock the store
/// stamps its device reads with (a caller waits through the submission too); fio's `clat`
/// starts after that syscall returned and is kept for reference.
#[derive(Debug, Clone, Copy)]
pub struct FioResult {
    /// Reads completed per second.
    pub iops: f64,
    /// Median latency of one read, submission included, in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency of one read, submission included, in microseconds.
    pub p99_us: f64,
    /// Median completion latency (fio's `clat`: after the submitting syscall returned).
    pub clat_p50_us: f64,
    /// Bursts only: the median time from a burst's submission until its last read
    /// completed, in microseconds, from fio's per-read latency log: what a caller that
    /// needs every row of the burst waits for.
    pub burst_done_p50_us: Option<f64>,
    /// Bursts only: the mean of the same.
    pub burst_done_mean_us: Option<f64>,
    /// CPU cores fio used (user + system).
    pub cpu_cores: f64,
}

impl FioResult {
    /// The fields as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "iops": self.iops, "p50_us": self.p50_us, "p99_us": self.p99_us,
            "clat_p50_us": self.clat_p50_us, "burst_done_p50_us": self.burst_done_p50_us,
            "burst_done_mean_us": self.burst_done_mean_us,
            "cpu_cores": self.cpu_cores,
        })
    }
}

/// Back-to-back 4 KiB random reads at queue depth `qd` over `size` bytes of `file` from
/// `offset`, for `seconds`.
pub fn random_read(
    file: &Path,
    offset: u64,
    size: u64,
    qd: usize,
    seconds: f64,
) -> Result<FioResult> {
    run(file, offset, size, qd, seconds, &[])
}

/// The decode pattern: a burst of `burst` 4 KiB random reads, all awaited, then `idle_us`
/// without I/O (`--thinktime`), repeated for `seconds`. A burst no deeper than `qd` is
/// submitted in one call (`--iodepth_batch_submit`); a longer one keeps `qd` reads in
/// flight until all `burst` are issued (`--thinktime_blocks_type=issue`), then waits for
/// them. The latencies are those of reads issued after idle, and the burst's own duration
/// is timed from fio's per-read latency log ([`BurstTimes`]).
pub fn burst(
    file: &Path,
    offset: u64,
    size: u64,
    burst: usize,
    qd: usize,
    idle_us: u64,
    seconds: f64,
) -> Result<FioResult> {
    let depth = burst.min(qd).max(1);
    let mut extra = vec![
        format!("--iodepth_batch_submit={depth}"),
        format!("--thinktime={idle_us}"),
        format!("--thinktime_blocks={burst}"),
    ];
    if burst <= qd {
        extra.push(format!("--iodepth_batch_complete_min={burst}"));
    } else {
        extra.push("--thinktime_blocks_type=issue".into());
    }
    let dir = LogDir::new()?;
    let prefix = dir.0.join("burst");
    extra.extend([
        format!("--write_lat_log={}", prefix.display()),
        "--log_avg_msec=0".into(),
        "--per_job_logs=0".into(),
    ]);
    let mut r = run(file, offset, size, depth, seconds, &extra)?;
    let log = dir.0.join("burst_lat.log");
    let text = std::fs::read_to_string(&log)
        .with_context(|| format!("reading fio's latency log {}", log.display()))?;
    let times = BurstTimes::parse(&text, burst, burst <= qd)?;
    r.burst_done_p50_us = Some(times.p50_us);
    r.burst_done_mean_us = Some(times.mean_us);
    Ok(r)
}

/// A private temporary directory for fio's logs, removed on drop.
struct LogDir(std::path::PathBuf);

impl LogDir {
    fn new() -> Result<Self> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("engram-fio-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating fio's log directory {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long fio's bursts took, from its latency log (`time ms, latency ns, dir, bs,
/// offset[, prio]` per read, in completion order; every burst is drained before the next
/// starts, so burst k is lines `k x B .. (k + 1) x B`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstTimes {
    /// Whole bursts in the log.
    pub bursts: usize,
    /// Median burst duration, microseconds.
    pub p50_us: f64,
    /// Mean burst duration, microseconds.
    pub mean_us: f64,
}

impl BurstTimes {
    /// Durations of the log's whole bursts of `burst` reads. `together`: all of a burst's
    /// reads were submitted at once, so its duration is its slowest read's latency
    /// (exact); otherwise it runs from the earliest submission (completion time less
    /// latency) to the last completion, at the log's millisecond resolution, which
    /// averages out over the bursts in the mean.
    pub fn parse(log: &str, burst: usize, together: bool) -> Result<Self> {
        let mut reads = Vec::new();
        for (n, line) in log.lines().enumerate() {
            let mut f = line.split(',').map(str::trim);
            let (Some(t), Some(lat)) = (f.next(), f.next()) else {
                bail!("fio latency log line {}: {line:?}", n + 1);
            };
            let t_us = t.parse::<f64>().context("fio latency log time")? * 1e3;
            let lat_us = lat.parse::<f64>().context("fio latency log latency")? / 1e3;
            reads.push((t_us, lat_us));
        }
        let mut durations: Vec<f64> = reads
            .chunks_exact(burst.max(1))
            .map(|b| {
                if together {
                    b.iter().map(|r| r.1).fold(0.0, f64::max)
                } else {
                    let start = b.iter().map(|r| r.0 - r.1).fold(f64::INFINITY, f64::min);
                    let end = b.iter().map(|r| r.0).fold(0.0, f64::max);
                    (end - start).max(b.iter().map(|r| r.1).fold(0.0, f64::max))
                }
            })
            .collect();
        if durations.is_empty() {
            bail!(
                "fio's latency log holds {} reads, not one whole burst of {burst}: run it longer",
                reads.len()
            );
        }
        durations.sort_by(f64::total_cmp);
        Ok(Self {
            bursts: durations.len(),
            p50_us: durations[durations.len() / 2],
            mean_us: durations.iter().sum::<f64>() / durations.len() as f64,
        })
    }
}

fn run(
    file: &Path,
    offset: u64,
    size: u64,
    qd: usize,
    seconds: f64,
    extra: &[String],
) -> Result<FioResult> {
    let out = Command::new("fio")
        .args([
            "--name=rr",
            &format!("--filename={}", file.display()),
            "--direct=1",
            "--rw=randread",
            "--bs=4k",
            &format!("--iodepth={qd}"),
            "--ioengine=io_uring",
            "--fixedbufs",
            "--registerfiles",
            &format!("--runtime={}ms", ((seconds * 1000.0).round() as u64).max(1)),
            "--time_based",
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            "--norandommap",
            "--randrepeat=0",
            "--numjobs=1",
            "--thread",
            "--output-format=json",
            "--lat_percentiles=1",
        ])
        .args(extra)
        .output()
        .context("running fio (apt-get install fio)")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("fio json")?;
    let job = &v["jobs"][0];
    let read = &job["read"];
    let pct = |clock: &str, p: f64| {
        read[clock]["percentile"][format!("{p:.6}")]
            .as_f64()
            .unwrap_or(0.0)
            / 1000.0
    };
    Ok(FioResult {
        iops: read["iops"].as_f64().unwrap_or(0.0),
        p50_us: pct("lat_ns", 50.0),
        p99_us: pct("lat_ns", 99.0),
        clat_p50_us: pct("clat_ns", 50.0),
        burst_done_p50_us: None,
        burst_done_mean_us: None,
        cpu_cores: (job["usr_cpu"].as_f64().unwrap_or(0.0)
            + job["sys_cpu"].as_f64().unwrap_or(0.0))
            / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_submitted_together_last_as_their_slowest_read() {
        // Two bursts of 3: latencies 100/300/200 us, then 50/60/400 us.
        let log = "1, 100000, 0, 4096, 0\n1, 300000, 0, 4096, 8192\n1, 200000, 0, 4096, 0\n\
                   6, 50000, 0, 4096, 0\n6, 60000, 0, 4096, 0\n7, 400000, 0, 4096, 0\n\
                   12, 1, 0, 4096, 0\n";
        let t = BurstTimes::parse(log, 3, true).unwrap();
        assert_eq!(t.bursts, 2);
        assert_eq!(t.mean_us, 350.0);
        assert_eq!(t.p50_us, 400.0);
    }

    #[test]
    fn longer_bursts_run_from_first_submission_to_last_completion() {
        // Submitted at 1.0 ms (completed 2 ms after 1 ms of latency) and 1.5 ms; last
        // completion at 4 ms.
        let log = "2, 1000000, 0, 4096, 0\n3, 1500000, 0, 4096, 0\n4, 500000, 0, 4096, 0\n";
        let t = BurstTimes::parse(log, 3, false).unwrap();
        assert_eq!(t.bursts, 1);
        assert!((t.p50_us - 3000.0).abs() < 1e-6, "{t:?}");
    }

    #[test]
    fn a_log_without_a_whole_burst_or_with_garbage_is_an_error() {
        assert!(BurstTimes::parse("1, 100, 0, 4096, 0\n", 2, true).is_err());
        assert!(BurstTimes::parse("one, two\n", 1, true).is_err());
        assert!(BurstTimes::parse("1\n", 1, true).is_err());
    }
}
