//! `sdspool-source.json` of an import through a template, with the fields the Python conversion
//! writes (`onnx/import_checkpoint.py` `provenance`: the checkpoint's SHA-256 and AUTOMATIC1111's
//! old hash, each LoRA's name, SHA-256, weight and — for a `.safetensors` LoRA — the hash
//! AUTOMATIC1111 records for it, dtype, optimized, tool), plus `"route": "template"` and the
//! template's name.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::ImportError;
use crate::engine::checkpoint::Family;
use crate::engine::model::checkpoint_hash::{self, CheckpointHash};
use crate::engine::model::provenance::{
    CheckpointSource, FILE, FORMAT, FileSource, ImportTool, LoraSource, Provenance, Sha256Hex,
    SourceDtype, SourceFamily,
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
    let sha256 = checkpoint_hash::hash_file(path).map_err(io(path))?.sha256;
    let safetensors = path.extension().is_some_and(|e| e == "safetensors");
    Ok(LoraSource {
        name: path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file: file_name(path),
        sha256,
        // the weight as typed (0.8, not float32's 0.800000011920929)
        weight: weight.to_string().parse().unwrap_or(f64::from(weight)),
        addnet_sha256: if safetensors {
            Some(addnet_sha256(path).map_err(io(path))?)
        } else {
            None
        },
    })
}

/// The hash AUTOMATIC1111 records for a `.safetensors` LoRA: its `sshs_model_hash` metadata when
/// it has one, else kohya's "addnet" hash, the SHA-256 of the file after its header.
fn addnet_sha256(path: &Path) -> std::io::Result<Sha256Hex> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header)?;
    let stored = serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|h| {
            h["__metadata__"]["sshs_model_hash"]
                .as_str()
                .map(str::to_string)
        })
        .and_then(|h| Sha256Hex::try_from(h).ok());
    if let Some(hash) = stored {
        return Ok(hash);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Sha256Hex::try_from(hex).expect("64 hex digits"))
}
