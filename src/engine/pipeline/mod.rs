//! Text to image over the ONNX sessions of a diffusion model, numerically following diffusers'
//! pipelines (SD 1.x/2.x: `StableDiffusionPipeline`), in diffusers' steps:
//!
//! 1. `encode_prompt`, the model family's own step ([`FamilyPipeline`]; SD 1.x/2.x in [`sd`]):
//!    prompt and negative prompt to the UNet's conditioning inputs ([`Conditioning`]); a
//!    guidance scale of 1 or less ([`is_guided`]) skips the negative prompt and the
//!    unconditional half;
//! 2. `prepare_latents` (the private `latents` module): initial latents per candidate from its
//!    own seeded generator ([`crate::engine::noise`]), times the scheduler's `init_noise_sigma` (or
//!    supplied latents, for parity tests), in the model's latent channels;
//! 3. [`denoise`]: the candidates of a prompt as one UNet batch (`[uncond…, cond…]` halves),
//!    split by `max_batch`, feeding whatever named inputs the conditioning carries;
//! 4. [`decode`]: latents / the VAE scaling factor through the VAE decoder, to 8-bit RGB.
//!
//! Steps 2 to 4 are shared by every family: their names come from the family's graph
//! ([`crate::engine::model::family`]) and their shapes from the model. A new family adds its
//! `encode_prompt` (a [`FamilyPipeline`]) and a line in [`family_pipeline`].

pub mod a1111;
pub mod clip_skip;
pub mod conditioning;
pub mod decode;
pub mod denoise;
pub mod failure;
mod latents;
pub mod lcm;
pub mod refine;
pub mod sd;
pub mod sdxl;
pub mod sdxl_a1111;
pub mod text;
mod unet_io;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use image::RgbImage;
use ndarray::{ArrayD, Axis};

use crate::engine::model::{Family, SdModel, SideError};
use crate::engine::noise::RngKind;
use crate::engine::noise::variation::SeedOptions;
use crate::engine::prompt::PromptSyntax;
use crate::engine::scheduler::{self, SchedulerConfig, SchedulerKind};
use crate::engine::tokenizer::TextCleaning;
pub use crate::runtime::tensors::OrtCallError;
pub use conditioning::{CondInput, CondPhase, Conditioning, ScheduledConditioning, is_guided};
pub use denoise::Step;
pub use failure::CandidateFailure;
use latents::BatchNoise;
pub use refine::Handoff;

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("`{field}` {problem}")]
    Request {
        field: &'static str,
        problem: String,
    },
    #[error("`{field}` {source}")]
    Size {
        field: &'static str,
        #[source]
        source: SideError,
    },
    #[error("ONNX Runtime failed on {0}")]
    Ort(#[from] OrtCallError),
    #[error("{file}: unexpected output: {what}")]
    Shape { file: String, what: String },
    #[error("{file}: arrays that do not fit together: {source}")]
    Concatenate {
        file: String,
        #[source]
        source: ndarray::ShapeError,
    },
    #[error(transparent)]
    Tokenizer(#[from] crate::engine::tokenizer::TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] crate::engine::scheduler::SchedulerError),
    #[error(
        "{file}: the VAE decoder is float16 but its config says `force_upcast` (SDXL's VAE \
         overflows in float16 and gives black or NaN images); configure a float32 or fp16-fixed \
         VAE folder as `vae:` of this model in config.yaml"
    )]
    VaeNeedsUpcast { file: String },
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
    /// How the prompts' brackets are read (AUTOMATIC1111's syntax by default).
    pub prompt_syntax: PromptSyntax,
    /// AUTOMATIC1111's CLIP skip: 1 conditions on the text encoder's last hidden state, `N` on
    /// the one `N - 1` layers before it ([`clip_skip`]); SDXL: see [`sdxl`].
    pub clip_skip: usize,
    /// How the tokenizer cleans prompt text (CLIP's own, with ftfy's fixes, by default).
    pub text_cleaning: TextCleaning,
    /// AUTOMATIC1111's variation seeds, seed resize and ENSD (default: none).
    pub seed_options: SeedOptions,
    /// Most candidates in one UNet batch (the batch is twice this with guidance).
    pub max_batch: usize,
    /// Initial latents `[candidates, c, h/8, w/8]` (`c` the model's latent channels) before
    /// scaling by `init_noise_sigma`, instead of drawing them from the seeds (parity tests,
    /// img2img-style reuse).
    pub initial_latents: Option<ArrayD<f32>>,
    /// Per-step noise for stochastic schedulers, one `[candidates, c, h/8, w/8]` array per step
    /// that draws noise, instead of drawing it from the seeds.
    pub step_noise: Option<Vec<ArrayD<f32>>>,
    /// SDXL's micro-conditioning (ignored by the other families).
    pub sdxl: SdxlConditioning,
}

/// SDXL's size and aesthetic conditioning, diffusers' `original_size`,
/// `crops_coords_top_left`, `target_size` (each `[height, width]`) and the refiner's
/// `aesthetic_score` / `negative_aesthetic_score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SdxlConditioning {
    /// `None`: the image's size, as diffusers defaults it.
    pub original_size: Option<[u32; 2]>,
    pub crop_top_left: [u32; 2],
    /// `None`: the image's size.
    pub target_size: Option<[u32; 2]>,
    pub aesthetic_score: f32,
    pub negative_aesthetic_score: f32,
}

impl Default for SdxlConditioning {
    /// diffusers' defaults: sizes from the image, crop (0, 0), aesthetic scores 6.0 and 2.5.
    fn default() -> Self {
        SdxlConditioning {
            original_size: None,
            crop_top_left: [0, 0],
            target_size: None,
            aesthetic_score: 6.0,
            negative_aesthetic_score: 2.5,
        }
    }
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
            prompt_syntax: PromptSyntax::default(),
            clip_skip: 1,
            text_cleaning: TextCleaning::Clip,
            seed_options: SeedOptions::default(),
            max_batch: 8,
            initial_latents: None,
            step_noise: None,
            sdxl: SdxlConditioning::default(),
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
    /// One image per seed, in order, but none for a candidate in `failed`.
    pub images: Vec<RgbImage>,
    /// The candidates (indices into the request's seeds) that have no image, with why, in
    /// order: a value that is not finite fails only its own candidate.
    pub failed: Vec<(usize, CandidateFailure)>,
    /// Final latents `[candidates, c, h/8, w/8]`, before the VAE.
    pub latents: ArrayD<f32>,
    /// Decoded images `[candidates, 3, H, W]` in [-1, 1], before conversion to 8 bits.
    pub decoded: ArrayD<f32>,
    /// Words of the prompt cut off by the tokenizer's length limit.
    pub truncated_prompt: Option<String>,
    pub scheduler: SchedulerKind,
    /// Denoising steps the SDXL refiner ran ([`Pipeline::render_refined`]); `None` without one.
    pub refiner_steps: Option<usize>,
    pub timings: Timings,
}

impl Rendered {
    /// Each candidate's image, or why it has none, in the request's order.
    pub fn outcomes(self) -> Vec<Result<RgbImage, CandidateFailure>> {
        let n = self.images.len() + self.failed.len();
        let mut failed = self.failed.into_iter().peekable();
        let mut images = self.images.into_iter();
        (0..n)
            .map(|i| match failed.next_if(|(c, _)| *c == i) {
                Some((_, why)) => Err(why),
                None => Ok(images
                    .next()
                    .expect("an image for every candidate not failed")),
            })
            .collect()
    }
}

/// What a model family supplies to the shared steps of [`Pipeline::render`]: diffusers'
/// `encode_prompt`, the request's prompt and negative prompt (and the family's other
/// conditioning) to the UNet's conditioning inputs.
pub trait FamilyPipeline: Send {
    /// The conditioning of `req`'s prompt over the UNet calls (read as its `prompt_syntax`,
    /// `clip_skip` and `text_cleaning` say, where the family supports them); with
    /// classifier-free guidance (the family decides: [`is_guided`] for most) also of its negative
    /// prompt (empty for none).
    fn encode_prompt(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError>;
}

/// The steps of `model`'s family.
pub fn family_pipeline(model: &SdModel) -> Result<Box<dyn FamilyPipeline>, PipelineError> {
    Ok(match model.family() {
        Family::Sd => Box::new(sd::StableDiffusion::new(model)?),
        Family::Sdxl | Family::SdxlRefiner => Box::new(sdxl::StableDiffusionXl::new(model)?),
        Family::Lcm => Box::new(lcm::LatentConsistency::new(model)?),
    })
}

/// A loaded model with its family's steps and its scheduler configuration; sessions are reused
/// across requests.
pub struct Pipeline {
    pub model: SdModel,
    pub scheduler_config: SchedulerConfig,
    /// The model's own scheduler, from `_class_name` in its scheduler_config.json.
    pub default_scheduler: SchedulerKind,
    family: Box<dyn FamilyPipeline>,
}

impl Pipeline {
    pub fn new(model: SdModel) -> Result<Pipeline, PipelineError> {
        let family = family_pipeline(&model)?;
        let scheduler_config = SchedulerConfig::from_file(&model.folder.scheduler_config)?;
        let default_scheduler = scheduler_config.kind()?;
        Ok(Pipeline {
            model,
            scheduler_config,
            default_scheduler,
            family,
        })
    }

    fn check(&self, req: &RenderRequest) -> Result<(), PipelineError> {
        let bad = |field, problem: String| Err(PipelineError::Request { field, problem });
        let folder = &self.model.folder;
        for (field, v) in [("width", req.width), ("height", req.height)] {
            if let Err(source) = folder.check_side(v) {
                return Err(PipelineError::Size { field, source });
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
        let options = &req.seed_options;
        if !(0.0..=1.0).contains(&options.subseed_strength) {
            return bad(
                "subseed_strength",
                format!("is {}; it must be 0 to 1", options.subseed_strength),
            );
        }
        if let Some(subseeds) = &options.subseeds
            && subseeds.len() != req.seeds.len()
        {
            return bad(
                "subseed",
                format!(
                    "has {} seeds for {} candidates",
                    subseeds.len(),
                    req.seeds.len()
                ),
            );
        }
        let f = self.model.folder.vae_downsampling as u32;
        if let Some((w, h)) = options.resize_from
            && (w < f || h < f)
        {
            return bad(
                "seed_resize_from_w",
                format!("{w}x{h} is smaller than one latent pixel ({f})"),
            );
        }
        if req.clip_skip == 0 {
            return bad("clip_skip", "is 0; 1 is no skip".into());
        }
        if req.max_batch == 0 {
            return bad("max_batch", "is 0".into());
        }
        if self.model.vae_needs_upcast() {
            return Err(PipelineError::VaeNeedsUpcast {
                file: self.model.vae_decoder.file().display().to_string(),
            });
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

    /// `[n, latent channels, height / f, width / f]`, `f` the VAE's downsampling.
    fn latent_shape(&self, req: &RenderRequest, n: usize) -> Vec<usize> {
        let f = self.model.folder.vae_downsampling;
        let c = self.model.latent_channels;
        vec![n, c, req.height as usize / f, req.width as usize / f]
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
        let mut timings = Timings::default();

        let started = Instant::now();
        let conditioning = self.encode_prompt(req)?;
        timings.text = started.elapsed();
        timings.tokenize = conditioning.start.tokenize;

        let mut finals = Vec::new();
        let mut decoded_all = Vec::new();
        let mut images = Vec::new();
        let mut failed = Vec::new();
        for first in (0..req.seeds.len()).step_by(req.max_batch) {
            let n = req.max_batch.min(req.seeds.len() - first);
            let started = Instant::now();
            let latents = self.denoise_batch(req, kind, &conditioning, first, n, on_progress)?;
            timings.denoise += started.elapsed();

            let started = Instant::now();
            let decoded = self.decode_images(latents.view(), first, &mut images, &mut failed)?;
            timings.decode += started.elapsed();
            finals.push(latents);
            decoded_all.push(decoded);
        }
        Ok(Rendered {
            images,
            failed,
            latents: concat(finals)?,
            decoded: concat(decoded_all)?,
            truncated_prompt: conditioning.start.truncated_prompt,
            scheduler: kind,
            refiner_steps: None,
            timings,
        })
    }

    /// The family's `encode_prompt`.
    fn encode_prompt(
        &mut self,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError> {
        let conditioning = self.family.encode_prompt(&mut self.model, req)?;
        // The tokenizer has logged any truncation, once and briefly.
        Ok(conditioning)
    }

    /// Candidates `first..first + n`: a fresh schedule, their initial latents, the denoising
    /// loop; their final latents.
    fn denoise_batch(
        &mut self,
        req: &RenderRequest,
        kind: SchedulerKind,
        conditioning: &ScheduledConditioning,
        first: usize,
        n: usize,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<ArrayD<f32>, PipelineError> {
        let mut config = self.scheduler_config.clone();
        config.eta = Some(f64::from(req.eta));
        let mut scheduler = scheduler::build(kind, &config, req.steps)?;
        let downsampling = self.model.folder.vae_downsampling;
        let mut noise = BatchNoise::new(req, first, n, self.latent_shape(req, 1), downsampling);
        let latents =
            noise.initial_latents(req.initial_latents.as_ref(), scheduler.init_noise_sigma())?;
        let mut draw_noise = |_step: usize| noise.step_noise();
        let mut on_step = |step: Step| {
            on_progress(Progress {
                first_candidate: first,
                batch: n,
                step,
            })
        };
        let graph = &self.model.family().graph().unet;
        denoise::denoise_scheduled(
            &mut self.model.unet,
            graph,
            scheduler.as_mut(),
            latents,
            conditioning,
            &mut draw_noise,
            &mut on_step,
        )
    }

    /// Final latents of candidates `first..` to images in [-1, 1]; each candidate's latent and
    /// image checked to be finite ([`failure::check`]): its RGB picture appended to `images`,
    /// or it to `failed` with why.
    fn decode_images(
        &mut self,
        latents: ndarray::ArrayViewD<'_, f32>,
        first: usize,
        images: &mut Vec<image::RgbImage>,
        failed: &mut Vec<(usize, CandidateFailure)>,
    ) -> Result<ArrayD<f32>, PipelineError> {
        let decoded = self.decode(latents.view())?;
        let pairs = latents.axis_iter(Axis(0)).zip(decoded.axis_iter(Axis(0)));
        for (i, (latent, image)) in pairs.enumerate() {
            match failure::check(latent, image.view()) {
                Some(why) => failed.push((first + i, why)),
                None => images.push(decode::to_rgb8(image)),
            }
        }
        Ok(decoded)
    }

    /// Final latents to images in [-1, 1].
    fn decode(
        &mut self,
        latents: ndarray::ArrayViewD<'_, f32>,
    ) -> Result<ArrayD<f32>, PipelineError> {
        let graph = &self.model.family().graph().vae_decoder;
        let folder = &self.model.folder;
        decode::decode(
            &mut self.model.vae_decoder,
            graph,
            latents,
            folder.vae_scaling_factor,
            folder.vae_downsampling,
        )
    }
}

fn concat(parts: Vec<ArrayD<f32>>) -> Result<ArrayD<f32>, PipelineError> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|source| PipelineError::Concatenate {
        file: "(pipeline)".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_put_each_failure_in_its_candidates_place() {
        let image = |v: u8| RgbImage::from_pixel(1, 1, image::Rgb([v, v, v]));
        let why = CandidateFailure::NonFinite {
            stage: failure::Stage::FinalLatent,
        };
        let rendered = Rendered {
            images: vec![image(1), image(3)],
            failed: vec![(0, why), (2, why), (4, why)],
            latents: ArrayD::zeros(ndarray::IxDyn(&[5, 4, 1, 1])),
            decoded: ArrayD::zeros(ndarray::IxDyn(&[5, 3, 8, 8])),
            truncated_prompt: None,
            scheduler: SchedulerKind::Ddim,
            refiner_steps: None,
            timings: Timings::default(),
        };
        let got: Vec<Result<u8, CandidateFailure>> = rendered
            .outcomes()
            .into_iter()
            .map(|o| o.map(|i| i.get_pixel(0, 0).0[0]))
            .collect();
        assert_eq!(got, vec![Err(why), Ok(1), Err(why), Ok(3), Err(why)]);
    }
}
