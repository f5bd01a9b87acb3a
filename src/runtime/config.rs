//! The `onnxruntime:` and `execution:` sections of config.yaml: where the library is, which
//! execution providers and devices, and session options.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use ort::ep::{self, ExecutionProvider as _};

use crate::sys::bytes::ByteSize;

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
    /// Settings of single devices of `device_ids` (which models their worker serves), by id.
    #[serde(default)]
    pub devices: BTreeMap<i32, DeviceConfig>,
    /// How much memory the models resident on one device may take (an estimate from their
    /// files, see [`crate::jobs::run::resident`]), e.g. `12GiB`; a device's own
    /// `devices.<id>.model_memory` overrides it. Models load on first use and the least recently
    /// used ones are unloaded to stay within it. Unlimited when absent.
    #[serde(default)]
    pub model_memory: Option<ByteSize>,
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
            devices: BTreeMap::new(),
            model_memory: None,
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

/// `execution.devices.<id>:` section: the worker of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The models this device's worker loads and renders (names under `models:`); every
    /// configured model when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// This device's budget for resident models (overrides `execution.model_memory`).
    #[serde(default)]
    pub model_memory: Option<ByteSize>,
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

/// A provider named in `execution.providers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[serde(alias = "trt")]
    Tensorrt,
    Cuda,
    Cpu,
}

impl ProviderKind {
    pub fn is_gpu(self) -> bool {
        !matches!(self, ProviderKind::Cpu)
    }

    /// ONNX Runtime's name for the provider, as the assignment report uses it.
    pub fn ort_name(self) -> &'static str {
        match self {
            ProviderKind::Tensorrt => ep::TensorRT::NAME,
            ProviderKind::Cuda => ep::CUDA::NAME,
            ProviderKind::Cpu => ep::CPU::NAME,
        }
    }

    /// Maps ONNX Runtime's provider name back.
    pub fn from_ort_name(name: &str) -> Option<ProviderKind> {
        [
            ProviderKind::Tensorrt,
            ProviderKind::Cuda,
            ProviderKind::Cpu,
        ]
        .into_iter()
        .find(|p| p.ort_name() == name)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Tensorrt => "tensorrt",
            ProviderKind::Cuda => "cuda",
            ProviderKind::Cpu => "cpu",
        })
    }
}
