//! Latents to pictures: the VAE decoder, then [-1, 1] floats to 8-bit RGB as diffusers does
//! (`(x / 2 + 0.5).clamp(0, 1)`, `* 255`, round half to even... see [`to_rgb8`]).

use image::RgbImage;
use ndarray::{ArrayD, ArrayViewD, Axis, s};

use super::PipelineError;
use crate::engine::model::Part;
use crate::engine::model::family::VaeDecoderGraph;
use crate::runtime::tensors::{extract_float, float_tensor, ort_err};

/// Decodes `[n, c, h, w]` latents one image at a time (fp16 VAE decoders have been seen to go
/// wrong at batch > 1, and one image bounds the decoder's memory). Returns `[n, 3, f·h, f·w]` in
/// [-1, 1] (not clamped), `f` being the VAE's `downsampling` (8 for SD's VAE).
pub fn decode(
    vae_decoder: &mut Part,
    graph: &VaeDecoderGraph,
    latents: ArrayViewD<'_, f32>,
    scaling_factor: f32,
    downsampling: usize,
) -> Result<ArrayD<f32>, PipelineError> {
    let file = vae_decoder.loaded.file.clone();
    let mut images = Vec::new();
    for i in 0..latents.len_of(Axis(0)) {
        let one = latents
            .slice_axis(Axis(0), (i..i + 1).into())
            .mapv(|v| v / scaling_factor);
        let input =
            float_tensor(one.view(), vae_decoder.feeding.float).map_err(|e| ort_err(&file, e))?;
        let outputs = vae_decoder
            .loaded
            .run(ort::inputs![graph.latent_sample => input])
            .map_err(|e| ort_err(&file, e))?;
        let image = extract_float(&outputs[graph.sample]).map_err(|e| ort_err(&file, e))?;
        let (h, w) = (
            latents.shape()[2] * downsampling,
            latents.shape()[3] * downsampling,
        );
        if image.shape() != [1, 3, h, w] {
            return Err(PipelineError::Shape {
                file: file.display().to_string(),
                what: format!(
                    "{} has shape {:?}, expected [1, 3, {h}, {w}]",
                    graph.sample,
                    image.shape()
                ),
            });
        }
        images.push(image);
    }
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|source| PipelineError::Concatenate {
        file: file.display().to_string(),
        source,
    })
}

/// One decoded image `[3, H, W]` in [-1, 1] to 8-bit RGB, as diffusers' image processor does:
/// `(x / 2 + 0.5).clamp(0, 1)`, then numpy's `(x * 255).round()` (round half to even).
pub fn to_rgb8(image: ArrayViewD<'_, f32>) -> RgbImage {
    let (h, w) = (image.shape()[1], image.shape()[2]);
    let byte = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round_ties_even() as u8;
    let mut out = RgbImage::new(w as u32, h as u32);
    if let Some(data) = image.as_slice() {
        // Contiguous planes (what the decoder returns): walk them side by side.
        let (r, rest) = data.split_at(h * w);
        let (g, b) = rest.split_at(h * w);
        for (((px, r), g), b) in out.pixels_mut().zip(r).zip(g).zip(b) {
            px.0 = [byte(*r), byte(*g), byte(*b)];
        }
        return out;
    }
    for y in 0..h {
        for x in 0..w {
            let px = image.slice(s![.., y, x]);
            out.put_pixel(
                x as u32,
                y as u32,
                image::Rgb([0, 1, 2].map(|c| byte(px[c]))),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, ShapeBuilder};

    #[test]
    fn contiguous_and_strided_planes_give_the_same_pixels() {
        let (h, w) = (5, 7);
        let values = Array3::from_shape_fn((3, h, w), |(c, y, x)| {
            (c as f32 * 0.37 + y as f32 * 0.11 - x as f32 * 0.23).sin() * 1.2
        });
        let contiguous = to_rgb8(values.view().into_dyn());
        let mut strided = Array3::<f32>::zeros((3, h, w).f());
        strided.assign(&values);
        assert!(strided.as_slice().is_none());
        assert_eq!(to_rgb8(strided.view().into_dyn()), contiguous);
        // diffusers' rounding: 0.5 * 255 = 127.5 rounds to 128 (even), -1 -> 0, 1 -> 255.
        let edge = Array3::from_shape_vec((3, 1, 1), vec![0.0, -1.0, 1.0]).unwrap();
        assert_eq!(
            to_rgb8(edge.view().into_dyn()).get_pixel(0, 0).0,
            [128, 0, 255]
        );
    }
}
