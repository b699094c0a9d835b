//! AVX2+FMA and AVX-512F kernels.
//!
//! Contract: every `unsafe fn` here is `#[target_feature]` and may only be called after the
//! matching `is_x86_feature_detected!` check (the safe wrappers below do it through
//! [`super::supported`]); slice lengths are checked by the safe wrappers or by the caller
//! (`gemm_nt_t_at` asserts them) before any unchecked pointer read. Loads are unaligned
//! (`loadu`) so no alignment is assumed.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{SimdLevel, supported};

/// Safe wrapper: AVX2 dot product (scalar if AVX2/FMA are missing).
pub fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    if !supported(SimdLevel::Avx2) {
        return super::dot_scalar(a, b);
    }
    let n = a.len().min(b.len());
    // SAFETY: AVX2 and FMA were detected; pointers cover `n` elements of both slices.
    unsafe { dot_avx2_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// Safe wrapper: AVX-512 dot product.
pub fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    if !supported(SimdLevel::Avx512) {
        return super::dot_scalar(a, b);
    }
    let n = a.len().min(b.len());
    // SAFETY: AVX-512F was detected; pointers cover `n` elements of both slices.
    unsafe { dot_avx512_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// Safe wrapper: AVX-512 three-way dot product.
pub fn dot3_avx512(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    if !supported(SimdLevel::Avx512) {
        return super::dot3_scalar(a, b, c);
    }
    let n = a.len().min(b.len()).min(c.len());
    // SAFETY: AVX-512F was detected; pointers cover `n` elements of all three slices.
    unsafe { dot3_avx512_raw(a.as_ptr(), b.as_ptr(), c.as_ptr(), n) }
}

/// FP8 row decode compiled for AVX-512 (the body is `quant::dequant_fp8_row`, inlined).
pub fn dequant_fp8_row_avx512(row: &[u8], block: usize, out: &mut [f32]) -> crate::Result<()> {
    if !supported(SimdLevel::Avx512) {
        return crate::quant::dequant_fp8_row(row, block, out);
    }
    // SAFETY: AVX-512F/BW were detected; the body is safe Rust.
    unsafe { fp8_row_512(row, block, out) }
}

/// FP8 row decode compiled for AVX2.
pub fn dequant_fp8_row_avx2(row: &[u8], block: usize, out: &mut [f32]) -> crate::Result<()> {
    if !supported(SimdLevel::Avx2) {
        return crate::quant::dequant_fp8_row(row, block, out);
    }
    // SAFETY: AVX2 was detected; the body is safe Rust.
    unsafe { fp8_row_256(row, block, out) }
}

/// SiLU + residual compiled for AVX-512.
pub fn silu_residual_avx512(y: &mut [f32], alpha: f32, v: &[f32]) {
    if !supported(SimdLevel::Avx512) {
        return super::silu_residual_generic(y, alpha, v);
    }
    // SAFETY: AVX-512F/BW were detected; the body is safe Rust.
    unsafe { silu_512(y, alpha, v) }
}

/// SiLU + residual compiled for AVX2.
pub fn silu_residual_avx2(y: &mut [f32], alpha: f32, v: &[f32]) {
    if !supported(SimdLevel::Avx2) {
        return super::silu_residual_generic(y, alpha, v);
    }
    // SAFETY: AVX2 and FMA were detected; the body is safe Rust.
    unsafe { silu_256(y, alpha, v) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn silu_512(y: &mut [f32], alpha: f32, v: &[f32]) {
    super::silu_residual_generic(y, alpha, v)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn silu_256(y: &mut [f32], alpha: f32, v: &[f32]) {
    super::silu_residual_generic(y, alpha, v)
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn fp8_row_512(row: &[u8], block: usize, out: &mut [f32]) -> crate::Result<()> {
    crate::quant::dequant_fp8_row(row, block, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fp8_row_256(row: &[u8], block: usize, out: &mut [f32]) -> crate::Result<()> {
    crate::quant::dequant_fp8_row(row, block, out)
}

#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, inside both slices.
        unsafe {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.add(i + 8)),
                _mm256_loadu_ps(b.add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    let mut s = hsum256(_mm256_add_ps(acc0, acc1));
    while i < n {
        // SAFETY: i < n.
        unsafe { s += *a.add(i) * *b.add(i) };
        i += 1;
    }
    s
}

#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512_raw(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n.
        unsafe {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(i + 16)),
                _mm512_loadu_ps(b.add(i + 16)),
                acc1,
            );
        }
        i += 32;
    }
    while i < n {
        let rem = (n - i).min(16);
        let mask: __mmask16 = ((1u32 << rem) - 1) as __mmask16;
        // SAFETY: masked loads touch only lanes < rem, i.e. indices < n.
        unsafe {
            acc0 = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(mask, a.add(i)),
                _mm512_maskz_loadu_ps(mask, b.add(i)),
                acc0,
            );
        }
        i += rem;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

#[target_feature(enable = "avx512f")]
unsafe fn dot3_avx512_raw(a: *const f32, b: *const f32, c: *const f32, n: usize) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let rem = (n - i).min(16);
        let mask: __mmask16 = ((1u32 << rem) - 1) as __mmask16;
        // SAFETY: masked loads touch only indices < n.
        unsafe {
            let ab = _mm512_mul_ps(
                _mm512_maskz_loadu_ps(mask, a.add(i)),
                _mm512_maskz_loadu_ps(mask, b.add(i)),
            );
            acc = _mm512_fmadd_ps(ab, _mm512_maskz_loadu_ps(mask, c.add(i)), acc);
        }
        i += rem;
    }
    _mm512_reduce_add_ps(acc)
}

/// AVX-512 `ct = (a b^T)^T`; shapes as in [`super::gemm_nt_t_scalar`], checked by the caller.
pub fn gemm_nt_t_avx512(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, ct: &mut [f32]) {
    assert!(supported(SimdLevel::Avx512));
    assert!(a.len() >= m * k && b.len() >= n * k && ct.len() >= n * m);
    // SAFETY: feature detected; lengths asserted above.
    unsafe { gemm_nt_t_avx512_raw(a.as_ptr(), m, b.as_ptr(), n, k, ct.as_mut_ptr()) }
}

/// AVX2 `ct = (a b^T)^T`.
pub fn gemm_nt_t_avx2(a: &[f32], m: usize, b: &[f32], n: usize, k: usize, ct: &mut [f32]) {
    assert!(supported(SimdLevel::Avx2));
    assert!(a.len() >= m * k && b.len() >= n * k && ct.len() >= n * m);
    // SAFETY: feature detected; lengths asserted above.
    unsafe { gemm_nt_t_avx2_raw(a.as_ptr(), m, b.as_ptr(), n, k, ct.as_mut_ptr()) }
}

/// Register tile of `R` rows of `a` by `C` rows of `b`, full `k`; returns the `R x C` dots.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile512<const R: usize, const C: usize>(
    a: *const f32,
    b: *const f32,
    k: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut t = 0;
    while t < k {
        let rem = (k - t).min(16);
        let mask: __mmask16 = ((1u32 << rem) - 1) as __mmask16;
        let mut bv = [_mm512_setzero_ps(); C];
        for (c, v) in bv.iter_mut().enumerate() {
            // SAFETY: row c of b has k elements; lanes >= rem are masked off.
            *v = unsafe { _mm512_maskz_loadu_ps(mask, b.add(c * k + t)) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of a has k elements; lanes >= rem are masked off.
            let av = unsafe { _mm512_maskz_loadu_ps(mask, a.add(r * k + t)) };
            for (c, x) in row.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(av, bv[c], *x);
            }
        }
        t += rem;
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(acc[r][c]);
        }
    }
    out
}

#[target_feature(enable = "avx512f")]
unsafe fn gemm_nt_t_avx512_raw(
    a: *const f32,
    m: usize,
    b: *const f32,
    n: usize,
    k: usize,
    ct: *mut f32,
) {
    let mut j = 0;
    while j < n {
        let cols = (n - j).min(4);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(4);
            // SAFETY: rows i..i+rows of a and j..j+cols of b are inside the (asserted)
            // slices; every write index (j+c)*m + (i+r) < n*m.
            unsafe {
                let pa = a.add(i * k);
                let pb = b.add(j * k);
                match (rows, cols) {
                    (4, 4) => store(ct, m, i, j, tile512::<4, 4>(pa, pb, k)),
                    (4, _) => {
                        for c in 0..cols {
                            store(ct, m, i, j + c, tile512::<4, 1>(pa, pb.add(c * k), k));
                        }
                    }
                    (_, 4) => {
                        for r in 0..rows {
                            store(ct, m, i + r, j, tile512::<1, 4>(pa.add(r * k), pb, k));
                        }
                    }
                    _ => {
                        for r in 0..rows {
                            for c in 0..cols {
                                let v = tile512::<1, 1>(pa.add(r * k), pb.add(c * k), k);
                                store(ct, m, i + r, j + c, v);
                            }
                        }
                    }
                }
            }
            i += rows;
        }
        j += cols;
    }
}

/// Writes an `R x C` tile at rows `i..`, cols `j..` of `ct` (`(n, m)` layout).
#[inline(always)]
unsafe fn store<const R: usize, const C: usize>(
    ct: *mut f32,
    m: usize,
    i: usize,
    j: usize,
    v: [[f32; C]; R],
) {
    for (r, row) in v.iter().enumerate() {
        for (c, x) in row.iter().enumerate() {
            // SAFETY: the caller guarantees (j + c) * m + i + r < n * m.
            unsafe { *ct.add((j + c) * m + i + r) = *x };
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile256<const R: usize, const C: usize>(
    a: *const f32,
    b: *const f32,
    k: usize,
) -> [[f32; C]; R] {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut t = 0;
    while t + 8 <= k {
        let mut bv = [_mm256_setzero_ps(); C];
        for (c, v) in bv.iter_mut().enumerate() {
            // SAFETY: t + 8 <= k, inside row c of b.
            *v = unsafe { _mm256_loadu_ps(b.add(c * k + t)) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: t + 8 <= k, inside row r of a.
            let av = unsafe { _mm256_loadu_ps(a.add(r * k + t)) };
            for (c, x) in row.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(av, bv[c], *x);
            }
        }
        t += 8;
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            let mut s = hsum256(acc[r][c]);
            for u in t..k {
                // SAFETY: u < k.
                unsafe { s += *a.add(r * k + u) * *b.add(c * k + u) };
            }
            out[r][c] = s;
        }
    }
    out
}

#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_nt_t_avx2_raw(
    a: *const f32,
    m: usize,
    b: *const f32,
    n: usize,
    k: usize,
    ct: *mut f32,
) {
    let mut j = 0;
    while j < n {
        let cols = (n - j).min(4);
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(2);
            // SAFETY: as in the AVX-512 version.
            unsafe {
                let pa = a.add(i * k);
                let pb = b.add(j * k);
                match (rows, cols) {
                    (2, 4) => store(ct, m, i, j, tile256::<2, 4>(pa, pb, k)),
                    _ => {
                        for r in 0..rows {
                            for c in 0..cols {
                                let v = tile256::<1, 1>(pa.add(r * k), pb.add(c * k), k);
                                store(ct, m, i + r, j + c, v);
                            }
                        }
                    }
                }
            }
            i += rows;
        }
        j += cols;
    }
}
