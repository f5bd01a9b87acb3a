//! The trained demo model (onnx/models/shapes-sd, made by onnx/train_demo_model.py) is the
//! default model of config.yaml and follows its prompts when rendered by sdspool: the background
//! and the shape come out in the colours the caption names. The full measurement (100 held-out
//! captions x 8 candidates: colour, shape, position, size and background accuracy, rerank lift)
//! is onnx/check_demo_model.py; this is the part CI can afford. It reads no position: the model
//! places shapes little better than chance so far (onnx/README.md has the figures).

mod common;

use std::ops::ControlFlow;

use image::RgbImage;
use sdspool::app::config::Config;
use sdspool::engine::model::SdModel;
use sdspool::engine::pipeline::{Pipeline, RenderRequest};

/// onnx/shapes_data.py's named colours.
const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 160, 50]),
    ("blue", [35, 70, 225]),
    ("yellow", [245, 220, 40]),
    ("orange", [245, 135, 20]),
    ("purple", [140, 50, 180]),
    ("white", [245, 245, 245]),
    ("black", [20, 20, 20]),
];

fn nearest_colour(rgb: [f32; 3]) -> &'static str {
    COLOURS
        .iter()
        .min_by(|a, b| {
            let d =
                |c: &[u8; 3]| -> f32 { (0..3).map(|i| (rgb[i] - f32::from(c[i])).powi(2)).sum() };
            d(&a.1).total_cmp(&d(&b.1))
        })
        .unwrap()
        .0
}

/// The background colour: per-channel median of the 2-pixel border (as check_demo_model.py reads it).
fn background(img: &RgbImage) -> [f32; 3] {
    let (w, h) = img.dimensions();
    let border: Vec<[u8; 3]> = img
        .enumerate_pixels()
        .filter(|(x, y, _)| *x < 2 || *y < 2 || *x >= w - 2 || *y >= h - 2)
        .map(|(_, _, p)| p.0)
        .collect();
    std::array::from_fn(|c| {
        let mut v: Vec<u8> = border.iter().map(|p| p[c]).collect();
        v.sort_unstable();
        f32::from(v[v.len() / 2])
    })
}

/// The shape's colour: the named colour most of the pixels far from the background are nearest
/// to (None when fewer than 16 pixels stand out: no shape was drawn).
fn shape_colour(img: &RgbImage, bg: [f32; 3]) -> Option<&'static str> {
    let mut votes = std::collections::HashMap::new();
    for p in img.pixels() {
        let rgb = p.0.map(f32::from);
        let d2: f32 = (0..3).map(|c| (rgb[c] - bg[c]).powi(2)).sum();
        if d2 > 100f32.powi(2) {
            *votes.entry(nearest_colour(rgb)).or_insert(0u32) += 1;
        }
    }
    votes
        .into_iter()
        .filter(|&(_, n)| n >= 16)
        .max_by_key(|&(name, n)| (n, name))
        .map(|(name, _)| name)
}

fn default_pipeline() -> Pipeline {
    let config = Config::load(&common::root().join("config.yaml")).unwrap();
    let name = config.default_model_name().to_string();
    assert_eq!(name, "shapes-sd", "config.yaml's default model");
    let path = common::model_dir(&name);
    let model = SdModel::load(common::runtime(), &name, &path, 0).unwrap();
    assert_eq!(
        model.folder.vae_downsampling, 4,
        "shapes-sd's VAE has three levels"
    );
    Pipeline::new(model).unwrap()
}

/// (caption, shape colour, background colour)
const CASES: [(&str, &str, &str); 6] = [
    (
        "a large red circle in the center on a blue background",
        "red",
        "blue",
    ),
    (
        "a large yellow square in the top left on a black background",
        "yellow",
        "black",
    ),
    (
        "a small white triangle in the bottom right on a green background",
        "white",
        "green",
    ),
    (
        "a large orange star in the top right on a purple background",
        "orange",
        "purple",
    ),
    (
        "a large blue square in the bottom left on a white background",
        "blue",
        "white",
    ),
    (
        "a large green digit 2 in the center on a yellow background",
        "green",
        "yellow",
    ),
];

const SEEDS: [u64; 4] = [1, 2, 3, 4];

#[test]
fn the_default_model_draws_the_named_colours() {
    let mut pipe = default_pipeline();
    let mut failures = Vec::new();
    let mut correct = 0;
    for (caption, colour, background_colour) in CASES {
        let mut req = RenderRequest::new(caption, SEEDS.to_vec());
        req.width = 64;
        req.height = 64;
        req.steps = 20;
        req.guidance_scale = 4.0; // config.yaml's default, which suits this model
        let out = pipe
            .render(&req, &mut |_| ControlFlow::Continue(()))
            .unwrap_or_else(|e| panic!("{caption}: {e}"));
        assert_eq!(out.images.len(), SEEDS.len());
        for (seed, img) in SEEDS.iter().zip(&out.images) {
            assert_eq!(img.dimensions(), (64, 64));
            let bg = background(img);
            let read_bg = nearest_colour(bg);
            let read_shape = shape_colour(img, bg);
            if read_bg == background_colour && read_shape == Some(colour) {
                correct += 1;
            } else {
                failures.push(format!(
                    "{caption:?} seed {seed}: a {read_shape:?} shape on {read_bg}"
                ));
            }
        }
    }
    let total = CASES.len() * SEEDS.len();
    eprintln!("{correct}/{total} renders have the named colours");
    // Random weights, a broken VAE scale or a text encoder that is ignored give about 1 in 64
    // per render (8 colours for each); the trained model got 24 of 24 (17 at guidance 7.5).
    assert!(
        correct * 4 >= total * 3,
        "only {correct} of {total} renders have the named colours:\n{}",
        failures.join("\n")
    );
}
