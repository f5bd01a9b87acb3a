//! PNDM (Liu et al. 2022), port of diffusers' `PNDMScheduler`.
//!
//! Class defaults: linear betas 0.0001..0.02, `skip_prk_steps` false, `set_alpha_to_one`
//! false, `timestep_spacing` leading, `steps_offset` 0, epsilon prediction (or
//! v_prediction). SD 1.x configs set `skip_prk_steps`: then the schedule is pure PLMS with
//! n + 1 UNet calls (the second timestep repeats, for the warm-up's second-order step).
//! Without it, 12 Runge–Kutta (PRK) calls over the last four timesteps come first, which needs
//! at least 4 steps.
//!
//! State (the multistep history) depends on the number of calls, not on the step index,
//! as in diffusers.

use ndarray::{ArrayD, ArrayViewD};

use super::common::{self, Prediction, Sequence, Spacing, ZeroSnr};
use super::ddim::add_noise_alpha;
use super::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

const CLASS: &str = "PNDMScheduler";

/// `PNDMScheduler` with its timesteps set.
#[derive(Debug, Clone)]
pub struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prk_timesteps: Vec<i64>,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    /// `num_train_timesteps / n`.
    step_ratio: i64,
    skip_prk_steps: bool,
    v_prediction: bool,
    counter: usize,
    ets: Vec<ArrayD<f32>>,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
    sequence: Sequence,
}

impl Pndm {
    /// `PNDMScheduler.from_config(config)` then `set_timesteps(num_inference_steps)`.
    pub fn new(cfg: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        let train = common::train_schedule(CLASS, cfg, ZeroSnr::Ignored)?;
        let n_train = train.n_train;
        let n = num_inference_steps;
        common::check_steps(CLASS, n, n_train)?;
        let prediction = common::prediction(
            CLASS,
            cfg,
            &[
                ("epsilon", Prediction::Epsilon),
                ("v_prediction", Prediction::V),
            ],
        )?;
        let spacing = common::spacing(CLASS, cfg, "leading")?;
        let offset = cfg.steps_offset.unwrap_or(0);
        let skip_prk_steps = cfg.skip_prk_steps.unwrap_or(false);
        // Ascending, like diffusers' `_timesteps`.
        let mut base: Vec<i64> = common::spaced_timesteps(spacing, n_train, n, offset)
            .into_iter()
            .map(|t| match spacing {
                Spacing::Linspace => t.round_ties_even() as i64,
                _ => t as i64,
            })
            .collect();
        base.reverse();
        let len = base.len();
        let step_ratio = (n_train / n) as i64;
        let (prk_timesteps, plms_timesteps) = if skip_prk_steps {
            // concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]
            let mut plms: Vec<i64> = base[..len - 1].to_vec();
            if len >= 2 {
                plms.push(base[len - 2]);
            }
            plms.push(base[len - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            if len < 4 {
                return Err(common::invalid(
                    CLASS,
                    format!(
                        "skip_prk_steps = false needs at least 4 inference steps (got {n}); diffusers fails \
                         the same way. Use more steps or skip_prk_steps = true"
                    ),
                ));
            }
            let half = step_ratio / 2;
            // _t[-4:].repeat(2) + tile([0, half], 4), then [:-1].repeat(2)[1:-1], reversed.
            let pairs: Vec<i64> = base[len - 4..]
                .iter()
                .flat_map(|&t| [t, t + half])
                .collect();
            let doubled: Vec<i64> = pairs[..pairs.len() - 1]
                .iter()
                .flat_map(|&t| [t, t])
                .collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..len - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        let timesteps: Vec<i64> = prk_timesteps
            .iter()
            .chain(plms_timesteps.iter())
            .copied()
            .collect();
        for &t in &timesteps {
            common::alpha_at(CLASS, &train.alphas_cumprod, t)?;
        }
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(false) {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Pndm {
            alphas_cumprod: train.alphas_cumprod,
            final_alpha_cumprod,
            prk_timesteps,
            timesteps_f32: timesteps.iter().map(|&t| t as f32).collect(),
            timesteps,
            step_ratio,
            skip_prk_steps,
            v_prediction: prediction == Prediction::V,
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
            sequence: Sequence::default(),
        })
    }

    fn alpha(&self, t: i64) -> Result<f32, SchedulerError> {
        common::alpha_at(CLASS, &self.alphas_cumprod, t)
    }

    /// diffusers' `_get_prev_sample` (formula (9) of the PNDM paper).
    fn prev_sample(
        &self,
        sample: &ArrayViewD<'_, f32>,
        t: i64,
        prev_t: i64,
        model_output: &ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        let a_t = self.alpha(t)?;
        let a_prev = if prev_t >= 0 {
            self.alpha(prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let converted;
        let model_output = if self.v_prediction {
            let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
            converted = common::zip2(model_output, sample, |m, s| sa * m + sb * s);
            converted.view()
        } else {
            model_output.view()
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        Ok(common::zip2(sample, &model_output, |s, m| {
            sample_coeff * s - diff * m / denom
        }))
    }

    fn step_prk(
        &mut self,
        model_output: &ArrayViewD<'_, f32>,
        timestep: i64,
        sample: &ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        let diff_to_prev = if self.counter % 2 == 1 {
            0
        } else {
            self.step_ratio / 2
        };
        let prev_t = timestep - diff_to_prev;
        let t = self.prk_timesteps[self.counter / 4 * 4];
        let add = |acc: Option<ArrayD<f32>>, w: f32| -> ArrayD<f32> {
            match acc {
                Some(a) => common::zip2(&a.view(), model_output, |c, m| c + w * m),
                None => model_output.mapv(|m| 0.0 + w * m),
            }
        };
        let combined;
        let mo = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), 1.0 / 6.0));
                self.ets.push(model_output.to_owned());
                self.cur_sample = Some(sample.to_owned());
                model_output.view()
            }
            1 | 2 => {
                self.cur_model_output = Some(add(self.cur_model_output.take(), 1.0 / 3.0));
                model_output.view()
            }
            _ => {
                combined = add(self.cur_model_output.take(), 1.0 / 6.0);
                combined.view()
            }
        };
        let cur_sample = self
            .cur_sample
            .as_ref()
            .map(|s| s.view())
            .unwrap_or(sample.view());
        let prev = self.prev_sample(&cur_sample, t, prev_t, &mo)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(
        &mut self,
        model_output: &ArrayViewD<'_, f32>,
        timestep: i64,
        sample: &ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>, SchedulerError> {
        let mut t = timestep;
        let mut prev_t = timestep - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.drain(..self.ets.len() - 3);
            }
            self.ets.push(model_output.to_owned());
        } else {
            prev_t = timestep;
            t = timestep + self.step_ratio;
        }
        let e = &self.ets;
        let k = e.len();
        let mut sample = sample.view();
        let held_sample;
        let mo: ArrayD<f32> = if k == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.to_owned());
            model_output.to_owned()
        } else if k == 1 && self.counter == 1 {
            held_sample = self.cur_sample.take().expect("set by the first PLMS step");
            sample = held_sample.view();
            common::zip2(model_output, &e[0].view(), |m, e1| (m + e1) / 2.0)
        } else if k == 2 {
            common::zip2(&e[1].view(), &e[0].view(), |e1, e2| (3.0 * e1 - e2) / 2.0)
        } else if k == 3 {
            common::zip3(&e[2].view(), &e[1].view(), &e[0].view(), |e1, e2, e3| {
                (23.0 * e1 - 16.0 * e2 + 5.0 * e3) / 12.0
            })
        } else {
            let (e1, e2, e3, e4) = (&e[k - 1], &e[k - 2], &e[k - 3], &e[k - 4]);
            let partial = common::zip3(&e1.view(), &e2.view(), &e3.view(), |a, b, c| {
                55.0 * a - 59.0 * b + 37.0 * c
            });
            common::zip2(&partial.view(), &e4.view(), |p, d| {
                (1.0 / 24.0) * (p - 9.0 * d)
            })
        };
        let prev = self.prev_sample(&sample, t, prev_t, &mo.view())?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for Pndm {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Pndm
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
        let timestep = self.timesteps[step_index];
        let prev = if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(&model_output, timestep, &sample)?
        } else {
            if !self.skip_prk_steps && self.ets.len() < 3 {
                return Err(common::invalid(
                    CLASS,
                    "the PLMS steps can only run after the 12 PRK warm-up steps (skip_prk_steps = false)",
                ));
            }
            self.step_plms(&model_output, timestep, &sample)?
        };
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
        let a = self.alphas_cumprod[self.timesteps[step_index] as usize];
        Ok(add_noise_alpha(a, &original, &noise))
    }
}
