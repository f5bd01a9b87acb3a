//! SDXL, refiner, Turbo and LCM jobs: the job fields (`refiner`, `refiner_start`, the size and
//! aesthetic conditioning) and their errors, a refined job stopped and resumed, and real job
//! files through the daemon (`sdspool run --until-idle`).

mod common;

use common::config_file::{Defaults, TestConfig};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{is_candidate_image, names, parameters_chunk};
use sdspool::app::config::Config;
use sdspool::jobs::job::{self, Job, JobError};
use sdspool::jobs::run::{JobRunError, RunOptions, Worker};

fn config() -> Config {
    Config::load(&common::root().join("config.yaml")).unwrap()
}

/// Loads a job file as the daemon checks it: resolved, then fitted to the model folders.
fn load(dir: &Path, config: &Config, body: &str) -> Result<Job, JobError> {
    let p = dir.join("job.yaml");
    std::fs::write(&p, body).unwrap();
    let j = job::load(&p, config)?;
    job::fits_model(&j, config, &p)?;
    Ok(j)
}

fn err(body: &str) -> JobError {
    let tmp = tempfile::tempdir().unwrap();
    match load(tmp.path(), &config(), body) {
        Ok(j) => panic!("accepted:\n{body}\n{j:?}"),
        Err(e) => e,
    }
}

const BASE: &str = "model: tiny-sdxl\nprompts: [a cat]\nwidth: 64\nheight: 64\n";

#[test]
fn sdxl_fields_resolve_into_diffusers_order_with_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config();
    let j = load(tmp.path(), &c, BASE).unwrap();
    assert_eq!(j.refiner, None);
    assert_eq!(j.sdxl, Default::default());
    let body = format!(
        "{BASE}refiner: tiny-sdxl-refiner\noriginal_size: [128, 96]\ncrop_top_left: [8, 16]\n\
         target_size: [64, 48]\naesthetic_score: 7\nnegative_aesthetic_score: 2\n"
    );
    let j = load(tmp.path(), &c, &body).unwrap();
    let r = j.refiner.as_ref().unwrap();
    assert_eq!((r.model.as_str(), r.start), ("tiny-sdxl-refiner", 0.8));
    // Written [width, height] / [left, top]; diffusers takes [height, width] / [top, left].
    assert_eq!(j.sdxl.original_size, Some([96, 128]));
    assert_eq!(j.sdxl.crop_top_left, [16, 8]);
    assert_eq!(j.sdxl.target_size, Some([48, 64]));
    assert_eq!(
        (j.sdxl.aesthetic_score, j.sdxl.negative_aesthetic_score),
        (7.0, 2.0)
    );
    let j = load(
        tmp.path(),
        &c,
        &format!("{BASE}refiner: tiny-sdxl-refiner\nrefiner_start: 0.5\n"),
    )
    .unwrap();
    assert_eq!(j.refiner.unwrap().start, 0.5);
}

#[test]
fn bad_sdxl_fields_name_the_file_and_the_field() {
    let cases: [(String, &str, &str); 9] = [
        (
            format!("{BASE}refiner: nope\n"),
            "refiner",
            "\"nope\" is not configured",
        ),
        (
            format!("{BASE}refiner: tiny-sdxl-refiner\nrefiner_start: 1\n"),
            "refiner_start",
            "is 1; it must be between 0 and 1",
        ),
        (
            format!("{BASE}refiner: tiny-sdxl-refiner\nrefiner_start: 0\n"),
            "refiner_start",
            "is 0;",
        ),
        (
            format!("{BASE}refiner_start: 0.7\n"),
            "refiner_start",
            "without `refiner`",
        ),
        (
            format!("{BASE}refiner: tiny-sdxl-turbo\n"),
            "refiner",
            "names model \"tiny-sdxl-turbo\" of the sdxl family; a refiner must be of the sdxl-refiner family",
        ),
        (
            "model: tiny-sd\nprompts: [a cat]\nrefiner: tiny-sdxl-refiner\n".into(),
            "refiner",
            "is for SDXL base models; model \"tiny-sd\" is of the sd family",
        ),
        (
            "model: tiny-lcm\nprompts: [a cat]\ntarget_size: [64, 64]\n".into(),
            "target_size",
            "is SDXL conditioning; model \"tiny-lcm\" is of the lcm family",
        ),
        (
            format!("{BASE}original_size: [0, 64]\n"),
            "original_size[0]",
            "is 0; it must be from 1",
        ),
        (
            format!("{BASE}aesthetic_score: 11\n"),
            "aesthetic_score",
            "is 11; it must be a number from 0 to 10",
        ),
    ];
    for (body, field, message) in cases {
        let e = err(&body);
        assert_eq!(e.field, field, "{body}\n{e}");
        assert!(e.message.contains(message), "{body}\n{e}");
        assert!(e.to_string().contains("job.yaml: `"), "{e}");
    }
}

#[test]
fn a_stopped_refined_job_continues_without_rendering_finished_candidates_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.output_dir = tmp.path().join("out");
    c.rerank = None;
    let body = "model: tiny-sdxl\nrefiner: tiny-sdxl-refiner\nrefiner_start: 0.8\nprompts:\n  - a cat\n  - a dog\n\
                candidates: 2\nseed: 3\nsteps: 5\nwidth: 64\nheight: 64\n";
    let j = load(tmp.path(), &c, body).unwrap();
    let mut w = Worker::load(common::runtime(), &c, 0, None).unwrap();
    let reference = w
        .run(
            &j,
            &RunOptions {
                dir: Some(tmp.path().join("reference")),
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(reference.rendered, 4);
    let stop = AtomicBool::new(false);
    let e = w
        .run(&j, &RunOptions::default(), &stop, &mut |p| {
            if p.prompt == 1 && p.step == 2 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    assert!(matches!(e, JobRunError::Stopped), "{e}");
    let resumed = w
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |p| assert_eq!(p.prompt, 1, "prompt 0 is not rendered again"),
        )
        .unwrap();
    assert_eq!((resumed.rendered, resumed.manifest.runs), (2, 2));
    for (a, b) in resumed
        .manifest
        .candidates()
        .zip(reference.manifest.candidates())
    {
        let open = |dir: &Path, f: &Option<String>| {
            image::open(dir.join(f.as_ref().unwrap()))
                .unwrap()
                .to_rgb8()
        };
        assert!(open(&resumed.dir, &a.file) == open(&reference.dir, &b.file));
    }
    // The refiner changes the images: the same job without it renders others.
    let plain = load(
        tmp.path(),
        &c,
        &body.replace("refiner: tiny-sdxl-refiner\nrefiner_start: 0.8\n", ""),
    )
    .unwrap();
    let out = w
        .run(
            &plain,
            &RunOptions {
                dir: Some(tmp.path().join("plain")),
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    let first = |o: &sdspool::jobs::run::Outcome| {
        let c = o.manifest.candidates().next().unwrap();
        image::open(o.dir.join(c.file.as_ref().unwrap()))
            .unwrap()
            .to_rgb8()
    };
    assert!(first(&out) != first(&reference));
}

/// The manifest records the refiner (model, `refiner_start`, the steps it ran: tiny-sdxl's
/// Euler with leading spacing at 5 steps has timesteps 801, 601, 401, 201, 1 and at 10 steps
/// 901, ..., 101, 1; the cut-off at 0.8 is timestep 200, so the refiner runs 1 and 2 of them),
/// and the resume fingerprint covers it: the same job with another `refiner_start` does not
/// continue that manifest.
#[test]
fn the_manifest_records_the_refiner_and_the_fingerprint_covers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.output_dir = tmp.path().join("out");
    c.rerank = None;
    let body = "id: refined\nmodel: tiny-sdxl\nrefiner: tiny-sdxl-refiner\nrefiner_start: 0.8\n\
                prompts: [a cat]\nsteps: [5, 10]\ncandidates: 1\nseed: 3\nwidth: 64\nheight: 64\n";
    let j = load(tmp.path(), &c, body).unwrap();
    let mut w = Worker::load(common::runtime(), &c, 0, None).unwrap();
    let mut run = |j: &Job| {
        w.run(
            j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap()
    };
    let out = run(&j);
    assert_eq!(out.rendered, 2);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m["refiner"],
        serde_json::json!({"model": "tiny-sdxl-refiner", "start": 0.8, "steps": 1}),
        "{m}"
    );
    assert_eq!(m["prompts"][0]["steps"], 5);
    assert_eq!(m["prompts"][0]["refiner_steps"], 1, "{m}");
    assert_eq!(m["prompts"][1]["steps"], 10);
    assert_eq!(m["prompts"][1]["refiner_steps"], 2, "{m}");

    // Another hand-over point is another job: a new folder, everything rendered again.
    let later = load(
        tmp.path(),
        &c,
        &body.replace("refiner_start: 0.8", "refiner_start: 0.7"),
    )
    .unwrap();
    let other = run(&later);
    assert_ne!(other.dir, out.dir);
    assert_eq!(other.rendered, 2);
    let r = other.manifest.refiner.as_ref().unwrap();
    assert_eq!((r.model.as_str(), r.start), ("tiny-sdxl-refiner", 0.7));
    // The first job again: its complete manifest, nothing rendered.
    let again = run(&j);
    assert_eq!((again.dir, again.rendered), (out.dir.clone(), 0));

    // Without a refiner the manifest has neither field.
    let plain = load(
        tmp.path(),
        &c,
        &body.replace("refiner: tiny-sdxl-refiner\nrefiner_start: 0.8\n", ""),
    )
    .unwrap();
    let p = run(&plain);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.dir.join("manifest.json")).unwrap()).unwrap();
    assert!(m.get("refiner").is_none(), "{m}");
    assert!(m["prompts"][0].get("refiner_steps").is_none(), "{m}");
}

/// A spool, output root and config.yaml with the SDXL-class models and the CLIP reranker.
use common::spool_env::SpoolEnv as Env;

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root);
        c.defaults = Defaults::small(4, 2);
        c.default_model = Some("tiny-sdxl".into());
        c.models = [
            "tiny-sdxl",
            "tiny-sdxl-refiner",
            "tiny-sdxl-turbo",
            "tiny-lcm",
        ]
        .iter()
        .map(|m| (m.to_string(), common::model_dir(m)))
        .collect();
        let config = c.write(&root);
        Env {
            _tmp: tmp,
            root,
            config,
        }
    }

    /// The candidate images of a job's output folder, and its manifest.
    fn output(&self, job: &str) -> (Vec<PathBuf>, serde_json::Value) {
        let dir = self.root.join("output").join(job);
        let images = names(&dir)
            .into_iter()
            .filter(|n| is_candidate_image(n) && !n.contains("-grid"))
            .map(|n| dir.join(n))
            .collect();
        let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        (images, serde_json::from_str(&manifest).unwrap())
    }
}

#[test]
fn sdxl_refiner_turbo_and_lcm_jobs_run_through_the_daemon() {
    let env = Env::new();
    env.submit(
        "base.yaml",
        "prompts: [a photo of a cat]\nsteps: [2, 3]\nseed: 7\nkeep_top: 1\noriginal_size: [128, 128]\n",
    );
    env.submit(
        "refined.yaml",
        "prompts: [a red circle]\nrefiner: tiny-sdxl-refiner\nrefiner_start: 0.8\nsteps: 5\nseed: 1\n",
    );
    env.submit(
        "turbo.yaml",
        "model: tiny-sdxl-turbo\nprompts: [a cat]\nsteps: 1\nguidance: 0\nseed: 2\n",
    );
    env.submit(
        "lcm.yaml",
        "model: tiny-lcm\nprompts: [a cat]\nsteps: 4\nguidance: 8\nseed: 3\n",
    );
    env.submit(
        "wrong.yaml",
        "model: tiny-lcm\nprompts: [a cat]\nrefiner: tiny-sdxl-refiner\n",
    );
    let log = env.run_until_idle();
    let done = names(&env.spool("done"));
    for job in ["base", "refined", "turbo", "lcm"] {
        assert!(
            done.contains(&format!("{job}.yaml")),
            "{job}: {done:?}\n{log}"
        );
    }
    let error = std::fs::read_to_string(env.spool("failed").join("wrong.error.yaml")).unwrap();
    assert!(error.contains("refiner"), "{error}");
    assert!(error.contains("is for SDXL base models"), "{error}");

    // The sweep: two prompts (steps 2 and 3), keep_top 1 of each, ranked by CLIP.
    let (images, m) = env.output("base");
    assert_eq!(m["complete"], true);
    assert_eq!(m["prompts"].as_array().unwrap().len(), 2);
    assert_eq!(images.len(), 2, "{images:?}");
    assert!(
        m["prompts"][0]["candidates"][0]["clip_score"].is_number(),
        "{m}"
    );
    let text = parameters_chunk(&images[0]);
    assert!(text.starts_with("a photo of a cat\nSteps: "), "{text}");
    assert!(
        text.ends_with(", Size: 64x64, Model: tiny-sdxl, RNG: CPU"),
        "{text}"
    );

    let (images, m) = env.output("refined");
    assert_eq!(m["complete"], true);
    assert_eq!(images.len(), 2);
    for image in &images {
        let text = parameters_chunk(image);
        assert!(
            text.ends_with(
                ", Size: 64x64, Model: tiny-sdxl, RNG: CPU, Refiner: tiny-sdxl-refiner, Refiner switch at: 0.8"
            ),
            "{text}"
        );
    }
    for (job, model) in [("turbo", "tiny-sdxl-turbo"), ("lcm", "tiny-lcm")] {
        let (images, m) = env.output(job);
        assert_eq!(m["complete"], true, "{job}");
        assert_eq!(images.len(), 2, "{job}");
        let text = parameters_chunk(&images[0]);
        assert!(
            text.ends_with(&format!("Model: {model}, RNG: CPU")),
            "{text}"
        );
    }
    // The same job again: its complete manifest says there is nothing to render.
    let (before, _) = env.output("refined");
    let mtimes = |images: &[PathBuf]| -> Vec<_> {
        images
            .iter()
            .map(|p| p.metadata().unwrap().modified().unwrap())
            .collect()
    };
    let was = mtimes(&before);
    env.submit(
        "refined.yaml",
        "prompts: [a red circle]\nrefiner: tiny-sdxl-refiner\nrefiner_start: 0.8\nsteps: 5\nseed: 1\n",
    );
    let log = env.run_until_idle();
    assert!(log.contains("nothing to render"), "{log}");
    let (after, m) = env.output("refined");
    assert_eq!((mtimes(&after), m["runs"].as_u64()), (was, Some(1)));
}

#[test]
fn models_shows_the_family_of_each_new_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .arg("models")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (model, family) in [
        ("tiny-sdxl", "sdxl"),
        ("tiny-sdxl-refiner", "sdxl-refiner"),
        ("tiny-sdxl-turbo", "sdxl"),
        ("tiny-lcm", "lcm"),
        ("tiny-sdxl-fp16", "sdxl"),
    ] {
        let section = text
            .split("\n\n")
            .find(|s| s.starts_with(&format!("{model}: ")))
            .unwrap_or_else(|| panic!("{model} not listed:\n{text}"));
        assert!(
            section.contains(&format!("ok: family {family} (")),
            "{model}: {section}"
        );
    }
}
