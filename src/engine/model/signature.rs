//! The parts of a diffusion model folder ([`Component`]) and how a checked part is fed
//! ([`Feeding`]). What each part's signature must be is its family's ([`super::family`]); the
//! signature types themselves are the ONNX Runtime layer's, re-exported here.

use std::fmt;

pub use crate::runtime::signature::{Elem, Port, Signature, SignatureError};

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
