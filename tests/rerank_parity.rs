//! The CLIP reranker against transformers (goldens of `onnx/golden_rerank.py`: Pillow's
//! `Image.resize`, `CLIPProcessor`, and the PyTorch `CLIPModel` of the committed tiny-clip):
//!
//! * Pillow's resampling, every filter: byte-identical;
//! * preprocessing of 13 images of different sizes, aspects and modes: the resized and cropped
//!   8-bit image byte-identical, `pixel_values` within 1e-6 of transformers' (in practice equal);
//! * token ids and attention masks equal to `CLIPProcessor(padding="max_length")`'s;
//! * for the one-file export (`onnx/models/tiny-clip`) and the two-tower export
//!   (`tests/fixtures/tiny-clip-split`): normalised text and image embeddings within 1e-4
//!   relative (L2) error, cosines within 1e-5, CLIPScores within 1e-3, identical rankings;
//! * how the one-file export is fed (runs, cached text, placeholders), and load errors.
//!
//! Regenerate with `HF_HUB_OFFLINE=1 onnx/.venv/bin/python onnx/golden_rerank.py`.

mod common;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::Value;

use sdspool::engine::rerank::preprocess::{ImageProcessor, to_rgb};
use sdspool::engine::rerank::resample::{self, Filter};
use sdspool::engine::rerank::{RerankConfig, RerankError, Reranker, rank};

const EMBED_REL_TOL: f64 = 1e-4;
const COSINE_TOL: f64 = 1e-5;
const PIXEL_TOL: f64 = 1e-6;

fn golden_dir() -> PathBuf {
    common::root().join("tests/golden/rerank")
}

fn index() -> Value {
    let path = golden_dir().join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_rgb(rel: &str) -> RgbImage {
    let path = golden_dir().join(rel);
    to_rgb(image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn golden_images(index: &Value) -> Vec<RgbImage> {
    index["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| load_rgb(i["file"].as_str().unwrap()))
        .collect()
}

fn processor() -> ImageProcessor {
    ImageProcessor::from_file(&common::model_dir("tiny-clip").join("preprocessor_config.json"))
        .unwrap()
}

/// Relative L2 error of `a` against `b`.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm
}

/// Pixels that differ between two images, and the largest difference.
fn image_diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut n = 0;
    let mut max = 0;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        if x != y {
            n += 1;
            max = max.max(x.abs_diff(*y));
        }
    }
    (n, max)
}

#[test]
fn resampling_matches_pillow_byte_for_byte() {
    let index = index();
    let cases = index["resample"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let src = load_rgb(case["source"].as_str().unwrap());
        let filter = Filter::from_pil(case["pil_filter"].as_i64().unwrap()).unwrap();
        let size = f64s(&case["size"]);
        let expected = load_rgb(case["file"].as_str().unwrap());
        let got = resample::resize(&src, size[0] as u32, size[1] as u32, filter);
        let (n, max) = image_diff(&got, &expected);
        if n > 0 {
            failures.push(format!("{}: {n} bytes differ (max {max})", case["file"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("resample: {} cases identical to Pillow", cases.len());
}

#[test]
fn pixel_values_match_clip_image_processor() {
    let index = index();
    let p = processor();
    let mean = p.image_mean;
    let std = p.image_std;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for info in index["images"].as_array().unwrap() {
        let name = info["name"].as_str().unwrap();
        let image = load_rgb(info["file"].as_str().unwrap());
        let resized = f64s(&info["resized"]);
        assert_eq!(
            p.resized_size(image.width(), image.height()),
            (resized[0] as u32, resized[1] as u32),
            "{name}: resize output size"
        );

        // The 8-bit stage: resize + center crop.
        let crop = p.resize_and_crop(&image);
        let expected_crop = load_rgb(info["crop"].as_str().unwrap());
        let (n, max) = image_diff(&crop, &expected_crop);
        if n > 0 {
            failures.push(format!("{name}: {n} bytes of the resized+cropped image differ from transformers' (max {max})"));
        }

        // The floats: against transformers' pixel_values (losslessly encoded by the golden
        // crop, see golden_rerank.py), against raw samples, and their sums.
        let px = p.pixel_values(&image);
        assert_eq!(px.len(), 3 * 224 * 224);
        let mut max_abs = 0.0f64;
        let mut unequal = 0usize;
        let raw = expected_crop.as_raw();
        for c in 0..3 {
            for i in 0..224 * 224 {
                let want =
                    ((f64::from(raw[i * 3 + c]) * p.rescale_factor) as f32 - mean[c]) / std[c];
                let got = px[c * 224 * 224 + i];
                if got.to_bits() != want.to_bits() {
                    unequal += 1;
                }
                max_abs = max_abs.max((f64::from(got) - f64::from(want)).abs());
            }
        }
        let mut sample_max = 0.0f64;
        for s in info["samples"].as_array().unwrap() {
            let s = f64s(s);
            let got = px[(s[0] as usize) * 224 * 224 + (s[1] as usize) * 224 + s[2] as usize];
            sample_max = sample_max.max((f64::from(got) - s[3]).abs());
        }
        let sum: f64 = px.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = px.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let sum_rel = (sum - info["pixel_sum"].as_f64().unwrap()).abs()
            / info["pixel_sum_sq"].as_f64().unwrap().sqrt();
        let sq_rel = (sum_sq / info["pixel_sum_sq"].as_f64().unwrap() - 1.0).abs();
        if max_abs > PIXEL_TOL || sample_max > PIXEL_TOL || sum_rel > 1e-9 || sq_rel > 1e-9 {
            failures.push(format!(
                "{name}: pixel_values max |diff| {max_abs:e} (samples {sample_max:e}), sums off by {sum_rel:e} / {sq_rel:e}"
            ));
        }
        report.push(format!(
            "{name}: {unequal} of {} floats not bit-identical, max |diff| {max_abs:e}",
            px.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn tokens_match_clip_processor() {
    let index = index();
    let (_, reranker) = load("tiny-clip", 8);
    let ids = index["input_ids"].as_array().unwrap();
    let masks = index["attention_mask"].as_array().unwrap();
    for (i, prompt) in strs(&index["prompts"]).iter().enumerate() {
        let enc = reranker.tokenizer().encode(prompt).unwrap();
        let want: Vec<i64> = ids[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(enc.ids, want, "{prompt}");
        let mask: Vec<i64> = masks[i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let ones = mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(ones, enc.n_tokens, "{prompt}");
        assert!(mask[..ones].iter().all(|&m| m == 1));
    }
}

fn model_folder(which: &str) -> PathBuf {
    match which {
        "tiny-clip" => common::model_dir("tiny-clip"),
        "tiny-clip-split" => common::root().join("tests/fixtures/tiny-clip-split"),
        other => panic!("unknown model {other}"),
    }
}

fn load(which: &str, batch_size: usize) -> (RerankConfig, Reranker) {
    let cfg = RerankConfig {
        model: model_folder(which),
        enabled: true,
        batch_size: NonZeroUsize::new(batch_size).unwrap(),
    };
    let r = Reranker::load(common::runtime(), &cfg, 0).unwrap_or_else(|e| panic!("{which}: {e}"));
    (cfg, r)
}

/// Embeddings, cosines, CLIPScores and rankings of one export against the PyTorch goldens.
fn parity(which: &str) {
    let index = index();
    let images = golden_images(&index);
    let prompts = strs(&index["prompts"]);
    let text_golden = matrix(&index["text_embeds"]);
    let image_golden = matrix(&index["image_embeds"]);
    let cos_golden = matrix(&index["cosine"]);
    let clip_golden = matrix(&index["clip_score"]);
    let rank_golden: Vec<Vec<usize>> = index["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect()
        })
        .collect();

    // Batch size 3: 13 images make 5 runs, the last one partial.
    let (_, mut r) = load(which, 3);
    let mut worst_image = 0.0f64;
    let embeds = r.image_embeddings(&images).unwrap();
    assert_eq!(embeds.len(), images.len());
    for (e, g) in embeds.iter().zip(&image_golden) {
        worst_image = worst_image.max(rel_err(e, g));
    }
    let mut worst_text = 0.0f64;
    let mut worst_cos = 0.0f64;
    let mut worst_clip = 0.0f64;
    for (p, prompt) in prompts.iter().enumerate() {
        let scores = r.score(prompt, &images).unwrap();
        let t = r.text_embedding(prompt).unwrap();
        worst_text = worst_text.max(rel_err(&t, &text_golden[p]));
        for (j, s) in scores.iter().enumerate() {
            worst_cos = worst_cos.max((f64::from(s.cosine) - cos_golden[p][j]).abs());
            worst_clip = worst_clip.max((f64::from(s.clip_score) - clip_golden[p][j]).abs());
        }
        let cosines: Vec<f32> = scores.iter().map(|s| s.cosine).collect();
        assert_eq!(
            rank(&cosines),
            rank_golden[p],
            "{which}: ranking of {prompt:?}"
        );
    }
    eprintln!(
        "{which}: max relative L2 error: text {worst_text:.2e}, image {worst_image:.2e}; max |cos diff| {worst_cos:.2e}; max |CLIPScore diff| {worst_clip:.2e}"
    );
    assert!(
        worst_image <= EMBED_REL_TOL,
        "{which}: image embeddings off by {worst_image:e}"
    );
    assert!(
        worst_text <= EMBED_REL_TOL,
        "{which}: text embeddings off by {worst_text:e}"
    );
    assert!(
        worst_cos <= COSINE_TOL,
        "{which}: cosines off by {worst_cos:e}"
    );
    assert!(
        worst_clip <= 100.0 * COSINE_TOL,
        "{which}: CLIPScores off by {worst_clip:e}"
    );

    // The batch size does not change the embeddings.
    let (_, mut r8) = load(which, 8);
    for (a, b) in r8.image_embeddings(&images).unwrap().iter().zip(&embeds) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-6, "{which}: batch 8 vs batch 3 differ by {d}");
    }
}

#[test]
fn one_file_export_matches_pytorch() {
    parity("tiny-clip");
}

#[test]
fn two_tower_export_matches_pytorch() {
    parity("tiny-clip-split");
}

#[test]
fn one_file_export_encodes_each_prompt_once() {
    let index = index();
    let images: Vec<RgbImage> = golden_images(&index).into_iter().take(7).collect();
    let (_, mut r) = load("tiny-clip", 3);

    // A new prompt: its text rides along with the first batch (3 + 3 + 1 images, 3 runs).
    let first = r.score("a photo of a cat", &images).unwrap();
    let s = r.stats();
    assert_eq!(
        (s.runs, s.texts_encoded, s.images_encoded),
        (3, 1, 7),
        "{s:?}"
    );
    assert_eq!((s.placeholder_texts, s.placeholder_images), (2, 0), "{s:?}");

    // Again: the text comes from the cache; same scores.
    let again = r.score("a photo of a cat", &images).unwrap();
    assert_eq!(first, again);
    let s = r.stats();
    assert_eq!(
        (s.runs, s.texts_encoded, s.placeholder_texts),
        (6, 1, 5),
        "{s:?}"
    );
    r.text_embedding("a photo of a cat").unwrap();
    assert_eq!(r.stats().runs, 6);

    // A text on its own needs one placeholder image; its embedding equals the fused one.
    let alone = r.text_embedding("noise").unwrap();
    let s = r.stats();
    assert_eq!(
        (s.runs, s.texts_encoded, s.placeholder_images),
        (7, 2, 1),
        "{s:?}"
    );
    let (_, mut fresh) = load("tiny-clip", 3);
    fresh.score("noise", &images[..1]).unwrap();
    let fused = fresh.text_embedding("noise").unwrap();
    assert_eq!(fresh.stats().runs, 1);
    let d = alone
        .iter()
        .zip(&fused)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        d <= 1e-6,
        "text embedding depends on the image batch by {d}"
    );

    assert!(r.score("anything", &[]).unwrap().is_empty());
    assert_eq!(r.stats().runs, 7);
}

#[test]
fn two_tower_export_runs_no_placeholders() {
    let index = index();
    let images: Vec<RgbImage> = golden_images(&index).into_iter().take(5).collect();
    let (_, mut r) = load("tiny-clip-split", 2);
    r.score("a photo of a cat", &images).unwrap();
    r.score("a photo of a cat", &images).unwrap();
    let s = r.stats();
    assert_eq!(
        (s.runs, s.texts_encoded, s.images_encoded),
        (7, 1, 10),
        "{s:?}"
    );
    assert_eq!((s.placeholder_texts, s.placeholder_images), (0, 0));
    assert!(r.folder().tokenizer_dir.ends_with("tokenizer"));
}

fn load_err(folder: &Path) -> RerankError {
    let cfg = RerankConfig {
        model: folder.to_path_buf(),
        enabled: true,
        batch_size: NonZeroUsize::new(8).unwrap(),
    };
    Reranker::load(common::runtime(), &cfg, 0).expect_err("load must fail")
}

#[test]
fn broken_folders_are_reported_by_file_and_field() {
    let tiny_clip = common::model_dir("tiny-clip");

    // An SD text encoder where the CLIP model should be.
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong");
    common::copy_dir(&tiny_clip, &wrong);
    std::fs::copy(
        common::model_dir("tiny-sd").join("text_encoder/model.onnx"),
        wrong.join("model.onnx"),
    )
    .unwrap();
    match load_err(&wrong) {
        RerankError::Signature(e) => {
            assert_eq!(e.file, wrong.join("model.onnx"));
            assert_eq!(e.field, "input 'pixel_values'");
        }
        other => panic!("{other}"),
    }

    // Towers swapped.
    let swapped = tmp.path().join("swapped");
    common::copy_dir(&model_folder("tiny-clip-split"), &swapped);
    std::fs::rename(swapped.join("text_model.onnx"), swapped.join("tmp.onnx")).unwrap();
    std::fs::rename(
        swapped.join("vision_model.onnx"),
        swapped.join("text_model.onnx"),
    )
    .unwrap();
    std::fs::rename(swapped.join("tmp.onnx"), swapped.join("vision_model.onnx")).unwrap();
    match load_err(&swapped) {
        RerankError::Signature(e) => {
            assert_eq!(e.file, swapped.join("text_model.onnx"));
            assert_eq!(e.field, "input 'input_ids'");
        }
        other => panic!("{other}"),
    }

    // A crop the model cannot take.
    let crop = tmp.path().join("crop");
    common::copy_dir(&tiny_clip, &crop);
    let cfg_path = crop.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"resample\": 3", "\"resample\": 0");
    std::fs::write(&cfg_path, text).unwrap();
    match load_err(&crop) {
        RerankError::Preprocessor { file, field, .. } => {
            assert_eq!(file, cfg_path);
            assert_eq!(field, "resample");
        }
        other => panic!("{other}"),
    }

    // No preprocessor at all.
    std::fs::remove_file(&cfg_path).unwrap();
    let e = load_err(&crop);
    assert!(matches!(e, RerankError::Folder { .. }), "{e}");
    assert!(e.to_string().contains("preprocessor_config.json"), "{e}");
}

#[test]
fn config_section_resolves_the_model_path() {
    let yaml =
        "models:\n  sd:\n    path: models/sd\nrerank:\n  model: models/clip\n  batch_size: 4\n";
    let cfg = sdspool::app::config::Config::parse(yaml, Path::new("/etc/sdspool/config.yaml")).unwrap();
    let rerank = cfg.rerank.unwrap();
    assert_eq!(rerank.model, Path::new("/etc/sdspool/models/clip"));
    assert_eq!((rerank.enabled, rerank.batch_size.get()), (true, 4));
    let cfg = sdspool::app::config::Config::parse("models:\n  sd:\n    path: m\n", Path::new("c.yaml"))
        .unwrap();
    assert!(cfg.rerank.is_none());
    let err = sdspool::app::config::Config::parse(
        "models:\n  sd:\n    path: m\nrerank:\n  model: m\n  size: 3\n",
        Path::new("c.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("size"), "{err}");
}
