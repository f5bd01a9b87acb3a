//! The layers of a single-file checkpoint under the names LoRA files use for them.
//!
//! LoRA files name a layer by its diffusers module path (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`,
//! `text_model.encoder.layers.0.self_attn.q_proj`), dotted (diffusers / PEFT files) or with `_` for
//! `.` (kohya files: `lora_unet_down_blocks_0_…`); kohya's SDXL files use the single-file UNet
//! names instead (`lora_unet_input_blocks_4_1_…`). [`layers`] lists every weight of the
//! checkpoint under all of these names, keyed with `_` for `.`, with its shape.

use std::collections::HashMap;

use super::Header;
use super::family::{Family, REFINER_TE, SD1_TE, SD2_TE, UNET, XL_TE1, XL_TE2};

/// The pipeline component a LoRA layer belongs to (named as diffusers names the part:
/// `unet`, `text_encoder`, `text_encoder_2`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    Unet,
    TextEncoder,
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
}

/// One weight a LoRA can target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The diffusers module path (dotted).
    pub module: String,
    /// `[out, in]` (a convolution's first two dimensions).
    pub out_in: [u64; 2],
    /// The weight's whole shape as diffusers holds it (`[out, in]` or `[out, in, kh, kw]`).
    pub shape: Vec<u64>,
}

/// Component -> (module path with `_` for `.`) -> layer.
pub type Layers = HashMap<Component, HashMap<String, Layer>>;

fn underscored(path: &str) -> String {
    path.replace('.', "_")
}

fn add(layers: &mut Layers, c: Component, module: String, shape: &[u64], alias: Option<String>) {
    if shape.len() < 2 {
        return;
    }
    let layer = Layer {
        module: module.clone(),
        out_in: [shape[0], shape[1]],
        shape: shape.to_vec(),
    };
    let map = layers.entry(c).or_default();
    if let Some(alias) = alias {
        map.insert(underscored(&alias), layer.clone());
    }
    map.insert(underscored(&module), layer);
}

/// Every 2-D or 4-D weight of the checkpoint's UNet and text encoders under LoRA names.
pub fn layers(header: &Header, family: Family) -> Layers {
    let mut layers = Layers::new();
    let per_level = unet_layers_per_level(header);
    for (key, t) in header.tensors.range(UNET.to_string()..) {
        let Some(ldm) = key.strip_prefix(UNET) else {
            break;
        };
        let Some(ldm) = ldm.strip_suffix(".weight") else {
            continue;
        };
        if let Some(module) = unet_module(ldm, per_level) {
            add(
                &mut layers,
                Component::Unet,
                module,
                &t.shape,
                Some(ldm.to_string()),
            );
        }
    }
    let (te1, te2) = match family {
        Family::Sd15 => (Some((SD1_TE, false)), None),
        Family::Sd2 => (Some((SD2_TE, true)), None),
        Family::Sdxl => (Some((XL_TE1, false)), Some(XL_TE2)),
        Family::SdxlRefiner => (None, Some(REFINER_TE)),
    };
    if let Some((prefix, openclip)) = te1 {
        text_layers(
            header,
            prefix,
            openclip,
            Component::TextEncoder,
            &mut layers,
        );
    }
    if let Some(prefix) = te2 {
        text_layers(header, prefix, true, Component::TextEncoder2, &mut layers);
    }
    layers
}

/// Resnets per down level (`layers_per_block`): the first downsampler sits at input block n + 1.
fn unet_layers_per_level(header: &Header) -> usize {
    header
        .tensors
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix(UNET)?.strip_prefix("input_blocks.")?;
            let (index, tail) = rest.split_once('.')?;
            (tail == "0.op.weight").then(|| index.parse::<usize>().ok())?
        })
        .min()
        .map_or(2, |first| first - 1)
}

fn resnet_part(rest: &str) -> Option<String> {
    const RENAMES: [(&str, &str); 6] = [
        ("in_layers.0", "norm1"),
        ("in_layers.2", "conv1"),
        ("emb_layers.1", "time_emb_proj"),
        ("out_layers.0", "norm2"),
        ("out_layers.3", "conv2"),
        ("skip_connection", "conv_shortcut"),
    ];
    RENAMES
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|tail| format!("{to}{tail}")))
}

fn split_index(text: &str) -> Option<(usize, &str)> {
    let (index, rest) = text.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// A single-file UNet module path (without `.weight`) -> its diffusers module path.
pub fn unet_module(ldm: &str, n: usize) -> Option<String> {
    const FIXED: [(&str, &str); 7] = [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb.0.0", "add_embedding.linear_1"),
        ("label_emb.0.2", "add_embedding.linear_2"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ];
    if let Some((_, to)) = FIXED.iter().find(|(from, _)| *from == ldm) {
        return Some(to.to_string());
    }
    let level = n + 1;
    if let Some(rest) = ldm.strip_prefix("input_blocks.") {
        let (b, rest) = split_index(rest)?;
        if rest == "0.op" {
            return Some(format!("down_blocks.{}.downsamplers.0.conv", b / level - 1));
        }
        let (i, j) = ((b - 1) / level, (b - 1) % level);
        return block_part(rest, &format!("down_blocks.{i}"), j);
    }
    if let Some(rest) = ldm.strip_prefix("middle_block.") {
        let (b, rest) = split_index(rest)?;
        return match b {
            1 => Some(format!("mid_block.attentions.0.{rest}")),
            0 | 2 => Some(format!(
                "mid_block.resnets.{}.{}",
                b / 2,
                resnet_part(rest)?
            )),
            _ => None,
        };
    }
    let rest = ldm.strip_prefix("output_blocks.")?;
    let (b, rest) = split_index(rest)?;
    let (i, j) = (b / level, b % level);
    let (k, tail) = split_index(rest)?;
    if tail == "conv" && k > 0 {
        return Some(format!("up_blocks.{i}.upsamplers.0.conv"));
    }
    block_part(rest, &format!("up_blocks.{i}"), j)
}

fn block_part(rest: &str, block: &str, j: usize) -> Option<String> {
    let (k, tail) = split_index(rest)?;
    match k {
        0 => Some(format!("{block}.resnets.{j}.{}", resnet_part(tail)?)),
        1 => Some(format!("{block}.attentions.{j}.{tail}")),
        _ => None,
    }
}

fn text_layers(header: &Header, prefix: &str, openclip: bool, c: Component, layers: &mut Layers) {
    for (key, t) in header.tensors.range(prefix.to_string()..) {
        let Some(rest) = key.strip_prefix(prefix) else {
            break;
        };
        if !openclip {
            if let Some(module) = rest.strip_suffix(".weight") {
                add(layers, c, module.to_string(), &t.shape, None);
            }
            continue;
        }
        let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
            continue;
        };
        let Some((n, tail)) = split_index(block) else {
            continue;
        };
        let base = format!("text_model.encoder.layers.{n}");
        match tail {
            "attn.in_proj_weight" if t.shape.len() == 2 => {
                let h = t.shape[1];
                for p in ["q", "k", "v"] {
                    add(
                        layers,
                        c,
                        format!("{base}.self_attn.{p}_proj"),
                        &[h, h],
                        None,
                    );
                }
            }
            "attn.out_proj.weight" => add(
                layers,
                c,
                format!("{base}.self_attn.out_proj"),
                &t.shape,
                None,
            ),
            "mlp.c_fc.weight" => add(layers, c, format!("{base}.mlp.fc1"), &t.shape, None),
            "mlp.c_proj.weight" => add(layers, c, format!("{base}.mlp.fc2"), &t.shape, None),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unet_module;

    #[test]
    fn single_file_unet_names_map_to_diffusers_modules() {
        // SD 1.5 (two resnets per level) and the tiny fixtures (one).
        let cases = [
            (
                2,
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            ),
            (
                2,
                "input_blocks.5.0.skip_connection",
                "down_blocks.1.resnets.1.conv_shortcut",
            ),
            (
                2,
                "input_blocks.3.0.op",
                "down_blocks.0.downsamplers.0.conv",
            ),
            (
                2,
                "middle_block.2.out_layers.3",
                "mid_block.resnets.1.conv2",
            ),
            (2, "output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
            (2, "output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
            (
                2,
                "output_blocks.11.1.proj_out",
                "up_blocks.3.attentions.2.proj_out",
            ),
            (
                1,
                "input_blocks.3.1.transformer_blocks.0.attn2.to_k",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
            ),
            (
                1,
                "output_blocks.3.1.transformer_blocks.0.ff.net.0.proj",
                "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj",
            ),
            (1, "label_emb.0.2", "add_embedding.linear_2"),
        ];
        for (n, ldm, want) in cases {
            assert_eq!(unet_module(ldm, n).as_deref(), Some(want), "{ldm}");
        }
    }
}
