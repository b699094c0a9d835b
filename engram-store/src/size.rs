//! Sizes as the command lines take them: `4096`, `64K`, `512M`, `2G`, `1T` (binary
//! multiples), `1.5G`.

use crate::error::{Error, Result};

/// Parses `123`, `64K`, `512M`, `2G`, `1T` (binary multiples) or `1.5G`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => 0,
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| Error::Invalid {
        what: "byte size",
        reason: format!("{s:?}: expected e.g. 4096, 64K, 512M, 2G"),
    })?;
    if mult == 0 || !(v.is_finite() && v >= 0.0) {
        return Err(Error::Invalid {
            what: "byte size",
            reason: format!("{s:?}: expected e.g. 4096, 64K, 512M, 2G"),
        });
    }
    let bytes = v * mult as f64;
    // 2^64 as f64; `as u64` would saturate silently above it.
    if bytes >= 18_446_744_073_709_551_616.0 {
        return Err(Error::Invalid {
            what: "byte size",
            reason: format!("{s:?} is 2^64 bytes or more"),
        });
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_or_fail_never_saturate() {
        assert_eq!(parse_bytes("4096").ok(), Some(4096));
        assert_eq!(parse_bytes("64K").ok(), Some(64 << 10));
        assert_eq!(parse_bytes("16T").ok(), Some(16 << 40));
        for bad in ["", "-1", "nan", "1X", "16777216T", "1e30G"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
