//! DDIM (Song et al. 2020), port of diffusers' `DDIMScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `clip_sample` true (range 1.0),
//! `set_alpha_to_one` true, `timestep_spacing` leading, `steps_offset` 0, epsilon prediction.
//! `eta` (from [`SchedulerConfig::eta`], default 0) adds `eta · σ_t · noise` per step.
//!
//! As in diffusers, the previous timestep is always `t − num_train_timesteps / n` (integer
//! division), whatever the spacing, so `linspace` and `trailing` schedules step to a
//! timestep other than the next one in the list.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, Prediction, Spacing, ZeroSnr};
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "DDIMScheduler";

/// `DDIMScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    step_ratio: i64,
    prediction: Prediction,
    clip: Option<f32>,
    eta: f32,
}

impl Ddim {
    /// `DDIMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::Rescale)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        common::reject_true(CLASS, "thresholding", cfg.thresholding)?;
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        let spacing = common::spacing(CLASS, cfg, "leading")?;
        let offset = cfg.steps_offset.unwrap_or(0);
        let eta = cfg.eta.unwrap_or(0.0);
        if eta.is_nan() || eta < 0.0 {
            return Err(common::invalid(
                CLASS,
                format!("eta = {eta}; it must be 0 or more"),
            ));
        }
        let clip = if cfg.clip_sample.unwrap_or(true) {
            Some(cfg.clip_sample_range.unwrap_or(1.0) as f32)
        } else {
            None
        };
        let raw = common::spaced_timesteps(spacing, n_train, n, offset);
        let timesteps: Vec<i64> = raw
            .iter()
            .map(|&t| match spacing {
                Spacing::Linspace => t.round_ties_even() as i64,
                _ => t as i64,
            })
            .collect();
        for &t in &timesteps {
            common::alpha_at(CLASS, &train.alphas_cumprod, t)?;
        }
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Ddim {
            final_alpha_cumprod,
            timesteps_f32: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            step_ratio: (n_train / n) as i64,
            prediction,
            clip,
            eta: eta as f32,
            alphas_cumprod: train.alphas_cumprod,
        })
    }
}

impl Scheduler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
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
        let needs_noise = self.eta > 0.0;
        common::check_step(
            CLASS,
            step_index,
            self.timesteps.len(),
            &sample,
            &model_output,
            noise.as_ref(),
            needs_noise,
        )?;
        let t = self.timesteps[step_index];
        let prev_t = t - self.step_ratio;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            common::alpha_at(CLASS, &self.alphas_cumprod, prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (mut x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                common::zip2(&sample, &model_output, |s, m| (s - sb * m) / sa),
                model_output.to_owned(),
            ),
            Prediction::Sample => {
                let x0 = model_output.to_owned();
                let eps = common::zip2(&sample, &x0.view(), |s, x| (s - sa * x) / sb);
                (x0, eps)
            }
            Prediction::V => (
                common::zip2(&sample, &model_output, |s, m| sa * s - sb * m),
                common::zip2(&sample, &model_output, |s, m| sa * m + sb * s),
            ),
        };
        if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = (1.0 - a_prev - std_dev * std_dev).sqrt();
        let sa_prev = a_prev.sqrt();
        let mut prev = common::zip2(&x0.view(), &eps.view(), |x, e| sa_prev * x + direction * e);
        if needs_noise {
            let noise = noise.expect("checked");
            prev.zip_mut_with(&noise, |p, &z| *p += std_dev * z);
        }
        Ok(prev)
    }

    fn needs_noise(&self, _step_index: usize) -> bool {
        self.eta > 0.0
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

/// `sqrt(ᾱ) · x + sqrt(1 − ᾱ) · noise`, the alpha-indexed schedulers' `add_noise`.
pub(crate) fn add_noise_alpha(
    a: f32,
    original: &ArrayViewD<'_, f32>,
    noise: &ArrayViewD<'_, f32>,
) -> ArrayD<f32> {
    let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
    common::zip2(original, noise, |x, z| sa * x + sb * z)
}
