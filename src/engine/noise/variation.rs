//! AUTOMATIC1111's seed options on top of a generator ([`super::NoiseGenerator`]), as its
//! `ImageRNG` applies them to one image's initial noise:
//!
//! * variation seed: the noise of `seed` and the noise of `subseed` (a fresh generator) are
//!   spherically interpolated with `subseed_strength` ([`slerp`], AUTOMATIC1111's formula,
//!   including its choice of axis and its linear fallback);
//! * `seed_resize_from_w/h`: the noise is drawn at the old size and pasted, centred, into a
//!   fresh draw of the seed at the new size ([`paste_centered`]), so that a seed keeps its
//!   composition at another size;
//! * `eta_noise_seed_delta` (ENSD): after the initial noise, the per-step noise of ancestral
//!   samplers comes from a fresh generator seeded `seed + delta`.

use ndarray::{ArrayD, Axis};

use super::{NoiseGenerator, RngKind};

/// AUTOMATIC1111's seed options of a request; the default changes nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeedOptions {
    /// The variation seed of each candidate (`None`: no variation).
    pub subseeds: Option<Vec<u64>>,
    /// 0 keeps the seed's noise, 1 is the variation seed's.
    pub subseed_strength: f32,
    /// The size (width, height in pixels) the seed's noise was drawn at.
    pub resize_from: Option<(u32, u32)>,
    /// ENSD: added to the seed of the per-step noise's generator (0: none).
    pub eta_noise_seed_delta: u64,
}

/// The initial noise of one candidate (`shape` `[1, c, h, w]` latents) and the generator its
/// per-step noise continues from.
pub fn first_noise(
    kind: RngKind,
    seed: u64,
    subseed: Option<u64>,
    options: &SeedOptions,
    shape: &[usize],
    downsampling: usize,
) -> (ArrayD<f32>, NoiseGenerator) {
    let mut generator = NoiseGenerator::new(kind, seed);
    let noise_shape: Vec<usize> = match options.resize_from {
        Some((w, h)) if w > 0 && h > 0 => {
            let mut s = shape.to_vec();
            let n = s.len();
            s[n - 2] = h as usize / downsampling;
            s[n - 1] = w as usize / downsampling;
            s
        }
        _ => shape.to_vec(),
    };
    let resized = noise_shape != shape;
    let mut noise = if resized {
        NoiseGenerator::new(kind, seed).randn(&noise_shape)
    } else {
        generator.randn(shape)
    };
    if let Some(sub) = subseed.filter(|_| options.subseed_strength != 0.0) {
        let subnoise = NoiseGenerator::new(kind, sub).randn(&noise_shape);
        noise = slerp(options.subseed_strength, &noise, &subnoise);
    }
    if resized {
        let mut x = generator.randn(shape);
        paste_centered(&mut x, &noise);
        noise = x;
    }
    if options.eta_noise_seed_delta != 0 {
        generator = NoiseGenerator::new(kind, seed.wrapping_add(options.eta_noise_seed_delta));
    }
    (noise, generator)
}

/// AUTOMATIC1111's `slerp(val, low, high)` on `[…, h, w]` noise: the vectors are the columns
/// along the height axis (its `dim=1` of a `[c, h, w]` tensor); when their mean cosine is above
/// 0.9995 it falls back to `low * val + high * (1 - val)` (sic).
pub fn slerp(val: f32, low: &ArrayD<f32>, high: &ArrayD<f32>) -> ArrayD<f32> {
    let axis = Axis(low.ndim() - 2);
    let norm = |a: &ArrayD<f32>| {
        a.map_axis(axis, |col| col.iter().map(|v| v * v).sum::<f32>().sqrt())
            .insert_axis(axis)
    };
    let low_n = low / &norm(low);
    let high_n = high / &norm(high);
    let dot = (&low_n * &high_n).sum_axis(axis);
    let mean = dot.sum() / dot.len() as f32;
    if mean > 0.9995 {
        return low * val + high * (1.0 - val);
    }
    let omega = dot.mapv(f32::acos);
    let so = omega.mapv(f32::sin);
    let a = (omega.mapv(|o| ((1.0 - val) * o).sin()) / &so).insert_axis(axis);
    let b = (omega.mapv(|o| (val * o).sin()) / &so).insert_axis(axis);
    &a * low + &b * high
}

/// `noise` (`[…, h0, w0]`) pasted into `x` (`[…, h, w]`), centred; cropped where larger.
pub fn paste_centered(x: &mut ArrayD<f32>, noise: &ArrayD<f32>) {
    let n = x.ndim();
    let (h, w) = (x.shape()[n - 2] as i64, x.shape()[n - 1] as i64);
    let (h0, w0) = (noise.shape()[n - 2] as i64, noise.shape()[n - 1] as i64);
    // Python's `//` floors.
    let dx = (w - w0).div_euclid(2);
    let dy = (h - h0).div_euclid(2);
    let cw = if dx >= 0 { w0 } else { w0 + 2 * dx };
    let ch = if dy >= 0 { h0 } else { h0 + 2 * dy };
    let (tx, ty) = (dx.max(0), dy.max(0));
    let (sx, sy) = ((-dx).max(0), (-dy).max(0));
    // Leading axes are taken whole.
    let mut target = x.slice_each_axis_mut(|ax| {
        let i = ax.axis.index();
        if i == n - 2 {
            ndarray::Slice::from(ty as isize..(ty + ch) as isize)
        } else if i == n - 1 {
            ndarray::Slice::from(tx as isize..(tx + cw) as isize)
        } else {
            ndarray::Slice::from(..)
        }
    });
    let source = noise.slice_each_axis(|ax| {
        let i = ax.axis.index();
        if i == n - 2 {
            ndarray::Slice::from(sy as isize..(sy + ch) as isize)
        } else if i == n - 1 {
            ndarray::Slice::from(sx as isize..(sx + cw) as isize)
        } else {
            ndarray::Slice::from(..)
        }
    });
    target.assign(&source);
}
