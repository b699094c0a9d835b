//! engram-build's counting pipeline next to the tokenizer alone, on the same files in the
//! same run, interleaved finely enough that a shared machine's changing load hits both
//! sides alike.
//!
//! The corpus is split into `--chunks` slices of about equal bytes. Each run walks the
//! slices; on every slice it tokenizes alone and runs the full pipeline (read, tokenize,
//! compress, hash, count into the shape's counters) for every shape, rotating which of them
//! goes first (the tokenizer's word cache favours whoever follows). A run's rate is its
//! tokens over the summed time of its slices, as wall time and as CPU time. Each run
//! prints its rates and ratios; the summary gives per thread count and shape the median and
//! range over runs. The first run also prints the corpus profile per shape.
//!
//! Usage: `cargo run --release -p engram-benches --bin build_throughput -- [DIR]
//! [--threads 1,2] [--runs 3] [--chunks 24] [--shapes demo,v41] [--strategy auto|direct]`
//! (default DIR: this Python's standard library, site-packages excluded).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use engram_corpus::corpus::{self, CorpusOptions, Input};
use engram_corpus::count::{self, Counters, Progress, Strategy};
use engram_files::tokenizer;
use engram_kernels::hash::{HashOptions, NgramHasher};
use engram_kernels::{CompressionTable, EngramConfig, EngramLayout};
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

/// The value after `--flag`, if any.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T> {
    s.trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{what}: cannot parse {s:?}"))
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',').map(|x| parse(x, what)).collect()
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

/// Tokens and the wall and CPU seconds they took, summed over slices.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    tokens: u64,
    wall: f64,
    cpu: f64,
}

impl Spent {
    /// Runs `f` (which returns tokens) and adds its tokens and time.
    fn time(&mut self, f: impl FnOnce() -> Result<u64>) -> Result<()> {
        let (t, cpu) = (Instant::now(), cpu_seconds()?);
        self.tokens += f()?;
        self.wall += t.elapsed().as_secs_f64();
        self.cpu += cpu_seconds()? - cpu;
        Ok(())
    }

    fn wall_rate(&self) -> f64 {
        self.tokens as f64 / self.wall.max(1e-9)
    }

    fn cpu_rate(&self) -> f64 {
        self.tokens as f64 / self.cpu.max(0.01)
    }
}

struct Shape {
    name: String,
    layout: EngramLayout,
    hasher: NgramHasher,
    strategy: Strategy,
}

struct Inputs<'a> {
    options: &'a CorpusOptions,
    tokenizer: &'a Tokenizer,
    table: &'a CompressionTable,
}

/// Counts `sources` into `counters`; returns the tokens.
fn pipeline(
    inputs: &Inputs<'_>,
    sources: &[Input],
    shape: &Shape,
    counters: &Counters,
    pool: &rayon::ThreadPool,
) -> Result<u64> {
    let summary = pool.install(|| {
        count::count(
            shape.strategy,
            sources,
            inputs.options,
            inputs.tokenizer,
            inputs.table,
            &shape.layout,
            &shape.hasher,
            counters,
            None,
            &Progress::default(),
            None,
        )
    })?;
    Ok(summary.tokens)
}

fn print_profile(shape: &Shape, counters: &Counters) {
    println!(
        "{}: counters {:.2} GB, {:?}",
        shape.name,
        Counters::bytes(&shape.layout) as f64 / 1e9,
        shape.strategy
    );
    for (i, l) in shape.layout.layers.iter().enumerate() {
        let p = count::profile_layer(counters, i, l.layer_id);
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

/// `sources` in `n` consecutive slices of about equal bytes.
fn slices(sources: &[Input], n: usize) -> Vec<&[Input]> {
    let size = |s: &Input| match s {
        Input::Text(p) | Input::JsonLines(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        Input::Stdin => 0,
    };
    let total: u64 = sources.iter().map(size).sum();
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, s) in sources.iter().enumerate() {
        acc += size(s);
        if acc * n as u64 >= total * (out.len() as u64 + 1) || i + 1 == sources.len() {
            out.push(&sources[start..=i]);
            start = i + 1;
        }
    }
    out
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

/// `median [min..max]` with `digits` decimals.
fn stat(v: &[f64], digits: usize) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    format!("{:.digits$} [{lo:.digits$}..{hi:.digits$}]", median(v))
}

const USAGE: &str = "engram-build's counting pipeline against the tokenizer alone, interleaved\n\n\
Usage: build_throughput [DIR] [--threads 1,2] [--runs 3] [--chunks 24] [--shapes demo,v41] \
[--strategy auto|direct]\n\n\
DIR: a corpus of .py files (default: this Python's standard library, site-packages excluded).";

/// Flags that take a value.
const FLAGS: [&str; 5] = ["--threads", "--runs", "--chunks", "--shapes", "--strategy"];

/// The flags, parsed and checked.
struct Options {
    threads: Vec<usize>,
    runs: usize,
    n_chunks: usize,
    shape_names: Vec<String>,
    force_direct: bool,
    dir: PathBuf,
}

fn parse_options(args: &[String]) -> Result<Options> {
    for (i, a) in args.iter().enumerate() {
        let is_value = i > 0 && FLAGS.contains(&args[i - 1].as_str());
        if a.starts_with('-') && !is_value && !FLAGS.contains(&a.as_str()) {
            bail!("unknown flag {a:?}\n\n{USAGE}");
        }
    }
    let threads: Vec<usize> = list(flag(args, "--threads").unwrap_or("1,2"), "--threads")?;
    let runs: usize = parse(flag(args, "--runs").unwrap_or("3"), "--runs")?;
    let n_chunks: usize = parse(flag(args, "--chunks").unwrap_or("24"), "--chunks")?;
    let shape_names: Vec<String> = list(flag(args, "--shapes").unwrap_or("demo,v41"), "--shapes")?;
    let force_direct = match flag(args, "--strategy").unwrap_or("auto") {
        "auto" => false,
        "direct" => true,
        other => bail!("--strategy: expected auto or direct, found {other:?}"),
    };
    if runs == 0 || n_chunks == 0 || threads.contains(&0) {
        bail!("--runs, --chunks and --threads must be at least 1");
    }
    let dir = match args.first().filter(|a| !a.starts_with("--")) {
        Some(d) => PathBuf::from(d),
        None => stdlib()?,
    };
    Ok(Options {
        threads,
        runs,
        n_chunks,
        shape_names,
        force_direct,
        dir,
    })
}

/// The shapes to count for, each with its layout, hasher and counting strategy.
fn make_shapes(opts: &Options, table: &CompressionTable) -> Result<Vec<Shape>> {
    opts.shape_names
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
            let strategy = if opts.force_direct {
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
        .collect()
}

/// One run on one pool: every slice tokenized alone and through every shape's pipeline,
/// rotating who goes first. Returns the tokenizer's time and each shape's, and the
/// counters (for the profile).
fn run_once(
    inputs: &Inputs<'_>,
    chunks: &[&[Input]],
    shapes: &[Shape],
    pool: &rayon::ThreadPool,
) -> Result<(Spent, Vec<Spent>, Vec<Counters>)> {
    let mut alone = Spent::default();
    let mut spent = vec![Spent::default(); shapes.len()];
    // Allocating is part of a build's cost (the pages are zeroed on first touch,
    // inside the slices).
    let mut counters = Vec::new();
    for (shape, s) in shapes.iter().zip(&mut spent) {
        let mut c = None;
        s.time(|| {
            c = Some(Counters::new(&shape.layout)?);
            Ok(0)
        })?;
        counters.push(c.context("allocated")?);
    }
    for (ci, chunk) in chunks.iter().enumerate() {
        let sides = shapes.len() + 1;
        for k in 0..sides {
            match (ci + k) % sides {
                0 => alone.time(|| {
                    pool.install(|| count::tokenize_only(chunk, inputs.options, inputs.tokenizer))
                })?,
                i => spent[i - 1]
                    .time(|| pipeline(inputs, chunk, &shapes[i - 1], &counters[i - 1], pool))?,
            }
        }
    }
    Ok((alone, spent, counters))
}

/// The line a run prints: its rates and ratios.
fn run_line(
    run: usize,
    threads: usize,
    alone: &Spent,
    shapes: &[Shape],
    spent: &[Spent],
) -> Result<String> {
    let mut line = format!(
        "run {run} threads {threads}: tokenizer only {:.0} tokens/s ({:.0} per CPU s)",
        alone.wall_rate(),
        alone.cpu_rate()
    );
    for (shape, s) in shapes.iter().zip(spent) {
        anyhow::ensure!(s.tokens == alone.tokens, "token counts differ");
        line += &format!(
            "; {} {:.0} tokens/s = {:.2}x ({:.2}x per CPU s)",
            shape.name,
            s.wall_rate(),
            s.wall_rate() / alone.wall_rate(),
            s.cpu_rate() / alone.cpu_rate()
        );
    }
    Ok(line)
}

/// Median and range over runs, per thread count and shape.
fn print_summary(
    opts: &Options,
    shapes: &[Shape],
    tok_runs: &[Vec<Spent>],
    shape_runs: &[Vec<Vec<(Spent, Spent)>>],
) {
    println!(
        "summary, median [min..max] of {} runs; ratios to the same run's tokenizer-only:",
        opts.runs
    );
    for (ti, &n) in opts.threads.iter().enumerate() {
        let t = &tok_runs[ti];
        println!(
            "  {n} thread(s): tokenizer only {} tokens/s, {} per CPU s",
            stat(&t.iter().map(Spent::wall_rate).collect::<Vec<_>>(), 0),
            stat(&t.iter().map(Spent::cpu_rate).collect::<Vec<_>>(), 0)
        );
        for (si, shape) in shapes.iter().enumerate() {
            let r = &shape_runs[ti][si];
            println!(
                "    {}: {} tokens/s = {}x tokenizer-only; {}x per CPU second",
                shape.name,
                stat(&r.iter().map(|(s, _)| s.wall_rate()).collect::<Vec<_>>(), 0),
                stat(
                    &r.iter()
                        .map(|(s, a)| s.wall_rate() / a.wall_rate())
                        .collect::<Vec<_>>(),
                    2
                ),
                stat(
                    &r.iter()
                        .map(|(s, a)| s.cpu_rate() / a.cpu_rate())
                        .collect::<Vec<_>>(),
                    2
                )
            );
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let opts = parse_options(&args)?;
    let options = CorpusOptions {
        include: vec!["**/*.py".into()],
        exclude: vec!["**/site-packages".into()],
        ..CorpusOptions::default()
    };
    let sources = corpus::discover(std::slice::from_ref(&opts.dir), &options)?;
    let chunks = slices(&sources, opts.n_chunks);
    let tok = tokenizer::load(&tokenizer::resolve_path(None)?)?;
    let table = CompressionTable::from_tokenizer(&tok.tokenizer)?;
    let shapes = make_shapes(&opts, &table)?;
    let pools = opts
        .threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build())
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = Inputs {
        options: &options,
        tokenizer: &tok.tokenizer,
        table: &table,
    };
    println!(
        "corpus: {} ({} .py files in {} slices); threads {:?}; {} runs",
        opts.dir.display(),
        sources.len(),
        chunks.len(),
        opts.threads,
        opts.runs
    );

    // Warm the page cache so every run reads from memory.
    let _ = pools[0].install(|| count::tokenize_only(&sources, &options, &tok.tokenizer))?;
    // [threads] -> tokenizer-only per run; [threads][shape] -> pipeline per run
    let mut tok_runs = vec![Vec::new(); opts.threads.len()];
    let mut shape_runs = vec![vec![Vec::new(); shapes.len()]; opts.threads.len()];
    for run in 0..opts.runs {
        for (ti, pool) in pools.iter().enumerate() {
            let (alone, spent, counters) = run_once(&inputs, &chunks, &shapes, pool)?;
            println!(
                "{}",
                run_line(run, opts.threads[ti], &alone, &shapes, &spent)?
            );
            tok_runs[ti].push(alone);
            for (si, s) in spent.into_iter().enumerate() {
                shape_runs[ti][si].push((s, tok_runs[ti][run]));
            }
            if run == 0 && ti == 0 {
                for (shape, c) in shapes.iter().zip(&counters) {
                    print_profile(shape, c);
                }
            }
        }
    }
    print_summary(&opts, &shapes, &tok_runs, &shape_runs);
    Ok(())
}
