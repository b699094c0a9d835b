//! Shared helpers for the benchmarks and side-by-side harnesses.

use engram_kernels::rng::SplitMix64;
use engram_kernels::{EngramConfig, EngramLayout};

/// Canonical ids for a `[batch][seq]` benchmark input, uniform over the DeepSeek V'.
pub fn canonical_ids(batch: usize, seq: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64(seed);
    (0..batch * seq).map(|_| rng.below(99_092) as i64).collect()
}

/// The layout of a published shape with the DeepSeek V' = 99,092 and pad' = 2.
pub fn deepseek_layout(config: &EngramConfig) -> EngramLayout {
    match EngramLayout::new(config, 99_092, 2) {
        Ok(l) => l,
        Err(e) => unreachable!("published presets are valid: {e}"),
    }
}

/// The naive reference's head indices of layer 0, the baseline every hashing bench runs.
pub fn naive_head_indices(
    layout: &EngramLayout,
    ids: &[i64],
    batch: usize,
    seq: usize,
) -> Vec<u64> {
    engram_kernels::reference::head_indices(
        &layout.layers[0],
        layout.config.max_ngram,
        layout.config.n_heads,
        layout.compressed_pad_id,
        None,
        ids,
        batch,
        seq,
    )
}

/// `-h` or `--help` among `args`: prints `usage` on stdout and exits with status 0 (before
/// any work starts).
pub fn exit_on_help(args: &[String], usage: &str) {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        std::process::exit(0);
    }
}

/// Bad arguments: `why` and `usage` on stderr, exit status 2 (no error chain, no backtrace).
pub fn exit_usage(why: &str, usage: &str) -> ! {
    eprintln!("error: {why}\n\n{usage}");
    std::process::exit(2);
}
