//! Text to image over the ONNX sessions of a Stable Diffusion model, numerically following
//! diffusers' `StableDiffusionPipeline`:
//!
//! 1. [`text`]: prompt and negative prompt (empty when none) through the CLIP tokenizer and text
//!    encoder; a guidance scale of 1 or less skips the negative prompt and the unconditional half.
//! 2. initial latents per candidate from its own seeded generator ([`crate::noise`]), times the
//!    scheduler's `init_noise_sigma` (or supplied latents, for parity tests);
//! 3. [`denoise`]: the candidates of a prompt as one UNet batch (`[uncond…, cond…]` halves),
//!    split by `max_batch`;
//! 4. [`decode`]: latents / the VAE scaling factor through the VAE decoder, to 8-bit RGB.

pub mod decode;
pub mod denoise;
pub mod text;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use image::RgbImage;
use ndarray::{ArrayD, Axis};

use crate::model::SdModel;
use crate::noise::{NoiseGenerator, RngKind};
use crate::scheduler::{self, SchedulerConfig, SchedulerKind};
use crate::tokenizer::ClipTokenizer;
pub use denoise::Step;
pub use crate::runtime::tensors::OrtCallError;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("`{field}` {problem}")]
    Request {
        field: &'static str,
        problem: String,
    },
    #[error("ONNX Runtime failed on {0}")]
    Ort(#[from] OrtCallError),
    #[error("{file}: unexpected output: {what}")]
    Shape { file: String, what: String },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    #[error("cancelled after step {step} of {total}")]
    Cancelled { step: usize, total: usize },
}

/// One prompt's candidates to render.
#[derive(Debug, Clone)]
pub struct RenderRequest {
    pub prompt: String,
    /// Empty for none.
    pub negative_prompt: String,
    /// One seed per candidate.
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub guidance_scale: f32,
    /// DDIM's eta: 0 is deterministic DDIM, greater than 0 adds noise at each step.
    pub eta: f32,
    /// `None`: the model's own scheduler (its scheduler_config.json).
    pub scheduler: Option<SchedulerKind>,
    pub width: u32,
    pub height: u32,
    pub rng: RngKind,
    /// Most candidates in one UNet batch (the batch is twice this with guidance).
    pub max_batch: usize,
    /// Initial latents `[candidates, 4, h/8, w/8]` before scaling by `init_noise_sigma`, instead
    /// of drawing them from the seeds (parity tests, img2img-style reuse).
    pub initial_latents: Option<ArrayD<f32>>,
    /// Per-step noise for stochastic schedulers, one `[candidates, 4, h/8, w/8]` array per step
    /// that draws noise, instead of drawing it from the seeds.
    pub step_noise: Option<Vec<ArrayD<f32>>>,
}

impl RenderRequest {
    /// A request with diffusers' defaults: 50 steps, guidance 7.5, 512x512.
    pub fn new(prompt: impl Into<String>, seeds: Vec<u64>) -> RenderRequest {
        RenderRequest {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            seeds,
            steps: 50,
            guidance_scale: 7.5,
            eta: 0.0,
            scheduler: None,
            width: 512,
            height: 512,
            rng: RngKind::default(),
            max_batch: 8,
            initial_latents: None,
            step_noise: None,
        }
    }
}

/// Progress reported after every UNet call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Index of the first candidate in the running batch.
    pub first_candidate: usize,
    /// Candidates in the running batch.
    pub batch: usize,
    pub step: Step,
}

/// Wall time per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Tokenizer and text encoder.
    pub text: Duration,
    /// The tokenizer's part of `text`.
    pub tokenize: Duration,
    /// Scheduler set-up, initial latents and the denoising loop.
    pub denoise: Duration,
    /// VAE decoder and conversion to 8-bit RGB.
    pub decode: Duration,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// One image per seed, in order.
    pub images: Vec<RgbImage>,
    /// Final latents `[candidates, 4, h/8, w/8]`, before the VAE.
    pub latents: ArrayD<f32>,
    /// Decoded images `[candidates, 3, H, W]` in [-1, 1], before conversion to 8 bits.
    pub decoded: ArrayD<f32>,
    /// Words of the prompt cut off by the tokenizer's length limit.
    pub truncated_prompt: Option<String>,
    pub scheduler: SchedulerKind,
    pub timings: Timings,
}

/// A loaded model with its tokenizer and scheduler configuration; sessions are reused across
/// requests.
pub struct Pipeline {
    pub model: SdModel,
    pub tokenizer: ClipTokenizer,
    pub scheduler_config: SchedulerConfig,
    /// The model's own scheduler, from `_class_name` in its scheduler_config.json.
    pub default_scheduler: SchedulerKind,
}

impl Pipeline {
    pub fn new(model: SdModel) -> Result<Pipeline, PipelineError> {
        let tokenizer = ClipTokenizer::from_dir(&model.folder.tokenizer_dir)?;
        let scheduler_config = SchedulerConfig::from_file(&model.folder.scheduler_config)?;
        let default_scheduler = scheduler_config.kind()?;
        Ok(Pipeline {
            model,
            tokenizer,
            scheduler_config,
            default_scheduler,
        })
    }

    fn check(&self, req: &RenderRequest) -> Result<(), PipelineError> {
        let bad = |field, problem: String| Err(PipelineError::Request { field, problem });
        let folder = &self.model.folder;
        for (field, v) in [("width", req.width), ("height", req.height)] {
            if let Err(problem) = folder.check_side(v) {
                return bad(field, problem);
            }
        }
        if req.steps == 0 {
            return bad("steps", "is 0; at least one step is needed".into());
        }
        if !req.eta.is_finite() || req.eta < 0.0 {
            return bad("eta", format!("is {}; it must be 0 or more", req.eta));
        }
        if !req.guidance_scale.is_finite() {
            return bad(
                "guidance",
                format!("is {}; it must be a finite number", req.guidance_scale),
            );
        }
        if req.seeds.is_empty() {
            return bad("seeds", "is empty: no candidate to render".into());
        }
        if req.max_batch == 0 {
            return bad("max_batch", "is 0".into());
        }
        let shape = self.latent_shape(req, req.seeds.len());
        if let Some(l) = &req.initial_latents
            && l.shape() != shape.as_slice()
        {
            return bad(
                "initial_latents",
                format!("have shape {:?}, expected {shape:?}", l.shape()),
            );
        }
        if let Some(steps) = &req.step_noise
            && let Some(bad_one) = steps.iter().find(|a| a.shape() != shape.as_slice())
        {
            return bad(
                "step_noise",
                format!(
                    "has an array of shape {:?}, expected {shape:?}",
                    bad_one.shape()
                ),
            );
        }
        Ok(())
    }

    fn latent_shape(&self, req: &RenderRequest, n: usize) -> Vec<usize> {
        let f = self.model.folder.vae_downsampling;
        vec![n, 4, req.height as usize / f, req.width as usize / f]
    }

    /// Renders every candidate of `req`. `on_progress` is called after each UNet call and may
    /// stop the render ([`PipelineError::Cancelled`]).
    pub fn render(
        &mut self,
        req: &RenderRequest,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Rendered, PipelineError> {
        self.check(req)?;
        let kind = req.scheduler.unwrap_or(self.default_scheduler);
        let guided = req.guidance_scale > 1.0;
        let mut timings = Timings::default();

        let started = Instant::now();
        let prompts: Vec<&str> = if guided {
            vec![req.negative_prompt.as_str(), req.prompt.as_str()]
        } else {
            vec![req.prompt.as_str()]
        };
        let embeddings = text::encode(&self.tokenizer, &mut self.model.text_encoder, &prompts)?;
        let truncated_prompt = embeddings.truncated.last().cloned().flatten();
        if let Some(dropped) = &truncated_prompt {
            tracing::warn!(dropped = %dropped, "prompt longer than the text encoder takes; the end was cut off");
        }
        let hidden = &embeddings.hidden;
        let cond = hidden.slice_axis(Axis(0), ((prompts.len() - 1)..prompts.len()).into());
        let uncond = guided.then(|| hidden.slice_axis(Axis(0), (0..1).into()));
        let conditioning = denoise::Conditioning {
            cond: cond.into_dyn(),
            uncond: uncond.map(|u| u.into_dyn()),
            guidance_scale: req.guidance_scale,
        };
        timings.text = started.elapsed();
        timings.tokenize = embeddings.tokenize;

        let mut finals = Vec::new();
        let mut decoded_all = Vec::new();
        let mut images = Vec::new();
        let mut noise_draws = 0usize;
        for first in (0..req.seeds.len()).step_by(req.max_batch) {
            let seeds = &req.seeds[first..(first + req.max_batch).min(req.seeds.len())];
            let n = seeds.len();
            let started = Instant::now();
            let mut config = self.scheduler_config.clone();
            config.eta = Some(f64::from(req.eta));
            let mut scheduler = scheduler::build(kind, &config, req.steps)?;
            let mut generators: Vec<NoiseGenerator> = seeds
                .iter()
                .map(|s| NoiseGenerator::new(req.rng, *s))
                .collect();
            let one = self.latent_shape(req, 1);
            let initial = match &req.initial_latents {
                Some(l) => l.slice_axis(Axis(0), (first..first + n).into()).to_owned(),
                None => concat(generators.iter_mut().map(|g| g.randn(&one)).collect())?,
            };
            let sigma = scheduler.init_noise_sigma();
            let latents = initial.mapv(|v| v * sigma);

            let step_noise = req.step_noise.as_ref();
            let mut draw_noise = |_step: usize| -> Result<ArrayD<f32>, PipelineError> {
                let k = noise_draws;
                noise_draws += 1;
                match step_noise {
                    Some(all) => match all.get(k) {
                        Some(a) => Ok(a.slice_axis(Axis(0), (first..first + n).into()).to_owned()),
                        None => Err(PipelineError::Request {
                            field: "step_noise",
                            problem: format!("has {} arrays; the scheduler needs more", all.len()),
                        }),
                    },
                    None => concat(generators.iter_mut().map(|g| g.randn(&one)).collect()),
                }
            };
            let mut on_step = |step: Step| {
                on_progress(Progress {
                    first_candidate: first,
                    batch: n,
                    step,
                })
            };
            let result = denoise::denoise(
                &mut self.model.unet,
                scheduler.as_mut(),
                latents,
                &conditioning,
                &mut draw_noise,
                &mut on_step,
            )?;
            // Every chunk replays the same schedule; supplied noise is indexed per chunk.
            noise_draws = 0;
            timings.denoise += started.elapsed();

            let started = Instant::now();
            let decoded = decode::decode(
                &mut self.model.vae_decoder,
                result.view(),
                self.model.folder.vae_scaling_factor,
                self.model.folder.vae_downsampling,
            )?;
            for i in 0..n {
                images.push(decode::to_rgb8(decoded.index_axis(Axis(0), i).into_dyn()));
            }
            timings.decode += started.elapsed();
            finals.push(result);
            decoded_all.push(decoded);
        }
        Ok(Rendered {
            images,
            latents: concat(finals)?,
            decoded: concat(decoded_all)?,
            truncated_prompt,
            scheduler: kind,
            timings,
        })
    }
}

fn concat(parts: Vec<ArrayD<f32>>) -> Result<ArrayD<f32>, PipelineError> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| PipelineError::Shape {
        file: "(pipeline)".into(),
        what: e.to_string(),
    })
}
