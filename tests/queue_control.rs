//! Queue control through the real binary: `sdspool pause`/`resume` (a flag in the spool that
//! holds across restarts), `sdspool cancel` of queued and running jobs, priority changes by
//! re-submitting or editing a queued file, and `sdspool status` with positions and ETAs from the
//! speed measured in `control/timings.json`.

mod common;

use common::config_file::{Defaults, TestConfig};

use common::{Running, names, stderr_of, wait_exit, wait_for};

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root);
        c.grace_seconds = Some(30);
        c.defaults = Defaults::small(4, 2);
        let config = c.write(&root);
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

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("SDSPOOL_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sdspool {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Writes a job file outside the spool and submits it with `sdspool submit`.
    fn submit(&self, name: &str, body: &str, replace: bool) {
        let dir = self.root.join("jobs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let path = path.display().to_string();
        let mut args = vec!["submit", path.as_str()];
        if replace {
            args.push("--replace");
        }
        self.ok(&args);
    }
}

fn terminate(child: &mut Running) -> String {
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let status = wait_exit(child, Duration::from_secs(60));
    let log = stderr_of(child);
    assert!(status.success(), "exit {status:?}\n{log}");
    log
}

fn queued_names(v: &serde_json::Value) -> Vec<String> {
    v["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_string())
        .collect()
}

/// The order the daemon started jobs in, from its log.
fn start_order(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("starting job"))
        .filter_map(|l| {
            let start = l.find("job{job=")? + "job{job=".len();
            Some(l[start..start + l[start..].find('}')?].to_string())
        })
        .collect()
}

const LONG: &str = "prompts: [a, b, c, d, e, f]\ncandidates: 4\nsteps: 30\nseed: 1\npriority: 10\n";

#[test]
fn pause_holds_every_job_across_restarts_resume_runs_them_in_priority_order_and_edits_count() {
    let env = Env::new();
    assert!(
        env.ok(&["pause", "--reason", "GPU needed"])
            .contains("paused")
    );
    assert!(env.ok(&["pause"]).contains("already paused"));
    env.submit("long.yaml", LONG, false);
    env.submit("x.yaml", "prompts: [a fox]\npriority: 0\nseed: 2\n", false);
    env.submit("y.yaml", "prompts: [a yak]\npriority: 0\nseed: 3\n", false);

    // A paused spool is idle for --until-idle: it exits without taking anything.
    let mut d = env.start(&["--until-idle"]);
    let status = wait_exit(&mut d, Duration::from_secs(60));
    let log = stderr_of(&mut d);
    assert!(status.success(), "{log}");
    assert!(log.contains("paused"), "{log}");
    assert_eq!(
        names(&env.spool("incoming")),
        ["long.yaml", "x.yaml", "y.yaml"]
    );

    // A long-running daemon waits while paused; status says so, with the queue in run order.
    let mut d = env.start(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names(&env.spool("running")), Vec::<String>::new());
    let text = env.ok(&["status"]);
    assert!(
        text.contains("PAUSED since") && text.contains("(GPU needed)"),
        "{text}"
    );
    let v = env.status_json();
    assert!(v["paused"]["by"].as_str().unwrap().contains('@'), "{v}");
    assert_eq!(queued_names(&v), ["long.yaml", "x.yaml", "y.yaml"]);
    assert_eq!(v["queued"][2]["position"], 3);
    // Nothing was measured yet: images and UNet steps are known, the time is not. (tiny-sd's
    // own scheduler is PNDM: 31 UNet calls for 30 steps.)
    assert_eq!(v["queued"][0]["estimate"]["images"], 24);
    assert_eq!(v["queued"][0]["estimate"]["unet_calls"], 6 * 31);
    assert!(v["queued"][0]["estimate"]["seconds"].is_null(), "{v}");
    assert!(text.contains("no speed measured"), "{text}");

    // Resume: the daemon takes `long` (priority 10) and reads x's and y's priorities (0).
    assert!(env.ok(&["resume"]).contains("resumed"));
    assert!(env.ok(&["resume"]).contains("not paused"));
    let status_file = env.spool("running").join("long.status.json");
    wait_for("long to start", Duration::from_secs(60), || {
        status_file.exists()
    });
    // While it runs, raise y's priority by editing the queued file in place (same size).
    let y = env.spool("incoming").join("y.yaml");
    let edited = std::fs::read_to_string(&y)
        .unwrap()
        .replace("priority: 0", "priority: 5");
    std::fs::write(&y, &edited).unwrap();
    assert!(
        env.spool("running").join("long.yaml").exists(),
        "the edit must happen while long runs"
    );
    // status sees the new order at once, with the running job's progress and ETA.
    let v = env.status_json();
    assert_eq!(queued_names(&v), ["y.yaml", "x.yaml"], "{v}");
    wait_for("x and y done", Duration::from_secs(180), || {
        env.spool("done").join("x.yaml").exists() && env.spool("done").join("y.yaml").exists()
    });
    let log = terminate(&mut d);
    assert_eq!(start_order(&log), ["long", "y", "x"], "{log}");

    // The daemon measured its speed: seconds per UNet step by model, size and UNet batch
    // (4 candidates with guidance: 8; 2 with guidance: 4).
    let timings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.spool("control").join("timings.json")).unwrap(),
    )
    .unwrap();
    for key in ["tiny-sd 64x64 b8", "tiny-sd 64x64 b4"] {
        let t = &timings["unet"][key];
        assert!(
            t["seconds_per_step"].as_f64().unwrap() > 0.0,
            "{key}: {timings}"
        );
        assert_eq!(t["provider"], "cpu");
    }
    assert!(
        timings["images"]["tiny-sd 64x64"]["seconds_per_image"]
            .as_f64()
            .is_some()
    );

    // Now queued jobs get ETAs; a re-submission with --replace changes a priority.
    env.ok(&["pause"]);
    env.submit("p.yaml", "prompts: [p, q]\nseed: 4\n", false);
    env.submit(
        "q.yaml",
        "prompts: [q]\ncandidates: 4\nsteps: 30\nseed: 5\n",
        false,
    );
    assert_eq!(queued_names(&env.status_json()), ["p.yaml", "q.yaml"]);
    env.submit(
        "q.yaml",
        "prompts: [q]\ncandidates: 4\nsteps: 30\nseed: 5\npriority: 1\n",
        true,
    );
    let v = env.status_json();
    assert_eq!(queued_names(&v), ["q.yaml", "p.yaml"], "{v}");
    let (q, p) = (&v["queued"][0], &v["queued"][1]);
    let q_secs = q["estimate"]["seconds"].as_f64().unwrap();
    assert!(q_secs > 0.0, "{v}");
    assert_eq!(q["estimate"]["basis"], "measured");
    assert_eq!(q["starts_in_seconds"], 0);
    // p starts when q is done.
    assert_eq!(p["starts_in_seconds"], q["finishes_in_seconds"], "{v}");
    assert!(p["estimate"]["seconds"].as_f64().unwrap() > 0.0);
    let text = env.ok(&["status"]);
    let line = text.lines().find(|l| l.contains("q.yaml")).unwrap();
    assert!(
        line.contains("4 images, 31 UNet steps, takes ~") && line.contains("once resumed"),
        "{line}"
    );
}

#[test]
fn cancel_a_queued_job_and_a_running_one_keeping_its_finished_images() {
    let env = Env::new();
    // Paused before the daemon starts, so that the queued job below cannot be claimed before
    // the cancel reaches it.
    env.ok(&["pause"]);
    let mut d = env.start(&[]);

    // Unknown jobs: an error.
    let out = env.cli(&["cancel", "nothing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no job named `nothing`"),
        "{out:?}"
    );

    // A queued job goes straight to failed/.
    env.submit("queued.yaml", "prompts: [a]\n", false);
    let said = env.ok(&["cancel", "queued"]);
    assert!(said.contains("before it started"), "{said}");
    assert_eq!(names(&env.spool("incoming")), Vec::<String>::new());
    let error = std::fs::read_to_string(env.spool("failed").join("queued.error.yaml")).unwrap();
    assert!(
        error.contains("step: cancelled") && error.contains("sdspool cancel"),
        "{error}"
    );

    // A running job stops at the next step once one batch is written.
    env.submit("long.yaml", LONG, false);
    env.ok(&["resume"]);
    let status_file = env.spool("running").join("long.status.json");
    wait_for("a finished batch", Duration::from_secs(120), || {
        std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["images_done"].as_u64().unwrap_or(0) >= 4)
    });
    // Its ETA comes from the speed measured so far.
    let v = env.status_json();
    assert!(
        v["running"][0]["progress"]["eta_seconds"]
            .as_u64()
            .is_some(),
        "{v}"
    );
    let said = env.ok(&["cancel", "long.yaml"]);
    assert!(said.contains("cancel requested"), "{said}");
    // Filed (error file first, then the job file) and the request cleared.
    wait_for("long in failed/", Duration::from_secs(60), || {
        env.spool("failed").join("long.yaml").exists()
            && names(&env.spool("control").join("cancel")).is_empty()
    });
    let error = std::fs::read_to_string(env.spool("failed").join("long.error.yaml")).unwrap();
    assert!(
        error.contains("step: cancelled") && error.contains("kept in"),
        "{error}"
    );
    assert!(env.spool("failed").join("long.yaml").exists());
    assert_eq!(names(&env.spool("running")), Vec::<String>::new());
    assert_eq!(
        names(&env.spool("control").join("cancel")),
        Vec::<String>::new()
    );
    // The finished candidates and the manifest stay; the job did not complete.
    let out = env.root.join("output/long");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["complete"], false);
    let files: Vec<String> = manifest["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["candidates"].as_array().unwrap().clone())
        .map(|c| c["file"].as_str().unwrap().to_string())
        .collect();
    assert!(files.len() >= 4 && files.len() < 24, "{files:?}");
    for f in &files {
        assert!(out.join(f).is_file(), "{f}");
    }
    // The daemon goes on with the next job.
    env.submit("next.yaml", "prompts: [a dog]\ncandidates: 1\n", false);
    wait_for("next in done/", Duration::from_secs(60), || {
        env.spool("done").join("next.yaml").exists()
    });
    let log = terminate(&mut d);
    assert!(log.contains("cancel requested"), "{log}");
}
