//! `engram bench --pattern burst:B,idle:US`: the decode replay's device traffic (a burst
//! of `B` random row reads, then the device idles for a step's compute time), so the
//! store's read latency after idle can be compared with `fio --thinktime` on the same file.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use engram_store::RowSource;
use engram_testbed::workload::{BenchReport, SplitMix64, process_cpu_seconds};

/// Most rows in one burst.
pub const MAX_BURST_ROWS: usize = 4096;
/// Longest idle time between bursts.
pub const MAX_IDLE: Duration = Duration::from_secs(10);

/// A burst-then-idle traffic pattern: `burst` random rows in one lookup, each in its own
/// packing unit (so one device read per row, like fio's one 4 KiB read per I/O), then
/// `idle` with the device quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstPattern {
    /// Rows (and device reads) per burst, 1..=[`MAX_BURST_ROWS`].
    pub burst: usize,
    /// Quiet time after each burst completes, at most [`MAX_IDLE`].
    pub idle: Duration,
}

/// Parses an idle time: `4700us`, `4.7ms`, `1s`, or a bare number of microseconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let t = s.trim();
    let (num, unit_us) = if let Some(n) = t.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e6)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        anyhow::anyhow!("idle time {s:?}: expected a number with us, ms or s (e.g. 4700us)")
    })?;
    ensure!(
        v.is_finite() && v >= 0.0,
        "idle time {s:?}: must be a finite, non-negative time"
    );
    let us = v * unit_us;
    ensure!(
        us <= MAX_IDLE.as_micros() as f64,
        "idle time {s:?}: at most {} s (MAX_IDLE)",
        MAX_IDLE.as_secs()
    );
    Ok(Duration::from_nanos((us * 1e3).round() as u64))
}

impl BurstPattern {
    /// Parses `burst:B,idle:US` (keys in any order, both required), e.g.
    /// `burst:16,idle:4700us`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut burst = None;
        let mut idle = None;
        for part in s.split(',') {
            let Some((key, value)) = part.split_once(':') else {
                bail!("--pattern {s:?}: {part:?} is not KEY:VALUE (expected burst:B,idle:US)");
            };
            match key.trim() {
                "burst" => {
                    ensure!(burst.is_none(), "--pattern {s:?}: burst given twice");
                    let b: usize = value.trim().parse().map_err(|_| {
                        anyhow::anyhow!("--pattern {s:?}: burst {value:?} is not a whole number")
                    })?;
                    ensure!(
                        (1..=MAX_BURST_ROWS).contains(&b),
                        "--pattern {s:?}: burst {b} must be in 1..={MAX_BURST_ROWS} (MAX_BURST_ROWS)"
                    );
                    burst = Some(b);
                }
                "idle" => {
                    ensure!(idle.is_none(), "--pattern {s:?}: idle given twice");
                    idle = Some(
                        parse_duration(value)
                            .map_err(|e| anyhow::anyhow!("--pattern {s:?}: {e}"))?,
                    );
                }
                other => bail!(
                    "--pattern {s:?}: unknown key {other:?} (expected burst:B,idle:US, e.g. burst:16,idle:4700us)"
                ),
            }
        }
        match (burst, idle) {
            (Some(burst), Some(idle)) => Ok(Self { burst, idle }),
            _ => {
                bail!("--pattern {s:?}: needs both burst:B and idle:US (e.g. burst:16,idle:4700us)")
            }
        }
    }
}

/// What a burst run asks for.
#[derive(Debug, Clone)]
pub struct BurstSpec {
    /// The traffic pattern.
    pub pattern: BurstPattern,
    /// Measured bursts.
    pub bursts: usize,
    /// Bursts run before the statistics are reset.
    pub warmup_bursts: usize,
    /// Layer indices used round-robin (empty: all).
    pub layers: Vec<usize>,
    /// Seed of the row draw.
    pub seed: u64,
}

/// `burst` rows, each in a packing unit of its own and no two in adjacent units (the
/// planner merges adjacent reads), uniform over units: one device read per row.
fn draw_burst(
    rng: &mut SplitMix64,
    rows: u64,
    rows_per_unit: u64,
    burst: usize,
    out: &mut Vec<u64>,
) -> Result<()> {
    let units = rows.div_ceil(rows_per_unit.max(1));
    ensure!(
        units >= 4 * burst as u64,
        "a burst of {burst} rows needs 4x as many packing units; the layer has {units}"
    );
    out.clear();
    let mut seen = std::collections::HashSet::with_capacity(burst);
    while out.len() < burst {
        let unit = rng.below(units);
        if seen.contains(&unit)
            || seen.contains(&unit.wrapping_sub(1))
            || seen.contains(&(unit + 1))
        {
            continue;
        }
        seen.insert(unit);
        let first = unit * rows_per_unit;
        let in_unit = (rows - first).min(rows_per_unit);
        out.push(first + rng.below(in_unit));
    }
    Ok(())
}

/// What [`run_bursts`] measured.
#[derive(Debug)]
pub struct BurstReport {
    /// The store's report: device reads, and whole bursts timed by the I/O thread (from
    /// taking the request to completing it).
    pub report: BenchReport,
    /// Each burst as its caller saw it, from the `lookup_into` call to its return (mean,
    /// p50, p99, max in microseconds): the hand-off to the I/O thread and the delivery back
    /// included.
    pub caller_us: serde_json::Value,
}

/// Runs bursts on one thread: draw (before the clock of the burst starts), one
/// `lookup_into` of the burst's rows, then sleep the idle time. The report's `read_p50_us`
/// and `read_p99_us` are the store's device reads (submit to completion); its batch
/// latencies are whole bursts; `seconds` and rates count the idle time too.
pub fn run_bursts(store: &dyn RowSource, spec: &BurstSpec) -> Result<BurstReport> {
    let layers: Vec<usize> = if spec.layers.is_empty() {
        (0..store.n_layers()).collect()
    } else {
        spec.layers.clone()
    };
    ensure!(!layers.is_empty(), "the table has no layers");
    let b = spec.pattern.burst;
    ensure!(
        b <= store.max_batch_rows(),
        "a burst of {b} rows is over the store's batch size {}",
        store.max_batch_rows()
    );
    let rows_per_unit = store.manifest().geometry().rows_per_unit;
    let layer_rows = layers
        .iter()
        .map(|&l| store.rows(l))
        .collect::<engram_store::Result<Vec<u64>>>()?;
    let mut rng = SplitMix64(spec.seed);
    let mut ids = Vec::with_capacity(b);
    let mut out = store.alloc_rows(b)?;
    out.set_len(b * store.row_bytes())?;
    let mut caller_us = Vec::with_capacity(spec.bursts);
    let mut one = |k: usize, ids: &mut Vec<u64>, out: &mut [u8]| -> Result<()> {
        let li = k % layers.len();
        draw_burst(&mut rng, layer_rows[li], rows_per_unit, b, ids)?;
        let t = Instant::now();
        store.lookup_into(layers[li], ids, out)?;
        if k >= spec.warmup_bursts {
            caller_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        if !spec.pattern.idle.is_zero() {
            std::thread::sleep(spec.pattern.idle);
        }
        Ok(())
    };
    for k in 0..spec.warmup_bursts {
        one(k, &mut ids, out.as_mut_slice())?;
    }
    store.reset_stats()?;
    let cpu0 = process_cpu_seconds().unwrap_or(0.0);
    let t0 = Instant::now();
    for k in 0..spec.bursts {
        one(spec.warmup_bursts + k, &mut ids, out.as_mut_slice())?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds().unwrap_or(0.0) - cpu0;
    let report = BenchReport::from_stats(
        store.stats()?,
        (1, spec.bursts, b),
        store.row_bytes(),
        seconds,
        cpu_seconds,
    );
    Ok(BurstReport {
        report,
        caller_us: super::replay::quantiles(&mut caller_us),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_form_and_units() {
        let p = BurstPattern::parse("burst:16,idle:4700us").expect("parse");
        assert_eq!(p.burst, 16);
        assert_eq!(p.idle, Duration::from_micros(4700));
        let p = BurstPattern::parse(" idle:4.7ms , burst:1 ").expect("parse");
        assert_eq!((p.burst, p.idle), (1, Duration::from_micros(4700)));
        assert_eq!(
            BurstPattern::parse("burst:2,idle:0").expect("parse").idle,
            Duration::ZERO
        );
        assert_eq!(
            BurstPattern::parse("burst:2,idle:1s").expect("parse").idle,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (bad, says) in [
            ("burst:16", "needs both"),
            ("idle:10us", "needs both"),
            ("burst:0,idle:1us", "1..=4096"),
            ("burst:5000,idle:1us", "MAX_BURST_ROWS"),
            ("burst:x,idle:1us", "not a whole number"),
            ("burst:-1,idle:1us", "not a whole number"),
            ("burst:4,idle:fast", "expected a number"),
            ("burst:4,idle:-3us", "non-negative"),
            ("burst:4,idle:NaNus", "finite"),
            ("burst:4,idle:11s", "MAX_IDLE"),
            ("burst:4,burst:5,idle:1us", "given twice"),
            ("burst:4,idle:1us,idle:2us", "given twice"),
            ("burst:4,idle:1us,depth:3", "unknown key"),
            ("burst=4", "not KEY:VALUE"),
            ("", "not KEY:VALUE"),
        ] {
            let e = BurstPattern::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn bursts_draw_distinct_units_inside_the_layer() {
        let mut rng = SplitMix64(7);
        let mut ids = Vec::new();
        for _ in 0..200 {
            draw_burst(&mut rng, 1000, 15, 16, &mut ids).expect("draw");
            assert_eq!(ids.len(), 16);
            let mut units: Vec<u64> = ids.iter().map(|r| r / 15).collect();
            units.sort_unstable();
            assert!(units.windows(2).all(|w| w[1] > w[0] + 1), "{units:?}");
            assert!(ids.iter().all(|&r| r < 1000));
        }
        let e = draw_burst(&mut rng, 150, 15, 3, &mut ids).expect_err("too few units");
        assert!(e.to_string().contains("packing units"), "{e}");
    }
}
