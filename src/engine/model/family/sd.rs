//! The Stable Diffusion 1.x/2.x family (diffusers' `StableDiffusionPipeline`): one CLIP text
//! encoder, whose `last_hidden_state` is the UNet's `encoder_hidden_states`, the UNet's only
//! conditioning. The graph names are optimum's.

use std::path::Path;

use super::parts;
use super::{CondInputSpec, Family, Graph, TextEncoderGraph, UnetGraph, VAE_DECODER, VAE_ENCODER};
use crate::engine::model::SdModel;
use crate::engine::model::signature::{Component, Feeding, Signature, SignatureError};

/// The `_class_name`s of model_index.json that hold this family: diffusers' pipeline and its
/// image-to-image and older ONNX variants (the same parts).
pub const PIPELINE_CLASSES: &[&str] = &[
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "OnnxStableDiffusionPipeline",
    "OnnxStableDiffusionImg2ImgPipeline",
];

/// The UNet's conditioning: the text encoder's last hidden state, `[batch, sequence, hidden]`.
pub const ENCODER_HIDDEN_STATES: CondInputSpec = CondInputSpec {
    name: "encoder_hidden_states",
    rank: 3,
};

/// The graph names of SD 1.x/2.x.
pub const GRAPH: Graph = Graph {
    text_encoder: TextEncoderGraph {
        input_ids: "input_ids",
        hidden_state: "last_hidden_state",
    },
    unet: UnetGraph {
        sample: "sample",
        timestep: "timestep",
        conditioning: &[ENCODER_HIDDEN_STATES],
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
    parts::check_graph(&GRAPH, Family::Sd, component, file, sig)
}

/// The text encoder's hidden size must be what the UNet's cross-attention takes.
pub fn check_model(model: &SdModel) -> Result<(), SignatureError> {
    let (text_encoder, unet) = (&model.text_encoder, &model.unet);
    let hidden = text_encoder
        .signature
        .output(GRAPH.text_encoder.hidden_state)
        .and_then(|p| p.dims.last().copied());
    let cross = unet
        .signature
        .input(ENCODER_HIDDEN_STATES.name)
        .and_then(|p| p.dims.last().copied());
    if let (Some(h), Some(c)) = (hidden, cross)
        && h >= 0
        && c >= 0
        && h != c
    {
        return Err(SignatureError {
            file: unet.file().to_path_buf(),
            field: format!("input '{}'", ENCODER_HIDDEN_STATES.name),
            problem: format!(
                "takes hidden size {c}, but the text encoder {} produces {h}: the two do not belong to the same pipeline",
                text_encoder.file().display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::signature::{Elem, Port};
    use crate::runtime::signature::port;

    fn unet(timestep: Port) -> Signature {
        Signature {
            inputs: vec![
                port("sample", Elem::F32, &[-1, 4, -1, -1]),
                timestep,
                port("encoder_hidden_states", Elem::F32, &[-1, -1, 768]),
            ],
            outputs: vec![port("out_sample", Elem::F32, &[-1, 4, -1, -1])],
        }
    }

    #[test]
    fn optimum_unet_is_accepted_with_scalar_float_timestep() {
        let f = check(
            Component::Unet,
            Path::new("u.onnx"),
            &unet(port("timestep", Elem::F32, &[])),
        )
        .unwrap();
        assert_eq!(
            f,
            Feeding {
                float: Elem::F32,
                aux: Elem::F32,
                aux_rank: 0
            }
        );
    }

    #[test]
    fn old_export_unet_with_1d_int64_timestep_is_accepted() {
        let f = check(
            Component::Unet,
            Path::new("u.onnx"),
            &unet(port("timestep", Elem::I64, &[-1])),
        )
        .unwrap();
        assert_eq!((f.aux, f.aux_rank), (Elem::I64, 1));
    }

    #[test]
    fn renamed_input_names_file_and_field() {
        let mut sig = unet(port("timestep", Elem::F32, &[]));
        sig.inputs[0].name = "latents".into();
        let e = check(Component::Unet, Path::new("m/unet/model.onnx"), &sig).unwrap_err();
        assert_eq!(e.file, Path::new("m/unet/model.onnx"));
        assert_eq!(e.field, "input 'sample'");
        let text = e.to_string();
        assert!(
            text.contains("m/unet/model.onnx") && text.contains("'latents'"),
            "{text}"
        );
    }

    #[test]
    fn wrong_rank_is_reported() {
        let mut sig = unet(port("timestep", Elem::F32, &[]));
        sig.inputs[0].dims = vec![-1, 4, -1];
        let e = check(Component::Unet, Path::new("u.onnx"), &sig).unwrap_err();
        assert_eq!(e.field, "input 'sample'");
        assert!(
            e.problem.contains("rank 3") && e.problem.contains("expected rank 4"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn mixed_float_types_are_rejected() {
        let mut sig = unet(port("timestep", Elem::F32, &[]));
        sig.outputs[0].elem = Elem::F16;
        let e = check(Component::Unet, Path::new("u.onnx"), &sig).unwrap_err();
        assert_eq!(e.field, "output 'out_sample'");
    }

    #[test]
    fn fixed_wrong_channel_count_is_rejected() {
        let mut sig = unet(port("timestep", Elem::F32, &[]));
        sig.inputs[0].dims = vec![-1, 9, -1, -1];
        let e = check(Component::Unet, Path::new("u.onnx"), &sig).unwrap_err();
        assert!(e.problem.contains("9 latent channels"), "{}", e.problem);
    }

    #[test]
    fn text_encoder_needs_integer_ids() {
        let sig = Signature {
            inputs: vec![port("input_ids", Elem::F32, &[-1, 77])],
            outputs: vec![port("last_hidden_state", Elem::F32, &[-1, 77, 768])],
        };
        let e = check(Component::TextEncoder, Path::new("t.onnx"), &sig).unwrap_err();
        assert!(e.problem.contains("int64 or int32"));
    }

    #[test]
    fn vae_encoder_accepts_both_output_conventions() {
        let optimum = Signature {
            inputs: vec![port("sample", Elem::F16, &[-1, 3, -1, -1])],
            outputs: vec![port("latent_parameters", Elem::F16, &[-1, 8, -1, -1])],
        };
        assert_eq!(
            check(Component::VaeEncoder, Path::new("e"), &optimum)
                .unwrap()
                .float,
            Elem::F16
        );
        let old = Signature {
            inputs: vec![port("sample", Elem::F32, &[-1, 3, -1, -1])],
            outputs: vec![port("latent_sample", Elem::F32, &[-1, 4, -1, -1])],
        };
        assert!(check(Component::VaeEncoder, Path::new("e"), &old).is_ok());
    }

    #[test]
    fn sdxl_style_extra_input_is_rejected() {
        let mut sig = unet(port("timestep", Elem::F32, &[]));
        sig.inputs.push(port("text_embeds", Elem::F32, &[-1, 1280]));
        let e = check(Component::Unet, Path::new("u.onnx"), &sig).unwrap_err();
        assert_eq!(e.field, "input 'text_embeds'");
    }
}
