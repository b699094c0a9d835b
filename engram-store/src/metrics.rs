//! Counters and latency histograms per tier and per stage, as a struct and as Prometheus
//! text. Names follow `engram_store_*` in base units (seconds, bytes).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::backend::{IoCounters, Tier};

/// Longest latency the histograms track (60 s, in ns).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// A latency histogram in ns with the store's bounds (1 ns to 60 s, 3 significant digits);
/// the storage service keeps its latencies in the same shape.
pub fn new_hist() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

/// A histogram shared by the readers of one backend; readers keep their samples locally
/// and record them under one lock per round ([`SharedHist::record_all`]).
#[derive(Debug, Clone)]
pub struct SharedHist(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHist {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(new_hist())))
    }
}

impl SharedHist {
    /// Records every latency in `ns` (nanoseconds), under one lock. Costs O(samples):
    /// merging a whole local histogram instead walked and cleared all of its ~27k
    /// counters on every reap, about 4 us of CPU per read at QD 32 (BENCHMARKS.md,
    /// "Where the store's latency went").
    pub fn record_all(&self, ns: &[u64]) {
        if ns.is_empty() {
            return;
        }
        if let Ok(mut h) = self.0.lock() {
            for &v in ns {
                record_ns(&mut h, v);
            }
        }
    }
    /// Quantiles of the merged histogram, labelled `name`.
    pub fn summary(&self, name: &str) -> LatencySummary {
        self.0.lock().map(|h| summary(name, &h)).unwrap_or_default()
    }
    /// Clears the histogram.
    pub fn reset(&self) {
        if let Ok(mut h) = self.0.lock() {
            h.reset();
        }
    }
}

/// Records `ns` into `h`, clamped to the tracked range.
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, MAX_TRACKED_NS));
}

/// Tier names, in [`Tier`] order.
pub const TIERS: [&str; 4] = ["cache", "dram", "ssd", "remote"];
/// Stage names.
pub const STAGES: [&str; 4] = ["plan", "submit", "complete", "scatter"];

#[derive(Debug)]
struct Hists {
    // per tier: batch latency of that tier's part of a batch
    tier: [Histogram<u64>; 4],
    // per stage: ns per batch
    stage: [Histogram<u64>; 4],
    // whole lookup / prefetch batch
    batch: Histogram<u64>,
}

/// Live metrics, updated by every lookup.
#[derive(Debug)]
pub(crate) struct Metrics {
    batches: AtomicU64,
    rows_requested: AtomicU64,
    rows_backend: AtomicU64,
    rows_unique: AtomicU64,
    device_reads: AtomicU64,
    device_bytes: AtomicU64,
    record_reads: AtomicU64,
    record_rows: AtomicU64,
    hedged_reads: AtomicU64,
    errors: AtomicU64,
    spec_batches: AtomicU64,
    spec_rows_read: AtomicU64,
    spec_dropped: AtomicU64,
    spec_failed: AtomicU64,
    // Not reset by `reset`: an engine failure is never hidden by a warm-up reset.
    engine_failures: AtomicU64,
    engine_rebuilds: AtomicU64,
    hists: Mutex<Hists>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            batches: AtomicU64::new(0),
            rows_requested: AtomicU64::new(0),
            rows_backend: AtomicU64::new(0),
            rows_unique: AtomicU64::new(0),
            device_reads: AtomicU64::new(0),
            device_bytes: AtomicU64::new(0),
            record_reads: AtomicU64::new(0),
            record_rows: AtomicU64::new(0),
            hedged_reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            spec_batches: AtomicU64::new(0),
            spec_rows_read: AtomicU64::new(0),
            spec_dropped: AtomicU64::new(0),
            spec_failed: AtomicU64::new(0),
            engine_failures: AtomicU64::new(0),
            engine_rebuilds: AtomicU64::new(0),
            hists: Mutex::new(Hists {
                tier: [new_hist(), new_hist(), new_hist(), new_hist()],
                stage: [new_hist(), new_hist(), new_hist(), new_hist()],
                batch: new_hist(),
            }),
        }
    }
}

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Cache => 0,
        Tier::Dram => 1,
        Tier::Ssd => 2,
        Tier::Remote => 3,
    }
}

/// Latency quantiles of one histogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// What was timed (`batch`, a tier or a stage name).
    pub name: String,
    /// Samples recorded.
    pub count: u64,
    /// Mean latency in microseconds (0 with no samples).
    pub mean_us: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th-percentile latency in microseconds.
    pub p99_us: f64,
    /// 99.9th-percentile latency in microseconds.
    pub p999_us: f64,
    /// Largest latency in microseconds.
    pub max_us: f64,
}

/// Quantiles of `h` (ns) in microseconds.
pub fn summary(name: &str, h: &Histogram<u64>) -> LatencySummary {
    let us = |ns: u64| ns as f64 / 1000.0;
    LatencySummary {
        name: name.to_string(),
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.5)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// A point-in-time copy of the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Name of the backend that served the reads ([`crate::BackendKind::name`]).
    pub backend: String,
    /// Lookup and prefetch batches finished.
    pub batches: u64,
    /// Row ids asked for by those batches, duplicates included.
    pub rows_requested: u64,
    /// Rows served from the hot-row cache.
    pub cache_hits: u64,
    /// Rows the cache did not hold (0 without a cache).
    pub cache_misses: u64,
    /// Rows the cache holds now.
    pub cache_rows: u64,
    /// Rows the cache can hold (its budget over the row size).
    pub cache_capacity_rows: u64,
    /// Rows the backend was asked for (cache misses, duplicates included).
    pub rows_backend: u64,
    /// Distinct rows the backend read.
    pub rows_unique: u64,
    /// Device reads issued (each may cover several rows).
    pub device_reads: u64,
    /// Bytes those reads transferred (read amplification included).
    pub device_bytes: u64,
    /// Device reads of n-gram records, and the distinct rows they served (each record
    /// read replaced that many row reads, less one).
    pub record_reads: u64,
    /// Distinct rows served by those record reads.
    pub record_rows: u64,
    /// Device reads issued again because the first copy was overdue (hedged reads).
    pub hedged_reads: u64,
    /// Bytes of one row of the table.
    pub row_bytes: u64,
    /// Batches that ended in an error.
    pub errors: u64,
    /// Speculative prefetches run, rows they read into the cache, dropped (queue full),
    /// and failed or cancelled.
    pub spec_batches: u64,
    /// Rows speculative prefetches read into the cache.
    pub spec_rows_read: u64,
    /// Speculations dropped because the queue was full.
    pub spec_dropped: u64,
    /// Speculations that failed or were cancelled.
    pub spec_failed: u64,
    /// I/O engine failures (a failed submit or reap): each failed every request in
    /// flight on its reactor. Not cleared by a stats reset.
    #[serde(default)]
    pub engine_failures: u64,
    /// Engines rebuilt after a failure. Not cleared by a stats reset.
    #[serde(default)]
    pub engine_rebuilds: u64,
    /// Device bytes / (distinct rows read x row bytes).
    pub read_amplification: f64,
    /// `cache_hits / (cache_hits + cache_misses)`, in `[0, 1]` (0 with no lookups).
    pub cache_hit_rate: f64,
    /// Whole lookup or prefetch batch, call to rows in the buffer.
    pub batch: LatencySummary,
    /// Per device read, submit to completion (pread and uring backends).
    pub device_read: LatencySummary,
    /// Per tier ([`TIERS`] order): time spent on the rows each tier served.
    pub tiers: Vec<LatencySummary>,
    /// Per stage ([`STAGES`] order): time per batch in planning, submitting, waiting for completions and scattering rows.
    pub stages: Vec<LatencySummary>,
}

impl Metrics {
    pub(crate) fn record_batch(&self, rows: usize, total_ns: u64, ok: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.rows_requested
            .fetch_add(rows as u64, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.hists.lock() {
            let _ = h.batch.record(total_ns.clamp(1, MAX_TRACKED_NS));
        }
    }

    /// A speculation finished after reading `rows` misses.
    pub(crate) fn record_speculation(&self, rows: usize, result: &crate::error::Result<()>) {
        self.spec_batches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => self
                .spec_rows_read
                .fetch_add(rows as u64, Ordering::Relaxed),
            Err(_) => self.spec_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// An engine failed (every request in flight on it was failed).
    pub(crate) fn record_engine_failure(&self) {
        self.engine_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An engine was rebuilt after a failure.
    pub(crate) fn record_engine_rebuild(&self) {
        self.engine_rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    /// A speculation was not taken (too many pending).
    pub(crate) fn record_speculation_dropped(&self) {
        self.spec_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_tier(&self, tier: Tier, ns: u64) {
        if let Ok(mut h) = self.hists.lock() {
            let _ = h.tier[tier_index(tier)].record(ns.clamp(1, MAX_TRACKED_NS));
        }
    }

    pub(crate) fn record_io(&self, rows_backend: usize, c: &IoCounters) {
        self.rows_backend
            .fetch_add(rows_backend as u64, Ordering::Relaxed);
        self.rows_unique.fetch_add(c.rows_unique, Ordering::Relaxed);
        self.device_reads.fetch_add(c.reads, Ordering::Relaxed);
        self.device_bytes
            .fetch_add(c.device_bytes, Ordering::Relaxed);
        self.record_reads
            .fetch_add(c.record_reads, Ordering::Relaxed);
        self.record_rows.fetch_add(c.record_rows, Ordering::Relaxed);
        self.hedged_reads
            .fetch_add(c.hedged_reads, Ordering::Relaxed);
        if let Ok(mut h) = self.hists.lock() {
            for (i, ns) in [c.plan_ns, c.submit_ns, c.complete_ns, c.scatter_ns]
                .into_iter()
                .enumerate()
            {
                let _ = h.stage[i].record(ns.clamp(1, MAX_TRACKED_NS));
            }
        }
    }

    /// Resets every counter and histogram (cache counters are separate).
    pub fn reset(&self) {
        for a in [
            &self.batches,
            &self.rows_requested,
            &self.rows_backend,
            &self.rows_unique,
            &self.device_reads,
            &self.device_bytes,
            &self.record_reads,
            &self.record_rows,
            &self.hedged_reads,
            &self.errors,
            &self.spec_batches,
            &self.spec_rows_read,
            &self.spec_dropped,
            &self.spec_failed,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        if let Ok(mut h) = self.hists.lock() {
            h.batch.reset();
            h.tier.iter_mut().for_each(Histogram::reset);
            h.stage.iter_mut().for_each(Histogram::reset);
        }
    }

    pub(crate) fn snapshot(&self, backend: &str, row_bytes: u64) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = StatsSnapshot {
            backend: backend.to_string(),
            batches: g(&self.batches),
            rows_requested: g(&self.rows_requested),
            rows_backend: g(&self.rows_backend),
            rows_unique: g(&self.rows_unique),
            device_reads: g(&self.device_reads),
            device_bytes: g(&self.device_bytes),
            record_reads: g(&self.record_reads),
            record_rows: g(&self.record_rows),
            hedged_reads: g(&self.hedged_reads),
            errors: g(&self.errors),
            spec_batches: g(&self.spec_batches),
            spec_rows_read: g(&self.spec_rows_read),
            spec_dropped: g(&self.spec_dropped),
            spec_failed: g(&self.spec_failed),
            engine_failures: g(&self.engine_failures),
            engine_rebuilds: g(&self.engine_rebuilds),
            row_bytes,
            ..Default::default()
        };
        s.read_amplification = if s.rows_unique > 0 {
            s.device_bytes as f64 / (s.rows_unique * row_bytes) as f64
        } else {
            0.0
        };
        if let Ok(h) = self.hists.lock() {
            s.batch = summary("batch", &h.batch);
            s.tiers = TIERS
                .iter()
                .zip(&h.tier)
                .map(|(n, h)| summary(n, h))
                .collect();
            s.stages = STAGES
                .iter()
                .zip(&h.stage)
                .map(|(n, h)| summary(n, h))
                .collect();
        }
        s
    }
}

impl StatsSnapshot {
    /// Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut o = String::new();
        prometheus_text(&[("", self)], &mut o);
        o
    }
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
pub fn prometheus_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the Prometheus text of several snapshots to `o`, each metric family once, one
/// sample per snapshot. Each item's labels (`table="a",`, escaped, ending in a comma, or
/// empty) come before its `backend` label.
pub fn prometheus_text(items: &[(&str, &StatsSnapshot)], o: &mut String) {
    prometheus_counters(items, o);
    prometheus_gauges(items, o);
    prometheus_latencies(items, o);
}

/// One family of one-value samples (a counter or a gauge): its help, its type and one
/// sample per item.
fn prometheus_family(
    o: &mut String,
    items: &[(&str, &StatsSnapshot)],
    (name, help, kind): (&str, &str, &str),
    value: impl Fn(&StatsSnapshot) -> String,
) {
    let _ = writeln!(o, "# HELP engram_store_{name} {help}");
    let _ = writeln!(o, "# TYPE engram_store_{name} {kind}");
    for (labels, s) in items {
        let b = prometheus_label(&s.backend);
        let _ = writeln!(
            o,
            "engram_store_{name}{{{labels}backend=\"{b}\"}} {}",
            value(s)
        );
    }
}

/// The counters (`*_total`).
fn prometheus_counters(items: &[(&str, &StatsSnapshot)], o: &mut String) {
    type Field = fn(&StatsSnapshot) -> u64;
    let counters: [(&str, &str, Field); 18] = [
        (
            "batches_total",
            "Lookup and prefetch batches served.",
            |s| s.batches,
        ),
        ("rows_requested_total", "Row ids requested.", |s| {
            s.rows_requested
        }),
        (
            "cache_hits_total",
            "Rows served from the hot-row cache.",
            |s| s.cache_hits,
        ),
        (
            "cache_misses_total",
            "Rows not in the hot-row cache.",
            |s| s.cache_misses,
        ),
        ("backend_rows_total", "Rows asked of the backend.", |s| {
            s.rows_backend
        }),
        (
            "backend_unique_rows_total",
            "Distinct rows read by the backend.",
            |s| s.rows_unique,
        ),
        ("device_reads_total", "Device read operations.", |s| {
            s.device_reads
        }),
        (
            "device_read_bytes_total",
            "Bytes read from the device or touched in memory.",
            |s| s.device_bytes,
        ),
        (
            "record_reads_total",
            "Device reads of n-gram records (each served several rows).",
            |s| s.record_reads,
        ),
        (
            "record_rows_total",
            "Distinct rows served from n-gram records.",
            |s| s.record_rows,
        ),
        (
            "hedged_reads_total",
            "Device reads issued again because the first copy was overdue.",
            |s| s.hedged_reads,
        ),
        ("errors_total", "Batches that failed.", |s| s.errors),
        (
            "speculation_batches_total",
            "Speculative prefetches run.",
            |s| s.spec_batches,
        ),
        (
            "speculation_rows_read_total",
            "Rows speculative prefetches read into the cache.",
            |s| s.spec_rows_read,
        ),
        (
            "speculation_dropped_total",
            "Speculative prefetches not taken (too many pending).",
            |s| s.spec_dropped,
        ),
        (
            "speculation_failed_total",
            "Speculative prefetches that failed or were cancelled.",
            |s| s.spec_failed,
        ),
        (
            "engine_failures_total",
            "I/O engine failures (a failed submit or reap); each failed the requests in flight on it.",
            |s| s.engine_failures,
        ),
        (
            "engine_rebuilds_total",
            "I/O engines rebuilt after a failure.",
            |s| s.engine_rebuilds,
        ),
    ];
    for (name, help, field) in counters {
        prometheus_family(o, items, (name, help, "counter"), |s| field(s).to_string());
    }
}

/// The gauges (ratios and sizes).
fn prometheus_gauges(items: &[(&str, &StatsSnapshot)], o: &mut String) {
    type Gauge = fn(&StatsSnapshot) -> f64;
    let gauges: [(&str, &str, Gauge); 3] = [
        (
            "read_amplification",
            "Device bytes per useful row byte.",
            |s| s.read_amplification,
        ),
        ("cache_rows", "Rows held by the hot-row cache.", |s| {
            s.cache_rows as f64
        }),
        (
            "cache_hit_rate",
            "Cache hits per row looked up in the cache.",
            |s| s.cache_hit_rate,
        ),
    ];
    for (name, help, field) in gauges {
        prometheus_family(o, items, (name, help, "gauge"), |s| field(s).to_string());
    }
}

/// The latency summaries (p50, p99, p999, sum and count per tier, stage or kind).
fn prometheus_latencies(items: &[(&str, &StatsSnapshot)], o: &mut String) {
    type Summaries = fn(&StatsSnapshot) -> &[LatencySummary];
    let latencies: [(&str, &str, Summaries); 4] = [
        ("tier_latency", "tier", |s| &s.tiers),
        ("stage_latency", "stage", |s| &s.stages),
        ("batch_latency", "kind", |s| std::slice::from_ref(&s.batch)),
        ("device_read_latency", "kind", |s| {
            std::slice::from_ref(&s.device_read)
        }),
    ];
    for (metric, label, field) in latencies {
        let _ = writeln!(o, "# HELP engram_store_{metric}_seconds Latency quantiles.");
        let _ = writeln!(o, "# TYPE engram_store_{metric}_seconds summary");
        for (labels, s) in items {
            let b = prometheus_label(&s.backend);
            for l in field(s) {
                for (q, v) in [("0.5", l.p50_us), ("0.99", l.p99_us), ("0.999", l.p999_us)] {
                    let _ = writeln!(
                        o,
                        "engram_store_{metric}_seconds{{{labels}backend=\"{b}\",{label}=\"{}\",quantile=\"{q}\"}} {:e}",
                        l.name,
                        v / 1e6
                    );
                }
                let _ = writeln!(
                    o,
                    "engram_store_{metric}_seconds_sum{{{labels}backend=\"{b}\",{label}=\"{}\"}} {:e}",
                    l.name,
                    l.mean_us * l.count as f64 / 1e6
                );
                let _ = writeln!(
                    o,
                    "engram_store_{metric}_seconds_count{{{labels}backend=\"{b}\",{label}=\"{}\"}} {}",
                    l.name, l.count
                );
            }
        }
    }
}
