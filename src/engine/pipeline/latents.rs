//! The latents of one batch of candidates: the initial latents (diffusers' `prepare_latents`)
//! and the per-step noise of stochastic schedulers. Each candidate draws both from its own
//! seeded generator, initial latents first ([`crate::engine::noise`]), unless the request supplies the
//! arrays (parity tests).

use ndarray::{ArrayD, Axis};

use super::{PipelineError, RenderRequest, concat};
use crate::engine::noise::NoiseGenerator;
use crate::engine::noise::variation::{self, SeedOptions};

/// The random source of candidates `first..first + n` of a request.
pub(super) struct BatchNoise<'a> {
    generators: Vec<NoiseGenerator>,
    req: &'a RenderRequest,
    /// The VAE's downsampling (for `seed_resize_from_w/h`).
    downsampling: usize,
    /// One candidate's latents, `[1, c, h, w]`.
    one: Vec<usize>,
    first: usize,
    n: usize,
    /// The request's per-step noise, one `[candidates, c, h, w]` array per draw.
    supplied_steps: Option<&'a [ArrayD<f32>]>,
    /// Step-noise draws so far: every batch replays the same schedule, so supplied noise is
    /// indexed per batch.
    draws: usize,
}

impl<'a> BatchNoise<'a> {
    /// One generator per candidate of the batch; `one` is a candidate's latent shape.
    pub(super) fn new(
        req: &'a RenderRequest,
        first: usize,
        n: usize,
        one: Vec<usize>,
        downsampling: usize,
    ) -> BatchNoise<'a> {
        BatchNoise {
            generators: req.seeds[first..first + n]
                .iter()
                .map(|s| NoiseGenerator::new(req.rng, *s))
                .collect(),
            req,
            downsampling,
            one,
            first,
            n,
            supplied_steps: req.step_noise.as_deref(),
            draws: 0,
        }
    }

    /// The batch's initial latents times the scheduler's `init_noise_sigma`: `supplied` (the
    /// request's, for every candidate) or one draw per candidate.
    pub(super) fn initial_latents(
        &mut self,
        supplied: Option<&ArrayD<f32>>,
        init_noise_sigma: f32,
    ) -> Result<ArrayD<f32>, PipelineError> {
        let initial = match supplied {
            Some(l) => l
                .slice_axis(Axis(0), (self.first..self.first + self.n).into())
                .to_owned(),
            None if self.req.seed_options == SeedOptions::default() => self.draw()?,
            None => self.first_with_options()?,
        };
        Ok(initial.mapv(|v| v * init_noise_sigma))
    }

    /// The next step's noise for the batch.
    pub(super) fn step_noise(&mut self) -> Result<ArrayD<f32>, PipelineError> {
        let k = self.draws;
        self.draws += 1;
        match self.supplied_steps {
            Some(all) => match all.get(k) {
                Some(a) => Ok(a
                    .slice_axis(Axis(0), (self.first..self.first + self.n).into())
                    .to_owned()),
                None => Err(PipelineError::Request {
                    field: "step_noise",
                    problem: format!("has {} arrays; the scheduler needs more", all.len()),
                }),
            },
            None => self.draw(),
        }
    }

    /// Hands the generators on to a second model (the SDXL refiner): its step noise comes from
    /// `supplied` (one `[candidates, c, h, w]` array per draw) or the same generators, continued.
    pub(super) fn continue_with(&mut self, supplied: Option<&'a [ArrayD<f32>]>) {
        if self.supplied_steps.is_some() || supplied.is_some() {
            self.supplied_steps = supplied;
        }
        self.draws = 0;
    }

    /// Each candidate's initial noise with AUTOMATIC1111's seed options; their generators then
    /// continue (or restart at seed + ENSD) for the step noise.
    fn first_with_options(&mut self) -> Result<ArrayD<f32>, PipelineError> {
        let options = &self.req.seed_options;
        let mut noises = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let candidate = self.first + i;
            let subseed = options
                .subseeds
                .as_ref()
                .map(|s| s.get(candidate).copied().unwrap_or(0));
            let (noise, generator) = variation::first_noise(
                self.req.rng,
                self.req.seeds[candidate],
                subseed,
                options,
                &self.one,
                self.downsampling,
            );
            noises.push(noise);
            self.generators[i] = generator;
        }
        concat(noises)
    }

    /// One `[1, c, h, w]` draw from each candidate's generator, concatenated.
    fn draw(&mut self) -> Result<ArrayD<f32>, PipelineError> {
        let one = &self.one;
        concat(self.generators.iter_mut().map(|g| g.randn(one)).collect())
    }
}
