//! The prefill projection GEMM through the `matrixmultiply` crate (packed, cache-blocked,
//! AVX-512/AVX2/FMA micro-kernels with its own run-time detection).
//!
//! Contract: `sgemm` reads `m x k` values of `a` and `k x n` values of `b` through the
//! given strides and writes `m x n` values of `c`; the wrapper asserts every slice covers
//! the index range its strides address before calling it.
#![allow(unsafe_code)]

/// `c (m, n) = a (m, k) * b^T` where `b` is `(n, k)` row-major (a weight `[out, in]`).
pub fn sgemm_nt(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, c: &mut [f32]) {
    assert!(a.len() >= m * k, "sgemm_nt: a too short");
    assert!(b.len() >= n * k, "sgemm_nt: b too short");
    assert!(c.len() >= m * n, "sgemm_nt: c too short");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: a is read at i*k + t (i < m, t < k), b at j*k + t (j < n, t < k), c written at
    // i*n + j; all inside the slices asserted above. Strides fit isize because the slice
    // lengths do.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}
