//! Latent consistency models distilled from SD 1.x/2.x (diffusers'
//! `LatentConsistencyModelPipeline`): SD's parts, with a UNet that also takes the guidance-scale
//! embedding `timestep_cond` (guidance folded into the model, no unconditional batch).

use std::path::Path;

use super::parts;
use super::{CondInputSpec, Family, Graph, UnetGraph, VAE_DECODER, VAE_ENCODER, sd};
use crate::engine::model::SdModel;
use crate::engine::model::signature::{Component, Feeding, Signature, SignatureError};

/// model_index.json `_class_name`s of the family.
pub const PIPELINE_CLASSES: &[&str] = &["LatentConsistencyModelPipeline"];

/// The guidance-scale embedding `[batch, time_cond_proj_dim]`.
pub const TIMESTEP_COND: CondInputSpec = CondInputSpec {
    name: "timestep_cond",
    rank: 2,
};

/// The graph names: SD's, with `timestep_cond`.
pub const GRAPH: Graph = Graph {
    text_encoder: sd::GRAPH.text_encoder,
    unet: UnetGraph {
        sample: "sample",
        timestep: "timestep",
        conditioning: &[sd::ENCODER_HIDDEN_STATES, TIMESTEP_COND],
        out_sample: "out_sample",
    },
    vae_decoder: VAE_DECODER,
    vae_encoder: VAE_ENCODER,
};

/// Checks one part's signature; how to feed it.
pub fn check(
    component: Component,
    file: &Path,
    sig: &Signature,
) -> Result<Feeding, SignatureError> {
    parts::check_graph(&GRAPH, Family::Lcm, component, file, sig)
}

/// SD's rule: the text encoder's width is what the UNet cross-attends to.
pub fn check_model(model: &SdModel) -> Result<(), SignatureError> {
    sd::check_model(model)
}

/// The width of the guidance embedding the UNet takes (`time_cond_proj_dim`), when fixed.
pub fn embedding_dim(model: &SdModel) -> Option<usize> {
    model
        .unet
        .signature
        .input(TIMESTEP_COND.name)
        .and_then(|p| p.dims.last().copied())
        .and_then(|d| usize::try_from(d).ok())
}
