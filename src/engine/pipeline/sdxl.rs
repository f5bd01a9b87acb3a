//! The SDXL families' `encode_prompt`, as diffusers' `StableDiffusionXLPipeline` (and, for the
//! refiner, `StableDiffusionXLImg2ImgPipeline`) computes it:
//!
//! - each text encoder's penultimate hidden state (`hidden_states[-2]`), with its own tokenizer
//!   (the second pads with "!"), concatenated along the width: `encoder_hidden_states`;
//! - the second encoder's pooled projection: `text_embeds`;
//! - `time_ids`: original size + crop top-left + target size (base), or original size + crop
//!   top-left + aesthetic score (the refiner, `requires_aesthetics_score`);
//! - with guidance and no negative prompt, `force_zeros_for_empty_prompt` gives zero negative
//!   embeddings (else the empty string is encoded); the negative time ids are the positive ones,
//!   with the negative aesthetic score for the refiner.
//!
//! With `prompt_syntax: a1111` the prompts are read as AUTOMATIC1111 reads them for SDXL
//! ([`super::sdxl_a1111`]); a prompt without syntax that fits one window gives diffusers'
//! conditioning either way. `clip_skip` is AUTOMATIC1111's for SDXL (its "Clip skip SDXL"
//! setting): `N` of 2 or more conditions on CLIP ViT-L's `hidden_states[-N]` (no final layer
//! norm; 2 is the penultimate state, the default), OpenCLIP bigG always on its penultimate state
//! (so the refiner, which has only bigG, is not changed by it).

use ndarray::{ArrayD, Axis, IxDyn};

use super::conditioning::{CondInput, CondPhase, Conditioning, ScheduledConditioning, is_guided};
use super::sdxl_a1111::{self, XlEncoder, XlNegative, XlPhase, XlPrompts};
use super::text::{self, EncoderOutputs};
use super::{FamilyPipeline, PipelineError, RenderRequest, a1111, clip_skip};
use crate::engine::model::family::Family;
use crate::engine::model::family::sdxl::{
    self, ENCODER_HIDDEN_STATES, GRAPH, POOLED_OUTPUT, TEXT_EMBEDS, TIME_IDS,
};
use crate::engine::model::{Component, Part, SdModel};
use crate::engine::prompt::PromptSyntax;
use crate::engine::tokenizer::ClipTokenizer;

/// SDXL base or refiner: a tokenizer and the penultimate hidden-state output per text encoder.
pub struct StableDiffusionXl {
    /// One per text encoder, in the order of [`SdModel::text_encoder`], `text_encoder_2`.
    tokenizers: Vec<ClipTokenizer>,
    /// Each encoder's penultimate hidden-state output.
    penultimate: Vec<String>,
    /// CLIP ViT-L's (the base's first encoder's) `hidden_states.N` outputs and its file, for
    /// CLIP skip.
    clip_l: Option<(usize, String)>,
    force_zeros: bool,
    aesthetics: bool,
}

impl StableDiffusionXl {
    /// Reads the folder's tokenizers and picks each encoder's penultimate hidden state.
    pub fn new(model: &SdModel) -> Result<StableDiffusionXl, PipelineError> {
        let folder = &model.folder;
        let mut tokenizers = vec![ClipTokenizer::from_dir(&folder.tokenizer_dir)?];
        if let Some(dir) = &folder.tokenizer_2_dir {
            tokenizers.push(ClipTokenizer::from_dir(dir)?);
        }
        let penultimate = encoders(model)
            .map(|part| {
                sdxl::penultimate_of(part).map_err(|e| PipelineError::Shape {
                    file: e.file.display().to_string(),
                    what: format!("{}: {}", e.field, e.problem),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let clip_l = encoders(model)
            .find(|part| part.component == Component::TextEncoder)
            .map(|part| {
                let names: Vec<String> = part
                    .signature
                    .outputs
                    .iter()
                    .map(|p| p.name.clone())
                    .collect();
                (
                    clip_skip::hidden_state_count(&names),
                    part.file().display().to_string(),
                )
            });
        Ok(StableDiffusionXl {
            tokenizers,
            penultimate,
            clip_l,
            force_zeros: folder.force_zeros_for_empty_prompt,
            aesthetics: model.family() == Family::SdxlRefiner || folder.requires_aesthetics_score,
        })
    }

    /// Each encoder's hidden-state output with `clip_skip` (AUTOMATIC1111's "Clip skip SDXL": 2
    /// or more moves CLIP ViT-L's to `hidden_states[-clip_skip]`).
    fn hidden_outputs(&self, clip_skip: usize) -> Result<Vec<String>, PipelineError> {
        let mut names = self.penultimate.clone();
        if let Some((states, file)) = &self.clip_l
            && clip_skip >= 2
        {
            names[0] = clip_skip::skipped_output(clip_skip, *states, file)?;
        }
        Ok(names)
    }

    /// `time_ids` for the prompt and for the negative prompt, `[1, 6]` or `[1, 5]`.
    fn time_ids(&self, req: &RenderRequest) -> (ArrayD<f32>, ArrayD<f32>) {
        let c = &req.sdxl;
        let image = [req.height, req.width];
        let original = c.original_size.unwrap_or(image);
        let target = c.target_size.unwrap_or(image);
        let head = [
            original[0],
            original[1],
            c.crop_top_left[0],
            c.crop_top_left[1],
        ]
        .map(|v| v as f32)
        .to_vec();
        let row = |tail: &[f32]| {
            let mut v = head.clone();
            v.extend_from_slice(tail);
            ArrayD::from_shape_vec(IxDyn(&[1, v.len()]), v).expect("one row")
        };
        if self.aesthetics {
            (
                row(&[c.aesthetic_score]),
                row(&[c.negative_aesthetic_score]),
            )
        } else {
            let t = row(&[target[0] as f32, target[1] as f32]);
            (t.clone(), t)
        }
    }
}

/// The model's text encoders, in order.
fn encoders(model: &SdModel) -> impl Iterator<Item = &Part> {
    std::iter::once(&model.text_encoder).chain(model.text_encoder_2.as_ref())
}

impl FamilyPipeline for StableDiffusionXl {
    /// diffusers' encoding with `prompt_syntax: plain` (conditioning that does not change over
    /// the steps), AUTOMATIC1111's with `a1111`.
    fn encode_prompt(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError> {
        match req.prompt_syntax {
            PromptSyntax::Plain => self.encode(model, req).map(ScheduledConditioning::constant),
            PromptSyntax::A1111 => self.encode_a1111(model, req),
        }
    }
}

impl StableDiffusionXl {
    /// Both text encoders (or the refiner's one) and the time ids of `req`.
    fn encode(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<Conditioning, PipelineError> {
        let guidance = is_guided(req.guidance_scale).then_some(req.guidance_scale);
        let zero_negative = self.force_zeros && req.negative_prompt.is_empty();
        let encode_negative = guidance.is_some() && !zero_negative;
        let prompts: Vec<&str> = if encode_negative {
            vec![&req.negative_prompt, &req.prompt]
        } else {
            vec![&req.prompt]
        };
        let n_encoders = self.tokenizers.len();
        let hidden_outputs = self.hidden_outputs(req.clip_skip)?;
        let parts = std::iter::once(&mut model.text_encoder).chain(model.text_encoder_2.as_mut());
        let mut runs: Vec<EncoderOutputs> = Vec::with_capacity(n_encoders);
        for (i, part) in parts.enumerate() {
            let mut wanted = vec![(hidden_outputs[i].as_str(), 3)];
            if i + 1 == n_encoders {
                wanted.push((POOLED_OUTPUT, 2));
            }
            runs.push(text::encode_outputs(
                &self.tokenizers[i],
                part,
                GRAPH.text_encoder.input_ids,
                &prompts,
                &wanted,
                req.text_cleaning,
            )?);
        }
        let hidden_views: Vec<_> = runs.iter().map(|r| r.outputs[0].view()).collect();
        let hidden = ndarray::concatenate(Axis(2), &hidden_views).map_err(|source| {
            PipelineError::Concatenate {
                file: model.text_encoder.file().display().to_string(),
                source,
            }
        })?;
        let pooled = &runs.last().expect("one encoder at least").outputs[1];
        let last = prompts.len() - 1;
        let row = |a: &ArrayD<f32>, i: usize| a.slice_axis(Axis(0), (i..i + 1).into()).to_owned();
        let negative = |a: &ArrayD<f32>| {
            guidance.map(|_| {
                if encode_negative {
                    row(a, 0)
                } else {
                    ArrayD::zeros(row(a, last).raw_dim())
                }
            })
        };
        let (time_ids, negative_time_ids) = self.time_ids(req);
        let inputs = vec![
            CondInput {
                name: ENCODER_HIDDEN_STATES.name,
                cond: row(&hidden, last),
                uncond: negative(&hidden),
            },
            CondInput {
                name: TEXT_EMBEDS.name,
                cond: row(pooled, last),
                uncond: negative(pooled),
            },
            CondInput {
                name: TIME_IDS.name,
                cond: time_ids,
                uncond: guidance.map(|_| negative_time_ids),
            },
        ];
        Ok(Conditioning {
            inputs,
            guidance,
            truncated_prompt: runs[0].truncated[last].clone(),
            tokenize: runs.iter().map(|r| r.tokenize).sum(),
        })
    }
}

impl StableDiffusionXl {
    /// AUTOMATIC1111's reading of `req`'s prompts through every text encoder, with the time ids.
    fn encode_a1111(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError> {
        let guidance = is_guided(req.guidance_scale).then_some(req.guidance_scale);
        let negative = match guidance {
            None => XlNegative::None,
            Some(_) if self.force_zeros && req.negative_prompt.is_empty() => XlNegative::Zeros,
            Some(_) => XlNegative::Text(&req.negative_prompt),
        };
        let prompts = XlPrompts {
            prompt: &req.prompt,
            negative,
            steps: req.steps,
            cleaning: req.text_cleaning,
        };
        let hidden = self.hidden_outputs(req.clip_skip)?;
        let last = self.tokenizers.len() - 1;
        let parts = std::iter::once(&mut model.text_encoder).chain(model.text_encoder_2.as_mut());
        let mut encoders: Vec<XlEncoder<'_>> = parts
            .zip(&self.tokenizers)
            .zip(&hidden)
            .enumerate()
            .map(|(i, ((part, tokenizer), hidden))| XlEncoder {
                part,
                tokenizer,
                input_ids: GRAPH.text_encoder.input_ids,
                hidden,
                pooled: (i == last).then_some(POOLED_OUTPUT),
            })
            .collect();
        // PNDM makes one UNet call more than the steps.
        let (phases, tokenize) = sdxl_a1111::encode(&mut encoders, &prompts, req.steps + 1)?;
        a1111::check_sequence(
            &model.unet,
            ENCODER_HIDDEN_STATES.name,
            phases.iter().map(|p| p.cond.len_of(Axis(1))).max(),
            self.tokenizers[0].model_max_length(),
        )?;
        let (time_ids, negative_time_ids) = self.time_ids(req);
        let phases = phases.into_iter().map(|p| CondPhase {
            from_step: p.from_step,
            inputs: inputs(p, &time_ids, guidance.map(|_| &negative_time_ids)),
        });
        ScheduledConditioning::from_phases(phases, guidance, tokenize)
    }
}

/// The UNet inputs of one phase.
fn inputs(
    p: XlPhase,
    time_ids: &ArrayD<f32>,
    negative_time_ids: Option<&ArrayD<f32>>,
) -> Vec<CondInput> {
    vec![
        CondInput {
            name: ENCODER_HIDDEN_STATES.name,
            cond: p.cond,
            uncond: p.uncond,
        },
        CondInput {
            name: TEXT_EMBEDS.name,
            cond: p.pooled,
            uncond: p.negative_pooled,
        },
        CondInput {
            name: TIME_IDS.name,
            cond: time_ids.clone(),
            uncond: negative_time_ids.cloned(),
        },
    ]
}
