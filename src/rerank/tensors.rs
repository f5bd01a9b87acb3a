//! Tensors in and out of ONNX Runtime in the element type each rerank model takes (the few
//! helpers the reranker needs, kept here so the module stands on its own).

use half::f16;
use ndarray::ArrayD;
use ort::value::{DynValue, Tensor};

use crate::model::Elem;

/// Float data of `shape` as float32, or float16 for a float16 model.
pub(crate) fn float_tensor(shape: &[usize], data: &[f32], elem: Elem) -> ort::Result<DynValue> {
    Ok(match elem {
        Elem::F16 => {
            let data: Vec<f16> = data.iter().map(|v| f16::from_f32(*v)).collect();
            Tensor::from_array((shape.to_vec(), data))?.into_dyn()
        }
        _ => Tensor::from_array((shape.to_vec(), data.to_vec()))?.into_dyn(),
    })
}

/// Integer ids or masks as int64 or int32, whichever the model takes.
pub(crate) fn int_tensor(shape: &[usize], values: &[i64], elem: Elem) -> ort::Result<DynValue> {
    Ok(match elem {
        Elem::I32 => {
            let data: Vec<i32> = values.iter().map(|v| *v as i32).collect();
            Tensor::from_array((shape.to_vec(), data))?.into_dyn()
        }
        _ => Tensor::from_array((shape.to_vec(), values.to_vec()))?.into_dyn(),
    })
}

/// A float output (float32 or float16) as float32.
pub(crate) fn extract_float(value: &DynValue) -> ort::Result<ArrayD<f32>> {
    if let Ok(a) = value.try_extract_array::<f32>() {
        return Ok(a.to_owned());
    }
    let a = value.try_extract_array::<f16>()?;
    Ok(a.mapv(f16::to_f32))
}
