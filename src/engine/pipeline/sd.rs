//! The Stable Diffusion 1.x/2.x family's steps, as diffusers' `StableDiffusionPipeline` takes
//! them: `encode_prompt` is the prompt and the negative prompt (empty when none) through the
//! model's CLIP tokenizer and text encoder, whose `last_hidden_state` is the UNet's
//! `encoder_hidden_states`. With [`PromptSyntax::Plain`] that is diffusers' encoding (one run
//! for both, 77 tokens, longer prompts cut); with [`PromptSyntax::A1111`] AUTOMATIC1111's
//! ([`super::a1111`]: emphasis, long prompts in windows, conditioning that changes over steps).

use ndarray::Axis;

use super::conditioning::{CondInput, CondPhase, Conditioning, ScheduledConditioning, is_guided};
use super::text::ClipSkip;
use super::{FamilyPipeline, PipelineError, RenderRequest, a1111, text};
use crate::engine::model::SdModel;
use crate::engine::model::family::sd::{ENCODER_HIDDEN_STATES, GRAPH};
use crate::engine::prompt::PromptSyntax;
use crate::engine::tokenizer::{ClipTokenizer, TextCleaning};

/// SD 1.x/2.x: the model folder's tokenizer.
pub struct StableDiffusion {
    tokenizer: ClipTokenizer,
    /// The text encoder's `layer_norm_eps` (for CLIP skip).
    layer_norm_eps: f64,
}

impl StableDiffusion {
    /// Reads the tokenizer of `model`'s folder.
    pub fn new(model: &SdModel) -> Result<StableDiffusion, PipelineError> {
        Ok(StableDiffusion {
            tokenizer: ClipTokenizer::from_dir(&model.folder.tokenizer_dir)?,
            layer_norm_eps: layer_norm_eps(&model.folder.text_encoder),
        })
    }

    /// CLIP skip `n` (1: none) on this model's text encoder.
    pub fn skip(&self, n: usize) -> ClipSkip {
        ClipSkip {
            n,
            layer_norm_eps: self.layer_norm_eps,
        }
    }

    /// diffusers' encoding: the conditioning of `prompt`; with `guidance` also of
    /// `negative_prompt` (empty for none), both in one run of 77 tokens each.
    pub fn encode(
        &self,
        model: &mut SdModel,
        prompt: &str,
        negative_prompt: &str,
        guidance: Option<f32>,
        skip: ClipSkip,
        cleaning: TextCleaning,
    ) -> Result<Conditioning, PipelineError> {
        let prompts: Vec<&str> = match guidance {
            Some(_) => vec![negative_prompt, prompt],
            None => vec![prompt],
        };
        let embeddings = text::encode_skipping(
            &self.tokenizer,
            &mut model.text_encoder,
            &GRAPH.text_encoder,
            &prompts,
            skip,
            cleaning,
        )?;
        let hidden = &embeddings.hidden;
        let last = prompts.len() - 1;
        let cond = hidden.slice_axis(Axis(0), (last..last + 1).into());
        let uncond = guidance
            .is_some()
            .then(|| hidden.slice_axis(Axis(0), (0..1).into()).to_owned());
        Ok(Conditioning {
            inputs: vec![CondInput {
                name: ENCODER_HIDDEN_STATES.name,
                cond: cond.to_owned(),
                uncond,
            }],
            guidance,
            truncated_prompt: embeddings.truncated[last].clone(),
            tokenize: embeddings.tokenize,
        })
    }

    /// AUTOMATIC1111's encoding.
    fn encode_a1111(
        &self,
        model: &mut SdModel,
        req: &RenderRequest,
        guidance: Option<f32>,
    ) -> Result<ScheduledConditioning, PipelineError> {
        let (prompt, negative_prompt) = (req.prompt.as_str(), req.negative_prompt.as_str());
        let (steps, skip, cleaning) = (req.steps, self.skip(req.clip_skip), req.text_cleaning);
        let started = std::time::Instant::now();
        let reading = a1111::read(&self.tokenizer, prompt, steps, cleaning, "prompt")?;
        let negative = guidance
            .map(|_| {
                a1111::read(
                    &self.tokenizer,
                    negative_prompt,
                    steps,
                    cleaning,
                    "negative",
                )
            })
            .transpose()?;
        let tokenize = started.elapsed();
        // PNDM makes one UNet call more than the steps.
        let phases = a1111::encode(
            &mut model.text_encoder,
            &GRAPH.text_encoder,
            a1111::special_ids(&self.tokenizer),
            &reading,
            negative.as_ref(),
            steps + 1,
            skip,
        )?;
        let window = self.tokenizer.model_max_length();
        a1111::check_sequence(
            &model.unet,
            ENCODER_HIDDEN_STATES.name,
            phases.iter().map(|p| p.cond.len_of(Axis(1))).max(),
            window,
        )?;
        let phases = phases.into_iter().map(|p| CondPhase {
            from_step: p.from_step,
            inputs: vec![CondInput {
                name: ENCODER_HIDDEN_STATES.name,
                cond: p.cond,
                uncond: p.uncond,
            }],
        });
        ScheduledConditioning::from_phases(phases, guidance, tokenize)
    }
}

impl FamilyPipeline for StableDiffusion {
    fn encode_prompt(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError> {
        let guidance = is_guided(req.guidance_scale).then_some(req.guidance_scale);
        match req.prompt_syntax {
            PromptSyntax::Plain => self
                .encode(
                    model,
                    &req.prompt,
                    &req.negative_prompt,
                    guidance,
                    self.skip(req.clip_skip),
                    req.text_cleaning,
                )
                .map(ScheduledConditioning::constant),
            PromptSyntax::A1111 => self.encode_a1111(model, req, guidance),
        }
    }
}

/// `layer_norm_eps` from the config.json beside the text encoder's model file; CLIP's 1e-5
/// when there is none.
fn layer_norm_eps(text_encoder_file: &std::path::Path) -> f64 {
    text_encoder_file
        .parent()
        .and_then(|dir| std::fs::read_to_string(dir.join("config.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config.get("layer_norm_eps")?.as_f64())
        .unwrap_or(1e-5)
}
