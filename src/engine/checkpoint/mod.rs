//! Single-file checkpoints and LoRA files as AUTOMATIC1111, ComfyUI and the model sites publish
//! them, read from their `.safetensors` headers alone (no tensor data, no Python): the header
//! check ([`header`]), the family from the key names and shapes ([`family`]), and whether a LoRA
//! fits a checkpoint ([`lora`]). `sdspool import` runs these checks before it starts the Python
//! conversion (`onnx/import_checkpoint.py`, which applies the same rules), or puts the checkpoint's
//! tensors into an import template from Rust ([`template`]). [`lora_fuse`] computes the weight
//! changes LoRA files make, as diffusers' `fuse_lora` adds them.

pub mod family;
pub mod header;
pub mod lora;
mod lora_alpha;
pub mod lora_fuse;
pub mod names;
pub mod prediction;
pub mod template;
pub mod tensors;
pub mod weights_map;

use std::path::PathBuf;

pub use family::Family;
pub use header::Header;

/// Why a checkpoint or LoRA file cannot be imported; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: truncated: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: not a safetensors file: {detail}", path.display())]
    NotSafetensors { path: PathBuf, detail: String },
    #[error("{}: unknown architecture: {reason} (first keys: {})", path.display(), keys.join(", "))]
    UnknownArchitecture {
        path: PathBuf,
        reason: String,
        keys: Vec<String>,
    },
    #[error("{}: LoRA does not fit the {family} checkpoint: {reason} (first keys: {})", path.display(), keys.join(", "))]
    LoraMismatch {
        path: PathBuf,
        family: Family,
        reason: String,
        keys: Vec<String>,
    },
    #[error("{}: LoRA tensor {key}: {reason}", path.display())]
    LoraTensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
}
