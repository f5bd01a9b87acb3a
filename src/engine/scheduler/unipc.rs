//! UniPC (Zhao et al. 2023), port of diffusers' `UniPCMultistepScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `solver_order` 2, `solver_type` bh2,
//! `predict_x0` true, `lower_order_final` true, corrector on every step
//! (`disable_corrector` empty), `final_sigmas_type` zero, `timestep_spacing` linspace,
//! `steps_offset` 0, epsilon prediction, no Karras sigmas. Each step first corrects the
//! current sample with the new model output (UniC), then predicts the next one (UniP).
//! The small linear systems for orders above 2 are solved in float32 by LU with partial
//! pivoting, like `torch.linalg.solve`.
//!
//! diffusers 0.39 turns the last step into NaN when `final_sigmas_type` is zero together with
//! `solver_type` bh1, `predict_x0` false or `lower_order_final` false (σ = 0 makes the step
//! size infinite); those combinations are refused here.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, ALL_PREDICTIONS, FinalSigma, Prediction, Sequence, ZeroSnr};
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "UniPCMultistepScheduler";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Bh1,
    Bh2,
}

/// `UniPCMultistepScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct UniPc {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    predict_x0: bool,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    model_outputs: Vec<ArrayD<f32>>,
    lower_order_nums: usize,
    this_order: usize,
    last_sample: Option<ArrayD<f32>>,
    sequence: Sequence,
}

/// Coefficients shared by the predictor and the corrector.
struct Coefficients {
    alpha_t: f32,
    sigma_t: f32,
    alpha_s0: f32,
    sigma_s0: f32,
    h_phi_1: f32,
    b_h: f32,
    rks: Vec<f32>,
    /// R (order × order, rows are powers of `rks`) and b.
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

impl UniPc {
    /// `UniPCMultistepScheduler.from_config(config)` then `set_timesteps(n)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::RescaleFinite)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        let solver_order = cfg.solver_order.unwrap_or(2);
        if !(1..=4).contains(&solver_order) {
            return Err(SchedulerError::Unsupported {
                class: CLASS,
                key: "solver_order",
                value: solver_order.to_string(),
                allowed: "1, 2, 3, 4".into(),
            });
        }
        let prediction = common::prediction(CLASS, cfg, ALL_PREDICTIONS)?;
        let solver_type = common::choice(
            CLASS,
            "solver_type",
            cfg.solver_type.as_deref(),
            "bh2",
            &[
                ("bh1", SolverType::Bh1),
                ("bh2", SolverType::Bh2),
                ("midpoint", SolverType::Bh2),
                ("heun", SolverType::Bh2),
                ("logrho", SolverType::Bh2),
            ],
        )?;
        common::reject_true(CLASS, "thresholding", cfg.thresholding)?;
        common::reject_true(CLASS, "use_exponential_sigmas", cfg.use_exponential_sigmas)?;
        common::reject_true(CLASS, "use_beta_sigmas", cfg.use_beta_sigmas)?;
        common::reject_true(CLASS, "use_flow_sigmas", cfg.use_flow_sigmas)?;
        common::reject_true(CLASS, "use_dynamic_shifting", cfg.use_dynamic_shifting)?;
        let spacing = common::spacing(CLASS, cfg, "linspace")?;
        let final_sigma = common::final_sigma(CLASS, cfg)?;
        let predict_x0 = cfg.predict_x0.unwrap_or(true);
        let lower_order_final = cfg.lower_order_final.unwrap_or(true);
        if final_sigma == FinalSigma::Zero {
            let culprit = if solver_type == SolverType::Bh1 {
                Some("solver_type = \"bh1\"")
            } else if !predict_x0 {
                Some("predict_x0 = false")
            } else if !lower_order_final && n > 1 && solver_order > 1 {
                Some("lower_order_final = false")
            } else {
                None
            };
            if let Some(culprit) = culprit {
                return Err(common::invalid(
                    CLASS,
                    format!(
                        "{culprit} with final_sigmas_type = \"zero\" makes diffusers' last step NaN; \
                         set final_sigmas_type = \"sigma_min\""
                    ),
                ));
            }
        }
        let karras = cfg.use_karras_sigmas.unwrap_or(false);
        let timesteps = common::multistep_timesteps(
            spacing,
            n_train,
            n_train,
            n,
            cfg.steps_offset.unwrap_or(0),
        );
        let train_sigmas = common::train_sigmas(&train.alphas_cumprod);
        let (timesteps, sigmas, last_sigma): (Vec<f64>, Vec<f64>, f64) = if karras {
            let logs = common::log_sigmas(&train_sigmas);
            let sigma_min = cfg.sigma_min.unwrap_or(train_sigmas[0] as f64);
            let sigma_max = cfg
                .sigma_max
                .unwrap_or(*train_sigmas.last().expect("n_train >= 2") as f64);
            let sigmas = common::karras_sigmas(sigma_min, sigma_max, n);
            let timesteps = sigmas
                .iter()
                .map(|&s| common::sigma_to_t(s, &logs).round_ties_even())
                .collect();
            let last = match final_sigma {
                FinalSigma::Zero => 0.0,
                FinalSigma::SigmaMin => *sigmas.last().expect("n >= 1"),
            };
            (timesteps, sigmas, last)
        } else {
            let sigmas = timesteps
                .iter()
                .map(|&t| common::np_interp(t, &train_sigmas))
                .collect();
            let last = match final_sigma {
                FinalSigma::Zero => 0.0,
                FinalSigma::SigmaMin => train_sigmas[0] as f64,
            };
            (timesteps, sigmas, last)
        };
        let sigmas: Vec<f32> = sigmas
            .iter()
            .chain(std::iter::once(&last_sigma))
            .map(|&s| s as f32)
            .collect();
        Ok(UniPc {
            timesteps: timesteps.iter().map(|&t| t as i64 as f32).collect(),
            sigmas,
            prediction,
            predict_x0,
            solver_order,
            solver_type,
            lower_order_final,
            disable_corrector: cfg.disable_corrector.clone().unwrap_or_default(),
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
            sequence: Sequence::default(),
        })
    }

    /// The model output as a data prediction (`predict_x0`) or a noise prediction.
    fn convert(
        &self,
        i: usize,
        sample: &ArrayViewD<'_, f32>,
        model_output: &ArrayViewD<'_, f32>,
    ) -> ArrayD<f32> {
        let (alpha, sigma) = common::alpha_sigma(self.sigmas[i]);
        if self.predict_x0 {
            match self.prediction {
                Prediction::Epsilon => {
                    common::zip2(sample, model_output, |s, m| (s - sigma * m) / alpha)
                }
                Prediction::Sample => model_output.to_owned(),
                Prediction::V => common::zip2(sample, model_output, |s, m| alpha * s - sigma * m),
            }
        } else {
            match self.prediction {
                Prediction::Epsilon => model_output.to_owned(),
                Prediction::Sample => {
                    common::zip2(sample, model_output, |s, m| (s - alpha * m) / sigma)
                }
                Prediction::V => common::zip2(sample, model_output, |s, m| alpha * m + sigma * s),
            }
        }
    }

    /// σ indices: `t` (target), `s0` (current), and `earlier[k]` for the older model outputs.
    fn coefficients(&self, t: usize, s0: usize, earlier: &[usize], order: usize) -> Coefficients {
        let (alpha_t, sigma_t) = common::alpha_sigma(self.sigmas[t]);
        let (alpha_s0, sigma_s0) = common::alpha_sigma(self.sigmas[s0]);
        let lambda_t = common::lambda(alpha_t, sigma_t);
        let lambda_s0 = common::lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let mut rks: Vec<f32> = earlier
            .iter()
            .map(|&si| {
                let (alpha_si, sigma_si) = common::alpha_sigma(self.sigmas[si]);
                (common::lambda(alpha_si, sigma_si) - lambda_s0) / h
            })
            .collect();
        rks.push(1.0);
        let hh = if self.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1();
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1u64;
        let b_h = match self.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        for i in 1..=order {
            r.push(rks.iter().map(|&rk| torch_pow(rk, i - 1)).collect());
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        Coefficients {
            alpha_t,
            sigma_t,
            alpha_s0,
            sigma_s0,
            h_phi_1,
            b_h,
            rks,
            r,
            b,
        }
    }

    /// `x_t_` of both updates: the first-order part.
    fn base(
        &self,
        c: &Coefficients,
        x: &ArrayViewD<'_, f32>,
        m0: &ArrayViewD<'_, f32>,
    ) -> ArrayD<f32> {
        if self.predict_x0 {
            let (cx, cm) = (c.sigma_t / c.sigma_s0, c.alpha_t * c.h_phi_1);
            common::zip2(x, m0, |x, m| cx * x - cm * m)
        } else {
            let (cx, cm) = (c.alpha_t / c.alpha_s0, c.sigma_t * c.h_phi_1);
            common::zip2(x, m0, |x, m| cx * x - cm * m)
        }
    }

    /// The factor of the higher-order residual: α_t·B(h) (data prediction) or σ_t·B(h).
    fn residual_scale(&self, c: &Coefficients) -> f32 {
        if self.predict_x0 {
            c.alpha_t * c.b_h
        } else {
            c.sigma_t * c.b_h
        }
    }

    /// UniP: predicts the sample at step `i + 1` from `x` at step `i`.
    fn predictor(&self, i: usize, x: &ArrayViewD<'_, f32>, order: usize) -> ArrayD<f32> {
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].view();
        let earlier: Vec<usize> = (1..order).map(|j| i - j).collect();
        let c = self.coefficients(i + 1, i, &earlier, order);
        let d1s: Vec<ArrayD<f32>> = (1..order)
            .map(|j| {
                let rk = c.rks[j - 1];
                common::zip2(&self.model_outputs[k - 1 - j].view(), &m0, |mi, m0| {
                    (mi - m0) / rk
                })
            })
            .collect();
        let x_t = self.base(&c, x, &m0);
        let scale = self.residual_scale(&c);
        if d1s.is_empty() {
            return x_t.mapv(|v| v - scale * 0.0);
        }
        let rhos: Vec<f32> = if order == 2 {
            vec![0.5]
        } else {
            let m = order - 1;
            let r: Vec<Vec<f32>> = c.r[..m].iter().map(|row| row[..m].to_vec()).collect();
            solve_f32(r, c.b[..m].to_vec())
        };
        let res = weighted_sum(&rhos, &d1s);
        common::zip2(&x_t.view(), &res.view(), |x, p| x - scale * p)
    }

    /// UniC: corrects `this_sample` (at step `i`) using `this_model_output`, from the previous
    /// step's sample `last_sample`.
    fn corrector(
        &self,
        i: usize,
        this_model_output: &ArrayViewD<'_, f32>,
        last_sample: &ArrayViewD<'_, f32>,
        order: usize,
    ) -> ArrayD<f32> {
        let k = self.model_outputs.len();
        let m0 = self.model_outputs[k - 1].view();
        let earlier: Vec<usize> = (1..order).map(|j| i - (j + 1)).collect();
        let c = self.coefficients(i, i - 1, &earlier, order);
        let d1s: Vec<ArrayD<f32>> = (1..order)
            .map(|j| {
                let rk = c.rks[j - 1];
                common::zip2(&self.model_outputs[k - 1 - j].view(), &m0, |mi, m0| {
                    (mi - m0) / rk
                })
            })
            .collect();
        let rhos: Vec<f32> = if order == 1 {
            vec![0.5]
        } else {
            solve_f32(c.r.clone(), c.b.clone())
        };
        let x_t = self.base(&c, last_sample, &m0);
        let scale = self.residual_scale(&c);
        let rho_last = *rhos.last().expect("order >= 1");
        let d1_t = common::zip2(this_model_output, &m0, |m, m0| m - m0);
        let total = if d1s.is_empty() {
            d1_t.mapv(|d| 0.0 + rho_last * d)
        } else {
            let corr = weighted_sum(&rhos[..rhos.len() - 1], &d1s);
            common::zip2(&corr.view(), &d1_t.view(), |c, d| c + rho_last * d)
        };
        common::zip2(&x_t.view(), &total.view(), |x, t| x - scale * t)
    }
}

/// `torch.pow(x, e)` for the small integer exponents used here.
fn torch_pow(x: f32, e: usize) -> f32 {
    match e {
        0 => 1.0,
        1 => x,
        2 => x * x,
        3 => x * x * x,
        _ => x.powi(e as i32),
    }
}

/// Σ_k w_k · d_k (torch's `einsum("k,bkc...->bc...")`), accumulated in order.
fn weighted_sum(weights: &[f32], terms: &[ArrayD<f32>]) -> ArrayD<f32> {
    let mut acc = terms[0].mapv(|d| weights[0] * d);
    for (w, d) in weights.iter().zip(terms).skip(1) {
        acc.zip_mut_with(d, |a, &v| *a += w * v);
    }
    acc
}

/// Solves `a · x = b` in float32 by Gaussian elimination with partial pivoting (LAPACK's
/// `sgesv` order of operations: scale by the pivot's reciprocal, then back-substitute).
fn solve_f32(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .fold((col, f32::NEG_INFINITY), |(bi, bv), r| {
                let v = a[r][col].abs();
                if v > bv { (r, v) } else { (bi, bv) }
            })
            .0;
        a.swap(col, pivot);
        b.swap(col, pivot);
        let inv = 1.0 / a[col][col];
        let pivot_row = a[col].clone();
        let pivot_b = b[col];
        for (row, rhs) in a.iter_mut().zip(b.iter_mut()).skip(col + 1) {
            row[col] *= inv;
            let l = row[col];
            for (x, &p) in row.iter_mut().zip(&pivot_row).skip(col + 1) {
                *x -= l * p;
            }
            *rhs -= l * pivot_b;
        }
    }
    for col in (0..n).rev() {
        b[col] /= a[col][col];
        let x = b[col];
        for (rhs, row) in b.iter_mut().zip(&a).take(col) {
            *rhs -= x * row[col];
        }
    }
    b
}

impl Scheduler for UniPc {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::UniPc
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
        let use_corrector =
            i > 0 && !self.disable_corrector.contains(&(i - 1)) && self.last_sample.is_some();
        let converted = self.convert(i, &sample, &model_output);
        let corrected;
        let sample = if use_corrector {
            let last = self.last_sample.as_ref().expect("checked").view();
            corrected = self.corrector(i, &converted.view(), &last, self.this_order);
            corrected.view()
        } else {
            sample
        };
        if self.model_outputs.len() == self.solver_order {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(converted);
        let order = if self.lower_order_final {
            self.solver_order.min(n - i)
        } else {
            self.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        let prev = self.predictor(i, &sample, self.this_order);
        self.last_sample = Some(sample.to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_f32_with_pivoting() {
        // Needs a row swap: the first pivot is 0.
        let x = solve_f32(
            vec![
                vec![0.0, 2.0, 1.0],
                vec![1.0, 1.0, 0.0],
                vec![3.0, 0.0, 1.0],
            ],
            vec![5.0, 3.0, 6.0],
        );
        // x = (1.4, 1.6, 1.8)
        for (got, want) in x.iter().zip([1.4f32, 1.6, 1.8]) {
            assert!((got - want).abs() < 1e-6, "{x:?}");
        }
    }
}
