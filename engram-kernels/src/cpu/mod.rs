//! CPU kernels with run-time SIMD dispatch.
//!
//! Every routine has a portable scalar version, always compiled and used on any machine
//! (and when `ENGRAM_FORCE_SCALAR=1`); on x86-64 the AVX2+FMA and AVX-512F versions in
//! [`x86_64`] are selected once, at first use, from `is_x86_feature_detected!`. All versions
//! compute the same sums in different orders, so they agree to rounding (property-tested).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// The instruction-set level the kernels run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Portable Rust (whatever the compile target allows).
    Scalar,
    /// x86-64 AVX2 + FMA.
    Avx2,
    /// x86-64 AVX-512F + BW.
    Avx512,
}

impl SimdLevel {
    /// A short name for logs and benchmark labels.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

/// Environment variable that forces the scalar kernels (`1` / `true`).
pub const FORCE_SCALAR_ENV: &str = "ENGRAM_FORCE_SCALAR";

fn detect() -> SimdLevel {
    let forced = std::env::var(FORCE_SCALAR_ENV)
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    if forced {
        tracing::info!("{FORCE_SCALAR_ENV} set: using scalar CPU kernels");
        return SimdLevel::Scalar;
    }
    let level = best_supported();
    tracing::debug!(level = level.name(), "CPU kernel level");
    level
}

/// The best level this CPU supports, ignoring the environment.
pub fn best_supported() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Scalar
}

// 0: no override; otherwise 1 + the level's index.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels run at: the override from [`set_level`] if any, else the one
/// detected once for this process (honouring `ENGRAM_FORCE_SCALAR`).
pub fn level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => SimdLevel::Scalar,
        2 => SimdLevel::Avx2,
        3 => SimdLevel::Avx512,
        _ => *LEVEL.get_or_init(detect),
    }
}

/// Overrides the level process-wide (tests and benchmarks that compare paths); `None`
/// returns to the detected level. A level this CPU lacks is an error. Every level computes
/// the same results to rounding, so switching while other threads run kernels is safe.
pub fn set_level(l: Option<SimdLevel>) -> crate::Result<()> {
    let code = match l {
        None => 0,
        Some(l) if !supported(l) => {
            return Err(crate::Error::Unavailable {
                what: "SIMD level",
                reason: format!("this CPU does not support {}", l.name()),
            });
        }
        Some(SimdLevel::Scalar) => 1,
        Some(SimdLevel::Avx2) => 2,
        Some(SimdLevel::Avx512) => 3,
    };
    OVERRIDE.store(code, Ordering::Relaxed);
    Ok(())
}

/// Whether `l` can run here (for tests that exercise every path).
pub fn supported(l: SimdLevel) -> bool {
    l <= best_supported()
}

const LANES: usize = 16;

/// `sum_i a_i * b_i`, 16 independent partial sums (vectorisable on any target).
#[inline]
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum_i a_i * b_i * c_i`.
#[inline]
pub fn dot3_scalar(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for base in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += a[base + l] * b[base + l] * c[base + l];
        }
    }
    let mut tail = 0f32;
    for i in full..n {
        tail += a[i] * b[i] * c[i];
    }
    acc.iter().sum::<f32>() + tail
}

/// `C^T = (A B^T)^T`: `a` is `(m, k)`, `b` is `(n, k)`, both row-major with contiguous
/// rows, `ct` is `(n, m)`: `ct[j * m + i] = dot(a_i, b_j)`.
pub fn gemm_nt_t_scalar(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, ct: &mut [f32]) {
    for j in 0..n {
        let bj = &b[j * k..(j + 1) * k];
        for i in 0..m {
            ct[j * m + i] = dot_scalar(&a[i * k..(i + 1) * k], bj);
        }
    }
}

/// `sum_i a_i * b_i` at the process's level.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_at(level(), a, b)
}

/// `sum_i a_i * b_i` at level `l` (falls back to scalar if `l` is not supported here).
#[inline]
pub fn dot_at(l: SimdLevel, a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if l == SimdLevel::Avx512 && supported(l) {
            return x86_64::dot_avx512(a, b);
        }
        if l >= SimdLevel::Avx2 && supported(SimdLevel::Avx2) {
            return x86_64::dot_avx2(a, b);
        }
    }
    let _ = l;
    dot_scalar(a, b)
}

/// `sum_i a_i^2`.
#[inline]
pub fn sumsq(a: &[f32]) -> f32 {
    dot(a, a)
}

/// `sum_i a_i * b_i * c_i` at the process's level.
#[inline]
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        let l = level();
        if l == SimdLevel::Avx512 {
            return x86_64::dot3_avx512(a, b, c);
        }
    }
    dot3_scalar(a, b, c)
}

/// [`gemm_nt_t_scalar`] at level `l`. Panics are impossible by construction: lengths are
/// checked with `assert!` (programmer error) before any unchecked access.
pub fn gemm_nt_t_at(
    l: SimdLevel,
    a: &[f32],
    m: usize,
    b: &[f32],
    n: usize,
    k: usize,
    ct: &mut [f32],
) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && ct.len() >= n * m,
        "gemm_nt_t shapes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if l == SimdLevel::Avx512 && supported(l) {
            return x86_64::gemm_nt_t_avx512(a, m, b, n, k, ct);
        }
        if l >= SimdLevel::Avx2 && supported(SimdLevel::Avx2) {
            return x86_64::gemm_nt_t_avx2(a, m, b, n, k, ct);
        }
    }
    let _ = l;
    gemm_nt_t_scalar(a, m, b, n, k, ct)
}

/// [`gemm_nt_t_at`] at the process's level.
#[inline]
pub fn gemm_nt_t(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, ct: &mut [f32]) {
    gemm_nt_t_at(level(), a, m, b, n, k, ct)
}

/// `e^x` for f32, branch-free so it vectorises (Cephes `expf`: range reduction by ln 2 in
/// two parts, degree-6 polynomial, exponent by bit construction; about 1 ulp). Inputs are
/// clamped to `[-87.3, 88]`, so the result is always finite and normal; NaN propagates.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.33654, 88.0);
    let fx = (xc * LOG2E).round_ties_even();
    let r = xc - fx * C1 - fx * C2;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_2e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    let y = y * r * r + r + 1.0;
    let pow2 = f32::from_bits((((fx as i32) + 127) as u32) << 23);
    let out = y * pow2;
    if x.is_nan() { x } else { out }
}

/// `y[i] = alpha v[i] + SiLU(y[i])` (the module's last step, in place over the
/// convolution pre-activations), with [`exp_f32`].
#[inline(always)]
pub fn silu_residual_generic(y: &mut [f32], alpha: f32, v: &[f32]) {
    for (yo, &vi) in y.iter_mut().zip(v) {
        let z = *yo;
        *yo = alpha * vi + z / (1.0 + exp_f32(-z));
    }
}

/// [`silu_residual_generic`] at the process's level.
#[inline]
pub fn silu_residual(y: &mut [f32], alpha: f32, v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            SimdLevel::Avx512 => return x86_64::silu_residual_avx512(y, alpha, v),
            SimdLevel::Avx2 => return x86_64::silu_residual_avx2(y, alpha, v),
            SimdLevel::Scalar => {}
        }
    }
    silu_residual_generic(y, alpha, v)
}

/// One FP8 E4M3 row with E8M0 block scales, at the process's level (the same exact
/// arithmetic, vectorised for the level).
#[inline]
pub fn dequant_fp8_row(row: &[u8], block: usize, out: &mut [f32]) -> crate::Result<()> {
    #[cfg(target_arch = "x86_64")]
    {
        match level() {
            SimdLevel::Avx512 => return x86_64::dequant_fp8_row_avx512(row, block, out),
            SimdLevel::Avx2 => return x86_64::dequant_fp8_row_avx2(row, block, out),
            SimdLevel::Scalar => {}
        }
    }
    crate::quant::dequant_fp8_row(row, block, out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn naive(a: &[f32], m: usize, b: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; n * m];
        for j in 0..n {
            for i in 0..m {
                out[j * m + i] = (0..k)
                    .map(|t| f64::from(a[i * k + t]) * f64::from(b[j * k + t]))
                    .sum();
            }
        }
        out
    }

    #[test]
    fn exp_and_silu_accuracy() {
        let mut x = -100.0f32;
        while x < 100.0 {
            let e = f64::from(x).exp();
            let g = f64::from(exp_f32(x));
            if (-87.0..88.0).contains(&x) {
                assert!((g - e).abs() <= 3e-7 * e, "exp({x}) = {g}, want {e}");
            }
            assert!(g.is_finite() && g > 0.0);
            let mut y = [x];
            silu_residual(&mut y, 0.0, &[0.0]);
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            assert!(
                (f64::from(y[0]) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({x})"
            );
            let mut y2 = [x];
            silu_residual_generic(&mut y2, 0.0, &[0.0]);
            assert!((f64::from(y2[0]) - want).abs() <= 1e-6 * (1.0 + want.abs()));
            x += 0.0137;
        }
        assert!(exp_f32(f32::NAN).is_nan());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn gemm_levels_agree(m in 1usize..9, n in 1usize..11, k in 1usize..70, seed in any::<u64>()) {
            let mut s = seed;
            let mut next = || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32) / (1u64 << 24) as f32 - 0.5
            };
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let exp = naive(&a, m, &b, n, k);
            for l in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
                if !supported(l) { continue; }
                let mut ct = vec![0f32; n * m];
                gemm_nt_t_at(l, &a, m, &b, n, k, &mut ct);
                for (g, e) in ct.iter().zip(&exp) {
                    prop_assert!((f64::from(*g) - e).abs() <= 1e-5 * (1.0 + e.abs()), "{:?} {} {}", l, g, e);
                }
                let d = dot_at(l, &a[..k], &b[..k]);
                prop_assert!((f64::from(d) - exp[0]).abs() <= 1e-5 * (1.0 + exp[0].abs()));
            }
            let c: Vec<f32> = (0..k).map(|_| next()).collect();
            let e3: f64 = (0..k).map(|i| f64::from(a[i]) * f64::from(b[i]) * f64::from(c[i])).sum();
            prop_assert!((f64::from(dot3(&a[..k], &b[..k], &c)) - e3).abs() <= 1e-5);
            prop_assert!((f64::from(dot3_scalar(&a[..k], &b[..k], &c)) - e3).abs() <= 1e-5);
        }
    }
}
