//! engram-build throughput next to the tokenizer alone, on the same files in the same run,
//! plus the corpus profile (rows touched, hit share of the top rows) per shape.
//!
//! Usage: `cargo run --release -p engram-benches --bin build_throughput -- [DIR] [--threads N]`
//! (default DIR: this Python's standard library, site-packages excluded).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use engram_kernels::hash::{HashOptions, NgramHasher};
use engram_kernels::{CompressionTable, EngramConfig, EngramLayout, tokenizer};
use engram_tools::build::corpus::{self, CorpusOptions};
use engram_tools::build::count::{self, Counters, Progress};

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|t| t.parse().ok())
        .unwrap_or(2usize);
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
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    println!(
        "corpus: {} ({} .py files), {threads} threads",
        dir.display(),
        sources.len()
    );

    // Warm the page cache so both sides read from memory.
    let _ = pool.install(|| count::tokenize_only(&sources, &options, &tok.tokenizer))?;
    let t = Instant::now();
    let tokens = pool.install(|| count::tokenize_only(&sources, &options, &tok.tokenizer))?;
    let tok_secs = t.elapsed().as_secs_f64();
    println!(
        "tokenizer only: {tokens} tokens in {tok_secs:.2} s = {:.0} tokens/s",
        tokens as f64 / tok_secs
    );

    for (name, config) in [("demo", EngramConfig::demo()), ("v41", EngramConfig::v41())] {
        let pad = table.compress_id(config.pad_id)?;
        let layout = EngramLayout::new(&config, table.compressed_vocab_size(), pad)?;
        let hasher = NgramHasher::new(&layout, HashOptions::default())?;
        let t_alloc = Instant::now();
        let counters = Counters::new(&layout)?;
        let alloc_secs = t_alloc.elapsed().as_secs_f64();
        let progress = Progress::default();
        let t = Instant::now();
        let summary = pool.install(|| {
            count::count(
                &sources,
                &options,
                &tok.tokenizer,
                &table,
                &layout,
                &hasher,
                &counters,
                None,
                &progress,
            )
        })?;
        let secs = t.elapsed().as_secs_f64();
        let rate = summary.tokens as f64 / secs;
        println!(
            "{name}: count pipeline {} tokens in {secs:.2} s = {rate:.0} tokens/s = {:.2} x tokenizer-only; counters {:.2} GB (allocated in {alloc_secs:.2} s)",
            summary.tokens,
            rate / (tokens as f64 / tok_secs),
            Counters::bytes(&layout) as f64 / 1e9
        );
        for (i, l) in layout.layers.iter().enumerate() {
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
    Ok(())
}
