//! The physical floor of a replay: what an I/O path with no overhead of its own would lose
//! on this disk, from `fio` run on the table's file in the same run (`--fio-baseline`).
//!
//! - Decode, the burst floor: a step with a cold row at a layer waits for every read of a
//!   burst issued after the step's idle time, so it loses at least the median time fio
//!   takes to complete such a burst beyond that layer's lead: `sum over layers of
//!   cold-step share x max(0, mean burst time - deadline)` per step (by Jensen's
//!   inequality no more than the mean stall such bursts cause): fio runs bursts of
//!   that layer's reads per cold step (at most the queue depth in flight) after the step's
//!   idle time, and each burst is timed from its submission to its last read's completion
//!   (fio's latency log, [`fio::BurstTimes`]).
//! - Decode, the IOPS floor: a step's reads at fio's IOPS at the same queue depth, layer by
//!   layer in deadline order, less each layer's deadline (what matters at batch 32).
//!   The decode floor is the larger of the two.
//! - Prefill: each chunk's misses (x the run's device reads per miss) read at fio's IOPS in request order (one device, FIFO),
//!   each layer's rows needed `layer id / model layers` into its chunk; the floor is the
//!   TTFT this gives less the resident TTFT (the first chunk included, which nothing
//!   precedes).

use std::path::PathBuf;

use anyhow::Result;
use engram_store::Table;

use engram_testbed::fio::{self, FioResult};

/// Where fio reads: the first layer's data region.
#[derive(Debug, Clone)]
pub struct Span {
    path: PathBuf,
    offset: u64,
    size: u64,
}

/// The first layer file's data region.
pub fn layer_span(table: &Table) -> Result<Span> {
    let lf = table.layer(0)?;
    Ok(Span {
        path: lf.path.clone(),
        offset: lf.header.data_offset,
        size: lf.header.data_bytes,
    })
}

/// 4 KiB random reads back to back at queue depth `qd`.
pub fn fio_random(span: &Span, qd: usize, seconds: f64) -> Result<FioResult> {
    eprintln!(
        "fio: random 4 KiB reads at QD {qd} for {seconds} s on {}",
        span.path.display()
    );
    fio::random_read(&span.path, span.offset, span.size, qd, seconds)
}

/// [`fio_random`] when `--fio-baseline` asks for it.
pub fn fio_random_if(args: &super::Args, span: &Span) -> Result<Option<FioResult>> {
    args.fio_baseline
        .then(|| fio_random(span, args.read.queue_depth, args.fio_seconds))
        .transpose()
}

/// Bursts of `burst` reads at queue depth `qd`, each after `idle_us` without I/O.
pub fn fio_burst(
    span: &Span,
    burst: usize,
    qd: usize,
    idle_us: u64,
    seconds: f64,
) -> Result<FioResult> {
    eprintln!(
        "fio: bursts of {burst} reads (QD {}) after {idle_us} us idle for {seconds} s on {}",
        burst.min(qd),
        span.path.display()
    );
    fio::burst(
        &span.path,
        span.offset,
        span.size,
        burst,
        qd,
        idle_us,
        seconds,
    )
}

/// The random-read fio runs of one replay: before and after it.
#[derive(Debug, Clone, Default)]
pub struct FioRuns {
    runs: Vec<FioResult>,
}

impl FioRuns {
    /// The runs that were made.
    pub fn new(before: Option<FioResult>, after: Option<FioResult>) -> Self {
        Self {
            runs: before.into_iter().chain(after).collect(),
        }
    }

    /// Mean IOPS of the runs, if any.
    pub fn iops(&self) -> Option<f64> {
        (!self.runs.is_empty())
            .then(|| self.runs.iter().map(|r| r.iops).sum::<f64>() / self.runs.len() as f64)
    }

    /// The runs as JSON (before, then after).
    pub fn to_json(&self) -> serde_json::Value {
        self.runs.iter().map(FioResult::to_json).collect()
    }
}

/// One prefill chunk as the floor sees it.
#[derive(Debug, Clone)]
pub struct ChunkLoad {
    /// (layers,) rows it must read from the device
    pub reads: Vec<f64>,
    /// Its compute, microseconds.
    pub compute_us: f64,
}

/// The prefill floor in microseconds: TTFT with the chunks' misses read at `iops` (FIFO, in
/// request order) less the resident TTFT. `deadline_share` places each layer in a chunk;
/// with `pipeline`, chunk k + 1's reads are requested when chunk k starts.
pub fn prefill_floor_us(
    chunks: &[ChunkLoad],
    iops: f64,
    deadline_share: &[f64],
    pipeline: bool,
) -> f64 {
    let mut order: Vec<usize> = (0..deadline_share.len()).collect();
    order.sort_by(|&a, &b| deadline_share[a].total_cmp(&deadline_share[b]));
    let (mut start, mut prev_start, mut device_free, mut resident) = (0.0f64, 0.0f64, 0.0f64, 0.0);
    for (k, c) in chunks.iter().enumerate() {
        let requested = if pipeline && k > 0 { prev_start } else { start };
        let begin = requested.max(device_free);
        let (mut cum, mut stall) = (0.0, 0.0);
        for &li in &order {
            cum += c.reads.get(li).copied().unwrap_or(0.0);
            let done = begin + cum / iops * 1e6;
            let deadline = start + c.compute_us * deadline_share[li] + stall;
            stall += (done - deadline).max(0.0);
        }
        device_free = begin + cum / iops * 1e6;
        resident += c.compute_us;
        prev_start = start;
        start += c.compute_us + stall;
    }
    (start - resident).max(0.0)
}

/// A decode run as the floor sees it, per table layer.
#[derive(Debug, Clone)]
pub struct DecodeLoad {
    /// The modelled step, microseconds.
    pub step_us: f64,
    /// (layers,) deadline after the step starts, microseconds
    pub deadline_us: Vec<f64>,
    /// (layers,) share of steps with a row the cache did not hold
    pub cold_step_share: Vec<f64>,
    /// (layers,) device reads per step (rows the cache did not hold)
    pub reads_per_step: Vec<f64>,
}

impl DecodeLoad {
    /// Per step, microseconds: a cold step waits for fio's mean burst time beyond its lead.
    pub fn burst_floor_us(&self, burst_us: f64) -> f64 {
        self.cold_step_share
            .iter()
            .zip(&self.deadline_us)
            .map(|(share, d)| share * (burst_us - d).max(0.0))
            .sum()
    }

    /// Per step, microseconds: the step's reads at `iops`, layer by layer in deadline order.
    pub fn iops_floor_us(&self, iops: f64) -> f64 {
        let mut order: Vec<usize> = (0..self.deadline_us.len()).collect();
        order.sort_by(|&a, &b| self.deadline_us[a].total_cmp(&self.deadline_us[b]));
        let (mut cum, mut stall) = (0.0, 0.0);
        for li in order {
            cum += self.reads_per_step[li];
            stall += (cum / iops * 1e6 - self.deadline_us[li] - stall).max(0.0);
        }
        stall
    }

    /// The burst size that reproduces a cold step of the first layer: its reads per cold
    /// step (at least 1).
    pub fn burst(&self) -> usize {
        let first = (0..self.deadline_us.len())
            .min_by(|&a, &b| self.deadline_us[a].total_cmp(&self.deadline_us[b]));
        let per_cold = first
            .map(|li| self.reads_per_step[li] / self.cold_step_share[li].max(1e-9))
            .unwrap_or(1.0);
        (per_cold.round() as usize).max(1)
    }
}

/// The decode floor's JSON: both floors, the larger as `slowdown_floor`, and the measured
/// slowdown over it.
pub fn decode_json(
    load: &DecodeLoad,
    slowdown: f64,
    random: &FioRuns,
    burst: Option<(usize, FioResult)>,
) -> serde_json::Value {
    let burst_floor =
        burst.map(|(_, b)| load.burst_floor_us(b.burst_done_mean_us.unwrap_or(b.p50_us)));
    let iops_floor = random.iops().map(|i| load.iops_floor_us(i));
    let floor_us = match (burst_floor, iops_floor) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
    };
    let slowdown_floor = floor_us.map(|f| f / load.step_us);
    serde_json::json!({
        "fio_random": random.to_json(),
        "fio_burst": burst.map(|(n, b)| {
            let mut v = b.to_json();
            v["burst"] = n.into();
            v["idle_us"] = load.step_us.into();
            v
        }),
        "cold_step_share_by_layer": load.cold_step_share,
        "reads_per_step_by_layer": load.reads_per_step,
        "burst_floor_us_per_step": burst_floor,
        "iops_floor_us_per_step": iops_floor,
        "slowdown_floor": slowdown_floor,
        "measured_over_floor": slowdown_floor.filter(|&f| f > 0.0).map(|f| slowdown / f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_within_the_lead_costs_nothing() {
        let load = DecodeLoad {
            step_us: 4760.0,
            deadline_us: vec![111.0, 1511.0],
            cold_step_share: vec![0.63, 0.63],
            reads_per_step: vec![10.0, 10.0],
        };
        assert_eq!(load.burst_floor_us(100.0), 0.0);
        // README's figure: 0.63 x (250 - 111).
        assert!((load.burst_floor_us(250.0) - 0.63 * 139.0).abs() < 1e-9);
        assert_eq!(load.burst(), 16);
        assert_eq!(load.iops_floor_us(120_000.0), 0.0);
    }

    #[test]
    fn batch_32_is_bound_by_iops() {
        // README's figure: 350 reads for layer 1 within 465 us at 130k IOPS: ~2.2 ms.
        let load = DecodeLoad {
            step_us: 20_000.0,
            deadline_us: vec![465.0, 6_500.0],
            cold_step_share: vec![1.0, 1.0],
            reads_per_step: vec![350.0, 0.0],
        };
        let f = load.iops_floor_us(130_000.0);
        assert!((f - (350.0 / 0.13 - 465.0)).abs() < 1e-6, "{f}");
    }

    #[test]
    fn prefill_reads_overlap_the_previous_chunk() {
        let share = [0.0];
        let chunk = |reads| ChunkLoad {
            reads: vec![reads],
            compute_us: 1000.0,
        };
        // 100 reads at 100k IOPS = 1 ms: the first chunk waits for its own, the next
        // chunks' reads hide behind the compute before them.
        let chunks = [chunk(100.0), chunk(100.0), chunk(100.0)];
        assert!((prefill_floor_us(&chunks, 100_000.0, &share, true) - 1000.0).abs() < 1e-6);
        // Without the pipeline every chunk waits for its reads.
        assert!((prefill_floor_us(&chunks, 100_000.0, &share, false) - 3000.0).abs() < 1e-6);
        // Reads twice the compute: the device is the bottleneck.
        let slow = [chunk(200.0), chunk(200.0)];
        assert!((prefill_floor_us(&slow, 100_000.0, &share, true) - 3000.0).abs() < 1e-6);
        assert_eq!(
            prefill_floor_us(&[chunk(0.0)], 100_000.0, &share, true),
            0.0
        );
    }
}
