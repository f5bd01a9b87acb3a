//! Euler ancestral, port of diffusers' `EulerAncestralDiscreteScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `timestep_spacing` linspace, `steps_offset` 0,
//! epsilon prediction (or v_prediction; the class has no `sample` prediction and no Karras
//! sigmas: `use_karras_sigmas` is ignored, as in diffusers). Every step, the last included,
//! consumes one noise array: an Euler step down to σ_down, then σ_up · noise.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, FinalSigma, Prediction, ZeroSnr};
use super::euler::{SigmaOptions, add_noise_sigma, predict_x0, scale_by_sigma, sigma_schedule};
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "EulerAncestralDiscreteScheduler";

/// `EulerAncestralDiscreteScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
}

impl EulerAncestral {
    /// `EulerAncestralDiscreteScheduler.from_config(config)` then `set_timesteps(n)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::RescaleFinite)?;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, train.n_train)?;
        let prediction = common::prediction(
            CLASS,
            cfg,
            &[
                ("epsilon", Prediction::Epsilon),
                ("v_prediction", Prediction::V),
            ],
        )?;
        let spacing = common::spacing(CLASS, cfg, "linspace")?;
        let schedule = sigma_schedule(
            &train,
            n,
            &SigmaOptions {
                spacing,
                steps_offset: cfg.steps_offset.unwrap_or(0),
                karras: None,
                final_sigma: FinalSigma::Zero,
            },
        );
        Ok(EulerAncestral {
            timesteps: schedule.timesteps,
            sigmas: schedule.sigmas,
            init_noise_sigma: schedule.init_noise_sigma,
            prediction,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
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
        noise: Option<ArrayViewD<'_, f32>>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        common::check_step(
            CLASS,
            step_index,
            self.timesteps.len(),
            &sample,
            &model_output,
            noise.as_ref(),
            true,
        )?;
        let noise = noise.expect("checked");
        let sigma = self.sigmas[step_index];
        let x0 = predict_x0(self.prediction, sigma, &sample, &model_output);
        let sigma_from = sigma;
        let sigma_to = self.sigmas[step_index + 1];
        let (from2, to2) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma;
        let moved = common::zip2(&sample, &x0.view(), |s, x| {
            let derivative = (s - x) / sigma;
            s + derivative * dt
        });
        Ok(common::zip2(&moved.view(), &noise, |p, z| p + z * sigma_up))
    }

    fn needs_noise(&self, step_index: usize) -> bool {
        step_index < self.timesteps.len()
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
