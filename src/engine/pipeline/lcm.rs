//! The LCM family's `encode_prompt`, as diffusers' `LatentConsistencyModelPipeline` computes
//! it: the prompt alone through SD's text encoder (no negative prompt, no unconditional batch:
//! guidance is folded into the distilled UNet), plus `timestep_cond`, the guidance-scale
//! embedding of `w = guidance − 1`.

use ndarray::{ArrayD, IxDyn};

use super::conditioning::{CondInput, ScheduledConditioning};
use super::{FamilyPipeline, PipelineError, RenderRequest, sd};
use crate::engine::model::SdModel;
use crate::engine::model::family::lcm::{self, TIMESTEP_COND};

/// diffusers' default `embedding_dim` (the UNet's `time_cond_proj_dim` overrides it).
const DEFAULT_EMBEDDING_DIM: usize = 512;

/// LCM: SD's prompt encoding and the guidance embedding.
pub struct LatentConsistency {
    sd: sd::StableDiffusion,
    embedding_dim: usize,
}

impl LatentConsistency {
    pub fn new(model: &SdModel) -> Result<LatentConsistency, PipelineError> {
        Ok(LatentConsistency {
            sd: sd::StableDiffusion::new(model)?,
            embedding_dim: lcm::embedding_dim(model).unwrap_or(DEFAULT_EMBEDDING_DIM),
        })
    }
}

/// diffusers' `get_guidance_scale_embedding(w, embedding_dim)` for one `w`, float32:
/// `[sin(1000·w·f_k)…, cos(1000·w·f_k)…]` with `f_k = exp(−k·ln(10000) / (half − 1))`, zero-padded
/// to an odd `dim`. `[1, dim]`.
pub fn guidance_embedding(w: f32, dim: usize) -> ArrayD<f32> {
    let half = dim / 2;
    let w = w * 1000.0;
    let step = 10000f32.ln() / (half as f32 - 1.0);
    let args: Vec<f32> = (0..half).map(|k| w * (k as f32 * -step).exp()).collect();
    let mut v: Vec<f32> = args.iter().map(|a| a.sin()).collect();
    v.extend(args.iter().map(|a| a.cos()));
    v.resize(dim, 0.0);
    ArrayD::from_shape_vec(IxDyn(&[1, dim]), v).expect("one row")
}

impl FamilyPipeline for LatentConsistency {
    fn encode_prompt(
        &mut self,
        model: &mut SdModel,
        req: &RenderRequest,
    ) -> Result<ScheduledConditioning, PipelineError> {
        // diffusers' encoding (no negative prompt), with the request's CLIP skip and text
        // cleaning; AUTOMATIC1111's syntax is read by the SD 1.x/2.x family only.
        let skip = self.sd.skip(req.clip_skip);
        let mut conditioning =
            self.sd
                .encode(model, &req.prompt, "", None, skip, req.text_cleaning)?;
        conditioning.inputs.push(CondInput {
            name: TIMESTEP_COND.name,
            cond: guidance_embedding(req.guidance_scale - 1.0, self.embedding_dim),
            uncond: None,
        });
        Ok(ScheduledConditioning::constant(conditioning))
    }
}
