//! CLIP image preprocessing as transformers' (slow, PIL-based) `CLIPImageProcessor` does it,
//! driven by the model folder's `preprocessor_config.json`:
//!
//! 1. `do_convert_rgb`: images arrive as [`RgbImage`]; [`to_rgb`] converts other
//!    [`DynamicImage`]s as PIL's `convert("RGB")` does for 8-bit modes (grey replicated,
//!    alpha dropped, not composited);
//! 2. `do_resize`: with `size: {shortest_edge: s}` the short side becomes `s` and the long side
//!    `int(s * long / short)` (transformers' `get_resize_output_image_size` with
//!    `default_to_square=False`: truncated, not rounded); with `size: {height, width}` that exact
//!    size. The resize is Pillow's ([`super::resample`]) with the `resample` filter, on the
//!    uint8 image;
//! 3. `do_center_crop` to `crop_size`: offsets `(H - h) // 2` and `(W - w) // 2` (floor), on the
//!    uint8 image; when the image is smaller than the crop it is first zero-padded by
//!    `ceil((h - H) / 2)` before / the rest after, as transformers' `center_crop` does;
//! 4. `do_rescale`: `float32(float64(v) * rescale_factor)`;
//! 5. `do_normalize`: `(x - mean) / std` in float32, mean and std rounded to float32;
//! 6. channels first: `[3, height, width]`.
//!
//! With the pinned transformers and Pillow this gives transformers' `pixel_values` bit for bit
//! (`tests/rerank_parity.rs`). Keys missing from the file take `CLIPImageProcessor`'s
//! defaults (which are the OpenAI values); older files with integer `size` / `crop_size` are
//! read as transformers reads them (`{shortest_edge: n}` and `{height: n, width: n}`).

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};
use serde_json::{Map, Value};

use super::RerankError;
use super::resample::{self, Filter};

/// OpenAI CLIP's normalisation, transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How `do_resize` sizes an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// Short side to this many pixels, aspect kept.
    ShortestEdge(u32),
    /// Exactly this size.
    Exact { height: u32, width: u32 },
}

/// The settings of a `preprocessor_config.json` (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub do_resize: bool,
    pub size: ResizeTo,
    pub resample: Filter,
    pub do_center_crop: bool,
    /// (height, width)
    pub crop_size: (u32, u32),
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    /// Rounded to float32, as numpy does for a float32 image.
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub do_convert_rgb: bool,
    /// The file it was read from (for messages).
    pub source: PathBuf,
}

impl Default for ImageProcessor {
    /// `CLIPImageProcessor()`'s defaults.
    fn default() -> Self {
        ImageProcessor {
            do_resize: true,
            size: ResizeTo::ShortestEdge(224),
            resample: Filter::Bicubic,
            do_center_crop: true,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN.map(|v| v as f32),
            image_std: OPENAI_CLIP_STD.map(|v| v as f32),
            do_convert_rgb: true,
            source: PathBuf::new(),
        }
    }
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json`. Errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<ImageProcessor, RerankError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| RerankError::PreprocessorRead {
                file: path.to_path_buf(),
                source,
            })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| RerankError::PreprocessorJson {
                file: path.to_path_buf(),
                source,
            })?;
        ImageProcessor::from_json(&value, path)
    }

    /// Reads the settings from a parsed `preprocessor_config.json`; `path` is for messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<ImageProcessor, RerankError> {
        let err = |field: &str, problem: String| RerankError::Preprocessor {
            file: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        let obj = value
            .as_object()
            .ok_or_else(|| err("", "is not a JSON object".to_string()))?;
        let mut p = ImageProcessor {
            source: path.to_path_buf(),
            ..ImageProcessor::default()
        };

        let kind = obj
            .get("image_processor_type")
            .or_else(|| obj.get("feature_extractor_type"))
            .and_then(Value::as_str);
        if let Some(kind) = kind
            && !matches!(kind, "CLIPImageProcessor" | "CLIPFeatureExtractor")
        {
            tracing::warn!(
                file = %path.display(),
                image_processor_type = kind,
                "sdspool preprocesses images as transformers' CLIPImageProcessor (PIL) does; a {kind} may give slightly different pixels"
            );
        }

        let flag = |key: &str, default: bool| -> Result<bool, RerankError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(err(key, format!("is {other}, expected true or false"))),
            }
        };
        p.do_resize = flag("do_resize", p.do_resize)?;
        p.do_center_crop = flag("do_center_crop", p.do_center_crop)?;
        p.do_rescale = flag("do_rescale", p.do_rescale)?;
        p.do_normalize = flag("do_normalize", p.do_normalize)?;
        p.do_convert_rgb = flag("do_convert_rgb", p.do_convert_rgb)?;

        if let Some(v) = obj.get("size").filter(|v| !v.is_null()) {
            p.size = match v {
                Value::Number(_) => ResizeTo::ShortestEdge(pixels(v).ok_or_else(|| {
                    err("size", format!("is {v}, expected a positive pixel count"))
                })?),
                Value::Object(m) => size_dict(m, "size", &err)?,
                _ => {
                    return Err(err(
                        "size",
                        format!(
                            "is {v}, expected {{\"shortest_edge\": n}} or {{\"height\": h, \"width\": w}}"
                        ),
                    ));
                }
            };
        }
        if let Some(v) = obj.get("crop_size").filter(|v| !v.is_null()) {
            p.crop_size = match v {
                Value::Number(_) => {
                    let n = pixels(v).ok_or_else(|| {
                        err(
                            "crop_size",
                            format!("is {v}, expected a positive pixel count"),
                        )
                    })?;
                    (n, n)
                }
                Value::Object(m) => match size_dict(m, "crop_size", &err)? {
                    ResizeTo::Exact { height, width } => (height, width),
                    ResizeTo::ShortestEdge(_) => {
                        return Err(err("crop_size", "needs `height` and `width`".to_string()));
                    }
                },
                _ => {
                    return Err(err(
                        "crop_size",
                        format!("is {v}, expected {{\"height\": h, \"width\": w}}"),
                    ));
                }
            };
        }
        if let Some(v) = obj.get("resample").filter(|v| !v.is_null()) {
            let n = v.as_i64().ok_or_else(|| {
                err(
                    "resample",
                    format!("is {v}, expected a PIL resampling filter number"),
                )
            })?;
            p.resample = Filter::from_pil(n).ok_or_else(|| {
                err(
                    "resample",
                    format!(
                        "is {n}; supported: 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box), 5 (hamming){}",
                        if n == 0 { "; 0 (nearest) is not" } else { "" }
                    ),
                )
            })?;
        }
        if let Some(v) = obj.get("rescale_factor").filter(|v| !v.is_null()) {
            p.rescale_factor = v
                .as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| err("rescale_factor", format!("is {v}, expected a number")))?;
        }
        p.image_mean = per_channel(obj.get("image_mean"), OPENAI_CLIP_MEAN, "image_mean", &err)?;
        p.image_std = per_channel(obj.get("image_std"), OPENAI_CLIP_STD, "image_std", &err)?;
        if p.image_std.contains(&0.0) {
            return Err(err("image_std", "contains 0".to_string()));
        }
        Ok(p)
    }

    /// Height and width of the `pixel_values` every image becomes, when that does not depend on
    /// the image: with a center crop, or with an exact resize. `None` otherwise (then images of
    /// different aspects cannot share a batch).
    pub fn output_size(&self) -> Option<(u32, u32)> {
        if self.do_center_crop {
            Some(self.crop_size)
        } else if let (true, ResizeTo::Exact { height, width }) = (self.do_resize, self.size) {
            Some((height, width))
        } else {
            None
        }
    }

    /// The (width, height) `do_resize` gives an image of `width` x `height`.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        if !self.do_resize {
            return (width, height);
        }
        match self.size {
            ResizeTo::Exact {
                height: h,
                width: w,
            } => (w, h),
            ResizeTo::ShortestEdge(s) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(s * long / short), a true (float64) division, truncated.
                let new_long = (f64::from(s) * f64::from(long) / f64::from(short)) as u32;
                if width <= height {
                    (s, new_long)
                } else {
                    (new_long, s)
                }
            }
        }
    }

    /// Steps 2 and 3: the resized and cropped 8-bit image the floats are computed from.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = self.resized_size(image.width(), image.height());
        let resized = if (w, h) == image.dimensions() {
            image.clone()
        } else {
            resample::resize(image, w, h, self.resample)
        };
        if self.do_center_crop {
            center_crop(&resized, self.crop_size.0, self.crop_size.1)
        } else {
            resized
        }
    }

    /// Steps 4 to 6 on an 8-bit image: `[3, height, width]` floats appended to `out`.
    pub fn normalize_into(&self, image: &RgbImage, out: &mut Vec<f32>) {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let raw = image.as_raw();
        out.reserve(3 * w * h);
        for c in 0..3 {
            let (mean, std) = (self.image_mean[c], self.image_std[c]);
            for i in 0..w * h {
                let v = raw[i * 3 + c];
                let mut x = if self.do_rescale {
                    (f64::from(v) * self.rescale_factor) as f32
                } else {
                    f32::from(v)
                };
                if self.do_normalize {
                    x = (x - mean) / std;
                }
                out.push(x);
            }
        }
    }

    /// The whole preprocessing of one image: its `[3, height, width]` `pixel_values`.
    pub fn pixel_values(&self, image: &RgbImage) -> Vec<f32> {
        let crop = self.resize_and_crop(image);
        let mut out = Vec::new();
        self.normalize_into(&crop, &mut out);
        out
    }
}

/// Center crop to `height` x `width` as transformers' `image_transforms.center_crop` does,
/// zero-padding an image smaller than the crop.
pub fn center_crop(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (ow, oh) = (i64::from(image.width()), i64::from(image.height()));
    let (ch, cw) = (i64::from(height), i64::from(width));
    // Python's floor division.
    let top = (oh - ch).div_euclid(2);
    let left = (ow - cw).div_euclid(2);
    if top >= 0 && left >= 0 && top + ch <= oh && left + cw <= ow {
        return image::imageops::crop_imm(image, left as u32, top as u32, width, height).to_image();
    }
    // Pad: the image sits at (ceil((new - orig) / 2)) in a zero canvas of max(crop, orig).
    let (nh, nw) = (ch.max(oh), cw.max(ow));
    let top_pad = (nh - oh + 1) / 2;
    let left_pad = (nw - ow + 1) / 2;
    let (top, left) = (top + top_pad, left + left_pad);
    let (y0, y1) = (top.max(0), (top + ch).min(nh));
    let (x0, x1) = (left.max(0), (left + cw).min(nw));
    let mut out = RgbImage::new((x1 - x0) as u32, (y1 - y0) as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            let (sy, sx) = (y - top_pad, x - left_pad);
            if (0..oh).contains(&sy) && (0..ow).contains(&sx) {
                out.put_pixel(
                    (x - x0) as u32,
                    (y - y0) as u32,
                    *image.get_pixel(sx as u32, sy as u32),
                );
            }
        }
    }
    out
}

/// Converts any decoded image to 8-bit RGB as PIL's `Image.convert("RGB")` does for 8-bit modes:
/// grey is replicated, alpha dropped (not composited over a background). 16-bit and float
/// images are scaled to 8 bits by the `image` crate, which PIL does differently: pass 8-bit
/// images when exact agreement with transformers matters.
pub fn to_rgb(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

fn pixels(v: &Value) -> Option<u32> {
    v.as_u64()
        .filter(|&n| n > 0 && n <= 1 << 16)
        .map(|n| n as u32)
}

/// The error of preprocessor_config.json's key `field` (from [`ImageProcessor::from_json`]).
type FieldErr<'a> = &'a dyn Fn(&str, String) -> RerankError;

/// `{"shortest_edge": n}` or `{"height": h, "width": w}`, the value of `field`.
fn size_dict(
    m: &Map<String, Value>,
    field: &str,
    err: FieldErr<'_>,
) -> Result<ResizeTo, RerankError> {
    let get = |key: &str| -> Result<Option<u32>, RerankError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => pixels(v).map(Some).ok_or_else(|| {
                err(
                    field,
                    format!("`{key}` is {v}, expected a positive pixel count"),
                )
            }),
        }
    };
    // CLIPImageProcessor.resize looks at `shortest_edge` first.
    if let Some(s) = get("shortest_edge")? {
        return Ok(ResizeTo::ShortestEdge(s));
    }
    match (get("height")?, get("width")?) {
        (Some(height), Some(width)) => Ok(ResizeTo::Exact { height, width }),
        _ => Err(err(
            field,
            format!(
                "is {}, expected {{\"shortest_edge\": n}} or {{\"height\": h, \"width\": w}}",
                Value::Object(m.clone())
            ),
        )),
    }
}

/// One value per channel (a number is all three), the value of `field`; `default` when unset.
fn per_channel(
    v: Option<&Value>,
    default: [f64; 3],
    field: &str,
    err: FieldErr<'_>,
) -> Result<[f32; 3], RerankError> {
    let values = match v {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) => [n.as_f64().unwrap_or(f64::NAN); 3],
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x
                    .as_f64()
                    .ok_or_else(|| err(field, format!("contains {x}, expected numbers")))?;
            }
            out
        }
        Some(other) => {
            return Err(err(
                field,
                format!("is {other}, expected 3 numbers (one per channel)"),
            ));
        }
    };
    if values.iter().any(|x| !x.is_finite()) {
        return Err(err(
            field,
            "contains a value that is not a finite number".to_string(),
        ));
    }
    Ok(values.map(|x| x as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ImageProcessor, RerankError> {
        ImageProcessor::from_json(&v, Path::new("m/preprocessor_config.json"))
    }

    #[test]
    fn shortest_edge_output_sizes_follow_transformers() {
        let p = ImageProcessor::default();
        assert_eq!(p.resized_size(64, 64), (224, 224));
        assert_eq!(p.resized_size(300, 200), (336, 224));
        assert_eq!(p.resized_size(200, 300), (224, 336));
        assert_eq!(p.resized_size(513, 97), (1184, 224)); // 224 * 513 / 97 = 1184.66, truncated
        assert_eq!(p.resized_size(17, 5), (761, 224)); // 761.6
        assert_eq!(p.resized_size(225, 224), (225, 224));
        assert_eq!(p.resized_size(223, 224), (224, 225)); // 224.99
    }

    #[test]
    fn center_crop_offsets_floor_and_pad_like_transformers() {
        let mut img = RgbImage::new(5, 4);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8 + 1, y as u8 + 1, 0]);
        }
        // (5 - 2) // 2 = 1, (4 - 3) // 2 = 0.
        let c = center_crop(&img, 3, 2);
        assert_eq!(c.dimensions(), (2, 3));
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
        // Larger than the image: padded, image at ceil((7 - 5) / 2) = 1, ceil((6 - 4) / 2) = 1.
        let p = center_crop(&img, 6, 7);
        assert_eq!(p.dimensions(), (7, 6));
        assert_eq!(p.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(p.get_pixel(1, 1).0, [1, 1, 0]);
        assert_eq!(p.get_pixel(5, 4).0, [5, 4, 0]);
        assert_eq!(p.get_pixel(6, 5).0, [0, 0, 0]);
        // Odd padding: 8 - 5 = 3 -> 2 before, 1 after; the crop's left is (5 - 8) // 2 + 2 = 0.
        let q = center_crop(&img, 4, 8);
        assert_eq!(q.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(q.get_pixel(2, 0).0, [1, 1, 0]);
        assert_eq!(q.get_pixel(7, 0).0, [0, 0, 0]);
    }

    #[test]
    fn normalisation_is_rescale_in_f64_then_f32_arithmetic() {
        let p = ImageProcessor::default();
        let img = RgbImage::from_pixel(1, 1, image::Rgb([0, 128, 255]));
        let mut out = Vec::new();
        p.normalize_into(&img, &mut out);
        let expect = |v: u8, c: usize| {
            ((f64::from(v) * (1.0 / 255.0)) as f32 - p.image_mean[c]) / p.image_std[c]
        };
        assert_eq!(out, vec![expect(0, 0), expect(128, 1), expect(255, 2)]);
    }

    #[test]
    fn committed_preprocessor_config_reads_as_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("onnx/models/tiny-clip/preprocessor_config.json");
        let p = ImageProcessor::from_file(&path).unwrap();
        assert_eq!(
            ImageProcessor {
                source: PathBuf::new(),
                ..p.clone()
            },
            ImageProcessor::default()
        );
        assert_eq!(p.output_size(), Some((224, 224)));
    }

    #[test]
    fn legacy_integer_sizes_and_scalar_mean() {
        let p = parse(
            json!({"size": 256, "crop_size": 224, "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5]}),
        )
        .unwrap();
        assert_eq!(p.size, ResizeTo::ShortestEdge(256));
        assert_eq!(p.crop_size, (224, 224));
        assert_eq!(p.image_mean, [0.5; 3]);
        let q =
            parse(json!({"size": {"height": 240, "width": 320}, "do_center_crop": false})).unwrap();
        assert_eq!(
            q.size,
            ResizeTo::Exact {
                height: 240,
                width: 320
            }
        );
        assert_eq!(q.output_size(), Some((240, 320)));
        assert_eq!(q.resized_size(10, 10), (320, 240));
        let r = parse(json!({"do_center_crop": false})).unwrap();
        assert_eq!(r.output_size(), None);
    }

    #[test]
    fn bad_values_name_file_and_key() {
        for (v, key) in [
            (json!({"resample": 0}), "resample"),
            (json!({"size": {"longest_edge": 3}}), "size"),
            (json!({"image_mean": [0.1, 0.2]}), "image_mean"),
            (json!({"image_std": [0.1, 0.0, 0.2]}), "image_std"),
            (json!({"do_resize": "yes"}), "do_resize"),
            (json!({"crop_size": {"shortest_edge": 3}}), "crop_size"),
        ] {
            match parse(v.clone()) {
                Err(RerankError::Preprocessor { file, field, .. }) => {
                    assert_eq!(file, Path::new("m/preprocessor_config.json"));
                    assert_eq!(field, key, "{v}");
                }
                other => panic!("{v}: {other:?}"),
            }
        }
    }
}
