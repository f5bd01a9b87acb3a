//! `sdspool-source.json` of an import through a template, with the fields the Python conversion
//! writes (`onnx/import_checkpoint.py` `provenance`: the checkpoint's SHA-256 and AUTOMATIC1111's
//! old hash, each LoRA's name, SHA-256, weight and — for a `.safetensors` LoRA — the hash
//! AUTOMATIC1111 records for it, dtype, optimized, tool), plus `"route": "template"` and the
//! template's name.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ImportError;
use crate::engine::checkpoint::Family;
use crate::engine::model::checkpoint_hash::{self, CheckpointHash};
use crate::engine::model::provenance::{
    CheckpointSource, FILE, FORMAT, FileSource, ImportTool, LoraSource, Provenance, SourceDtype,
    SourceFamily,
};

/// The version of the conversion `tool.sdspool_import` records (the Python tool's is 1 too).
const TOOL_VERSION: u32 = 1;

#[derive(Serialize)]
struct TemplateSource<'a> {
    #[serde(flatten)]
    provenance: &'a Provenance,
    route: &'static str,
    template: &'a str,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { path, source }
}

/// The files an import was made of.
pub struct Inputs<'a> {
    /// The checkpoint and its hashes.
    pub checkpoint: (&'a Path, CheckpointHash),
    pub loras: &'a [(PathBuf, f32)],
    pub vae: Option<&'a Path>,
}

/// Writes `<out>/sdspool-source.json`.
pub fn write(
    out: &Path,
    template: &str,
    family: Family,
    inputs: Inputs,
) -> Result<(), ImportError> {
    let (file, hash) = inputs.checkpoint;
    let vae = match inputs.vae {
        Some(path) => Some(FileSource {
            file: file_name(path),
            sha256: checkpoint_hash::hash_file(path).map_err(io(path))?.sha256,
        }),
        None => None,
    };
    let provenance = Provenance {
        format: FORMAT,
        checkpoint: CheckpointSource {
            file: file_name(file),
            sha256: hash.sha256,
            family: source_family(family),
            legacy_hash: hash.legacy,
        },
        loras: inputs
            .loras
            .iter()
            .map(|(path, weight)| lora_source(path, *weight))
            .collect::<Result<_, _>>()?,
        vae,
        dtype: Some(SourceDtype::Float32),
        optimized: Some(false),
        tool: Some(ImportTool {
            sdspool_import: Some(TOOL_VERSION),
            diffusers: None,
            optimum_onnx: None,
        }),
    };
    let source = TemplateSource {
        provenance: &provenance,
        route: "template",
        template,
    };
    let path = out.join(FILE);
    let text = serde_json::to_string_pretty(&source).expect("provenance serializes") + "\n";
    std::fs::write(&path, text).map_err(io(&path))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn source_family(family: Family) -> SourceFamily {
    match family {
        Family::Sd15 => SourceFamily::Sd15,
        Family::Sd2 => SourceFamily::Sd2,
        Family::Sdxl => SourceFamily::Sdxl,
        Family::SdxlRefiner => SourceFamily::SdxlRefiner,
    }
}

fn lora_source(path: &Path, weight: f32) -> Result<LoraSource, ImportError> {
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // the weight as typed (0.8, not float32's 0.800000011920929)
    let weight = weight.to_string().parse().unwrap_or(f64::from(weight));
    checkpoint_hash::lora_source(path, name, weight).map_err(io(path))
}
