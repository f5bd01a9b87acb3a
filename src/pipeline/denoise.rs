//! The denoising loop: the UNet with classifier-free guidance, driven by a scheduler.

use std::ops::ControlFlow;

use ndarray::{ArrayD, ArrayViewD, Axis};

use super::PipelineError;
use crate::runtime::tensors::{
    extract_float, fill_float, float_tensor, float_tensor_from, ort_err, set_timestep,
    timestep_tensor,
};
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
    // The UNet's inputs are allocated once and refilled at every step: the scaled latents
    // (twice with guidance: [uncond…, cond…] see the same latents) and the timestep.
    let batch = if guided { 2 * n } else { n };
    let mut shape = latents.shape().to_vec();
    shape[0] = batch;
    let mut sample = float_tensor_from(
        &shape,
        &vec![0.0; shape.iter().product()],
        unet.feeding.float,
    )
    .map_err(|e| ort_err(&file, e))?;
    let mut timestep = timestep_tensor(0.0, unet.feeding.aux, unet.feeding.aux_rank, batch)
        .map_err(|e| ort_err(&file, e))?;
    for (i, &t) in timesteps.iter().enumerate() {
        // scale_model_input is element-wise: scaling the n latents once is scaling both halves.
        let scaled = scheduler.scale_model_input(latents.view(), i);
        let scaled = scaled.as_standard_layout();
        let data = scaled.as_slice().expect("standard layout");
        let parts: &[&[f32]] = if guided { &[data, data] } else { &[data] };
        fill_float(&mut sample, parts, unet.feeding.float).map_err(|e| ort_err(&file, e))?;
        set_timestep(&mut timestep, t, unet.feeding.aux).map_err(|e| ort_err(&file, e))?;
        let outputs = unet
            .loaded
            .run(ort::inputs![
                "sample" => &sample,
                "timestep" => &timestep,
                "encoder_hidden_states" => &states,
            ])
            .map_err(|e| ort_err(&file, e))?;
        let value = &outputs["out_sample"];
        let noise_pred = match value.try_extract_array::<f32>() {
            Ok(out) => guide(out, n, cond, &shape, &file)?,
            Err(_) => {
                let out = extract_float(value).map_err(|e| ort_err(&file, e))?;
                guide(out.view(), n, cond, &shape, &file)?
            }
        };
        drop(outputs);
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

/// The noise prediction from the UNet's output `[batch, 4, h, w]`: `u + g·(c − u)` over the
/// `[uncond…, cond…]` halves with guidance, else the output itself.
fn guide(
    out: ArrayViewD<'_, f32>,
    n: usize,
    cond: &Conditioning<'_>,
    expected: &[usize],
    file: &std::path::Path,
) -> Result<ArrayD<f32>, PipelineError> {
    if out.shape() != expected {
        return Err(PipelineError::Shape {
            file: file.display().to_string(),
            what: format!(
                "out_sample has shape {:?}, expected {:?}",
                out.shape(),
                expected
            ),
        });
    }
    if cond.uncond.is_none() {
        return Ok(out.to_owned());
    }
    let uncond = out.slice_axis(Axis(0), (0..n).into());
    let text = out.slice_axis(Axis(0), (n..2 * n).into());
    let g = cond.guidance_scale;
    Ok(&uncond + &((&text - &uncond) * g))
}

fn shape_err(file: &std::path::Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Shape {
        file: file.display().to_string(),
        what: e.to_string(),
    }
}
