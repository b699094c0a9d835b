//! The context-aware gate (`ENGRAM-SPEC.md` section 8, conformance README steps 4-8):
//! RMSNorm, score, signed square root, sigmoid.

/// Epsilon of the key and query RMSNorms in float32: the reference builds them without an
/// eps, so PyTorch uses the machine epsilon of the dtype (2^-23).
pub const KEY_NORM_EPS_F32: f32 = f32::EPSILON;
/// Epsilon of the RMSNorm before the short convolution.
pub const CONV_NORM_EPS: f32 = 1e-5;
/// Lower clamp of `|s|` under the signed square root.
pub const SCORE_CLAMP_MIN: f32 = 1e-6;

/// `1 / sqrt(mean(x^2) + eps)` from the sum of squares over `len` values.
#[inline]
pub fn rms_inv(sumsq: f32, len: usize, eps: f32) -> f32 {
    1.0 / (sumsq / len as f32 + eps).sqrt()
}

/// `sign(s) * sqrt(max(|s|, 1e-6))`, with `sign(0) = 0` (so `s = 0` gives 0).
#[inline]
pub fn gate_logit(s: f32) -> f32 {
    if s == 0.0 {
        0.0
    } else if s.is_nan() {
        f32::NAN
    } else {
        s.signum() * s.abs().max(SCORE_CLAMP_MIN).sqrt()
    }
}

/// `1 / (1 + exp(-x))`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `z * sigmoid(z)`.
#[inline]
pub fn silu(z: f32) -> f32 {
    z * sigmoid(z)
}

/// The gate of one branch from its raw score.
#[inline]
pub fn alpha(s: f32) -> f32 {
    sigmoid(gate_logit(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_edges() {
        assert_eq!(gate_logit(0.0), 0.0);
        assert_eq!(alpha(0.0), 0.5);
        assert!((gate_logit(1e-9) - 1e-3).abs() < 1e-9);
        assert!((gate_logit(-1e-9) + 1e-3).abs() < 1e-9);
        assert_eq!(gate_logit(4.0), 2.0);
        assert_eq!(gate_logit(-4.0), -2.0);
        assert!(gate_logit(f32::NAN).is_nan());
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
    }
}
