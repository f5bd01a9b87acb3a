//! The diffusion models resident on one device: loaded on first use, kept for the next jobs,
//! and unloaded least recently used first when a model to load would not fit in the device's
//! memory budget (`execution.model_memory`, `execution.devices.<id>.model_memory`).
//!
//! A model's size is an **estimate from its files**: the bytes of the files in the folders of
//! the parts sdspool loads (`text_encoder`, `text_encoder_2`, `unet`, `vae_decoder`,
//! `vae_encoder`: the graphs and their external weights; a `vae:` replacement's decoder in place
//! of the model's own), plus, for a model with LoRAs applied per job (resident under its own key,
//! [`Need::key`]), the bytes of the changed weights it holds in memory. What the sessions really hold differs (the provider's workspace and
//! activations come on top; a float32 graph that TensorRT builds as float16 takes less), so set
//! the budget below the device's memory by the activations of the largest job.
//!
//! The models a job needs (its model and its refiner) are never unloaded for each other. A model
//! larger than the whole budget still loads, alone (everything else is unloaded, and a warning
//! says so), so a job for it runs instead of failing forever.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::engine::model::config::ModelConfig;
use crate::engine::model::lora_variant::{LoraFile, LoraVariant};
use crate::engine::model::{Component, SdModel};
use crate::engine::pipeline::Pipeline;
use crate::jobs::job::JobLora;
use crate::runtime::Runtime;
use crate::sys::bytes::ByteSize;

use super::LoadError;

/// One resident model.
struct Entry {
    pipeline: Pipeline,
    /// Estimated footprint (see the module docs).
    bytes: u64,
    /// When it was last needed by a job, on [`Resident`]'s use counter.
    last_used: u64,
}

/// The models resident on one device.
pub struct Resident {
    device: i32,
    /// Most bytes the resident models may take; `None`: unlimited.
    budget: Option<u64>,
    entries: BTreeMap<String, Entry>,
    /// Counts uses, for least-recently-used order.
    uses: u64,
}

/// A model [`Resident::ensure`] unloads to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub model: String,
    pub bytes: u64,
}

impl Resident {
    pub fn new(device: i32, budget: Option<u64>) -> Resident {
        Resident {
            device,
            budget,
            entries: BTreeMap::new(),
            uses: 0,
        }
    }

    pub fn is_loaded(&self, model: &str) -> bool {
        self.entries.contains_key(model)
    }

    /// The resident models' names, in name order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// Estimated bytes of the resident models.
    pub fn used(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    pub fn get(&self, model: &str) -> Option<&Pipeline> {
        self.entries.get(model).map(|e| &e.pipeline)
    }

    pub fn pipelines_mut(&mut self) -> impl Iterator<Item = (&String, &mut Pipeline)> {
        self.entries.iter_mut().map(|(n, e)| (n, &mut e.pipeline))
    }

    /// Makes every model of `needed` resident: marks the loaded ones used, loads the others
    /// (unloading least recently used models not in `needed` to stay within the budget, with
    /// `reserved` bytes of it taken by other resident things, the rerank model). Returns the
    /// models it unloaded.
    pub fn ensure(
        &mut self,
        runtime: &Runtime,
        configs: &BTreeMap<String, ModelConfig>,
        needed: &[Need],
        reserved: u64,
    ) -> Result<Vec<Victim>, LoadError> {
        let mut unloaded = Vec::new();
        let keys: Vec<String> = needed.iter().map(Need::key).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        for (need, &name) in needed.iter().zip(&keys) {
            let name = name.to_string();
            self.uses += 1;
            if let Some(e) = self.entries.get_mut(&name) {
                e.last_used = self.uses;
                continue;
            }
            let config = configs
                .get(need.model)
                .ok_or_else(|| LoadError::NotConfigured {
                    model: need.model.to_string(),
                })?;
            let variant = need.variant(config)?;
            let bytes = footprint(config) + variant.as_ref().map_or(0, |v| v.bytes);
            unloaded.extend(self.make_room(&name, bytes, &keys, reserved));
            let started = Instant::now();
            let pipeline =
                load_pipeline(runtime, need.model, config, self.device, variant.as_ref())?;
            tracing::info!(
                model = %name, device = self.device,
                provider = %pipeline.model.unet.loaded.providers.serving(),
                seconds = started.elapsed().as_secs_f64(), estimated_size = %ByteSize(bytes),
                resident = self.entries.len() + 1,
                "model loaded"
            );
            self.entries.insert(
                name,
                Entry {
                    pipeline,
                    bytes,
                    last_used: self.uses,
                },
            );
        }
        Ok(unloaded)
    }

    /// Unloads what [`victims`] chooses for a model of `bytes`.
    fn make_room(&mut self, name: &str, bytes: u64, keep: &[&str], reserved: u64) -> Vec<Victim> {
        let Some(budget) = self.budget else {
            return Vec::new();
        };
        let resident: Vec<(&str, u64, u64)> = self
            .entries
            .iter()
            .map(|(n, e)| (n.as_str(), e.bytes, e.last_used))
            .collect();
        let chosen = victims(&resident, keep, bytes, budget.saturating_sub(reserved));
        for v in &chosen {
            self.entries.remove(&v.model);
            tracing::info!(
                model = %v.model, device = self.device, estimated_size = %ByteSize(v.bytes),
                for_model = %name, budget = %ByteSize(budget),
                "unloading the least recently used model to stay within the device's model memory"
            );
        }
        let after = self.used() + bytes + reserved;
        if after > budget {
            tracing::warn!(
                model = %name, device = self.device, estimated_size = %ByteSize(bytes),
                resident = %ByteSize(after - bytes), budget = %ByteSize(budget),
                "the model does not fit in the device's model memory even with every other model unloaded; loading it anyway"
            );
        }
        chosen
    }
}

/// The models to unload, least recently used first, so that a model of `bytes` fits in
/// `budget` beside the others: `resident` is (name, bytes, last use); models in `keep` stay.
/// When even unloading every other model is not enough, all of those go (the model then loads
/// over the budget, alone with the kept ones).
pub fn victims(
    resident: &[(&str, u64, u64)],
    keep: &[&str],
    bytes: u64,
    budget: u64,
) -> Vec<Victim> {
    let mut used: u64 = resident.iter().map(|r| r.1).sum();
    let mut order: Vec<&(&str, u64, u64)> =
        resident.iter().filter(|r| !keep.contains(&r.0)).collect();
    order.sort_by_key(|r| r.2);
    let mut out = Vec::new();
    for (name, size, _) in order {
        if used + bytes <= budget {
            break;
        }
        used -= size;
        out.push(Victim {
            model: name.to_string(),
            bytes: *size,
        });
    }
    out
}

/// One model a job needs: its configured name and the LoRAs the job applies to it. Resident
/// models are keyed by both ([`Need::key`]): the model with LoRAs is a model of its own, beside
/// the model without them.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub model: &'a str,
    pub loras: &'a [JobLora],
}

impl<'a> Need<'a> {
    /// The model as it is.
    pub fn plain(model: &'a str) -> Need<'a> {
        Need { model, loras: &[] }
    }

    /// The model's name, followed by its LoRAs' tags when it has any.
    pub fn key(&self) -> String {
        key(self.model, self.loras)
    }

    /// The LoRAs prepared for the model's sessions; none without LoRAs.
    fn variant(&self, config: &ModelConfig) -> Result<Option<LoraVariant>, LoadError> {
        if self.loras.is_empty() {
            return Ok(None);
        }
        let files: Vec<LoraFile> = self
            .loras
            .iter()
            .map(|l| LoraFile {
                name: l.name.clone(),
                file: l.file.clone(),
                weight: l.weight,
            })
            .collect();
        LoraVariant::prepare(&config.path, &files)
            .map(Some)
            .map_err(|source| LoadError::Loras {
                model: self.model.to_string(),
                source,
            })
    }
}

/// The resident key of `model` with `loras` applied: `model`, or `model <lora:a:0.8> ...`.
pub fn key(model: &str, loras: &[JobLora]) -> String {
    let mut key = model.to_string();
    for l in loras {
        key.push_str(&format!(" <lora:{}:{}>", l.name, l.weight));
    }
    key
}

/// Loads one configured model (and its `vae:` replacement), with `loras` applied when given,
/// and sets up its pipeline.
pub fn load_pipeline(
    runtime: &Runtime,
    name: &str,
    config: &ModelConfig,
    device: i32,
    loras: Option<&LoraVariant>,
) -> Result<Pipeline, LoadError> {
    let mut m = SdModel::load_with(runtime, name, &config.path, device, loras)?;
    if let Some(vae) = &config.vae {
        m.replace_vae_decoder(runtime, vae, device)?;
    }
    Pipeline::new(m).map_err(|source| LoadError::Pipeline {
        model: name.to_string(),
        source,
    })
}

/// The estimated footprint of a configured model: the bytes of the files in the folders of its
/// parts (see the module docs). Missing folders count 0 (loading reports them).
pub fn footprint(config: &ModelConfig) -> u64 {
    let parts = [
        Component::TextEncoder,
        Component::TextEncoder2,
        Component::Unet,
        Component::VaeDecoder,
        Component::VaeEncoder,
    ];
    parts
        .iter()
        .map(|c| {
            let root = match (c, &config.vae) {
                (Component::VaeDecoder, Some(vae)) => vae,
                _ => &config.path,
            };
            files_bytes(&root.join(c.dir()))
        })
        .sum()
}

/// The bytes of the regular files directly in `dir` (links followed: external weights may be
/// linked in).
pub fn files_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The bytes of the regular files in `dir` and in its subfolders one level down (a rerank
/// model's folder: its graphs sit in `text/` and `vision/` or at the top).
pub fn folder_bytes(dir: &Path) -> u64 {
    let below: u64 = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| files_bytes(&e.path()))
        .sum();
    files_bytes(dir) + below
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Victim]) -> Vec<&str> {
        v.iter().map(|v| v.model.as_str()).collect()
    }

    #[test]
    fn the_least_recently_used_models_go_until_the_new_one_fits() {
        let resident = [("a", 4, 3), ("b", 4, 1), ("c", 4, 2)];
        assert!(victims(&resident, &[], 4, 16).is_empty(), "fits as is");
        assert_eq!(names(&victims(&resident, &[], 4, 12)), ["b"]);
        assert_eq!(names(&victims(&resident, &[], 8, 12)), ["b", "c"]);
        // The job's other model stays even when it is the oldest.
        assert_eq!(names(&victims(&resident, &["b"], 4, 12)), ["c"]);
    }

    #[test]
    fn a_model_larger_than_the_budget_unloads_everything_else_and_loads_alone() {
        let resident = [("a", 4, 3), ("b", 4, 1)];
        assert_eq!(names(&victims(&resident, &[], 100, 10)), ["b", "a"]);
        assert_eq!(names(&victims(&resident, &["a"], 100, 10)), ["b"]);
        assert!(victims(&[], &[], 100, 10).is_empty());
    }

    #[test]
    fn the_footprint_is_the_size_of_the_part_folders_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("m");
        for (dir, bytes) in [
            ("unet", 1000),
            ("text_encoder", 100),
            ("vae_decoder", 10),
            ("tokenizer", 5000),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("model.onnx"), vec![0u8; bytes]).unwrap();
        }
        std::fs::write(root.join("unet/model.onnx_data"), vec![0u8; 7]).unwrap();
        let mut config = ModelConfig {
            path: root.clone(),
            vae: None,
            checkpoint: None,
        };
        assert_eq!(footprint(&config), 1117, "the tokenizer is not a session");
        let vae = tmp.path().join("vae");
        std::fs::create_dir_all(vae.join("vae_decoder")).unwrap();
        std::fs::write(vae.join("vae_decoder/model.onnx"), vec![0u8; 50]).unwrap();
        config.vae = Some(vae);
        assert_eq!(
            footprint(&config),
            1157,
            "the replacement decoder counts instead"
        );
    }
}
