//! Execution providers: what the configuration asks for, what the loaded library offers, and
//! what really serves a session.
//!
//! ONNX Runtime quietly falls back to its CPU provider when the CUDA or TensorRT provider cannot
//! load (missing CUDA libraries, no GPU, a CPU-only build). sdspool registers each GPU provider
//! with `error_on_failure`, so a failed registration is seen and its reason kept, and after the
//! session is built it asks ONNX Runtime which provider each node was assigned to
//! ([`super::assignment`]). The report of both is what `sdspool models` and the startup log show.

use std::fmt;
use std::path::{Path, PathBuf};

use ort::ep::{self, ExecutionProvider as _};
use serde::Deserialize;

use crate::app::config::{ConvSearch, ExecutionConfig};

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

/// What happened when a configured provider was offered to a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// ONNX Runtime accepted it.
    Registered,
    /// The loaded library was built without it.
    NotBuilt,
    /// ONNX Runtime refused it; the text is its reason.
    Failed(String),
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registration::Registered => f.write_str("registered"),
            Registration::NotBuilt => f.write_str(
                "not in this ONNX Runtime build (the CPU wheel); install the GPU build with `make setup GPU=1`",
            ),
            Registration::Failed(reason) => write!(f, "failed to load: {reason}"),
        }
    }
}

/// Builds the `ort` provider for `kind` from the configuration.
pub fn dispatch(
    kind: ProviderKind,
    exec: &ExecutionConfig,
    device_id: i32,
) -> ep::ExecutionProviderDispatch {
    match kind {
        ProviderKind::Tensorrt => {
            let t = &exec.tensorrt;
            let mut trt = ep::TensorRT::default()
                .with_device_id(device_id)
                .with_fp16(t.fp16);
            if let Some(dir) = &t.engine_cache {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display());
            }
            if let Some(dir) = &t.timing_cache {
                trt = trt
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            if let Some(bytes) = t.max_workspace_bytes {
                trt = trt.with_max_workspace_size(bytes);
            }
            trt.build().error_on_failure()
        }
        ProviderKind::Cuda => {
            let c = &exec.cuda;
            let mut cuda = ep::CUDA::default()
                .with_device_id(device_id)
                .with_tf32(c.tf32)
                .with_cuda_graph(c.cuda_graph)
                .with_conv_algorithm_search(match c.conv_algorithm_search {
                    ConvSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                    ConvSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                    ConvSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                });
            if let Some(bytes) = c.memory_limit_bytes {
                cuda = cuda.with_memory_limit(bytes);
            }
            cuda.build().error_on_failure()
        }
        ProviderKind::Cpu => ep::CPU::default()
            .with_arena_allocator(exec.cpu_arena)
            .build()
            .error_on_failure(),
    }
}

/// Whether the loaded library was built with `kind`.
pub fn is_built(kind: ProviderKind) -> bool {
    match kind {
        ProviderKind::Tensorrt => ep::TensorRT::is_available().unwrap_or(false),
        ProviderKind::Cuda => ep::CUDA::is_available().unwrap_or(false),
        ProviderKind::Cpu => true,
    }
}

/// Where pip puts the CUDA and cuDNN libraries beside the GPU wheel (`make setup GPU=1`).
pub fn pip_cuda_dirs(library: &Path) -> Option<(PathBuf, PathBuf)> {
    // library = <site>/onnxruntime/capi/libonnxruntime.so.X
    let site = library.parent()?.parent()?.parent()?;
    let cuda = site.join("nvidia").join("cu13").join("lib");
    let cudnn = site.join("nvidia").join("cudnn").join("lib");
    (cuda.is_dir() && cudnn.is_dir()).then_some((cuda, cudnn))
}

/// Loads the CUDA and cuDNN libraries that pip installed beside the GPU wheel, so that the CUDA
/// provider finds them without `LD_LIBRARY_PATH`. Does nothing when they are not there.
pub fn preload_pip_cuda(library: &Path) {
    if let Some((cuda, cudnn)) = pip_cuda_dirs(library) {
        match ep::cuda::preload_dylibs(Some(&cuda), Some(&cudnn)) {
            Ok(()) => {
                tracing::info!(cuda = %cuda.display(), cudnn = %cudnn.display(), "preloaded CUDA and cuDNN libraries installed by pip")
            }
            Err(e) => {
                tracing::warn!(cuda = %cuda.display(), error = %e, "could not preload the CUDA libraries installed by pip; the CUDA provider will look on LD_LIBRARY_PATH")
            }
        }
    }
}
