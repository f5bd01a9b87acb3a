//! DDPM (Ho et al. 2020), port of diffusers' `DDPMScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `variance_type` fixed_small, `clip_sample` true
//! (range 1.0), `timestep_spacing` leading, `steps_offset` 0, epsilon prediction. The previous
//! timestep is the next one in the list (−1 after the last). Noise is added at every step
//! whose timestep is above 0.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, Prediction, Spacing, ZeroSnr};
use super::ddim::add_noise_alpha;
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "DDPMScheduler";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variance {
    Small,
    SmallLog,
    Large,
}

/// `DDPMScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Ddpm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    variance: Variance,
}

impl Ddpm {
    /// `DDPMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::Rescale)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        common::reject_true(CLASS, "thresholding", cfg.thresholding)?;
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        let spacing = common::spacing(CLASS, cfg, "leading")?;
        let variance = common::choice(
            CLASS,
            "variance_type",
            cfg.variance_type.as_deref(),
            "fixed_small",
            &[
                ("fixed_small", Variance::Small),
                ("fixed_small_log", Variance::SmallLog),
                ("fixed_large", Variance::Large),
            ],
        )?;
        let clip = if cfg.clip_sample.unwrap_or(true) {
            Some(cfg.clip_sample_range.unwrap_or(1.0) as f32)
        } else {
            None
        };
        let offset = cfg.steps_offset.unwrap_or(0);
        let timesteps: Vec<i64> = common::spaced_timesteps(spacing, n_train, n, offset)
            .into_iter()
            .map(|t| match spacing {
                Spacing::Linspace => t.round_ties_even() as i64,
                _ => t as i64,
            })
            .collect();
        for &t in &timesteps {
            common::alpha_at(CLASS, &train.alphas_cumprod, t)?;
        }
        Ok(Ddpm {
            alphas_cumprod: train.alphas_cumprod,
            timesteps_f32: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            prediction,
            clip,
            variance,
        })
    }
}

impl Scheduler for Ddpm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddpm
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, sample: ArrayViewD<'_, f32>, step_index: usize) -> ArrayD<f32> {
        assert!(
            step_index < self.timesteps.len(),
            "{CLASS}: step index {step_index} out of range"
        );
        sample.to_owned()
    }

    fn try_step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        step_index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: Option<ArrayViewD<'_, f32>>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        let len = self.timesteps.len();
        let needs_noise = step_index < len && self.needs_noise(step_index);
        common::check_step(
            CLASS,
            step_index,
            len,
            &sample,
            &model_output,
            noise.as_ref(),
            needs_noise,
        )?;
        let t = self.timesteps[step_index];
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = match self.timesteps.get(step_index + 1) {
            Some(&prev) if prev >= 0 => self.alphas_cumprod[prev as usize],
            _ => 1.0,
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let current_alpha = a_t / a_prev;
        let current_beta = 1.0 - current_alpha;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let mut x0 = match self.prediction {
            Prediction::Epsilon => common::zip2(&sample, &model_output, |s, m| (s - sb * m) / sa),
            Prediction::Sample => model_output.to_owned(),
            Prediction::V => common::zip2(&sample, &model_output, |s, m| sa * s - sb * m),
        };
        if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        let x0_coeff = (a_prev.sqrt() * current_beta) / b_t;
        let sample_coeff = current_alpha.sqrt() * b_prev / b_t;
        let mut prev = common::zip2(&x0.view(), &sample, |x, s| x0_coeff * x + sample_coeff * s);
        if needs_noise {
            let variance = ((1.0 - a_prev) / (1.0 - a_t) * current_beta).max(1e-20);
            let scale = match self.variance {
                Variance::Small => variance.sqrt(),
                Variance::SmallLog => (0.5 * variance.ln()).exp(),
                Variance::Large => current_beta.sqrt(),
            };
            let noise = noise.expect("checked");
            prev.zip_mut_with(&noise, |p, &z| *p += scale * z);
        }
        Ok(prev)
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        self.timesteps.get(step_index).is_some_and(|&t| t > 0)
    }

    fn try_add_noise(
        &self,
        original: ArrayViewD<'_, f32>,
        noise: ArrayViewD<'_, f32>,
        step_index: usize,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        common::check_add_noise(CLASS, step_index, self.timesteps.len(), &original, &noise)?;
        let a = self.alphas_cumprod[self.timesteps[step_index] as usize];
        Ok(add_noise_alpha(a, &original, &noise))
    }
}
