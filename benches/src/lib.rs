//! Shared helpers for the benchmarks and side-by-side harnesses.

use engram_kernels::{EngramConfig, EngramLayout};

/// A small deterministic generator (SplitMix64) so every harness and its Python
/// counterpart can be fed the same inputs.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (slightly biased; fine for benchmark inputs).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

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
