//! A session's inputs and outputs ([`Signature`]), their element types ([`Elem`]), and the
//! checks of single ports every model layer builds its own signature rules from (`PortChecker`,
//! crate-internal). Element types and ranks are read from the session rather than assumed.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::value::{TensorElementType, ValueType};

/// Element types sdspool deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A port from its parts, for tests that write signatures by hand.
#[cfg(test)]
pub(crate) fn port(name: &str, elem: Elem, dims: &[i64]) -> Port {
    Port {
        name: name.into(),
        elem,
        dims: dims.to_vec(),
    }
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

/// Checks of single inputs and outputs, shared by the diffusion model families and the CLIP
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
