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

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProvider as _};

use crate::runtime::SessionPlan;
pub use crate::runtime::config::ProviderKind;
use crate::runtime::config::{ConvSearch, ExecutionConfig};
use crate::runtime::tensorrt;

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

/// Builds the `ort` provider for `kind` from the configuration and the session's plan.
pub fn dispatch(
    kind: ProviderKind,
    exec: &ExecutionConfig,
    device_id: i32,
    plan: &SessionPlan,
    trt_version: &str,
) -> ep::ExecutionProviderDispatch {
    match kind {
        ProviderKind::Tensorrt => {
            let options = tensorrt_options(exec, device_id, plan, trt_version);
            configured(ep::TensorRT::default(), options)
                .build()
                .error_on_failure()
        }
        ProviderKind::Cuda => {
            let options = cuda_options(exec, device_id, plan);
            configured(ep::CUDA::default(), options)
                .build()
                .error_on_failure()
        }
        ProviderKind::Cpu => ep::CPU::default()
            .with_arena_allocator(exec.cpu_arena)
            .build()
            .error_on_failure(),
    }
}

fn configured<E: ArbitrarilyConfigurableExecutionProvider>(
    provider: E,
    options: Vec<(&'static str, String)>,
) -> E {
    options
        .into_iter()
        .fold(provider, |p, (k, v)| p.with_arbitrary_config(k, v))
}

/// Whether a session captures CUDA graphs: a part that can be captured, with
/// `execution.cuda.cuda_graph` on and the I/O binding whose fixed buffers a graph replays.
pub fn captures_cuda_graphs(exec: &ExecutionConfig, plan: &SessionPlan) -> bool {
    plan.cuda_graph && exec.cuda.cuda_graph && exec.io_binding
}

/// ONNX Runtime's spelling of a boolean provider option.
fn flag(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

/// The CUDA provider's options (ONNX Runtime's keys) for a session: CUDA graphs only for a part
/// that can be captured ([`SessionPlan::cuda_graph`]) with `execution.cuda.cuda_graph` on.
pub fn cuda_options(
    exec: &ExecutionConfig,
    device_id: i32,
    plan: &SessionPlan,
) -> Vec<(&'static str, String)> {
    let c = &exec.cuda;
    let search = match c.conv_algorithm_search {
        ConvSearch::Exhaustive => "EXHAUSTIVE",
        ConvSearch::Heuristic => "HEURISTIC",
        ConvSearch::Default => "DEFAULT",
    };
    let mut options = vec![
        ("device_id", device_id.to_string()),
        ("use_tf32", flag(c.tf32)),
        ("enable_cuda_graph", flag(captures_cuda_graphs(exec, plan))),
        ("cudnn_conv_algo_search", search.to_string()),
    ];
    if let Some(bytes) = c.memory_limit_bytes {
        options.push(("gpu_mem_limit", bytes.to_string()));
    }
    options
}

/// The TensorRT provider's options (ONNX Runtime's keys) for a session: fp16 engines for
/// float16 parts (and for all with `execution.tensorrt.fp16`), the part's optimization profile,
/// its engine cache folder keyed by model, profile and TensorRT version
/// ([`tensorrt::TrtPlan::engine_dir`]), the timing cache per TensorRT version, and CUDA graphs as for
/// the CUDA provider.
pub fn tensorrt_options(
    exec: &ExecutionConfig,
    device_id: i32,
    plan: &SessionPlan,
    trt_version: &str,
) -> Vec<(&'static str, String)> {
    let t = &exec.tensorrt;
    let part = plan.tensorrt.as_ref();
    let mut options = vec![
        ("device_id", device_id.to_string()),
        (
            "trt_fp16_enable",
            flag(t.fp16 || part.is_some_and(|p| p.fp16)),
        ),
    ];
    if let Some(root) = &t.engine_cache {
        let dir = part.map_or_else(|| root.clone(), |p| p.engine_dir(root, trt_version));
        options.push(("trt_engine_cache_enable", flag(true)));
        options.push(("trt_engine_cache_path", dir.display().to_string()));
    }
    if let Some(root) = &t.timing_cache {
        let dir = tensorrt::timing_dir(root, trt_version);
        options.push(("trt_timing_cache_enable", flag(true)));
        options.push(("trt_timing_cache_path", dir.display().to_string()));
    }
    if let Some(bytes) = t.max_workspace_bytes {
        options.push(("trt_max_workspace_size", bytes.to_string()));
    }
    if let Some(profile) = part.and_then(|p| p.profile.as_ref()) {
        options.push(("trt_profile_min_shapes", profile.min_shapes()));
        options.push(("trt_profile_opt_shapes", profile.opt_shapes()));
        options.push(("trt_profile_max_shapes", profile.max_shapes()));
    }
    if captures_cuda_graphs(exec, plan) {
        options.push(("trt_cuda_graph_enable", flag(true)));
    }
    options
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tensorrt::{ProfileInput, TrtPlan, TrtProfile};

    fn value<'a>(options: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        options
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    fn unet_plan(fp16: bool) -> SessionPlan {
        SessionPlan {
            cuda_graph: true,
            tensorrt: Some(TrtPlan {
                name: "sd15/unet".into(),
                profile: Some(TrtProfile {
                    inputs: vec![ProfileInput {
                        name: "sample".into(),
                        min: vec![1, 4, 8, 8],
                        opt: vec![2, 4, 64, 64],
                        max: vec![16, 4, 128, 128],
                    }],
                }),
                fp16,
            }),
        }
    }

    #[test]
    fn cuda_graphs_are_asked_for_only_for_parts_that_can_be_captured_when_configured() {
        let mut exec = ExecutionConfig::default();
        let encoder = SessionPlan::default();
        let unet = unet_plan(false);
        let off = cuda_options(&exec, 1, &unet);
        assert_eq!(
            off,
            [
                ("device_id", "1".to_string()),
                ("use_tf32", "1".into()),
                ("enable_cuda_graph", "0".into()),
                ("cudnn_conv_algo_search", "EXHAUSTIVE".into()),
            ]
        );
        exec.cuda.cuda_graph = true;
        exec.cuda.memory_limit_bytes = Some(1 << 30);
        let on = cuda_options(&exec, 0, &unet);
        assert_eq!(value(&on, "enable_cuda_graph"), Some("1"));
        assert_eq!(value(&on, "gpu_mem_limit"), Some("1073741824"));
        assert_eq!(
            value(&cuda_options(&exec, 0, &encoder), "enable_cuda_graph"),
            Some("0"),
            "the text encoders and the VAE are never captured"
        );
        assert_eq!(
            value(
                &tensorrt_options(&exec, 0, &unet, "10.13.3"),
                "trt_cuda_graph_enable"
            ),
            Some("1")
        );
        assert_eq!(
            value(
                &tensorrt_options(&exec, 0, &encoder, "10.13.3"),
                "trt_cuda_graph_enable"
            ),
            None
        );
    }

    #[test]
    fn tensorrt_gets_the_profile_caches_per_version_and_fp16_for_float16_parts() {
        let mut exec = ExecutionConfig::default();
        exec.tensorrt.fp16 = false;
        exec.tensorrt.engine_cache = Some("/cache/engines".into());
        exec.tensorrt.timing_cache = Some("/cache/timing".into());
        let o = tensorrt_options(&exec, 0, &unet_plan(true), "10.13.3");
        assert_eq!(value(&o, "trt_fp16_enable"), Some("1"));
        assert_eq!(value(&o, "trt_engine_cache_enable"), Some("1"));
        let key = unet_plan(true).tensorrt.unwrap().profile.unwrap().key();
        assert_eq!(
            value(&o, "trt_engine_cache_path"),
            Some(format!("/cache/engines/sd15/unet/trt-10.13.3-{key}").as_str())
        );
        assert_eq!(
            value(&o, "trt_timing_cache_path"),
            Some("/cache/timing/trt-10.13.3")
        );
        assert_eq!(value(&o, "trt_profile_min_shapes"), Some("sample:1x4x8x8"));
        assert_eq!(
            value(&o, "trt_profile_opt_shapes"),
            Some("sample:2x4x64x64")
        );
        assert_eq!(
            value(&o, "trt_profile_max_shapes"),
            Some("sample:16x4x128x128")
        );
        let fp32 = tensorrt_options(&exec, 0, &unet_plan(false), "10.13.3");
        assert_eq!(
            value(&fp32, "trt_fp16_enable"),
            Some("0"),
            "a float32 part stays float32"
        );
        exec.tensorrt.fp16 = true;
        let forced = tensorrt_options(&exec, 0, &unet_plan(false), "10.13.3");
        assert_eq!(value(&forced, "trt_fp16_enable"), Some("1"));
        let bare = tensorrt_options(&ExecutionConfig::default(), 0, &SessionPlan::default(), "x");
        assert!(value(&bare, "trt_engine_cache_path").is_none());
        assert!(value(&bare, "trt_profile_min_shapes").is_none());
    }
}
