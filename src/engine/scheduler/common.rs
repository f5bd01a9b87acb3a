//! Pieces shared by the schedulers: config choices, training noise schedules, the numpy and
//! torch numerics diffusers relies on, and small tensor helpers.
//!
//! Float32 where diffusers computes with float32 torch tensors, float64 where it goes through
//! numpy float64 (timestep spacing, `np.interp`, Karras sigmas, sigma-to-timestep).

use ndarray::{ArrayD, ArrayViewD, Zip};

use super::{SchedulerConfig, SchedulerError};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prediction {
    Epsilon,
    /// `v_prediction`.
    V,
    Sample,
}

/// diffusers' `timestep_spacing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

/// `final_sigmas_type`: the σ after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinalSigma {
    Zero,
    SigmaMin,
}

/// Picks `value` (or `default` when absent) from `allowed`, or names what is allowed.
pub(crate) fn choice<T: Copy>(
    class: &'static str,
    key: &'static str,
    value: Option<&str>,
    default: &str,
    allowed: &[(&str, T)],
) -> Result<T, SchedulerError> {
    let v = value.unwrap_or(default);
    allowed
        .iter()
        .find(|(name, _)| *name == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| SchedulerError::Unsupported {
            class,
            key,
            value: format!("{v:?}"),
            allowed: allowed
                .iter()
                .map(|(n, _)| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub(crate) const ALL_PREDICTIONS: &[(&str, Prediction)] = &[
    ("epsilon", Prediction::Epsilon),
    ("v_prediction", Prediction::V),
    ("sample", Prediction::Sample),
];

pub(crate) const SPACINGS: &[(&str, Spacing)] = &[
    ("linspace", Spacing::Linspace),
    ("leading", Spacing::Leading),
    ("trailing", Spacing::Trailing),
];

pub(crate) const FINAL_SIGMAS: &[(&str, FinalSigma)] = &[
    ("zero", FinalSigma::Zero),
    ("sigma_min", FinalSigma::SigmaMin),
];

pub(crate) fn prediction(
    class: &'static str,
    cfg: &SchedulerConfig,
    allowed: &[(&str, Prediction)],
) -> Result<Prediction, SchedulerError> {
    choice(
        class,
        "prediction_type",
        cfg.prediction_type.as_deref(),
        "epsilon",
        allowed,
    )
}

pub(crate) fn spacing(
    class: &'static str,
    cfg: &SchedulerConfig,
    default: &str,
) -> Result<Spacing, SchedulerError> {
    choice(
        class,
        "timestep_spacing",
        cfg.timestep_spacing.as_deref(),
        default,
        SPACINGS,
    )
}

pub(crate) fn final_sigma(
    class: &'static str,
    cfg: &SchedulerConfig,
) -> Result<FinalSigma, SchedulerError> {
    choice(
        class,
        "final_sigmas_type",
        cfg.final_sigmas_type.as_deref(),
        "zero",
        FINAL_SIGMAS,
    )
}

/// A boolean option this port does not implement: only `false` (or absent) is accepted.
pub(crate) fn reject_true(
    class: &'static str,
    key: &'static str,
    value: Option<bool>,
) -> Result<(), SchedulerError> {
    if value == Some(true) {
        return Err(SchedulerError::Unsupported {
            class,
            key,
            value: "true".into(),
            allowed: "false (the only value implemented)".into(),
        });
    }
    Ok(())
}

pub(crate) fn invalid(class: &'static str, message: impl Into<String>) -> SchedulerError {
    SchedulerError::Invalid {
        class,
        message: message.into(),
    }
}

/// 1 ..= num_train_timesteps inference steps.
pub(crate) fn check_steps(
    class: &'static str,
    steps: usize,
    n_train: usize,
) -> Result<(), SchedulerError> {
    if steps == 0 || steps > n_train {
        return Err(SchedulerError::Steps {
            class,
            steps,
            max: n_train,
        });
    }
    Ok(())
}

/// The training noise schedule of a class.
pub(crate) struct TrainSchedule {
    pub n_train: usize,
    pub alphas_cumprod: Vec<f32>,
}

/// How a class treats `rescale_betas_zero_snr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroSnr {
    /// The class has no such key (PNDM, LMS): diffusers ignores it.
    Ignored,
    /// Rescale the betas (DDIM, DDPM).
    Rescale,
    /// Rescale, then set the last `alphas_cumprod` to 2^-24 so σ stays finite (Euler, Euler
    /// ancestral, DPM-Solver, UniPC).
    RescaleFinite,
}

/// Betas and their cumulative alpha products, in float32 like torch (the product accumulates
/// in float64, as torch's CPU `cumprod` does).
pub(crate) fn train_schedule(
    class: &'static str,
    cfg: &SchedulerConfig,
    zero_snr: ZeroSnr,
) -> Result<TrainSchedule, SchedulerError> {
    let n_train = cfg.num_train_timesteps.unwrap_or(1000);
    if n_train < 2 {
        return Err(invalid(
            class,
            format!("num_train_timesteps = {n_train}; it must be at least 2"),
        ));
    }
    let mut betas = match &cfg.trained_betas {
        Some(tb) => {
            if tb.len() != n_train {
                return Err(invalid(
                    class,
                    format!(
                        "trained_betas has {} values but num_train_timesteps is {n_train}; they must agree",
                        tb.len()
                    ),
                ));
            }
            tb.iter().map(|&b| b as f32).collect()
        }
        None => {
            let start = cfg.beta_start.unwrap_or(0.0001);
            let end = cfg.beta_end.unwrap_or(0.02);
            let schedule = choice(
                class,
                "beta_schedule",
                cfg.beta_schedule.as_deref(),
                "linear",
                &[
                    ("linear", 0u8),
                    ("scaled_linear", 1),
                    ("squaredcos_cap_v2", 2),
                ],
            )?;
            match schedule {
                0 => torch_linspace_f32(start, end, n_train),
                1 => torch_linspace_f32(start.powf(0.5), end.powf(0.5), n_train)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                _ => betas_for_alpha_bar(n_train),
            }
        }
    };
    let rescale = zero_snr != ZeroSnr::Ignored && cfg.rescale_betas_zero_snr == Some(true);
    if rescale {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let mut alphas_cumprod = cumprod(&alphas);
    if rescale && zero_snr == ZeroSnr::RescaleFinite {
        *alphas_cumprod.last_mut().expect("n_train >= 2") = 2f32.powi(-24);
    }
    Ok(TrainSchedule {
        n_train,
        alphas_cumprod,
    })
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the scalar kernel
/// (`start + step * i` below the halfway point, `end - step * (steps - i - 1)` above), which
/// the compiler fuses into one multiply-add.
pub(crate) fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 tensor on the CPU: accumulates in float64.
pub(crate) fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine transform (`squaredcos_cap_v2`).
fn betas_for_alpha_bar(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv 2305.08891, algorithm 1), in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let mut sqrt_bar: Vec<f32> = cumprod(&alphas).into_iter().map(f32::sqrt).collect();
    let first = sqrt_bar[0];
    let last = *sqrt_bar.last().expect("non-empty");
    let scale = first / (first - last);
    for s in &mut sqrt_bar {
        *s -= last;
        *s *= scale;
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `np.linspace(start, stop, num)` in float64 (`i * step + start`, the last value `stop`).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut y: Vec<f64> = if step == 0.0 {
        (0..num).map(|i| (i as f64 / div) * delta + start).collect()
    } else {
        (0..num).map(|i| i as f64 * step + start).collect()
    };
    y[num - 1] = stop;
    y
}

/// `np.arange(start, stop, step)` for float64: length `ceil((stop - start) / step)`, values
/// `start + i * ((start + step) - start)` (numpy's fill), which is where a float step can add
/// an extra element.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len);
    out.push(start);
    if len > 1 {
        out.push(start + step);
        let delta = out[1] - start;
        for i in 2..len {
            out.push(start + i as f64 * delta);
        }
    }
    out
}

/// `np.interp(x, np.arange(len(fp)), fp)` in float64.
pub(crate) fn np_interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// σ = sqrt((1 - ᾱ) / ᾱ) for every training timestep, float32 like diffusers' torch code.
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.log` of the float32 training sigmas (kept float32, as numpy does).
pub(crate) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep of σ, interpolating log σ
/// between its two neighbours (float64, except that the neighbours' difference is float32
/// as in numpy).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(dists >= 0): the first index where the running count reaches its total.
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_index = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            best_index = i;
        }
    }
    let low_idx = best_index.min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = log_sigmas[low_idx];
    let high = log_sigmas[high_idx];
    let w = ((low as f64 - log_sigma) / ((low - high) as f64)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. (2022) σ schedule, ρ = 7, float64 like diffusers' `_convert_to_karras`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// Timesteps of the DDIM/DDPM/PNDM/Euler/LMS family, descending, in float64: `linspace`
/// unrounded (callers round or not, per class), `leading` with `steps_offset` added,
/// `trailing` rounded (half to even) minus one.
pub(crate) fn spaced_timesteps(
    spacing: Spacing,
    n_train: usize,
    n: usize,
    offset: usize,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut t = np_linspace(0.0, (n_train - 1) as f64, n);
            t.reverse();
            t
        }
        Spacing::Leading => {
            let ratio = n_train / n;
            (0..n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => np_arange(n_train as f64, 0.0, -(n_train as f64 / n as f64))
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Timesteps of the multistep solvers (DPM-Solver, UniPC): n + 1 points with the last dropped.
/// `last` is `num_train_timesteps` less any `lambda_min_clipped` cut.
pub(crate) fn multistep_timesteps(
    spacing: Spacing,
    n_train: usize,
    last: usize,
    n: usize,
    offset: usize,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let t = np_linspace(0.0, last as f64 - 1.0, n + 1);
            t.into_iter()
                .rev()
                .take(n)
                .map(f64::round_ties_even)
                .collect()
        }
        Spacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n).rev().map(|i| (i * ratio + offset) as f64).collect()
        }
        Spacing::Trailing => np_arange(last as f64, 0.0, -(n_train as f64 / n as f64))
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// `alphas_cumprod[t]` for a timestep, or an error naming the timestep (diffusers would
/// index out of range, or wrap around for -1).
pub(crate) fn alpha_at(
    class: &'static str,
    alphas_cumprod: &[f32],
    t: i64,
) -> Result<f32, SchedulerError> {
    usize::try_from(t)
        .ok()
        .and_then(|i| alphas_cumprod.get(i).copied())
        .ok_or_else(|| {
            invalid(
                class,
                format!(
                    "timestep {t} is outside the training range 0..{}; change timestep_spacing, \
                     steps_offset or the number of steps",
                    alphas_cumprod.len()
                ),
            )
        })
}

/// Element-wise `f(a, b)`.
pub(crate) fn zip2(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    f: impl Fn(f32, f32) -> f32,
) -> ArrayD<f32> {
    Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
}

/// Element-wise `f(a, b, c)`.
pub(crate) fn zip3(
    a: &ArrayViewD<'_, f32>,
    b: &ArrayViewD<'_, f32>,
    c: &ArrayViewD<'_, f32>,
    f: impl Fn(f32, f32, f32) -> f32,
) -> ArrayD<f32> {
    Zip::from(a)
        .and(b)
        .and(c)
        .map_collect(|&x, &y, &z| f(x, y, z))
}

/// Checks a step's index, the model output's shape and, when the step draws noise, the noise.
pub(crate) fn check_step(
    class: &'static str,
    index: usize,
    len: usize,
    sample: &ArrayViewD<'_, f32>,
    model_output: &ArrayViewD<'_, f32>,
    noise: Option<&ArrayViewD<'_, f32>>,
    needs_noise: bool,
) -> Result<(), SchedulerError> {
    if index >= len {
        return Err(SchedulerError::StepIndex { class, index, len });
    }
    check_shape(class, index, "model_output", sample, model_output)?;
    if needs_noise {
        match noise {
            None => return Err(SchedulerError::MissingNoise { class, index }),
            Some(n) => check_shape(class, index, "noise", sample, n)?,
        }
    }
    Ok(())
}

pub(crate) fn check_shape(
    class: &'static str,
    index: usize,
    what: &'static str,
    sample: &ArrayViewD<'_, f32>,
    other: &ArrayViewD<'_, f32>,
) -> Result<(), SchedulerError> {
    if other.shape() != sample.shape() {
        return Err(SchedulerError::Shape {
            class,
            index,
            what,
            got: other.shape().to_vec(),
            expected: sample.shape().to_vec(),
        });
    }
    Ok(())
}

/// The checks of `add_noise`: index in range, noise shaped like the original.
pub(crate) fn check_add_noise(
    class: &'static str,
    index: usize,
    len: usize,
    original: &ArrayViewD<'_, f32>,
    noise: &ArrayViewD<'_, f32>,
) -> Result<(), SchedulerError> {
    if index >= len {
        return Err(SchedulerError::StepIndex { class, index, len });
    }
    check_shape(class, index, "noise", original, noise)
}

/// Order of calls for stateful (multistep) schedulers: any first index, then consecutive.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sequence {
    next: Option<usize>,
}

impl Sequence {
    pub fn check(&self, class: &'static str, index: usize) -> Result<(), SchedulerError> {
        match self.next {
            Some(expected) if expected != index => Err(SchedulerError::OutOfOrder {
                class,
                expected,
                got: index,
            }),
            _ => Ok(()),
        }
    }

    pub fn advance(&mut self, index: usize) {
        self.next = Some(index + 1);
    }
}

/// α_t = 1 / sqrt(σ² + 1) and σ_t = σ α_t (diffusers' `_sigma_to_alpha_sigma_t`), float32.
pub(crate) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log α − log σ, float32.
pub(crate) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn np_linspace_matches_numpy_layout() {
        assert_eq!(np_linspace(0.0, 999.0, 1), vec![0.0]);
        let t = np_linspace(0.0, 999.0, 7);
        assert_eq!(t.len(), 7);
        assert_eq!(t[0], 0.0);
        assert_eq!(t[6], 999.0);
        assert_eq!(t[1], 166.5);
    }

    #[test]
    fn np_arange_can_overshoot_like_numpy() {
        // numpy: len(np.arange(1000, 0, -1000 / 61)) == 62 (floating-point length).
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 7.0).len(), 7);
        assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 20.0).len(), 20);
    }

    #[test]
    fn trailing_rounds_half_to_even() {
        // 1000 / 16 = 62.5: 937.5 -> 938, 812.5 -> 812 (numpy's round), minus one.
        let t = spaced_timesteps(Spacing::Trailing, 1000, 16, 0);
        assert_eq!(&t[..4], &[999.0, 937.0, 874.0, 811.0]);
    }

    #[test]
    fn np_interp_edges() {
        let fp = [1.0f32, 3.0, 7.0];
        assert_eq!(np_interp(-1.0, &fp), 1.0);
        assert_eq!(np_interp(0.5, &fp), 2.0);
        assert_eq!(np_interp(1.0, &fp), 3.0);
        assert_eq!(np_interp(2.0, &fp), 7.0);
        assert_eq!(np_interp(5.0, &fp), 7.0);
    }

    #[test]
    fn sigma_to_t_inverts_interpolation() {
        let sigmas: Vec<f32> = (1..=100).map(|i| i as f32 * 0.1).collect();
        let logs = log_sigmas(&sigmas);
        // log σ is kept in float32, as numpy does: ~1e-7 of a log step of ~0.025.
        assert!((sigma_to_t(sigmas[40] as f64, &logs) - 40.0).abs() < 1e-4);
        assert!((sigma_to_t(0.5 * (sigmas[40] + sigmas[41]) as f64, &logs) - 40.5).abs() < 0.01);
        assert_eq!(sigma_to_t(1e-6, &logs), 0.0);
        assert_eq!(sigma_to_t(1e6, &logs), 99.0);
    }
}
