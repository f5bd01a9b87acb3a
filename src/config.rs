//! `config.yaml`: where the models are, which ONNX Runtime library to load and which execution
//! providers to ask for.
//!
//! Relative paths in the file are resolved against the folder that holds the file, so the
//! repository's own `config.yaml` works from any working directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::runtime::providers::ProviderKind;

/// Largest configuration file sdspool reads; a config is a few kilobytes.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config file {path} is {size} bytes; a configuration is at most {MAX_CONFIG_BYTES} bytes"
    )]
    TooLarge { path: PathBuf, size: u64 },
    #[error("config file {path} is not valid: {error}")]
    Parse {
        path: PathBuf,
        error: crate::yaml::YamlError,
    },
    #[error("config file {path}{}: `{key}` {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: String,
        /// Line of the key in the file, when it is there.
        line: Option<u64>,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the ONNX Runtime shared library is.
    #[serde(default)]
    pub onnxruntime: OnnxRuntimeConfig,
    /// Execution providers, device ids and session options.
    #[serde(default)]
    pub execution: ExecutionConfig,
    /// Stable Diffusion model folders by name.
    pub models: BTreeMap<String, ModelConfig>,
    /// The model a job gets when it names none; the only model when there is just one.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Root of the rendered output: one folder per job.
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// The spool (incoming/, running/, done/, failed/) and how it is watched.
    #[serde(default)]
    pub spool: crate::spool::SpoolConfig,
    /// How the daemon starts and stops.
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Settings a job gets for the fields it leaves out.
    #[serde(default)]
    pub defaults: JobDefaults,
    /// Bounds every job must stay within, checked before any work starts.
    #[serde(default)]
    pub limits: Limits,
    /// CLIP reranking of each prompt's candidates; none when absent.
    #[serde(default)]
    pub rerank: Option<crate::rerank::RerankConfig>,
    /// The file this configuration was read from (not part of the YAML).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `onnxruntime:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path to `libonnxruntime.so*`. Tried first; then `ORT_DYLIB_PATH`; then the project-local
    /// folder `.ort/` beside the config file.
    #[serde(default)]
    pub library: Option<PathBuf>,
}

/// `execution:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Providers in order of preference, e.g. `[tensorrt, cuda, cpu]`.
    #[serde(default = "default_providers")]
    pub providers: Vec<ProviderKind>,
    /// GPU device ids; one worker per id.
    #[serde(default = "default_device_ids")]
    pub device_ids: Vec<i32>,
    /// Refuse to start when no GPU provider really serves the models.
    #[serde(default)]
    pub require_gpu: bool,
    /// Threads inside one operator; 0 lets ONNX Runtime choose.
    #[serde(default)]
    pub intra_threads: usize,
    /// Threads across operators; 0 lets ONNX Runtime choose.
    #[serde(default)]
    pub inter_threads: usize,
    /// ONNX Runtime graph optimisation level.
    #[serde(default)]
    pub graph_optimization: GraphOptimization,
    /// ONNX Runtime's CPU memory arena (its own default; the `ort` crate turns it off unless
    /// asked): activations stay allocated between runs.
    #[serde(default = "yes")]
    pub cpu_arena: bool,
    /// When set, every session also writes its optimised graph below this folder (for
    /// inspection; see [`crate::runtime::Runtime::optimized_model_path`]).
    #[serde(default)]
    pub optimized_model_dir: Option<PathBuf>,
    #[serde(default)]
    pub tensorrt: TensorRtConfig,
    #[serde(default)]
    pub cuda: CudaConfig,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            providers: default_providers(),
            device_ids: default_device_ids(),
            require_gpu: false,
            intra_threads: 0,
            inter_threads: 0,
            graph_optimization: GraphOptimization::default(),
            cpu_arena: true,
            optimized_model_dir: None,
            tensorrt: TensorRtConfig::default(),
            cuda: CudaConfig::default(),
        }
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("local/output")
}

fn default_providers() -> Vec<ProviderKind> {
    vec![ProviderKind::Cpu]
}

fn default_device_ids() -> Vec<i32> {
    vec![0]
}

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

/// `execution.tensorrt:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtConfig {
    /// Build fp16 engines.
    #[serde(default = "yes")]
    pub fp16: bool,
    /// Folder for serialized engines, so the second start skips engine building.
    #[serde(default)]
    pub engine_cache: Option<PathBuf>,
    /// Folder for the timing cache.
    #[serde(default)]
    pub timing_cache: Option<PathBuf>,
    /// Builder workspace limit in bytes.
    #[serde(default)]
    pub max_workspace_bytes: Option<usize>,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        TensorRtConfig {
            fp16: true,
            engine_cache: None,
            timing_cache: None,
            max_workspace_bytes: None,
        }
    }
}

/// `execution.cuda:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaConfig {
    /// Upper bound for the CUDA memory arena in bytes.
    #[serde(default)]
    pub memory_limit_bytes: Option<usize>,
    /// cuDNN convolution algorithm search.
    #[serde(default)]
    pub conv_algorithm_search: ConvSearch,
    /// Allow TF32 math on Ampere and newer.
    #[serde(default = "yes")]
    pub tf32: bool,
    /// Capture the UNet in a CUDA graph (needs fixed shapes).
    #[serde(default)]
    pub cuda_graph: bool,
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            memory_limit_bytes: None,
            conv_algorithm_search: ConvSearch::default(),
            tf32: true,
            cuda_graph: false,
        }
    }
}

/// cuDNN convolution algorithm search modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvSearch {
    #[default]
    Exhaustive,
    Heuristic,
    Default,
}

fn yes() -> bool {
    true
}

/// `daemon:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// After SIGTERM or SIGINT, how long running jobs may take to finish before they are stopped
    /// at their next step (and resumed on the next start).
    pub grace_seconds: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig { grace_seconds: 60 }
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
    pub rng: String,
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
            rng: "torch_cpu".into(),
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
        }
    }
}

/// One entry under `models:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Folder in the layout optimum writes for Stable Diffusion exports.
    pub path: PathBuf,
}

impl fmt::Display for GraphOptimization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GraphOptimization::Disable => "disable",
            GraphOptimization::Basic => "basic",
            GraphOptimization::Extended => "extended",
            GraphOptimization::All => "all",
        })
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Config::parse(&text, path)
    }

    /// Parses configuration text that came from `path` (used for messages and to resolve
    /// relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = crate::yaml::parse(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            error,
        })?;
        config.source = path.to_path_buf();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config
            .check()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: key_line(text, &key),
                key,
                message,
            })?;
        Ok(config)
    }

    /// The folder relative paths are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.source.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.output_dir);
        resolve(&mut self.spool.dir);
        if let Some(lib) = self.onnxruntime.library.as_mut() {
            resolve(lib);
        }
        if let Some(p) = self.execution.optimized_model_dir.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.execution.tensorrt.engine_cache.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.execution.tensorrt.timing_cache.as_mut() {
            resolve(p);
        }
        for model in self.models.values_mut() {
            resolve(&mut model.path);
        }
        if let Some(rerank) = self.rerank.as_mut() {
            resolve(&mut rerank.model);
        }
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> (String, String) {
        (key.to_string(), message.into())
    }

    /// Checks what the types alone do not; an error is the dotted key and what is wrong.
    fn check(&self) -> Result<(), (String, String)> {
        if self.models.is_empty() {
            return Err(self.invalid("models", "is empty: configure at least one model folder"));
        }
        for name in self.models.keys() {
            if !valid_model_name(name) {
                return Err(self.invalid(
                    &format!("models.{name}"),
                    "is not a usable model name: use letters, digits, '.', '_' and '-' (at most 64)",
                ));
            }
        }
        if let Some(default) = &self.default_model
            && !self.models.contains_key(default)
        {
            let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
            return Err(self.invalid(
                "default_model",
                format!(
                    "names `{default}`, which is not under `models:` (configured: {})",
                    names.join(", ")
                ),
            ));
        }
        if self.default_model.is_none() && self.models.len() > 1 {
            return Err(self.invalid(
                "default_model",
                "is missing: with more than one model configured, say which one jobs get by default",
            ));
        }
        let providers = &self.execution.providers;
        if providers.is_empty() {
            return Err(self.invalid(
                "execution.providers",
                "is empty: list at least one of tensorrt, cuda, cpu",
            ));
        }
        for (i, p) in providers.iter().enumerate() {
            if providers[..i].contains(p) {
                return Err(self.invalid("execution.providers", format!("lists `{p}` twice")));
            }
        }
        if self.execution.require_gpu && !providers.iter().any(|p| p.is_gpu()) {
            return Err(self.invalid(
                "execution.require_gpu",
                "is true but `execution.providers` lists no GPU provider (tensorrt or cuda)",
            ));
        }
        if self.execution.device_ids.is_empty() {
            return Err(self.invalid(
                "execution.device_ids",
                "is empty: list at least one device id, e.g. [0]",
            ));
        }
        if let Some(id) = self.execution.device_ids.iter().find(|id| **id < 0) {
            return Err(self.invalid(
                "execution.device_ids",
                format!("contains {id}; device ids are 0 or greater"),
            ));
        }
        Ok(())
    }

    /// The model a job gets when it names none.
    pub fn default_model_name(&self) -> &str {
        match &self.default_model {
            Some(name) => name,
            // check() guarantees exactly one model here.
            None => self
                .models
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or_default(),
        }
    }
}

/// The keys [`Config::check`] can complain about, with where they are in the file.
#[derive(Default, Deserialize)]
struct KeyLines {
    default_model: Option<Spanned<IgnoredAny>>,
    models: Option<Spanned<IgnoredAny>>,
    execution: Option<ExecutionLines>,
}

#[derive(Default, Deserialize)]
struct ExecutionLines {
    providers: Option<Spanned<IgnoredAny>>,
    device_ids: Option<Spanned<IgnoredAny>>,
    require_gpu: Option<Spanned<IgnoredAny>>,
}

/// The line of a dotted key (`execution.providers`, `models.NAME`) in the config text.
fn key_line(text: &str, key: &str) -> Option<u64> {
    let lines: KeyLines = serde_saphyr::from_str(text).ok()?;
    let exec = lines.execution.unwrap_or_default();
    let spanned = match key {
        "default_model" => lines.default_model,
        "execution.providers" => exec.providers,
        "execution.device_ids" => exec.device_ids,
        "execution.require_gpu" => exec.require_gpu,
        k if k.starts_with("models") => lines.models,
        _ => None,
    }?;
    Some(spanned.referenced.line()).filter(|l| *l > 0)
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
