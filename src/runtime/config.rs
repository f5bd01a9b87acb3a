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
    /// Run the UNet through ONNX Runtime's I/O binding: its inputs and outputs in buffers
    /// allocated once per size and batch, on the device of the provider that serves it, the
    /// text embeddings copied there once per prompt and only the latents crossing each step
    /// (see [`crate::runtime::binding`]). `false` feeds every step as new host tensors.
    #[serde(default = "yes")]
    pub io_binding: bool,
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
            io_binding: true,
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
    /// Build fp16 engines for float32 parts too (float16 parts always get them).
    #[serde(default)]
    pub fp16: bool,
    /// Folder for serialized engines, so the second start skips engine building: one folder
    /// per model part, optimization profile and TensorRT version below it.
    #[serde(default)]
    pub engine_cache: Option<PathBuf>,
    /// Folder for the timing cache (one per TensorRT version below it).
    #[serde(default)]
    pub timing_cache: Option<PathBuf>,
    /// Builder workspace limit in bytes.
    #[serde(default)]
    pub max_workspace_bytes: Option<usize>,
    /// Smallest image side, in pixels, the optimization profiles cover (the largest is
    /// `limits.max_side`, within `limits.max_pixels`).
    #[serde(default = "default_min_side")]
    pub min_side: u32,
    /// 77-token windows of the longest prompt the profiles cover (AUTOMATIC1111 prompt syntax
    /// encodes longer prompts in several windows).
    #[serde(default = "default_prompt_windows")]
    pub max_prompt_windows: u32,
    /// The job sizes and batches the profiles cover: set from `limits:` and `defaults:` by the
    /// app layer, not read from this section.
    #[serde(skip)]
    pub jobs: JobShapes,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        TensorRtConfig {
            fp16: false,
            engine_cache: None,
            timing_cache: None,
            max_workspace_bytes: None,
            min_side: default_min_side(),
            max_prompt_windows: default_prompt_windows(),
            jobs: JobShapes::default(),
        }
    }
}

fn default_min_side() -> u32 {
    256
}

fn default_prompt_windows() -> u32 {
    3
}

/// The image sizes and batches jobs may ask for, as TensorRT profiles need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobShapes {
    /// Longest side in pixels (`limits.max_side`).
    pub max_side: u32,
    /// Width times height (`limits.max_pixels`).
    pub max_pixels: u64,
    /// The usual image (`defaults.width`, `defaults.height`).
    pub opt_width: u32,
    pub opt_height: u32,
    /// Images in one UNet batch before guidance doubles it: the usual (`defaults.candidates`
    /// up to `defaults.max_batch`) and the most (`defaults.max_batch`).
    pub opt_batch: u32,
    pub max_batch: u32,
}

impl Default for JobShapes {
    fn default() -> Self {
        JobShapes {
            max_side: 2048,
            max_pixels: 1024 * 1024,
            opt_width: 512,
            opt_height: 512,
            opt_batch: 4,
            max_batch: 8,
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
    /// Capture the UNet in CUDA graphs, one per size and batch (needs `io_binding`; the text
    /// encoders and the VAE run without). ONNX Runtime's `enable_cuda_graph` for the UNet's
    /// session and its run option `gpu_graph_id` per shape.
    #[serde(default)]
    pub cuda_graph: bool,
    /// Most shapes (size and batch) that get a CUDA graph; later ones run without.
    #[serde(default = "default_max_graphs")]
    pub max_graphs: usize,
}

fn default_max_graphs() -> usize {
    4
}

impl Default for CudaConfig {
    fn default() -> Self {
        CudaConfig {
            memory_limit_bytes: None,
            conv_algorithm_search: ConvSearch::default(),
            tf32: true,
            cuda_graph: false,
            max_graphs: default_max_graphs(),
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
