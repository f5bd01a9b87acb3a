//! The weight changes LoRA files make to a checkpoint, as diffusers' `fuse_lora` adds them
//! (`load_lora_weights` + `set_adapters(names, weights)` + `fuse_lora`, what
//! `onnx/import_checkpoint.py` runs): per layer `weight · alpha / rank · (up @ down)`, summed
//! over the files, in the parameter's own shape.
//!
//! diffusers converts a kohya file's `alpha` into PEFT's `lora_alpha` and PEFT scales by
//! `lora_alpha / r` (`r` = the down tensor's first dimension); a layer without `alpha` (every
//! layer of a diffusers / PEFT file) gets `lora_alpha = r`, i.e. scale 1. A convolution's delta is
//! `up [out, r, 1, 1]` times `down [r, in, kh, kw]` over `r`, as PEFT's `Conv2d.get_delta_weight`.
//! (Two corner cases where diffusers' `get_peft_kwargs` does something else are not followed: a
//! kohya file whose layers only partly carry `alpha` gives the others the most common alpha, and
//! a PEFT file mixing ranks scales every layer by its first layer's rank over the layer's own.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::lora::{self, Role};
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
        let header = header::read(path)?;
        lora::check(&header, checkpoint, family)?;
        let (_, groups) = lora::parse(&header, family)?;
        let mut file = TensorFile::open(header)?;
        for ((component, name), keys) in &groups {
            let Some(layer) = targets.get(component).and_then(|m| m.get(name)) else {
                // lora::check refuses such a file; kept as an error rather than a panic
                return Err(tensor_error(
                    path,
                    &keys[0].1,
                    "matches no layer of the checkpoint",
                ));
            };
            let delta = layer_delta(&mut file, layer, keys, *weight)?;
            let sum = out
                .entry((*component, layer.module.clone()))
                .or_insert_with(|| vec![0.0; delta.len()]);
            for (s, d) in sum.iter_mut().zip(&delta) {
                *s += d;
            }
        }
    }
    Ok(out)
}

fn tensor_error(path: &Path, key: &str, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::LoraTensor {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The tensor of `role` among one layer's keys; a layer needs exactly one down and one up.
fn role_key<'a>(
    path: &Path,
    keys: &'a [(Role, String)],
    role: Role,
) -> Result<Option<&'a str>, CheckpointError> {
    let mut found = keys
        .iter()
        .filter(|(r, _)| *r == role)
        .map(|(_, k)| k.as_str());
    let first = found.next();
    if let Some(second) = found.next() {
        return Err(tensor_error(
            path,
            second,
            format!("names the same layer as {}", first.unwrap_or_default()),
        ));
    }
    if first.is_none() && role != Role::Alpha {
        let (side, other) = if role == Role::Down {
            ("down (lora_down / lora_A)", "up")
        } else {
            ("up (lora_up / lora_B)", "down")
        };
        return Err(tensor_error(
            path,
            &keys[0].1,
            format!("its layer has a {other} tensor but no {side} tensor"),
        ));
    }
    Ok(first)
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

/// `weight · alpha / rank · (up @ down)` of one layer, in the layer's shape.
fn layer_delta(
    file: &mut TensorFile,
    layer: &Layer,
    keys: &[(Role, String)],
    weight: f32,
) -> Result<Vec<f32>, CheckpointError> {
    let path = file.header.path.clone();
    let down_key = role_key(&path, keys, Role::Down)?.expect("a down key");
    let up_key = role_key(&path, keys, Role::Up)?.expect("an up key");
    let alpha_key = role_key(&path, keys, Role::Alpha)?;
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
    let rank = down_shape[0] as usize;
    // PEFT's scaling: weight * lora_alpha / r in double precision, applied once to the product
    let alpha = match alpha_key {
        None => rank as f64,
        Some(key) => match read(file, key)?.as_slice() {
            [alpha] => f64::from(*alpha),
            values => {
                let reason = format!("an alpha is one number, this has {}", values.len());
                return Err(tensor_error(&path, key, reason));
            }
        },
    };
    let scale = (f64::from(weight) * alpha / rank as f64) as f32;
    let down = read(file, down_key)?;
    let up = read(file, up_key)?;
    Ok(scaled_product(&up, &down, rank, scale))
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
