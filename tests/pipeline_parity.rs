//! The Rust pipeline against diffusers: every case of tests/golden/pipeline (made by
//! onnx/golden_pipeline.py with optimum's ORTStableDiffusionPipeline on the committed models)
//! is rendered twice, once from the golden initial latents and per-step noise (.npy), once from
//! the seeds alone through the torch-compatible generator, and must match the reference: final
//! latents within 1e-4 relative L2 error, 8-bit pixels within 1.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use ndarray::{ArrayD, Axis};
use ndarray_npy::read_npy;
use sdspool::engine::model::SdModel;
use sdspool::engine::pipeline::{Pipeline, RenderRequest};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    common::root().join("tests/golden/pipeline")
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
    (num / den).sqrt()
}

struct Outcome {
    latent_err: f64,
    max_pixel_diff: i32,
}

fn render(pipes: &mut HashMap<String, Pipeline>, case: &Value, from_files: bool) -> Outcome {
    let model = case["model"].as_str().unwrap();
    let pipe = pipes.entry(model.to_string()).or_insert_with(|| {
        let m = SdModel::load(common::runtime(), model, &common::model_dir(model), 0).unwrap();
        Pipeline::new(m).unwrap()
    });
    let files = &case["files"];
    let scheduler = match case["scheduler"].as_str().unwrap() {
        "ddim_eta" => "ddim",
        s => s,
    };
    let mut req = RenderRequest::new(
        case["prompt"].as_str().unwrap(),
        case["seeds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect(),
    );
    req.negative_prompt = case["negative"].as_str().unwrap().to_string();
    req.steps = case["steps"].as_u64().unwrap() as usize;
    req.guidance_scale = case["guidance"].as_f64().unwrap() as f32;
    req.eta = case["eta"].as_f64().unwrap() as f32;
    req.scheduler = Some(scheduler.parse().unwrap());
    req.width = case["width"].as_u64().unwrap() as u32;
    req.height = case["height"].as_u64().unwrap() as u32;
    if from_files {
        req.initial_latents = Some(npy(files["initial"].as_str().unwrap()));
        if let Some(noise) = files.get("noise").and_then(Value::as_str) {
            let all = npy(noise);
            req.step_noise = Some(all.axis_iter(Axis(0)).map(|a| a.to_owned()).collect());
        }
    }
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

    let want_latents = npy(files["latents"].as_str().unwrap());
    let want_pixels: ArrayD<u8> =
        read_npy(golden_dir().join(files["pixels"].as_str().unwrap())).unwrap();
    let mut max_pixel_diff = 0;
    for (i, img) in out.images.iter().enumerate() {
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                let want = want_pixels[[i, y as usize, x as usize, c]];
                max_pixel_diff = max_pixel_diff.max((i32::from(px[c]) - i32::from(want)).abs());
            }
        }
    }
    Outcome {
        latent_err: rel_l2(&out.latents, &want_latents),
        max_pixel_diff,
    }
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(golden_dir().join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    index["cases"].as_array().unwrap().clone()
}

#[test]
fn every_scheduler_matches_diffusers() {
    let mut pipes = HashMap::new();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases() {
        let name = case["name"].as_str().unwrap().to_string();
        // fp16: diffusers does the guidance arithmetic in float16, sdspool in float32.
        let (latent_tol, pixel_tol) = if case["model"] == "tiny-sd-fp16" {
            (2e-3, 1)
        } else {
            (1e-4, 1)
        };
        for from_files in [true, false] {
            let o = render(&mut pipes, &case, from_files);
            let mode = if from_files { "npy" } else { "seeds" };
            report.push(format!(
                "{name} ({mode}): latents {:.2e}, pixels {}",
                o.latent_err, o.max_pixel_diff
            ));
            // NaN fails too.
            let latents_ok = o.latent_err <= latent_tol;
            if !latents_ok || o.max_pixel_diff > pixel_tol {
                failures.push(format!(
                    "{name} ({mode}): latent rel L2 {:.3e} (limit {latent_tol:e}), max pixel diff {} (limit {pixel_tol})",
                    o.latent_err, o.max_pixel_diff
                ));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of the cases differ from diffusers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Splitting the candidates into smaller UNet batches changes nothing: each candidate has its own
/// generator, so its image does not depend on its batch.
#[test]
fn batch_splitting_gives_the_same_images() {
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "sd-euler_a-7")
        .unwrap();
    let m = SdModel::load(
        common::runtime(),
        "tiny-sd",
        &common::model_dir("tiny-sd"),
        0,
    )
    .unwrap();
    let mut pipe = Pipeline::new(m).unwrap();
    let mut req = RenderRequest::new("a photo of a cat", vec![42, 43, 44]);
    req.steps = 7;
    req.scheduler = Some("euler_a".parse().unwrap());
    req.width = 64;
    req.height = 64;
    let whole = pipe
        .render(&req, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    req.max_batch = 1;
    let mut batches = Vec::new();
    let split = pipe
        .render(&req, &mut |p| {
            batches.push(p.first_candidate);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        batches.iter().filter(|b| **b == 2).count(),
        7,
        "three batches of one"
    );
    assert!(rel_l2(&split.latents, &whole.latents) < 1e-6);
    let golden = npy(case["files"]["latents"].as_str().unwrap());
    let first_two = whole.latents.slice_axis(Axis(0), (0..2).into()).to_owned();
    assert!(
        rel_l2(&first_two, &golden) < 1e-4,
        "candidates 0 and 1 are the golden ones"
    );
}

#[test]
fn a_callback_can_cancel_between_steps() {
    let m = SdModel::load(
        common::runtime(),
        "tiny-sd",
        &common::model_dir("tiny-sd"),
        0,
    )
    .unwrap();
    let mut pipe = Pipeline::new(m).unwrap();
    let mut req = RenderRequest::new("a photo of a cat", vec![1]);
    req.steps = 10;
    req.width = 64;
    req.height = 64;
    let mut seen = 0;
    let err = pipe
        .render(&req, &mut |p| {
            seen += 1;
            if p.step.index == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert_eq!(seen, 3);
    assert!(
        matches!(
            err,
            sdspool::engine::pipeline::PipelineError::Cancelled { step: 3, .. }
        ),
        "{err}"
    );
}
