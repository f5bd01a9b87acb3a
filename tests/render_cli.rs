//! `sdspool render`: a job file in, PNGs out, pixels equal to diffusers' for the same settings,
//! and the settings stored in each PNG as AUTOMATIC1111 writes them.

mod common;

use common::parameters_chunk;

use std::path::Path;
use std::process::Command;

use ndarray::ArrayD;
use ndarray_npy::read_npy;

#[test]
fn render_writes_the_images_diffusers_renders_for_the_same_job() {
    let tmp = tempfile::tempdir().unwrap();
    // The settings of golden case sd-euler_a-7 (onnx/golden_pipeline.py).
    let job = tmp.path().join("parity.yaml");
    std::fs::write(
        &job,
        "model: tiny-sd\nprompts:\n  - a photo of a cat\ncandidates: 2\nseed: 42\nsteps: 7\nguidance: 7.5\nscheduler: euler_a\nwidth: 64\nheight: 64\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let status = common::sdspool_without_python(
        &common::root(),
        &common::root().join("config.yaml"),
        &[
            "render".as_ref(),
            job.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ],
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", common::output_text(&status));

    let golden: ArrayD<u8> =
        read_npy(common::root().join("tests/golden/pipeline/sd-euler_a-7.pixels.npy")).unwrap();
    for (candidate, seed) in [(0usize, 42u64), (1, 43)] {
        let file = out.join(format!("p000-c{candidate:02}-s{seed}.png"));
        assert!(stdout.contains(&file.display().to_string()), "{stdout}");
        let image = image::open(&file).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), (64, 64));
        let mut worst = 0i32;
        for (x, y, px) in image.enumerate_pixels() {
            for c in 0..3 {
                let want = golden[[candidate, y as usize, x as usize, c]];
                worst = worst.max((i32::from(px[c]) - i32::from(want)).abs());
            }
        }
        assert!(
            worst <= 1,
            "{}: pixels differ from diffusers by up to {worst}",
            file.display()
        );
        assert_eq!(
            parameters_chunk(&file),
            format!(
                "a photo of a cat\nSteps: 7, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: {seed}, Size: 64x64, Model: tiny-sd, RNG: CPU"
            )
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "manifest.json",
            "p000-c00-s42.png",
            "p000-c01-s43.png",
            "p000-sheet.png"
        ],
        "the images, the contact sheet and the manifest; no temporary files"
    );
}

#[test]
fn render_of_a_bad_job_fails_with_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("bad.yaml");
    std::fs::write(&job, "prompts: [a cat]\nwidth: 65\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .arg("render")
        .arg(&job)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.yaml") && err.contains("`width` is 65") && err.contains("multiple of 8"),
        "{err}"
    );
}

/// 72 is a multiple of 8, but tiny-sd's latent (72 / 8 = 9) cannot go through its UNet's one
/// 2x downsampling and back: refused before any model runs, naming the field and the rule,
/// instead of an ONNX Runtime shape error from inside the UNet.
#[test]
fn a_size_the_unet_cannot_take_is_refused_with_the_models_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("odd.yaml");
    std::fs::write(
        &job,
        "model: tiny-sd\nprompts: [a cat]\nwidth: 72\nheight: 64\nsteps: 2\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .arg("render")
        .arg(&job)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("width")
            && err.contains("is 72")
            && err.contains("multiple of 16 (VAE downsampling 8 x UNet downsampling 2)"),
        "{err}"
    );
}

#[test]
fn render_takes_initial_latents_and_step_noise_from_npy_files() {
    let tmp = tempfile::tempdir().unwrap();
    // Golden case sd-euler_a-7 with a seed that differs from the golden ones (42, 43): the .npy
    // files, not the seeds, must decide the result.
    let job = tmp.path().join("npy.yaml");
    std::fs::write(
        &job,
        "model: tiny-sd\nprompts:\n  - a photo of a cat\ncandidates: 2\nseed: 7\nsteps: 7\nguidance: 7.5\nscheduler: euler_a\nwidth: 64\nheight: 64\n",
    )
    .unwrap();
    let golden = common::root().join("tests/golden/pipeline");
    let out = tmp.path().join("out");
    let render = |latents: &Path, noise: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdspool"));
        cmd.arg("--config")
            .arg(common::root().join("config.yaml"))
            .arg("render")
            .arg(&job)
            .arg("--output")
            .arg(&out)
            .arg("--latents")
            .arg(latents)
            .env("SDSPOOL_LOG", "warn");
        if let Some(n) = noise {
            cmd.arg("--step-noise").arg(n);
        }
        cmd.output().unwrap()
    };
    let worst_diff = || {
        let want: ArrayD<u8> = read_npy(golden.join("sd-euler_a-7.pixels.npy")).unwrap();
        let image = image::open(out.join("p000-c01-s8.png")).unwrap().to_rgb8();
        image
            .enumerate_pixels()
            .flat_map(|(x, y, px)| (0..3).map(move |c| (x, y, c, px[c])))
            .map(|(x, y, c, v)| {
                (i32::from(v) - i32::from(want[[1, y as usize, x as usize, c]])).abs()
            })
            .max()
            .unwrap()
    };
    let o = render(
        &golden.join("sd-euler_a-7.initial.npy"),
        Some(&golden.join("sd-euler_a-7.noise.npy")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        worst_diff() <= 1,
        "latents and noise from the .npy files must decide the image"
    );
    // With the latents alone, the ancestral noise comes from seed 7 and the image differs.
    let o = render(&golden.join("sd-euler_a-7.initial.npy"), None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(worst_diff() > 1, "the step noise must matter for Euler a");

    // A file of the wrong shape is refused with the field and the shape.
    let bad = tmp.path().join("bad.npy");
    ndarray_npy::write_npy(&bad, &ndarray::Array3::<f32>::zeros((2, 4, 8))).unwrap();
    let o = render(&bad, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("initial_latents") && err.contains("[2, 4, 8]"),
        "{err}"
    );
}

#[test]
fn json_logs_carry_the_job_id() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("jsonjob.yaml");
    std::fs::write(
        &job,
        "prompts: [a cat]\ncandidates: 1\nseed: 1\nsteps: 2\nwidth: 64\nheight: 64\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .args(["--log-format", "json", "render"])
        .arg(&job)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .env("SDSPOOL_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let rendering = lines
        .iter()
        .find(|l| l["message"] == "rendering")
        .expect("a 'rendering' line");
    assert_eq!(rendering["job"], "jsonjob");
    assert_eq!(rendering["provider"], "cpu");
}

/// A prompt longer than the text encoder takes is logged once per text, briefly: counts and the
/// start of what was cut off. (The dropped text was logged in full three times: a 1 MB prompt
/// wrote megabytes of log.)
#[test]
fn a_truncated_prompt_is_logged_once_and_briefly() {
    let tmp = tempfile::tempdir().unwrap();
    let words = |tag: &str| {
        (0..200)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let job = tmp.path().join("long.yaml");
    std::fs::write(
        &job,
        format!(
            // `plain`: AUTOMATIC1111's syntax (the default) encodes long prompts in windows.
            "model: tiny-sd\nprompt_syntax: plain\nprompts: [\"{}\"]\nnegative: \"{}\"\ncandidates: 2\nseed: 1\nsteps: 1\nguidance: 7.5\nwidth: 64\nheight: 64\nrerank: false\n",
            words("cat"),
            words("dog")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .arg("render")
        .arg(&job)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .env("SDSPOOL_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("cut off")).collect();
    assert_eq!(
        lines.len(),
        2,
        "one line each for the prompt and the negative:\n{err}"
    );
    assert!(lines.iter().all(|l| l.contains("dropped_tokens")), "{err}");
    // Only the start of what was cut off, not the whole of it (about 1,600 characters).
    let naming: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cat") || l.contains("dog"))
        .collect();
    assert_eq!(naming, lines, "{err}");
    assert!(lines.iter().all(|l| l.len() < 400), "{err}");
}
