//! The UNet's inputs and outputs over the steps of one batch, fed one of two ways:
//!
//! - bound (`execution.io_binding`, the default): buffers allocated once per size and batch
//!   and kept by the session ([`crate::runtime::binding`]), the conditioning written once per
//!   prompt (and per change of AUTOMATIC1111's scheduled conditioning), the scaled latents and
//!   the timestep written at every step, the noise prediction read back; on a GPU only those
//!   cross between host and device, and the buffers' fixed addresses let a CUDA graph replay;
//! - plain: the sample and timestep tensors allocated once per batch and refilled, the
//!   conditioning tensors made once per prompt, every step's inputs handed to a plain run.
//!
//! Both give the same numbers (the tests render with each).

use ndarray::{ArrayD, ArrayViewD};
use ort::value::DynValue;

use super::PipelineError;
use crate::engine::model::Part;
use crate::engine::model::family::UnetGraph;
use crate::runtime::binding::{BindingSpec, TensorSpec};
use crate::runtime::tensors::{
    extract_float, fill_float, float_tensor, float_tensor_from, ort_err, set_timestep,
    timestep_tensor,
};

/// A conditioning input batched as the UNet takes it.
pub type Batched = (&'static str, ArrayD<f32>);

/// The UNet's inputs and outputs for one batch of latents `[batch, c, h, w]`.
pub enum UnetIo {
    Bound(BindingSpec),
    Plain {
        sample: DynValue,
        timestep: DynValue,
        conditioning: Vec<(&'static str, DynValue)>,
    },
}

impl UnetIo {
    /// Prepares the inputs of a batch of `shape` with its first conditioning.
    pub fn new(
        unet: &mut Part,
        graph: &UnetGraph,
        shape: &[usize],
        conditioning: Vec<Batched>,
    ) -> Result<UnetIo, PipelineError> {
        let file = unet.loaded.file.clone();
        let f = unet.feeding;
        let mut io = if unet.loaded.io_binding {
            UnetIo::Bound(spec(unet, graph, shape, &conditioning))
        } else {
            let zeros = vec![0.0; shape.iter().product()];
            UnetIo::Plain {
                sample: float_tensor_from(shape, &zeros, f.float).map_err(|e| ort_err(&file, e))?,
                timestep: timestep_tensor(0.0, f.aux, f.aux_rank, shape[0])
                    .map_err(|e| ort_err(&file, e))?,
                conditioning: Vec::new(),
            }
        };
        io.condition(unet, graph, conditioning)?;
        Ok(io)
    }

    /// Sets the conditioning inputs (new buffers when their shapes changed).
    pub fn condition(
        &mut self,
        unet: &mut Part,
        graph: &UnetGraph,
        conditioning: Vec<Batched>,
    ) -> Result<(), PipelineError> {
        let file = unet.loaded.file.clone();
        let err = |e| ort_err(&file, e);
        match self {
            UnetIo::Bound(current) => {
                *current = spec(unet, graph, &current.inputs[0].shape, &conditioning);
                let bound = unet.loaded.bound(current).map_err(err)?;
                for (name, value) in &conditioning {
                    let data = value.as_standard_layout();
                    let data = data.as_slice().expect("standard layout");
                    bound.write_float(name, &[data]).map_err(err)?;
                }
            }
            UnetIo::Plain {
                conditioning: c, ..
            } => {
                *c = conditioning
                    .iter()
                    .map(|(name, v)| Ok((*name, float_tensor(v.view(), unet.feeding.float)?)))
                    .collect::<ort::Result<_>>()
                    .map_err(err)?;
            }
        }
        Ok(())
    }

    /// One UNet call on `sample` (the parts one after the other) at timestep `t`; `read` gets
    /// the output.
    pub fn run(
        &mut self,
        unet: &mut Part,
        graph: &UnetGraph,
        sample: &[&[f32]],
        t: f32,
        read: impl FnOnce(ArrayViewD<'_, f32>) -> Result<ArrayD<f32>, PipelineError>,
    ) -> Result<ArrayD<f32>, PipelineError> {
        let file = unet.loaded.file.clone();
        let err = |e| ort_err(&file, e);
        match self {
            UnetIo::Bound(spec) => {
                let bound = unet.loaded.bound(spec).map_err(err)?;
                bound.write_float(graph.sample, sample).map_err(err)?;
                bound.write_timestep(graph.timestep, t).map_err(err)?;
                unet.loaded.run_bound(spec).map_err(err)?;
                let bound = unet.loaded.bound(spec).map_err(err)?;
                bound.read_float(graph.out_sample, read).map_err(err)?
            }
            UnetIo::Plain {
                sample: s,
                timestep,
                conditioning,
            } => {
                let f = unet.feeding;
                fill_float(s, sample, f.float).map_err(err)?;
                set_timestep(timestep, t, f.aux).map_err(err)?;
                let mut inputs = ort::inputs![
                    graph.sample => &*s,
                    graph.timestep => &*timestep,
                ];
                for (name, value) in conditioning.iter() {
                    inputs.push(((*name).into(), value.into()));
                }
                let outputs = unet.loaded.run(inputs).map_err(err)?;
                let value = &outputs[graph.out_sample];
                match value.try_extract_array::<f32>() {
                    Ok(out) => read(out),
                    Err(_) => read(extract_float(value).map_err(err)?.view()),
                }
            }
        }
    }
}

/// The bound tensors of a batch: sample, timestep and conditioning in, the prediction out.
fn spec(unet: &Part, graph: &UnetGraph, shape: &[usize], conditioning: &[Batched]) -> BindingSpec {
    let f = unet.feeding;
    let timestep: &[usize] = if f.aux_rank == 0 { &[] } else { &shape[..1] };
    let out_elem = unet
        .signature
        .output(graph.out_sample)
        .map_or(f.float, |p| p.elem);
    let mut inputs = vec![
        TensorSpec::new(graph.sample, f.float, shape),
        TensorSpec::new(graph.timestep, f.aux, timestep),
    ];
    inputs.extend(
        conditioning
            .iter()
            .map(|(name, v)| TensorSpec::new(name, f.float, v.shape())),
    );
    BindingSpec {
        inputs,
        outputs: vec![TensorSpec::new(graph.out_sample, out_elem, shape)],
    }
}
