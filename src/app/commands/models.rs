//! `sdspool models`: every configured model, its family, its signature check, and the
//! execution provider that really serves each of its sessions.

use std::fmt::Write as _;

use crate::app::config::Config;
use crate::engine::model::config::ModelConfig;
use crate::engine::model::provenance::Provenance;
use crate::engine::model::{Part, SdModel};
use crate::runtime::Runtime;

/// Loads every configured model on the first device and writes a report to `out`.
/// Returns whether every model loaded and passed its checks.
pub fn run(config: &Config, runtime: &Runtime, out: &mut String) -> bool {
    let device = config.execution.device_ids[0];
    let built: Vec<String> = runtime
        .built_providers()
        .iter()
        .map(|(k, b)| format!("{k}{}", if *b { "" } else { " (not in this build)" }))
        .collect();
    let _ = writeln!(
        out,
        "ONNX Runtime {} from {}\nproviders requested: {}; device {device}\n",
        runtime.version(),
        runtime.library_path().display(),
        built.join(", "),
    );
    let mut all_ok = true;
    for (name, model) in &config.models {
        let default = if name == config.default_model_name() {
            " (default)"
        } else {
            ""
        };
        let _ = writeln!(out, "{name}{default}: {}", model.path.display());
        match SdModel::load(runtime, name, &model.path, device) {
            Ok(m) => {
                let f = &m.folder;
                let scale_from = match &f.vae_scaling_source {
                    Some(p) => p.display().to_string(),
                    None => "default, no VAE config".to_string(),
                };
                let _ = writeln!(
                    out,
                    "  ok: family {}, {}, {} latent channels, VAE scaling factor {} ({scale_from}), {}x downsampling, tokenizer {}",
                    family_text(&m),
                    m.precision(),
                    m.latent_channels,
                    f.vae_scaling_factor,
                    f.vae_downsampling,
                    match &f.tokenizer {
                        crate::engine::model::TokenizerFiles::Json(_) => "tokenizer.json",
                        crate::engine::model::TokenizerFiles::VocabMerges { .. } =>
                            "vocab.json + merges.txt",
                    }
                );
                write_source(out, m.folder.provenance.as_ref(), model);
                for part in m.parts() {
                    write_part(out, part);
                }
                if m.vae_encoder.is_none() {
                    let _ = writeln!(
                        out,
                        "  {:<13} absent (optional: only image-to-image needs it)",
                        "vae_encoder"
                    );
                }
            }
            Err(e) => {
                all_ok = false;
                let _ = writeln!(out, "  FAILED: {e}");
            }
        }
        let _ = writeln!(out);
    }
    all_ok
}

/// `sd (Stable Diffusion 1.x/2.x, StableDiffusionPipeline)`.
fn family_text(m: &SdModel) -> String {
    let family = m.family();
    let class = match &m.folder.pipeline_class {
        Some(class) => class.as_str(),
        None => "model_index.json names no pipeline class",
    };
    format!("{family} ({}, {class})", family.title())
}

/// Where the folder came from: its provenance file (checkpoint, AUTOMATIC1111's short hash,
/// fused LoRAs with their weights) and a configured `checkpoint:` (hashed only when an infotext
/// or an image needs it).
fn write_source(out: &mut String, provenance: Option<&Provenance>, model: &ModelConfig) {
    if let Some(p) = provenance {
        let _ = writeln!(
            out,
            "  source: {} ({})",
            p.summary(),
            crate::engine::model::provenance::FILE
        );
    }
    if let Some(file) = &model.checkpoint {
        let _ = writeln!(
            out,
            "  checkpoint: {} (hashed when a Model hash is needed)",
            file.display()
        );
    }
}

fn write_part(out: &mut String, part: &Part) {
    let ports = |ports: &[crate::engine::model::signature::Port]| {
        ports
            .iter()
            .map(|p| format!("{} {}{:?}", p.name, p.elem, p.dims))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "  {:<13} {} -> {}\n  {:<13} {}",
        part.component.to_string(),
        ports(&part.signature.inputs),
        ports(&part.signature.outputs),
        "",
        part.loaded.providers,
    );
}
