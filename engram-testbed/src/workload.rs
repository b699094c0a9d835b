//! Deterministic request generators for benchmarks and tests: uniform and Zipfian row ids
//! (hot ranks scattered over the table by a fixed permutation), and process CPU time.

use engram_store::{Error, Result};

pub use engram_kernels::rng::SplitMix64;

/// Zipf(s) over ranks `1..=n` by rejection-inversion (Hoermann and Derflinger 1996, as in
/// `rand_distr::Zipf`): O(1) per sample for any n.
#[derive(Debug, Clone, Copy)]
pub struct Zipf {
    s: f64,
    t: f64,
    q: f64,
}

impl Zipf {
    /// Zipf with exponent `s` (finite, >= 0) over `n` (>= 1) ranks.
    pub fn new(n: u64, s: f64) -> Result<Self> {
        if n == 0 || !(s.is_finite() && s >= 0.0) {
            return Err(Error::Invalid {
                what: "zipf",
                reason: format!("n = {n}, s = {s}: need n >= 1 and finite s >= 0"),
            });
        }
        let n = n as f64;
        let q = if s != 1.0 { 1.0 / (1.0 - s) } else { 0.0 };
        let t = if s != 1.0 {
            (n.powf(1.0 - s) - s) * q
        } else {
            1.0 + n.ln()
        };
        Ok(Self { s, t, q })
    }

    fn inv_cdf(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.s != 1.0 {
            (pt * (1.0 - self.s) + self.s).powf(self.q)
        } else {
            (pt - 1.0).exp()
        }
    }

    /// A rank in `1..=n`.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        loop {
            let inv_b = self.inv_cdf(rng.next_f64());
            let x = (inv_b + 1.0).floor();
            let mut ratio = x.powf(-self.s);
            if x > 1.0 {
                ratio *= inv_b.powf(self.s);
            }
            if rng.next_f64() < ratio {
                return x as u64;
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A fixed bijection of `0..n` that scatters consecutive ranks over the table.
#[derive(Debug, Clone, Copy)]
pub struct RankPermutation {
    n: u64,
    a: u64,
    c: u64,
}

impl RankPermutation {
    /// A permutation of `0..n` (n = 0 is taken as 1) chosen by `seed`.
    pub fn new(n: u64, seed: u64) -> Self {
        let n = n.max(1);
        let mut a = ((0x9E37_79B9_7F4A_7C15u64 ^ seed) % n).max(1);
        while gcd(a, n) != 1 {
            a = if a + 1 >= n { 1 } else { a + 1 };
        }
        let c = SplitMix64(seed).next_u64() % n;
        Self { n, a, c }
    }

    /// The row of 0-based rank `r`.
    #[inline]
    pub fn row(&self, r: u64) -> u64 {
        ((u128::from(r % self.n) * u128::from(self.a) + u128::from(self.c)) % u128::from(self.n))
            as u64
    }
}

/// A distribution of row ids.
#[derive(Debug, Clone, Copy)]
pub enum RowDist {
    /// Every row equally likely.
    Uniform,
    /// Zipf with exponent `s`; rank 1 is the hottest.
    Zipf(f64),
}

impl RowDist {
    /// Parses `uniform` or `zipf:S`.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "uniform" {
            return Ok(RowDist::Uniform);
        }
        s.strip_prefix("zipf:")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(RowDist::Zipf)
            .ok_or_else(|| Error::Invalid {
                what: "distribution",
                reason: format!("{s:?}: expected uniform or zipf:S"),
            })
    }
}

/// Draws row ids of one layer.
#[derive(Debug, Clone)]
pub struct RowSampler {
    rows: u64,
    zipf: Option<Zipf>,
    /// The popularity ranking (processes that share a table share one ranking).
    pub perm: RankPermutation,
    rng: SplitMix64,
}

impl RowSampler {
    /// A sampler of `rows` row ids drawn from `dist`, seeded by `seed`.
    pub fn new(rows: u64, dist: RowDist, seed: u64) -> Result<Self> {
        let zipf = match dist {
            RowDist::Uniform => None,
            RowDist::Zipf(s) => Some(Zipf::new(rows, s)?),
        };
        Ok(Self {
            rows,
            zipf,
            perm: RankPermutation::new(rows, seed ^ 0x5EED),
            rng: SplitMix64(seed),
        })
    }

    /// The next row id and its 0-based popularity rank (uniform: the row itself).
    #[inline]
    pub fn next_row(&mut self) -> (u64, u64) {
        match &self.zipf {
            None => {
                let r = self.rng.below(self.rows);
                (r, r)
            }
            Some(z) => {
                let rank = z.sample(&mut self.rng) - 1;
                (self.perm.row(rank), rank)
            }
        }
    }

    /// Fills `out` with row ids.
    pub fn fill(&mut self, out: &mut [u64]) {
        for o in out {
            *o = self.next_row().0;
        }
    }
}

/// User + system CPU seconds of this process (from `/proc/self/stat`, 100 ticks/s).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_head_probability() {
        let z = Zipf::new(1000, 1.0).expect("valid");
        let mut rng = SplitMix64(1);
        let n = 200_000;
        let ones = (0..n).filter(|_| z.sample(&mut rng) == 1).count();
        let p = ones as f64 / n as f64;
        // 1 / H(1000) = 0.1336
        assert!((p - 0.1336).abs() < 0.01, "{p}");
    }

    #[test]
    fn permutation_is_bijective() {
        for n in [1u64, 2, 7, 100, 1024, 999_983] {
            let p = RankPermutation::new(n, 3);
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let row = p.row(r) as usize;
                assert!(row < n as usize && !seen[row], "n {n}: rank {r} -> {row}");
                seen[row] = true;
            }
        }
    }
}

/// A closed-loop benchmark: `threads` threads, each issuing `batches` batches of
/// `batch_rows` ids (drawn before the clock starts) against the store.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Row ids per batch.
    pub batch_rows: usize,
    /// Measured batches per thread.
    pub batches: usize,
    /// Batches per thread run before the clock starts (the stats are reset after them).
    pub warmup_batches: usize,
    /// Threads issuing batches at once.
    pub threads: usize,
    /// How row ids are drawn.
    pub dist: RowDist,
    /// Seed of the id streams (the same seed gives the same ids).
    pub seed: u64,
    /// Layer indices used round-robin (empty: all).
    pub layers: Vec<usize>,
    /// Tickets in flight per thread (0: synchronous `lookup_into`).
    pub prefetch_depth: usize,
}

/// What a benchmark measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Backend that served the reads.
    pub backend: String,
    /// Threads that issued batches.
    pub threads: usize,
    /// Row ids per batch.
    pub batch_rows: usize,
    /// Measured batches per thread.
    pub batches: usize,
    /// Wall-clock seconds of the measured phase.
    pub seconds: f64,
    /// Rows served per second, all threads together.
    pub rows_per_s: f64,
    /// Row bytes served per second, in MB (10^6 bytes).
    pub useful_mb_per_s: f64,
    /// Bytes read from the device per second, in MB (10^6 bytes).
    pub device_mb_per_s: f64,
    /// Device reads per second.
    pub iops: f64,
    /// Device bytes over distinct row bytes read (1.0: no waste).
    pub read_amplification: f64,
    /// Fraction of rows served by the cache, in `[0, 1]`.
    pub cache_hit_rate: f64,
    /// Median batch latency in microseconds.
    pub batch_p50_us: f64,
    /// 99th-percentile batch latency in microseconds.
    pub batch_p99_us: f64,
    /// 99.9th-percentile batch latency in microseconds.
    pub batch_p999_us: f64,
    /// Per device read (submit to completion), pread and uring only.
    pub read_p50_us: f64,
    /// 99th-percentile device-read latency in microseconds.
    pub read_p99_us: f64,
    /// 99.9th-percentile device-read latency in microseconds.
    pub read_p999_us: f64,
    /// CPU seconds (user + system) the process used in the measured phase.
    pub cpu_seconds: f64,
    /// `cpu_seconds / seconds`: cores kept busy on average.
    pub cpu_cores: f64,
    /// The store's statistics at the end of the run.
    pub stats: engram_store::StatsSnapshot,
}

/// Runs `spec` against `store` (in-process or through a service); stats are reset after
/// the warm-up.
pub fn run_bench(store: &dyn engram_store::RowSource, spec: &BenchSpec) -> Result<BenchReport> {
    let n_layers = store.n_layers();
    let layers: Vec<usize> = if spec.layers.is_empty() {
        (0..n_layers).collect()
    } else {
        spec.layers.clone()
    };
    let total = spec.warmup_batches + spec.batches;
    // ids[thread][batch] drawn up front
    let mut plans = Vec::with_capacity(spec.threads);
    for t in 0..spec.threads {
        let mut samplers = layers
            .iter()
            .map(|&li| {
                RowSampler::new(
                    store.rows(li)?,
                    spec.dist,
                    spec.seed ^ (li as u64) << 40 ^ (t as u64) << 20,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        // The same popularity ranking for every thread: reseed only the draw stream.
        for (k, s) in samplers.iter_mut().enumerate() {
            s.perm = RankPermutation::new(s.rows, spec.seed ^ 0x5EED ^ k as u64);
        }
        let mut batches = Vec::with_capacity(total);
        for b in 0..total {
            let k = b % layers.len();
            let mut ids = vec![0u64; spec.batch_rows];
            samplers[k].fill(&mut ids);
            batches.push((layers[k], ids));
        }
        plans.push(batches);
    }
    let run_phase = |range: std::ops::Range<usize>| -> Result<()> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = plans
                .iter()
                .map(|batches| {
                    let range = range.clone();
                    scope.spawn(move || -> Result<()> {
                        let rb = store.row_bytes();
                        if spec.prefetch_depth == 0 {
                            let mut out = vec![0u8; spec.batch_rows * rb];
                            for (layer, ids) in &batches[range] {
                                store.lookup_into(*layer, ids, &mut out)?;
                            }
                        } else {
                            let mut free: Vec<engram_store::AlignedBuf> = (0..spec.prefetch_depth)
                                .map(|_| store.alloc_rows(spec.batch_rows))
                                .collect::<Result<_>>()?;
                            let mut pending = std::collections::VecDeque::new();
                            for (layer, ids) in &batches[range] {
                                if free.is_empty()
                                    && let Some(t) = pending.pop_front()
                                {
                                    let (buf, r) = engram_store::Ticket::wait(t);
                                    r?;
                                    free.push(buf);
                                }
                                let Some(buf) = free.pop() else { break };
                                pending.push_back(store.prefetch(*layer, ids, buf));
                            }
                            for t in pending {
                                let (_, r) = engram_store::Ticket::wait(t);
                                r?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| Error::ShutDown("bench thread panicked"))??;
            }
            Ok(())
        })
    };
    run_phase(0..spec.warmup_batches)?;
    store.reset_stats()?;
    let cpu0 = process_cpu_seconds().unwrap_or(0.0);
    let t0 = std::time::Instant::now();
    run_phase(spec.warmup_batches..total)?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds().unwrap_or(0.0) - cpu0;
    let stats = store.stats()?;
    let rows = (spec.threads * spec.batches * spec.batch_rows) as f64;
    let rb = store.row_bytes() as f64;
    Ok(BenchReport {
        backend: stats.backend.clone(),
        threads: spec.threads,
        batch_rows: spec.batch_rows,
        batches: spec.batches,
        seconds,
        rows_per_s: rows / seconds,
        useful_mb_per_s: rows * rb / seconds / 1e6,
        device_mb_per_s: stats.device_bytes as f64 / seconds / 1e6,
        iops: stats.device_reads as f64 / seconds,
        read_amplification: stats.read_amplification,
        cache_hit_rate: stats.cache_hit_rate,
        batch_p50_us: stats.batch.p50_us,
        batch_p99_us: stats.batch.p99_us,
        batch_p999_us: stats.batch.p999_us,
        read_p50_us: stats.device_read.p50_us,
        read_p99_us: stats.device_read.p99_us,
        read_p999_us: stats.device_read.p999_us,
        cpu_seconds,
        cpu_cores: cpu_seconds / seconds,
        stats,
    })
}
