//! What job runs need from the configuration: the model folders, the job defaults and limits,
//! reranking and the output root. `config.yaml` as a whole belongs to the app layer, which
//! composes every layer's section; it hands itself down as this view. The sections job runs own
//! (`defaults:` and `limits:`) are defined here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::engine::model::config::ModelConfig;
use crate::engine::rerank::RerankConfig;

/// The configuration as job runs see it.
pub trait JobSettings {
    /// Stable Diffusion model folders by name.
    fn models(&self) -> &BTreeMap<String, ModelConfig>;
    /// The model a job gets when it names none.
    fn default_model_name(&self) -> &str;
    /// Settings a job gets for the fields it leaves out.
    fn defaults(&self) -> &JobDefaults;
    /// Bounds every job must stay within.
    fn limits(&self) -> &Limits;
    /// CLIP reranking, when configured.
    fn rerank(&self) -> Option<&RerankConfig>;
    /// Root of the rendered output: one folder per job.
    fn output_dir(&self) -> &Path;
    /// Where LoRA files named by `<lora:name:weight>` tags are looked for.
    fn loras(&self) -> &LorasConfig;
}

/// `loras:` section: the folders `<lora:name:weight>` tags of jobs name LoRA files in, as
/// AUTOMATIC1111's Lora folder (`name.safetensors`), searched in order. A LoRA applied per job
/// needs a model imported through a template (its `sdspool-weights.json`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LorasConfig {
    pub dirs: Vec<std::path::PathBuf>,
}

impl LorasConfig {
    /// `<dir>/<name>.safetensors` of the first folder that has it.
    pub fn find(&self, name: &str) -> Option<std::path::PathBuf> {
        let plain = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            && !name.contains(['/', '\\']);
        if !plain {
            return None;
        }
        self.dirs
            .iter()
            .map(|d| d.join(format!("{name}.safetensors")))
            .find(|p| p.is_file())
    }
}

/// `defaults:` section: what a job gets for the fields it leaves out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobDefaults {
    pub candidates: u32,
    pub steps: u32,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    /// Most candidates of a prompt in one UNet batch.
    pub max_batch: u32,
    /// Seed generator: `torch_cpu` (same latents as diffusers with a CPU generator).
    pub rng: crate::engine::noise::RngKind,
    /// How prompts are read: `a1111` (AUTOMATIC1111's emphasis, editing, long prompts) or
    /// `plain` (brackets are text, 77 tokens).
    pub prompt_syntax: crate::engine::prompt::PromptSyntax,
    /// How the tokenizer cleans prompt text: `clip` (CLIP's own, ftfy's fixes) or `basic`.
    pub text_cleaning: crate::engine::tokenizer::TextCleaning,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            candidates: 4,
            steps: 25,
            guidance: 7.5,
            width: 512,
            height: 512,
            max_batch: 8,
            rng: crate::engine::noise::RngKind::TorchCpu,
            prompt_syntax: crate::engine::prompt::PromptSyntax::A1111,
            text_cleaning: crate::engine::tokenizer::TextCleaning::Clip,
        }
    }
}

/// `limits:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_steps: u32,
    /// Width times height.
    pub max_pixels: u64,
    /// Longest side in pixels, width or height. `max_pixels` alone lets a 131072x8 image
    /// through, whose attention maps do not fit in memory.
    pub max_side: u32,
    /// Candidates of one prompt.
    pub max_candidates: u32,
    /// Prompts of one job once sweeps and prompt matrices are expanded.
    pub max_prompts: u32,
    /// Images of one job (all prompts' candidates, sweeps expanded).
    pub max_images: u64,
    /// Size of a job file in bytes.
    pub max_job_bytes: u64,
    /// Characters of one prompt or negative prompt as rendered (a prompt matrix expanded). The
    /// text encoder reads 77 tokens, a few hundred characters; the rest is cut off, but it would
    /// still be kept in memory, the manifest and every PNG's `parameters`.
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 150,
            max_pixels: 1024 * 1024,
            max_side: 2048,
            max_candidates: 32,
            max_prompts: 1000,
            max_images: 10_000,
            max_job_bytes: crate::spool::DEFAULT_MAX_JOB_BYTES,
            max_prompt_chars: 4000,
        }
    }
}
