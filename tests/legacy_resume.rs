//! Manifests written before the resume fingerprint was versioned (fingerprint version 1, made by
//! the code of commit a5e7059 and committed under `tests/fixtures/legacy-resume/`) still resume
//! in their own folder without rendering a finished candidate again.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use sdspool::app::config::Config;
use sdspool::jobs::run::{Outcome, RunOptions, Worker};

fn fixtures() -> PathBuf {
    common::root().join("tests/fixtures/legacy-resume")
}

/// The arrays `legacy-noise` was rendered with.
fn noise() -> (ndarray::ArrayD<f32>, Vec<ndarray::ArrayD<f32>>) {
    let shape = ndarray::IxDyn(&[1, 4, 8, 8]);
    let array = |draw: usize| {
        let mut k = 0usize;
        ndarray::ArrayD::from_shape_simple_fn(shape.clone(), || {
            k += 1;
            (((k + 13 * draw) * 37 % 101) as f32 - 50.0) / 25.0
        })
    };
    (array(0), (1..=4).map(array).collect())
}

struct Resumed {
    outcome: Outcome,
    /// The prompts the pipeline rendered, in order, once each.
    prompts_rendered: Vec<usize>,
    out: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Copies the fixture's output folder `name` into a fresh output root and runs its job there.
fn resume(name: &str, options: &RunOptions) -> (Resumed, Config, Worker) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    common::copy_dir(&fixtures().join("output").join(name), &out.join(name));
    let mut config = common::fixture_config();
    config.output_dir = out.clone();
    let job = sdspool::jobs::job::load(&fixtures().join(format!("{name}.yaml")), &config).unwrap();
    let mut worker = Worker::load(common::runtime(), &config, 0, Some("tiny-sd")).unwrap();
    let mut prompts_rendered = Vec::new();
    let outcome = worker
        .run(&job, options, &AtomicBool::new(false), &mut |p| {
            if prompts_rendered.last() != Some(&p.prompt) {
                prompts_rendered.push(p.prompt);
            }
        })
        .unwrap();
    (
        Resumed {
            outcome,
            prompts_rendered,
            out,
            _tmp: tmp,
        },
        config,
        worker,
    )
}

fn same_bytes(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        "{} changed",
        b.display()
    );
}

#[test]
fn a_stopped_job_of_the_previous_release_continues_in_its_folder() {
    let (r, config, mut worker) = resume("legacy-plain", &RunOptions::default());
    let fixture = fixtures().join("output/legacy-plain");
    assert_eq!(
        r.outcome.dir,
        r.out.join("legacy-plain"),
        "not a new folder"
    );
    assert_eq!(r.prompts_rendered, [1], "prompt 0 was finished");
    assert_eq!(r.outcome.rendered, 2);
    let m = &r.outcome.manifest;
    assert!(m.complete);
    assert_eq!(m.runs, 2);
    for file in [
        "p000-c00-s100.png",
        "rejected/p000-c01-s101.png",
        "p000-sheet.png",
    ] {
        same_bytes(&fixture.join(file), &r.outcome.dir.join(file));
    }
    assert_eq!(m.candidates().count(), 4);
    assert_eq!(
        m.candidates().filter(|c| c.kept).count(),
        2,
        "keep_top 1 per prompt"
    );
    for c in m.candidates() {
        assert!(
            r.outcome.dir.join(c.file.as_ref().unwrap()).is_file(),
            "{c:?}"
        );
    }
    // The manifest is carried on in its folder: running once more renders nothing.
    let job = sdspool::jobs::job::load(&fixtures().join("legacy-plain.yaml"), &config).unwrap();
    let again = worker
        .run(
            &job,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!((again.rendered, again.dir), (0, r.outcome.dir));
}

#[test]
fn a_stopped_sweep_of_the_previous_release_continues_in_its_folder() {
    let (r, _, _) = resume("legacy-sweep", &RunOptions::default());
    let fixture = fixtures().join("output/legacy-sweep");
    assert_eq!(
        r.outcome.dir,
        r.out.join("legacy-sweep"),
        "not a new folder"
    );
    assert_eq!(r.prompts_rendered, [2, 3], "variants 0 and 1 were finished");
    assert_eq!(r.outcome.rendered, 2);
    let m = &r.outcome.manifest;
    assert!(m.complete);
    assert_eq!(m.runs, 2);
    for file in [
        "p000-c00-s7.png",
        "p001-c00-s7.png",
        "p000-sheet.png",
        "p001-sheet.png",
    ] {
        same_bytes(&fixture.join(file), &r.outcome.dir.join(file));
    }
    assert_eq!(m.grids.len(), 1);
    assert!(r.outcome.dir.join(&m.grids[0].file).is_file());
}

#[test]
fn a_job_of_the_previous_release_rendered_from_supplied_noise_is_not_rendered_again() {
    let (initial_latents, step_noise) = noise();
    let options = RunOptions {
        dir: None,
        initial_latents: Some(initial_latents),
        step_noise: Some(step_noise),
    };
    let (r, _, _) = resume("legacy-noise", &options);
    assert_eq!(
        r.outcome.dir,
        r.out.join("legacy-noise"),
        "not a new folder"
    );
    assert_eq!(r.outcome.rendered, 0);
    assert!(r.prompts_rendered.is_empty());
    assert!(r.outcome.manifest.complete);
}
