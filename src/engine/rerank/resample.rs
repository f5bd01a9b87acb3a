//! Pillow's `Image.resize` for 8-bit RGB images, ported from `libImaging/Resample.c` so that
//! CLIP preprocessing gives the same bytes as transformers' `CLIPImageProcessor`, which resizes
//! through `PIL.Image.resize(size, resample=...)` on the uint8 image.
//!
//! What makes Pillow's result what it is, and is reproduced here step for step:
//!
//! * a separable convolution, **horizontal pass first**, then vertical; a pass runs only when
//!   that dimension changes (an unchanged size is a plain copy);
//! * per output pixel `i` the filter is centred at `(i + 0.5) * scale` in input coordinates,
//!   `scale = in / out`; when downscaling the filter is stretched by `scale` (antialiasing: the
//!   support grows to `support * scale` and the argument shrinks by `1 / scale`), when
//!   upscaling it is not;
//! * the taps run from `trunc(center - support + 0.5)` to `trunc(center + support + 0.5)`,
//!   clamped to the image (the edge is not extended: the weights of the remaining taps are
//!   renormalised to sum to 1);
//! * the weights (computed in double precision) are turned into 22-bit fixed point
//!   (`PRECISION_BITS = 32 - 8 - 2`), rounded half away from zero, and each output sample is
//!   `(2^21 + Σ pixel · weight) >> 22`, clamped to 0..=255, in 32-bit integers; the vertical
//!   pass reads the 8-bit output of the horizontal pass.
//!
//! Pillow's `NEAREST` filter takes another code path (an affine transform) and is not ported.
//!
//! **Why hand-written, not the `image` crate's resize.** `image::imageops` filters in floating
//! point with other supports and rounding, so its bytes differ from Pillow's by a level here
//! and there; the CLIP scores then differ from transformers' for the same image. Parity with
//! transformers' `pixel_values` (`tests/rerank_parity.rs`) needs Pillow's fixed-point
//! arithmetic exactly.

use image::RgbImage;

/// Pillow's convolution filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From the integer PIL and transformers' `preprocessor_config.json` use for `resample`
    /// (`PIL.Image.Resampling`): 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming. 0 (nearest)
    /// and anything else is `None`.
    pub fn from_pil(value: i64) -> Option<Filter> {
        match value {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            5 => Some(Filter::Hamming),
            _ => None,
        }
    }

    /// The filter's support (half-width) at scale 1.
    pub fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The filter's kernel, as Pillow evaluates it (double precision, same operation order).
    pub fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // `0.54f + 0.46f * cos(x)` in C: float constants widened to double.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                // Keys' cubic convolution with a = -0.5.
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights of one pass: for output pixel `i`, taps `first[i]..first[i] + count[i]`
/// with weights `weights[i * ksize..][..count[i]]`.
#[derive(Debug, Clone)]
struct Coefficients {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range (`box` = 0..in_size).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    // Pillow passes the box as float32; whole pixel counts below 2^24 are exact in it.
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        first.push(xmin as usize);
        count.push(n);
    }
    Coefficients {
        ksize,
        first,
        count,
        weights,
    }
}

/// `clip8`: the 8-bit value of a fixed-point sum, clamped.
#[inline]
fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `src` to `width` x `height` exactly as Pillow's `Image.resize((width, height),
/// resample=filter)` does on an RGB image (see the [module docs](self)).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let (out_w, out_h) = (width as usize, height as usize);
    if out_w == 0 || out_h == 0 || in_w == 0 || in_h == 0 {
        return RgbImage::new(width, height);
    }
    let mut current = src.clone();
    let half = 1i32 << (PRECISION_BITS - 1);

    if out_w != in_w {
        let c = coefficients(in_w, out_w, filter);
        let input = current.as_raw();
        let mut out = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            let row = &input[y * in_w * 3..(y + 1) * in_w * 3];
            for xx in 0..out_w {
                let k = &c.weights[xx * c.ksize..xx * c.ksize + c.count[xx]];
                let mut ss = [half; 3];
                for (x, &w) in k.iter().enumerate() {
                    let p = &row[(c.first[xx] + x) * 3..(c.first[xx] + x) * 3 + 3];
                    for ch in 0..3 {
                        ss[ch] += i32::from(p[ch]) * w;
                    }
                }
                let o = (y * out_w + xx) * 3;
                for ch in 0..3 {
                    out[o + ch] = clip8(ss[ch]);
                }
            }
        }
        current = RgbImage::from_raw(out_w as u32, in_h as u32, out).expect("buffer size matches");
    }

    if out_h != in_h {
        let c = coefficients(in_h, out_h, filter);
        let w = current.width() as usize;
        let input = current.as_raw();
        let mut out = vec![0u8; w * out_h * 3];
        for yy in 0..out_h {
            let k = &c.weights[yy * c.ksize..yy * c.ksize + c.count[yy]];
            for xx in 0..w {
                let mut ss = [half; 3];
                for (y, &wt) in k.iter().enumerate() {
                    let o = ((c.first[yy] + y) * w + xx) * 3;
                    for ch in 0..3 {
                        ss[ch] += i32::from(input[o + ch]) * wt;
                    }
                }
                let o = (yy * w + xx) * 3;
                for ch in 0..3 {
                    out[o + ch] = clip8(ss[ch]);
                }
            }
        }
        current = RgbImage::from_raw(w as u32, out_h as u32, out).expect("buffer size matches");
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_filter_numbers() {
        assert_eq!(Filter::from_pil(3), Some(Filter::Bicubic));
        assert_eq!(Filter::from_pil(2), Some(Filter::Bilinear));
        assert_eq!(Filter::from_pil(1), Some(Filter::Lanczos));
        assert_eq!(Filter::from_pil(4), Some(Filter::Box));
        assert_eq!(Filter::from_pil(5), Some(Filter::Hamming));
        assert_eq!(Filter::from_pil(0), None);
        assert_eq!(Filter::from_pil(6), None);
    }

    #[test]
    fn bicubic_kernel_values() {
        let f = Filter::Bicubic;
        assert_eq!(f.eval(0.0), 1.0);
        assert_eq!(f.eval(1.0), 0.0);
        assert_eq!(f.eval(2.0), 0.0);
        // a = -0.5: k(0.5) = 0.5625, k(1.5) = -0.0625.
        assert_eq!(f.eval(0.5), 0.5625);
        assert_eq!(f.eval(-1.5), -0.0625);
    }

    #[test]
    fn fixed_point_weights_sum_to_one_and_downscale_widens_support() {
        // Upscaling: 4 taps of the bicubic kernel at most (ksize 5).
        let up = coefficients(10, 23, Filter::Bicubic);
        assert_eq!(up.ksize, 5);
        // Downscaling by 3: support 6, ksize 13, antialiased.
        let down = coefficients(30, 10, Filter::Bicubic);
        assert_eq!(down.ksize, 13);
        assert_eq!(down.count, vec![8, 11, 12, 12, 12, 12, 12, 12, 10, 7]);
        for c in [&up, &down] {
            for i in 0..c.first.len() {
                let sum: i64 = c.weights[i * c.ksize..i * c.ksize + c.count[i]]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                // Rounding each weight moves the sum by at most half a unit per tap.
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{sum}"
                );
            }
        }
        // Edge pixel: the taps start at 0, not before it.
        assert_eq!(down.first[0], 0);
    }

    #[test]
    fn same_size_is_a_copy_and_constant_images_stay_constant() {
        let mut img = RgbImage::new(7, 5);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = image::Rgb([i as u8, (i * 3) as u8, 200]);
        }
        assert_eq!(resize(&img, 7, 5, Filter::Bicubic), img);
        let flat = RgbImage::from_pixel(13, 9, image::Rgb([10, 128, 255]));
        for f in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (w, h) in [(5, 4), (31, 20), (13, 3)] {
                let out = resize(&flat, w, h, f);
                assert_eq!((out.width(), out.height()), (w, h));
                assert!(out.pixels().all(|p| p.0 == [10, 128, 255]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn bicubic_overshoot_is_clipped() {
        // A hard 0/255 edge upscaled with a negative-lobe kernel rings past 0..=255 in the
        // accumulator; clip8 clamps instead of wrapping.
        let mut img = RgbImage::new(4, 1);
        for x in 0..4 {
            img.put_pixel(x, 0, image::Rgb(if x < 2 { [0; 3] } else { [255; 3] }));
        }
        let out = resize(&img, 16, 1, Filter::Bicubic);
        let row: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
        assert_eq!(row.first(), Some(&0));
        assert_eq!(row.last(), Some(&255));
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
    }
}
