//! The Stable Diffusion 1.x/2.x family's steps, as diffusers' `StableDiffusionPipeline` takes
//! them: `encode_prompt` is the prompt and the negative prompt (empty when none) through the
//! model's CLIP tokenizer and text encoder, one run for both, whose `last_hidden_state` is the
//! UNet's `encoder_hidden_states`.

use ndarray::Axis;

use super::conditioning::{CondInput, Conditioning};
use super::{FamilyPipeline, PipelineError, text};
use crate::engine::model::SdModel;
use crate::engine::model::family::sd::{ENCODER_HIDDEN_STATES, GRAPH};
use crate::engine::tokenizer::ClipTokenizer;

/// SD 1.x/2.x: the model folder's tokenizer.
pub struct StableDiffusion {
    tokenizer: ClipTokenizer,
}

impl StableDiffusion {
    /// Reads the tokenizer of `model`'s folder.
    pub fn new(model: &SdModel) -> Result<StableDiffusion, PipelineError> {
        Ok(StableDiffusion {
            tokenizer: ClipTokenizer::from_dir(&model.folder.tokenizer_dir)?,
        })
    }
}

impl FamilyPipeline for StableDiffusion {
    fn encode_prompt(
        &mut self,
        model: &mut SdModel,
        prompt: &str,
        negative_prompt: &str,
        guidance: Option<f32>,
    ) -> Result<Conditioning, PipelineError> {
        let prompts: Vec<&str> = match guidance {
            Some(_) => vec![negative_prompt, prompt],
            None => vec![prompt],
        };
        let embeddings = text::encode(
            &self.tokenizer,
            &mut model.text_encoder,
            &GRAPH.text_encoder,
            &prompts,
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
}
