//! Row dequantization and quantization: bf16, f16, f32 and FP8 E4M3 with E8M0 block scales.
//!
//! A row of `width` values is stored as:
//!
//! | layout | bytes |
//! |---|---|
//! | `F32` | `4 * width`, little-endian IEEE binary32 |
//! | `Bf16` | `2 * width`, little-endian bfloat16 |
//! | `F16` | `2 * width`, little-endian IEEE binary16 |
//! | `Fp8E4m3E8m0 { scale_block }` | `width` E4M3 codes, then `width / scale_block` E8M0 scale codes |
//!
//! DeepSeek-V4.1 rows are `Fp8E4m3E8m0 { scale_block: 32 }` with `width = 256`: 256 + 8 = 264 bytes.
//!
//! E4M3 here is the "FN" variant (OCP MX / NVIDIA `__nv_fp8_e4m3`): 1 sign, 4 exponent
//! (bias 7), 3 mantissa bits, no infinities, `S.1111.111` is NaN, largest finite 448,
//! smallest subnormal 2^-9. E8M0 is an unsigned power of two, `2^(code - 127)`; code 255
//! is NaN. Decoding a NaN E4M3 code gives NaN (it propagates); a NaN E8M0 scale is an
//! error in [`dequantize_rows`]. Quantizing rounds to nearest, ties to even, and saturates
//! to +-448 (never produces the NaN code); non-finite inputs are errors.

use half::{bf16, f16};

use crate::error::{Error, Result, check_len};

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;
/// The E8M0 code of the scale 1.0.
pub const E8M0_ONE: u8 = 127;
/// The E8M0 NaN code.
pub const E8M0_NAN: u8 = 255;

/// How the values of one row are stored: the one row format of the project (the table
/// manifest's `row_layout`, serialised as `{"kind": "bf16"}` or
/// `{"kind": "fp8_e4m3_e8m0", "scale_block": 32}`, and what the kernels decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RowLayout {
    /// `dim` bfloat16 values, little-endian.
    Bf16,
    /// `dim` IEEE binary16 values, little-endian.
    F16,
    /// `dim` IEEE binary32 values, little-endian.
    F32,
    /// `dim` FP8 E4M3 (OCP, fn variant) bytes, then `dim / scale_block` E8M0 scale bytes
    /// (value = fp8 * 2^(scale - 127)), one per consecutive block of `scale_block` values.
    Fp8E4m3E8m0 {
        /// Values per scale; divides `dim`.
        scale_block: u32,
    },
}

impl RowLayout {
    /// The V4.1 row encoding: FP8 E4M3 with one scale per 32 values.
    pub const V41: RowLayout = RowLayout::Fp8E4m3E8m0 { scale_block: 32 };

    /// Parses `bf16`, `f16`, `f32`, `fp8` (scale block 32) or `fp8:BLOCK`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "bf16" => Ok(RowLayout::Bf16),
            "f16" => Ok(RowLayout::F16),
            "f32" => Ok(RowLayout::F32),
            "fp8" => Ok(RowLayout::V41),
            other => {
                let block = other
                    .strip_prefix("fp8:")
                    .and_then(|b| b.parse::<u32>().ok())
                    .ok_or_else(|| Error::InvalidConfig {
                        field: "row layout",
                        value: format!("{other:?}"),
                        reason: "expected bf16, f16, f32, fp8 or fp8:BLOCK",
                    })?;
                Ok(RowLayout::Fp8E4m3E8m0 { scale_block: block })
            }
        }
    }

    /// Bytes of one row of `width` values; errors when the width does not fit the dtype.
    pub fn row_bytes(self, width: usize) -> Result<usize> {
        if width == 0 {
            return Err(Error::InvalidConfig {
                field: "row width",
                value: "0".into(),
                reason: "a row needs at least one value",
            });
        }
        let overflow = Error::Overflow { what: "row bytes" };
        match self {
            RowLayout::F32 => width.checked_mul(4).ok_or(overflow),
            RowLayout::Bf16 | RowLayout::F16 => width.checked_mul(2).ok_or(overflow),
            RowLayout::Fp8E4m3E8m0 { scale_block } => {
                let block = scale_block as usize;
                if block == 0 || !width.is_multiple_of(block) {
                    return Err(Error::InvalidConfig {
                        field: "scale_block",
                        value: format!("{block} (row width {width})"),
                        reason: "the scale block must be non-zero and divide the row width",
                    });
                }
                width.checked_add(width / block).ok_or(overflow)
            }
        }
    }
}

const fn pow2_bits(k: i32) -> u32 {
    // 2^k as f32 bits for k in [-149, 127].
    if k >= -126 {
        ((k + 127) as u32) << 23
    } else {
        1u32 << (k + 149)
    }
}

/// `2^k` exactly, for `k` in `[-149, 127]` (clamped outside).
#[inline]
pub fn pow2(k: i32) -> f32 {
    f32::from_bits(pow2_bits(k.clamp(-149, 127)))
}

const fn e4m3_bits(code: u8) -> u32 {
    let sign = ((code >> 7) as u32) << 31;
    let exp = ((code >> 3) & 0xF) as u32;
    let man = (code & 7) as u32;
    if exp == 15 && man == 7 {
        return sign | 0x7FC0_0000;
    }
    if exp == 0 {
        if man == 0 {
            return sign;
        }
        // man * 2^-9: normalise the 3-bit mantissa.
        let lz = man.leading_zeros() - 29; // 0..=2 for man in 1..=7
        let e = -7 - (lz as i32); // value = 1.f * 2^(-7 - lz)
        let frac = (man << (lz + 1)) & 7;
        return sign | (((e + 127) as u32) << 23) | (frac << 20);
    }
    sign | ((exp + 120) << 23) | (man << 20)
}

const fn build_e4m3_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_bits(i as u8);
        i += 1;
    }
    t
}

/// Bits of the f32 value of every E4M3 code.
static E4M3_TABLE: [u32; 256] = build_e4m3_table();

/// The value of an E4M3 code (NaN for `0x7F` and `0xFF`).
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    f32::from_bits(E4M3_TABLE[code as usize])
}

/// The value of an E8M0 scale code, `2^(code - 127)`; NaN for 255.
#[inline]
pub fn e8m0_to_f32(code: u8) -> f32 {
    match code {
        E8M0_NAN => f32::NAN,
        0 => f32::from_bits(0x0040_0000), // 2^-127, subnormal
        c => f32::from_bits(u32::from(c) << 23),
    }
}

/// Rounds `x` to the nearest E4M3 code, ties to even, saturating to +-448. NaN maps to the
/// NaN code `0x7F` (callers that must not produce NaN check first).
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let ax = x.abs();
    if ax >= E4M3_MAX {
        return sign | 0x7E;
    }
    if ax < pow2(-6) {
        // Subnormal range: multiples of 2^-9; the scaling is exact.
        let q = (ax * pow2(9)).round_ties_even() as u8; // 0..=8; 8 is the code of 2^-6
        return sign | q;
    }
    let bits = ax.to_bits();
    let e = ((bits >> 23) as i32) - 127; // -6..=8
    let mant = bits & 0x007F_FFFF;
    let mut keep = mant >> 20;
    let rem = mant & 0x000F_FFFF;
    const HALF: u32 = 0x0008_0000;
    if rem > HALF || (rem == HALF && keep & 1 == 1) {
        keep += 1;
    }
    // A mantissa carry moves into the exponent field, which is the right value.
    let code = (((e + 7) as u32) << 3) + keep;
    sign | code.min(0x7E) as u8
}

/// The E8M0 code of the smallest power-of-two scale `2^k` with `amax / 2^k <= 448`
/// (scale 1 for an all-zero block), clamped to the finite codes 0..=254.
pub fn e8m0_scale_for(amax: f32) -> u8 {
    if amax <= 0.0 || !amax.is_finite() {
        return E8M0_ONE;
    }
    let mut k = (amax.log2().floor() as i32 - 10).clamp(-127, 127);
    while k < 127 && amax * pow2(-k) > E4M3_MAX {
        k += 1;
    }
    (k + 127) as u8
}

/// Number of rows in `bytes`, checking that `out` has `rows * width` values.
fn rows_of(dtype: RowLayout, width: usize, bytes: usize, out: usize) -> Result<usize> {
    let row_bytes = dtype.row_bytes(width)?;
    if !bytes.is_multiple_of(row_bytes) {
        return Err(Error::Shape {
            what: "row bytes (a whole number of rows)",
            expected: bytes.div_ceil(row_bytes) * row_bytes,
            found: bytes,
        });
    }
    let rows = bytes / row_bytes;
    check_len("dequantized output [rows][width]", rows * width, out)?;
    Ok(rows)
}

/// Decodes one FP8 row (codes then scales) into `out` (`width` values). Inlined into the
/// SIMD-dispatched copies in [`crate::cpu`].
#[inline(always)]
pub(crate) fn dequant_fp8_row(row: &[u8], block: usize, out: &mut [f32]) -> Result<()> {
    let width = out.len();
    let (codes, scales) = row.split_at(width);
    for ((dst, src), &sc) in out
        .chunks_exact_mut(block)
        .zip(codes.chunks_exact(block))
        .zip(scales)
    {
        if sc == E8M0_NAN {
            return Err(Error::InvalidValue {
                what: "E8M0 block scale",
                reason: "code 255 is NaN".into(),
            });
        }
        dequant_fp8_block(src, e8m0_to_f32(sc), dst);
    }
    Ok(())
}

/// `2^120`: rebias from the f32 exponent (bias 127) to the E4M3 one (bias 7).
const P120: f32 = f32::from_bits((120 + 127) << 23);

/// One block of E4M3 codes times its scale, branch-free so it vectorises: placing the 7
/// magnitude bits at f32 bits 20..27 gives `(1 + m/8) 2^(e-127)` (an f32 subnormal when
/// `e = 0`, which is exactly `m/8 2^-126`), and `* 2^120` rebiases both to E4M3; the two
/// NaN codes are patched. Exact: every step is a power-of-two scaling.
#[inline(always)]
pub(crate) fn dequant_fp8_block(codes: &[u8], scale: f32, out: &mut [f32]) {
    for (d, &c) in out.iter_mut().zip(codes) {
        let mag = u32::from(c & 0x7F);
        let v = f32::from_bits((mag << 20) | (u32::from(c & 0x80) << 24)) * P120;
        let v = if mag == 0x7F { f32::NAN } else { v };
        *d = v * scale;
    }
}

/// Dequantizes whole rows: `bytes` holds `rows` rows of `dtype`, `out` gets `rows * width`
/// f32 values. A NaN scale is an error (naming nothing but the code; callers add where).
pub fn dequantize_rows(
    dtype: RowLayout,
    width: usize,
    bytes: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let rows = rows_of(dtype, width, bytes.len(), out.len())?;
    if rows == 0 {
        return Ok(());
    }
    let row_bytes = dtype.row_bytes(width)?;
    for (src, dst) in bytes
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(width))
    {
        dequantize_row_unchecked(dtype, src, dst)?;
    }
    Ok(())
}

/// One row whose lengths the caller has checked.
#[inline]
pub(crate) fn dequantize_row_unchecked(
    dtype: RowLayout,
    src: &[u8],
    dst: &mut [f32],
) -> Result<()> {
    match dtype {
        RowLayout::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        RowLayout::Bf16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        RowLayout::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        RowLayout::Fp8E4m3E8m0 { scale_block } => {
            crate::cpu::dequant_fp8_row(src, scale_block as usize, dst)?
        }
    }
    Ok(())
}

/// Like [`dequantize_rows`] but to bfloat16 (round to nearest even from the f32 value).
pub fn dequantize_rows_bf16(
    dtype: RowLayout,
    width: usize,
    bytes: &[u8],
    out: &mut [bf16],
) -> Result<()> {
    let rows = rows_of(dtype, width, bytes.len(), out.len())?;
    if rows == 0 {
        return Ok(());
    }
    let row_bytes = dtype.row_bytes(width)?;
    let mut tmp = vec![0f32; width];
    for (src, dst) in bytes
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(width))
    {
        dequantize_row_unchecked(dtype, src, &mut tmp)?;
        for (d, &s) in dst.iter_mut().zip(&tmp) {
            *d = bf16::from_f32(s);
        }
    }
    Ok(())
}

/// Encodes whole rows: `src` holds `rows * width` f32 values, `out` gets `rows` rows of
/// `dtype`. bf16/f16 round to nearest even; FP8 picks the smallest power-of-two scale per
/// block that keeps every value within +-448 and rounds each value to nearest even.
/// Non-finite inputs are errors.
pub fn quantize_rows(dtype: RowLayout, width: usize, src: &[f32], out: &mut [u8]) -> Result<()> {
    let row_bytes = dtype.row_bytes(width)?;
    if !src.len().is_multiple_of(width) {
        return Err(Error::Shape {
            what: "quantize input (a whole number of rows)",
            expected: src.len().div_ceil(width) * width,
            found: src.len(),
        });
    }
    let rows = src.len() / width;
    check_len(
        "quantized output [rows][row_bytes]",
        rows * row_bytes,
        out.len(),
    )?;
    if let Some(i) = src.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidValue {
            what: "quantize input",
            reason: format!("value {} at index {i} is not finite", src[i]),
        });
    }
    for (s, d) in src.chunks_exact(width).zip(out.chunks_exact_mut(row_bytes)) {
        match dtype {
            RowLayout::F32 => {
                for (o, &x) in d.chunks_exact_mut(4).zip(s) {
                    o.copy_from_slice(&x.to_le_bytes());
                }
            }
            RowLayout::Bf16 => {
                for (o, &x) in d.chunks_exact_mut(2).zip(s) {
                    o.copy_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes());
                }
            }
            RowLayout::F16 => {
                for (o, &x) in d.chunks_exact_mut(2).zip(s) {
                    o.copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
                }
            }
            RowLayout::Fp8E4m3E8m0 { scale_block } => {
                let block = scale_block as usize;
                let (codes, scales) = d.split_at_mut(width);
                for ((blk, cod), sc) in s
                    .chunks_exact(block)
                    .zip(codes.chunks_exact_mut(block))
                    .zip(scales.iter_mut())
                {
                    let amax = blk.iter().fold(0f32, |a, x| a.max(x.abs()));
                    *sc = e8m0_scale_for(amax);
                    let inv = pow2(127 - i32::from(*sc));
                    for (c, &x) in cod.iter_mut().zip(blk) {
                        *c = f32_to_e4m3(x * inv);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent decoding of E4M3 by the formula, f64.
    fn e4m3_formula(code: u8) -> f64 {
        let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((code >> 3) & 0xF);
        let m = f64::from(code & 7);
        if e == 15 && code & 7 == 7 {
            return f64::NAN;
        }
        if e == 0 {
            s * m / 8.0 * 2f64.powi(-6)
        } else {
            s * (1.0 + m / 8.0) * 2f64.powi(e - 7)
        }
    }

    #[test]
    fn every_e4m3_code() {
        for code in 0..=255u8 {
            let got = e4m3_to_f32(code);
            let exp = e4m3_formula(code);
            if exp.is_nan() {
                assert!(got.is_nan(), "code {code:#04x}");
                assert!(code == 0x7F || code == 0xFF);
            } else {
                assert_eq!(f64::from(got), exp, "code {code:#04x}");
                assert_eq!(got.is_sign_negative(), code & 0x80 != 0, "sign {code:#04x}");
                // Encoding the decoded value gives the code back (every finite code).
                assert_eq!(f32_to_e4m3(got), code, "round trip {code:#04x}");
            }
        }
        // Spot values from the OCP table.
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xB8), -1.0);
    }

    #[test]
    fn branch_free_block_matches_table() {
        let codes: Vec<u8> = (0..=255u8).collect();
        let mut out = vec![0f32; 256];
        for sc in [0u8, 1, 100, 127, 130, 200, 254] {
            let s = e8m0_to_f32(sc);
            dequant_fp8_block(&codes, s, &mut out);
            for (&c, &v) in codes.iter().zip(&out) {
                let exp = e4m3_to_f32(c) * s;
                assert!(
                    v.to_bits() == exp.to_bits() || (v.is_nan() && exp.is_nan()),
                    "code {c:#04x} scale {sc}: {v} vs {exp}"
                );
            }
        }
    }

    /// f32 bits of every E4M3 code, generated independently (Python, from the OCP MX
    /// definition; NaN codes as the canonical quiet NaN with the code's sign).
    #[rustfmt::skip]
    const E4M3_EXPECTED_BITS: [u32; 256] = [
        0x00000000, 0x3B000000, 0x3B800000, 0x3BC00000, 0x3C000000, 0x3C200000, 0x3C400000, 0x3C600000,
        0x3C800000, 0x3C900000, 0x3CA00000, 0x3CB00000, 0x3CC00000, 0x3CD00000, 0x3CE00000, 0x3CF00000,
        0x3D000000, 0x3D100000, 0x3D200000, 0x3D300000, 0x3D400000, 0x3D500000, 0x3D600000, 0x3D700000,
        0x3D800000, 0x3D900000, 0x3DA00000, 0x3DB00000, 0x3DC00000, 0x3DD00000, 0x3DE00000, 0x3DF00000,
        0x3E000000, 0x3E100000, 0x3E200000, 0x3E300000, 0x3E400000, 0x3E500000, 0x3E600000, 0x3E700000,
        0x3E800000, 0x3E900000, 0x3EA00000, 0x3EB00000, 0x3EC00000, 0x3ED00000, 0x3EE00000, 0x3EF00000,
        0x3F000000, 0x3F100000, 0x3F200000, 0x3F300000, 0x3F400000, 0x3F500000, 0x3F600000, 0x3F700000,
        0x3F800000, 0x3F900000, 0x3FA00000, 0x3FB00000, 0x3FC00000, 0x3FD00000, 0x3FE00000, 0x3FF00000,
        0x40000000, 0x40100000, 0x40200000, 0x40300000, 0x40400000, 0x40500000, 0x40600000, 0x40700000,
        0x40800000, 0x40900000, 0x40A00000, 0x40B00000, 0x40C00000, 0x40D00000, 0x40E00000, 0x40F00000,
        0x41000000, 0x41100000, 0x41200000, 0x41300000, 0x41400000, 0x41500000, 0x41600000, 0x41700000,
        0x41800000, 0x41900000, 0x41A00000, 0x41B00000, 0x41C00000, 0x41D00000, 0x41E00000, 0x41F00000,
        0x42000000, 0x42100000, 0x42200000, 0x42300000, 0x42400000, 0x42500000, 0x42600000, 0x42700000,
        0x42800000, 0x42900000, 0x42A00000, 0x42B00000, 0x42C00000, 0x42D00000, 0x42E00000, 0x42F00000,
        0x43000000, 0x43100000, 0x43200000, 0x43300000, 0x43400000, 0x43500000, 0x43600000, 0x43700000,
        0x43800000, 0x43900000, 0x43A00000, 0x43B00000, 0x43C00000, 0x43D00000, 0x43E00000, 0x7FC00000,
        0x80000000, 0xBB000000, 0xBB800000, 0xBBC00000, 0xBC000000, 0xBC200000, 0xBC400000, 0xBC600000,
        0xBC800000, 0xBC900000, 0xBCA00000, 0xBCB00000, 0xBCC00000, 0xBCD00000, 0xBCE00000, 0xBCF00000,
        0xBD000000, 0xBD100000, 0xBD200000, 0xBD300000, 0xBD400000, 0xBD500000, 0xBD600000, 0xBD700000,
        0xBD800000, 0xBD900000, 0xBDA00000, 0xBDB00000, 0xBDC00000, 0xBDD00000, 0xBDE00000, 0xBDF00000,
        0xBE000000, 0xBE100000, 0xBE200000, 0xBE300000, 0xBE400000, 0xBE500000, 0xBE600000, 0xBE700000,
        0xBE800000, 0xBE900000, 0xBEA00000, 0xBEB00000, 0xBEC00000, 0xBED00000, 0xBEE00000, 0xBEF00000,
        0xBF000000, 0xBF100000, 0xBF200000, 0xBF300000, 0xBF400000, 0xBF500000, 0xBF600000, 0xBF700000,
        0xBF800000, 0xBF900000, 0xBFA00000, 0xBFB00000, 0xBFC00000, 0xBFD00000, 0xBFE00000, 0xBFF00000,
        0xC0000000, 0xC0100000, 0xC0200000, 0xC0300000, 0xC0400000, 0xC0500000, 0xC0600000, 0xC0700000,
        0xC0800000, 0xC0900000, 0xC0A00000, 0xC0B00000, 0xC0C00000, 0xC0D00000, 0xC0E00000, 0xC0F00000,
        0xC1000000, 0xC1100000, 0xC1200000, 0xC1300000, 0xC1400000, 0xC1500000, 0xC1600000, 0xC1700000,
        0xC1800000, 0xC1900000, 0xC1A00000, 0xC1B00000, 0xC1C00000, 0xC1D00000, 0xC1E00000, 0xC1F00000,
        0xC2000000, 0xC2100000, 0xC2200000, 0xC2300000, 0xC2400000, 0xC2500000, 0xC2600000, 0xC2700000,
        0xC2800000, 0xC2900000, 0xC2A00000, 0xC2B00000, 0xC2C00000, 0xC2D00000, 0xC2E00000, 0xC2F00000,
        0xC3000000, 0xC3100000, 0xC3200000, 0xC3300000, 0xC3400000, 0xC3500000, 0xC3600000, 0xC3700000,
        0xC3800000, 0xC3900000, 0xC3A00000, 0xC3B00000, 0xC3C00000, 0xC3D00000, 0xC3E00000, 0xFFC00000,
    ];

    #[test]
    fn every_e4m3_code_against_table() {
        for (code, &bits) in E4M3_EXPECTED_BITS.iter().enumerate() {
            let got = e4m3_to_f32(code as u8);
            let exp = f32::from_bits(bits);
            if exp.is_nan() {
                assert!(got.is_nan(), "code {code:#04x} must be NaN");
            } else {
                assert_eq!(got.to_bits(), bits, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn every_e8m0_code() {
        for code in 0..=255u8 {
            let got = e8m0_to_f32(code);
            if code == 255 {
                assert!(got.is_nan());
            } else {
                assert_eq!(f64::from(got), 2f64.powi(i32::from(code) - 127), "{code}");
            }
        }
    }

    #[test]
    fn e4m3_rounding_and_saturation() {
        // Ties to even between 1.0 (0x38) and 1.125 (0x39): 1.0625 -> 1.0; 1.1875 -> 1.25.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3A);
        assert_eq!(f32_to_e4m3(1.07), 0x39);
        // Saturation, never NaN.
        assert_eq!(f32_to_e4m3(447.0), 0x7E);
        assert_eq!(f32_to_e4m3(470.0), 0x7E);
        assert_eq!(f32_to_e4m3(1e30), 0x7E);
        assert_eq!(f32_to_e4m3(-1e30), 0xFE);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7E);
        // Subnormals and underflow: half of the smallest subnormal ties to 0 (even).
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00);
        assert_eq!(f32_to_e4m3(3.0 * 2f32.powi(-10)), 0x02);
        assert_eq!(f32_to_e4m3(1e-30), 0x00);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        // Largest subnormal rounding up into the normal range.
        assert_eq!(f32_to_e4m3(0.99 * 2f32.powi(-6)), 0x08);
    }

    #[test]
    fn e4m3_exhaustive_nearest() {
        // For many values, the chosen code is a nearest finite code.
        let finite: Vec<f32> = (0..=0x7Eu8).map(e4m3_to_f32).collect();
        let mut x = 1e-4f32;
        while x < 500.0 {
            let c = f32_to_e4m3(x);
            let got = e4m3_to_f32(c);
            let best = finite
                .iter()
                .map(|v| (v - x.min(448.0)).abs())
                .fold(f32::INFINITY, f32::min);
            assert!((got - x.min(448.0)).abs() <= best, "{x} -> {got}");
            x *= 1.0137;
        }
    }

    #[test]
    fn fp8_round_trip_error() {
        let width = 256;
        let dtype = RowLayout::V41;
        assert_eq!(dtype.row_bytes(width).ok(), Some(264));
        // Deterministic values of widely varying magnitude.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let src: Vec<f32> = (0..width * 8)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((state >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
                u * 10f32.powi((i / width) as i32 - 4)
            })
            .collect();
        let mut bytes = vec![0u8; 264 * 8];
        quantize_rows(dtype, width, &src, &mut bytes).expect("quantize");
        let mut back = vec![0f32; src.len()];
        dequantize_rows(dtype, width, &bytes, &mut back).expect("dequantize");
        for (blk_s, blk_b) in src.chunks(32).zip(back.chunks(32)) {
            let amax = blk_s.iter().fold(0f32, |a, x| a.max(x.abs()));
            for (&s, &b) in blk_s.iter().zip(blk_b) {
                // 3 mantissa bits: relative error <= 2^-4 for normals; absolute error of the
                // subnormal step otherwise (amax / 448 * 2^-9 * 2^6 ... bounded by amax/2^9).
                let tol = (s.abs() * 0.0625).max(amax * 2f32.powi(-9));
                assert!((s - b).abs() <= tol, "{s} -> {b} (amax {amax})");
            }
        }
        // Re-quantizing the decoded values is lossless (the codes may use another scale).
        let mut bytes2 = vec![0u8; bytes.len()];
        quantize_rows(dtype, width, &back, &mut bytes2).expect("quantize");
        let mut back2 = vec![0f32; src.len()];
        dequantize_rows(dtype, width, &bytes2, &mut back2).expect("dequantize");
        assert_eq!(back, back2);
    }

    #[test]
    fn half_round_trips() {
        let src: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        for dtype in [RowLayout::F32, RowLayout::Bf16, RowLayout::F16] {
            let mut bytes = vec![0u8; dtype.row_bytes(16).expect("ok") * 4];
            quantize_rows(dtype, 16, &src, &mut bytes).expect("q");
            let mut back = vec![0f32; 64];
            dequantize_rows(dtype, 16, &bytes, &mut back).expect("dq");
            let rel = match dtype {
                RowLayout::F32 => 0.0,
                RowLayout::Bf16 => 2f32.powi(-8),
                _ => 2f32.powi(-11),
            };
            for (a, b) in src.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * rel, "{dtype:?} {a} {b}");
            }
            let mut bf = vec![bf16::ZERO; 64];
            dequantize_rows_bf16(dtype, 16, &bytes, &mut bf).expect("bf16");
            for (a, b) in back.iter().zip(&bf) {
                assert_eq!(bf16::from_f32(*a), *b);
            }
        }
    }

    #[test]
    fn errors_not_panics() {
        let mut out = vec![0f32; 256];
        // NaN scale.
        let mut row = vec![0x38u8; 264];
        row[256] = E8M0_NAN;
        assert!(matches!(
            dequantize_rows(RowLayout::V41, 256, &row, &mut out),
            Err(Error::InvalidValue { .. })
        ));
        row[256] = E8M0_ONE;
        dequantize_rows(RowLayout::V41, 256, &row, &mut out).expect("finite scales");
        assert_eq!(out[0], 1.0);
        // Partial row, wrong output length, bad block, zero width.
        assert!(dequantize_rows(RowLayout::V41, 256, &row[..263], &mut out).is_err());
        assert!(dequantize_rows(RowLayout::V41, 256, &row, &mut out[..255]).is_err());
        assert!(
            RowLayout::Fp8E4m3E8m0 { scale_block: 0 }
                .row_bytes(256)
                .is_err()
        );
        assert!(
            RowLayout::Fp8E4m3E8m0 { scale_block: 24 }
                .row_bytes(256)
                .is_err()
        );
        assert!(RowLayout::F32.row_bytes(0).is_err());
        // Non-finite quantize input.
        let mut bytes = vec![0u8; 264];
        let mut src = vec![1f32; 256];
        src[3] = f32::NAN;
        assert!(quantize_rows(RowLayout::V41, 256, &src, &mut bytes).is_err());
        src[3] = f32::INFINITY;
        assert!(quantize_rows(RowLayout::V41, 256, &src, &mut bytes).is_err());
        // NaN value codes propagate (documented).
        row[0] = 0x7F;
        dequantize_rows(RowLayout::V41, 256, &row, &mut out).expect("ok");
        assert!(out[0].is_nan());
    }

    #[test]
    fn scale_choice() {
        assert_eq!(e8m0_scale_for(0.0), 127);
        assert_eq!(e8m0_scale_for(448.0), 127);
        assert_eq!(e8m0_scale_for(448.1), 128);
        assert_eq!(e8m0_scale_for(224.0), 126);
        assert_eq!(e8m0_scale_for(f32::MAX), 127 + 120);
        assert_eq!(e8m0_scale_for(1e-45), 0);
    }
}
