//! PNG files with their generation settings in a `parameters` text chunk, in the format
//! AUTOMATIC1111's web UI writes, so the images open with their settings in the tools users
//! already have.

use image::RgbImage;

use crate::engine::scheduler::SchedulerKind;

/// Settings written into an image.
#[derive(Debug, Clone)]
pub struct Parameters<'a> {
    pub prompt: &'a str,
    pub negative: &'a str,
    pub steps: u32,
    pub scheduler: SchedulerKind,
    pub guidance: f32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: &'a str,
    /// The SDXL refiner and where it took over, which AUTOMATIC1111 writes after the model as
    /// `Refiner: name, Refiner switch at: 0.8` (its refiner's `extra_generation_params`).
    pub refiner: Option<(&'a str, f64)>,
}

/// AUTOMATIC1111's name for a sampler, from the scheduler registry
/// ([`crate::engine::scheduler::REGISTRY`]).
pub fn a1111_sampler(kind: SchedulerKind) -> &'static str {
    kind.a1111_name()
}

impl Parameters<'_> {
    /// The text AUTOMATIC1111 stores: the prompt, a `Negative prompt:` line when there is one,
    /// then `Steps: .., Sampler: .., CFG scale: .., Seed: .., Size: WxH, Model: ..`.
    pub fn a1111_text(&self) -> String {
        let mut text = self.prompt.to_string();
        if !self.negative.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(self.negative);
        }
        text.push_str(&format!(
            "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
            self.steps,
            a1111_sampler(self.scheduler),
            self.guidance,
            self.seed,
            self.width,
            self.height,
            self.model
        ));
        if let Some((name, start)) = self.refiner {
            text.push_str(&format!(", Refiner: {name}, Refiner switch at: {start}"));
        }
        text
    }
}

/// The `parameters` text of the PNG at `path` (tEXt, zTXt or iTXt), `None` when it has none.
pub fn read_parameters(path: &std::path::Path) -> Result<Option<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let decoder = png::Decoder::new(std::io::BufReader::new(file));
    let reader = decoder
        .read_info()
        .map_err(|e| format!("is not a readable PNG: {e}"))?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return t
            .get_text()
            .map(Some)
            .map_err(|e| format!("its parameters text cannot be read: {e}"));
    }
    match info.utf8_text.iter().find(|t| t.keyword == "parameters") {
        Some(t) => t
            .get_text()
            .map(Some)
            .map_err(|e| format!("its parameters text cannot be read: {e}")),
        None => Ok(None),
    }
}

/// Encodes an RGB image as PNG with a `parameters` chunk (tEXt when the text is Latin-1, as PIL
/// writes it, iTXt otherwise).
pub fn encode(image: &RgbImage, parameters: &str) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        if parameters.chars().all(|c| (c as u32) < 256) {
            encoder.add_text_chunk("parameters".into(), parameters.into())?;
        } else {
            encoder.add_itxt_chunk("parameters".into(), parameters.into())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(image.as_raw())?;
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_parameters(bytes: &[u8]) -> String {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        if let Some(t) = info
            .uncompressed_latin1_text
            .iter()
            .find(|t| t.keyword == "parameters")
        {
            return t.text.clone();
        }
        let t = info
            .utf8_text
            .iter()
            .find(|t| t.keyword == "parameters")
            .unwrap();
        t.get_text().unwrap()
    }

    #[test]
    fn a1111_format_round_trips_through_png() {
        let p = Parameters {
            prompt: "a photo of a cat",
            negative: "blurry",
            steps: 20,
            scheduler: SchedulerKind::EulerAncestral,
            guidance: 7.5,
            seed: 42,
            width: 64,
            height: 64,
            model: "tiny-sd",
            refiner: None,
        };
        let text = p.a1111_text();
        assert_eq!(
            text,
            "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd"
        );
        let img = RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]));
        let bytes = encode(&img, &text).unwrap();
        assert_eq!(read_parameters(&bytes), text);
        let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(decoded, img);
    }

    #[test]
    fn a_refiner_follows_the_model_as_automatic1111_writes_it() {
        let p = Parameters {
            prompt: "a cat",
            negative: "",
            steps: 20,
            scheduler: SchedulerKind::Euler,
            guidance: 5.0,
            seed: 1,
            width: 1024,
            height: 768,
            model: "sdxl-base",
            refiner: Some(("sdxl-refiner", 0.8)),
        };
        assert_eq!(
            p.a1111_text(),
            "a cat\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 1024x768, Model: sdxl-base, Refiner: sdxl-refiner, Refiner switch at: 0.8"
        );
    }

    #[test]
    fn unicode_prompts_use_itxt() {
        let text = "一只猫 🐱\nSteps: 1, Sampler: DDIM, CFG scale: 1, Seed: 0, Size: 8x8, Model: m";
        let img = RgbImage::new(8, 8);
        assert_eq!(read_parameters(&encode(&img, text).unwrap()), text);
    }
}
