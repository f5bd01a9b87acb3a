//! The latent channel count of a loaded model, from the model itself rather than assumed: the
//! fixed channel axes of the UNet's and the VAE's latent tensors, which must all agree, or,
//! where every axis is dynamic, unet/config.json's `out_channels` or the VAE config's
//! `latent_channels`.

use std::path::Path;

use super::Part;
use super::family::Graph;
use super::layout::ModelFolder;
use super::signature::{Port, SignatureError};

/// One latent tensor whose channel axis states the count: `per_latent` channels per latent
/// channel (2 for the VAE encoder's mean and log-variance).
struct Stated<'a> {
    file: &'a Path,
    field: String,
    port: &'a Port,
    per_latent: i64,
}

impl<'a> Stated<'a> {
    /// `part`'s input or output `name`, when it has one.
    fn of(part: &'a Part, input: bool, name: &str, per_latent: i64) -> Option<Stated<'a>> {
        let sig = &part.signature;
        let port = if input {
            sig.input(name)
        } else {
            sig.output(name)
        }?;
        let kind = if input { "input" } else { "output" };
        Some(Stated {
            file: part.file(),
            field: format!("{kind} '{name}'"),
            port,
            per_latent,
        })
    }

    /// The latent channels this tensor states, when its channel axis is fixed.
    fn channels(&self) -> Option<i64> {
        let d = *self.port.dims.get(1)?;
        (d >= 0).then_some(d / self.per_latent)
    }
}

/// The latent channels the UNet denoises and the VAE decodes. A part whose fixed channel axis
/// disagrees with the first part that states the count is named with the field.
pub(super) fn latent_channels(
    folder: &ModelFolder,
    graph: &Graph,
    unet: &Part,
    vae_decoder: &Part,
    vae_encoder: Option<&Part>,
) -> Result<usize, SignatureError> {
    let mut stated = Vec::new();
    stated.extend(Stated::of(unet, false, graph.unet.out_sample, 1));
    stated.extend(Stated::of(unet, true, graph.unet.sample, 1));
    stated.extend(Stated::of(
        vae_decoder,
        true,
        graph.vae_decoder.latent_sample,
        1,
    ));
    if let Some(encoder) = vae_encoder {
        let g = &graph.vae_encoder;
        stated.extend(Stated::of(encoder, false, g.latent_parameters, 2));
        stated.extend(Stated::of(encoder, false, g.latent_sample, 1));
    }
    let Some(reference) = stated.iter().find(|s| s.channels().is_some()) else {
        return from_configs(folder, unet, graph);
    };
    let channels = reference.channels().expect("found by its channels");
    for s in &stated {
        let Some(d) = s.port.dims.get(1).copied().filter(|d| *d >= 0) else {
            continue;
        };
        if d != channels * s.per_latent {
            let what = if s.per_latent == 2 {
                format!(
                    "expected {} (mean and log-variance of {channels} latent channels)",
                    2 * channels
                )
            } else {
                format!("expected {channels}")
            };
            return Err(SignatureError {
                file: s.file.to_path_buf(),
                field: s.field.clone(),
                problem: format!(
                    "has {d} channels (shape {:?}), {what} as {} {} has: the parts do not \
                     belong to the same pipeline",
                    s.port.dims,
                    reference.file.display(),
                    reference.field
                ),
            });
        }
    }
    Ok(channels as usize)
}

/// Every channel axis is dynamic: the configs say.
fn from_configs(folder: &ModelFolder, unet: &Part, graph: &Graph) -> Result<usize, SignatureError> {
    folder
        .unet_out_channels
        .or(folder.vae_latent_channels)
        .ok_or_else(|| SignatureError {
            file: unet.file().to_path_buf(),
            field: format!("input '{}'", graph.unet.sample),
            problem: "has a dynamic channel axis, like every latent tensor of the model, and \
                      neither unet/config.json (`out_channels`) nor the VAE config \
                      (`latent_channels`) states the latent channel count"
                .into(),
        })
}
