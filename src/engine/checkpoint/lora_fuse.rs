//! The weight changes LoRA files make to a checkpoint, as diffusers' `fuse_lora` adds them
//! (`load_lora_weights` + `set_adapters(names, weights)` + `fuse_lora`, what
//! `onnx/import_checkpoint.py` runs): per layer `weight · alpha / rank · (up @ down)`, summed
//! over the files, in the parameter's own shape.
//!
//! PEFT scales a layer by `lora_alpha / r` (`r` = the down tensor's first dimension); which
//! `lora_alpha` diffusers gives each layer is [`super::lora_alpha`]'s business (a kohya layer's
//! `alpha`, `r` for files without alphas, with diffusers' exceptions). A convolution's delta is
//! `up [out, r, 1, 1]` times `down [r, in, kh, kw]` over `r`, as PEFT's `Conv2d.get_delta_weight`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lora::{self, LoraLayout, Role};
use super::lora_alpha::{self, LayerAlpha};
use super::names::{self, Component, Layer};
use super::tensors::{self, TensorFile};
use super::{CheckpointError, Family, Header, header};

/// (component, dotted diffusers module path) -> the delta of its `weight`, row-major in the
/// parameter's shape (`[out, in]` or `[out, in, kh, kw]`).
pub type Deltas = HashMap<(Component, String), Vec<f32>>;

/// The summed deltas of `loras` (file, weight) on `checkpoint` of `family`. Each file is checked
/// as [`lora::check`] does, and every layer's tensors must fit the layer's whole shape.
pub fn deltas(
    loras: &[(PathBuf, f32)],
    checkpoint: &Header,
    family: Family,
) -> Result<Deltas, CheckpointError> {
    let targets = names::layers(checkpoint, family);
    let mut out = Deltas::new();
    for (path, weight) in loras {
        add_file(&mut out, path, *weight, checkpoint, family, &targets)?;
    }
    Ok(out)
}

/// One layer of a LoRA file, checked against the checkpoint's layer.
struct Planned<'a> {
    component: Component,
    layer: &'a Layer,
    down: &'a str,
    up: &'a str,
    rank: u64,
    alpha: Option<f64>,
}

/// Adds the deltas of one file at `weight` to `out`.
fn add_file(
    out: &mut Deltas,
    path: &Path,
    weight: f32,
    checkpoint: &Header,
    family: Family,
    targets: &names::Layers,
) -> Result<(), CheckpointError> {
    let header = header::read(path)?;
    lora::check(&header, checkpoint, family)?;
    let (layout, groups) = lora::parse(&header, family)?;
    let mut file = TensorFile::open(header)?;
    let mut planned = Vec::new();
    for ((component, name), keys) in &groups {
        let Some(layer) = targets.get(component).and_then(|m| m.get(name)) else {
            // lora::check refuses such a file; kept as an error rather than a panic
            let reason = "matches no layer of the checkpoint";
            return Err(tensor_error(path, &keys[0].1, reason));
        };
        // kohya's SDXL files may name a UNet layer by its single-file and its diffusers path
        if let Some(twice) = planned
            .iter()
            .find(|p: &&Planned| p.component == *component && p.layer.module == layer.module)
        {
            let reason = format!(
                "changes layer {} a second time (also as {})",
                layer.module, twice.down
            );
            return Err(tensor_error(path, &keys[0].1, &reason));
        }
        planned.push(plan(&mut file, *component, layer, keys, layout)?);
    }
    let scales: Vec<LayerAlpha> = planned
        .iter()
        .map(|p| LayerAlpha {
            component: p.component,
            module: &p.layer.module,
            key: p.down,
            rank: p.rank,
            alpha: p.alpha,
        })
        .collect();
    let alphas = lora_alpha::resolve(&scales);
    for (p, alpha) in planned.iter().zip(alphas) {
        // PEFT's scaling: weight * lora_alpha / r in double precision, applied once to the product
        let scale = (f64::from(weight) * alpha / p.rank as f64) as f32;
        let down = read(&mut file, p.down)?;
        let up = read(&mut file, p.up)?;
        let delta = scaled_product(&up, &down, p.rank as usize, scale);
        let sum = out
            .entry((p.component, p.layer.module.clone()))
            .or_insert_with(|| vec![0.0; delta.len()]);
        for (s, d) in sum.iter_mut().zip(&delta) {
            *s += d;
        }
    }
    Ok(())
}

fn tensor_error(path: &Path, key: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::LoraTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The key of `role` among one layer's keys, if any; two keys of one role are refused.
fn role_key<'a>(
    path: &Path,
    keys: &'a [(Role, String)],
    role: Role,
) -> Result<Option<&'a str>, CheckpointError> {
    let mut found = keys
        .iter()
        .filter(|(r, _)| *r == role)
        .map(|(_, k)| k.as_str());
    match (found.next(), found.next()) {
        (Some(first), Some(second)) => Err(tensor_error(
            path,
            second,
            format!("names the same layer as {first}"),
        )),
        (first, _) => Ok(first),
    }
}

/// The down and up keys of one layer; a layer needs both.
fn down_up<'a>(
    path: &Path,
    keys: &'a [(Role, String)],
) -> Result<(&'a str, &'a str), CheckpointError> {
    match (
        role_key(path, keys, Role::Down)?,
        role_key(path, keys, Role::Up)?,
    ) {
        (Some(down), Some(up)) => Ok((down, up)),
        (Some(key), None) => Err(tensor_error(
            path,
            key,
            "its layer has a down tensor but no up tensor (lora_up / lora_B)",
        )),
        (None, _) => Err(tensor_error(
            path,
            &keys[0].1,
            "its layer has no down tensor (lora_down / lora_A)",
        )),
    }
}

/// The shape `up @ down` gives, when the two fit each other: `[out, in]` or `[out, in, kh, kw]`.
fn product_shape(
    path: &Path,
    (down_key, down): (&str, &[u64]),
    (up_key, up): (&str, &[u64]),
) -> Result<Vec<u64>, CheckpointError> {
    if down.len() != 2 && down.len() != 4 {
        return Err(tensor_error(
            path,
            down_key,
            format!("shape {down:?}: a LoRA down tensor is [rank, in] or [rank, in, kh, kw]"),
        ));
    }
    let up_fits = up.len() == down.len() && (up.len() == 2 || up[2..] == [1, 1]);
    if !up_fits {
        return Err(tensor_error(
            path,
            up_key,
            format!(
                "shape {up:?} does not go with the down tensor's {down:?} (want [out, rank] or [out, rank, 1, 1])"
            ),
        ));
    }
    if up[1] != down[0] || down[0] == 0 {
        return Err(tensor_error(
            path,
            up_key,
            format!(
                "rank {} does not match the down tensor's rank {} ({down_key} {down:?})",
                up[1], down[0]
            ),
        ));
    }
    let mut shape = vec![up[0]];
    shape.extend_from_slice(&down[1..]);
    Ok(shape)
}

/// Reads a LoRA tensor as `f32`, refusing integer and boolean dtypes by name.
fn read(file: &mut TensorFile, key: &str) -> Result<Vec<f32>, CheckpointError> {
    let dtype = &file.header.tensors[key].dtype;
    // tensors::to_f32 holds the one list of float dtypes: it converts no bytes to no values
    if tensors::to_f32(dtype, &[]).is_none() {
        let reason = format!("dtype {dtype} is not a floating-point type (F32, F16, BF16, F64)");
        return Err(tensor_error(&file.header.path, key, reason));
    }
    file.read_f32(key)
}

/// Checks one layer's tensors against `layer` and reads its alpha.
fn plan<'a>(
    file: &mut TensorFile,
    component: Component,
    layer: &'a Layer,
    keys: &'a [(Role, String)],
    layout: LoraLayout,
) -> Result<Planned<'a>, CheckpointError> {
    let path = file.header.path.clone();
    let (down_key, up_key) = down_up(&path, keys)?;
    let down_shape = file.header.tensors[down_key].shape.clone();
    let up_shape = file.header.tensors[up_key].shape.clone();
    let shape = product_shape(&path, (down_key, &down_shape), (up_key, &up_shape))?;
    if shape != layer.shape {
        return Err(tensor_error(
            &path,
            up_key,
            format!(
                "up {up_shape:?} @ down {down_shape:?} gives {shape:?}, but the layer {} is {:?}",
                layer.module, layer.shape
            ),
        ));
    }
    let alpha = match role_key(&path, keys, Role::Alpha)? {
        None => None,
        // diffusers reads alphas of kohya files only; its loader refuses this key
        Some(key) if layout == LoraLayout::Diffusers => {
            let reason = "an alpha in the diffusers / PEFT layout, which diffusers does not read (only kohya files carry alphas)";
            return Err(tensor_error(&path, key, reason));
        }
        Some(key) => match read(file, key)?.as_slice() {
            [alpha] => Some(f64::from(*alpha)),
            values => {
                let reason = format!("an alpha is one number, this has {}", values.len());
                return Err(tensor_error(&path, key, reason));
            }
        },
    };
    Ok(Planned {
        component,
        layer,
        down: down_key,
        up: up_key,
        rank: down_shape[0],
        alpha,
    })
}

/// `scale · (up @ down)` for `up` `[out, rank]` and `down` `[rank, k]` (row-major).
fn scaled_product(up: &[f32], down: &[f32], rank: usize, scale: f32) -> Vec<f32> {
    let k = down.len() / rank;
    let mut out = Vec::with_capacity(up.len() / rank * k);
    for row in up.chunks_exact(rank) {
        out.extend((0..k).map(|j| {
            let dot: f32 = row
                .iter()
                .enumerate()
                .map(|(r, u)| u * down[r * k + j])
                .sum();
            dot * scale
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, dtype, shape, values): values are encoded in the dtype (integers truncated).
    type Spec<'a> = (&'a str, &'a str, Vec<u64>, Vec<f32>);

    fn encode(dtype: &str, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| match dtype {
                "F32" => v.to_le_bytes().to_vec(),
                "F16" => half::f16::from_f32(v).to_le_bytes().to_vec(),
                "BF16" => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                "I32" => (v as i32).to_le_bytes().to_vec(),
                other => panic!("test dtype {other}"),
            })
            .collect()
    }

    fn write(dir: &Path, name: &str, specs: &[Spec]) -> PathBuf {
        let (mut entries, mut data) = (serde_json::Map::new(), Vec::new());
        for (key, dtype, shape, values) in specs {
            let n: u64 = shape.iter().product();
            let values = if values.is_empty() {
                vec![0.0; n as usize]
            } else {
                values.clone()
            };
            assert_eq!(values.len() as u64, n, "{key}");
            let start = data.len();
            data.extend(encode(dtype, &values));
            entries.insert(
                key.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let json = serde_json::Value::Object(entries).to_string();
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json.as_bytes());
        bytes.extend(data);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn seq(n: usize, step: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 - n as f32 / 2.0) * step).collect()
    }

    /// `scale * (up [out, r] @ down [r, k])`, written plainly.
    fn reference(up: &[f32], down: &[f32], out: usize, r: usize, scale: f32) -> Vec<f32> {
        let k = down.len() / r;
        let mut m = vec![0.0; out * k];
        for o in 0..out {
            for j in 0..k {
                m[o * k + j] = scale * (0..r).map(|i| up[o * r + i] * down[i * k + j]).sum::<f32>();
            }
        }
        m
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    const TO_Q: &str =
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight";
    const UNET_TO_Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";

    #[test]
    fn a_refiner_lora_changes_the_second_text_encoder_and_the_unet() {
        let dir = tempfile::tempdir().unwrap();
        let te = "conditioner.embedders.0.model.transformer.resblocks.0.";
        let ckpt = write(
            dir.path(),
            "refiner.safetensors",
            &[
                (TO_Q, "F16", vec![4, 4], vec![]),
                (
                    &format!("{te}attn.in_proj_weight"),
                    "F16",
                    vec![12, 4],
                    vec![],
                ),
                (
                    &format!("{te}attn.out_proj.weight"),
                    "F16",
                    vec![4, 4],
                    vec![],
                ),
            ],
        );
        let (down, up) = (seq(4, 0.25), seq(4, 0.5));
        let q = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj";
        let u = format!("unet.{UNET_TO_Q}");
        let lora = write(
            dir.path(),
            "lora.safetensors",
            &[
                (
                    &format!("{q}.lora_A.weight"),
                    "F32",
                    vec![1, 4],
                    down.clone(),
                ),
                (&format!("{q}.lora_B.weight"), "F32", vec![4, 1], up.clone()),
                (
                    &format!("{u}.lora_A.weight"),
                    "BF16",
                    vec![1, 4],
                    down.clone(),
                ),
                (
                    &format!("{u}.lora_B.weight"),
                    "BF16",
                    vec![4, 1],
                    up.clone(),
                ),
            ],
        );
        let header = header::read(&ckpt).unwrap();
        let got = deltas(&[(lora, 0.5)], &header, Family::SdxlRefiner).unwrap();
        assert_eq!(got.len(), 2);
        let want = reference(&up, &down, 4, 1, 0.5);
        close(
            &got[&(
                Component::TextEncoder2,
                "text_model.encoder.layers.0.self_attn.q_proj".into(),
            )],
            &want,
        );
        close(&got[&(Component::Unet, UNET_TO_Q.into())], &want);
    }

    #[test]
    fn an_sd2_kohya_lora_changes_the_split_openclip_projections() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = write(
            dir.path(),
            "sd2.safetensors",
            &[
                (TO_Q, "F32", vec![4, 4], vec![]),
                (
                    "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",
                    "F32",
                    vec![12, 4],
                    vec![],
                ),
            ],
        );
        let (down, up) = (seq(8, 0.125), seq(8, 0.375));
        let v = "lora_te_text_model_encoder_layers_0_self_attn_v_proj";
        let lora = write(
            dir.path(),
            "lora.safetensors",
            &[
                (
                    &format!("{v}.lora_down.weight"),
                    "F16",
                    vec![2, 4],
                    down.clone(),
                ),
                (
                    &format!("{v}.lora_up.weight"),
                    "F16",
                    vec![4, 2],
                    up.clone(),
                ),
                (&format!("{v}.alpha"), "F16", vec![], vec![1.0]),
            ],
        );
        let header = header::read(&ckpt).unwrap();
        let got = deltas(&[(lora.clone(), 1.0), (lora, 1.0)], &header, Family::Sd2).unwrap();
        // alpha 1 at rank 2, the file twice
        let want = reference(&up, &down, 4, 2, 2.0 * 0.5);
        assert_eq!(got.len(), 1);
        close(
            &got[&(
                Component::TextEncoder,
                "text_model.encoder.layers.0.self_attn.v_proj".into(),
            )],
            &want,
        );
    }

    /// The error for one LoRA tensor spec set on an SD 1.5 checkpoint with a 4x4 to_q.
    fn refusal(specs: &[Spec]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = write(
            dir.path(),
            "sd15.safetensors",
            &[(TO_Q, "F32", vec![4, 4], vec![])],
        );
        let lora = write(dir.path(), "bad-lora.safetensors", specs);
        let header = header::read(&ckpt).unwrap();
        let err = deltas(&[(lora, 1.0)], &header, Family::Sd15).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad-lora.safetensors"), "{text}");
        text
    }

    const K: &str = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";

    #[test]
    fn a_layer_named_twice_in_one_file_is_refused_not_added_twice() {
        // the same UNet layer under its diffusers and its single-file name
        let single_file = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q";
        let mut specs = Vec::new();
        for name in [K, single_file] {
            specs.push((format!("{name}.lora_down.weight"), vec![1, 4]));
            specs.push((format!("{name}.lora_up.weight"), vec![4, 1]));
        }
        let specs: Vec<Spec> = specs
            .iter()
            .map(|(k, shape)| (k.as_str(), "F32", shape.clone(), vec![]))
            .collect();
        let text = refusal(&specs);
        assert!(text.contains("a second time"), "{text}");
    }

    #[test]
    fn up_and_down_of_different_ranks_are_refused_with_the_key() {
        let text = refusal(&[
            (&format!("{K}.lora_down.weight"), "F32", vec![2, 4], vec![]),
            (&format!("{K}.lora_up.weight"), "F32", vec![4, 3], vec![]),
        ]);
        assert!(
            text.contains(&format!(
                "{K}.lora_up.weight: rank 3 does not match the down tensor's rank 2"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_convolution_lora_on_a_linear_layer_is_refused_with_both_shapes() {
        let text = refusal(&[
            (
                &format!("{K}.lora_down.weight"),
                "F32",
                vec![2, 4, 3, 3],
                vec![],
            ),
            (
                &format!("{K}.lora_up.weight"),
                "F32",
                vec![4, 2, 1, 1],
                vec![],
            ),
        ]);
        assert!(text.contains("gives [4, 4, 3, 3], but the layer"), "{text}");
        assert!(text.contains(&format!("{UNET_TO_Q} is [4, 4]")), "{text}");
    }

    #[test]
    fn an_integer_tensor_is_refused_with_its_dtype() {
        let text = refusal(&[
            (&format!("{K}.lora_down.weight"), "I32", vec![2, 4], vec![]),
            (&format!("{K}.lora_up.weight"), "F32", vec![4, 2], vec![]),
        ]);
        assert!(
            text.contains(&format!(
                "{K}.lora_down.weight: dtype I32 is not a floating-point type"
            )),
            "{text}"
        );
    }

    #[test]
    fn a_layer_without_its_up_tensor_or_with_a_vector_alpha_is_refused() {
        let text = refusal(&[(&format!("{K}.lora_down.weight"), "F32", vec![2, 4], vec![])]);
        assert!(text.contains("has a down tensor but no up"), "{text}");
        let text = refusal(&[
            (&format!("{K}.lora_down.weight"), "F32", vec![2, 4], vec![]),
            (&format!("{K}.lora_up.weight"), "F32", vec![4, 2], vec![]),
            (&format!("{K}.alpha"), "F32", vec![2], vec![]),
        ]);
        assert!(
            text.contains(&format!("{K}.alpha: an alpha is one number, this has 2")),
            "{text}"
        );
    }

    #[test]
    fn an_alpha_in_the_diffusers_layout_is_refused_as_diffusers_refuses_it() {
        let m = format!("unet.{UNET_TO_Q}");
        let text = refusal(&[
            (&format!("{m}.lora_A.weight"), "F32", vec![2, 4], vec![]),
            (&format!("{m}.lora_B.weight"), "F32", vec![4, 2], vec![]),
            (&format!("{m}.alpha"), "F32", vec![], vec![1.0]),
        ]);
        assert!(
            text.contains(&format!(
                "{m}.alpha: an alpha in the diffusers / PEFT layout"
            )),
            "{text}"
        );
    }
}
