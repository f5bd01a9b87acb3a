//! The SDXL refiner hand-off, as diffusers runs base and refiner with `denoising_end` and
//! `denoising_start`: the base model denoises the timesteps at or above the cut-off
//! `round(T − start·T)` and returns its latents undecoded; the refiner sets the same number of
//! steps, skips to its first timestep below the cut-off and denoises the rest from those latents
//! (no fresh noise added), conditioned on its own text encoder and aesthetic-score time ids, and
//! decodes with its VAE. Each candidate's generator continues from the base into the refiner.

use std::ops::ControlFlow;
use std::time::Instant;

use ndarray::ArrayD;

use super::latents::BatchNoise;
use super::{Pipeline, PipelineError, Progress, RenderRequest, Rendered, Timings, concat, denoise};
use crate::engine::model::Family;
use crate::engine::scheduler::{self, Scheduler};

/// diffusers' `discrete_timestep_cutoff`: `int(round(T − fraction·T))`.
pub fn timestep_cutoff(num_train_timesteps: usize, fraction: f64) -> f64 {
    let t = num_train_timesteps as f64;
    (t - fraction * t).round_ties_even()
}

/// Where the refiner takes over, and the refiner's own noise for parity tests.
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    /// Fraction of the schedule the base model runs (diffusers' `denoising_end` and the
    /// refiner's `denoising_start`), in (0, 1).
    pub start: f64,
    /// Per-step noise of the refiner's stochastic steps, instead of continuing the generators.
    pub refiner_noise: Option<Vec<ArrayD<f32>>>,
}

impl Pipeline {
    /// Renders `req` with this (SDXL base) model up to `handoff.start` and `refiner` (an SDXL
    /// refiner) from there; the images are the refiner's.
    pub fn render_refined(
        &mut self,
        refiner: &mut Pipeline,
        req: &RenderRequest,
        handoff: &Handoff,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Rendered, PipelineError> {
        self.check(req)?;
        refiner.check(req)?;
        let bad = |problem: String| PipelineError::Request {
            field: "refiner",
            problem,
        };
        if refiner.model.family() != Family::SdxlRefiner && refiner.model.family() != Family::Sdxl {
            return Err(bad(format!(
                "names model `{}` of the {} family; a refiner must be SDXL",
                refiner.model.name,
                refiner.model.family()
            )));
        }
        if !(handoff.start > 0.0 && handoff.start < 1.0) {
            return Err(PipelineError::Request {
                field: "refiner_start",
                problem: format!("is {}; it must be between 0 and 1", handoff.start),
            });
        }
        let kind = req.scheduler.unwrap_or(self.default_scheduler);
        let mut timings = Timings::default();
        let started = Instant::now();
        let base_cond = self.encode_prompt(req)?;
        let refiner_cond = refiner.encode_prompt(req)?;
        timings.text = started.elapsed();
        timings.tokenize = base_cond.start.tokenize + refiner_cond.start.tokenize;

        let (mut finals, mut decoded_all, mut images) = (Vec::new(), Vec::new(), Vec::new());
        let mut failed = Vec::new();
        let mut ran = 0;
        for first in (0..req.seeds.len()).step_by(req.max_batch) {
            let n = req.max_batch.min(req.seeds.len() - first);
            let started = Instant::now();
            let mut config = self.scheduler_config.clone();
            config.eta = Some(f64::from(req.eta));
            let mut base_sched = scheduler::build(kind, &config, req.steps)?;
            let mut refiner_config = refiner.scheduler_config.clone();
            refiner_config.eta = Some(f64::from(req.eta));
            let mut refiner_sched = scheduler::build(kind, &refiner_config, req.steps)?;
            let train = |c: &crate::engine::scheduler::SchedulerConfig| {
                c.num_train_timesteps.unwrap_or(1000)
            };
            let base_cut = timestep_cutoff(train(&config), handoff.start);
            let refiner_cut = timestep_cutoff(train(&refiner_config), handoff.start);
            let base_end = count(base_sched.as_ref(), |t| t >= base_cut);
            let refiner_steps = count(refiner_sched.as_ref(), |t| t < refiner_cut);
            let refiner_len = refiner_sched.timesteps().len();
            let refiner_begin = refiner_len - refiner_steps;
            ran = refiner_steps;

            let downsampling = self.model.folder.vae_downsampling;
            let mut noise = BatchNoise::new(req, first, n, self.latent_shape(req, 1), downsampling);
            let latents = noise
                .initial_latents(req.initial_latents.as_ref(), base_sched.init_noise_sigma())?;
            let mut on_step = |step| {
                on_progress(Progress {
                    first_candidate: first,
                    batch: n,
                    step,
                })
            };
            let graph = &self.model.family().graph().unet;
            let handed = denoise::denoise_range(
                &mut self.model.unet,
                graph,
                base_sched.as_mut(),
                latents,
                &base_cond,
                0..base_end,
                &mut |_| noise.step_noise(),
                &mut on_step,
            )?;
            noise.continue_with(handoff.refiner_noise.as_deref());
            let graph = &refiner.model.family().graph().unet;
            let latents = denoise::denoise_range(
                &mut refiner.model.unet,
                graph,
                refiner_sched.as_mut(),
                handed,
                &refiner_cond,
                refiner_begin..refiner_len,
                &mut |_| noise.step_noise(),
                &mut on_step,
            )?;
            timings.denoise += started.elapsed();

            let started = Instant::now();
            let decoded = refiner.decode_images(latents.view(), first, &mut images, &mut failed)?;
            timings.decode += started.elapsed();
            finals.push(latents);
            decoded_all.push(decoded);
        }
        Ok(Rendered {
            images,
            failed,
            latents: concat(finals)?,
            decoded: concat(decoded_all)?,
            truncated_prompt: base_cond.start.truncated_prompt,
            scheduler: kind,
            refiner_steps: Some(ran),
            timings,
        })
    }
}

/// How many of the schedule's timesteps satisfy `keep`.
fn count(s: &dyn Scheduler, keep: impl Fn(f64) -> bool) -> usize {
    s.timesteps()
        .iter()
        .filter(|t| keep(f64::from(**t)))
        .count()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cutoff_is_diffusers() {
        assert_eq!(super::timestep_cutoff(1000, 0.8), 200.0);
        assert_eq!(super::timestep_cutoff(1000, 0.75), 250.0);
    }
}
