//! A replacement VAE (`sdspool import --vae FILE`) for an import through a template: its tensors
//! take the place of the checkpoint's `first_stage_model.*` ones. Two layouts are read: a
//! single-file checkpoint's (`first_stage_model.encoder.…`) and the original LDM one the VAE files
//! people download use (`encoder.…`, `decoder.…`, `quant_conv.…`, `post_quant_conv.…`; a
//! training file's `loss.*` discriminator is no VAE weight). diffusers' layout
//! (`encoder.down_blocks.…`) needs the Python conversion.

use super::super::Header;
use super::super::family::VAE;

/// How a VAE file names the template's `first_stage_model.*` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// The same keys (a single-file checkpoint, or a VAE saved from one).
    SingleFile,
    /// Without the `first_stage_model.` prefix.
    Ldm,
}

/// A VAE file and its layout.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub header: Header,
    pub layout: VaeLayout,
}

/// The layout of the VAE file `header`: `None` for diffusers' or an unknown one.
pub fn layout(header: &Header) -> Option<VaeLayout> {
    let keys = || header.tensors.keys();
    if header.has_prefix(VAE) {
        Some(VaeLayout::SingleFile)
    } else if keys()
        .any(|k| k.starts_with("encoder.down_blocks") || k.starts_with("decoder.up_blocks"))
    {
        None
    } else if keys().any(|k| k.starts_with("encoder.") || k.starts_with("decoder.")) {
        Some(VaeLayout::Ldm)
    } else {
        None
    }
}

impl VaeLayout {
    /// The file's key for a template key (`None` when the key is not the VAE's).
    pub fn file_key(self, template_key: &str) -> Option<String> {
        let rest = template_key.strip_prefix(VAE)?;
        Some(match self {
            VaeLayout::SingleFile => template_key.to_string(),
            VaeLayout::Ldm => rest.to_string(),
        })
    }

    /// The template key of a file's key (`None` for keys that are no VAE weights).
    pub fn template_key(self, file_key: &str) -> Option<String> {
        match self {
            VaeLayout::SingleFile => file_key.starts_with(VAE).then(|| file_key.to_string()),
            VaeLayout::Ldm => (!file_key.starts_with("loss.")).then(|| format!("{VAE}{file_key}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::checkpoint::header::TensorInfo;

    fn header(keys: &[&str]) -> Header {
        let info = TensorInfo {
            dtype: "F32".into(),
            shape: vec![1],
            start: 0,
            end: 4,
        };
        Header {
            path: "vae.safetensors".into(),
            tensors: keys.iter().map(|k| (k.to_string(), info.clone())).collect(),
            file_len: 0,
            data_start: 0,
        }
    }

    #[test]
    fn vae_files_are_read_in_the_single_file_and_ldm_layouts() {
        let ldm = header(&["decoder.conv_in.weight", "loss.logvar", "quant_conv.bias"]);
        assert_eq!(layout(&ldm), Some(VaeLayout::Ldm));
        let single = header(&["first_stage_model.decoder.conv_in.weight"]);
        assert_eq!(layout(&single), Some(VaeLayout::SingleFile));
        assert_eq!(
            layout(&header(&["decoder.up_blocks.0.resnets.0.conv1.weight"])),
            None
        );
        assert_eq!(layout(&header(&["lora_unet_x.alpha"])), None);
        let key = "first_stage_model.decoder.conv_in.weight";
        assert_eq!(
            VaeLayout::Ldm.file_key(key).as_deref(),
            Some("decoder.conv_in.weight")
        );
        assert_eq!(VaeLayout::SingleFile.file_key(key).as_deref(), Some(key));
        assert_eq!(
            VaeLayout::Ldm.file_key("model.diffusion_model.out.2.bias"),
            None
        );
        assert_eq!(
            VaeLayout::Ldm.template_key("quant_conv.bias").as_deref(),
            Some("first_stage_model.quant_conv.bias")
        );
        assert_eq!(VaeLayout::Ldm.template_key("loss.logvar"), None);
        assert_eq!(VaeLayout::SingleFile.template_key("model_ema.decay"), None);
    }
}
