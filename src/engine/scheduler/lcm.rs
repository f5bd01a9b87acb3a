//! Latent consistency models (Luo et al. 2023), port of diffusers' `LCMScheduler`.
//!
//! Class defaults: SD's betas (scaled_linear 0.00085..0.012), `original_inference_steps` 50,
//! `timestep_scaling` 10, `clip_sample` false, `set_alpha_to_one` true, epsilon prediction.
//! `timestep_spacing` and `steps_offset` are accepted and ignored, as diffusers does.
//!
//! Timesteps: the distillation schedule `k·(1..=original_inference_steps) − 1` with
//! `k = num_train_timesteps / original_inference_steps` (integer division), reversed, of which
//! `n` evenly spaced indices are taken. A step predicts x₀ from the model output, applies the
//! boundary-condition scalings `c_skip = σd² / ((s·t)² + σd²)`, `c_out = s·t / sqrt((s·t)² + σd²)`
//! (σd = 0.5, s = `timestep_scaling`) to get `denoised = c_out·x₀ + c_skip·x`, and noises it
//! afresh to the next timestep on every step but the last, which returns `denoised` itself (what
//! the pipeline decodes).

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, Prediction, ZeroSnr};
use super::ddim::add_noise_alpha;
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "LCMScheduler";
/// diffusers' `sigma_data`.
const SIGMA_DATA: f32 = 0.5;

/// `LCMScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Lcm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    prediction: Prediction,
    clip: Option<f32>,
    timestep_scaling: f32,
}

impl Lcm {
    /// `LCMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        // The class's own beta defaults (SD's), not the linear ones of DDIM/DDPM.
        let mut with_defaults = cfg.clone();
        if cfg.trained_betas.is_none() {
            with_defaults.beta_start = Some(cfg.beta_start.unwrap_or(0.00085));
            with_defaults.beta_end = Some(cfg.beta_end.unwrap_or(0.012));
            with_defaults.beta_schedule = Some(
                cfg.beta_schedule
                    .clone()
                    .unwrap_or_else(|| "scaled_linear".into()),
            );
        }
        let train = common::train_schedule(CLASS, &with_defaults, ZeroSnr::Rescale)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        common::reject_true(CLASS, "thresholding", cfg.thresholding)?;
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        let original = cfg.original_inference_steps.unwrap_or(50);
        if original == 0 || original > n_train {
            return Err(common::invalid(
                CLASS,
                format!(
                    "original_inference_steps = {original}; it must be between 1 and \
                     num_train_timesteps ({n_train})"
                ),
            ));
        }
        if n > original {
            return Err(common::invalid(
                CLASS,
                format!(
                    "num_inference_steps = {n} is more than original_inference_steps \
                     ({original}): the schedule is a subset of the distillation schedule"
                ),
            ));
        }
        let scaling = cfg.timestep_scaling.unwrap_or(10.0);
        if !scaling.is_finite() || scaling <= 0.0 {
            return Err(common::invalid(
                CLASS,
                format!("timestep_scaling = {scaling}; it must be a positive number"),
            ));
        }
        let clip = if cfg.clip_sample.unwrap_or(false) {
            Some(cfg.clip_sample_range.unwrap_or(1.0) as f32)
        } else {
            None
        };
        let timesteps = lcm_timesteps(n_train, original, n);
        Ok(Lcm {
            timesteps_f32: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            prediction,
            clip,
            timestep_scaling: scaling as f32,
            alphas_cumprod: train.alphas_cumprod,
        })
    }

    /// Step `step_index`'s consistency prediction `c_out·x₀ + c_skip·x` (diffusers'
    /// `LCMSchedulerOutput.denoised`), which the last step returns.
    pub fn denoised(
        &self,
        model_output: ArrayViewD<'_, f32>,
        step_index: usize,
        sample: ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        if step_index >= self.timesteps.len() {
            return Err(SchedulerError::StepIndex {
                class: CLASS,
                index: step_index,
                len: self.timesteps.len(),
            });
        }
        common::check_shape(CLASS, step_index, "model_output", &sample, &model_output)?;
        let t = self.timesteps[step_index];
        let a_t = common::alpha_at(CLASS, &self.alphas_cumprod, t)?;
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let mut x0 = match self.prediction {
            Prediction::Epsilon => common::zip2(&sample, &model_output, |s, m| (s - sb * m) / sa),
            Prediction::Sample => model_output.to_owned(),
            Prediction::V => common::zip2(&sample, &model_output, |s, m| sa * s - sb * m),
        };
        if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        let (c_skip, c_out) = self.scalings(t);
        Ok(common::zip2(&x0.view(), &sample, |x, s| {
            c_out * x + c_skip * s
        }))
    }

    /// The boundary-condition scalings `(c_skip, c_out)` at timestep `t`, in float32 as diffusers
    /// computes them on a 0-d tensor.
    pub fn scalings(&self, t: i64) -> (f32, f32) {
        let s = t as f32 * self.timestep_scaling;
        let sd2 = SIGMA_DATA * SIGMA_DATA;
        let d = s * s + sd2;
        (sd2 / d, s / d.sqrt())
    }
}

/// `n` timesteps evenly spaced (by index) over the reversed distillation schedule.
fn lcm_timesteps(n_train: usize, original: usize, n: usize) -> Vec<i64> {
    let k = (n_train / original) as i64;
    let origin: Vec<i64> = (1..=original as i64).rev().map(|i| i * k - 1).collect();
    let len = origin.len() as f64;
    let step = len / n as f64;
    (0..n)
        .map(|i| origin[(i as f64 * step).floor() as usize])
        .collect()
}

impl Scheduler for Lcm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Lcm
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
        let needs_noise = self.needs_noise(step_index);
        common::check_step(
            CLASS,
            step_index,
            self.timesteps.len(),
            &sample,
            &model_output,
            noise.as_ref(),
            needs_noise,
        )?;
        let denoised = self.denoised(model_output, step_index, sample)?;
        if !needs_noise {
            return Ok(denoised);
        }
        let prev_t = self.timesteps[step_index + 1];
        let a_prev = common::alpha_at(CLASS, &self.alphas_cumprod, prev_t)?;
        let noise = noise.expect("checked");
        Ok(add_noise_alpha(a_prev, &denoised.view(), &noise))
    }

    /// Fresh noise on every step but the last.
    fn needs_noise(&self, step_index: usize) -> bool {
        step_index + 1 < self.timesteps.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_follow_the_distillation_schedule() {
        assert_eq!(lcm_timesteps(1000, 50, 4), [999, 759, 499, 259]);
        assert_eq!(lcm_timesteps(1000, 50, 3), [999, 679, 339]);
        assert_eq!(lcm_timesteps(1000, 25, 4), [999, 759, 519, 279]);
        assert_eq!(lcm_timesteps(1000, 50, 1), [999]);
    }

    #[test]
    fn more_steps_than_the_distillation_schedule_are_refused() {
        let e = Lcm::new(&SchedulerConfig::default(), 51).unwrap_err();
        assert!(
            e.to_string().contains("original_inference_steps (50)"),
            "{e}"
        );
        assert!(Lcm::new(&SchedulerConfig::default(), 50).is_ok());
    }
}
