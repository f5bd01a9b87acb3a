//! `config.yaml`: where the models are, which ONNX Runtime library to load and which execution
//! providers to ask for.
//!
//! Relative paths in the file are resolved against the folder that holds the file, so the
//! repository's own `config.yaml` works from any working directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub mod import;
pub mod serve;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

pub use crate::engine::model::config::{ModelConfig, valid_model_name};
pub use crate::jobs::settings::{JobDefaults, Limits};
pub use crate::runtime::config::{
    ConvSearch, CudaConfig, DeviceConfig, ExecutionConfig, GraphOptimization, JobShapes,
    OnnxRuntimeConfig, TensorRtConfig,
};

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
        error: crate::sys::yaml::YamlError,
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
    pub rerank: Option<crate::engine::rerank::RerankConfig>,
    /// The web page and metrics (`serve:`, see [`serve`]).
    #[serde(default)]
    pub serve: serve::ServeConfig,
    /// Webhooks and a command told when jobs end (`notify:`).
    #[serde(default)]
    pub notify: serve::NotifyConfig,
    /// `sdspool import`'s template folders (`import:`, see [`import`]).
    #[serde(default)]
    pub import: import::ImportConfig,
    /// Where LoRA files applied per job are (`loras:`).
    #[serde(default)]
    pub loras: crate::jobs::settings::LorasConfig,
    /// The file this configuration was read from (not part of the YAML).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `daemon:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// After SIGTERM or SIGINT, how long running jobs may take to finish before they are stopped
    /// at their next step (and resumed on the next start).
    pub grace_seconds: u64,
    /// A worker that shows no sign of life for this long (no denoising step while it renders, no
    /// turn of its loop while it waits for work) is hung: the daemon stops pinging the systemd
    /// watchdog, so systemd restarts it. Must exceed the longest step between two denoising
    /// steps (a VAE decode, CLIP scoring of a batch). Default: systemd's watchdog period
    /// (`WatchdogSec`), or 300 s without a watchdog.
    pub hang_seconds: Option<u64>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            grace_seconds: 60,
            hang_seconds: None,
        }
    }
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("local/output")
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
        let mut config: Config =
            crate::sys::yaml::parse(text).map_err(|error| ConfigError::Parse {
                path: path.to_path_buf(),
                error,
            })?;
        config.source = path.to_path_buf();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve_paths(&base);
        config.execution.tensorrt.jobs = config.job_shapes();
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

    /// The sizes and batches jobs may ask for, which TensorRT's optimization profiles cover.
    fn job_shapes(&self) -> JobShapes {
        let max_batch = self.defaults.max_batch.max(1);
        JobShapes {
            max_side: self.limits.max_side,
            max_pixels: self.limits.max_pixels,
            opt_width: self.defaults.width,
            opt_height: self.defaults.height,
            opt_batch: self.defaults.candidates.clamp(1, max_batch),
            max_batch,
        }
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
        if let Some(p) = self.notify.ca_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.execution.tensorrt.engine_cache.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.execution.tensorrt.timing_cache.as_mut() {
            resolve(p);
        }
        for dir in self.import.templates.iter_mut().flatten() {
            resolve(dir);
        }
        for dir in &mut self.loras.dirs {
            resolve(dir);
        }
        for model in self.models.values_mut() {
            resolve(&mut model.path);
            if let Some(vae) = model.vae.as_mut() {
                resolve(vae);
            }
            if let Some(checkpoint) = model.checkpoint.as_mut() {
                resolve(checkpoint);
            }
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
        for (name, model) in &self.models {
            if !valid_model_name(name) {
                return Err(self.invalid(
                    &format!("models.{name}"),
                    "is not a usable model name: use letters, digits, '.', '_' and '-' (at most 64)",
                ));
            }
            if let Some(file) = &model.checkpoint
                && !file.is_file()
            {
                return Err(self.invalid(
                    &format!("models.{name}.checkpoint"),
                    format!(
                        "names {}, which is not a file (the single-file checkpoint the folder was made from)",
                        file.display()
                    ),
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
        if self.execution.cuda.cuda_graph && !self.execution.io_binding {
            return Err(self.invalid(
                "execution.cuda.cuda_graph",
                "is true but `execution.io_binding` is false: a CUDA graph replays fixed buffer \
                 addresses, which only the bound buffers have; turn io_binding on or cuda_graph off",
            ));
        }
        self.check_devices()?;
        self.serve.check()?;
        self.notify.check()?;
        if self.daemon.hang_seconds == Some(0) {
            return Err(self.invalid(
                "daemon.hang_seconds",
                "is 0: give the seconds without progress after which a worker counts as hung",
            ));
        }
        Ok(())
    }

    /// `execution.devices`: each entry names a device of `device_ids` and models under `models:`.
    fn check_devices(&self) -> Result<(), (String, String)> {
        let budgets = std::iter::once((
            "execution.model_memory".to_string(),
            self.execution.model_memory,
        ))
        .chain(self.execution.devices.iter().map(|(id, d)| {
            (
                format!("execution.devices.{id}.model_memory"),
                d.model_memory,
            )
        }));
        for (key, budget) in budgets {
            if budget.is_some_and(|b| b.0 == 0) {
                return Err(self.invalid(
                    &key,
                    "is 0: give the memory the models resident on a device may take, e.g. 12GiB, or leave it out for no limit",
                ));
            }
        }
        for (id, device) in &self.execution.devices {
            let key = format!("execution.devices.{id}");
            if !self.execution.device_ids.contains(id) {
                return Err(self.invalid(
                    &key,
                    format!(
                        "configures device {id}, which is not in `execution.device_ids` ({})",
                        join(self.execution.device_ids.iter())
                    ),
                ));
            }
            let Some(models) = &device.models else {
                continue;
            };
            let key = format!("{key}.models");
            if models.is_empty() {
                return Err(self.invalid(
                    &key,
                    "is empty: list the models this device serves, or leave `models` out for all",
                ));
            }
            for (i, name) in models.iter().enumerate() {
                if models[..i].contains(name) {
                    return Err(self.invalid(&key, format!("lists `{name}` twice")));
                }
                if !self.models.contains_key(name) {
                    return Err(self.invalid(
                        &key,
                        format!(
                            "names `{name}`, which is not under `models:` (configured: {})",
                            join(self.models.keys())
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the worker of `device` serves `model`: loads it and renders its jobs. A device
    /// serves the models its `execution.devices` entry lists, or every configured model.
    pub fn serves(&self, device: i32, model: &str) -> bool {
        self.models.contains_key(model)
            && match self
                .execution
                .devices
                .get(&device)
                .and_then(|d| d.models.as_ref())
            {
                Some(models) => models.iter().any(|m| m == model),
                None => true,
            }
    }

    /// The memory budget for the models resident on `device`: its `execution.devices` entry's
    /// `model_memory`, else `execution.model_memory`; `None`: unlimited.
    pub fn model_memory(&self, device: i32) -> Option<u64> {
        self.execution
            .devices
            .get(&device)
            .and_then(|d| d.model_memory)
            .or(self.execution.model_memory)
            .map(|b| b.0)
    }

    /// The names of the models the worker of `device` serves, in `models:` order.
    pub fn models_of(&self, device: i32) -> Vec<&str> {
        self.models
            .keys()
            .map(String::as_str)
            .filter(|m| self.serves(device, m))
            .collect()
    }

    /// ONNX Runtime as this configuration names it (library, providers, session options).
    pub fn runtime(&self) -> Result<crate::runtime::Runtime, crate::runtime::RuntimeError> {
        crate::runtime::Runtime::init(
            self.onnxruntime.library.as_deref(),
            &self.base_dir(),
            &self.execution,
        )
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

/// `a, b, c`.
fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// The keys [`Config::check`] can complain about, with where they are in the file.
#[derive(Default, Deserialize)]
struct KeyLines {
    default_model: Option<Spanned<IgnoredAny>>,
    models: Option<Spanned<IgnoredAny>>,
    execution: Option<ExecutionLines>,
    daemon: Option<DaemonLines>,
}

#[derive(Default, Deserialize)]
struct ExecutionLines {
    providers: Option<Spanned<IgnoredAny>>,
    device_ids: Option<Spanned<IgnoredAny>>,
    require_gpu: Option<Spanned<IgnoredAny>>,
    devices: Option<BTreeMap<i32, Spanned<DeviceLines>>>,
}

#[derive(Default, Deserialize)]
struct DeviceLines {
    models: Option<Spanned<IgnoredAny>>,
}

#[derive(Default, Deserialize)]
struct DaemonLines {
    hang_seconds: Option<Spanned<IgnoredAny>>,
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
        k if k.starts_with("execution.devices.") => device_line(exec.devices?, k),
        "daemon.hang_seconds" => lines.daemon.unwrap_or_default().hang_seconds,
        k if k.starts_with("models") => lines.models,
        _ => None,
    }?;
    Some(spanned.referenced.line()).filter(|l| *l > 0)
}

/// The line of `execution.devices.<id>` or `execution.devices.<id>.models`.
fn device_line(
    mut devices: BTreeMap<i32, Spanned<DeviceLines>>,
    key: &str,
) -> Option<Spanned<IgnoredAny>> {
    let rest = key.strip_prefix("execution.devices.")?;
    let (id, field) = rest.split_once('.').unwrap_or((rest, ""));
    let entry = devices.remove(&id.parse().ok()?)?;
    match field {
        "models" => entry.value.models,
        _ => Some(Spanned {
            value: IgnoredAny,
            referenced: entry.referenced,
            defined: entry.defined,
        }),
    }
}

impl crate::jobs::settings::JobSettings for Config {
    fn models(&self) -> &BTreeMap<String, ModelConfig> {
        &self.models
    }
    fn default_model_name(&self) -> &str {
        Config::default_model_name(self)
    }
    fn defaults(&self) -> &JobDefaults {
        &self.defaults
    }
    fn limits(&self) -> &Limits {
        &self.limits
    }
    fn rerank(&self) -> Option<&crate::engine::rerank::RerankConfig> {
        self.rerank.as_ref()
    }
    fn output_dir(&self) -> &Path {
        &self.output_dir
    }
    fn loras(&self) -> &crate::jobs::settings::LorasConfig {
        &self.loras
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODELS: &str = "models:\n  sd:\n    path: /m/sd\n  xl:\n    path: /m/xl\n  other:\n    path: /m/other\ndefault_model: sd\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{MODELS}{text}"),
            Path::new("/etc/sdspool/config.yaml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_device_serves_the_models_it_lists_and_one_without_a_list_serves_all() {
        let c = parse(
            "execution:\n  device_ids: [0, 1, 2]\n  devices:\n    0:\n      models: [xl]\n    1:\n      models: [sd, other]\n    2: {}\n",
        )
        .unwrap();
        assert!(c.serves(0, "xl") && !c.serves(0, "sd"));
        assert_eq!(c.models_of(1), ["other", "sd"]);
        assert_eq!(c.models_of(2), ["other", "sd", "xl"]);
        assert!(!c.serves(2, "unknown"), "only configured models");
        // Memory budgets: a device's own, else the default, else none.
        let c = parse(
            "execution:\n  device_ids: [0, 1, 2]\n  model_memory: 8GiB\n  devices:\n    1:\n      model_memory: 512MiB\n",
        )
        .unwrap();
        assert_eq!(c.model_memory(0), Some(8 << 30));
        assert_eq!(c.model_memory(1), Some(512 << 20));
        assert_eq!(parse("").unwrap().model_memory(0), None);
        // Without `devices`, every device serves every model.
        let all = parse("").unwrap();
        assert!(all.execution.devices.is_empty());
        assert_eq!(all.models_of(0), ["other", "sd", "xl"]);
    }

    #[test]
    fn binding_cuda_graphs_and_tensorrt_profiles_are_configured_and_on_by_default_binding_only() {
        let c = parse("").unwrap();
        assert!(c.execution.io_binding && !c.execution.cuda.cuda_graph);
        assert!(
            !c.execution.tensorrt.fp16,
            "float32 parts stay float32 unless asked"
        );
        let c = parse(
            "execution:\n  cuda:\n    cuda_graph: true\n    max_graphs: 2\n  tensorrt:\n    min_side: 512\n    max_prompt_windows: 1\nlimits:\n  max_side: 1536\n  max_pixels: 1048576\ndefaults:\n  width: 768\n  height: 512\n  candidates: 2\n  max_batch: 4\n",
        )
        .unwrap();
        assert!(c.execution.io_binding);
        assert!(c.execution.cuda.cuda_graph);
        assert_eq!(c.execution.cuda.max_graphs, 2);
        let t = &c.execution.tensorrt;
        assert_eq!((t.min_side, t.max_prompt_windows), (512, 1));
        assert_eq!(
            t.jobs,
            JobShapes {
                max_side: 1536,
                max_pixels: 1048576,
                opt_width: 768,
                opt_height: 512,
                opt_batch: 2,
                max_batch: 4,
            }
        );
        assert!(
            !parse("execution:\n  io_binding: false\n")
                .unwrap()
                .execution
                .io_binding
        );
        let err =
            parse("execution:\n  io_binding: false\n  cuda:\n    cuda_graph: true\n").unwrap_err();
        assert!(
            err.contains("`execution.cuda.cuda_graph` is true but `execution.io_binding` is false"),
            "{err}"
        );
        let err = parse("execution:\n  tensorrt:\n    jobs: {}\n").unwrap_err();
        assert!(err.contains("jobs"), "not a configuration key: {err}");
    }

    #[test]
    fn device_settings_are_checked_naming_the_key_and_line() {
        let cases = [
            (
                "execution:\n  device_ids: [0]\n  devices:\n    0:\n      models: [sdxl]\n",
                &[
                    "`execution.devices.0.models`",
                    "line 13",
                    "names `sdxl`, which is not under `models:` (configured: other, sd, xl)",
                ][..],
            ),
            (
                "execution:\n  device_ids: [0]\n  devices:\n    1:\n      models: [sd]\n",
                &[
                    "`execution.devices.1`",
                    "configures device 1, which is not in `execution.device_ids` (0)",
                ][..],
            ),
            (
                "execution:\n  devices:\n    0:\n      models: []\n",
                &["`execution.devices.0.models` is empty"][..],
            ),
            (
                "execution:\n  devices:\n    0:\n      models: [sd, sd]\n",
                &["lists `sd` twice"][..],
            ),
            (
                "execution:\n  devices:\n    0:\n      modles: [sd]\n",
                &["modles", "unknown field"][..],
            ),
            (
                "daemon:\n  hang_seconds: 0\n",
                &["`daemon.hang_seconds` is 0", "line 10"][..],
            ),
            (
                "execution:\n  devices:\n    0:\n      model_memory: 0\n",
                &["`execution.devices.0.model_memory` is 0"][..],
            ),
            (
                "execution:\n  model_memory: lots\n",
                &["model_memory", "is not a size"][..],
            ),
        ];
        for (text, needles) in cases {
            let err = parse(text).unwrap_err();
            for n in needles {
                assert!(err.contains(n), "expected {n:?} for\n{text}\nin: {err}");
            }
        }
    }
}
