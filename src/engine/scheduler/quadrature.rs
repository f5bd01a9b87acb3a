//! Adaptive Gauss–Kronrod (7/15-point) quadrature, for the LMS coefficients.
//!
//! diffusers integrates Lagrange basis polynomials with `scipy.integrate.quad` (QUADPACK);
//! the integrands are polynomials of degree at most 3, which the 15-point Kronrod rule
//! integrates exactly, so one panel normally suffices. The bisection is there for any other
//! integrand and stops once the estimated error is below the requested tolerance.

// QUADPACK's published digits, kept as printed.
#[allow(clippy::excessive_precision)]
/// Kronrod nodes (non-negative half, the last one 0) of the 15-point rule on [-1, 1].
const XGK: [f64; 8] = [
    0.991_455_371_120_812_639_206_854_697_526_329,
    0.949_107_912_342_758_524_526_189_684_047_851,
    0.864_864_423_359_769_072_789_712_788_640_926,
    0.741_531_185_599_394_439_863_864_773_280_788,
    0.586_087_235_467_691_130_294_144_845_693_013,
    0.405_845_151_377_397_166_906_606_412_076_961,
    0.207_784_955_007_898_467_600_689_403_773_245,
    0.0,
];

#[allow(clippy::excessive_precision)]
/// Kronrod weights for `XGK`.
const WGK: [f64; 8] = [
    0.022_935_322_010_529_224_963_732_008_058_970,
    0.063_092_092_629_978_553_290_700_663_189_204,
    0.104_790_010_322_250_183_839_876_322_541_518,
    0.140_653_259_715_525_918_745_189_590_510_238,
    0.169_004_726_639_267_902_826_583_426_598_550,
    0.190_350_578_064_785_409_913_256_402_421_014,
    0.204_432_940_075_298_892_414_161_999_234_649,
    0.209_482_141_084_727_828_012_999_174_891_714,
];

#[allow(clippy::excessive_precision)]
/// Gauss weights of the embedded 7-point rule (its nodes are `XGK[1]`, `XGK[3]`, `XGK[5]`, `XGK[7]`).
const WG: [f64; 4] = [
    0.129_484_966_168_869_693_270_611_432_679_082,
    0.279_705_391_489_276_667_901_467_771_423_780,
    0.381_830_050_505_118_944_950_369_775_488_975,
    0.417_959_183_673_469_387_755_102_040_816_327,
];

/// One 15-point panel: (Kronrod estimate, |Kronrod − Gauss| as the error estimate).
fn panel(f: &impl Fn(f64) -> f64, a: f64, b: f64) -> (f64, f64) {
    let center = 0.5 * (a + b);
    let half = 0.5 * (b - a);
    let fc = f(center);
    let mut kronrod = fc * WGK[7];
    let mut gauss = fc * WG[3];
    for (j, (&x, &w)) in XGK.iter().zip(WGK.iter()).take(7).enumerate() {
        let dx = half * x;
        let sum = f(center - dx) + f(center + dx);
        kronrod += w * sum;
        if j % 2 == 1 {
            gauss += WG[j / 2] * sum;
        }
    }
    (kronrod * half, ((kronrod - gauss) * half).abs())
}

/// ∫ₐᵇ f, bisecting panels until each one's error estimate is below its share of
/// `max(abs_tol, rel_tol · |result|)`.
pub(crate) fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64, abs_tol: f64, rel_tol: f64) -> f64 {
    let (whole, err) = panel(&f, a, b);
    let tol = abs_tol.max(rel_tol * whole.abs());
    if err <= tol || a == b {
        return whole;
    }
    refine(&f, a, b, tol, 48)
}

fn refine(f: &impl Fn(f64) -> f64, a: f64, b: f64, tol: f64, depth: u32) -> f64 {
    let mid = 0.5 * (a + b);
    let (left, el) = panel(f, a, mid);
    let (right, er) = panel(f, mid, b);
    if depth == 0 || el + er <= tol || mid == a || mid == b {
        return left + right;
    }
    let l = if el <= 0.5 * tol {
        left
    } else {
        refine(f, a, mid, 0.5 * tol, depth - 1)
    };
    let r = if er <= 0.5 * tol {
        right
    } else {
        refine(f, mid, b, 0.5 * tol, depth - 1)
    };
    l + r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_for_polynomials_up_to_degree_22() {
        for k in 0..=22 {
            let got = integrate(|x: f64| x.powi(k), -0.3, 1.7, 0.0, 1e-14);
            let want = (1.7f64.powi(k + 1) - (-0.3f64).powi(k + 1)) / (k + 1) as f64;
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "x^{k}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn adaptive_on_smooth_and_peaked_integrands() {
        let got = integrate(f64::exp, 0.0, 3.0, 1e-13, 1e-13);
        assert!((got - (3f64.exp() - 1.0)).abs() < 1e-11, "{got}");
        // A narrow peak needs bisection: ∫ 1/(1e-4 + x²) over [-1, 1] = 2 atan(1/0.01) / 0.01.
        let got = integrate(|x| 1.0 / (1e-4 + x * x), -1.0, 1.0, 1e-10, 1e-12);
        let want = 2.0 * (1.0f64 / 0.01).atan() / 0.01;
        assert!((got - want).abs() / want < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn reversed_and_empty_intervals() {
        let got = integrate(|x| 3.0 * x * x, 2.0, 1.0, 0.0, 1e-14);
        assert!((got + 7.0).abs() < 1e-13);
        assert_eq!(integrate(|x| x, 1.0, 1.0, 0.0, 1e-14), 0.0);
    }
}
