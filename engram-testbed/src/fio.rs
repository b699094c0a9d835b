//! Drives `fio` (io_uring engine, O_DIRECT, 4 KiB random reads) on a table's file: the
//! baseline the store's device reads are compared with, side by side in the same run
//! (`engram replay --fio-baseline`, `store_vs_baselines ssd`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What one fio run measured.
#[derive(Debug, Clone, Copy)]
pub struct FioResult {
    /// Reads completed per second.
    pub iops: f64,
    /// Median completion latency of one read, in microseconds.
    pub p50_us: f64,
    /// 99th percentile completion latency, in microseconds.
    pub p99_us: f64,
    /// CPU cores fio used (user + system).
    pub cpu_cores: f64,
}

impl FioResult {
    /// The fields as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "iops": self.iops, "p50_us": self.p50_us, "p99_us": self.p99_us,
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

/// The decode pattern: a burst of `burst` 4 KiB random reads submitted together, all
/// awaited, then `idle_us` without I/O (`--thinktime`), repeated for `seconds`. The
/// latencies are those of reads issued after idle.
pub fn burst(
    file: &Path,
    offset: u64,
    size: u64,
    burst: usize,
    idle_us: u64,
    seconds: f64,
) -> Result<FioResult> {
    let extra = [
        format!("--iodepth_batch_submit={burst}"),
        format!("--iodepth_batch_complete_min={burst}"),
        format!("--thinktime={idle_us}"),
        format!("--thinktime_blocks={burst}"),
    ];
    run(file, offset, size, burst, seconds, &extra)
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
    let pct = |p: &str| read["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    Ok(FioResult {
        iops: read["iops"].as_f64().unwrap_or(0.0),
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_cores: (job["usr_cpu"].as_f64().unwrap_or(0.0)
            + job["sys_cpu"].as_f64().unwrap_or(0.0))
            / 100.0,
    })
}
