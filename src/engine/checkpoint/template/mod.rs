//! Import templates (format 1): a model folder as `onnx/import_checkpoint.py` writes it for one
//! architecture, every initializer in one external data file per part, plus `template.json`
//! saying which checkpoint tensor each initializer is made of. Importing a checkpoint through a
//! template copies the folder and writes each part's data file anew with the checkpoint's tensors
//! at the same offsets; the graphs are copied unchanged, no protobuf is written and no Python runs.
//!
//! [`format`] reads and checks `template.json`, [`fit`] says whether (or why not) a checkpoint fits
//! a template, [`fill`] copies the folder and writes the data files, tensor by tensor; [`vae`]
//! reads a replacement VAE's keys.

pub mod fill;
pub mod fit;
pub mod format;
pub mod vae;

use std::path::PathBuf;

pub use fill::{Deltas, FillStats};
pub use fit::Misfit;
pub use format::{TEMPLATE_FILE, Template};
pub use vae::{Replacement, VaeLayout};

use super::CheckpointError;

/// Why a template cannot be read or filled; each names the file, and the field or the tensor.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: `{field}` {problem}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{}: {detail}", path.display())]
    Data { path: PathBuf, detail: String },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: initializer {tensor} from {key}: {source}", data.display())]
    Checkpoint {
        data: PathBuf,
        tensor: String,
        key: String,
        #[source]
        source: Box<CheckpointError>,
    },
    #[error("{}: initializer {tensor} from {key}: {problem}", data.display())]
    Tensor {
        data: PathBuf,
        tensor: String,
        key: String,
        problem: String,
    },
    #[error("LoRA deltas for {count} modules match no initializer of the template {} (first: {})", template.display(), first.join(", "))]
    UnusedDeltas {
        template: PathBuf,
        count: usize,
        first: Vec<String>,
    },
}

#[cfg(test)]
mod tests;
