//! One entry under `models:` in config.yaml, and what a model's name may be.

use std::path::PathBuf;

use serde::Deserialize;

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
}

/// Model names end up in log lines, manifests and file names: keep them plain.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.')
}
