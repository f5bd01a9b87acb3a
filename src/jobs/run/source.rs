//! Where a job's models came from, as its PNGs (`Model hash`, fused LoRAs, the refiner's hash)
//! and its manifest (`model_source`) record it: the folder's provenance file and the checkpoint
//! hash, the configured `checkpoint:` file hashed on first use.

use crate::engine::model::checkpoint_hash::CheckpointHash;
use crate::engine::model::config::ModelConfig;
use crate::engine::model::provenance::Provenance;

use super::manifest::{LoraEntry, ModelSource};

/// What is known of one model's origin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelIdentity {
    /// The checkpoint's hashes, when known.
    pub hash: Option<CheckpointHash>,
    /// The folder's `sdspool-source.json`.
    pub provenance: Option<Provenance>,
    /// The checkpoint's file name (the provenance's, else the configured `checkpoint:`'s).
    pub checkpoint_file: Option<String>,
}

impl ModelIdentity {
    /// `config`'s identity with the provenance its folder was loaded with. A configured
    /// checkpoint that cannot be hashed (moved away since startup) is logged and left out: the
    /// images are still written, without the hash.
    pub fn of(model: &str, config: &ModelConfig, provenance: Option<&Provenance>) -> ModelIdentity {
        let hash = match config.checkpoint_hash(provenance) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(model, error = %e, "model hash left out of the images");
                None
            }
        };
        let checkpoint_file = match (provenance, &config.checkpoint) {
            (_, Some(file)) => file.file_name().map(|f| f.to_string_lossy().into_owned()),
            (Some(p), None) => Some(p.checkpoint.file.clone()),
            (None, None) => None,
        };
        ModelIdentity {
            hash,
            provenance: provenance.cloned(),
            checkpoint_file,
        }
    }

    /// AUTOMATIC1111's 10-digit `Model hash`, when known.
    pub fn short_hash(&self) -> Option<&str> {
        self.hash.as_ref().map(CheckpointHash::short)
    }

    /// The manifest's `model_source`, `None` when nothing is known.
    pub fn manifest_entry(&self) -> Option<ModelSource> {
        if self.hash.is_none() && self.provenance.is_none() {
            return None;
        }
        Some(ModelSource {
            checkpoint: self.checkpoint_file.clone(),
            model_hash: self.short_hash().map(str::to_string),
            loras: self
                .provenance
                .iter()
                .flat_map(|p| &p.loras)
                .map(|l| LoraEntry {
                    name: l.name.clone(),
                    weight: l.weight,
                })
                .collect(),
        })
    }
}

/// The identities of a job's model and of its refiner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSource {
    pub model: ModelIdentity,
    pub refiner: ModelIdentity,
}
