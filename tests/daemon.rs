//! The daemon, driven as users drive it: the real binary, job files dropped into incoming/,
//! results read from done/, failed/ and the output folder.

mod common;

use common::config_file::{Defaults, TestConfig};
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
        Env::with(grace_seconds, |_| {})
    }

    /// [`Env::new`] with its configuration changed by `edit`.
    fn with(grace_seconds: u64, edit: impl FnOnce(&mut TestConfig)) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root);
        c.grace_seconds = Some(grace_seconds);
        c.defaults = Defaults::small(4, 2);
        edit(&mut c);
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
        self.start_with(args, &[])
    }

    /// [`Env::start`] with more environment variables.
    fn start_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Running {
        Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_sdspool"))
                .arg("--config")
                .arg(&self.config)
                .arg("run")
                .args(args)
                .env("SDSPOOL_LOG", "info")
                .envs(vars.iter().copied())
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

/// A stand-in for systemd's notification socket: the datagrams the daemon sends to
/// `$NOTIFY_SOCKET`, read on a thread as they come (as systemd does: a full socket would block
/// the daemon's sends).
struct NotifySocket {
    path: PathBuf,
    /// Each datagram with when it came.
    messages: std::sync::mpsc::Receiver<(Instant, String)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (tx, messages) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let _ = tx.send((Instant::now(), text));
                }
            }
        });
        NotifySocket {
            path,
            messages,
            stop,
        }
    }

    fn var(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// The next datagram and when it came, `None` after 100 ms without one.
    fn recv_timed(&self) -> Option<(Instant, String)> {
        self.messages.recv_timeout(Duration::from_millis(100)).ok()
    }

    fn recv(&self) -> Option<String> {
        self.recv_timed().map(|(_, m)| m)
    }

    /// Reads datagrams until one has the line `line`; panics after `timeout`.
    fn wait_for(&self, line: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(message) = self.recv()
                && message.lines().any(|l| l == line)
            {
                return message;
            }
            assert!(
                start.elapsed() < timeout,
                "no {line} from the daemon within {timeout:?}"
            );
        }
    }
}

fn result_of(env: &Env, name: &str) -> String {
    std::fs::read_to_string(env.spool("done").join(format!("{name}.result.yaml"))).unwrap()
}

#[test]
fn sighup_rereads_defaults_keeps_the_running_config_when_the_file_is_broken_and_sigusr1_logs_a_summary()
 {
    let env = Env::new(30);
    let notify = NotifySocket::bind(&env.root);
    let mut daemon = env.start_with(&[], &[notify.var()]);
    notify.wait_for("READY=1", Duration::from_secs(120));

    // The defaults change: jobs that start from now get one candidate instead of two.
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        text.replace("  candidates: 2\n", "  candidates: 1\n"),
    )
    .unwrap();
    signal(&daemon, "HUP");
    notify.wait_for("RELOADING=1", Duration::from_secs(10));
    notify.wait_for("READY=1", Duration::from_secs(10));
    env.submit("one.yaml", "prompts: [a cat]\nseed: 1\n");
    wait_for("one in done/", Duration::from_secs(60), || {
        env.spool("done").join("one.yaml").exists()
    });
    assert!(result_of(&env, "one").contains("images: 1"));

    // A broken file is reported and the running configuration kept.
    std::fs::write(&env.config, "models: [not, a, mapping]\n").unwrap();
    signal(&daemon, "HUP");
    notify.wait_for("RELOADING=1", Duration::from_secs(10));
    notify.wait_for("READY=1", Duration::from_secs(10));
    signal(&daemon, "USR1");
    env.submit("two.yaml", "prompts: [a dog]\nseed: 2\n");
    wait_for("two in done/", Duration::from_secs(60), || {
        env.spool("done").join("two.yaml").exists()
    });
    assert!(result_of(&env, "two").contains("images: 1"));

    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30));
    let log = stderr_of(&mut daemon);
    assert!(status.success(), "exit {status:?}\n{log}");
    for needle in [
        "configuration re-read (SIGHUP)",
        "cannot re-read the configuration (SIGHUP); keeping the running one",
        "status (SIGUSR1)",
        "worker status (SIGUSR1)",
    ] {
        assert!(log.contains(needle), "{needle:?} missing:\n{log}");
    }
}

/// Needs the stall hook, which only debug builds have.
#[cfg(debug_assertions)]
#[test]
fn the_watchdog_stops_when_one_of_two_workers_hangs_while_the_other_works() {
    let env = Env::with(1, |c| {
        c.hang_seconds = Some(2);
        c.device_ids = vec![0, 1];
    });
    let notify = NotifySocket::bind(&env.root);
    let mut daemon = env.start_with(
        &[],
        &[
            notify.var(),
            ("WATCHDOG_USEC", "1000000"),
            ("SDSPOOL_TEST_STALL_DEVICE", "1"),
        ],
    );
    notify.wait_for("READY=1", Duration::from_secs(120));
    notify.wait_for("WATCHDOG=1", Duration::from_secs(10));
    // Worker 1 stalls in the first job it takes; worker 0 renders the others and then waits
    // for work, beating all along.
    for name in ["a", "b", "c"] {
        env.submit(
            &format!("{name}.yaml"),
            "prompts: [one, two, three]\ncandidates: 2\nsteps: 8\nseed: 4\n",
        );
    }
    let done = || {
        names(&env.spool("done"))
            .iter()
            .filter(|n| n.ends_with(".result.yaml"))
            .count()
    };
    wait_for(
        "two jobs done by the working worker",
        Duration::from_secs(120),
        || done() == 2,
    );
    // From now on no WATCHDOG=1 for well over the hang limit and a ping interval.
    let start = Instant::now();
    let mut last_ping = Instant::now();
    while last_ping.elapsed() < Duration::from_secs(5) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the watchdog is still pinged while a worker hangs"
        );
        if let Some((at, message)) = notify.recv_timed()
            && message.lines().any(|l| l == "WATCHDOG=1")
        {
            last_ping = at;
        }
    }
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon is up");
    assert_eq!(done(), 2, "the stalled job did not finish");

    // SIGTERM: the grace period ends, the stalled job is stopped and stays for the next start.
    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30));
    let log = stderr_of(&mut daemon);
    assert!(status.success(), "exit {status:?}\n{log}");
    let hung: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("worker shows no progress: hung"))
        .collect();
    assert!(
        hung.len() == 1 && hung[0].contains("device=1") && hung[0].contains("state=rendering"),
        "{log}"
    );
    assert_eq!(
        names(&env.spool("running"))
            .iter()
            .filter(|n| n.ends_with(".yaml"))
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn each_device_renders_only_the_models_it_serves_and_a_model_no_device_serves_fails_at_claim() {
    let env = Env::with(30, |c| {
        c.models
            .push(("tiny-sd-v".into(), common::model_dir("tiny-sd-v")));
        c.models
            .push(("tiny-sd-fp16".into(), common::model_dir("tiny-sd-fp16")));
        c.device_ids = vec![0, 1];
        c.device_models = vec![(0, vec!["tiny-sd".into()]), (1, vec!["tiny-sd-v".into()])];
    });
    let jobs = [
        ("a", "tiny-sd"),
        ("b", "tiny-sd-v"),
        ("c", "tiny-sd-fp16"),
        ("d", "tiny-sd-v"),
        ("e", "tiny-sd"),
        ("f", "tiny-sd-v"),
    ];
    for (i, (name, model)) in jobs.iter().enumerate() {
        env.submit(
            &format!("{name}.yaml"),
            &format!("model: {model}\nprompts: [a cat]\ncandidates: 1\nseed: {i}\n"),
        );
    }
    let mut daemon = env.start(&["--until-idle"]);
    let status = wait_exit(&mut daemon, Duration::from_secs(180));
    let log = stderr_of(&mut daemon);
    assert!(status.success(), "exit {status:?}\n{log}");

    // Each worker loaded its own model only.
    let loaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("model loaded") && !l.contains("rerank"))
        .collect();
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    assert!(
        loaded
            .iter()
            .any(|l| l.contains("model=tiny-sd ") && l.contains("device=0"))
            && loaded
                .iter()
                .any(|l| l.contains("model=tiny-sd-v ") && l.contains("device=1")),
        "{loaded:?}"
    );
    // Every job ran on the device that serves its model, once.
    for (name, model) in jobs.iter().filter(|(n, _)| *n != "c") {
        assert!(result_of(&env, name).contains(&format!("model: {model}")));
        let device = if *model == "tiny-sd" { 0 } else { 1 };
        let starts: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("job{{job={name}}}")) && l.contains("starting job"))
            .collect();
        assert!(
            starts.len() == 1 && starts[0].contains(&format!("device={device}")),
            "{name}: {starts:?}"
        );
    }
    // The job for a configured model that no device serves fails at claim, naming the field.
    let error = std::fs::read_to_string(env.spool("failed").join("c.error.yaml")).unwrap();
    assert!(
        error.contains("step: claim")
            && error.contains("field: model")
            && error.contains("no device of this daemon serves it"),
        "{error}"
    );
    assert!(names(&env.spool("running")).is_empty() && names(&env.spool("incoming")).is_empty());
}
