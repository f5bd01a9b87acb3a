//! The SDXL, Turbo and LCM families against diffusers: every case of tests/golden/sdxl (made by
//! onnx/golden_sdxl.py with optimum's ORT pipelines on the committed models) is rendered twice,
//! from the golden initial latents and per-step noise (.npy) and from the seeds alone, and must
//! match: final latents within 1e-4 relative L2 error, 8-bit pixels within 1. The conditioning
//! of the first UNet call is compared where the golden recorded it.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use sdspool::engine::model::{Family, SdModel};
use sdspool::engine::pipeline::{Pipeline, RenderRequest};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    common::root().join("tests/golden/sdxl")
}

fn npy(name: &str) -> ArrayD<f32> {
    read_npy(golden_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rel_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(golden_dir().join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    index["cases"].as_array().unwrap().clone()
}

/// The pipeline of a golden case's model; a float16 folder decodes with tiny-sdxl's float32
/// VAE as its replacement (`vae_decoder_from`), as the goldens' `pixels` were made.
fn load(dir: &Path, name: &str) -> Pipeline {
    let mut m = SdModel::load(common::runtime(), name, dir, 0).unwrap_or_else(|e| panic!("{e}"));
    if name == "tiny-sdxl-fp16" {
        m.replace_vae_decoder(common::runtime(), &common::model_dir("tiny-sdxl"), 0)
            .unwrap();
        assert!(!m.vae_needs_upcast());
    }
    Pipeline::new(m).unwrap_or_else(|e| panic!("{e}"))
}

/// A copy of tiny-sdxl whose model_index.json says `force_zeros_for_empty_prompt: false`.
fn no_force_zeros() -> (tempfile::TempDir, PathBuf) {
    let (tmp, dir) = common::model_copy("tiny-sdxl");
    let index = dir.join("model_index.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    json["force_zeros_for_empty_prompt"] = Value::Bool(false);
    std::fs::write(&index, json.to_string()).unwrap();
    (tmp, dir)
}

fn pair(v: &Value) -> Option<[u32; 2]> {
    let a = v.as_array()?;
    Some([a[0].as_u64()? as u32, a[1].as_u64()? as u32])
}

/// The request of a golden case; `from_files` takes the recorded latents and noise.
pub fn request(case: &Value, from_files: bool) -> RenderRequest {
    let files = &case["files"];
    let scheduler = match case["scheduler"].as_str().unwrap() {
        "ddim_eta" => "ddim",
        s => s,
    };
    let seeds = case["seeds"].as_array().unwrap();
    let mut req = RenderRequest::new(
        case["prompt"].as_str().unwrap(),
        seeds.iter().map(|s| s.as_u64().unwrap()).collect(),
    );
    req.negative_prompt = case["negative"].as_str().unwrap().to_string();
    req.steps = case["steps"].as_u64().unwrap() as usize;
    req.guidance_scale = case["guidance"].as_f64().unwrap() as f32;
    req.eta = case["eta"].as_f64().unwrap() as f32;
    // Turbo and LCM render with the folder's own scheduler (its config sets the defaults).
    if !case["model"]
        .as_str()
        .unwrap()
        .starts_with("tiny-sdxl-turbo")
        && case["model"] != "tiny-lcm"
    {
        req.scheduler = Some(scheduler.parse().unwrap());
    }
    req.width = case["width"].as_u64().unwrap() as u32;
    req.height = case["height"].as_u64().unwrap() as u32;
    req.sdxl.original_size = pair(&case["original_size"]);
    req.sdxl.target_size = pair(&case["target_size"]);
    if let Some(c) = pair(&case["crops_coords_top_left"]) {
        req.sdxl.crop_top_left = c;
    }
    if from_files {
        req.initial_latents = Some(npy(files["initial"].as_str().unwrap()));
        if let Some(noise) = files.get("noise").and_then(Value::as_str) {
            let all = npy(noise);
            req.step_noise = Some(all.axis_iter(Axis(0)).map(|a| a.to_owned()).collect());
        }
    }
    req
}

struct Outcome {
    latent_err: f64,
    max_pixel_diff: i32,
}

fn compare(case: &Value, latents: &ArrayD<f32>, images: &[image::RgbImage]) -> Outcome {
    let files = &case["files"];
    let want_latents = npy(files["latents"].as_str().unwrap());
    let want_pixels: ArrayD<u8> =
        read_npy(golden_dir().join(files["pixels"].as_str().unwrap())).unwrap();
    let mut max_pixel_diff = 0;
    for (i, img) in images.iter().enumerate() {
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                let want = want_pixels[[i, y as usize, x as usize, c]];
                max_pixel_diff = max_pixel_diff.max((i32::from(px[c]) - i32::from(want)).abs());
            }
        }
    }
    Outcome {
        latent_err: rel_l2(latents, &want_latents),
        max_pixel_diff,
    }
}

fn render(pipe: &mut Pipeline, case: &Value, from_files: bool) -> Outcome {
    let req = request(case, from_files);
    let mut calls = 0;
    let out = pipe
        .render(&req, &mut |_| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    assert_eq!(
        calls,
        case["unet_calls"].as_u64().unwrap() as usize,
        "{}: UNet calls",
        case["name"]
    );
    compare(case, &out.latents, &out.images)
}

/// Runs `cases` (those `select` picks) both ways and fails listing every case off the limits.
fn check_cases(select: impl Fn(&Value) -> bool) {
    let (_tmp, nozeros_dir) = no_force_zeros();
    let mut pipes: HashMap<String, Pipeline> = HashMap::new();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut ran = 0;
    for case in cases().into_iter().filter(|c| select(c)) {
        let name = case["name"].as_str().unwrap().to_string();
        let model = case["model"].as_str().unwrap().to_string();
        let key = if name.ends_with("-nozeros") {
            "nozeros".to_string()
        } else {
            model.clone()
        };
        let pipe = pipes.entry(key.clone()).or_insert_with(|| {
            let dir = if key == "nozeros" {
                nozeros_dir.clone()
            } else {
                common::model_dir(&model)
            };
            load(&dir, &model)
        });
        // float16: diffusers does the guidance arithmetic in float16, sdspool in float32.
        let latent_tol = if case["dtype"] == "float16" {
            2e-3
        } else {
            1e-4
        };
        for from_files in [true, false] {
            let o = render(pipe, &case, from_files);
            let mode = if from_files { "npy" } else { "seeds" };
            report.push(format!(
                "{name} ({mode}): latents {:.2e}, pixels {}",
                o.latent_err, o.max_pixel_diff
            ));
            if o.latent_err.is_nan() || o.latent_err > latent_tol || o.max_pixel_diff > 1 {
                failures.push(format!(
                    "{name} ({mode}): latent rel L2 {:.3e} (limit {latent_tol:e}), max pixel diff {}",
                    o.latent_err, o.max_pixel_diff
                ));
            }
        }
        ran += 1;
    }
    println!("{}", report.join("\n"));
    assert!(ran > 0, "no golden case selected");
    assert!(
        failures.is_empty(),
        "{} renders differ from diffusers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sdxl_base_matches_diffusers() {
    check_cases(|c| c["model"] == "tiny-sdxl" && c.get("refiner").is_none());
}

#[test]
fn sdxl_turbo_matches_diffusers_with_the_folders_scheduler_and_no_guidance() {
    check_cases(|c| c["model"] == "tiny-sdxl-turbo");
}

#[test]
fn lcm_matches_diffusers() {
    check_cases(|c| c["model"] == "tiny-lcm");
}

#[test]
fn sdxl_float16_matches_diffusers_with_a_float32_replacement_vae() {
    check_cases(|c| c["model"] == "tiny-sdxl-fp16");
}

#[test]
fn float16_sdxl_vae_without_a_replacement_is_refused_clearly() {
    let dir = common::model_dir("tiny-sdxl-fp16");
    let m = SdModel::load(common::runtime(), "tiny-sdxl-fp16", &dir, 0).unwrap();
    assert!(m.vae_needs_upcast());
    let mut pipe = Pipeline::new(m).unwrap();
    let mut req = RenderRequest::new("a photo of a cat", vec![1]);
    (req.steps, req.width, req.height) = (1, 64, 64);
    let err = pipe
        .render(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap_err()
        .to_string();
    for word in [
        "tiny-sdxl-fp16/vae_decoder/model.onnx",
        "force_upcast",
        "`vae:`",
    ] {
        assert!(err.contains(word), "{err}");
    }
}

#[test]
fn a_folder_mixing_families_is_refused_naming_the_part() {
    // An SDXL model_index.json over SD parts: text_encoder_2 is missing.
    let (_tmp, dir) = common::model_copy("tiny-sd");
    let sdxl_index = common::model_dir("tiny-sdxl").join("model_index.json");
    std::fs::copy(sdxl_index, dir.join("model_index.json")).unwrap();
    let err = SdModel::load(common::runtime(), "mixed", &dir, 0)
        .unwrap_err()
        .to_string();
    for word in [
        "model_index.json",
        "StableDiffusionXLPipeline",
        "text_encoder_2/model.onnx",
        "StableDiffusionPipeline (sd)",
    ] {
        assert!(err.contains(word), "{err}");
    }
    // An SDXL folder whose UNet is SD's: the UNet lacks text_embeds.
    let (_tmp2, dir) = common::model_copy("tiny-sdxl");
    std::fs::copy(
        common::model_dir("tiny-sd").join("unet/model.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    let err = SdModel::load(common::runtime(), "mixed", &dir, 0)
        .unwrap_err()
        .to_string();
    for word in ["unet/model.onnx", "input 'text_embeds'", "missing"] {
        assert!(err.contains(word), "{err}");
    }
    // An LCM folder whose UNet is SD's (no timestep_cond).
    let (_tmp3, dir) = common::model_copy("tiny-lcm");
    std::fs::copy(
        common::model_dir("tiny-sd").join("unet/model.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    let err = SdModel::load(common::runtime(), "mixed", &dir, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("input 'timestep_cond'"), "{err}");
}

#[test]
fn folders_are_read_as_their_family() {
    for (name, family) in [
        ("tiny-sdxl", Family::Sdxl),
        ("tiny-sdxl-turbo", Family::Sdxl),
        ("tiny-sdxl-fp16", Family::Sdxl),
        ("tiny-sdxl-refiner", Family::SdxlRefiner),
        ("tiny-lcm", Family::Lcm),
    ] {
        let m = SdModel::load(common::runtime(), name, &common::model_dir(name), 0)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.family(), family, "{name}");
        assert_eq!(m.latent_channels, 4);
    }
}

#[test]
fn lcm_guidance_embedding_is_diffusers() {
    let want = npy("lcm-lcm-1.timestep_cond.npy");
    let got = sdspool::engine::pipeline::lcm::guidance_embedding(7.5, want.shape()[1]);
    let err = rel_l2(&got, &want.slice_axis(Axis(0), (0..1).into()).to_owned());
    assert!(err < 1e-6, "timestep_cond off by {err:e}");
}

/// The refiner hand-off goldens: tiny-sdxl to 0.8 of the schedule, tiny-sdxl-refiner from there
/// (diffusers' `denoising_end` / `denoising_start`, aesthetic scores 6.0 / 2.5), from the
/// recorded noise and from the seeds (the generators continue into the refiner).
#[test]
fn refiner_handoff_matches_diffusers() {
    let mut base = load(&common::model_dir("tiny-sdxl"), "tiny-sdxl");
    let mut refiner = load(&common::model_dir("tiny-sdxl-refiner"), "tiny-sdxl-refiner");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases().into_iter().filter(|c| c.get("refiner").is_some()) {
        let name = case["name"].as_str().unwrap().to_string();
        for from_files in [true, false] {
            let req = request(&case, from_files);
            let handoff = sdspool::engine::pipeline::Handoff {
                start: case["refiner_start"].as_f64().unwrap(),
                refiner_noise: case["files"]
                    .get("refiner_noise")
                    .and_then(Value::as_str)
                    .filter(|_| from_files)
                    .map(|f| npy(f).axis_iter(Axis(0)).map(|a| a.to_owned()).collect()),
            };
            let mut calls = 0;
            let out = base
                .render_refined(&mut refiner, &req, &handoff, &mut |_| {
                    calls += 1;
                    ControlFlow::Continue(())
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let want_calls =
                case["unet_calls"].as_u64().unwrap() + case["refiner_unet_calls"].as_u64().unwrap();
            assert_eq!(calls as u64, want_calls, "{name}: UNet calls");
            let o = compare(&case, &out.latents, &out.images);
            println!(
                "{name} ({from_files}): latents {:.2e}, pixels {}",
                o.latent_err, o.max_pixel_diff
            );
            if o.latent_err.is_nan() || o.latent_err > 1e-4 || o.max_pixel_diff > 1 {
                failures.push(format!(
                    "{name} (from files: {from_files}): {:.3e}, {}",
                    o.latent_err, o.max_pixel_diff
                ));
            }
        }
        ran += 1;
    }
    assert_eq!(ran, 2);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
