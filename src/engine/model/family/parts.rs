//! The check of each part's signature against a family's graph names, shared by the families.
//!
//! Element types and ranks are read from the session rather than assumed, because exports in
//! the wild differ: older diffusers-script exports feed `input_ids` as int32 and `timestep` as a
//! 1-D tensor (int64 in the very first ones), optimum feeds int64 ids and a rank-0 float
//! timestep; float16 exports take float16 tensors throughout. Latent channel counts are not
//! fixed here: the UNet's input and output must agree, and the model as a whole must agree with
//! its VAE (`crate::engine::model::latent_channels`).

use std::path::Path;

use super::{Family, Graph, TextEncoderGraph, UnetGraph, VaeDecoderGraph, VaeEncoderGraph};
use crate::engine::model::signature::Component;
use crate::engine::model::signature::{Elem, Feeding, Signature, SignatureError};
use crate::runtime::signature::PortChecker;

pub(super) type Checker<'a> = PortChecker<'a>;

/// A checker for one part's file and signature.
pub(super) fn checker<'a>(file: &'a Path, sig: &'a Signature) -> Checker<'a> {
    Checker {
        file,
        sig,
        hint: "is this an optimum Stable Diffusion export?",
    }
}

/// Inputs the family does not feed make the part unusable.
fn no_extra_inputs(c: &Checker<'_>, known: &[&str], family: Family) -> Result<(), SignatureError> {
    if let Some(extra) = c.extra_input(known) {
        return Err(c.err(
            Checker::field(true, &extra.name),
            format!(
                "is not an input the {} family ({}) feeds; it feeds {}. The part belongs to \
                 another kind of pipeline (SDXL, LCM, inpainting, ...) than model_index.json names",
                family.name(),
                family.title(),
                Checker::quoted(known)
            ),
        ));
    }
    Ok(())
}

/// A float part's feeding: its float type throughout.
fn float_feeding(float: Option<Elem>) -> Feeding {
    let f = float.unwrap_or(Elem::F32);
    Feeding {
        float: f,
        aux: f,
        aux_rank: 0,
    }
}

/// Integer ids `[batch, sequence]` in, a float hidden state `[batch, sequence, hidden]` out.
pub(super) fn text_encoder(
    c: &Checker<'_>,
    g: &TextEncoderGraph,
    family: Family,
) -> Result<Feeding, SignatureError> {
    let mut float = None;
    let ids = c.port(true, g.input_ids)?;
    if !matches!(ids.elem, Elem::I64 | Elem::I32) {
        return Err(c.err(
            Checker::field(true, g.input_ids),
            format!("is {}, expected int64 or int32", ids.elem),
        ));
    }
    if ids.rank() != 2 {
        return Err(c.err(
            Checker::field(true, g.input_ids),
            format!(
                "has rank {} (shape {:?}), expected rank 2 [batch, sequence]",
                ids.rank(),
                ids.dims
            ),
        ));
    }
    c.float(false, g.hidden_state, 3, "", &mut float)?;
    no_extra_inputs(c, &[g.input_ids], family)?;
    Ok(Feeding {
        float: float.unwrap_or(Elem::F32),
        aux: ids.elem,
        aux_rank: 2,
    })
}

/// Latents, timestep and the family's conditioning in, the noise prediction out; the latents'
/// channels in and out agree; no input the family does not feed.
pub(super) fn unet(
    c: &Checker<'_>,
    g: &UnetGraph,
    family: Family,
) -> Result<Feeding, SignatureError> {
    let mut float = None;
    let sample = c.float(true, g.sample, 4, "", &mut float)?;
    for spec in g.conditioning {
        c.float(true, spec.name, spec.rank, "", &mut float)?;
    }
    let out = c.float(false, g.out_sample, 4, "", &mut float)?;
    if out.dims[1] >= 0 {
        c.dim(sample, true, 1, out.dims[1], "latent channels")?;
    }
    let t = c.port(true, g.timestep)?;
    if !matches!(t.elem, Elem::F32 | Elem::F16 | Elem::I64 | Elem::I32) {
        return Err(c.err(
            Checker::field(true, g.timestep),
            format!("is {}, expected a float or integer", t.elem),
        ));
    }
    if t.rank() > 1 {
        return Err(c.err(
            Checker::field(true, g.timestep),
            format!(
                "has rank {} (shape {:?}), expected a scalar or a 1-D [batch] tensor",
                t.rank(),
                t.dims
            ),
        ));
    }
    no_extra_inputs(c, &g.inputs(), family)?;
    Ok(Feeding {
        float: float.unwrap_or(Elem::F32),
        aux: t.elem,
        aux_rank: t.rank(),
    })
}

/// Latents in, a 3-channel image out.
pub(super) fn vae_decoder(
    c: &Checker<'_>,
    g: &VaeDecoderGraph,
    family: Family,
) -> Result<Feeding, SignatureError> {
    let mut float = None;
    c.float(true, g.latent_sample, 4, "", &mut float)?;
    let out = c.float(false, g.sample, 4, "", &mut float)?;
    c.dim(out, false, 1, 3, "image channels")?;
    no_extra_inputs(c, &[g.latent_sample], family)?;
    Ok(float_feeding(float))
}

/// A 3-channel image in; the latent distribution (optimum) or a sampled latent (older exports)
/// out.
pub(super) fn vae_encoder(
    c: &Checker<'_>,
    g: &VaeEncoderGraph,
    family: Family,
) -> Result<Feeding, SignatureError> {
    let mut float = None;
    let input = c.float(true, g.sample, 4, "", &mut float)?;
    c.dim(input, true, 1, 3, "image channels")?;
    let sig = c.sig;
    match (sig.output(g.latent_parameters), sig.output(g.latent_sample)) {
        (Some(_), _) => {
            c.float(false, g.latent_parameters, 4, "", &mut float)?;
        }
        (None, Some(_)) => {
            c.float(false, g.latent_sample, 4, "", &mut float)?;
        }
        (None, None) => {
            return Err(c.err(
                Checker::field(false, g.latent_parameters),
                format!(
                    "missing (nor '{}'); the model's outputs are {}",
                    g.latent_sample,
                    Checker::names(&sig.outputs)
                ),
            ));
        }
    }
    no_extra_inputs(c, &[g.sample], family)?;
    Ok(float_feeding(float))
}

/// Checks one part of a family whose parts need nothing beyond their graph's names (SD 1.x/2.x,
/// LCM); how to feed it.
pub fn check_graph(
    graph: &Graph,
    family: Family,
    component: Component,
    file: &Path,
    sig: &Signature,
) -> Result<Feeding, SignatureError> {
    let c = checker(file, sig);
    match component {
        Component::TextEncoder | Component::TextEncoder2 => {
            text_encoder(&c, &graph.text_encoder, family)
        }
        Component::Unet => unet(&c, &graph.unet, family),
        Component::VaeDecoder => vae_decoder(&c, &graph.vae_decoder, family),
        Component::VaeEncoder => vae_encoder(&c, &graph.vae_encoder, family),
    }
}
