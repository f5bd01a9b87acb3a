//! Stable Diffusion XL (diffusers' `StableDiffusionXLPipeline`) and its refiner
//! (`StableDiffusionXLImg2ImgPipeline` with only the second text encoder). The graph names are
//! optimum's.
//!
//! Both text encoders are exported with every hidden state (`hidden_states.0..N`); SDXL is
//! conditioned on the penultimate one of each (diffusers' `hidden_states[-2]`, before the final
//! layer norm, so not `last_hidden_state`), concatenated along the width, plus the pooled and
//! projected `text_embeds` of the second encoder and the size (and, for the refiner, aesthetic
//! score) `time_ids`.

use std::path::Path;

use super::parts::{self, Checker, checker};
use super::{CondInputSpec, Family, Graph, TextEncoderGraph, UnetGraph, VAE_DECODER, VAE_ENCODER};
use crate::engine::model::signature::{Component, Feeding, Signature, SignatureError};
use crate::engine::model::{Part, SdModel};

/// model_index.json `_class_name`s of the SDXL base family (text-to-image, and its
/// image-to-image form with both text encoders).
pub const PIPELINE_CLASSES: &[&str] = &["StableDiffusionXLPipeline"];

/// model_index.json `_class_name`s of the refiner family.
pub const REFINER_PIPELINE_CLASSES: &[&str] = &["StableDiffusionXLImg2ImgPipeline"];

/// The hidden states of both encoders, concatenated: `[batch, sequence, width₁ + width₂]`.
pub const ENCODER_HIDDEN_STATES: CondInputSpec = CondInputSpec {
    name: "encoder_hidden_states",
    rank: 3,
};

/// The second encoder's pooled projection: `[batch, projection]`.
pub const TEXT_EMBEDS: CondInputSpec = CondInputSpec {
    name: "text_embeds",
    rank: 2,
};

/// Size conditioning `[batch, 6]` (base: original size, crop top-left, target size) or
/// `[batch, 5]` (refiner: original size, crop top-left, aesthetic score).
pub const TIME_IDS: CondInputSpec = CondInputSpec {
    name: "time_ids",
    rank: 2,
};

/// The prefix of the text encoders' per-layer outputs `hidden_states.0` .. `hidden_states.N`.
pub const HIDDEN_STATES_PREFIX: &str = "hidden_states.";

/// The second text encoder's pooled, projected output.
pub const POOLED_OUTPUT: &str = "text_embeds";

const TEXT_ENCODER: TextEncoderGraph = TextEncoderGraph {
    input_ids: "input_ids",
    hidden_state: "last_hidden_state",
};

const UNET: UnetGraph = UnetGraph {
    sample: "sample",
    timestep: "timestep",
    conditioning: &[ENCODER_HIDDEN_STATES, TEXT_EMBEDS, TIME_IDS],
    out_sample: "out_sample",
};

/// The graph names of SDXL base and refiner (the same names; the refiner has one text encoder).
pub const GRAPH: Graph = Graph {
    text_encoder: TEXT_ENCODER,
    unet: UNET,
    vae_decoder: VAE_DECODER,
    vae_encoder: VAE_ENCODER,
};

/// Checks one part's signature; how to feed it.
pub fn check(
    family: Family,
    component: Component,
    file: &Path,
    sig: &Signature,
) -> Result<Feeding, SignatureError> {
    let c = checker(file, sig);
    match component {
        Component::TextEncoder | Component::TextEncoder2 => {
            let feeding = parts::text_encoder(&c, &GRAPH.text_encoder, family)?;
            penultimate_hidden_state(&c)?;
            if component == Component::TextEncoder2 {
                let mut float = Some(feeding.float);
                c.float(false, POOLED_OUTPUT, 2, "[batch, projection]", &mut float)?;
            }
            Ok(feeding)
        }
        Component::Unet => parts::unet(&c, &GRAPH.unet, family),
        Component::VaeDecoder => parts::vae_decoder(&c, &GRAPH.vae_decoder, family),
        Component::VaeEncoder => parts::vae_encoder(&c, &GRAPH.vae_encoder, family),
    }
}

/// The name of a text encoder's penultimate hidden state (`hidden_states.{N-1}` of
/// `hidden_states.0..N`), what SDXL is conditioned on.
pub(super) fn penultimate_hidden_state(c: &Checker<'_>) -> Result<String, SignatureError> {
    let last = c
        .sig
        .outputs
        .iter()
        .filter_map(|p| {
            p.name
                .strip_prefix(HIDDEN_STATES_PREFIX)?
                .parse::<usize>()
                .ok()
        })
        .max();
    match last {
        Some(n) if n >= 1 => {
            let name = format!("{HIDDEN_STATES_PREFIX}{}", n - 1);
            let mut float = None;
            c.float(false, &name, 3, "[batch, sequence, hidden]", &mut float)?;
            Ok(name)
        }
        _ => Err(c.err(
            Checker::field(false, &format!("{HIDDEN_STATES_PREFIX}0")),
            format!(
                "missing: SDXL is conditioned on the penultimate hidden state, but the model's \
                 outputs are {}; export it with optimum (`--task text-to-image`), which adds \
                 every hidden state",
                Checker::names(&c.sig.outputs)
            ),
        )),
    }
}

/// The penultimate hidden state's output name of a loaded text encoder.
pub fn penultimate_of(part: &Part) -> Result<String, SignatureError> {
    penultimate_hidden_state(&checker(part.file(), &part.signature))
}

/// The width of a text encoder output (`None` when dynamic or missing).
fn width(part: &Part, output: &str) -> Option<i64> {
    part.signature
        .output(output)
        .and_then(|p| p.dims.last().copied())
        .filter(|d| *d >= 0)
}

/// The text encoders' widths add up to what the UNet cross-attends to, the pooled projection is
/// what it takes as `text_embeds`, and `time_ids` has the family's 6 (base) or 5 (refiner)
/// values.
pub fn check_model(family: Family, model: &SdModel) -> Result<(), SignatureError> {
    let unet = &model.unet;
    let encoders: Vec<&Part> = std::iter::once(&model.text_encoder)
        .chain(model.text_encoder_2.as_ref())
        .collect();
    let mut hidden = Some(0);
    for e in &encoders {
        let name = penultimate_of(e)?;
        hidden = hidden.zip(width(e, &name)).map(|(a, b)| a + b);
    }
    let pooled_by = encoders.last().expect("one encoder at least");
    let time_ids = if family == Family::SdxlRefiner { 5 } else { 6 };
    let expect = [
        (
            ENCODER_HIDDEN_STATES.name,
            hidden,
            "the text encoders' hidden sizes add up to",
        ),
        (
            TEXT_EMBEDS.name,
            width(pooled_by, POOLED_OUTPUT),
            "the text encoder's pooled projection is",
        ),
        (TIME_IDS.name, Some(time_ids), "this family's time ids are"),
    ];
    for (input, want, what) in expect {
        let got = unet
            .signature
            .input(input)
            .and_then(|p| p.dims.last().copied());
        if let (Some(w), Some(g)) = (want, got)
            && g >= 0
            && g != w
        {
            return Err(SignatureError {
                file: unet.file().to_path_buf(),
                field: format!("input '{input}'"),
                problem: format!(
                    "takes {g} values, but {what} {w} ({}): the parts do not belong to the same \
                     pipeline",
                    family.title()
                ),
            });
        }
    }
    Ok(())
}
