//! Models on demand, through the real daemon: nothing loads at start, a job's models load when
//! it first needs them and stay resident within `execution.model_memory` (least recently used
//! out), a worker prefers queued jobs of equal priority for the models it has loaded, and a
//! model that cannot be loaded fails its jobs, not the daemon. Also `render` and `bench` with
//! `--device`, loading only what the job needs.

mod common;

use common::config_file::{Defaults, TestConfig};
use common::{Running, stderr_of, wait_exit};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use sdspool::app::config::ModelConfig;
use sdspool::jobs::run::resident::footprint;

/// A daemon test's folder and config.
use common::spool_env::SpoolEnv as Env;

impl Env {
    /// tiny-sd (default) and tiny-sd-v, no reranking, 64x64 pictures, 2 steps, 1 candidate.
    fn with(edit: impl FnOnce(&mut TestConfig)) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root).with_model("tiny-sd-v");
        c.rerank = None;
        c.defaults = Defaults::small(2, 1);
        edit(&mut c);
        let config = c.write(&root);
        Env {
            _tmp: tmp,
            root,
            config,
        }
    }

    /// Drops jobs into incoming/, oldest first (their mtimes a second apart), before the daemon
    /// starts, so that its first scan sees them all.
    fn submit_all(&self, jobs: &[(&str, &str)]) {
        let incoming = self.root.join("spool/incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        let now = SystemTime::now();
        for (i, (name, model)) in jobs.iter().enumerate() {
            let path = incoming.join(format!("{name}.yaml"));
            let body = format!("model: {model}\nprompts: [a cat]\nseed: {i}\n");
            std::fs::write(&path, body).unwrap();
            let age = Duration::from_secs(100 - i as u64);
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(now - age).unwrap();
        }
    }

    fn done(&self, name: &str) -> bool {
        self.root
            .join(format!("spool/done/{name}.result.yaml"))
            .is_file()
    }
}

/// The log lines that contain every needle.
fn lines<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// The jobs in the order they started.
fn started(log: &str) -> Vec<String> {
    lines(log, &["starting job"])
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("job{job=")? + 8..];
            Some(rest[..rest.find('}')?].to_string())
        })
        .collect()
}

/// A budget that holds the larger of tiny-sd and tiny-sd-v but not both.
fn one_model_budget() -> String {
    let size = |name: &str| {
        footprint(&ModelConfig {
            path: common::model_dir(name),
            vae: None,
            checkpoint: None,
        })
    };
    let (a, b) = (size("tiny-sd"), size("tiny-sd-v"));
    assert!(a > 0 && b > 0);
    format!("{}", a.max(b) + a.min(b) / 2)
}

#[test]
fn nothing_loads_at_start_and_a_model_larger_than_the_budget_loads_alone_on_first_use() {
    let env = Env::with(|c| {
        // Every committed model configured: the start must not wait for any of them.
        for m in ["tiny-sd-fp16", "tiny-sdxl", "tiny-sdxl-refiner", "tiny-lcm"] {
            c.models.push((m.into(), common::model_dir(m)));
        }
        c.rerank = Some(common::model_dir("tiny-clip"));
        c.model_memory = Some("1KiB".into());
    });
    let log = env.run_until_idle();
    assert!(lines(&log, &["sdspool is ready"]).len() == 1, "{log}");
    assert!(lines(&log, &["model loaded"]).is_empty(), "{log}");

    env.submit_all(&[("a", "tiny-sd")]);
    let log = env.run_until_idle();
    assert!(env.done("a"), "{log}");
    let ready = log.find("sdspool is ready").expect("ready");
    let loaded = lines(
        &log,
        &["model loaded", "model=tiny-sd ", "device=0", "provider=cpu"],
    );
    assert_eq!(loaded.len(), 1, "{log}");
    assert!(
        log.find(loaded[0]).unwrap() > ready,
        "loaded after ready:\n{log}"
    );
    assert!(loaded[0].contains("job{job=a}"), "{}", loaded[0]);
    assert_eq!(
        lines(&log, &["model loaded"]).len(),
        2,
        "tiny-sd and the rerank model:\n{log}"
    );
    assert_eq!(
        lines(
            &log,
            &[
                "does not fit in the device's model memory",
                "model=tiny-sd "
            ]
        )
        .len(),
        1,
        "{log}"
    );
}

#[test]
fn with_room_for_one_model_jobs_alternate_with_the_least_recently_used_unloaded() {
    let env = Env::with(|c| c.model_memory = Some(one_model_budget()));
    // Different priorities fix the order: a (tiny-sd), b (tiny-sd-v), c (tiny-sd).
    env.submit_all(&[("a", "tiny-sd"), ("b", "tiny-sd-v"), ("c", "tiny-sd")]);
    for (name, priority) in [("a", 3), ("b", 2), ("c", 1)] {
        let path = env.root.join(format!("spool/incoming/{name}.yaml"));
        let body = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{body}priority: {priority}\n")).unwrap();
    }
    let log = env.run_until_idle();
    assert_eq!(started(&log), ["a", "b", "c"], "{log}");
    let loads: Vec<&str> = lines(&log, &["model loaded"]);
    assert_eq!(loads.len(), 3, "{log}");
    for (line, model) in loads.iter().zip(["tiny-sd ", "tiny-sd-v ", "tiny-sd "]) {
        assert!(line.contains(&format!("model={model}")), "{line}");
    }
    let unloads = lines(&log, &["unloading the least recently used model"]);
    assert_eq!(unloads.len(), 2, "{log}");
    assert!(
        unloads[0].contains("model=tiny-sd ") && unloads[0].contains("for_model=tiny-sd-v"),
        "{}",
        unloads[0]
    );
    assert!(
        unloads[1].contains("model=tiny-sd-v ") && unloads[1].contains("for_model=tiny-sd "),
        "{}",
        unloads[1]
    );
    assert!(lines(&log, &["does not fit"]).is_empty(), "{log}");
    assert!(["a", "b", "c"].iter().all(|j| env.done(j)), "{log}");
}

#[test]
fn among_jobs_of_equal_priority_a_worker_takes_those_of_its_loaded_model_first() {
    let env = Env::with(|c| c.model_memory = Some(one_model_budget()));
    env.submit_all(&[
        ("x1", "tiny-sd"),
        ("y1", "tiny-sd-v"),
        ("x2", "tiny-sd"),
        ("y2", "tiny-sd-v"),
        ("x3", "tiny-sd"),
        ("y3", "tiny-sd-v"),
    ]);
    let log = env.run_until_idle();
    // In plain order the one-model budget would load a model for every job (6 loads).
    assert_eq!(started(&log), ["x1", "x2", "x3", "y1", "y2", "y3"], "{log}");
    assert_eq!(lines(&log, &["model loaded"]).len(), 2, "{log}");
}

#[test]
fn a_model_that_cannot_load_fails_its_job_naming_model_and_file_and_the_daemon_goes_on() {
    let (_copy, broken) = common::model_copy("tiny-sd");
    std::fs::write(broken.join("unet/model.onnx"), b"not an onnx graph").unwrap();
    let env = Env::with(|c| c.models.push(("broken".into(), broken.clone())));
    env.submit_all(&[("bad", "broken"), ("good", "tiny-sd")]);
    let log = env.run_until_idle();
    assert!(env.done("good"), "{log}");
    let error = std::fs::read_to_string(env.root.join("spool/failed/bad.error.yaml")).unwrap();
    for needle in [
        "step: loading the model",
        "field: model",
        "model `broken`",
        "unet/model.onnx",
    ] {
        assert!(error.contains(needle), "{needle:?} in:\n{error}");
    }
}

#[test]
fn require_gpu_without_a_gpu_stops_the_daemon_at_the_first_load_and_gives_the_job_back() {
    let env = Env::with(|_| {});
    let text = std::fs::read_to_string(&env.config).unwrap();
    let gpu = "execution:\n  providers: [tensorrt, cuda, cpu]\n  require_gpu: true\n";
    std::fs::write(&env.config, format!("{gpu}{text}")).unwrap();
    env.submit_all(&[("a", "tiny-sd")]);
    let mut daemon = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&env.config)
            .args(["run", "--until-idle"])
            .env("SDSPOOL_LOG", "info")
            .stdout(Stdio::null()),
    );
    let status = wait_exit(&mut daemon, Duration::from_secs(120));
    let log = stderr_of(&mut daemon);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("`execution.require_gpu` is true but no GPU provider serves this model"),
        "{log}"
    );
    // Not the job's fault: it waits in running/ for the next start, its attempt not counted.
    assert!(env.root.join("spool/running/a.yaml").is_file(), "{log}");
    assert!(!env.root.join("spool/failed/a.yaml").exists(), "{log}");
    assert!(!env.root.join("spool/running/a.attempts").exists(), "{log}");
}

/// Runs `sdspool ARGS` with the repository's config.yaml (every committed model configured).
fn sdspool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .args(args)
        .env("SDSPOOL_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn render_and_bench_take_a_device_and_load_only_what_the_job_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").display().to_string();
    // A base model and its refiner, no reranking: those two load, nothing else.
    let job = write(
        tmp.path(),
        "refined.yaml",
        "model: tiny-sdxl\nrefiner: tiny-sdxl-refiner\nprompts: [a cat]\ncandidates: 1\nsteps: 2\nwidth: 64\nheight: 64\nrerank: false\n",
    );
    let (ok, stdout, log) = sdspool(&["render", &job, "--output", &out, "--device", "1"]);
    assert!(ok, "{stdout}\n{log}");
    let loaded = lines(&log, &["model loaded"]);
    assert_eq!(loaded.len(), 2, "{log}");
    assert!(loaded.iter().all(|l| l.contains("device=1")), "{loaded:?}");
    assert!(lines(&log, &["model loaded", "model=tiny-sdxl-refiner "]).len() == 1);
    assert!(!lines(&log, &["rendering", "device=1"]).is_empty(), "{log}");

    let json = tmp.path().join("bench.json");
    let json_arg = json.display().to_string();
    let (ok, stdout, log) = sdspool(&[
        "bench",
        "--model",
        "tiny-sd",
        "--device",
        "2",
        "--prompts",
        "1",
        "--candidates",
        "1",
        "--steps",
        "2",
        "--size",
        "64x64",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-rerank",
        "--json",
        &json_arg,
    ]);
    assert!(ok, "{stdout}\n{log}");
    assert!(stdout.contains("on device 2"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["workload"]["device"], 2);
    let loaded = lines(&log, &["model loaded"]);
    assert!(
        loaded.len() == 1 && loaded[0].contains("model=tiny-sd ") && loaded[0].contains("device=2"),
        "{log}"
    );
    let (ok, _, log) = sdspool(&["render", &job, "--device=-1"]);
    assert!(!ok && log.contains("--device"), "{log}");
}
