//! The same seed's picture both ways: AUTOMATIC1111's GPU seed 0 as torch drew it on an H100
//! (the whole 1x4x64x64 draw recorded in `tests/golden/noise/philox_cuda.json` by
//! `onnx/golden_philox.py`), fed to the demo model as its initial latents, against sdspool's
//! own `rng: philox` noise for seed 0. The recorded draw covers a 64x64 latent, which is a
//! 256x256 picture of `shapes-sd` (VAE downsampling 4); Euler is deterministic, so the initial
//! noise is all that differs. Both pictures are committed in `docs/` and the README states the
//! measured difference; this test renders both again and checks them against it.
//!
//! `SDSPOOL_WRITE_DOCS=1 cargo test --test philox_picture` rewrites the two pictures.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ndarray::{ArrayD, IxDyn};
use sdspool::jobs::job;
use sdspool::jobs::run::{RunOptions, Worker};

/// Largest difference allowed between the two pictures, and between a picture rendered here and
/// its committed copy (ONNX Runtime's CPU kernels may round differently on another machine), in
/// 8-bit levels. The README states the measured difference.
const TOLERANCE: u8 = 2;

const GPU_PNG: &str = "docs/philox-seed0-h100-noise.png";
const SDSPOOL_PNG: &str = "docs/philox-seed0-sdspool.png";

const JOB: &str = "model: shapes-sd\nprompts: [\"a large red circle in the center on a blue background\"]\n\
                   seed: 0\nrng: philox\nscheduler: euler\nsteps: 20\nguidance: 7.5\n\
                   width: 256\nheight: 256\ncandidates: 1\nrerank: false\n";

/// torch.randn([1, 4, 64, 64], generator=torch.Generator("cuda").manual_seed(0)) on the H100.
fn h100_seed0_latents() -> ArrayD<f32> {
    let path = common::root().join("tests/golden/noise/philox_cuda.json");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &golden["cases"][1];
    let draw = &case["draws"][0];
    assert_eq!(
        (case["seed"].as_u64(), draw["offset_before"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(draw["shape"], serde_json::json!([1, 4, 64, 64]));
    assert_eq!(draw["indices"], "all");
    let values: Vec<f32> = common::base64(draw["bits"].as_str().unwrap())
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[1, 4, 64, 64]), values).unwrap()
}

fn render(
    worker: &mut Worker,
    job: &job::Job,
    dir: PathBuf,
    latents: Option<ArrayD<f32>>,
) -> image::RgbImage {
    let options = RunOptions {
        dir: Some(dir),
        initial_latents: latents,
        step_noise: None,
    };
    let o = worker
        .run(job, &options, &AtomicBool::new(false), &mut |_| {})
        .unwrap();
    let file = o.manifest.prompts[0].candidates[0].file.clone().unwrap();
    image::open(o.dir.join(file)).unwrap().to_rgb8()
}

fn max_difference(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

fn committed(rel: &str, rendered: &image::RgbImage) -> image::RgbImage {
    let path: PathBuf = common::root().join(rel);
    if std::env::var_os("SDSPOOL_WRITE_DOCS").is_some() {
        write_png(&path, rendered);
    }
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SDSPOOL_WRITE_DOCS=1 writes it)", path.display()))
        .to_rgb8()
}

fn write_png(path: &Path, img: &image::RgbImage) {
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn the_same_seed_from_the_h100_noise_and_from_rng_philox() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::fixture_config();
    config.output_dir = tmp.path().join("out");
    config.rerank = None;
    let p = tmp.path().join("seed0.yaml");
    std::fs::write(&p, JOB).unwrap();
    let job = job::load(&p, &config).unwrap();
    let mut worker = Worker::load(common::runtime(), &config, 0, Some("shapes-sd")).unwrap();
    let gpu = render(
        &mut worker,
        &job,
        tmp.path().join("gpu"),
        Some(h100_seed0_latents()),
    );
    let own = render(&mut worker, &job, tmp.path().join("own"), None);
    let both = max_difference(&gpu, &own);
    let differing = gpu
        .as_raw()
        .iter()
        .zip(own.as_raw())
        .filter(|(x, y)| x != y)
        .count();
    eprintln!(
        "seed 0, 256x256: the H100's noise and rng: philox differ by at most {both}/255 \
         ({differing} of {} channel values differ)",
        gpu.as_raw().len()
    );
    assert!(both <= TOLERANCE, "{both}/255");
    let gpu_doc = committed(GPU_PNG, &gpu);
    let own_doc = committed(SDSPOOL_PNG, &own);
    assert!(max_difference(&own, &own_doc) <= TOLERANCE);
    assert!(max_difference(&gpu, &gpu_doc) <= TOLERANCE);
    assert!(max_difference(&gpu_doc, &own_doc) <= TOLERANCE);
}
