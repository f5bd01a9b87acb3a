//! Which family a single-file checkpoint is, from its key names and shapes (the rules of
//! `onnx/checkpoint_layout.py`, which the conversion applies too):
//!
//! - a UNet under `model.diffusion_model.` with a 4-channel input (9 is an inpainting model);
//! - the text encoders: `conditioner.embedders.0.transformer.` + `conditioner.embedders.1.model.`
//!   is SDXL base, `conditioner.embedders.0.model.` alone the SDXL refiner,
//!   `cond_stage_model.model.` (OpenCLIP) SD 2.x, `cond_stage_model.transformer.` SD 1.x;
//! - the UNet's cross-attention width equals the text encoders' width (their sum for SDXL);
//! - a VAE under `first_stage_model.`.

use std::fmt;
use std::str::FromStr;

use super::{CheckpointError, Header};

pub const UNET: &str = "model.diffusion_model.";
pub const VAE: &str = "first_stage_model.";
pub const SD1_TE: &str = "cond_stage_model.transformer.";
pub const SD2_TE: &str = "cond_stage_model.model.";
pub const XL_TE1: &str = "conditioner.embedders.0.transformer.";
pub const XL_TE2: &str = "conditioner.embedders.1.model.";
pub const REFINER_TE: &str = "conditioner.embedders.0.model.";

/// The checkpoint families `sdspool import` converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Sd15,
    Sd2,
    Sdxl,
    SdxlRefiner,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::Sd15, Family::Sd2, Family::Sdxl, Family::SdxlRefiner];

    /// The name on the command line and in `sdspool-source.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Sd15 => "sd15",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::SdxlRefiner => "sdxl-refiner",
        }
    }

    pub fn is_xl(self) -> bool {
        matches!(self, Family::Sdxl | Family::SdxlRefiner)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Family, String> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown family {s:?} (sd15, sd2, sdxl or sdxl-refiner)"))
    }
}

fn unknown(header: &Header, reason: String, keys: Vec<String>) -> CheckpointError {
    CheckpointError::UnknownArchitecture {
        path: header.path.clone(),
        reason,
        keys,
    }
}

/// The family of the checkpoint whose header this is.
pub fn detect(header: &Header) -> Result<Family, CheckpointError> {
    let conv_in = format!("{UNET}input_blocks.0.0.weight");
    let Some(shape) = header.shape(&conv_in) else {
        return Err(unknown(
            header,
            format!("no UNet in the single-file layout ({conv_in} is missing)"),
            header.first_keys(8),
        ));
    };
    if shape.get(1) != Some(&4) {
        return Err(unknown(
            header,
            format!(
                "the UNet takes {:?} input channels (4 for text-to-image; 9 is an inpainting model, not supported)",
                shape.get(1)
            ),
            vec![conv_in],
        ));
    }
    let family = text_family(header)?;
    let cross = cross_attention_width(header);
    let text = text_width(header, family);
    if cross != text {
        return Err(unknown(
            header,
            format!(
                "looks like {family}, but the UNet's cross-attention width {cross:?} is not the text encoder width {text:?}"
            ),
            attn2_keys(header),
        ));
    }
    if !header.has_prefix(VAE) {
        return Err(unknown(
            header,
            format!("no VAE ({VAE}*) in the checkpoint"),
            header.first_keys(8),
        ));
    }
    Ok(family)
}

fn text_family(header: &Header) -> Result<Family, CheckpointError> {
    let has = |p| header.has_prefix(p);
    Ok(if has(XL_TE1) && has(XL_TE2) {
        Family::Sdxl
    } else if has(REFINER_TE) && !has(XL_TE1) {
        Family::SdxlRefiner
    } else if has(SD2_TE) {
        Family::Sd2
    } else if has(SD1_TE) {
        Family::Sd15
    } else {
        let others: Vec<String> = header
            .tensors
            .keys()
            .filter(|k| !k.starts_with(UNET) && !k.starts_with(VAE))
            .take(8)
            .cloned()
            .collect();
        return Err(unknown(
            header,
            "no text encoder in a known layout (cond_stage_model.transformer / cond_stage_model.model / conditioner.embedders)".into(),
            if others.is_empty() { header.first_keys(8) } else { others },
        ));
    })
}

fn attn2_keys(header: &Header) -> Vec<String> {
    header
        .tensors
        .keys()
        .filter(|k| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .take(4)
        .cloned()
        .collect()
}

/// The input width of the UNet's first cross-attention key projection.
pub fn cross_attention_width(header: &Header) -> Option<u64> {
    header
        .tensors
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .and_then(|(_, t)| t.shape.get(1).copied())
}

fn width(header: &Header, key: &str) -> Option<u64> {
    header.shape(key).and_then(|s| s.get(1).copied())
}

/// The width of the text conditioning the family's UNet attends to.
pub fn text_width(header: &Header, family: Family) -> Option<u64> {
    let hf = "text_model.embeddings.token_embedding.weight";
    match family {
        Family::Sd15 => width(header, &format!("{SD1_TE}{hf}")),
        Family::Sd2 => width(header, &format!("{SD2_TE}token_embedding.weight")),
        Family::Sdxl => Some(
            width(header, &format!("{XL_TE1}{hf}"))?
                + width(header, &format!("{XL_TE2}token_embedding.weight"))?,
        ),
        Family::SdxlRefiner => width(header, &format!("{REFINER_TE}token_embedding.weight")),
    }
}
