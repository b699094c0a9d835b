//! Sampling: greedy, or temperature with top-k and top-p, from a seeded generator. The
//! unknown id is never sampled.

use engram_kernels::rng::SplitMix64;

use crate::error::{Error, Result};

/// Sampler settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely ids (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1.0: all).
    pub top_p: f32,
    /// Seed of the sampling RNG (unused when greedy).
    pub seed: u64,
}

impl SamplerConfig {
    /// Checks the settings: temperature finite and >= 0, top_p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!(
                "temperature {} must be finite and >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A sampler with its own generator and scratch.
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    rng: SplitMix64,
    banned: u32,
    order: Vec<(f32, u32)>,
}

impl Sampler {
    /// Validates the settings; `banned` (the unknown id) is never returned.
    pub fn new(config: SamplerConfig, banned: u32, vocab: usize) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            rng: SplitMix64(config.seed),
            banned,
            order: Vec::with_capacity(vocab),
        })
    }

    /// Picks the next id from `logits`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let banned = self.banned as usize;
        if self.config.temperature == 0.0 {
            let mut best = usize::MAX;
            for (i, &l) in logits.iter().enumerate() {
                if i != banned && (best == usize::MAX || l > logits[best]) {
                    best = i;
                }
            }
            return best as u32;
        }
        self.order.clear();
        self.order.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != banned)
                .map(|(i, &l)| (l, i as u32)),
        );
        self.order
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if self.config.top_k > 0 {
            self.order.truncate(self.config.top_k);
        }
        // Shift by the largest logit before dividing by the temperature: `(l - max) / t` is
        // <= 0 for every t > 0 (-inf at worst, whose exp is 0), whereas `l * (1 / t)`
        // overflows to +-inf for a subnormal t and turns the softmax into NaN.
        let max = self.order.first().map_or(0.0, |p| p.0);
        let t = self.config.temperature;
        let mut sum = 0.0f32;
        for p in &mut self.order {
            p.0 = ((p.0 - max) / t).exp();
            sum += p.0;
        }
        let mut kept = 0.0f32;
        let mut cut = self.order.len();
        for (i, p) in self.order.iter_mut().enumerate() {
            p.0 /= sum;
            kept += p.0;
            if kept >= self.config.top_p {
                cut = i + 1;
                break;
            }
        }
        self.order.truncate(cut);
        let total: f32 = self.order.iter().map(|p| p.0).sum();
        let r = self.rng.next_f64() as f32 * total;
        let mut acc = 0.0;
        for p in &self.order {
            acc += p.0;
            if r < acc {
                return p.1;
            }
        }
        self.order.last().map_or(0, |p| p.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_skips_the_banned_id() {
        let mut s = Sampler::new(SamplerConfig::default(), 2, 4).expect("valid");
        assert_eq!(s.sample(&[0.1, 0.5, 9.0, 0.2]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 9,
        };
        let logits = [1.0, 3.0, 2.9, -1.0, 0.0];
        let draw = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg }, 4, 5).expect("valid");
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(9);
        assert_eq!(a, draw(9));
        assert!(a.iter().all(|&x| x == 1 || x == 2));
        assert!(Sampler::new(SamplerConfig { top_p: 0.0, ..cfg }, 0, 5).is_err());
        assert!(
            Sampler::new(
                SamplerConfig {
                    top_p: f32::NAN,
                    ..cfg
                },
                0,
                5
            )
            .is_err()
        );
        assert!(
            Sampler::new(
                SamplerConfig {
                    temperature: -1.0,
                    ..cfg
                },
                0,
                5
            )
            .is_err()
        );
    }

    #[test]
    fn tiny_temperatures_sample_the_argmax() {
        // 1e-45 is subnormal in f32: 1 / t overflows to inf. Any t > 0 must still give a
        // valid distribution; a tiny one puts all the mass on the largest logit.
        let logits = [0.0, 3.0, -2.0, 2.999, 0.0, -1e30];
        for t in [1e-45f32, f32::MIN_POSITIVE, 1e-30, 1e-8] {
            let cfg = SamplerConfig {
                temperature: t,
                seed: 3,
                ..SamplerConfig::default()
            };
            let mut s = Sampler::new(cfg, 4, logits.len()).expect("valid");
            for _ in 0..100 {
                assert_eq!(s.sample(&logits), 1, "temperature {t}");
            }
        }
        // Very large temperatures are uniform, not NaN: every id is still a real id.
        let cfg = SamplerConfig {
            temperature: 1e30,
            seed: 3,
            ..SamplerConfig::default()
        };
        let mut s = Sampler::new(cfg, 4, logits.len()).expect("valid");
        let mut seen = [false; 6];
        for _ in 0..400 {
            seen[s.sample(&logits) as usize] = true;
        }
        assert_eq!(seen, [true, true, true, true, false, true]);
    }
}
