//! Model families: which kind of pipeline a model folder holds, and the graph contract of each.
//!
//! A family is what diffusers calls a pipeline class: the parts a folder has, the names of their
//! graph inputs and outputs as optimum exports them ([`Graph`], written once per family), and
//! the conditioning inputs the UNet takes besides the latents and the timestep
//! ([`UnetGraph::conditioning`]), which the family's prompt encoding supplies
//! (the pipeline's `FamilyPipeline::encode_prompt`).
//!
//! The family is read from the folder: `model_index.json`'s `_class_name`
//! ([`Family::from_pipeline_class`]). It is then checked against the sessions
//! ([`Family::check`]): a UNet input the family does not supply refuses the folder, naming the
//! part and the input.
//!
//! | family | pipeline classes | parts | UNet conditioning |
//! |--------|------------------|-------|-------------------|
//! | [`Family::Sd`] | `StableDiffusionPipeline` and its ONNX and image-to-image variants ([`sd::PIPELINE_CLASSES`]) | text_encoder, unet, vae_decoder (+ vae_encoder) | `encoder_hidden_states` |
//!
//! Adding a family: a variant here with its module (pipeline classes, [`Graph`], part checks,
//! the check of the loaded parts together), and its prompt encoding in the pipeline module. The
//! denoising loop feeds whatever named inputs the conditioning carries, so it does not change.

mod parts;
pub mod sd;

use std::fmt;
use std::path::Path;

use super::SdModel;
use super::signature::{Component, Feeding, SignatureError};
use crate::runtime::signature::Signature;

/// A family of diffusion pipelines sharing one graph contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Stable Diffusion 1.x and 2.x (diffusers' `StableDiffusionPipeline`): one CLIP text
    /// encoder whose last hidden state is the UNet's only conditioning.
    Sd,
}

impl Family {
    /// Every family sdspool renders.
    pub const ALL: [Family; 1] = [Family::Sd];

    /// Short name, as `sdspool models` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd => "sd",
        }
    }

    /// What the family covers, for people.
    pub fn title(self) -> &'static str {
        match self {
            Family::Sd => "Stable Diffusion 1.x/2.x",
        }
    }

    /// The `_class_name`s of model_index.json that hold this family.
    pub fn pipeline_classes(self) -> &'static [&'static str] {
        match self {
            Family::Sd => sd::PIPELINE_CLASSES,
        }
    }

    /// The family a model_index.json `_class_name` names, if sdspool renders it.
    pub fn from_pipeline_class(class: &str) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.pipeline_classes().contains(&class))
    }

    /// The supported pipeline classes, for messages: `StableDiffusionPipeline, ... (sd)`.
    pub fn supported_classes() -> String {
        Family::ALL
            .iter()
            .map(|f| format!("{} ({})", f.pipeline_classes().join(", "), f.name()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The names of the family's graph inputs and outputs.
    pub fn graph(self) -> &'static Graph {
        match self {
            Family::Sd => &sd::GRAPH,
        }
    }

    /// Checks one part's signature against the family's graph; how to feed the part.
    pub fn check(
        self,
        component: Component,
        file: &Path,
        sig: &Signature,
    ) -> Result<Feeding, SignatureError> {
        match self {
            Family::Sd => sd::check(component, file, sig),
        }
    }

    /// Checks that the loaded parts belong together (e.g. the text encoder's width is what the
    /// UNet cross-attends to).
    pub fn check_model(self, model: &SdModel) -> Result<(), SignatureError> {
        match self {
            Family::Sd => sd::check_model(model),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The names of a family's graph inputs and outputs, as optimum exports them.
#[derive(Debug)]
pub struct Graph {
    pub text_encoder: TextEncoderGraph,
    pub unet: UnetGraph,
    pub vae_decoder: VaeDecoderGraph,
    pub vae_encoder: VaeEncoderGraph,
}

/// A CLIP text encoder: token ids in, the hidden state the UNet is conditioned on out.
#[derive(Debug)]
pub struct TextEncoderGraph {
    /// int64 or int32 `[batch, sequence]`.
    pub input_ids: &'static str,
    /// float `[batch, sequence, hidden]`.
    pub hidden_state: &'static str,
}

/// The UNet: noisy latents, timestep and conditioning in, the noise prediction out.
#[derive(Debug)]
pub struct UnetGraph {
    /// float `[batch, latent channels, h, w]`.
    pub sample: &'static str,
    /// A scalar or `[batch]`, float or integer.
    pub timestep: &'static str,
    /// The inputs the family's prompt encoding supplies, batch first, float.
    pub conditioning: &'static [CondInputSpec],
    /// float `[batch, latent channels, h, w]`.
    pub out_sample: &'static str,
}

impl UnetGraph {
    /// Every input the family feeds, in feeding order.
    pub fn inputs(&self) -> Vec<&'static str> {
        [self.sample, self.timestep]
            .into_iter()
            .chain(self.conditioning.iter().map(|c| c.name))
            .collect()
    }
}

/// One conditioning input of the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CondInputSpec {
    pub name: &'static str,
    /// Its rank, batch axis included.
    pub rank: usize,
}

/// The VAE decoder: latents in, image out.
#[derive(Debug)]
pub struct VaeDecoderGraph {
    /// float `[batch, latent channels, h, w]`.
    pub latent_sample: &'static str,
    /// float `[batch, 3, H, W]` in [-1, 1].
    pub sample: &'static str,
}

/// The VAE encoder (image-to-image only): image in, latent distribution out.
#[derive(Debug)]
pub struct VaeEncoderGraph {
    /// float `[batch, 3, H, W]`.
    pub sample: &'static str,
    /// optimum: mean and log-variance concatenated, `[batch, 2 × latent channels, h, w]`.
    pub latent_parameters: &'static str,
    /// Older exports: a sampled latent, `[batch, latent channels, h, w]`.
    pub latent_sample: &'static str,
}

/// The VAE decoder as optimum exports it (the same for every family).
pub const VAE_DECODER: VaeDecoderGraph = VaeDecoderGraph {
    latent_sample: "latent_sample",
    sample: "sample",
};

/// The VAE encoder as optimum exports it (and older exports, with `latent_sample`).
pub const VAE_ENCODER: VaeEncoderGraph = VaeEncoderGraph {
    sample: "sample",
    latent_parameters: "latent_parameters",
    latent_sample: "latent_sample",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_classes_name_their_family() {
        for class in [
            "StableDiffusionPipeline",
            "OnnxStableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
        ] {
            assert_eq!(
                Family::from_pipeline_class(class),
                Some(Family::Sd),
                "{class}"
            );
        }
        for class in [
            "StableDiffusionXLPipeline",
            "stablediffusionpipeline",
            "StableDiffusionInpaintPipeline",
            "",
        ] {
            assert_eq!(Family::from_pipeline_class(class), None, "{class}");
        }
        assert!(Family::supported_classes().contains("StableDiffusionPipeline"));
    }

    #[test]
    fn sd_unet_feeds_sample_timestep_and_hidden_states() {
        assert_eq!(
            Family::Sd.graph().unet.inputs(),
            ["sample", "timestep", "encoder_hidden_states"]
        );
    }
}
