//! The inputs and outputs each Stable Diffusion component must have, and the check of a
//! session's real signature against them.
//!
//! Names follow Hugging Face optimum's exports. Element types and ranks are read from the session
//! rather than assumed, because exports in the wild differ: older diffusers-script exports feed
//! `input_ids` as int32 and `timestep` as a 1-D tensor (int64 in the very first ones), optimum
//! feeds int64 ids and a rank-0 float timestep; float16 exports take float16 tensors throughout.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::value::{TensorElementType, ValueType};

/// Element types sdspool deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    I64,
    I32,
    Other,
}

impl Elem {
    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F16)
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Elem::F32 => "float32",
            Elem::F16 => "float16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
            Elem::Other => "another type",
        })
    }
}

/// One input or output: name, element type and dimensions (-1 where dynamic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    pub elem: Elem,
    pub dims: Vec<i64>,
}

impl Port {
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Reads an `ort` outlet; non-tensors get [`Elem::Other`] and no dims.
    pub fn from_outlet(name: &str, ty: &ValueType) -> Port {
        match ty {
            ValueType::Tensor { ty, shape, .. } => Port {
                name: name.to_string(),
                elem: match ty {
                    TensorElementType::Float32 => Elem::F32,
                    TensorElementType::Float16 => Elem::F16,
                    TensorElementType::Int64 => Elem::I64,
                    TensorElementType::Int32 => Elem::I32,
                    _ => Elem::Other,
                },
                dims: shape.iter().copied().collect(),
            },
            _ => Port {
                name: name.to_string(),
                elem: Elem::Other,
                dims: Vec::new(),
            },
        }
    }
}

/// A session's inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

impl Signature {
    pub fn of(session: &ort::session::Session) -> Signature {
        Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|o| Port::from_outlet(o.name(), o.dtype()))
                .collect(),
            outputs: session
                .outputs()
                .iter()
                .map(|o| Port::from_outlet(o.name(), o.dtype()))
                .collect(),
        }
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }
}

/// A signature that does not fit what the pipeline needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}")]
pub struct SignatureError {
    pub file: PathBuf,
    /// `input 'timestep'`, `output 'out_sample'`, ...
    pub field: String,
    pub problem: String,
}

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

/// Checks of single inputs and outputs, shared by the Stable Diffusion components and the CLIP
/// rerank models. Every error names the file and the field.
pub(crate) struct PortChecker<'a> {
    pub file: &'a Path,
    pub sig: &'a Signature,
    /// Said after the list of names when an input or output is missing.
    pub hint: &'static str,
}

impl PortChecker<'_> {
    pub(crate) fn err(&self, field: String, problem: impl Into<String>) -> SignatureError {
        SignatureError {
            file: self.file.to_path_buf(),
            field,
            problem: problem.into(),
        }
    }

    /// `input 'name'` or `output 'name'`.
    pub(crate) fn field(input: bool, name: &str) -> String {
        format!("{} '{}'", if input { "input" } else { "output" }, name)
    }

    pub(crate) fn names(ports: &[Port]) -> String {
        let names: Vec<String> = ports.iter().map(|p| format!("'{}'", p.name)).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    }

    pub(crate) fn port(&self, input: bool, name: &str) -> Result<&Port, SignatureError> {
        let (ports, kind) = if input {
            (&self.sig.inputs, "input")
        } else {
            (&self.sig.outputs, "output")
        };
        ports.iter().find(|p| p.name == name).ok_or_else(|| {
            self.err(
                format!("{kind} '{name}'"),
                format!(
                    "missing; the model's {kind}s are {} ({})",
                    Self::names(ports),
                    self.hint
                ),
            )
        })
    }

    /// `port` has rank `rank`; `what` describes the axes (may be empty).
    pub(crate) fn rank(
        &self,
        input: bool,
        port: &Port,
        rank: usize,
        what: &str,
    ) -> Result<(), SignatureError> {
        if port.rank() != rank {
            let what = if what.is_empty() {
                String::new()
            } else {
                format!(" {what}")
            };
            return Err(self.err(
                Self::field(input, &port.name),
                format!(
                    "has rank {} (shape {:?}), expected rank {rank}{what}",
                    port.rank(),
                    port.dims
                ),
            ));
        }
        Ok(())
    }

    /// A float tensor of the given rank whose element type matches `float` once known.
    pub(crate) fn float(
        &self,
        input: bool,
        name: &str,
        rank: usize,
        what: &str,
        float: &mut Option<Elem>,
    ) -> Result<&Port, SignatureError> {
        let port = self.port(input, name)?;
        if !port.elem.is_float() {
            return Err(self.err(
                Self::field(input, name),
                format!("is {}, expected float32 or float16", port.elem),
            ));
        }
        self.rank(input, port, rank, what)?;
        match float {
            None => *float = Some(port.elem),
            Some(f) if *f != port.elem => {
                return Err(self.err(
                    Self::field(input, name),
                    format!(
                        "is {} while the model's other float tensors are {f}",
                        port.elem
                    ),
                ));
            }
            Some(_) => {}
        }
        Ok(port)
    }

    /// A fixed size on `axis` must be `expected` (dynamic axes pass).
    pub(crate) fn dim(
        &self,
        port: &Port,
        input: bool,
        axis: usize,
        expected: i64,
        what: &str,
    ) -> Result<(), SignatureError> {
        let d = port.dims[axis];
        if d >= 0 && d != expected {
            return Err(self.err(
                Self::field(input, &port.name),
                format!(
                    "has {d} {what} (shape {:?}), expected {expected}",
                    port.dims
                ),
            ));
        }
        Ok(())
    }

    /// The first input not in `known`.
    pub(crate) fn extra_input(&self, known: &[&str]) -> Option<&Port> {
        self.sig
            .inputs
            .iter()
            .find(|p| !known.contains(&p.name.as_str()))
    }

    /// `'a', 'b'`.
    pub(crate) fn quoted(known: &[&str]) -> String {
        known
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    }
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
