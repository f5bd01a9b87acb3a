//! Euler (Karras et al. 2022, algorithm 2 without churn), port of diffusers'
//! `EulerDiscreteScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `timestep_spacing` linspace, `steps_offset` 0,
//! epsilon prediction, `interpolation_type` linear, no Karras sigmas, `final_sigmas_type`
//! zero, `timestep_type` discrete. The UNet is fed fractional timesteps (`linspace`, Karras),
//! and its input is scaled by 1 / sqrt(σ² + 1). `init_noise_sigma` is the largest σ for
//! linspace/trailing spacing but sqrt(σ_max² + 1) for leading.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, FinalSigma, Prediction, Spacing, TrainSchedule, ZeroSnr};
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "EulerDiscreteScheduler";

/// The σ schedule shared by Euler, Euler ancestral and LMS.
pub(crate) struct SigmaSchedule {
    /// What the UNet receives, one per step.
    pub timesteps: Vec<f32>,
    /// σ per step plus the final σ (n + 1 values).
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

/// How the σ schedule is built.
pub(crate) struct SigmaOptions {
    pub spacing: Spacing,
    pub steps_offset: usize,
    /// Karras σ with optional (σ_min, σ_max) overrides (else the schedule's own ends).
    pub karras: Option<(Option<f64>, Option<f64>)>,
    pub final_sigma: FinalSigma,
}

/// σ at the diffusers timesteps of `options.spacing` (interpolated in float64 by
/// `np.interp`), optionally re-spaced à la Karras with timesteps recovered by
/// `_sigma_to_t`, then rounded to float32.
pub(crate) fn sigma_schedule(
    train: &TrainSchedule,
    n: usize,
    options: &SigmaOptions,
) -> SigmaSchedule {
    let train_sigmas = common::train_sigmas(&train.alphas_cumprod);
    let raw = common::spaced_timesteps(options.spacing, train.n_train, n, options.steps_offset);
    // numpy builds these as float32 before interpolating.
    let mut timesteps: Vec<f64> = raw.iter().map(|&t| t as f32 as f64).collect();
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| common::np_interp(t, &train_sigmas))
        .collect();
    if let Some((sigma_min, sigma_max)) = options.karras {
        let logs = common::log_sigmas(&train_sigmas);
        let sigma_min = sigma_min.unwrap_or(*sigmas.last().expect("n >= 1"));
        let sigma_max = sigma_max.unwrap_or(sigmas[0]);
        sigmas = common::karras_sigmas(sigma_min, sigma_max, n);
        timesteps = sigmas
            .iter()
            .map(|&s| common::sigma_to_t(s, &logs))
            .collect();
    }
    let last = match options.final_sigma {
        FinalSigma::Zero => 0.0,
        FinalSigma::SigmaMin => train_sigmas[0] as f64,
    };
    let sigmas: Vec<f32> = sigmas
        .iter()
        .chain(std::iter::once(&last))
        .map(|&s| s as f32)
        .collect();
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let init_noise_sigma = match options.spacing {
        Spacing::Linspace | Spacing::Trailing => max,
        Spacing::Leading => (max * max + 1.0).sqrt(),
    };
    SigmaSchedule {
        timesteps: timesteps.iter().map(|&t| t as f32).collect(),
        sigmas,
        init_noise_sigma,
    }
}

/// `x / sqrt(σ² + 1)`.
pub(crate) fn scale_by_sigma(sample: ArrayViewD<'_, f32>, sigma: f32) -> ArrayD<f32> {
    let denom = (sigma * sigma + 1.0).sqrt();
    sample.mapv(|v| v / denom)
}

/// x̂₀ from the model output at σ (epsilon: x − σ·ε; v: −σ/sqrt(σ²+1)·v + x/(σ²+1)).
pub(crate) fn predict_x0(
    prediction: Prediction,
    sigma: f32,
    sample: &ArrayViewD<'_, f32>,
    model_output: &ArrayViewD<'_, f32>,
) -> ArrayD<f32> {
    match prediction {
        Prediction::Epsilon => common::zip2(sample, model_output, |s, m| s - sigma * m),
        Prediction::V => {
            let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
            let c_skip = sigma * sigma + 1.0;
            common::zip2(sample, model_output, |s, m| m * c_out + s / c_skip)
        }
        Prediction::Sample => model_output.to_owned(),
    }
}

/// `x + σ·noise`, the σ-indexed schedulers' `add_noise`.
pub(crate) fn add_noise_sigma(
    sigma: f32,
    original: &ArrayViewD<'_, f32>,
    noise: &ArrayViewD<'_, f32>,
) -> ArrayD<f32> {
    common::zip2(original, noise, |x, z| x + z * sigma)
}

/// `EulerDiscreteScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Euler {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
}

impl Euler {
    /// `EulerDiscreteScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::RescaleFinite)?;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, train.n_train)?;
        let prediction = common::choice(
            CLASS,
            "prediction_type",
            cfg.prediction_type.as_deref(),
            "epsilon",
            &[
                ("epsilon", Prediction::Epsilon),
                ("v_prediction", Prediction::V),
                ("sample", Prediction::Sample),
                ("original_sample", Prediction::Sample),
            ],
        )?;
        let spacing = common::spacing(CLASS, cfg, "linspace")?;
        common::choice(
            CLASS,
            "interpolation_type",
            cfg.interpolation_type.as_deref(),
            "linear",
            &[("linear", ())],
        )?;
        let continuous = common::choice(
            CLASS,
            "timestep_type",
            cfg.timestep_type.as_deref(),
            "discrete",
            &[("discrete", false), ("continuous", true)],
        )?;
        common::reject_true(CLASS, "use_exponential_sigmas", cfg.use_exponential_sigmas)?;
        common::reject_true(CLASS, "use_beta_sigmas", cfg.use_beta_sigmas)?;
        let karras = cfg
            .use_karras_sigmas
            .unwrap_or(false)
            .then_some((cfg.sigma_min, cfg.sigma_max));
        let schedule = sigma_schedule(
            &train,
            n,
            &SigmaOptions {
                spacing,
                steps_offset: cfg.steps_offset.unwrap_or(0),
                karras,
                final_sigma: common::final_sigma(CLASS, cfg)?,
            },
        );
        let timesteps = if continuous && prediction == Prediction::V {
            schedule.sigmas[..n]
                .iter()
                .map(|&s| 0.25 * s.ln())
                .collect()
        } else {
            schedule.timesteps
        };
        Ok(Euler {
            timesteps,
            sigmas: schedule.sigmas,
            init_noise_sigma: schedule.init_noise_sigma,
            prediction,
        })
    }
}

impl Scheduler for Euler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: ArrayViewD<'_, f32>, step_index: usize) -> ArrayD<f32> {
        assert!(
            step_index < self.timesteps.len(),
            "{CLASS}: step index {step_index} out of range"
        );
        scale_by_sigma(sample, self.sigmas[step_index])
    }

    fn try_step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        step_index: usize,
        sample: ArrayViewD<'_, f32>,
        _noise: Option<ArrayViewD<'_, f32>>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        common::check_step(
            CLASS,
            step_index,
            self.timesteps.len(),
            &sample,
            &model_output,
            None,
            false,
        )?;
        let sigma = self.sigmas[step_index];
        // s_churn = 0: γ = 0 and σ̂ = σ.
        let sigma_hat = sigma * (0.0 + 1.0);
        let x0 = predict_x0(self.prediction, sigma_hat, &sample, &model_output);
        let dt = self.sigmas[step_index + 1] - sigma_hat;
        Ok(common::zip2(&sample, &x0.view(), |s, x| {
            let derivative = (s - x) / sigma_hat;
            s + derivative * dt
        }))
    }

    fn needs_noise(&self, _step_index: usize) -> bool {
        false
    }

    fn try_add_noise(
        &self,
        original: ArrayViewD<'_, f32>,
        noise: ArrayViewD<'_, f32>,
        step_index: usize,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        common::check_add_noise(CLASS, step_index, self.timesteps.len(), &original, &noise)?;
        Ok(add_noise_sigma(self.sigmas[step_index], &original, &noise))
    }
}
