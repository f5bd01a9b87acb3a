//! The job's output folder: nothing is written or read through a symbolic link placed where
//! the folder, its `rejected/` or one of its files goes (a link in place of the folder makes the
//! job take the next free name), and files removed from it while the job runs are rendered
//! again before the job is declared complete.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sdspool::app::config::Config;
use sdspool::jobs::job::{self, Job};
use sdspool::jobs::run::manifest::Manifest;
use sdspool::jobs::run::{JobRunError, Outcome, Progress, RunOptions, Worker};

struct Env {
    tmp: tempfile::TempDir,
    config: Config,
    worker: Worker,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = common::fixture_config();
        config.output_dir = tmp.path().join("out");
        let worker = Worker::load(common::runtime(), &config, 0, Some("tiny-sd")).unwrap();
        Env {
            tmp,
            config,
            worker,
        }
    }

    fn job(&self, body: &str) -> Job {
        let p = self.tmp.path().join("job.yaml");
        std::fs::write(&p, body).unwrap();
        job::load(&p, &self.config).unwrap()
    }

    fn out(&self) -> PathBuf {
        self.config.output_dir.clone()
    }

    /// An empty folder outside the output root.
    fn outside(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn run(&mut self, job: &Job) -> Result<Outcome, JobRunError> {
        self.run_with(job, &mut |_| {})
    }

    fn run_with(
        &mut self,
        job: &Job,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, JobRunError> {
        self.worker.run(
            job,
            &RunOptions::default(),
            &AtomicBool::new(false),
            progress,
        )
    }

    /// Runs `job` and stops it during prompt 1 (prompt 0 is finished by then).
    fn run_and_stop(&mut self, job: &Job) {
        let stop = AtomicBool::new(false);
        let err = self
            .worker
            .run(job, &RunOptions::default(), &stop, &mut |p| {
                if p.prompt == 1 {
                    stop.store(true, Ordering::Relaxed);
                }
            })
            .unwrap_err();
        assert!(matches!(err, JobRunError::Stopped), "{err}");
    }

    /// The job rendered without interruption into a folder of its own.
    fn reference(&mut self, job: &Job) -> Outcome {
        let dir = self.tmp.path().join("reference");
        let options = RunOptions {
            dir: Some(dir),
            ..Default::default()
        };
        self.worker
            .run(job, &options, &AtomicBool::new(false), &mut |_| {})
            .unwrap()
    }
}

const JOB: &str = "prompts: [a red circle, a blue square]\ncandidates: 2\nseed: 100\nsteps: 2\nwidth: 64\nheight: 64\noutput: links\n";

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits until the manifest in `dir` says prompt `index` is finished (the finishing thread
/// works beside the render thread that calls the progress callback).
fn wait_finished(dir: &Path, index: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !Manifest::read(dir).is_some_and(|m| m.prompts[index].finished) {
        assert!(
            std::time::Instant::now() < deadline,
            "prompt {index} never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Every file the manifest names is a regular file in the folder, and the manifest on disk is
/// the complete one.
fn assert_whole(o: &Outcome) {
    assert!(o.manifest.complete);
    let on_disk = Manifest::read(&o.dir).unwrap();
    assert!(on_disk.complete);
    let files = o
        .manifest
        .candidates()
        .filter_map(|c| c.file.clone())
        .chain(
            o.manifest
                .prompts
                .iter()
                .filter_map(|p| p.contact_sheet.clone()),
        )
        .chain(o.manifest.grids.iter().map(|g| g.file.clone()));
    for f in files {
        let meta = std::fs::symlink_metadata(o.dir.join(&f));
        assert!(
            meta.is_ok_and(|m| m.file_type().is_file()),
            "{f} is not a regular file in {}",
            o.dir.display()
        );
    }
}

/// The images are those of an uninterrupted run.
fn assert_same_images(o: &Outcome, reference: &Outcome) {
    assert_eq!(
        o.manifest.candidates().count(),
        reference.manifest.candidates().count()
    );
    for (a, b) in o.manifest.candidates().zip(reference.manifest.candidates()) {
        let (Some(fa), Some(fb)) = (&a.file, &b.file) else {
            assert_eq!(a.file, b.file);
            continue;
        };
        let ia = image::open(o.dir.join(fa)).unwrap().to_rgb8();
        let ib = image::open(reference.dir.join(fb)).unwrap().to_rgb8();
        assert!(ia == ib, "{fa} differs from the uninterrupted run's");
        assert_eq!((a.rank, a.kept), (b.rank, b.kept), "{fa}");
    }
}

#[test]
fn a_link_to_a_folder_outside_in_place_of_the_output_folder_is_a_taken_name() {
    let mut env = Env::new();
    let outside = env.outside("elsewhere");
    std::fs::create_dir_all(env.out()).unwrap();
    symlink(&outside, env.out().join("links")).unwrap();
    let j = env.job(JOB);
    let o = env.run(&j).unwrap();
    assert_eq!(o.dir, env.out().join("links-2"));
    assert_whole(&o);
    assert!(names_in(&outside).is_empty(), "written through the link");
    assert!(
        std::fs::symlink_metadata(env.out().join("links"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_dangling_link_in_place_of_the_output_folder_is_a_taken_name() {
    let mut env = Env::new();
    let target = env.tmp.path().join("not-yet");
    std::fs::create_dir_all(env.out()).unwrap();
    symlink(&target, env.out().join("links")).unwrap();
    let j = env.job(JOB);
    let o = env.run(&j).unwrap();
    assert_eq!(o.dir, env.out().join("links-2"));
    assert_whole(&o);
    assert!(!target.exists(), "created through the link");
}

#[test]
fn a_link_in_place_of_rejected_is_not_followed() {
    let mut env = Env::new();
    let j = env.job(&format!("{JOB}keep_top: 1\n"));
    let reference = env.reference(&j);
    env.run_and_stop(&j);
    let rejected = env.out().join("links/rejected");
    assert_eq!(names_in(&rejected), ["p000-c01-s101.png"]);
    // Someone swaps rejected/ for a link to a folder outside the output root.
    let outside = env.outside("elsewhere");
    std::fs::remove_dir_all(&rejected).unwrap();
    symlink(&outside, &rejected).unwrap();

    let o = env.run(&j).unwrap();
    assert_eq!(o.dir, env.out().join("links"));
    assert!(names_in(&outside).is_empty(), "moved through the link");
    assert!(std::fs::symlink_metadata(&rejected).unwrap().is_dir());
    assert_whole(&o);
    // Prompt 0's rejected candidate went with the old folder: it is rendered again.
    assert_same_images(&o, &reference);
}

#[test]
fn a_link_in_place_of_an_image_is_not_taken_for_the_image() {
    let mut env = Env::new();
    let j = env.job(JOB);
    let reference = env.reference(&j);
    env.run_and_stop(&j);
    let dir = env.out().join("links");
    // As a kill after prompt 0's images were checkpointed and before it was finished leaves it.
    let mut m = Manifest::read(&dir).unwrap();
    m.prompts[0].finished = false;
    m.prompts[0].contact_sheet = None;
    for c in &mut m.prompts[0].candidates {
        (c.cosine, c.clip_score, c.rank) = (None, None, None);
    }
    m.write(&dir).unwrap();
    // Someone puts a link to a picture outside in place of one of them.
    let outside = env.outside("elsewhere").join("red.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([255, 0, 0]))
        .save(&outside)
        .unwrap();
    let before = std::fs::read(&outside).unwrap();
    let image = dir.join("p000-c01-s101.png");
    std::fs::remove_file(&image).unwrap();
    symlink(&outside, &image).unwrap();

    let o = env.run(&j).unwrap();
    assert_eq!(o.dir, dir);
    assert_eq!(o.rendered, 3, "the linked candidate and prompt 1's two");
    assert_whole(&o);
    assert_same_images(&o, &reference);
    assert_eq!(std::fs::read(&outside).unwrap(), before);
}

#[test]
fn images_removed_while_the_job_runs_are_rendered_again() {
    let mut env = Env::new();
    let j = env.job(JOB);
    let reference = env.reference(&j);
    let dir = env.out().join("links");
    let mut removed = false;
    let o = env
        .run_with(&j, &mut |p| {
            // While prompt 1 denoises, prompt 0's files go.
            if p.prompt == 1 && !removed {
                wait_finished(&dir, 0);
                for name in ["p000-c00-s100.png", "p000-c01-s101.png", "p000-sheet.png"] {
                    let _ = std::fs::remove_file(dir.join(name));
                }
                removed = true;
            }
        })
        .unwrap();
    assert!(removed);
    assert_eq!(o.dir, dir);
    assert_whole(&o);
    assert_same_images(&o, &reference);
}

#[test]
fn an_output_folder_removed_while_the_job_runs_is_rendered_again() {
    let mut env = Env::new();
    let j = env.job(JOB);
    let reference = env.reference(&j);
    let dir = env.out().join("links");
    let mut removed = false;
    let o = env
        .run_with(&j, &mut |p| {
            // `rm -rf` of the folder while prompt 1 denoises.
            if p.prompt == 1 && !removed {
                wait_finished(&dir, 0);
                std::fs::remove_dir_all(&dir).unwrap();
                removed = true;
            }
        })
        .unwrap();
    assert!(removed);
    assert_eq!(o.dir, dir, "the free name is taken again");
    assert_whole(&o);
    assert_same_images(&o, &reference);
}
