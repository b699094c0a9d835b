//! Division-free floor modulo by a fixed divisor (the branch-free libdivide scheme).
//!
//! A 64-bit `div` costs tens of cycles; every hash head needs one `mod p` per position.
//! With a precomputed 64-bit magic number the remainder is one widening multiply, a few
//! adds and shifts and one multiply-subtract, exact for every 64-bit numerator.

/// A divisor `d >= 2` prepared for fast unsigned and floor (Euclidean) remainders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastMod {
    d: u64,
    magic: u64,
    shift: u32,
    /// `2^64 mod d`: the correction for reinterpreting a negative i64 as u64.
    wrap_correction: u64,
}

impl FastMod {
    /// Prepares `d`; `None` for `d < 2` (a modulus of 1 is always 0 and needs no table).
    pub fn new(d: u64) -> Option<Self> {
        if d < 2 {
            return None;
        }
        let floor_log2 = 63 - d.leading_zeros();
        let wrap_correction = ((1u128 << 64) % u128::from(d)) as u64;
        if d.is_power_of_two() {
            // magic 0: q = 0, t = n >> 1, and the shift is one less.
            return Some(Self {
                d,
                magic: 0,
                shift: floor_log2 - 1,
                wrap_correction,
            });
        }
        // (2^floor_log2 * 2^64) / d fits in 64 bits because d >= 2^floor_log2.
        let num = 1u128 << (64 + floor_log2);
        let mut proposed = (num / u128::from(d)) as u64;
        let rem = (num % u128::from(d)) as u64;
        proposed = proposed.wrapping_add(proposed);
        let twice_rem = rem.wrapping_add(rem);
        if twice_rem >= d || twice_rem < rem {
            proposed = proposed.wrapping_add(1);
        }
        Some(Self {
            d,
            magic: proposed.wrapping_add(1),
            shift: floor_log2,
            wrap_correction,
        })
    }

    /// The divisor.
    #[inline]
    pub fn divisor(&self) -> u64 {
        self.d
    }

    /// `n / d`.
    #[inline(always)]
    pub fn div_u64(&self, n: u64) -> u64 {
        let q = ((u128::from(self.magic) * u128::from(n)) >> 64) as u64;
        let t = ((n - q) >> 1) + q;
        t >> self.shift
    }

    /// `n % d`.
    #[inline(always)]
    pub fn rem_u64(&self, n: u64) -> u64 {
        n - self.div_u64(n) * self.d
    }

    /// `n.rem_euclid(d)` for signed `n`: always in `[0, d)`.
    #[inline(always)]
    pub fn rem_euclid_i64(&self, n: i64) -> u64 {
        let r = self.rem_u64(n as u64);
        if n >= 0 {
            r
        } else if r >= self.wrap_correction {
            r - self.wrap_correction
        } else {
            r + (self.d - self.wrap_correction)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn edges() {
        for d in [
            2u64,
            3,
            4,
            7,
            256,
            1 << 63,
            646_403,
            (1 << 62) + 135,
            u64::MAX - 58,
            u64::MAX,
        ] {
            let f = FastMod::new(d).expect("d >= 2");
            for n in [
                0u64,
                1,
                d - 1,
                d,
                d.wrapping_add(1),
                u64::MAX,
                u64::MAX - 1,
                1 << 63,
            ] {
                assert_eq!(f.rem_u64(n), n % d, "{n} % {d}");
            }
            for n in [
                i64::MIN,
                -1,
                0,
                1,
                i64::MAX,
                (d as i64).wrapping_abs().wrapping_neg(),
            ] {
                assert_eq!(
                    u128::from(f.rem_euclid_i64(n)),
                    i128::from(n).rem_euclid(i128::from(d)) as u128,
                    "{n} mod {d}"
                );
            }
        }
        assert!(FastMod::new(1).is_none());
        assert!(FastMod::new(0).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn matches_hardware_division(d in 2u64.., n in any::<u64>(), s in any::<i64>()) {
            let f = FastMod::new(d).expect("d >= 2");
            prop_assert_eq!(f.div_u64(n), n / d);
            prop_assert_eq!(f.rem_u64(n), n % d);
            prop_assert_eq!(
                i128::from(f.rem_euclid_i64(s)),
                i128::from(s).rem_euclid(i128::from(d))
            );
        }

        #[test]
        fn small_divisors(d in 2u64..5000, n in any::<u64>()) {
            let f = FastMod::new(d).expect("d >= 2");
            prop_assert_eq!(f.rem_u64(n), n % d);
        }
    }
}
