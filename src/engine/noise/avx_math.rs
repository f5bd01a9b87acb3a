//! Scalar, bit-exact emulation of the single-precision `log` and `sincos` that torch's AVX2
//! `randn` kernel uses.
//!
//! torch's vectorised normal sampler (`normal_fill_16_AVX2`) calls `log256_ps` and
//! `sincos256_ps` from `aten/src/ATen/native/cpu/avx_mathfun.h` (Giovanni Garberoglio's AVX port
//! of Julien Pommier's `sse_mathfun`, itself a rewrite of Cephes `logf`/`sinf`/`cosf`). These are
//! polynomial approximations, not the C library's functions, so reproducing torch requires the
//! same operations in the same order. Each AVX lane is independent, so a scalar function per lane
//! gives identical results.
//!
//! torch's x86-64 Linux wheels are compiled by GCC with `-mavx2 -mfma` and GCC's default
//! `-ffp-contract=fast`, so GCC fuses a multiply into the add or subtract that is its only use.
//! Where that happened, this port uses [`f32::mul_add`] (one rounding). Where a sum has two
//! product operands, GCC fuses the product computed first. A port without any fusion disagrees
//! with torch 2.15 on about 1% of `randn` values; this one agrees with torch for each of the
//! 2^24 possible uniforms that reach `ln` and `sin_cos` (the test
//! `box_muller_matches_torch_for_every_uniform`, against tables produced by torch's own kernel).
//! The fusions in `y - z * 0.5` and `x + e * Q2` in `ln` cannot change a result (those products
//! are exact); they follow GCC's rule for consistency.
//!
//! All operations are IEEE-754 single precision with round-to-nearest (`mul_add` is a correctly
//! rounded fused multiply-add on every platform), so the results do not depend on the CPU or the
//! C library.

// The constants below keep the digits of avx_mathfun.h (Cephes) so that they can be checked
// against the source; `as f32` rounds them as `_PS256_CONST` does.
#![allow(clippy::excessive_precision)]

/// Smallest positive normal `f32` (`_ps256_min_norm_pos`).
const MIN_NORM_POS: f32 = f32::MIN_POSITIVE;
/// `cephes_SQRTHF` = 0.707106781186547524 = 1/√2.
const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,
    -1.1514610310E-1_f64 as f32,
    1.1676998740E-1_f64 as f32,
    -1.2420140846E-1_f64 as f32,
    1.4249322787E-1_f64 as f32,
    -1.6668057665E-1_f64 as f32,
    2.0000714765E-1_f64 as f32,
    -2.4999993993E-1_f64 as f32,
    3.3333331174E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
const LOG_Q2: f32 = 0.693359375_f64 as f32;

/// 4/π (`cephes_FOPI`).
const FOPI: f32 = 1.27323954473516_f64 as f32;
/// π/4 split into three parts for Cody–Waite range reduction (negated).
const MINUS_DP1: f32 = -0.78515625_f64 as f32;
const MINUS_DP2: f32 = -2.4187564849853515625e-4_f64 as f32;
const MINUS_DP3: f32 = -3.77489497744594108e-8_f64 as f32;
const SINCOF: [f32; 3] = [
    -1.9515295891E-4_f64 as f32,
    8.3321608736E-3_f64 as f32,
    -1.6666654611E-1_f64 as f32,
];
const COSCOF: [f32; 3] = [
    2.443315711809948E-005_f64 as f32,
    -1.388731625493765E-003_f64 as f32,
    4.166664568298827E-002_f64 as f32,
];

const SIGN_MASK: u32 = 0x8000_0000;

/// `_mm256_cvttps_epi32` for one lane: truncation toward zero, and the "integer indefinite"
/// value `i32::MIN` for NaN or out-of-range inputs (Rust's `as` would saturate instead).
#[inline]
fn cvtt(x: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        x as i32
    } else {
        i32::MIN
    }
}

/// `x` if `mask`, else `+0.0` (an AND with an all-ones or all-zeros lane mask).
#[inline]
fn select_or_zero(mask: bool, x: f32) -> f32 {
    if mask { x } else { 0.0 }
}

/// Natural logarithm, one lane of torch's `log256_ps`. Returns a NaN for `x <= 0`.
pub(crate) fn ln(x: f32) -> f32 {
    let invalid = x <= 0.0;
    // _mm256_max_ps(x, min): the first operand only if it is greater (NaN gives `min`).
    let x = if x > MIN_NORM_POS { x } else { MIN_NORM_POS };
    let bits = x.to_bits();
    let exponent = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa and force the exponent of 0.5: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;

    let below = x < SQRTHF;
    let tmp = select_or_zero(below, x);
    x -= 1.0;
    e -= select_or_zero(below, 1.0);
    x += tmp;

    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    // GCC fuses y * z (computed first) into the add of e * Q1.
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    let sum = x + y;
    let result = e.mul_add(LOG_Q2, sum);
    if invalid {
        // OR with an all-ones mask.
        f32::from_bits(u32::MAX)
    } else {
        result
    }
}

/// Sine and cosine, one lane of torch's `sincos256_ps`. Returns `(sin(x), cos(x))`.
pub(crate) fn sin_cos(x: f32) -> (f32, f32) {
    let mut sign_sin = x.to_bits() & SIGN_MASK;
    let mut x = f32::from_bits(x.to_bits() & !SIGN_MASK);

    // Octant: j = (trunc(x * 4/π) + 1) & !1.
    let mut j = cvtt(x * FOPI);
    j = j.wrapping_add(1) & !1;
    let y = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let sin_poly_first = (j & 2) == 0;
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    sign_sin ^= swap_sign_sin;

    // Extended precision modular arithmetic: x = ((x - y·DP1) - y·DP2) - y·DP3.
    x = y.mul_add(MINUS_DP1, x);
    x = y.mul_add(MINUS_DP2, x);
    x = y.mul_add(MINUS_DP3, x);

    let z = x * x;
    // Cosine polynomial on [0, π/4].
    let mut yc = COSCOF[0];
    yc = yc.mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    // GCC fuses yc * z (computed first) into the subtraction of z * 0.5.
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;

    // Sine polynomial on [0, π/4].
    let mut ys = SINCOF[0];
    ys = ys.mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Select the polynomial for each result, with the exact operations of the original.
    let ysin2 = select_or_zero(sin_poly_first, ys);
    let ysin1 = select_or_zero(!sin_poly_first, yc);
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let s = ysin1 + ysin2;
    let c = yc + ys;
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximations_are_close_to_libm() {
        for k in 1..=4096u32 {
            let u = k as f32 / 4096.0;
            let l = ln(u);
            assert!((l as f64 - (u as f64).ln()).abs() < 2e-7, "ln({u}) = {l}");
            let t = u * 6.283_185_5;
            let (s, c) = sin_cos(t);
            assert!((s as f64 - (t as f64).sin()).abs() < 3e-7, "sin({t}) = {s}");
            assert!((c as f64 - (t as f64).cos()).abs() < 3e-7, "cos({t}) = {c}");
        }
        assert!(ln(0.0).is_nan());
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(1.0), 0.0);
    }
}
