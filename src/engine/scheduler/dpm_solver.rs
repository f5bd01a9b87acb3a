//! DPM-Solver++ multistep (Lu et al. 2022), port of diffusers' `DPMSolverMultistepScheduler`
//! with `algorithm_type` dpmsolver++.
//!
//! Class defaults: linear betas 0.0001..0.02, `solver_order` 2, `solver_type` midpoint,
//! `lower_order_final` true, `euler_at_final` false, `final_sigmas_type` zero,
//! `lambda_min_clipped` −∞, `timestep_spacing` linspace, `steps_offset` 0, epsilon
//! prediction, no Karras sigmas. Timesteps are integers (Karras ones rounded from the
//! interpolated fractional timestep, except for `squaredcos_cap_v2`, where diffusers truncates).
//! The model input is not scaled. The last step drops to first order with
//! `final_sigmas_type` zero or with fewer than 15 steps (`lower_order_final`).
//!
//! Implemented: solver orders 1–3, midpoint and heun solver types, epsilon / v_prediction /
//! sample prediction. Not implemented (errors): the `dpmsolver`/SDE algorithm types,
//! thresholding, learned variance, Lu lambdas, exponential/beta/flow sigmas, dynamic shifting.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, FinalSigma, Prediction, Sequence, ZeroSnr};
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "DPMSolverMultistepScheduler";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

/// `DPMSolverMultistepScheduler` (DPM-Solver++) with its timesteps set.
#[derive(Debug, Clone)]
pub struct DpmSolver {
    karras: bool,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma: FinalSigma,
    model_outputs: Vec<ArrayD<f32>>,
    lower_order_nums: usize,
    sequence: Sequence,
}

/// The config's choices this port honours, checked in diffusers' order.
struct Options {
    solver_order: usize,
    prediction: Prediction,
    solver_type: SolverType,
    spacing: common::Spacing,
    final_sigma: FinalSigma,
}

impl Options {
    fn read(cfg: &SchedulerConfig) -> Result<Options, SchedulerError> {
        let solver_order = cfg.solver_order.unwrap_or(2);
        if !(1..=3).contains(&solver_order) {
            return Err(SchedulerError::Unsupported {
                class: CLASS,
                key: "solver_order",
                value: solver_order.to_string(),
                allowed: "1, 2, 3".into(),
            });
        }
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        // diffusers maps "deis" to dpmsolver++ and the UniPC/other solver types to midpoint.
        common::choice(
            CLASS,
            "algorithm_type",
            cfg.algorithm_type.as_deref(),
            "dpmsolver++",
            &[("dpmsolver++", ()), ("deis", ())],
        )?;
        let solver_type = common::choice(
            CLASS,
            "solver_type",
            cfg.solver_type.as_deref(),
            "midpoint",
            &[
                ("midpoint", SolverType::Midpoint),
                ("heun", SolverType::Heun),
                ("logrho", SolverType::Midpoint),
                ("bh1", SolverType::Midpoint),
                ("bh2", SolverType::Midpoint),
            ],
        )?;
        common::reject_true(CLASS, "thresholding", cfg.thresholding)?;
        common::reject_true(CLASS, "use_lu_lambdas", cfg.use_lu_lambdas)?;
        common::reject_true(CLASS, "use_exponential_sigmas", cfg.use_exponential_sigmas)?;
        common::reject_true(CLASS, "use_beta_sigmas", cfg.use_beta_sigmas)?;
        common::reject_true(CLASS, "use_flow_sigmas", cfg.use_flow_sigmas)?;
        common::reject_true(CLASS, "use_dynamic_shifting", cfg.use_dynamic_shifting)?;
        if let Some(v) = &cfg.variance_type {
            return Err(SchedulerError::Unsupported {
                class: CLASS,
                key: "variance_type",
                value: format!("{v:?}"),
                allowed: "null (learned variance is not implemented)".into(),
            });
        }
        Ok(Options {
            solver_order,
            prediction,
            solver_type,
            spacing: common::spacing(CLASS, cfg, "linspace")?,
            final_sigma: common::final_sigma(CLASS, cfg)?,
        })
    }
}

/// `lambda_min_clipped`: `searchsorted(flip(λ_t), clip)` cuts off the noisiest timesteps; the
/// training timesteps left.
fn unclipped_timesteps(
    cfg: &SchedulerConfig,
    alphas_cumprod: &[f32],
    n_train: usize,
) -> Result<usize, SchedulerError> {
    let last = match cfg.lambda_min_clipped {
        Some(clip) if clip > f64::NEG_INFINITY => {
            let clip = clip as f32;
            let below = alphas_cumprod
                .iter()
                .rev()
                .take_while(|&&a| common::lambda(a.sqrt(), (1.0 - a).sqrt()) < clip)
                .count();
            n_train - below
        }
        _ => n_train,
    };
    if last < 2 {
        return Err(common::invalid(
            CLASS,
            "lambda_min_clipped leaves fewer than 2 training timesteps; lower it",
        ));
    }
    Ok(last)
}

/// Karras sigmas over the training range and the timesteps they interpolate to (rounded;
/// truncated for `squaredcos_cap_v2`, as diffusers does).
fn karras_schedule(cfg: &SchedulerConfig, train_sigmas: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let logs = common::log_sigmas(train_sigmas);
    let sigma_min = cfg.sigma_min.unwrap_or(train_sigmas[0] as f64);
    let sigma_max = cfg
        .sigma_max
        .unwrap_or(*train_sigmas.last().expect("n_train >= 2") as f64);
    let sigmas = common::karras_sigmas(sigma_min, sigma_max, n);
    let cosine = cfg.beta_schedule.as_deref() == Some("squaredcos_cap_v2");
    let timesteps = sigmas
        .iter()
        .map(|&s| {
            let t = common::sigma_to_t(s, &logs);
            if cosine {
                t.trunc()
            } else {
                t.round_ties_even()
            }
        })
        .collect();
    (timesteps, sigmas)
}

impl DpmSolver {
    /// `DPMSolverMultistepScheduler.from_config(config)` then `set_timesteps(n)`;
    /// `force_karras` turns `use_karras_sigmas` on whatever the config says.
    pub fn new(
        cfg: &SchedulerConfig,
        num_inference_steps: usize,
        force_karras: bool,
    ) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::RescaleFinite)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        let options = Options::read(cfg)?;
        let karras = force_karras || cfg.use_karras_sigmas.unwrap_or(false);

        let ac = &train.alphas_cumprod;
        let last = unclipped_timesteps(cfg, ac, n_train)?;
        let timesteps = common::multistep_timesteps(
            options.spacing,
            n_train,
            last,
            n,
            cfg.steps_offset.unwrap_or(0),
        );
        let train_sigmas = common::train_sigmas(ac);
        let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = if karras {
            karras_schedule(cfg, &train_sigmas, n)
        } else {
            let sigmas = timesteps
                .iter()
                .map(|&t| common::np_interp(t, &train_sigmas))
                .collect();
            (timesteps, sigmas)
        };
        let last_sigma = match options.final_sigma {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => train_sigmas[0] as f64,
        };
        let sigmas: Vec<f32> = sigmas
            .iter()
            .chain(std::iter::once(&last_sigma))
            .map(|&s| s as f32)
            .collect();
        Ok(DpmSolver {
            karras,
            timesteps: timesteps.iter().map(|&t| t as i64 as f32).collect(),
            sigmas,
            prediction: options.prediction,
            solver_order: options.solver_order,
            solver_type: options.solver_type,
            lower_order_final: cfg.lower_order_final.unwrap_or(true),
            euler_at_final: cfg.euler_at_final.unwrap_or(false),
            final_sigma: options.final_sigma,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            sequence: Sequence::default(),
        })
    }

    /// Whether this schedule uses Karras sigmas.
    pub fn karras(&self) -> bool {
        self.karras
    }

    /// x̂₀ (DPM-Solver++ works on data predictions).
    fn convert(
        &self,
        i: usize,
        sample: &ArrayViewD<'_, f32>,
        model_output: &ArrayViewD<'_, f32>,
    ) -> ArrayD<f32> {
        let (alpha, sigma) = common::alpha_sigma(self.sigmas[i]);
        match self.prediction {
            Prediction::Epsilon => {
                common::zip2(sample, model_output, |s, m| (s - sigma * m) / alpha)
            }
            Prediction::Sample => model_output.to_owned(),
            Prediction::V => common::zip2(sample, model_output, |s, m| alpha * s - sigma * m),
        }
    }

    fn first_order(
        &self,
        i: usize,
        x0: &ArrayViewD<'_, f32>,
        sample: &ArrayViewD<'_, f32>,
    ) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = common::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = common::alpha_sigma(self.sigmas[i]);
        let h = common::lambda(alpha_t, sigma_t) - common::lambda(alpha_s, sigma_s);
        let c_sample = sigma_t / sigma_s;
        let c_x0 = alpha_t * ((-h).exp() - 1.0);
        common::zip2(sample, x0, |s, x| c_sample * s - c_x0 * x)
    }

    fn second_order(&self, i: usize, sample: &ArrayViewD<'_, f32>) -> ArrayD<f32> {
        let k = self.model_outputs.len();
        let (m0, m1) = (
            self.model_outputs[k - 1].view(),
            self.model_outputs[k - 2].view(),
        );
        let (alpha_t, sigma_t) = common::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = common::alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = common::alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = common::lambda(alpha_t, sigma_t);
        let lambda_s0 = common::lambda(alpha_s0, sigma_s0);
        let lambda_s1 = common::lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let inv_r0 = 1.0 / r0;
        let d1 = common::zip2(&m0, &m1, |a, b| inv_r0 * (a - b));
        let c_sample = sigma_t / sigma_s0;
        let c_d0 = alpha_t * ((-h).exp() - 1.0);
        match self.solver_type {
            SolverType::Midpoint => {
                let c_d1 = 0.5 * (alpha_t * ((-h).exp() - 1.0));
                common::zip3(sample, &m0, &d1.view(), |s, d0, d1| {
                    c_sample * s - c_d0 * d0 - c_d1 * d1
                })
            }
            SolverType::Heun => {
                let c_d1 = alpha_t * (((-h).exp() - 1.0) / h + 1.0);
                common::zip3(sample, &m0, &d1.view(), |s, d0, d1| {
                    c_sample * s - c_d0 * d0 + c_d1 * d1
                })
            }
        }
    }

    fn third_order(&self, i: usize, sample: &ArrayViewD<'_, f32>) -> ArrayD<f32> {
        let k = self.model_outputs.len();
        let (m0, m1, m2) = (
            self.model_outputs[k - 1].view(),
            self.model_outputs[k - 2].view(),
            self.model_outputs[k - 3].view(),
        );
        let (alpha_t, sigma_t) = common::alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = common::alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = common::alpha_sigma(self.sigmas[i - 1]);
        let (alpha_s2, sigma_s2) = common::alpha_sigma(self.sigmas[i - 2]);
        let lambda_t = common::lambda(alpha_t, sigma_t);
        let lambda_s0 = common::lambda(alpha_s0, sigma_s0);
        let lambda_s1 = common::lambda(alpha_s1, sigma_s1);
        let lambda_s2 = common::lambda(alpha_s2, sigma_s2);
        let h = lambda_t - lambda_s0;
        let (h_0, h_1) = (lambda_s0 - lambda_s1, lambda_s1 - lambda_s2);
        let (r0, r1) = (h_0 / h, h_1 / h);
        let (inv_r0, inv_r1) = (1.0 / r0, 1.0 / r1);
        let d1_0 = common::zip2(&m0, &m1, |a, b| inv_r0 * (a - b));
        let d1_1 = common::zip2(&m1, &m2, |a, b| inv_r1 * (a - b));
        let w = r0 / (r0 + r1);
        let inv_sum = 1.0 / (r0 + r1);
        let d1 = common::zip2(&d1_0.view(), &d1_1.view(), |a, b| a + w * (a - b));
        let d2 = common::zip2(&d1_0.view(), &d1_1.view(), |a, b| inv_sum * (a - b));
        let e = (-h).exp();
        let c_sample = sigma_t / sigma_s0;
        let c_d0 = alpha_t * (e - 1.0);
        let c_d1 = alpha_t * ((e - 1.0) / h + 1.0);
        let c_d2 = alpha_t * ((e - 1.0 + h) / (h * h) - 0.5);
        let partial = common::zip3(sample, &m0, &d1.view(), |s, d0, d1| {
            c_sample * s - c_d0 * d0 + c_d1 * d1
        });
        common::zip2(&partial.view(), &d2.view(), |p, d2| p - c_d2 * d2)
    }
}

impl Scheduler for DpmSolver {
    fn kind(&self) -> SchedulerKind {
        if self.karras {
            SchedulerKind::DpmPp2mKarras
        } else {
            SchedulerKind::DpmPp2m
        }
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
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
        _noise: Option<ArrayViewD<'_, f32>>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        let n = self.timesteps.len();
        common::check_step(CLASS, step_index, n, &sample, &model_output, None, false)?;
        self.sequence.check(CLASS, step_index)?;
        let i = step_index;
        let lower_order_final = i == n - 1
            && (self.euler_at_final
                || (self.lower_order_final && n < 15)
                || self.final_sigma == FinalSigma::Zero);
        let lower_order_second = i + 2 == n && self.lower_order_final && n < 15;
        let x0 = self.convert(i, &sample, &model_output);
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            let x0 = self.model_outputs.last().expect("just pushed").view();
            self.first_order(i, &x0, &sample)
        } else if self.solver_order == 2 || self.lower_order_nums < 2 || lower_order_second {
            self.second_order(i, &sample)
        } else {
            self.third_order(i, &sample)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.sequence.advance(i);
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
        let (alpha, sigma) = common::alpha_sigma(self.sigmas[step_index]);
        Ok(common::zip2(&original, &noise, |x, z| {
            alpha * x + sigma * z
        }))
    }
}
