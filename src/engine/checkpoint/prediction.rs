//! Whether an SD 2.x checkpoint predicts noise (epsilon) or velocity (v): a `v_pred` key says so
//! (ComfyUI's marker); otherwise AUTOMATIC1111's `is_using_v_parameterization_for_sd2` test, run
//! on the imported UNet through ONNX Runtime: sample 0.5 everywhere `[1, 4, 8, 8]`, timestep 999,
//! text conditioning 0.5 everywhere `[1, 77, width]`; v-prediction when the mean of
//! `out − sample` is below −1 (`onnx/import_checkpoint.py` `v_prediction_test` runs the same test
//! on the PyTorch UNet).

use std::path::Path;

use super::Header;
use crate::runtime::signature::Signature;
use crate::runtime::tensors::{
    OrtCallError, extract_float, float_tensor_from, ort_err, timestep_tensor,
};
use crate::runtime::{Runtime, RuntimeError};

/// The UNet's prediction type, as diffusers' scheduler configs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    V,
}

impl Prediction {
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
        }
    }
}

/// AUTOMATIC1111's threshold on the test's mean.
const V_BELOW: f32 = -1.0;

/// Why the test could not run.
#[derive(Debug, thiserror::Error)]
pub enum PredictionError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Run(#[from] OrtCallError),
    #[error("{}: the UNet has no input {name}", file.display())]
    NoInput {
        file: std::path::PathBuf,
        name: &'static str,
    },
}

/// The test's result: the prediction type and the mean it was decided by (`None` for `v_pred`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decided {
    pub prediction: Prediction,
    pub mean: Option<f32>,
}

/// Decides an SD 2.x checkpoint's prediction type: its `v_pred` key, else the test on `unet`
/// (an ONNX file) with text conditioning `width` wide.
pub fn decide_sd2(
    header: &Header,
    runtime: &Runtime,
    unet: &Path,
    device_id: i32,
    width: usize,
) -> Result<Decided, PredictionError> {
    if header.tensors.contains_key("v_pred") {
        return Ok(Decided {
            prediction: Prediction::V,
            mean: None,
        });
    }
    let mean = v_test_mean(runtime, unet, device_id, width)?;
    Ok(Decided {
        prediction: if mean < V_BELOW {
            Prediction::V
        } else {
            Prediction::Epsilon
        },
        mean: Some(mean),
    })
}

/// The mean of `out − sample` of AUTOMATIC1111's test.
pub fn v_test_mean(
    runtime: &Runtime,
    unet: &Path,
    device_id: i32,
    width: usize,
) -> Result<f32, PredictionError> {
    let mut loaded = runtime.session(unet, device_id)?;
    let signature = Signature::of(&loaded.session);
    let port = |name: &'static str| {
        signature
            .input(name)
            .cloned()
            .ok_or_else(|| PredictionError::NoInput {
                file: unet.to_path_buf(),
                name,
            })
    };
    let (sample, timestep, text) = (
        port("sample")?,
        port("timestep")?,
        port("encoder_hidden_states")?,
    );
    let err = |e| ort_err(unet, e);
    let x = float_tensor_from(&[1, 4, 8, 8], &[0.5; 256], sample.elem).map_err(err)?;
    let t = timestep_tensor(999.0, timestep.elem, timestep.rank(), 1).map_err(err)?;
    let c = float_tensor_from(&[1, 77, width], &vec![0.5; 77 * width], text.elem).map_err(err)?;
    let outputs = loaded
        .run(ort::inputs!["sample" => &x, "timestep" => &t, "encoder_hidden_states" => &c])
        .map_err(err)?;
    let out = extract_float(&outputs[0]).map_err(err)?;
    let n = out.len().max(1) as f64;
    Ok((out.iter().map(|v| f64::from(*v) - 0.5).sum::<f64>() / n) as f32)
}
