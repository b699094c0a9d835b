//! The storage service against in-process stores, side by side in one run.
//!
//! ```text
//! service_vs_inprocess latency    --table T [--iters N]
//! service_vs_inprocess throughput --table T [--cache-bytes 64M] [--procs 1,2,4,8] [--seconds 4]
//! service_vs_inprocess decode     --model M --model-table T --moe-core BIN [--procs 4]
//! ```
//!
//! - latency: one `lookup_into` of 48 and 1,536 rows, in process and through a service
//!   (sleeping on the doorbell, and spinning), rows in the cache and rows from the SSD
//!   (pread with O_DIRECT, no cache); calls interleaved; p50 and p99.
//! - throughput: N client processes on one table, each with its own store and cache/N of
//!   the budget, against the same N processes attached to one service holding the whole
//!   budget; zipf:1.0 ids, 48 rows per lookup; rows/s, cache hit rate, total PSS (shared
//!   pages counted once).
//! - decode: N `moe-core generate` processes at once, each with its own store, against
//!   the same N through one service: tokens/s, stall per token, total PSS.
//!
//! Prints one JSON line per measurement (`{"type": ..., "data": ...}`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engram_client::{ClientOptions, RemoteStore};
use engram_server::{Server, ServerOptions, TableSpec};
use engram_store::size::parse_bytes;
use engram_store::{BackendKind, RowSource, Store, StoreOptions};
use engram_testbed::workload::{RankPermutation, RowDist, RowSampler};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn need(args: &[String], name: &str) -> Result<String> {
    flag(args, name).with_context(|| format!("{name} is required"))
}

fn line(kind: &str, data: serde_json::Value) {
    println!("{}", serde_json::json!({"type": kind, "data": data}));
}

fn store_options(kind: BackendKind, cache_bytes: u64) -> StoreOptions {
    let mut o = StoreOptions {
        cache_bytes,
        max_in_flight: 256,
        ..StoreOptions::default()
    };
    o.backend.kind = Some(kind);
    o
}

fn server(dir: &Path, table: &Path, store: StoreOptions) -> Result<Server> {
    let mut o = ServerOptions::new(
        dir.join("bench.sock"),
        vec![TableSpec {
            name: "t".into(),
            path: table.to_path_buf(),
        }],
    );
    o.store = store;
    o.max_spin_us = 1000;
    Ok(Server::start(o)?)
}

fn client(sock: &Path, slot_rows: u32, spin_us: u32) -> Result<RemoteStore> {
    Ok(RemoteStore::connect(
        &format!("unix:{}", sock.display()),
        &ClientOptions {
            slots: 8,
            slot_rows,
            spin_us,
            server_spin_us: spin_us,
        },
    )?)
}

/// Proportional set size of `pid` in KiB (shared pages split among their users).
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn quantile(v: &mut [u64], q: f64) -> f64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * q).round() as usize)
        .map_or(0.0, |&ns| ns as f64 / 1000.0)
}

fn latency(args: &[String]) -> Result<()> {
    let table = PathBuf::from(need(args, "--table")?);
    let iters: usize = flag(args, "--iters").map_or(Ok(2000), |s| s.parse())?;
    let tmp = tempfile::tempdir()?;
    for (tier, cache_bytes) in [("cache", 256u64 << 20), ("ssd", 0)] {
        let opts = store_options(BackendKind::Pread, cache_bytes);
        let srv = server(tmp.path(), &table, opts.clone())?;
        let local = Store::open(&table, &opts)?;
        let sleepy = client(srv.socket(), 1536, 0)?;
        let spinny = client(srv.socket(), 1536, 200)?;
        let rows = local.table().rows(0)?;
        let rb = local.row_bytes();
        for n in [48usize, 1536] {
            // Cached: a hot set of 64 batches, warmed through each path first. SSD: fresh
            // uniform ids every call.
            let hot = if tier == "cache" { 64 } else { iters };
            let calls = if n == 1536 { iters / 4 } else { iters }.max(10);
            let mut s = RowSampler::new(rows, RowDist::Uniform, 7)?;
            let batches: Vec<Vec<u64>> = (0..hot.min(calls))
                .map(|_| {
                    let mut ids = vec![0u64; n];
                    s.fill(&mut ids);
                    ids
                })
                .collect();
            let mut out = vec![0u8; n * rb];
            let paths: [(&str, &dyn RowSource); 3] = [
                ("in_process", &local),
                ("service", &sleepy),
                ("service_spin", &spinny),
            ];
            if tier == "cache" {
                for (_, p) in &paths {
                    for b in &batches {
                        p.lookup_into(0, b, &mut out)?;
                    }
                }
            }
            let mut ns: Vec<Vec<u64>> = (0..3).map(|_| Vec::with_capacity(calls)).collect();
            for k in 0..calls {
                let b = &batches[k % batches.len()];
                for (i, (_, p)) in paths.iter().enumerate() {
                    let t0 = Instant::now();
                    p.lookup_into(0, b, &mut out)?;
                    ns[i].push(t0.elapsed().as_nanos() as u64);
                }
            }
            let mut p50 = [0.0; 3];
            for (i, (name, _)) in paths.iter().enumerate() {
                p50[i] = quantile(&mut ns[i], 0.5);
                let p99 = quantile(&mut ns[i], 0.99);
                line(
                    "latency",
                    serde_json::json!({"tier": tier, "rows": n, "path": name, "calls": calls,
                        "p50_us": p50[i], "p99_us": p99}),
                );
            }
            line(
                "latency_delta",
                serde_json::json!({"tier": tier, "rows": n,
                    "service_minus_in_process_p50_us": p50[1] - p50[0],
                    "service_spin_minus_in_process_p50_us": p50[2] - p50[0]}),
            );
        }
        drop((sleepy, spinny));
        srv.stop();
    }
    Ok(())
}

/// The child of `throughput`: a closed loop of 48-row lookups, warm-up then timed.
fn child(args: &[String]) -> Result<()> {
    let mode = need(args, "--mode")?;
    let table = PathBuf::from(need(args, "--table")?);
    let secs: f64 = need(args, "--seconds")?.parse()?;
    let seed: u64 = need(args, "--seed")?.parse()?;
    let source: Arc<dyn RowSource> = match mode.as_str() {
        "service" => Arc::new(client(Path::new(&need(args, "--socket")?), 48, 0)?),
        "own" => Arc::new(Store::open(
            &table,
            &store_options(
                BackendKind::Pread,
                parse_bytes(&need(args, "--cache-bytes")?)?,
            ),
        )?),
        m => bail!("mode {m}"),
    };
    let rows = source.rows(0)?;
    let mut s = RowSampler::new(rows, RowDist::parse("zipf:1.0")?, seed)?;
    s.perm = RankPermutation::new(rows, 0x5EED);
    let mut ids = vec![0u64; 48];
    let mut out = vec![0u8; 48 * source.row_bytes()];
    let run =
        |d: Duration, ids: &mut Vec<u64>, out: &mut Vec<u8>, s: &mut RowSampler| -> Result<u64> {
            let t0 = Instant::now();
            let mut n = 0u64;
            while t0.elapsed() < d {
                s.fill(ids);
                source.lookup_into(0, ids, out)?;
                n += 48;
            }
            Ok(n)
        };
    run(
        Duration::from_secs_f64(secs / 2.0),
        &mut ids,
        &mut out,
        &mut s,
    )?;
    source.reset_stats()?;
    let n = run(Duration::from_secs_f64(secs), &mut ids, &mut out, &mut s)?;
    let st = source.stats()?;
    line(
        "child",
        serde_json::json!({"rows": n, "cache_hits": st.cache_hits, "cache_misses": st.cache_misses,
            "pss_kib": pss_kib(std::process::id())}),
    );
    Ok(())
}

fn spawn_children(n: usize, common: &[String]) -> Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe()?;
    let kids: Vec<_> = (0..n)
        .map(|i| {
            Command::new(&exe)
                .arg("child")
                .args(common)
                .args(["--seed", &(i as u64 + 1).to_string()])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let mut out = Vec::new();
    for k in kids {
        let o = k.wait_with_output()?;
        if !o.status.success() {
            bail!("a child failed: {}", o.status);
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        out.push(v["data"].clone());
    }
    Ok(out)
}

fn throughput(args: &[String]) -> Result<()> {
    let table = PathBuf::from(need(args, "--table")?);
    let budget = parse_bytes(&flag(args, "--cache-bytes").unwrap_or_else(|| "64M".into()))?;
    let secs: f64 = flag(args, "--seconds").map_or(Ok(4.0), |s| s.parse())?;
    let procs: Vec<usize> = flag(args, "--procs")
        .unwrap_or_else(|| "1,2,4,8".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let tmp = tempfile::tempdir()?;
    let t = table.display().to_string();
    for &n in &procs {
        let sum = |kids: &[serde_json::Value], k: &str| {
            kids.iter().map(|c| c[k].as_u64().unwrap_or(0)).sum::<u64>()
        };
        // Each process with its own store and a 1/n share of the budget.
        let common: Vec<String> = [
            "--mode",
            "own",
            "--table",
            &t,
            "--seconds",
            &secs.to_string(),
            "--cache-bytes",
            &(budget / n as u64).to_string(),
        ]
        .map(String::from)
        .to_vec();
        let kids = spawn_children(n, &common)?;
        let (h, m) = (sum(&kids, "cache_hits"), sum(&kids, "cache_misses"));
        line(
            "throughput",
            serde_json::json!({"mode": "own_stores", "procs": n, "cache_bytes_total": budget,
                "rows_per_s": sum(&kids, "rows") as f64 / secs,
                "hit_rate": h as f64 / (h + m).max(1) as f64,
                "pss_mib_total": sum(&kids, "pss_kib") as f64 / 1024.0}),
        );
        // The same processes through one service holding the whole budget.
        let srv = server(
            tmp.path(),
            &table,
            store_options(BackendKind::Pread, budget),
        )?;
        let sock = srv.socket().display().to_string();
        let common: Vec<String> = [
            "--mode",
            "service",
            "--table",
            &t,
            "--seconds",
            &secs.to_string(),
            "--socket",
            &sock,
        ]
        .map(String::from)
        .to_vec();
        let before = srv.stats().tables[0].store.clone();
        let kids = spawn_children(n, &common)?;
        let after = srv.stats().tables[0].store.clone();
        let (h, m) = (
            after.cache_hits - before.cache_hits,
            after.cache_misses - before.cache_misses,
        );
        let server_pss = pss_kib(std::process::id());
        line(
            "throughput",
            serde_json::json!({"mode": "service", "procs": n, "cache_bytes_total": budget,
                "rows_per_s": sum(&kids, "rows") as f64 / secs,
                "hit_rate_incl_warmup": h as f64 / (h + m).max(1) as f64,
                "pss_mib_total": (sum(&kids, "pss_kib") + server_pss) as f64 / 1024.0,
                "server_pss_mib": server_pss as f64 / 1024.0}),
        );
        srv.stop();
    }
    Ok(())
}

/// Runs `n` moe-core generate processes at once; their JSON summaries and peak PSS.
fn decoders(bin: &Path, n: usize, args: &[String]) -> Result<(Vec<serde_json::Value>, u64)> {
    let kids: Vec<_> = (0..n)
        .map(|_| {
            Command::new(bin)
                .arg("generate")
                .arg("--json")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    let pids: Vec<u32> = kids.iter().map(std::process::Child::id).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peak = std::thread::scope(|s| -> Result<(Vec<serde_json::Value>, u64)> {
        let sampler = s.spawn(|| {
            let mut peak = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(pids.iter().map(|&p| pss_kib(p)).sum());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let mut out = Vec::new();
        for k in kids {
            let o = k.wait_with_output()?;
            if !o.status.success() {
                bail!("moe-core failed: {}", o.status);
            }
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
            out.push(v["data"].clone());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok((out, sampler.join().unwrap_or(0)))
    })?;
    Ok(peak)
}

fn decode(args: &[String]) -> Result<()> {
    let model = need(args, "--model")?;
    let table = PathBuf::from(need(args, "--model-table")?);
    let bin = PathBuf::from(need(args, "--moe-core")?);
    let n: usize = flag(args, "--procs").map_or(Ok(4), |s| s.parse())?;
    let tokens = flag(args, "--tokens").unwrap_or_else(|| "64".into());
    let budget: u64 = 16 << 20;
    let t = table.display().to_string();
    let base = [
        "--model",
        &model,
        "--engram",
        &t,
        "--max-new-tokens",
        &tokens,
        "--prompt",
        "import os\nimport sys\n\n\ndef main():\n",
    ]
    .map(String::from);
    let report = |mode: &str, kids: &[serde_json::Value], pss: u64| {
        let f = |k: &str| {
            kids.iter()
                .map(|c| c[k].as_f64().unwrap_or(0.0))
                .collect::<Vec<_>>()
        };
        line(
            "decode",
            serde_json::json!({"mode": mode, "procs": kids.len(), "decode_tokens_per_s": f("decode_tokens_per_second"),
                "stall_us_per_token": f("stall_us_per_token"), "peak_pss_mib_total": pss as f64 / 1024.0}),
        );
    };
    let mut own = base.to_vec();
    own.extend(
        [
            "--engram-backend",
            "pread",
            "--cache-bytes",
            &(budget / n as u64).to_string(),
        ]
        .map(String::from),
    );
    let (kids, pss) = decoders(&bin, n, &own)?;
    report("own_stores", &kids, pss);
    let tmp = tempfile::tempdir()?;
    let srv = server(
        tmp.path(),
        &table,
        store_options(BackendKind::Pread, budget),
    )?;
    let mut svc = base.to_vec();
    svc.extend(["--service".to_string(), srv.socket().display().to_string()]);
    let (kids, pss) = decoders(&bin, n, &svc)?;
    report("service", &kids, pss + pss_kib(std::process::id()));
    srv.stop();
    Ok(())
}

const USAGE: &str = "\
Usage:
  service_vs_inprocess latency    --table T [--iters N]
  service_vs_inprocess throughput --table T [--cache-bytes 64M] [--procs 1,2,4,8] [--seconds 4]
  service_vs_inprocess decode     --model M --model-table T --moe-core BIN [--procs 4]

The storage service against in-process stores, side by side in one run:
  latency     one lookup_into of 48 and 1,536 rows, in process and through a service
              (sleeping on the doorbell, and spinning), from the cache and from the SSD
              (pread, O_DIRECT, no cache); calls interleaved; p50 and p99
  throughput  N client processes each with its own store and cache/N, against the same N
              attached to one service holding the whole cache; zipf:1.0 ids, 48 rows per
              lookup; rows/s, hit rate, total PSS
  decode      N `moe-core generate` at once, own stores against one service: tokens/s,
              stall per token, total PSS
Prints one JSON line per measurement. A table: engram synth T --preset v41 --base-size 30000";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    engram_benches::exit_on_help(&args, USAGE);
    match args.first().map(String::as_str) {
        Some("latency") => latency(&args),
        Some("throughput") => throughput(&args),
        Some("decode") => decode(&args),
        Some("child") => child(&args),
        Some(other) => engram_benches::exit_usage(&format!("unknown mode {other:?}"), USAGE),
        None => engram_benches::exit_usage("a mode is required", USAGE),
    }
}
