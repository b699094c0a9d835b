//! A port of the numpy chain `default_rng(seed).integers(0, bound, size, dtype=int64)`:
//! SeedSequence (pool of four u32 words) -> PCG64 (XSL-RR 128/64) -> Lemire bounded draws.
//!
//! Engram derives its per-layer hash multipliers from this chain, so every constant and
//! every branch here must match numpy exactly (`ENGRAM-SPEC.md` section 4).

const POOL_SIZE: usize = 4;
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// numpy's `SeedSequence` for a non-negative integer entropy and no spawn key.
#[derive(Debug, Clone)]
pub struct SeedSequence {
    pool: [u32; POOL_SIZE],
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    /// Seeds from an integer; numpy splits it into little-endian u32 words (0 gives `[0]`).
    pub fn new(entropy: u128) -> Self {
        let mut words = Vec::with_capacity(4);
        let mut e = entropy;
        loop {
            words.push(e as u32);
            e >>= 32;
            if e == 0 {
                break;
            }
        }
        let mut hash_const = INIT_A;
        let mut pool = [0u32; POOL_SIZE];
        for (i, slot) in pool.iter_mut().enumerate() {
            *slot = hashmix(words.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for src in 0..POOL_SIZE {
            for dst in 0..POOL_SIZE {
                if src != dst {
                    let h = hashmix(pool[src], &mut hash_const);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &word in words.iter().skip(POOL_SIZE) {
            for slot in pool.iter_mut() {
                let h = hashmix(word, &mut hash_const);
                *slot = mix(*slot, h);
            }
        }
        Self { pool }
    }

    /// `generate_state(n, uint32)`.
    pub fn generate_state_u32(&self, out: &mut [u32]) {
        let mut hash_const = INIT_B;
        for (i, slot) in out.iter_mut().enumerate() {
            let mut v = self.pool[i % POOL_SIZE] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            *slot = v ^ (v >> XSHIFT);
        }
    }

    /// `generate_state(N, uint64)`: pairs of u32 words, low word first.
    pub fn generate_state_u64<const N: usize>(&self) -> [u64; N] {
        let mut words = vec![0u32; 2 * N];
        self.generate_state_u32(&mut words);
        let mut out = [0u64; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32);
        }
        out
    }
}

const PCG_MULT: u128 = 0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645;

/// numpy's `PCG64` bit generator (XSL-RR 128/64), including its 32-bit half buffer.
#[derive(Debug, Clone)]
pub struct Pcg64 {
    state: u128,
    inc: u128,
    buffered_u32: Option<u32>,
}

impl Pcg64 {
    /// `PCG64(SeedSequence(entropy))`.
    pub fn from_seed_sequence(seq: &SeedSequence) -> Self {
        let [s0, s1, i0, i1] = seq.generate_state_u64::<4>();
        let initstate = (u128::from(s0) << 64) | u128::from(s1);
        let initseq = (u128::from(i0) << 64) | u128::from(i1);
        let mut rng = Self {
            state: 0,
            inc: (initseq << 1) | 1,
            buffered_u32: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let x = ((self.state >> 64) as u64) ^ (self.state as u64);
        x.rotate_right((self.state >> 122) as u32)
    }

    /// Next 32 random bits: the low half of a fresh 64-bit draw, then its high half.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.buffered_u32.take() {
            return v;
        }
        let next = self.next_u64();
        self.buffered_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// numpy `Generator.integers(0, bound)` for one int64 value (`bound` exclusive, >= 1).
    pub fn integer_below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound >= 1, "numpy rejects an empty range before drawing");
        let span = bound.saturating_sub(1);
        if span == 0 {
            0
        } else if span <= u64::from(u32::MAX) {
            u64::from(self.lemire_u32(span as u32))
        } else {
            self.lemire_u64(span)
        }
    }

    fn lemire_u32(&mut self, span: u32) -> u32 {
        if span == u32::MAX {
            return self.next_u32();
        }
        let excl = u64::from(span) + 1;
        let mut m = u64::from(self.next_u32()) * excl;
        let mut leftover = m & u64::from(u32::MAX);
        if leftover < excl {
            let threshold = (u64::from(u32::MAX) - u64::from(span)) % excl;
            while leftover < threshold {
                m = u64::from(self.next_u32()) * excl;
                leftover = m & u64::from(u32::MAX);
            }
        }
        (m >> 32) as u32
    }

    fn lemire_u64(&mut self, span: u64) -> u64 {
        if span == u64::MAX {
            return self.next_u64();
        }
        let excl = span + 1;
        let mut m = u128::from(self.next_u64()) * u128::from(excl);
        let mut leftover = m as u64;
        if leftover < excl {
            let threshold = (u64::MAX - span) % excl;
            while leftover < threshold {
                m = u128::from(self.next_u64()) * u128::from(excl);
                leftover = m as u64;
            }
        }
        (m >> 64) as u64
    }
}

/// `numpy.random.default_rng(seed).integers(0, bound, size=n, dtype=int64)`.
pub fn numpy_integers(seed: u128, bound: u64, n: usize) -> Vec<u64> {
    let mut rng = Pcg64::from_seed_sequence(&SeedSequence::new(seed));
    (0..n).map(|_| rng.integer_below(bound)).collect()
}

/// SplitMix64: a tiny counter-based generator for deterministic synthetic data (row
/// initialisation, benchmark inputs, fault plans, simulations): the workspace's one.
/// Not part of the Engram addressing.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift, no division; bias below 2^-32 for
    /// n < 2^32). 0 for n = 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A generator keyed by several words, so `(seed, layer, row)` streams are independent.
    pub fn keyed(words: &[u64]) -> Self {
        let mut state = 0x6A09_E667_F3BC_C909u64;
        for &w in words {
            state = SplitMix64(state ^ w).next_u64();
        }
        SplitMix64(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Multipliers 2r + 1 from ENGRAM-SPEC.md section 4 (seed 0, V' = 99,092).
    #[test]
    fn spec_multiplier_draws() {
        let half_bound = 46_539_438_283_891;
        let cases: [(u128, [u64; 3]); 4] = [
            (10007, [76632096046245, 4839876093313, 35959672319349]),
            (15 * 10007, [28919099099511, 56020370062535, 53929037264533]),
            (2 * 10007, [76507469730479, 37097805264573, 22647385550623]),
            (14 * 10007, [67716810739261, 51510806800915, 30921347202721]),
        ];
        for (seed, expected) in cases {
            let m: Vec<u64> = numpy_integers(seed, half_bound, 3)
                .into_iter()
                .map(|r| 2 * r + 1)
                .collect();
            assert_eq!(m, expected, "seed {seed}");
        }
    }

    #[test]
    fn bound_one_draws_nothing() {
        assert_eq!(numpy_integers(5, 1, 4), vec![0; 4]);
    }
}
