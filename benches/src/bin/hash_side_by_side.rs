//! Hashing, Rust fast path vs the numpy formulation of the spec, on the same inputs in one
//! run. The numpy side is an independent implementation (numpy's own generator for the
//! multipliers), so equal checksums also cross-check correctness.
//!
//! Usage: `scripts/bench-hash.sh` (sets up numpy), or
//! `ENGRAM_PYTHON=python3 cargo run --release -p engram-benches --bin hash_side_by_side`.

use std::process::Command;
use std::time::Instant;

use engram_benches::{canonical_ids, deepseek_layout, naive_head_indices};
use engram_kernels::EngramConfig;
use engram_kernels::hash::{HashOptions, HashOutput, NgramHasher};

const REPEATS: usize = 20;

const USAGE: &str = "\
Usage: hash_side_by_side

Hashes the same token ids with the Rust fast path, the naive reference and numpy's
formulation of the spec (an independent implementation), demo and V4.1 shapes, one core,
best of 20 runs each; prints ids/s and checksums (equal checksums cross-check correctness).
Needs python3 with numpy (ENGRAM_PYTHON names another interpreter): scripts/bench-hash.sh
sets it up and builds this in release.";

fn checksum(out: &[u64]) -> u64 {
    out.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        acc.wrapping_add(x.wrapping_mul(i as u64 + 1))
    })
}

fn best_of(mut f: impl FnMut()) -> f64 {
    (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    engram_benches::exit_on_help(&args, USAGE);
    if let Some(a) = args.first() {
        engram_benches::exit_usage(&format!("unexpected argument {a:?}"), USAGE);
    }
    let python = std::env::var("ENGRAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/hash_numpy.py");
    let output = Command::new(&python).arg(script).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{python} {script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let numpy: Vec<serde_json::Value> = String::from_utf8(output.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;

    println!(
        "{:<5} {:>8} {:>14} {:>14} {:>14} {:>9} {:>9}  checksum",
        "shape", "batch", "fast Mrow/s", "naive Mrow/s", "numpy Mrow/s", "x naive", "x numpy"
    );
    let mut all_match = true;
    for row in &numpy {
        let shape = row["shape"].as_str().unwrap_or_default();
        let config = match shape {
            "demo" => EngramConfig::demo(),
            "v41" => EngramConfig::v41(),
            other => anyhow::bail!("unknown shape {other:?} from the numpy script"),
        };
        let batch = row["batch"].as_u64().unwrap_or(0) as usize;
        let seq = row["seq"].as_u64().unwrap_or(0) as usize;
        let layout = deepseek_layout(&config);
        let hasher = NgramHasher::new(&layout, HashOptions::default())?;
        let ids = canonical_ids(batch, seq, 42);
        let mut out = vec![0u64; batch * seq * hasher.n_hash_heads()];
        let fast = best_of(|| {
            hasher
                .hash_into(0, &ids, batch, seq, HashOutput::HeadIndex, &mut out)
                .expect("shapes agree");
        });
        let naive = best_of(|| {
            std::hint::black_box(naive_head_indices(&layout, &ids, batch, seq));
        });
        let rows = out.len() as f64;
        let np_secs = row["seconds"].as_f64().unwrap_or(f64::NAN);
        let same = row["checksum"].as_u64() == Some(checksum(&out));
        all_match &= same;
        println!(
            "{shape:<5} {:>8} {:>14.1} {:>14.1} {:>14.1} {:>9.2} {:>9.1}  {}",
            format!("{batch}x{seq}"),
            rows / fast / 1e6,
            rows / naive / 1e6,
            rows / np_secs / 1e6,
            naive / fast,
            np_secs / fast,
            if same { "equal" } else { "DIFFERENT" }
        );
    }
    anyhow::ensure!(all_match, "numpy and Rust disagree on some head indices");
    Ok(())
}
