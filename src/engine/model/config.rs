//! One entry under `models:` in config.yaml, and what a model's name may be.

use std::path::PathBuf;

use serde::Deserialize;

use super::checkpoint_hash::{self, CheckpointHash, HashError};
use super::provenance::{Provenance, ProvenanceError};

/// One entry under `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Folder in the layout optimum writes for Stable Diffusion exports.
    pub path: PathBuf,
    /// A replacement VAE decoder: a folder with `vae_decoder/model.onnx` and its config.json
    /// (e.g. a float32 export of the same VAE, or madebyollin's sdxl-vae-fp16-fix). A float16
    /// SDXL folder whose VAE has `force_upcast` needs one.
    #[serde(default)]
    pub vae: Option<PathBuf>,
    /// The single-file checkpoint (`.safetensors`, `.ckpt`) the folder was made from, when the
    /// folder has no `sdspool-source.json` saying so: hashed (once per process, when an
    /// infotext's `Model hash` or a PNG needs it) as AUTOMATIC1111 hashes it, in both its forms.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
}

impl ModelConfig {
    /// The folder's provenance file, when it has one (see [`Provenance::read`]).
    pub fn provenance(&self) -> Result<Option<Provenance>, ProvenanceError> {
        Provenance::read(&self.path, None)
    }

    /// The model's checkpoint hashes: the `checkpoint:` file's (hashed once per process), else
    /// those `provenance` records; `None` when neither says.
    pub fn checkpoint_hash(
        &self,
        provenance: Option<&Provenance>,
    ) -> Result<Option<CheckpointHash>, HashError> {
        match (&self.checkpoint, provenance) {
            (Some(file), p) => {
                let hash = checkpoint_hash::hash_cached(file)?;
                if let Some(p) = p
                    && p.checkpoint.sha256 != hash.sha256
                {
                    tracing::warn!(checkpoint = %file.display(), provenance = %self.path.join(super::provenance::FILE).display(), "the configured checkpoint is not the file the folder's provenance names; using the configured one's hash");
                }
                Ok(Some(hash))
            }
            (None, Some(p)) => Ok(Some(CheckpointHash::of_provenance(p))),
            (None, None) => Ok(None),
        }
    }
}

/// Model names end up in log lines, manifests and file names: keep them plain.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(crate::sys::names::is_plain)
        && !name.starts_with('.')
}
