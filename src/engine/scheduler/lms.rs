//! Linear multistep (order 4), port of diffusers' `LMSDiscreteScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `timestep_spacing` linspace, `steps_offset` 0,
//! epsilon prediction, no Karras sigmas. The step combines the last (up to) four derivatives
//! with coefficients ∫ of their Lagrange basis polynomials in σ over [σ_i, σ_{i+1}]; diffusers
//! computes them with `scipy.integrate.quad`, here with adaptive Gauss–Kronrod quadrature
//! (exact for these cubic integrands up to rounding).

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, FinalSigma, Prediction, Sequence, ZeroSnr};
use super::euler::{SigmaOptions, add_noise_sigma, predict_x0, scale_by_sigma, sigma_schedule};
use super::quadrature;
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "LMSDiscreteScheduler";
const ORDER: usize = 4;

/// `LMSDiscreteScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Lms {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    derivatives: Vec<ArrayD<f32>>,
    sequence: Sequence,
}

impl Lms {
    /// `LMSDiscreteScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::Ignored)?;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, train.n_train)?;
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        let spacing = common::spacing(CLASS, cfg, "linspace")?;
        common::reject_true(CLASS, "use_exponential_sigmas", cfg.use_exponential_sigmas)?;
        common::reject_true(CLASS, "use_beta_sigmas", cfg.use_beta_sigmas)?;
        // LMS's Karras conversion always spans its own σ range (no sigma_min/sigma_max keys).
        let karras = cfg
            .use_karras_sigmas
            .unwrap_or(false)
            .then_some((None, None));
        let schedule = sigma_schedule(
            &train,
            n,
            &SigmaOptions {
                spacing,
                steps_offset: cfg.steps_offset.unwrap_or(0),
                karras,
                final_sigma: FinalSigma::Zero,
            },
        );
        Ok(Lms {
            timesteps: schedule.timesteps,
            sigmas: schedule.sigmas,
            init_noise_sigma: schedule.init_noise_sigma,
            prediction,
            derivatives: Vec::new(),
            sequence: Sequence::default(),
        })
    }

    /// ∫_{σ_t}^{σ_{t+1}} Π_{k≠j, k<order} (τ − σ_{t−k}) / (σ_{t−j} − σ_{t−k}) dτ.
    fn coefficient(&self, order: usize, t: usize, j: usize) -> f64 {
        let s = |i: usize| self.sigmas[i] as f64;
        let basis = |tau: f64| {
            let mut prod = 1.0;
            for k in 0..order {
                if k != j {
                    prod *= (tau - s(t - k)) / (s(t - j) - s(t - k));
                }
            }
            prod
        };
        quadrature::integrate(basis, s(t), s(t + 1), 1e-14, 1e-12)
    }
}

impl Scheduler for Lms {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Lms
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
        self.sequence.check(CLASS, step_index)?;
        let sigma = self.sigmas[step_index];
        let x0 = predict_x0(self.prediction, sigma, &sample, &model_output);
        let derivative = common::zip2(&sample, &x0.view(), |s, x| (s - x) / sigma);
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (step_index + 1).min(ORDER);
        // sum(coeff * derivative for coeff, derivative in zip(coeffs, reversed(derivatives))),
        // starting from 0 like Python's sum, each coefficient rounded to float32 by torch.
        let mut acc: Option<ArrayD<f32>> = None;
        for (j, d) in (0..order).zip(self.derivatives.iter().rev()) {
            let c = self.coefficient(order, step_index, j) as f32;
            acc = Some(match acc {
                None => d.mapv(|v| 0.0 + c * v),
                Some(a) => common::zip2(&a.view(), &d.view(), |a, v| a + c * v),
            });
        }
        let acc = acc.expect("at least one derivative");
        let prev = common::zip2(&sample, &acc.view(), |s, a| s + a);
        self.sequence.advance(step_index);
        Ok(prev)
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
