//! The daemon, driven as users drive it: the real binary, job files dropped into incoming/,
//! results read from done/, failed/ and the output folder.

mod common;

use common::{
    Running, is_candidate_image, names, parameters_chunk, stderr_of, wait_exit, wait_for,
};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new(grace_seconds: u64) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let lib =
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "onnxruntime:\n  library: {lib}\nspool:\n  dir: {root}/spool\n  rescan_seconds: 1\n  settle_seconds: 0\noutput_dir: {root}/output\n\
                 daemon:\n  grace_seconds: {grace_seconds}\ndefaults:\n  width: 64\n  height: 64\n  steps: 4\n  candidates: 2\n\
                 default_model: tiny-sd\nmodels:\n  tiny-sd:\n    path: {sd}\nrerank:\n  model: {clip}\n",
                lib = lib.display(),
                root = root.display(),
                sd = common::model_dir("tiny-sd").display(),
                clip = common::model_dir("tiny-clip").display(),
            ),
        )
        .unwrap();
        Env {
            _tmp: tmp,
            root,
            config,
        }
    }

    fn spool(&self, sub: &str) -> PathBuf {
        self.root.join("spool").join(sub)
    }

    fn start(&self, args: &[&str]) -> Running {
        Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_sdspool"))
                .arg("--config")
                .arg(&self.config)
                .arg("run")
                .args(args)
                .env("SDSPOOL_LOG", "info")
                .stdout(Stdio::null()),
        )
    }

    /// Drops a job the way users are told to: written elsewhere, renamed in.
    fn submit(&self, name: &str, body: &str) {
        std::fs::create_dir_all(self.spool("incoming")).unwrap();
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.spool("incoming").join(name)).unwrap();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn jobs_in_images_and_manifests_out_a_bad_job_fails_and_sigterm_exits_0() {
    let env = Env::new(30);
    let mut daemon = env.start(&[]);
    env.submit("broken.yaml", "prompts: [a cat]\nwidht: 64\n");
    env.submit(
        "cats.yaml",
        "prompts:\n  - a photo of a cat\n  - a red circle\nseed: 5\nkeep_top: 1\n",
    );
    wait_for("cats in done/", Duration::from_secs(120), || {
        env.spool("done").join("cats.yaml").exists()
    });
    // The error file is written first, the job file moved beside it last.
    wait_for("broken in failed/", Duration::from_secs(30), || {
        env.spool("failed").join("broken.yaml").exists()
    });

    // The bad job: moved with a reason naming the field, and a did-you-mean.
    let error = std::fs::read_to_string(env.spool("failed").join("broken.error.yaml")).unwrap();
    assert!(
        error.contains("widht") && error.contains("width"),
        "{error}"
    );

    // The good job: result summary, manifest, images with their settings, contact sheets.
    let result = std::fs::read_to_string(env.spool("done").join("cats.result.yaml")).unwrap();
    assert!(
        result.contains("images: 4") && result.contains("kept: 2"),
        "{result}"
    );
    let out = env.root.join("output/cats");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], true);
    assert_eq!(manifest["execution_provider"], "cpu");
    let prompts = manifest["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    for p in prompts {
        for c in p["candidates"].as_array().unwrap() {
            for key in ["seed", "cosine", "clip_score", "rank", "file"] {
                assert!(!c[key].is_null(), "{key} missing in {c}");
            }
            let file = out.join(c["file"].as_str().unwrap());
            let params = parameters_chunk(&file);
            assert!(
                params.starts_with(p["prompt"].as_str().unwrap()),
                "{params}"
            );
            assert!(
                params.contains(&format!("Seed: {}", c["seed"]))
                    && params.contains("Size: 64x64, Model: tiny-sd"),
                "{params}"
            );
            assert_eq!(
                c["rank"] == 1,
                !c["file"].as_str().unwrap().starts_with("rejected/")
            );
        }
        assert!(out.join(p["contact_sheet"].as_str().unwrap()).is_file());
    }
    assert!(names(&env.spool("incoming")).is_empty());
    // Filing moves the job file first (the commit point) and removes its attempts and status
    // files just after, so running/ empties a moment after done/cats.yaml appears.
    wait_for("running/ empty", Duration::from_secs(10), || {
        names(&env.spool("running")).is_empty()
    });

    // The daemon is still up and takes the next job.
    env.submit("next.yaml", "prompts: [a dog]\ncandidates: 1\n");
    wait_for("next in done/", Duration::from_secs(60), || {
        env.spool("done").join("next.yaml").exists()
    });

    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30));
    let log = stderr_of(&mut daemon);
    assert!(status.success(), "exit {status:?}\n{log}");
    // Every line about a job carries its id.
    let cats: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("starting job") || l.contains("job done"))
        .collect();
    assert!(cats.len() >= 4, "{log}");
    assert!(cats.iter().all(|l| l.contains("job{job=")), "{cats:?}");
    assert!(
        log.contains("job{job=cats}") && log.contains("job{job=broken}"),
        "{log}"
    );
}

#[test]
fn sigkill_during_a_job_then_restart_completes_it_once_without_rendering_finished_candidates_again()
{
    let env = Env::new(30);
    let mut daemon = env.start(&[]);
    let job = "prompts: [one, two, three, four, five, six]\ncandidates: 3\nsteps: 12\nseed: 9\n";
    env.submit("long.yaml", job);
    let out = env.root.join("output/long");
    // Whole images on disk under their final names; `.sdspool-tmp-*` files are being written.
    let images = || -> Vec<String> {
        names(&out)
            .into_iter()
            .filter(|n| is_candidate_image(n))
            .collect()
    };
    // Kill once at least one prompt's images are on disk (the status file's images_done counts
    // images rendered and still being written, so it is not what to wait for).
    wait_for(
        "the first prompt's images",
        Duration::from_secs(120),
        || images().len() >= 3,
    );
    signal(&daemon, "KILL");
    wait_exit(&mut daemon, Duration::from_secs(10));
    assert!(
        env.spool("running").join("long.yaml").exists(),
        "the job stays in running/"
    );
    assert!(
        !env.spool("done").join("long.yaml").exists(),
        "killed before it finished"
    );
    let before: Vec<(String, std::time::SystemTime)> = images()
        .into_iter()
        .map(|n| {
            let t = std::fs::metadata(out.join(&n)).unwrap().modified().unwrap();
            (n, t)
        })
        .collect();
    assert!(before.len() >= 3 && before.len() < 18, "{before:?}");

    let mut again = env.start(&["--until-idle"]);
    let status = wait_exit(&mut again, Duration::from_secs(180));
    let log = stderr_of(&mut again);
    assert!(status.success(), "{log}");
    assert_eq!(
        names(&env.spool("done")),
        ["long.result.yaml", "long.yaml"],
        "done exactly once"
    );
    assert!(names(&env.spool("running")).is_empty() && names(&env.spool("incoming")).is_empty());
    let result = std::fs::read_to_string(env.spool("done").join("long.result.yaml")).unwrap();
    assert!(result.contains("images: 18"), "{result}");
    assert!(result.contains("runs: 2"), "{result}");
    // Images written before the kill were not rendered again.
    for (name, t) in &before {
        assert_eq!(
            std::fs::metadata(out.join(name))
                .unwrap()
                .modified()
                .unwrap(),
            *t,
            "{name} was rewritten"
        );
    }
    let rendered: usize = result
        .lines()
        .find_map(|l| l.strip_prefix("rendered_by_this_run: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rendered, 18 - before.len(), "{result}");
}

#[test]
fn sigterm_during_a_long_job_exits_0_within_the_grace_period_and_the_job_resumes() {
    let env = Env::new(1);
    let mut daemon = env.start(&[]);
    env.submit(
        "slow.yaml",
        "prompts: [a, b, c, d, e, f, g, h]\ncandidates: 4\nsteps: 30\nseed: 3\n",
    );
    let status_file = env.spool("running").join("slow.status.json");
    wait_for("the job to start", Duration::from_secs(60), || {
        status_file.exists()
    });
    let sent = Instant::now();
    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(20));
    let log = stderr_of(&mut daemon);
    assert!(status.success(), "{log}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    assert!(
        env.spool("running").join("slow.yaml").exists(),
        "stopped jobs stay in running/\n{log}"
    );
    let attempts =
        std::fs::read_to_string(env.spool("running").join("slow.attempts")).unwrap_or_default();
    assert!(
        !attempts.contains("attempts: 1"),
        "a clean stop is not counted as a crash: {attempts}"
    );

    let mut again = env.start(&["--until-idle"]);
    let status = wait_exit(&mut again, Duration::from_secs(300));
    let log = stderr_of(&mut again);
    assert!(status.success(), "{log}");
    assert!(env.spool("done").join("slow.yaml").exists(), "{log}");
}
