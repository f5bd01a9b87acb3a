//! `sdspool submit`, `sdspool status` and `sdspool check` through the real binary, on a temporary
//! config whose spool lies in a temporary folder. None of them needs ONNX Runtime.

mod common;

use common::config_file::TestConfig;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use sdspool::spool::{JobStatus, SpoolConfig, StorageWait, write_status};

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    spool: PathBuf,
}

/// A config with the committed tiny-sd model (absolute path), the spool and the output in a
/// temporary folder, and an ONNX Runtime library that does not exist: these commands must not
/// load it.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let spool = root.join("spool");
    let config = TestConfig::offline(&root).write(&root);
    Setup {
        _tmp: tmp,
        root,
        config,
        spool,
    }
}

fn sdspool(s: &Setup, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(&s.config)
        .args(args)
        .env("SDSPOOL_LOG", "warn")
        .env("ORT_DYLIB_PATH", s.root.join("also-missing.so"))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_job(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    p
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const CATS: &str = "prompts:\n  - a photo of a cat\n  - prompt: a watercolor of a cat\n    negative: blurry\n    seeds: [7, 99]\ncandidates: 4\nseed: 42\nsteps: 7\nwidth: 64\nheight: 64\n";

#[test]
fn submit_copies_a_valid_job_into_incoming_and_refuses_to_overwrite() {
    let s = setup();
    let job = write_job(&s.root, "cats.yaml", CATS);
    let out = sdspool(&s, &["submit", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dest = s.spool.join("incoming").join("cats.yaml");
    assert_eq!(text(&out.stdout).trim(), dest.display().to_string());
    assert_eq!(fs::read_to_string(&dest).unwrap(), CATS);
    // The whole layout exists; no temporary file is left behind.
    assert_eq!(names(&s.spool), ["done", "failed", "incoming", "running"]);
    assert_eq!(names(&s.spool.join("incoming")), ["cats.yaml"]);

    fs::write(&job, CATS.replace("steps: 7", "steps: 9")).unwrap();
    let out = sdspool(&s, &["submit", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&dest).unwrap(), CATS);

    let out = sdspool(&s, &["submit", "--replace", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(fs::read_to_string(&dest).unwrap().contains("steps: 9"));
    assert_eq!(names(&s.spool.join("incoming")), ["cats.yaml"]);
}

#[test]
fn submit_refuses_an_invalid_job_with_the_file_and_field() {
    let s = setup();
    let job = write_job(&s.root, "bad.yaml", "prompts: [a cat]\nsteps: 0\n");
    let out = sdspool(&s, &["submit", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("`steps`"), "{err}");
    assert!(out.stdout.is_empty());
    let unknown = write_job(&s.root, "typo.yaml", "prompts: [a cat]\nmodle: tiny-sd\n");
    let out = sdspool(&s, &["submit", unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did you mean `model`"),
        "{}",
        text(&out.stderr)
    );
    let txt = write_job(&s.root, "job.txt", CATS);
    let out = sdspool(&s, &["submit", txt.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("*.yaml"),
        "{}",
        text(&out.stderr)
    );
    let incoming = s.spool.join("incoming");
    assert!(!incoming.exists() || names(&incoming).is_empty());
}

#[test]
fn check_explains_a_job_without_onnx_runtime() {
    let s = setup();
    let job = write_job(&s.root, "cats.yaml", CATS);
    let out = sdspool(&s, &["check", job.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for want in [
        "cats.yaml: ok",
        "id         cats",
        &format!(
            "model      tiny-sd ({})",
            common::model_dir("tiny-sd").display()
        ),
        "scheduler  pndm (the model's own, PNDMScheduler in ",
        "size       64x64",
        "steps      7, guidance 7.5",
        "prompts    2",
        "images     6 (4 + 2), at most 8 per UNet batch",
        "prompt 1   \"a photo of a cat\": 4 images, seeds 42-45",
        "prompt 2   \"a watercolor of a cat\" (negative \"blurry\"): 2 images, seeds 7, 99",
        &format!("output     {}", s.root.join("out").join("cats").display()),
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    let set = write_job(
        &s.root,
        "euler.yaml",
        &format!("{CATS}scheduler: euler_a\n"),
    );
    let out = sdspool(&s, &["check", set.to_str().unwrap()]);
    assert!(
        text(&out.stdout).contains("scheduler  euler_a (set by the job)"),
        "{}",
        text(&out.stdout)
    );
}

/// 72 is a multiple of 8 but not of tiny-sd's 16 (VAE 8 x UNet 2): `check` and `submit` apply
/// the model's own rule, read from its folder, so such a job never reaches the spool (before,
/// it failed only when the daemon claimed it). A size sweep is checked cell by cell.
#[test]
fn check_and_submit_apply_the_models_size_rule() {
    let s = setup();
    let rule = "multiple of 16 (VAE downsampling 8 x UNet downsampling 2)";
    for (name, body, field) in [
        (
            "odd.yaml",
            "prompts: [a cat]\nwidth: 72\nheight: 64\n",
            "`width`",
        ),
        (
            "sweep.yaml",
            "prompts: [a cat]\nsize: [64x64, 64x40]\n",
            "`height`",
        ),
    ] {
        let job = write_job(&s.root, name, body);
        for command in ["check", "submit"] {
            let out = sdspool(&s, &[command, job.to_str().unwrap()]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {name}: {err}");
            assert!(
                err.contains(name) && err.contains(field) && err.contains(rule),
                "{command} {name}: {err}"
            );
        }
    }
    let incoming = s.spool.join("incoming");
    assert!(!incoming.exists() || names(&incoming).is_empty());
    // A size that fits is accepted by both.
    let good = write_job(
        &s.root,
        "ok.yaml",
        "prompts: [a cat]\nwidth: 80\nheight: 48\n",
    );
    for command in ["check", "submit"] {
        let out = sdspool(&s, &[command, good.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[test]
fn check_fails_naming_the_file_and_field() {
    let s = setup();
    let job = write_job(&s.root, "m.yaml", "prompts: [a cat]\nmodel: sd-xl\n");
    let out = sdspool(&s, &["check", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("m.yaml") && err.contains("`model`") && err.contains("sd-xl"),
        "{err}"
    );
    let job = write_job(&s.root, "w.yaml", "prompts: [a cat]\nwidth: 65\n");
    let out = sdspool(&s, &["check", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("`width`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn status_shows_counts_progress_and_the_queue_in_run_order() {
    let s = setup();
    let layout = sdspool::spool::Layout::new(&s.spool);
    layout.create().unwrap();
    let now = SystemTime::now();
    let queue = [
        ("later.yaml", "prompts: [a]\n", 100),
        ("first.yaml", "prompts: [a]\npriority: 3\n", 10),
        ("oldest.yaml", "prompts: [a]\n", 500),
        ("broken.yaml", "prompts: [\n", 50),
        ("busy.yaml", "prompts: [a]\n", 20),
        (".hidden.yaml", "prompts: [a]\n", 1),
    ];
    for (name, body, age) in queue {
        let p = write_job(&layout.incoming, name, body);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(now - Duration::from_secs(age))
            .unwrap();
    }
    // Two running jobs: one of a live process (this test), one of a process that is gone.
    write_job(&layout.running, "busy.yaml", "prompts: [a]\n");
    let mut live = JobStatus::starting("busy", "tiny-sd", 3, 25, 12);
    live.prompt_index = 1;
    live.step = 13;
    live.images_done = 4;
    live.eta_seconds = Some(250);
    write_status(&layout.running.join("busy.status.json"), &live).unwrap();
    write_job(&layout.running, "dead.yaml", "prompts: [a]\n");
    let mut dead = JobStatus::starting("dead", "tiny-sd", 1, 25, 4);
    dead.pid = 4_000_000;
    dead.updated_at = now - Duration::from_secs(300);
    write_status(&layout.running.join("dead.status.json"), &dead).unwrap();
    fs::write(layout.running.join("dead.attempts"), "2\n").unwrap();
    // One waiting for storage: its output could not be written.
    write_job(&layout.running, "stuck.yaml", "prompts: [a]\n");
    let mut stuck = JobStatus::starting("stuck", "tiny-sd", 1, 25, 4);
    stuck.eta_seconds = None;
    stuck.waiting = Some(StorageWait {
        reason: "writing p000-c000-s1.png: No space left on device (os error 28)".into(),
        retry_at: now + Duration::from_secs(175), // "2m ..." for 55 s
    });
    write_status(&layout.running.join("stuck.status.json"), &stuck).unwrap();
    write_job(&layout.done, "d.yaml", "x");
    write_job(&layout.done, "d.result.yaml", "x");
    write_job(&layout.failed, "f.yaml", "x");
    write_job(&layout.failed, "f.error.yaml", "x");
    write_job(&layout.failed, "g.yaml", "x");

    let out = sdspool(&s, &["status"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("incoming 5, running 3, done 1, failed 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("busy tiny-sd: prompt 2/3, step 13/25, images 4/12, ETA 4m 10s"),
        "{stdout}"
    );
    let stuck_line = stdout.lines().find(|l| l.contains("stuck.yaml")).unwrap();
    assert!(
        stuck_line.contains(
            "WAITING: cannot write its files (writing p000-c000-s1.png: No space left on device (os error 28)), next try in 2m"
        ) && !stuck_line.contains("ETA"),
        "{stuck_line}"
    );
    let dead_line = stdout.lines().find(|l| l.contains("dead.yaml")).unwrap();
    assert!(
        dead_line.contains("STALE") && dead_line.contains("attempt 2") && dead_line.contains("5m"),
        "{dead_line}"
    );
    let busy_line = stdout
        .lines()
        .find(|l| l.contains("  busy.yaml  "))
        .unwrap();
    assert!(!busy_line.contains("STALE"), "{busy_line}");
    let order: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("queued"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        order,
        [
            "first.yaml",
            "oldest.yaml",
            "later.yaml",
            "broken.yaml",
            "busy.yaml"
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("waits: a job named `busy` is running"),
        "{stdout}"
    );
    assert!(stdout.contains("broken.yaml  priority 0"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("broken.yaml") && l.contains("will fail")),
        "{stdout}"
    );

    let out = sdspool(&s, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["incoming"], 5);
    assert_eq!(v["counts"]["running"], 3);
    let waiting = v["running"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["progress"]["job_id"] == "stuck")
        .map(|r| &r["progress"]["waiting"])
        .unwrap();
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{waiting}"
    );
    assert!(waiting["retry_at"].is_string(), "{waiting}");
    assert_eq!(v["counts"]["done"], 1);
    assert_eq!(v["counts"]["failed"], 2);
    let queued: Vec<&str> = v["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(queued, order);
    assert_eq!(v["queued"][0]["priority"], 3);
    let running = v["running"].as_array().unwrap();
    let by_name = |n: &str| running.iter().find(|r| r["name"] == n).unwrap();
    assert_eq!(by_name("dead.yaml")["stale"], true);
    assert_eq!(by_name("dead.yaml")["attempts"], 2);
    assert_eq!(by_name("busy.yaml")["stale"], false);
    assert_eq!(by_name("busy.yaml")["progress"]["eta_seconds"], 250);
    assert_eq!(by_name("busy.yaml")["progress"]["step"], 13);
}

#[test]
fn status_of_a_spool_that_does_not_exist_yet_is_empty() {
    let s = setup();
    let out = sdspool(&s, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["incoming"], 0);
    assert!(!s.spool.exists(), "status must not create the spool");
    // The spool directory is resolved against the config file's folder.
    let c = sdspool::app::config::Config::load(&s.config).unwrap();
    assert_eq!(
        c.spool,
        SpoolConfig {
            dir: s.spool.clone(),
            ..SpoolConfig::default()
        }
    );
}

/// `check` applies the daemon's own family rule (`job::folders_fit`): it reports the model's
/// family (and the refiner's), and refuses, naming the file and the field, what that family does
/// not take: a refiner or SDXL size conditioning on an SD 1.x model, a refiner that is not an
/// SDXL refiner, a negative prompt on an LCM model (its UNet folds guidance in).
#[test]
fn check_reports_the_family_and_refuses_fields_the_family_does_not_take() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let config = TestConfig {
        default_model: Some("tiny-sd".into()),
        ..TestConfig::offline(&root)
            .with_model("tiny-sdxl")
            .with_model("tiny-sdxl-refiner")
            .with_model("tiny-sdxl-turbo")
            .with_model("tiny-lcm")
    }
    .write(&root);
    let s = Setup {
        _tmp: tmp,
        spool: root.join("spool"),
        root,
        config,
    };
    let job = write_job(
        &s.root,
        "refined.yaml",
        "model: tiny-sdxl\nprompts: [a cat]\nwidth: 64\nheight: 64\nrefiner: tiny-sdxl-refiner\nrefiner_start: 0.7\n",
    );
    let out = sdspool(&s, &["check", job.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for want in [
        "family     sdxl (Stable Diffusion XL)",
        "refiner    tiny-sdxl-refiner (family sdxl-refiner), takes over at 0.7 of the schedule",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in\n{stdout}");
    }
    let out = sdspool(
        &s,
        &[
            "check",
            write_job(&s.root, "lcm.yaml", "model: tiny-lcm\nprompts: [a cat]\n")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(
        text(&out.stdout).contains("family     lcm (latent consistency model)"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let cases = [
        (
            "sd-refiner.yaml",
            "model: tiny-sd\nprompts: [a cat]\nrefiner: tiny-sdxl-refiner\n",
            "`refiner`",
            "is for SDXL base models; model \"tiny-sd\" is of the sd family",
        ),
        (
            "sd-size.yaml",
            "model: tiny-sd\nprompts: [a cat]\noriginal_size: [128, 128]\n",
            "`original_size`",
            "is SDXL conditioning; model \"tiny-sd\" is of the sd family",
        ),
        (
            "sd-crop.yaml",
            "model: tiny-sd\nprompts: [a cat]\ncrop_top_left: [8, 8]\n",
            "`crop_top_left`",
            "is SDXL conditioning",
        ),
        (
            "sd-target.yaml",
            "model: tiny-sd\nprompts: [a cat]\ntarget_size: [64, 64]\n",
            "`target_size`",
            "is SDXL conditioning",
        ),
        (
            "not-a-refiner.yaml",
            "model: tiny-sdxl\nprompts: [a cat]\nwidth: 64\nheight: 64\nrefiner: tiny-sdxl-turbo\n",
            "`refiner`",
            "names model \"tiny-sdxl-turbo\" of the sdxl family; a refiner must be of the sdxl-refiner family",
        ),
        (
            "lcm-negative.yaml",
            "model: tiny-lcm\nprompts:\n  - a cat\n  - prompt: a dog\n    negative: blurry\n",
            "`negative`",
            "is set (prompt 2); model \"tiny-lcm\" is of the lcm family",
        ),
    ];
    for (name, body, field, message) in cases {
        let job = write_job(&s.root, name, body);
        for command in ["check", "submit"] {
            let out = sdspool(&s, &[command, job.to_str().unwrap()]);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {name}: {err}");
            assert!(
                err.contains(name) && err.contains(field) && err.contains(message),
                "{command} {name}: {err}"
            );
        }
    }
    let incoming = s.spool.join("incoming");
    assert!(!incoming.exists() || names(&incoming).is_empty());
}
