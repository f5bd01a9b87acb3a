//! PNG files with their generation settings in a `parameters` text chunk, in the format
//! AUTOMATIC1111's web UI writes, so the images open with their settings in the tools users
//! already have.

use image::RgbImage;

use crate::engine::model::provenance::Provenance;
use crate::engine::noise::RngKind;
use crate::engine::scheduler::{SchedulerKind, a1111};

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
    /// The model's checkpoint hash (AUTOMATIC1111's 10-digit short form), when known.
    pub model_hash: Option<&'a str>,
    /// The SDXL refiner and where it took over, which AUTOMATIC1111 writes as
    /// `Refiner: name [hash], Refiner switch at: 0.8` (its refiner's `extra_generation_params`).
    pub refiner: Option<(&'a str, f64)>,
    /// The refiner's checkpoint hash (10 digits), when known.
    pub refiner_hash: Option<&'a str>,
    /// This image's variation seed and its strength.
    pub subseed: Option<(u64, f32)>,
    /// (width, height) the seed's noise was drawn at.
    pub seed_resize_from: Option<(u32, u32)>,
    pub eta_noise_seed_delta: u64,
    /// AUTOMATIC1111's CLIP skip (1: none).
    pub clip_skip: u32,
    pub rng: RngKind,
    /// Where the model came from: its fused LoRAs are written as AUTOMATIC1111 records them.
    pub provenance: Option<&'a Provenance>,
}

/// AUTOMATIC1111's name for a sampler, from the scheduler registry
/// ([`crate::engine::scheduler::REGISTRY`]).
pub fn a1111_sampler(kind: SchedulerKind) -> &'static str {
    kind.a1111_name()
}

/// A value as AUTOMATIC1111's infotext writes it: as is, or as a JSON string when it holds a
/// comma, a colon or a line break.
fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::to_string(value).expect("a string serializes")
    } else {
        value.to_string()
    }
}

impl Parameters<'_> {
    /// The text AUTOMATIC1111 stores: the prompt (with the model's fused LoRAs as
    /// `<lora:name:weight>`), a `Negative prompt:` line when there is one, then the settings in
    /// the order its `create_infotext` writes them, each only when it applies:
    /// `Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, Variation seed,
    /// Variation seed strength, Seed resize from, Clip skip, ENSD, RNG, Lora hashes, Refiner,
    /// Refiner switch at`.
    pub fn a1111_text(&self) -> String {
        let mut text = self.prompt.to_string();
        if let Some(p) = self.provenance.filter(|p| !p.loras.is_empty()) {
            text.push(' ');
            text.push_str(&p.lora_tags());
        }
        if !self.negative.is_empty() {
            text.push_str("\nNegative prompt: ");
            text.push_str(self.negative);
        }
        let settings: Vec<String> = self
            .settings()
            .into_iter()
            .map(|(k, v)| format!("{k}: {}", quote(&v)))
            .collect();
        text.push('\n');
        text.push_str(&settings.join(", "));
        text
    }

    /// The settings line's keys and values, in AUTOMATIC1111's order.
    fn settings(&self) -> Vec<(&'static str, String)> {
        let (sampler, schedule) = a1111::sampler_and_schedule(self.scheduler);
        let mut s = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", sampler.to_string()),
            ("Schedule type", schedule.to_string()),
            ("CFG scale", self.guidance.to_string()),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
        ];
        if let Some(h) = self.model_hash {
            s.push(("Model hash", h.to_string()));
        }
        s.push(("Model", self.model.to_string()));
        if let Some((subseed, strength)) = self.subseed.filter(|(_, s)| *s != 0.0) {
            s.push(("Variation seed", subseed.to_string()));
            s.push(("Variation seed strength", strength.to_string()));
        }
        if let Some((w, h)) = self.seed_resize_from {
            s.push(("Seed resize from", format!("{w}x{h}")));
        }
        if self.clip_skip > 1 {
            s.push(("Clip skip", self.clip_skip.to_string()));
        }
        if self.eta_noise_seed_delta != 0 && a1111::records_ensd(self.scheduler) {
            s.push(("ENSD", self.eta_noise_seed_delta.to_string()));
        }
        // AUTOMATIC1111 omits its default, GPU (sdspool's philox).
        if self.rng == RngKind::TorchCpu {
            s.push(("RNG", "CPU".to_string()));
        }
        if let Some(h) = self.provenance.and_then(Provenance::lora_hashes) {
            s.push(("Lora hashes", h));
        }
        if let Some((name, start)) = self.refiner {
            let refiner = match self.refiner_hash {
                Some(h) => format!("{name} [{h}]"),
                None => name.to_string(),
            };
            s.push(("Refiner", refiner));
            s.push(("Refiner switch at", start.to_string()));
        }
        s
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

    /// Settings that add nothing to the text: no hash, no seed options, GPU seeds.
    fn plain() -> Parameters<'static> {
        Parameters {
            prompt: "",
            negative: "",
            steps: 1,
            scheduler: SchedulerKind::Euler,
            guidance: 1.0,
            seed: 0,
            width: 8,
            height: 8,
            model: "m",
            model_hash: None,
            refiner: None,
            refiner_hash: None,
            subseed: None,
            seed_resize_from: None,
            eta_noise_seed_delta: 0,
            clip_skip: 1,
            rng: RngKind::Philox,
            provenance: None,
        }
    }

    #[test]
    fn every_setting_is_written_as_automatic1111_writes_it_in_its_order() {
        let provenance: Provenance = serde_json::from_value(serde_json::json!({
            "format": 1,
            "checkpoint": {"file": "m.safetensors", "sha256": "ab".repeat(32), "family": "sd15"},
            "loras": [{"name": "detail", "file": "detail.pt", "sha256": "cd".repeat(32), "weight": 0.8},
                      {"name": "style", "file": "style.safetensors", "sha256": "ef".repeat(32), "weight": 1.0,
                       "addnet_sha256": "12".repeat(32)}]
        }))
        .unwrap();
        let p = Parameters {
            prompt: "a cat, (red:1.2)",
            negative: "blurry",
            steps: 20,
            scheduler: SchedulerKind::EulerAncestral,
            guidance: 7.5,
            seed: 42,
            width: 512,
            height: 768,
            model: "sd15",
            model_hash: Some("abababab00"),
            refiner: Some(("refiner", 0.8)),
            refiner_hash: Some("0123456789"),
            subseed: Some((7, 0.25)),
            seed_resize_from: Some((448, 640)),
            eta_noise_seed_delta: 31337,
            clip_skip: 2,
            rng: RngKind::TorchCpu,
            provenance: Some(&provenance),
        };
        assert_eq!(
            p.a1111_text(),
            "a cat, (red:1.2) <lora:detail:0.8> <lora:style:1>\nNegative prompt: blurry\n\
             Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, \
             Size: 512x768, Model hash: abababab00, Model: sd15, Variation seed: 7, \
             Variation seed strength: 0.25, Seed resize from: 448x640, Clip skip: 2, ENSD: 31337, \
             RNG: CPU, Lora hashes: \"detail: cdcdcdcdcdcd, style: 121212121212\", \
             Refiner: refiner [0123456789], Refiner switch at: 0.8"
        );
        // ENSD only for samplers that use it; the schedule named where DPM++ 2M's own is Karras;
        // a variation seed of strength 0 is none.
        let p = Parameters {
            scheduler: SchedulerKind::DpmPp2m,
            eta_noise_seed_delta: 31337,
            subseed: Some((7, 0.0)),
            ..plain()
        };
        assert_eq!(
            p.a1111_text(),
            "\nSteps: 1, Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale: 1, Seed: 0, Size: 8x8, Model: m"
        );
    }

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
            ..plain()
        };
        let text = p.a1111_text();
        assert_eq!(
            text,
            "a photo of a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny-sd"
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
            ..plain()
        };
        assert_eq!(
            p.a1111_text(),
            "a cat\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 5, Seed: 1, Size: 1024x768, Model: sdxl-base, Refiner: sdxl-refiner, Refiner switch at: 0.8"
        );
    }

    #[test]
    fn unicode_prompts_use_itxt() {
        let text = "一只猫 🐱\nSteps: 1, Sampler: DDIM, CFG scale: 1, Seed: 0, Size: 8x8, Model: m";
        let img = RgbImage::new(8, 8);
        assert_eq!(read_parameters(&encode(&img, text).unwrap()), text);
    }
}
