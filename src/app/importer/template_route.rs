//! An import through a template, without Python: the template folder copied into the staging
//! folder, its data files written with the checkpoint's tensors ([`template::fill`]), the
//! prediction type decided (SD 2.x: AUTOMATIC1111's test on the filled UNet) and written into the
//! scheduler config, and `sdspool-source.json` written as the Python conversion writes it, plus
//! `"route": "template"` and the template's name. It reports the same events as the Python tool,
//! so the progress display and the result are the same.

use std::path::Path;
use std::time::Instant;

use super::events::{Event, Stage, StageState};
use super::runner::{Converted, Request};
use super::{ImportError, source_file};
use crate::engine::checkpoint::lora_fuse;
use crate::engine::checkpoint::prediction::{self, Prediction};
use crate::engine::checkpoint::template::{self, Deltas, Replacement, Template};
use crate::engine::checkpoint::tensors::TensorFile;
use crate::engine::checkpoint::weights_map::{self, WeightsMap, WeightsMapError};
use crate::engine::checkpoint::{Family, Header, family};
use crate::engine::model::checkpoint_hash;
use crate::runtime::{Runtime, RuntimeError};

/// An import through `template`.
pub struct TemplateImport<'a> {
    pub template: &'a Template,
    pub header: Header,
    /// `--vae`: the file put in place of the checkpoint's VAE.
    pub vae: Option<Replacement>,
    /// ONNX Runtime for the SD 2.x prediction test, started only when needed.
    pub runtime: &'a dyn Fn() -> Result<Runtime, RuntimeError>,
    pub device_id: i32,
}

/// The stages this import reports, in order.
pub fn stages(family: Family, loras: bool) -> Vec<Stage> {
    Stage::TEMPLATE
        .into_iter()
        .filter(|s| match s {
            Stage::Lora => loras,
            Stage::Predict => family == Family::Sd2,
            _ => true,
        })
        .collect()
}

fn timed<T>(
    stage: Stage,
    on_event: &mut dyn FnMut(&Event),
    run: impl FnOnce() -> Result<T, ImportError>,
) -> Result<T, ImportError> {
    on_event(&Event::Stage {
        stage,
        state: StageState::Start,
        seconds: None,
    });
    let started = Instant::now();
    let value = run()?;
    on_event(&Event::Stage {
        stage,
        state: StageState::Done,
        seconds: Some(started.elapsed().as_secs_f64()),
    });
    Ok(value)
}

/// Imports `request.checkpoint` (with `request.loras` fused) into `request.out` through the
/// template.
pub fn convert(
    job: TemplateImport,
    request: &Request,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Converted, ImportError> {
    let template = job.template;
    let family = template.family;
    // hashed while the tensors are written (both read the checkpoint; SD 1.5's is 4 GB)
    let hashing = {
        let path = request.checkpoint.clone();
        std::thread::spawn(move || checkpoint_hash::hash_file(&path))
    };
    let out = &request.out;
    let header = job.header.clone();
    let deltas = if request.loras.is_empty() {
        Deltas::new()
    } else {
        timed(Stage::Lora, on_event, || {
            Ok(lora_fuse::deltas(&request.loras, &header, family)?)
        })?
    };
    timed(Stage::Fill, on_event, || {
        template::fill::copy_folder(template, out)?;
        let mut checkpoint = TensorFile::open(job.header)?;
        let mut vae = match job.vae {
            Some(v) => Some((TensorFile::open(v.header)?, v.layout)),
            None => None,
        };
        let vae = vae.as_mut().map(|(file, layout)| (file, *layout));
        template::fill::fill(template, out, &mut checkpoint, vae, &deltas)?;
        write_weights_map(template, out)
    })?;
    drop(deltas);
    let prediction = if family == Family::Sd2 {
        timed(Stage::Predict, on_event, || {
            let runtime = (job.runtime)().map_err(prediction::PredictionError::from)?;
            let width = family::text_width(&header, family).unwrap_or(0) as usize;
            let unet = out.join("unet/model.onnx");
            let decided = prediction::decide_sd2(&header, &runtime, &unet, job.device_id, width)?;
            Ok(decided.prediction)
        })?
    } else if header.tensors.contains_key("v_pred") {
        Prediction::V
    } else {
        Prediction::Epsilon
    };
    write_prediction(out, template, prediction)?;
    on_event(&Event::Detected {
        family: family.as_str().into(),
        prediction_type: prediction.as_str().into(),
    });
    timed(Stage::Write, on_event, || {
        let hash = hashing
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")))
            .map_err(io(&request.checkpoint))?;
        let checkpoint = (request.checkpoint.as_path(), hash);
        let inputs = source_file::Inputs {
            checkpoint,
            loras: &request.loras,
            vae: request.vae.as_deref(),
        };
        source_file::write(out, &template.name(), family, inputs)
    })?;
    Ok(Converted {
        family: Some(family.as_str().into()),
        prediction_type: Some(prediction.as_str().into()),
        out: out.clone(),
    })
}

/// `sdspool-weights.json`: where the LoRA targets are, for LoRAs applied per job (job-lora).
fn write_weights_map(template: &Template, out: &Path) -> Result<(), ImportError> {
    WeightsMap::of(template).write(out).map_err(|e| match e {
        WeightsMapError::Write { path, source } | WeightsMapError::Read { path, source } => {
            ImportError::Io { path, source }
        }
        e @ (WeightsMapError::Field { .. } | WeightsMapError::Json { .. }) => ImportError::Refuse {
            path: out.join(weights_map::FILE),
            reason: e.to_string(),
        },
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { path, source }
}

/// Sets `key`s of the JSON object in `path` and writes it back (diffusers' layout: sorted keys,
/// two-space indent, a final newline).
fn edit_json(path: &Path, values: &[(&str, serde_json::Value)]) -> Result<(), ImportError> {
    let text = std::fs::read(path).map_err(io(path))?;
    let mut json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| ImportError::Refuse {
            path: path.to_path_buf(),
            reason: format!("the template's config is not a JSON object: {e}"),
        })?;
    for (key, value) in values {
        json.insert(key.to_string(), value.clone());
    }
    let text = serde_json::to_string_pretty(&json).expect("JSON values serialize") + "\n";
    std::fs::write(path, text).map_err(io(path))
}

/// The prediction type into the scheduler config; for SD 2.x also the UNet config's
/// `upcast_attention` and `sample_size`, as the Python conversion writes them (768-pixel
/// v-prediction models, 512-pixel epsilon ones).
fn write_prediction(
    out: &Path,
    template: &Template,
    prediction: Prediction,
) -> Result<(), ImportError> {
    let scheduler = out.join(&template.scheduler_config);
    edit_json(
        &scheduler,
        &[("prediction_type", prediction.as_str().into())],
    )?;
    let unet = out.join("unet/config.json");
    if template.family == Family::Sd2 && unet.is_file() {
        let v = prediction == Prediction::V;
        edit_json(
            &unet,
            &[
                ("upcast_attention", v.into()),
                ("sample_size", (if v { 96 } else { 64 }).into()),
            ],
        )?;
    }
    Ok(())
}
