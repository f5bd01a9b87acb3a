//! Which `lora_alpha` diffusers (0.39, what `onnx/import_checkpoint.py` runs) gives each layer of
//! one LoRA file; PEFT then scales the layer by `lora_alpha / rank`. diffusers' `get_peft_kwargs`
//! builds one PEFT config per component (UNet, each text encoder) from the file's ranks and kohya
//! `alpha`s (only kohya files carry alphas):
//!
//! - when some layers of the component have an `alpha`, the config's alpha is the most common one
//!   (ties: the one met first, in the file's key order); a layer whose own alpha differs keeps it
//!   through `alpha_pattern`, EXCEPT attention projections (UNet `to_q` `to_k` `to_v` `to_out.0`,
//!   text-encoder `q_proj` `k_proj` `v_proj` `out_proj`): diffusers converts their kohya names to
//!   its old attention-processor names (`processor.to_q_lora`), whose alpha_pattern entries match
//!   no module, so they get the config's alpha. Layers without an alpha get it too.
//! - when none has, every layer gets the rank of the component's first layer (text encoders: in
//!   the model's module order, `layers.N` then `k_proj v_proj q_proj out_proj fc1 fc2`; the UNet:
//!   in the file's key order), i.e. `alpha = rank` and scale 1 as long as the ranks agree.
//!
//! AUTOMATIC1111 and ComfyUI use each layer's own alpha (rank when absent); the two agree on
//! files with one alpha (or none) and one rank, as kohya's trainer writes them. The key order is
//! the sorted one `safetensors.load_file` gives; kohya SDXL files, which diffusers first reorders
//! by UNet block, can differ from diffusers in the tie-breaks above.

use super::names::Component;

/// One layer of a LoRA file, as far as its scale goes.
pub(super) struct LayerAlpha<'a> {
    pub component: Component,
    /// The dotted diffusers module path.
    pub module: &'a str,
    /// The layer's down key in the file (its place in the file's key order).
    pub key: &'a str,
    pub rank: u64,
    pub alpha: Option<f64>,
}

/// The `lora_alpha` of each of `layers` (same order).
pub(super) fn resolve(layers: &[LayerAlpha]) -> Vec<f64> {
    let mut by_key: Vec<usize> = (0..layers.len()).collect();
    by_key.sort_by_key(|&i| layers[i].key);
    layers
        .iter()
        .map(|layer| {
            layer
                .alpha
                .filter(|_| !is_attention_projection(layer.module))
                .unwrap_or_else(|| default_alpha(layers, &by_key, layer.component))
        })
        .collect()
}

/// The layers whose kohya alpha diffusers drops (see the module documentation).
fn is_attention_projection(module: &str) -> bool {
    let leaf = module.rsplit('.').next().unwrap_or(module);
    let unet = ["to_q", "to_k", "to_v"].contains(&leaf) || module.ends_with(".to_out.0");
    let text = module.contains(".self_attn.")
        && ["q_proj", "k_proj", "v_proj", "out_proj"].contains(&leaf);
    unet || text
}

/// The alpha of the component's layers that carry none.
fn default_alpha(layers: &[LayerAlpha], by_key: &[usize], component: Component) -> f64 {
    let ours = || {
        by_key
            .iter()
            .map(|&i| &layers[i])
            .filter(move |l| l.component == component)
    };
    // (alpha, count) in order of first appearance
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for alpha in ours().filter_map(|l| l.alpha) {
        match counts.iter_mut().find(|(a, _)| *a == alpha) {
            Some((_, n)) => *n += 1,
            None => counts.push((alpha, 1)),
        }
    }
    let most = counts.iter().map(|(_, n)| *n).max();
    if let Some(alpha) = counts
        .iter()
        .find(|(_, n)| Some(*n) == most)
        .map(|(a, _)| *a)
    {
        return alpha;
    }
    let first = if component == Component::Unet {
        ours().next()
    } else {
        ours().min_by_key(|l| text_module_order(l.module))
    };
    first.map_or(0.0, |l| l.rank as f64)
}

/// A CLIP text-encoder module's place in `named_modules()`: layer, then
/// `k_proj v_proj q_proj out_proj fc1 fc2` (the order CLIPAttention and CLIPMLP define them).
fn text_module_order(module: &str) -> (usize, usize) {
    const ORDER: [&str; 6] = ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"];
    let rest = module
        .strip_prefix("text_model.encoder.layers.")
        .unwrap_or(module);
    let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let leaf = tail.rsplit('.').next().unwrap_or(tail);
    let place = ORDER.iter().position(|o| *o == leaf).unwrap_or(ORDER.len());
    (n.parse().unwrap_or(usize::MAX), place)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer<'a>(
        component: Component,
        module: &'a str,
        key: &'a str,
        rank: u64,
        alpha: Option<f64>,
    ) -> LayerAlpha<'a> {
        LayerAlpha {
            component,
            module,
            key,
            rank,
            alpha,
        }
    }

    #[test]
    fn layers_without_alpha_take_the_most_common_alpha_of_their_component() {
        let u = Component::Unet;
        let layers = [
            layer(u, "a", "lora_unet_a.lora_down.weight", 4, Some(1.0)),
            layer(u, "b", "lora_unet_b.lora_down.weight", 4, None),
            layer(u, "c", "lora_unet_c.lora_down.weight", 4, Some(3.0)),
            layer(u, "d", "lora_unet_d.lora_down.weight", 4, Some(3.0)),
            // another component with no alpha at all: its first layer's rank
            layer(
                Component::TextEncoder,
                "x",
                "lora_te_x.lora_down.weight",
                8,
                None,
            ),
        ];
        assert_eq!(resolve(&layers), vec![1.0, 3.0, 3.0, 3.0, 8.0]);
        // a tie goes to the alpha met first in key order
        let tie = [
            layer(u, "b", "lora_unet_b.lora_down.weight", 4, Some(2.0)),
            layer(u, "a", "lora_unet_a.lora_down.weight", 4, Some(5.0)),
            layer(u, "c", "lora_unet_c.lora_down.weight", 4, None),
        ];
        assert_eq!(resolve(&tie), vec![2.0, 5.0, 5.0]);
        // attention projections take the most common alpha instead of their own
        let attention = [
            layer(
                u,
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
                "k1",
                4,
                Some(1.0),
            ),
            layer(
                u,
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                "k2",
                4,
                Some(2.0),
            ),
            layer(u, "mid_block.attentions.0.proj_in", "k3", 4, Some(1.0)),
            layer(
                u,
                "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
                "k4",
                4,
                Some(3.0),
            ),
            layer(
                u,
                "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
                "k5",
                4,
                Some(2.0),
            ),
            layer(u, "mid_block.resnets.0.conv1", "k6", 4, Some(2.0)),
        ];
        assert_eq!(resolve(&attention), vec![2.0, 2.0, 1.0, 3.0, 2.0, 2.0]);
        let t = Component::TextEncoder;
        let text = [
            layer(
                t,
                "text_model.encoder.layers.0.self_attn.q_proj",
                "k1",
                4,
                Some(1.0),
            ),
            layer(t, "text_model.encoder.layers.0.mlp.fc1", "k2", 4, Some(1.0)),
            layer(t, "text_model.encoder.layers.1.mlp.fc1", "k3", 4, Some(8.0)),
            layer(t, "text_model.encoder.layers.1.mlp.fc2", "k4", 4, Some(8.0)),
            layer(
                t,
                "text_model.encoder.layers.1.self_attn.out_proj",
                "k5",
                4,
                Some(8.0),
            ),
        ];
        assert_eq!(resolve(&text), vec![8.0, 1.0, 8.0, 8.0, 8.0]);
    }

    #[test]
    fn without_alphas_the_first_layers_rank_is_every_layers_alpha() {
        let t = Component::TextEncoder;
        let q0 = "text_model.encoder.layers.0.self_attn.q_proj";
        let v0 = "text_model.encoder.layers.0.self_attn.v_proj";
        let k10 = "text_model.encoder.layers.10.self_attn.k_proj";
        // v_proj comes before q_proj in the model, though after it in the keys; layer 0 before 10
        let layers = [
            layer(t, q0, "text_encoder.a", 2, None),
            layer(t, k10, "text_encoder.b", 8, None),
            layer(t, v0, "text_encoder.c", 4, None),
            layer(Component::Unet, "z", "unet.z", 16, None),
            layer(Component::Unet, "y", "unet.y", 6, None),
        ];
        assert_eq!(resolve(&layers), vec![4.0, 4.0, 4.0, 6.0, 6.0]);
    }
}
