//! The denoising loop: the UNet with classifier-free guidance, driven by a scheduler.

use std::ops::ControlFlow;

use ndarray::{ArrayD, ArrayViewD, Axis};

use super::PipelineError;
use super::tensors::{extract_float, float_tensor, ort_err, timestep_tensor};
use crate::model::Part;
use crate::scheduler::Scheduler;

/// Progress of the loop, given to the per-step callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// 0-based UNet call of this batch.
    pub index: usize,
    /// UNet calls in this batch (PNDM makes one more than the steps asked for).
    pub total: usize,
}

/// What the loop needs besides the scheduler and the UNet.
pub struct Conditioning<'a> {
    /// `[1, seq, hidden]` embedding of the prompt.
    pub cond: ArrayViewD<'a, f32>,
    /// `[1, seq, hidden]` embedding of the negative prompt; `None` skips guidance.
    pub uncond: Option<ArrayViewD<'a, f32>>,
    pub guidance_scale: f32,
}

/// Runs the whole schedule on `latents` (`[n, 4, h, w]`, already scaled by
/// `init_noise_sigma`). `noise(step, shape)` supplies the per-step noise of stochastic
/// schedulers, one `[n, 4, h, w]` block per step that needs it. `on_step` may stop the loop.
pub fn denoise(
    unet: &mut Part,
    scheduler: &mut dyn Scheduler,
    mut latents: ArrayD<f32>,
    cond: &Conditioning<'_>,
    noise: &mut dyn FnMut(usize) -> Result<ArrayD<f32>, PipelineError>,
    on_step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> Result<ArrayD<f32>, PipelineError> {
    let n = latents.len_of(Axis(0));
    let file = unet.loaded.file.clone();
    let guided = cond.uncond.is_some();
    let encoder_states = {
        let mut parts = Vec::new();
        if let Some(u) = &cond.uncond {
            parts.extend(std::iter::repeat_n(u.view(), n));
        }
        parts.extend(std::iter::repeat_n(cond.cond.view(), n));
        ndarray::concatenate(Axis(0), &parts).map_err(|e| shape_err(&file, e))?
    };
    let states =
        float_tensor(encoder_states.view(), unet.feeding.float).map_err(|e| ort_err(&file, e))?;
    let timesteps: Vec<f32> = scheduler.timesteps().to_vec();
    let total = timesteps.len();
    for (i, &t) in timesteps.iter().enumerate() {
        let model_input = if guided {
            ndarray::concatenate(Axis(0), &[latents.view(), latents.view()])
                .map_err(|e| shape_err(&file, e))?
        } else {
            latents.clone()
        };
        let model_input = scheduler.scale_model_input(model_input.view(), i);
        let batch = model_input.len_of(Axis(0));
        let sample =
            float_tensor(model_input.view(), unet.feeding.float).map_err(|e| ort_err(&file, e))?;
        let timestep = timestep_tensor(t, unet.feeding.aux, unet.feeding.aux_rank, batch)
            .map_err(|e| ort_err(&file, e))?;
        let outputs = unet
            .loaded
            .run(ort::inputs![
                "sample" => sample,
                "timestep" => timestep,
                "encoder_hidden_states" => &states,
            ])
            .map_err(|e| ort_err(&file, e))?;
        let out = extract_float(&outputs["out_sample"]).map_err(|e| ort_err(&file, e))?;
        drop(outputs);
        if out.shape() != model_input.shape() {
            return Err(PipelineError::Shape {
                file: file.display().to_string(),
                what: format!(
                    "out_sample has shape {:?}, expected {:?}",
                    out.shape(),
                    model_input.shape()
                ),
            });
        }
        let noise_pred = if guided {
            let uncond = out.slice_axis(Axis(0), (0..n).into());
            let text = out.slice_axis(Axis(0), (n..2 * n).into());
            let g = cond.guidance_scale;
            &uncond + &((&text - &uncond) * g)
        } else {
            out
        };
        let step_noise = if scheduler.needs_noise(i) {
            Some(noise(i)?)
        } else {
            None
        };
        latents = scheduler.try_step(
            noise_pred.view(),
            i,
            latents.view(),
            step_noise.as_ref().map(|a| a.view()),
        )?;
        if on_step(Step { index: i, total }).is_break() {
            return Err(PipelineError::Cancelled { step: i + 1, total });
        }
    }
    Ok(latents)
}

fn shape_err(file: &std::path::Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Shape {
        file: file.display().to_string(),
        what: e.to_string(),
    }
}
