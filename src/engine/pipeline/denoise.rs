//! The denoising loop: the UNet with classifier-free guidance, driven by a scheduler. The same
//! for every family: the UNet's input and output names come from the family's graph, and the
//! conditioning inputs are whatever the family's prompt encoding supplied.

use std::ops::ControlFlow;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD, Axis};

use super::PipelineError;
use super::conditioning::{CondInput, Conditioning, ScheduledConditioning};
use super::unet_io::{Batched, UnetIo};
use crate::engine::model::Part;
use crate::engine::model::family::UnetGraph;
use crate::engine::scheduler::Scheduler;

/// Progress of the loop, given to the per-step callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// 0-based UNet call of this batch.
    pub index: usize,
    /// UNet calls in this batch (PNDM makes one more than the steps asked for).
    pub total: usize,
}

/// Runs the whole schedule on `latents` (`[n, c, h, w]`, already scaled by
/// `init_noise_sigma`). `noise(step)` supplies the per-step noise of stochastic schedulers, one
/// `[n, c, h, w]` block per step that needs it. `on_step` may stop the loop.
pub fn denoise(
    unet: &mut Part,
    graph: &UnetGraph,
    scheduler: &mut dyn Scheduler,
    latents: ArrayD<f32>,
    cond: &Conditioning,
    noise: &mut dyn FnMut(usize) -> Result<ArrayD<f32>, PipelineError>,
    on_step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> Result<ArrayD<f32>, PipelineError> {
    let cond = ScheduledConditioning::constant(cond.clone());
    denoise_scheduled(unet, graph, scheduler, latents, &cond, noise, on_step)
}

/// [`denoise`] with conditioning that may change from one UNet call to the next.
pub fn denoise_scheduled(
    unet: &mut Part,
    graph: &UnetGraph,
    scheduler: &mut dyn Scheduler,
    latents: ArrayD<f32>,
    scheduled: &ScheduledConditioning,
    noise: &mut dyn FnMut(usize) -> Result<ArrayD<f32>, PipelineError>,
    on_step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> Result<ArrayD<f32>, PipelineError> {
    let all = 0..scheduler.timesteps().len();
    denoise_range(
        unet, graph, scheduler, latents, scheduled, all, noise, on_step,
    )
}

/// [`denoise_scheduled`] over the schedule's UNet calls `range` only: a base model that hands
/// over part-way (diffusers' `denoising_end`), a refiner that takes over (`denoising_start`).
#[allow(clippy::too_many_arguments)]
pub fn denoise_range(
    unet: &mut Part,
    graph: &UnetGraph,
    scheduler: &mut dyn Scheduler,
    mut latents: ArrayD<f32>,
    scheduled: &ScheduledConditioning,
    range: std::ops::Range<usize>,
    noise: &mut dyn FnMut(usize) -> Result<ArrayD<f32>, PipelineError>,
    on_step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> Result<ArrayD<f32>, PipelineError> {
    let cond = &scheduled.start;
    let n = latents.len_of(Axis(0));
    let file = unet.loaded.file.clone();
    let guided = cond.guidance.is_some();
    let timesteps: Vec<f32> = scheduler.timesteps().to_vec();
    let total = timesteps.len();
    // With guidance, [uncond…, cond…] see the same latents.
    let batch = if guided { 2 * n } else { n };
    let mut shape = latents.shape().to_vec();
    shape[0] = batch;
    let first = batched_conditioning(unet, scheduled.inputs_at(range.start), cond.guidance, n)?;
    let mut io = UnetIo::new(unet, graph, &shape, first)?;
    for (i, &t) in timesteps
        .iter()
        .enumerate()
        .take(range.end)
        .skip(range.start)
    {
        if i > range.start && scheduled.changes_at(i) {
            let next = batched_conditioning(unet, scheduled.inputs_at(i), cond.guidance, n)?;
            io.condition(unet, graph, next)?;
        }
        // scale_model_input is element-wise: scaling the n latents once is scaling both halves.
        let scaled = scheduler.scale_model_input(latents.view(), i);
        let scaled = scaled.as_standard_layout();
        let data = scaled.as_slice().expect("standard layout");
        let parts: &[&[f32]] = if guided { &[data, data] } else { &[data] };
        let noise_pred = io.run(unet, graph, parts, t, |out| {
            guide(out, n, cond.guidance, &shape, graph, &file)
        })?;
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

/// Each conditioning input as the UNet takes it for `n` latents: `[uncond × n, cond × n]` with
/// guidance, `[cond × n]` without.
fn batched_conditioning(
    unet: &Part,
    inputs: &[CondInput],
    guidance: Option<f32>,
    n: usize,
) -> Result<Vec<Batched>, PipelineError> {
    let file = unet.file();
    let mut out = Vec::with_capacity(inputs.len());
    for input in inputs {
        let mut parts = Vec::new();
        if guidance.is_some() {
            let uncond = input.uncond.as_ref().ok_or_else(|| PipelineError::Shape {
                file: file.display().to_string(),
                what: format!(
                    "conditioning input {} has no negative-prompt value, but guidance is on",
                    input.name
                ),
            })?;
            parts.extend(std::iter::repeat_n(uncond.view(), n));
        }
        parts.extend(std::iter::repeat_n(input.cond.view(), n));
        let batched = ndarray::concatenate(Axis(0), &parts).map_err(|e| shape_err(file, e))?;
        out.push((input.name, batched));
    }
    Ok(out)
}

/// The noise prediction from the UNet's output `[batch, c, h, w]`: `u + g·(c − u)` over the
/// `[uncond…, cond…]` halves with guidance, else the output itself.
fn guide(
    out: ArrayViewD<'_, f32>,
    n: usize,
    guidance: Option<f32>,
    expected: &[usize],
    graph: &UnetGraph,
    file: &Path,
) -> Result<ArrayD<f32>, PipelineError> {
    if out.shape() != expected {
        return Err(PipelineError::Shape {
            file: file.display().to_string(),
            what: format!(
                "{} has shape {:?}, expected {:?}",
                graph.out_sample,
                out.shape(),
                expected
            ),
        });
    }
    let Some(g) = guidance else {
        return Ok(out.to_owned());
    };
    let uncond = out.slice_axis(Axis(0), (0..n).into());
    let text = out.slice_axis(Axis(0), (n..2 * n).into());
    Ok(&uncond + &((&text - &uncond) * g))
}

fn shape_err(file: &Path, source: ndarray::ShapeError) -> PipelineError {
    PipelineError::Concatenate {
        file: file.display().to_string(),
        source,
    }
}
