//! What each part's session is created for ([`SessionPlan`]): CUDA graphs for the UNet only
//! (ONNX Runtime's own SDXL demo finds the second text encoder cannot be captured, and only the
//! UNet runs often enough to gain), and, when TensorRT is configured, the optimization profile
//! of the part's dynamic inputs from the sizes and batches jobs may ask for
//! ([`crate::runtime::config::JobShapes`]), its engine cache name and precision.

use std::path::Path;

use crate::runtime::SessionPlan;
use crate::runtime::config::{ExecutionConfig, ProviderKind, TensorRtConfig};
use crate::runtime::onnx_inputs;
use crate::runtime::signature::{Elem, Port};
use crate::runtime::tensorrt::{ProfileInput, TrtPlan, TrtProfile};

use super::Component;

/// Pixels per latent pixel of SD's VAE (all supported families).
const LATENT_SCALE: u32 = 8;

/// Tokens in one text-encoder window.
const WINDOW: i64 = 77;

/// The plan of `component`'s session from `file` of model `model`.
pub fn session_plan(
    exec: &ExecutionConfig,
    model: &str,
    component: Component,
    file: &Path,
) -> SessionPlan {
    let tensorrt = exec
        .providers
        .contains(&ProviderKind::Tensorrt)
        .then(|| tensorrt_plan(&exec.tensorrt, model, component, file));
    SessionPlan {
        cuda_graph: component == Component::Unet,
        tensorrt,
    }
}

fn tensorrt_plan(t: &TensorRtConfig, model: &str, component: Component, file: &Path) -> TrtPlan {
    let name = format!("{model}/{}", component.dir());
    let ports = match onnx_inputs::read(file) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no TensorRT optimization profile for this part: TensorRT builds for the shapes it sees");
            return TrtPlan {
                name,
                profile: None,
                fp16: false,
            };
        }
    };
    let fp16 = ports
        .inputs
        .iter()
        .chain(&ports.outputs)
        .any(|p| p.elem == Elem::F16);
    let profile = match profile(component, &ports.inputs, t) {
        Ok(p) if p.inputs.is_empty() => None,
        Ok(p) => Some(p),
        Err(why) => {
            tracing::warn!(file = %file.display(), reason = %why, "no TensorRT optimization profile for this part: TensorRT builds for the shapes it sees");
            None
        }
    };
    TrtPlan {
        name,
        profile,
        fp16,
    }
}

/// min, opt, max.
type Range = [i64; 3];

/// The profile of a part's dynamic inputs: batch on axis 0, height and width on the axes 2 and
/// 3 of images and latents, the sequence on axis 1 of the UNet's text embeddings (several
/// 77-token windows for long prompts); fixed axes as they are. Inputs without a dynamic axis
/// (the scalar timestep) are left out.
pub fn profile(
    component: Component,
    inputs: &[Port],
    t: &TensorRtConfig,
) -> Result<TrtProfile, String> {
    let j = &t.jobs;
    let windows = i64::from(t.max_prompt_windows.max(1));
    let (opt_b, max_b) = (i64::from(j.opt_batch), i64::from(j.max_batch));
    let batch: Range = match component {
        Component::Unet => [1, 2 * opt_b, 2 * max_b],
        // Plain prompts: one or two sequences; AUTOMATIC1111's: every window of both prompts
        // and an empty one.
        Component::TextEncoder | Component::TextEncoder2 => [1, 2, 2 * windows + 1],
        // One image at a time (see the pipeline's decode).
        Component::VaeDecoder => [1, 1, 1],
        Component::VaeEncoder => [1, 1, max_b],
    };
    let min_side = t.min_side.max(LATENT_SCALE);
    let max_side = j
        .max_side
        .min(u32::try_from(j.max_pixels / u64::from(min_side)).unwrap_or(u32::MAX))
        .max(min_side);
    let scale = match component {
        Component::VaeEncoder => 1,
        _ => LATENT_SCALE,
    };
    let side = |opt: u32| -> Range {
        let opt = opt.clamp(min_side, max_side);
        [min_side, opt, max_side].map(|s| i64::from(s / scale))
    };
    let (height, width) = (side(j.opt_height), side(j.opt_width));
    let sequence: Range = match component {
        Component::Unet => [WINDOW, WINDOW, WINDOW * windows],
        _ => [WINDOW; 3],
    };
    let mut profile = TrtProfile::default();
    for port in inputs.iter().filter(|p| p.dims.iter().any(|&d| d < 0)) {
        let mut ranges = Vec::with_capacity(port.dims.len());
        for (axis, &d) in port.dims.iter().enumerate() {
            ranges.push(match (axis, port.dims.len()) {
                _ if d >= 0 => [d; 3],
                (0, _) => batch,
                (2, 4) => height,
                (3, 4) => width,
                (1, 2 | 3) => sequence,
                _ => {
                    return Err(format!(
                        "input '{}' has a dynamic axis {axis} (shape {:?}) whose range is unknown",
                        port.name, port.dims
                    ));
                }
            });
        }
        let pick = |i: usize| ranges.iter().map(|r| r[i]).collect();
        profile.inputs.push(ProfileInput {
            name: port.name.clone(),
            min: pick(0),
            opt: pick(1),
            max: pick(2),
        });
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::JobShapes;
    use crate::runtime::signature::port;

    fn config() -> TensorRtConfig {
        TensorRtConfig {
            jobs: JobShapes {
                max_side: 1024,
                max_pixels: 1024 * 1024,
                opt_width: 512,
                opt_height: 768,
                opt_batch: 4,
                max_batch: 8,
            },
            ..TensorRtConfig::default()
        }
    }

    #[test]
    fn the_sd_unet_profile_covers_the_configured_sizes_and_guided_batches() {
        let inputs = [
            port("sample", Elem::F16, &[-1, 4, -1, -1]),
            port("timestep", Elem::F16, &[]),
            port("encoder_hidden_states", Elem::F16, &[-1, -1, 768]),
        ];
        let p = profile(Component::Unet, &inputs, &config()).unwrap();
        assert_eq!(
            p.min_shapes(),
            "sample:1x4x32x32,encoder_hidden_states:1x77x768"
        );
        assert_eq!(
            p.opt_shapes(),
            "sample:8x4x96x64,encoder_hidden_states:8x77x768"
        );
        assert_eq!(
            p.max_shapes(),
            "sample:16x4x128x128,encoder_hidden_states:16x231x768"
        );
    }

    #[test]
    fn sdxl_inputs_fixed_axes_and_the_other_parts() {
        let unet = [
            port("sample", Elem::F16, &[-1, 4, -1, -1]),
            port("timestep", Elem::F16, &[]),
            port("encoder_hidden_states", Elem::F16, &[-1, 77, 2048]),
            port("text_embeds", Elem::F16, &[-1, 1280]),
            port("time_ids", Elem::F16, &[-1, 6]),
        ];
        let p = profile(Component::Unet, &unet, &config()).unwrap();
        assert_eq!(
            p.max_shapes(),
            "sample:16x4x128x128,encoder_hidden_states:16x77x2048,text_embeds:16x1280,time_ids:16x6"
        );
        let text = [port("input_ids", Elem::I64, &[-1, -1])];
        let p = profile(Component::TextEncoder2, &text, &config()).unwrap();
        assert_eq!(
            (p.min_shapes(), p.opt_shapes(), p.max_shapes()),
            (
                "input_ids:1x77".to_string(),
                "input_ids:2x77".to_string(),
                "input_ids:7x77".to_string()
            )
        );
        let vae = [port("latent_sample", Elem::F32, &[-1, 4, -1, -1])];
        let p = profile(Component::VaeDecoder, &vae, &config()).unwrap();
        assert_eq!(p.max_shapes(), "latent_sample:1x4x128x128");
        let enc = [port("sample", Elem::F32, &[-1, 3, -1, -1])];
        let p = profile(Component::VaeEncoder, &enc, &config()).unwrap();
        assert_eq!(p.min_shapes(), "sample:1x3x256x256", "pixels, not latents");
        let fixed = [port("sample", Elem::F32, &[2, 4, 64, 64])];
        assert!(
            profile(Component::Unet, &fixed, &config())
                .unwrap()
                .inputs
                .is_empty()
        );
    }

    #[test]
    fn a_dynamic_axis_of_unknown_meaning_gives_no_profile() {
        let odd = [port("sample", Elem::F32, &[-1, -1, 64, 64])];
        let err = profile(Component::Unet, &odd, &config()).unwrap_err();
        assert!(err.contains("'sample' has a dynamic axis 1"), "{err}");
    }

    #[test]
    fn max_pixels_bounds_the_longest_side_and_the_default_size_is_clamped() {
        let mut c = config();
        c.jobs.max_side = 4096;
        c.jobs.max_pixels = 512 * 512;
        c.jobs.opt_height = 8;
        let sample = [port("sample", Elem::F32, &[-1, 4, -1, -1])];
        let p = profile(Component::Unet, &sample, &c).unwrap();
        // 512² pixels with a 256-pixel side at least: the other side is at most 1024.
        assert_eq!(p.max_shapes(), "sample:16x4x128x128");
        assert_eq!(p.opt_shapes(), "sample:8x4x32x64");
    }

    #[test]
    fn only_the_unet_is_captured_in_cuda_graphs_and_tensorrt_plans_only_with_tensorrt() {
        let exec = ExecutionConfig::default();
        let file = Path::new("/nonexistent/unet/model.onnx");
        let unet = session_plan(&exec, "m", Component::Unet, file);
        assert!(unet.cuda_graph && unet.tensorrt.is_none());
        for c in [
            Component::TextEncoder,
            Component::TextEncoder2,
            Component::VaeDecoder,
            Component::VaeEncoder,
        ] {
            assert!(!session_plan(&exec, "m", c, file).cuda_graph, "{c}");
        }
        let mut trt = exec.clone();
        trt.providers = vec![ProviderKind::Tensorrt, ProviderKind::Cpu];
        let plan = session_plan(&trt, "m", Component::Unet, file)
            .tensorrt
            .unwrap();
        assert_eq!(plan.name, "m/unet");
        assert_eq!(plan.profile, None, "an unreadable file gives no profile");
    }
}
