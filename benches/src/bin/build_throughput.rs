//! engram-build's counting pipeline next to the tokenizer alone, on the same files in the
//! same run, interleaved: each round tokenizes the corpus alone, then runs the full pipeline
//! (read, tokenize, compress, hash, count) for every shape, at every thread count. Prints
//! every round, then per shape and thread count the median and range of tokens/s and of the
//! ratio to the same round's tokenizer-only run, and the corpus profile per shape.
//!
//! Usage: `cargo run --release -p engram-benches --bin build_throughput -- [DIR]
//! [--threads 1,2] [--runs 3] [--shapes demo,v41] [--strategy auto|direct]`
//! (default DIR: this Python's standard library, site-packages excluded).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use engram_kernels::hash::{HashOptions, NgramHasher};
use engram_kernels::{CompressionTable, EngramConfig, EngramLayout, tokenizer};
use engram_tools::build::corpus::{self, CorpusOptions, Source};
use engram_tools::build::count::{self, Counters, Progress, Strategy};
use tokenizers::Tokenizer;

fn stdlib() -> Result<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output()
        .context("running python3 to find the standard library")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// CPU seconds this process has used (user + system, all threads), from /proc/self/stat.
/// Linux reports them in USER_HZ = 100 ticks per second on every architecture.
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name, which ends with the last ')': state is field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        let v: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of /proc/self/stat", i + 3))?;
        Ok(v as f64 / 100.0)
    };
    // utime and stime are fields 14 and 15.
    Ok(tick(11)? + tick(12)?)
}

/// Tokens per second of wall time and per CPU second of a closure that returns tokens.
fn timed(f: impl FnOnce() -> Result<u64>) -> Result<Rates> {
    let (t, cpu) = (Instant::now(), cpu_seconds()?);
    let tokens = f()? as f64;
    Ok(Rates {
        wall: tokens / t.elapsed().as_secs_f64(),
        cpu: tokens / (cpu_seconds()? - cpu).max(0.01),
    })
}

#[derive(Debug, Clone, Copy)]
struct Rates {
    wall: f64,
    cpu: f64,
}

/// The value after `--flag`, if any.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim().parse().map_err(|_| {
                anyhow::anyhow!("{what}: expected a comma-separated list, found {s:?}")
            })
        })
        .collect()
}

struct Shape {
    name: String,
    layout: EngramLayout,
    hasher: NgramHasher,
    strategy: Strategy,
}

struct Inputs<'a> {
    sources: &'a [Source],
    options: &'a CorpusOptions,
    tokenizer: &'a Tokenizer,
    table: &'a CompressionTable,
}

/// One pipeline run. The counters are allocated inside the timed span: their first
/// touches (page faults) are part of a build's cost.
fn pipeline(
    inputs: &Inputs<'_>,
    shape: &Shape,
    pool: &rayon::ThreadPool,
    profile: bool,
) -> Result<Rates> {
    let mut counters = None;
    let rates = timed(|| {
        let c = counters.insert(Counters::new(&shape.layout)?);
        let summary = pool.install(|| {
            count::count_with(
                shape.strategy,
                inputs.sources,
                inputs.options,
                inputs.tokenizer,
                inputs.table,
                &shape.layout,
                &shape.hasher,
                c,
                &Progress::default(),
            )
        })?;
        Ok(summary.tokens)
    })?;
    let counters = counters.context("counted")?;
    if profile {
        println!(
            "{}: counters {:.2} GB, {:?}",
            shape.name,
            Counters::bytes(&shape.layout) as f64 / 1e9,
            shape.strategy
        );
        for (i, l) in shape.layout.layers.iter().enumerate() {
            let p = count::profile_layer(&counters, i, l.layer_id);
            let c = count::curve(&p, l.total_rows, &[0.001, 0.01, 0.1]);
            println!(
                "  layer {:>2}: {:>10} of {:>11} rows touched ({:.2}%), {} hits; top 0.1% {:.1}%, top 1% {:.1}%, top 10% {:.1}% of hits",
                l.layer_id,
                p.entries.len(),
                l.total_rows,
                100.0 * p.entries.len() as f64 / l.total_rows as f64,
                p.total_hits,
                100.0 * c[0].hit_share,
                100.0 * c[1].hit_share,
                100.0 * c[2].hit_share
            );
        }
    }
    Ok(rates)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: Vec<usize> = list(flag(&args, "--threads").unwrap_or("1,2"), "--threads")?;
    let runs: usize = flag(&args, "--runs")
        .unwrap_or("3")
        .parse()
        .context("--runs")?;
    let shape_names: Vec<String> = list(flag(&args, "--shapes").unwrap_or("demo,v41"), "--shapes")?;
    let force_direct = match flag(&args, "--strategy").unwrap_or("auto") {
        "auto" => false,
        "direct" => true,
        other => bail!("--strategy: expected auto or direct, found {other:?}"),
    };
    if runs == 0 || threads.contains(&0) {
        bail!("--runs and --threads must be at least 1");
    }
    let dir = match args.first().filter(|a| !a.starts_with("--")) {
        Some(d) => PathBuf::from(d),
        None => stdlib()?,
    };
    let options = CorpusOptions {
        include: vec!["**/*.py".into()],
        exclude: vec!["**/site-packages".into()],
        ..CorpusOptions::default()
    };
    let sources = corpus::discover(std::slice::from_ref(&dir), &options)?;
    let tok = tokenizer::load(&tokenizer::resolve_path(None)?)?;
    let table = CompressionTable::from_tokenizer(&tok.tokenizer)?;
    let shapes = shape_names
        .iter()
        .map(|name| {
            let config = match name.as_str() {
                "demo" => EngramConfig::demo(),
                "v41" => EngramConfig::v41(),
                other => bail!("--shapes: expected demo or v41, found {other:?}"),
            };
            let pad = table.compress_id(config.pad_id)?;
            let layout = EngramLayout::new(&config, table.compressed_vocab_size(), pad)?;
            let hasher = NgramHasher::new(&layout, HashOptions::default())?;
            let strategy = if force_direct {
                Strategy::Direct
            } else {
                Strategy::for_layout(&layout)
            };
            Ok(Shape {
                name: name.clone(),
                layout,
                hasher,
                strategy,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pools = threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build())
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = Inputs {
        sources: &sources,
        options: &options,
        tokenizer: &tok.tokenizer,
        table: &table,
    };
    println!(
        "corpus: {} ({} .py files); threads {threads:?}; {runs} interleaved runs",
        dir.display(),
        sources.len()
    );

    // Warm the page cache so every run reads from memory.
    let _ = pools[0].install(|| count::tokenize_only(&sources, &options, &tok.tokenizer))?;
    // [threads] -> tokenizer-only rates per run; [threads][shape] -> pipeline rates per run
    let mut tok_rates = vec![Vec::new(); threads.len()];
    let mut results = vec![vec![Vec::new(); shapes.len()]; threads.len()];
    for run in 0..runs {
        for (ti, pool) in pools.iter().enumerate() {
            let base = timed(|| {
                pool.install(|| count::tokenize_only(&sources, &options, &tok.tokenizer))
            })?;
            tok_rates[ti].push(base);
            let mut line = format!(
                "run {run} threads {}: tokenizer only {:.0} tokens/s ({:.0} per CPU s)",
                threads[ti], base.wall, base.cpu
            );
            for (si, shape) in shapes.iter().enumerate() {
                let r = pipeline(&inputs, shape, pool, run == 0 && ti == 0)?;
                let ratio = Rates {
                    wall: r.wall / base.wall,
                    cpu: r.cpu / base.cpu,
                };
                results[ti][si].push((r, ratio));
                line += &format!(
                    "; {} {:.0} tokens/s = {:.2}x ({:.2}x per CPU s)",
                    shape.name,
                    r.wall,
                    r.wall / base.wall,
                    r.cpu / base.cpu
                );
            }
            println!("{line}");
        }
    }
    println!("summary, median [min..max] of {runs} runs; ratios to the same run's tokenizer-only:");
    let stat = |v: Vec<f64>, digits: usize| {
        let (lo, hi) = range(&v);
        format!("{:.digits$} [{lo:.digits$}..{hi:.digits$}]", median(&v))
    };
    for (ti, &n) in threads.iter().enumerate() {
        println!(
            "  {n} thread(s): tokenizer only {} tokens/s, {} tokens per CPU s",
            stat(tok_rates[ti].iter().map(|r| r.wall).collect(), 0),
            stat(tok_rates[ti].iter().map(|r| r.cpu).collect(), 0)
        );
        for (si, shape) in shapes.iter().enumerate() {
            let runs = &results[ti][si];
            println!(
                "    {}: {} tokens/s = {}x tokenizer-only; {}x per CPU second",
                shape.name,
                stat(runs.iter().map(|r| r.0.wall).collect(), 0),
                stat(runs.iter().map(|r| r.1.wall).collect(), 2),
                stat(runs.iter().map(|r| r.1.cpu).collect(), 2)
            );
        }
    }
    Ok(())
}
