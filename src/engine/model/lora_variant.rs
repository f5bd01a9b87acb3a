//! A model with LoRAs applied when its sessions are created, without a new import: the folder's
//! `sdspool-weights.json` ([`WeightsMap`]) says where each weight a LoRA can change is in the
//! parts' data files; the deltas are what diffusers' `fuse_lora` adds ([`lora_fuse::deltas`]),
//! added to those weights and handed to ONNX Runtime in place of the file's
//! ([`crate::runtime::Runtime::session_overriding`]). The other initializers come from the
//! files as for the model without LoRAs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::checkpoint_hash;
use super::provenance::LoraSource;
use crate::engine::checkpoint::weights_map::{WeightsMap, WeightsMapError};
use crate::engine::checkpoint::{CheckpointError, lora_fuse};

/// One LoRA to apply: AUTOMATIC1111's name for it, its file, its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub name: String,
    pub file: PathBuf,
    pub weight: f64,
}

/// Why a model's LoRAs cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LoraVariantError {
    #[error("{}: no sdspool-weights.json: LoRAs are applied per job only to models imported through a template", folder.display())]
    NoMap { folder: PathBuf },
    #[error(transparent)]
    Map(#[from] WeightsMapError),
    #[error(transparent)]
    Lora(#[from] CheckpointError),
    #[error("{}: LoRA deltas for {} modules match no weight of the model (first: {})", map.display(), modules.len(), modules.iter().take(4).cloned().collect::<Vec<_>>().join(", "))]
    Untargeted { map: PathBuf, modules: Vec<String> },
    #[error("{}: cannot hash: {source}", path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initializer {name}: {source}")]
    Tensor {
        name: String,
        #[source]
        source: ort::Error,
    },
}

/// The initializers that replace the files' in one part's session.
pub type Initializers = Vec<(String, Arc<ort::value::DynValue>)>;

/// A model's LoRAs, ready for its sessions.
pub struct LoraVariant {
    /// Part folder (`unet`, `text_encoder`, `text_encoder_2`) -> its replaced initializers.
    pub parts: BTreeMap<String, Initializers>,
    /// The LoRAs as provenance records them (hashes included), in order.
    pub sources: Vec<LoraSource>,
    /// Bytes of the replaced initializers (held in memory beside the sessions).
    pub bytes: u64,
    /// A short name of this set for caches keyed by model (TensorRT engines).
    pub id: String,
}

impl std::fmt::Debug for LoraVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraVariant")
            .field("sources", &self.sources)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl LoraVariant {
    /// The LoRAs `loras` on the model folder `folder`: deltas computed, added to the weights the
    /// folder's map names, every delta finding its weight.
    pub fn prepare(folder: &Path, loras: &[LoraFile]) -> Result<LoraVariant, LoraVariantError> {
        let map = WeightsMap::read(folder)?.ok_or_else(|| LoraVariantError::NoMap {
            folder: folder.to_path_buf(),
        })?;
        let files: Vec<(PathBuf, f32)> = loras
            .iter()
            .map(|l| (l.file.clone(), l.weight as f32))
            .collect();
        let deltas = lora_fuse::deltas(&files, &map.header(folder), map.family())?;
        let untargeted = map.untargeted(&deltas);
        if !untargeted.is_empty() {
            return Err(LoraVariantError::Untargeted {
                map: folder.join(crate::engine::checkpoint::weights_map::FILE),
                modules: untargeted
                    .iter()
                    .map(|(c, m)| format!("{c:?} {m}"))
                    .collect(),
            });
        }
        let mut parts = BTreeMap::new();
        let mut bytes = 0;
        for part in map.parts.keys() {
            let mut values = Initializers::new();
            for o in map.overrides(folder, part, &deltas)? {
                bytes += o.values.len() as u64 * 4;
                let tensor =
                    ort::value::Tensor::from_array((o.shape, o.values)).map_err(|source| {
                        LoraVariantError::Tensor {
                            name: o.name.clone(),
                            source,
                        }
                    })?;
                values.push((o.name, Arc::new(tensor.into_dyn())));
            }
            if !values.is_empty() {
                parts.insert(part.clone(), values);
            }
        }
        let sources = loras.iter().map(source_of).collect::<Result<Vec<_>, _>>()?;
        let id = set_id(&sources);
        Ok(LoraVariant {
            parts,
            sources,
            bytes,
            id,
        })
    }

    /// The initializers replaced in part `dir`'s session (none for the VAE).
    pub fn part(&self, dir: &str) -> &[(String, Arc<ort::value::DynValue>)] {
        self.parts.get(dir).map_or(&[], Vec::as_slice)
    }

    /// `<lora:name:weight>` of each LoRA, for logs.
    pub fn tags(&self) -> String {
        self.sources
            .iter()
            .map(|l| format!("<lora:{}:{}>", l.name, l.weight))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// 12 hex digits of SHA-256 over the files' hashes and weights.
fn set_id(sources: &[LoraSource]) -> String {
    let mut h = Sha256::new();
    for s in sources {
        h.update(format!("{}\t{}\n", s.sha256.as_str(), s.weight).as_bytes());
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `lora` as provenance records a LoRA (hashes included).
fn source_of(lora: &LoraFile) -> Result<LoraSource, LoraVariantError> {
    checkpoint_hash::lora_source(&lora.file, lora.name.clone(), lora.weight).map_err(|source| {
        LoraVariantError::Hash {
            path: lora.file.clone(),
            source,
        }
    })
}

/// The hash AUTOMATIC1111 writes for the safetensors LoRA `path` in `Lora hashes` (all 64 hex
/// digits; it writes the first 12).
pub fn a1111_hash(path: &Path) -> std::io::Result<String> {
    Ok(checkpoint_hash::lora_hashes(path)?.1.as_str().to_string())
}
