//! Moving arrays in and out of ONNX Runtime in the element type each model wants.
//!
//! Callers compute in float32 (as diffusers does for its scheduler math); float16 models get
//! float16 tensors and their float16 outputs are widened back. Shared by the diffusion pipeline
//! and the CLIP reranker.

use std::path::{Path, PathBuf};

use half::f16;
use ndarray::{ArrayD, ArrayViewD};
use ort::value::{DynValue, Tensor, TensorValueTypeMarker, Value};

use super::signature::Elem;

/// An ONNX Runtime failure, with the model file it happened in.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", file.display())]
pub struct OrtCallError {
    pub file: PathBuf,
    #[source]
    pub source: ort::Error,
}

/// Wraps an ONNX Runtime error with the file of the session it came from.
pub fn ort_err(file: &Path, source: ort::Error) -> OrtCallError {
    OrtCallError {
        file: file.to_path_buf(),
        source,
    }
}

/// A float tensor in the model's precision.
pub fn float_tensor(a: ArrayViewD<'_, f32>, elem: Elem) -> ort::Result<DynValue> {
    match a.as_slice() {
        Some(data) => float_tensor_from(a.shape(), data, elem),
        None => float_tensor_from(a.shape(), &a.iter().copied().collect::<Vec<_>>(), elem),
    }
}

/// Float data of `shape` (row-major) as float32, or float16 for a float16 model.
pub fn float_tensor_from(shape: &[usize], data: &[f32], elem: Elem) -> ort::Result<DynValue> {
    Ok(match elem {
        Elem::F16 => {
            let data: Vec<f16> = data.iter().map(|v| f16::from_f32(*v)).collect();
            Tensor::from_array((shape.to_vec(), data))?.into_dyn()
        }
        _ => Tensor::from_array((shape.to_vec(), data.to_vec()))?.into_dyn(),
    })
}

/// Overwrites a float tensor made by [`float_tensor_from`] with `parts`, one after the other
/// (float16 for a float16 model): the UNet's input is allocated once per batch and refilled at
/// every step.
pub fn fill_float<T: TensorValueTypeMarker + ?Sized>(
    tensor: &mut Value<T>,
    parts: &[&[f32]],
    elem: Elem,
) -> ort::Result<()> {
    let given: usize = parts.iter().map(|p| p.len()).sum();
    let mismatch = |len: usize| {
        ort::Error::new(format!(
            "a tensor of {len} elements cannot take {given} values"
        ))
    };
    match elem {
        Elem::F16 => {
            let (_, data) = tensor.try_extract_tensor_mut::<f16>()?;
            if data.len() != given {
                return Err(mismatch(data.len()));
            }
            let values = parts.iter().flat_map(|p| p.iter());
            for (d, v) in data.iter_mut().zip(values) {
                *d = f16::from_f32(*v);
            }
        }
        _ => {
            let (_, data) = tensor.try_extract_tensor_mut::<f32>()?;
            if data.len() != given {
                return Err(mismatch(data.len()));
            }
            let mut at = 0;
            for p in parts {
                data[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        }
    }
    Ok(())
}

/// Sets every element of a tensor made by [`timestep_tensor`] to `t` (truncated for integer
/// exports, as [`timestep_tensor`] does).
pub fn set_timestep<T: TensorValueTypeMarker + ?Sized>(
    tensor: &mut Value<T>,
    t: f32,
    elem: Elem,
) -> ort::Result<()> {
    match elem {
        Elem::F16 => tensor
            .try_extract_tensor_mut::<f16>()?
            .1
            .fill(f16::from_f32(t)),
        Elem::I64 => tensor.try_extract_tensor_mut::<i64>()?.1.fill(t as i64),
        Elem::I32 => tensor.try_extract_tensor_mut::<i32>()?.1.fill(t as i32),
        _ => tensor.try_extract_tensor_mut::<f32>()?.1.fill(t),
    }
    Ok(())
}

/// Integer ids as int64 or int32, whichever the model takes.
pub fn int_tensor(shape: &[usize], ids: &[i64], elem: Elem) -> ort::Result<DynValue> {
    Ok(match elem {
        Elem::I32 => {
            let data: Vec<i32> = ids.iter().map(|v| *v as i32).collect();
            Tensor::from_array((shape.to_vec(), data))?.into_dyn()
        }
        _ => Tensor::from_array((shape.to_vec(), ids.to_vec()))?.into_dyn(),
    })
}

/// The UNet's timestep input: a scalar (optimum) or a `[batch]` vector (older exports), float or
/// integer. Integer exports truncate fractional timesteps (Euler, LMS), as they did in diffusers.
pub fn timestep_tensor(t: f32, elem: Elem, rank: usize, batch: usize) -> ort::Result<DynValue> {
    let shape: Vec<usize> = if rank == 0 { vec![] } else { vec![batch] };
    let n = if rank == 0 { 1 } else { batch };
    Ok(match elem {
        Elem::F16 => Tensor::from_array((shape, vec![f16::from_f32(t); n]))?.into_dyn(),
        Elem::I64 => Tensor::from_array((shape, vec![t as i64; n]))?.into_dyn(),
        Elem::I32 => Tensor::from_array((shape, vec![t as i32; n]))?.into_dyn(),
        _ => Tensor::from_array((shape, vec![t; n]))?.into_dyn(),
    })
}

/// Reads a float output (float32 or float16) as float32.
pub fn extract_float(value: &DynValue) -> ort::Result<ArrayD<f32>> {
    if let Ok(a) = value.try_extract_array::<f32>() {
        return Ok(a.to_owned());
    }
    let a = value.try_extract_array::<f16>()?;
    Ok(a.mapv(f16::to_f32))
}
