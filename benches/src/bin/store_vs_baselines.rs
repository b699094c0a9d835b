//! Side-by-side harness for the storage tier: every measurement runs the store and its
//! baseline in the same process run, interleaved, and reports the median of A/B pairs.
//!
//! ```text
//! store-vs-baselines ssd   --table DIR [--qd 32,128] [--pairs 3] [--seconds 8]
//! store-vs-baselines dram  --table DIR [--pairs 5]
//! store-vs-baselines cache [--text-dir DIR] [--tokenizer FILE]
//! ```
//! `ssd` needs `fio` (io_uring engine) on PATH; the table should be >= 1.5x RAM.
//! Output: JSON Lines (`{"type": ..., "data": ...}`) on stdout, progress on stderr.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use engram_files::tokenizer;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};
use engram_kernels::{CompressionTable, EngramConfig, EngramLayout};
use engram_store::backend::memory::MemoryBackend;
use engram_store::cache::{RowCache, SeedOptions};
use engram_store::{
    BackendKind, BackendOptions, LayerProfile, Profile, Store, StoreOptions, Table,
};
use engram_testbed::fio::random_read as fio;
use engram_testbed::probe::probe_random_reads;
use engram_testbed::workload::{BenchSpec, RowDist, RowSampler, Zipf, run_bench};
use serde_json::json;

fn emit(kind: &str, data: serde_json::Value) {
    println!("{}", json!({"type": kind, "data": data}));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn drop_page_cache() {
    // Best effort (needs root); O_DIRECT sides do not depend on it.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
}

/// How the store side issues its rows.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Synchronous `lookup_into` of 64 x QD rows (1024..8192): each batch fills the queue.
    Lookup,
    /// `depth` prefetch tickets of `batch_rows` rows in flight on one thread (a decoder's
    /// pattern): the I/O worker streams their reads into one queue.
    Stream { batch_rows: usize, depth: usize },
}

/// Runs the store for about `seconds` (batch count calibrated on a short run).
fn store_side(
    table: &Path,
    kind: BackendKind,
    qd: usize,
    threads: usize,
    layers: Vec<usize>,
    seconds: f64,
    shape: Shape,
) -> Result<engram_testbed::workload::BenchReport> {
    let (batch_rows, prefetch_depth) = match shape {
        Shape::Lookup => ((qd * 64).clamp(1024, 8192), 0),
        Shape::Stream { batch_rows, depth } => (batch_rows, depth),
    };
    let opts = StoreOptions {
        backend: BackendOptions {
            kind: Some(kind),
            queue_depth: qd,
            pread_threads: qd,
            ..BackendOptions::default()
        },
        io_workers: 1,
        max_batch_rows: batch_rows,
        max_in_flight: prefetch_depth.max(1) * threads,
        ..StoreOptions::default()
    };
    let store = Store::open(table, &opts)?;
    let mut spec = BenchSpec {
        batch_rows,
        batches: 3 + 3 * prefetch_depth,
        warmup_batches: 1,
        threads,
        dist: RowDist::Uniform,
        seed: Instant::now().elapsed().as_nanos() as u64 ^ 0xABCD,
        layers,
        prefetch_depth,
    };
    let cal = run_bench(&store, &spec)?;
    let per_batch = cal.seconds / spec.batches as f64;
    spec.batches = ((seconds / per_batch) as usize).max(3);
    spec.warmup_batches = 0;
    spec.seed ^= 0x1234_5678;
    run_bench(&store, &spec).map_err(Into::into)
}

/// The `ssd` flags.
struct SsdOptions {
    qds: Vec<usize>,
    pairs: usize,
    seconds: f64,
    with_mmap: bool,
    with_pread: bool,
    stream_rows: usize,
    stream_depth: usize,
}

fn ssd_options(args: &[String]) -> Result<SsdOptions> {
    let qds: Vec<usize> = arg(args, "--qd")
        .unwrap_or_else(|| "32,128".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let pairs: usize = arg(args, "--pairs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let seconds: f64 = arg(args, "--seconds")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8.0);
    let stream_rows: usize = arg(args, "--stream-batch-rows")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(256);
    let stream_depth: usize = arg(args, "--stream-depth")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4);
    Ok(SsdOptions {
        qds,
        pairs,
        seconds,
        with_mmap: !args.iter().any(|a| a == "--no-mmap"),
        with_pread: !args.iter().any(|a| a == "--no-pread"),
        stream_rows,
        stream_depth,
    })
}

/// Layer 0's data region (file, offset, bytes), after emitting the setup record.
fn ssd_setup(dir: &Path, o: &SsdOptions) -> Result<(PathBuf, u64, u64)> {
    let table = Table::open(dir)?;
    let lf = table.layer(0)?;
    let (file, offset, size) = (lf.path.clone(), lf.header.data_offset, lf.header.data_bytes);
    let total: u64 = table.manifest().layers.iter().map(|l| l.file_bytes).sum();
    emit(
        "ssd_setup",
        json!({"table": dir, "table_bytes": total, "layer0_file": file, "seconds_per_side": o.seconds, "pairs": o.pairs}),
    );
    Ok((file, offset, size))
}

fn ssd(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(arg(args, "--table").context("--table DIR")?);
    let o = ssd_options(args)?;
    let (file, offset, size) = ssd_setup(&dir, &o)?;
    let SsdOptions {
        qds,
        pairs,
        seconds,
        with_mmap,
        with_pread,
        stream_rows,
        stream_depth,
    } = o;
    for &qd in &qds {
        let (mut r_iops, mut r_p99, mut r_cpu, mut p_iops, mut m_iops) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut r_raw, mut raw_fio) = (vec![], vec![]);
        let (mut st_iops, mut st_cpu) = (vec![], vec![]);
        for pair in 0..pairs {
            let store_first = pair % 2 == 1;
            let mut f = None;
            let mut s = None;
            let mut st = None;
            for side in 0..2 {
                if (side == 0) == store_first {
                    eprintln!("qd {qd} pair {pair}: store (uring)");
                    s = Some(store_side(
                        &dir,
                        BackendKind::Uring,
                        qd,
                        1,
                        vec![0],
                        seconds,
                        Shape::Lookup,
                    )?);
                    eprintln!(
                        "qd {qd} pair {pair}: store (uring, {stream_depth} tickets of {stream_rows} rows)"
                    );
                    st = Some(store_side(
                        &dir,
                        BackendKind::Uring,
                        qd,
                        1,
                        vec![0],
                        seconds,
                        Shape::Stream {
                            batch_rows: stream_rows,
                            depth: stream_depth,
                        },
                    )?);
                } else {
                    eprintln!("qd {qd} pair {pair}: fio");
                    f = Some(fio(&file, offset, size, qd, seconds)?);
                }
            }
            let (Some(f), Some(s), Some(st)) = (f, s, st) else {
                bail!("missing side")
            };
            eprintln!("qd {qd} pair {pair}: raw io_uring loop (no store)");
            let raw = probe_random_reads(&file, offset, size, 4096, qd, seconds, pair as u64)?;
            r_raw.push(s.iops / raw.iops);
            raw_fio.push(raw.iops / f.iops);
            let p = if with_pread {
                eprintln!("qd {qd} pair {pair}: store pread");
                Some(store_side(
                    &dir,
                    BackendKind::Pread,
                    qd,
                    1,
                    vec![0],
                    seconds,
                    Shape::Lookup,
                )?)
            } else {
                None
            };
            let m = if with_mmap && qd <= 32 {
                drop_page_cache();
                eprintln!("qd {qd} pair {pair}: store mmap x{qd} threads");
                Some(store_side(
                    &dir,
                    BackendKind::Mmap,
                    qd,
                    qd,
                    vec![],
                    seconds,
                    Shape::Lookup,
                )?)
            } else {
                None
            };
            let ratio = s.iops / f.iops;
            r_iops.push(ratio);
            r_p99.push(s.read_p99_us / f.p99_us);
            // CPU cores per 100k IOPS, store / fio.
            let s_cpu = s.cpu_cores / (s.iops / 1e5);
            let f_cpu = f.cpu_cores / (f.iops / 1e5);
            r_cpu.push(s_cpu / f_cpu);
            if let Some(p) = &p {
                p_iops.push(p.iops / f.iops);
            }
            let st_cpu_per = st.cpu_cores / (st.iops / 1e5);
            st_iops.push(st.iops / f.iops);
            st_cpu.push(st_cpu_per / f_cpu);
            if let Some(m) = &m {
                m_iops.push(m.stats.rows_unique as f64 / m.seconds / f.iops);
            }
            emit(
                "ssd_pair",
                json!({
                    "qd": qd, "pair": pair, "store_first": store_first,
                    "raw_uring_loop": {"iops": raw.iops, "p50_us": raw.p50_us, "p99_us": raw.p99_us},
                    "uring_over_raw_loop_iops": s.iops / raw.iops,
                    "raw_loop_over_fio_iops": raw.iops / f.iops,
                    "fio": {"iops": f.iops, "p50_us": f.p50_us, "p99_us": f.p99_us, "cpu_cores": f.cpu_cores,
                            "cpu_cores_per_100k_iops": f_cpu},
                    "uring": {"iops": s.iops, "rows_per_s": s.rows_per_s, "read_p50_us": s.read_p50_us,
                              "read_p99_us": s.read_p99_us, "batch_p99_us": s.batch_p99_us,
                              "cpu_cores": s.cpu_cores, "cpu_cores_per_100k_iops": s_cpu,
                              "read_amplification": s.read_amplification},
                    "pread": p.as_ref().map(|p| json!({"iops": p.iops, "read_p99_us": p.read_p99_us, "cpu_cores": p.cpu_cores})),
                    "uring_stream": {"iops": st.iops, "batch_rows": stream_rows, "tickets": stream_depth,
                              "read_p50_us": st.read_p50_us, "read_p99_us": st.read_p99_us,
                              "batch_p50_us": st.batch_p50_us, "batch_p99_us": st.batch_p99_us,
                              "cpu_cores": st.cpu_cores, "cpu_cores_per_100k_iops": st_cpu_per},
                    "uring_stream_over_fio_iops": st.iops / f.iops,
                    "mmap": m.as_ref().map(|m| json!({"rows_per_s": m.rows_per_s, "threads": qd, "cpu_cores": m.cpu_cores})),
                    "uring_over_fio_iops": ratio, "uring_over_fio_p99": s.read_p99_us / f.p99_us,
                    "pread_over_fio_iops": p.as_ref().map(|p| p.iops / f.iops),
                }),
            );
        }
        emit(
            "ssd_summary",
            json!({
                "qd": qd, "pairs": pairs,
                "median_uring_over_fio_iops": median(r_iops),
                "median_uring_over_fio_p99": median(r_p99),
                "median_uring_over_raw_loop_iops": median(r_raw),
                "median_raw_loop_over_fio_iops": median(raw_fio),
                "median_cpu_per_100k_iops_uring_over_fio": median(r_cpu),
                "median_pread_over_fio_iops": if p_iops.is_empty() { None } else { Some(median(p_iops)) },
                "median_uring_stream_over_fio_iops": median(st_iops),
                "median_cpu_per_100k_iops_uring_stream_over_fio": median(st_cpu),
                "median_mmap_rows_over_fio_iops": if m_iops.is_empty() { None } else { Some(median(m_iops)) },
            }),
        );
    }
    Ok(())
}

fn dram(args: &[String]) -> Result<()> {
    let dir = PathBuf::from(arg(args, "--table").context("--table DIR")?);
    let pairs: usize = arg(args, "--pairs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let batch_rows = 4096usize;
    let batches = 400usize;
    let table = std::sync::Arc::new(Table::open(&dir)?);
    let rows = table.rows(0)?;
    let geo = table.geometry();
    let rb = table.row_bytes();
    let mem = MemoryBackend::load(&table, true)?;
    let data = mem.layer_bytes(0).context("layer 0")?;
    let store = Store::from_table(
        std::sync::Arc::clone(&table),
        &StoreOptions {
            backend: BackendOptions {
                kind: Some(BackendKind::Memory),
                ..Default::default()
            },
            io_workers: 1,
            max_batch_rows: batch_rows,
            ..Default::default()
        },
    )?;
    let mut sampler = RowSampler::new(rows, RowDist::Uniform, 9)?;
    let ids: Vec<Vec<u64>> = (0..batches)
        .map(|_| {
            let mut v = vec![0u64; batch_rows];
            sampler.fill(&mut v);
            v
        })
        .collect();
    let mut out = vec![0u8; batch_rows * rb];
    let mut ratios = vec![];
    for pair in 0..pairs {
        let mut store_rate = 0.0;
        let mut plain_rate = 0.0;
        for side in 0..2 {
            let t0 = Instant::now();
            if (side == 0) == (pair % 2 == 0) {
                for b in &ids {
                    store.lookup_into(0, b, &mut out)?;
                }
                store_rate = (batches * batch_rows) as f64 / t0.elapsed().as_secs_f64();
            } else {
                for b in &ids {
                    for (k, &row) in b.iter().enumerate() {
                        let src = geo.row_offset(row) as usize;
                        out[k * rb..(k + 1) * rb].copy_from_slice(&data[src..src + rb]);
                    }
                    std::hint::black_box(&out);
                }
                plain_rate = (batches * batch_rows) as f64 / t0.elapsed().as_secs_f64();
            }
        }
        ratios.push(store_rate / plain_rate);
        emit(
            "dram_pair",
            json!({"pair": pair, "store_rows_per_s": store_rate, "plain_gather_rows_per_s": plain_rate, "ratio": store_rate / plain_rate}),
        );
    }
    emit(
        "dram_summary",
        json!({"table": dir, "row_bytes": rb, "layer0_bytes": data.len(), "median_store_over_plain": median(ratios)}),
    );
    Ok(())
}

/// Hit rates of the cache policies and the oracle static top-C over one id stream.
/// `true_top`: the rows of the true top ranks, when the distribution is known (Zipf).
fn cache_eval(
    name: &str,
    rows: u64,
    train: &[u64],
    test: &[u64],
    test_ranks: Option<&[u64]>,
    budgets: &[u64],
    row_bytes: u64,
) -> Result<()> {
    let mut counts: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for &r in test {
        *counts.entry(r).or_default() += 1;
    }
    let mut sorted: Vec<u64> = counts.values().copied().collect();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    drop(counts);
    let mut train_counts: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for &r in train {
        *train_counts.entry(r).or_default() += 1;
    }
    for &budget in budgets {
        let c = (budget / row_bytes) as usize;
        // Offline oracle: the C rows the test stream itself hits most (knows the future).
        let oracle_empirical = sorted.iter().take(c).sum::<u64>() as f64 / test.len() as f64;
        // Static top-C by true popularity (Zipf: ranks below C).
        let oracle_true = test_ranks
            .map(|r| r.iter().filter(|&&k| k < c as u64).count() as f64 / test.len() as f64);
        let oracle = oracle_true.unwrap_or(oracle_empirical);
        let mut res = serde_json::Map::new();
        for (policy, admit_all, pin) in [
            ("s3fifo", false, 0.0),
            ("clock", true, 0.0),
            ("profile_pin0.5+s3fifo", false, 0.5),
            ("profile_pin0.9+s3fifo", false, 0.9),
            ("profile_pin0.5+clock", true, 0.5),
        ] {
            // Keys only matter for the policy; 8-byte rows keep the simulation small.
            let Some(cache) = RowCache::new(c as u64 * 8, 8, admit_all)? else {
                continue;
            };
            if pin > 0.0 {
                let profile = Profile {
                    table_id: 0,
                    layers: vec![LayerProfile::from_counts(
                        0,
                        train_counts.iter().map(|(&r, &n)| (r, n)),
                        c,
                    )],
                };
                let opts = SeedOptions {
                    pin_fraction: pin,
                    min_hits: 2,
                };
                cache.seed(
                    &profile,
                    &opts,
                    |_| Some(0),
                    |_, ids, out| {
                        for (k, &id) in ids.iter().enumerate() {
                            out[k * 8..k * 8 + 8].copy_from_slice(&id.to_le_bytes());
                        }
                        Ok(())
                    },
                )?;
            }
            // Warm the dynamic part on the training stream (the profile's source).
            let mut b = [0u8; 8];
            for &r in train {
                if !cache.get(0, r, &mut b) {
                    cache.admit(0, r, &r.to_le_bytes());
                }
            }
            let mut hits = 0u64;
            for &r in test {
                if cache.get(0, r, &mut b) {
                    hits += 1;
                } else {
                    cache.admit(0, r, &r.to_le_bytes());
                }
            }
            let rate = hits as f64 / test.len() as f64;
            res.insert(
                policy.into(),
                json!({"hit_rate": rate, "over_oracle": rate / oracle,
                       "over_oracle_empirical": rate / oracle_empirical}),
            );
        }
        emit(
            "cache",
            json!({"stream": name, "rows": rows, "requests": test.len(), "budget_bytes": budget,
            "row_bytes": row_bytes, "capacity_rows": c, "oracle_static_top_c": oracle,
            "oracle_kind": if oracle_true.is_some() { "true top-C ranks" } else { "empirical top-C of the served stream" },
            "oracle_empirical_top_c": oracle_empirical, "policies": res}),
        );
    }
    Ok(())
}

fn cache(args: &[String]) -> Result<()> {
    let budgets = [64u64 << 20, 256 << 20, 1 << 30];
    let rb = 264;
    let n: usize = arg(args, "--requests")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(16_000_000);
    // Zipf(1.0) over a V4.1 layer (384,006,168 rows), ranks scattered.
    let rows = 384_006_168u64;
    let z = Zipf::new(rows, 1.0)?;
    let perm = engram_testbed::workload::RankPermutation::new(rows, 5);
    let mut rng = engram_kernels::rng::SplitMix64(11);
    let mut draw = |k: usize| -> (Vec<u64>, Vec<u64>) {
        (0..k)
            .map(|_| {
                let rank = z.sample(&mut rng) - 1;
                (perm.row(rank), rank)
            })
            .unzip()
    };
    let (train, _) = draw(n);
    let (test, ranks) = draw(n);
    cache_eval("zipf1.0", rows, &train, &test, Some(&ranks), &budgets, rb)?;
    drop((train, test, ranks));
    // Ids hashed from real text: Python stdlib sources through the DeepSeek tokenizer and
    // the V4.1 addressing (layer 1), first half profiles, second half is served.
    let text_dir = PathBuf::from(
        arg(args, "--text-dir")
            .unwrap_or_else(|| "/root/.pyenv/versions/3.11.7/lib/python3.11".into()),
    );
    let tok_path = tokenizer::resolve_path(arg(args, "--tokenizer").as_deref().map(Path::new))?;
    let tok = tokenizer::load(&tok_path)?;
    let ct = CompressionTable::from_tokenizer(&tok.tokenizer)?;
    let config = EngramConfig::v41();
    let pad = ct.compress_id(config.pad_id)?;
    let layout = EngramLayout::new(&config, ct.compressed_vocab_size(), pad)?;
    let hasher = NgramHasher::new(&layout, HashOptions::default())?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&text_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    let target_tokens: usize = arg(args, "--tokens")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(600_000);
    let mut ids_all: Vec<u64> = Vec::new();
    let mut tokens = 0usize;
    for f in files {
        if tokens >= target_tokens {
            break;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let enc = tok
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let raw: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        if raw.is_empty() {
            continue;
        }
        let c = ct.compress(&raw)?;
        let mut out = vec![0u64; c.len() * hasher.n_hash_heads()];
        hasher.hash_into(0, &c, 1, c.len(), HashOutput::RowId, &mut out)?;
        tokens += c.len();
        ids_all.extend_from_slice(&out);
    }
    let half = ids_all.len() / 2;
    emit(
        "text_stream",
        json!({"dir": text_dir, "tokens": tokens, "row_ids": ids_all.len()}),
    );
    cache_eval(
        "python-stdlib-text-v41-layer1",
        layout.layers[0].total_rows,
        &ids_all[..half],
        &ids_all[half..],
        None,
        &[16 << 20, 64 << 20, 256 << 20, 1 << 30],
        rb,
    )?;
    Ok(())
}

const USAGE: &str = "usage:
  store_vs_baselines ssd   --table DIR [--qd 32,128] [--pairs 3] [--seconds 8] [--no-mmap] [--no-pread]
                           [--stream-batch-rows N --stream-depth D]
  store_vs_baselines dram  --table DIR [--pairs 5]
  store_vs_baselines cache [--text-dir DIR] [--tokenizer FILE]
ssd needs fio (io_uring engine) on PATH; the table should be >= 1.5x RAM.
Output: JSON Lines on stdout, progress on stderr (engram-store/BENCHMARKS.md has the runs).";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ssd") => ssd(&args),
        Some("dram") => dram(&args),
        Some("cache") => cache(&args),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}
