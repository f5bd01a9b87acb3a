//! The inputs and outputs each Stable Diffusion component must have, and the check of a
//! session's real signature against them.
//!
//! Names follow Hugging Face optimum's exports. Element types and ranks are read from the session
//! rather than assumed, because exports in the wild differ: older diffusers-script exports feed
//! `input_ids` as int32 and `timestep` as a 1-D tensor (int64 in the very first ones), optimum
//! feeds int64 ids and a rank-0 float timestep; float16 exports take float16 tensors throughout.

use std::fmt;
use std::path::Path;

pub use crate::runtime::signature::{Elem, Port, Signature, SignatureError};
use crate::runtime::signature::PortChecker;

/// Which Stable Diffusion component a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    Unet,
    VaeDecoder,
    VaeEncoder,
}

impl Component {
    /// Folder name in an optimum export.
    pub fn dir(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::Unet => "unet",
            Component::VaeDecoder => "vae_decoder",
            Component::VaeEncoder => "vae_encoder",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir())
    }
}

/// What the pipeline learned from a checked signature: how to feed the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feeding {
    /// Element type of the float tensors (float32 or float16 model).
    pub float: Elem,
    /// Element type of `input_ids` (text encoder) or `timestep` (UNet); `float` elsewhere.
    pub aux: Elem,
    /// Rank of `timestep` (0 for optimum, 1 for older exports); 0 elsewhere.
    pub aux_rank: usize,
}

type Checker<'a> = PortChecker<'a>;

/// Inputs the pipeline does not feed make the model unusable.
fn no_extra_inputs(c: &Checker<'_>, known: &[&str]) -> Result<(), SignatureError> {
    if let Some(extra) = c.extra_input(known) {
        return Err(c.err(
            Checker::field(true, &extra.name),
            format!(
                "is not one sdspool feeds (it feeds {}); SDXL and other pipelines with extra conditioning are not supported",
                Checker::quoted(known)
            ),
        ));
    }
    Ok(())
}

/// Checks a component's signature and returns how to feed it.
pub fn check(
    component: Component,
    file: &Path,
    sig: &Signature,
) -> Result<Feeding, SignatureError> {
    let c = Checker {
        file,
        sig,
        hint: "is this an optimum Stable Diffusion export?",
    };
    let mut float = None;
    match component {
        Component::TextEncoder => {
            let ids = c.port(true, "input_ids")?;
            if !matches!(ids.elem, Elem::I64 | Elem::I32) {
                return Err(c.err(
                    "input 'input_ids'".into(),
                    format!("is {}, expected int64 or int32", ids.elem),
                ));
            }
            if ids.rank() != 2 {
                return Err(c.err(
                    "input 'input_ids'".into(),
                    format!(
                        "has rank {} (shape {:?}), expected rank 2 [batch, sequence]",
                        ids.rank(),
                        ids.dims
                    ),
                ));
            }
            c.float(false, "last_hidden_state", 3, "", &mut float)?;
            no_extra_inputs(&c, &["input_ids"])?;
            Ok(Feeding {
                float: float.unwrap_or(Elem::F32),
                aux: ids.elem,
                aux_rank: 2,
            })
        }
        Component::Unet => {
            let sample = c.float(true, "sample", 4, "", &mut float)?;
            c.dim(sample, true, 1, 4, "latent channels")?;
            c.float(true, "encoder_hidden_states", 3, "", &mut float)?;
            let out = c.float(false, "out_sample", 4, "", &mut float)?;
            c.dim(out, false, 1, 4, "latent channels")?;
            let t = c.port(true, "timestep")?;
            if !matches!(t.elem, Elem::F32 | Elem::F16 | Elem::I64 | Elem::I32) {
                return Err(c.err(
                    "input 'timestep'".into(),
                    format!("is {}, expected a float or integer", t.elem),
                ));
            }
            if t.rank() > 1 {
                return Err(c.err(
                    "input 'timestep'".into(),
                    format!(
                        "has rank {} (shape {:?}), expected a scalar or a 1-D [batch] tensor",
                        t.rank(),
                        t.dims
                    ),
                ));
            }
            no_extra_inputs(&c, &["sample", "timestep", "encoder_hidden_states"])?;
            Ok(Feeding {
                float: float.unwrap_or(Elem::F32),
                aux: t.elem,
                aux_rank: t.rank(),
            })
        }
        Component::VaeDecoder => {
            let latent = c.float(true, "latent_sample", 4, "", &mut float)?;
            c.dim(latent, true, 1, 4, "latent channels")?;
            let out = c.float(false, "sample", 4, "", &mut float)?;
            c.dim(out, false, 1, 3, "image channels")?;
            no_extra_inputs(&c, &["latent_sample"])?;
            let f = float.unwrap_or(Elem::F32);
            Ok(Feeding {
                float: f,
                aux: f,
                aux_rank: 0,
            })
        }
        Component::VaeEncoder => {
            let input = c.float(true, "sample", 4, "", &mut float)?;
            c.dim(input, true, 1, 3, "image channels")?;
            // optimum: mean and log-variance concatenated (8 channels); older exports: a sample.
            match (sig.output("latent_parameters"), sig.output("latent_sample")) {
                (Some(_), _) => {
                    let out = c.float(false, "latent_parameters", 4, "", &mut float)?;
                    c.dim(
                        out,
                        false,
                        1,
                        8,
                        "channels (mean and log-variance of 4 latent channels)",
                    )?;
                }
                (None, Some(_)) => {
                    let out = c.float(false, "latent_sample", 4, "", &mut float)?;
                    c.dim(out, false, 1, 4, "latent channels")?;
                }
                (None, None) => {
                    return Err(c.err(
                        "output 'latent_parameters'".into(),
                        format!(
                            "missing (nor 'latent_sample'); the model's outputs are {}",
                            Checker::names(&sig.outputs)
                        ),
                    ));
                }
            }
            no_extra_inputs(&c, &["sample"])?;
            let f = float.unwrap_or(Elem::F32);
            Ok(Feeding {
                float: f,
                aux: f,
                aux_rank: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, elem: Elem, dims: &[i64]) -> Port {
        Port {
            name: name.into(),
            elem,
            dims: dims.to_vec(),
        }
    }

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
