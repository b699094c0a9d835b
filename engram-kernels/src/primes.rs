//! Deterministic primality for 64-bit integers and the Engram rule for table sizes.

use std::collections::HashSet;

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1u64 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// Miller-Rabin with the first twelve prime bases: exact for every `n < 2^64`.
pub fn is_prime(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'witness: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// The smallest prime `> after` that is not in `used`; `None` if it would exceed `u64`.
pub fn next_unused_prime(after: u64, used: &HashSet<u64>) -> Option<u64> {
    let mut candidate = after.checked_add(1)?;
    loop {
        if is_prime(candidate) && !used.contains(&candidate) {
            return Some(candidate);
        }
        candidate = candidate.checked_add(1)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_trial_division_below_100k() {
        let naive = |n: u64| {
            n >= 2
                && (2..)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        for n in 0..100_000 {
            assert_eq!(is_prime(n), naive(n), "n = {n}");
        }
    }

    #[test]
    fn known_large_values() {
        assert!(is_prime(18_446_744_073_709_551_557)); // largest prime below 2^64
        assert!(!is_prime(3_215_031_751)); // strong pseudoprime to bases 2, 3, 5, 7
        assert!(!is_prime(3_825_123_056_546_413_051)); // strong pseudoprime to bases 2..23
        assert!(is_prime(646_403));
    }

    #[test]
    fn demo_primes() {
        let mut used = HashSet::new();
        let mut cursor = 646_400 - 1;
        let mut got = Vec::new();
        for _ in 0..8 {
            let p = next_unused_prime(cursor, &used).expect("below u64::MAX");
            used.insert(p);
            cursor = p;
            got.push(p);
        }
        assert_eq!(
            got,
            [
                646403, 646411, 646421, 646423, 646433, 646453, 646519, 646523
            ]
        );
    }
}
