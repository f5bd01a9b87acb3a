//! Crash storms: jobs submitted while the daemon is SIGKILLed at random moments and restarted,
//! then run to the end. Every job must be filed exactly once, every image decode, every
//! manifest list what it should, no finished candidate be rendered again, and no temporary
//! file survive the next start.

use std::time::{Duration, Instant};

use super::harness::{self, Env, Settings};

struct JobShape {
    name: String,
    prompts: usize,
    candidates: usize,
}

fn job(i: usize) -> (JobShape, String) {
    let prompts = 1 + i % 4;
    let candidates = 1 + (i / 4) % 3;
    let mut body = String::from("prompts:\n");
    for p in 0..prompts {
        body.push_str(&format!("  - storm job {i} prompt {p}\n"));
    }
    body.push_str(&format!(
        "candidates: {candidates}\nsteps: {}\nseed: {}\n",
        2 + i % 5,
        1000 + i
    ));
    if candidates >= 2 && i % 3 == 1 {
        body.push_str("keep_top: 1\n");
        if i % 6 == 1 {
            body.push_str("rejected: delete\n");
        }
    } else if i % 5 == 2 {
        body.push_str("rerank: false\n");
    }
    let shape = JobShape {
        name: format!("storm{i:03}"),
        prompts,
        candidates,
    };
    (shape, body)
}

/// Submits `jobs`, kills the daemon `kills` times, finishes, checks. Prints the figures.
pub fn crash_storm(jobs: usize, kills: usize, seed: u64) {
    eprintln!("crash storm: {jobs} jobs, {kills} kills, seed {seed} (SDSPOOL_STORM_SEED)");
    let started = Instant::now();
    let env = Env::new(Settings {
        max_crashes: (kills + 5) as u32,
        ..Settings::default()
    });
    let mut rng = harness::Rng(seed);
    let shapes: Vec<(JobShape, String)> = (0..jobs).map(job).collect();
    // Half before the first start; the rest a few at a time between kills.
    let mut next = 0;
    while next < jobs / 2 {
        env.submit(
            &format!("{}.yaml", shapes[next].0.name),
            shapes[next].1.as_bytes(),
        );
        next += 1;
    }
    let per_round = (jobs - next).div_ceil(kills.max(1));
    let mut seen = harness::ImageIds::new();
    let mut kills_while_running = 0;
    for round in 0..kills {
        let mut d = env.start(&[]);
        // One kill in six lands during startup (recovery, loading the models); the others at a
        // random moment of work.
        let delay = if rng.range(0, 6) == 0 {
            rng.range(0, 1000)
        } else {
            harness::wait_for("the daemon to be ready", Duration::from_secs(60), || {
                d.log_text().contains("sdspool is ready")
            });
            rng.range(0, 1500)
        };
        let until = Instant::now() + Duration::from_millis(delay);
        while Instant::now() < until {
            if next < jobs && rng.range(0, 4) == 0 {
                for _ in 0..per_round.min(jobs - next) {
                    let (s, body) = &shapes[next];
                    env.submit(&format!("{}.yaml", s.name), body.as_bytes());
                    next += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(rng.range(10, 200)));
        }
        assert!(
            d.running(),
            "round {round}: the daemon exited by itself:\n{}",
            harness::tail(&d.log_text(), 40)
        );
        if harness::names(&env.spool("running"))
            .iter()
            .any(|n| n.ends_with(".yaml"))
        {
            kills_while_running += 1;
        }
        d.kill9();
        // Each job is in exactly one folder, whenever the daemon dies.
        let (where_, _) = harness::filed(&env.root.join("spool"));
        for (stem, folders) in &where_ {
            assert_eq!(folders.len(), 1, "round {round}: {stem} is in {folders:?}");
        }
        harness::add_image_ids(&env.output, &mut seen);
    }
    while next < jobs {
        env.submit(
            &format!("{}.yaml", shapes[next].0.name),
            shapes[next].1.as_bytes(),
        );
        next += 1;
    }
    let mut last = env.start(&["--until-idle"]);
    let status = last.wait(Duration::from_secs(60 + 3 * jobs as u64));
    let log = last.log_text();
    assert!(status.success(), "{}", harness::tail(&log, 60));

    // Filed exactly once, all in done/ (max_crashes is above the number of kills).
    let spool = env.root.join("spool");
    let (where_, problems) = harness::filed(&spool);
    assert!(problems.is_empty(), "{problems:#?}");
    let expected: Vec<String> = shapes.iter().map(|(s, _)| s.name.clone()).collect();
    let got: Vec<String> = where_.keys().cloned().collect();
    assert_eq!(got, expected, "jobs filed under other names (twice?)");
    for (stem, folders) in &where_ {
        assert_eq!(folders, &["done".to_string()], "{stem}");
    }
    // Every output folder is one job's, complete, its images decode.
    assert_eq!(
        harness::output_entries(&env.output),
        expected,
        "output folders"
    );
    let mut images = 0;
    let mut all_problems = Vec::new();
    for (s, _) in &shapes {
        let (n, p) = harness::check_output(&env.output.join(&s.name), s.prompts, s.candidates);
        images += n;
        all_problems.extend(p);
    }
    assert!(all_problems.is_empty(), "{all_problems:#?}");
    harness::add_image_ids(&env.output, &mut seen);
    let rerendered: Vec<_> = seen
        .iter()
        .filter(|(_, inodes)| inodes.len() > 1)
        .map(|(key, _)| key.clone())
        .collect();
    assert!(
        rerendered.is_empty(),
        "images written again after they were on disk: {rerendered:?}"
    );
    let temps = [
        harness::temp_files(&spool),
        harness::temp_files(&env.output),
    ]
    .concat();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    let runs: u32 = shapes
        .iter()
        .filter_map(|(s, _)| {
            sdspool::jobs::run::manifest::Manifest::read(&env.output.join(&s.name))
        })
        .map(|m| m.runs)
        .sum();
    harness::report(
        "crash-storm",
        &[
            ("jobs", jobs.to_string()),
            ("kills", kills.to_string()),
            ("kills_with_a_job_running", kills_while_running.to_string()),
            ("images_decoded", images.to_string()),
            ("manifests", jobs.to_string()),
            ("runs_over_all_jobs", runs.to_string()),
            ("rendered_twice", rerendered.len().to_string()),
            ("seed", seed.to_string()),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
}

#[test]
fn crash_storm_small() {
    let seed = harness::seed_from_env("SDSPOOL_STORM_SEED");
    crash_storm(12, 8, seed);
}

/// The full storm (README, Reliability): `SDSPOOL_STORM_JOBS` and `SDSPOOL_STORM_KILLS` change
/// the size.
#[test]
#[ignore = "long: about a minute; run with --ignored"]
fn crash_storm_full() {
    let seed = harness::seed_from_env("SDSPOOL_STORM_SEED");
    let jobs = harness::env_usize("SDSPOOL_STORM_JOBS", 60);
    let kills = harness::env_usize("SDSPOOL_STORM_KILLS", 40);
    crash_storm(jobs, kills, seed);
}

#[test]
fn startup_removes_temporaries_a_kill_left_in_the_control_folder() {
    // Seen in a storm: a kill while control/timings.json was written left its temporary file.
    let tmp = tempfile::tempdir().unwrap();
    let spool = sdspool::spool::Spool::open(&sdspool::spool::SpoolConfig::new(tmp.path())).unwrap();
    let control = tmp.path().join("control");
    std::fs::create_dir_all(control.join("cancel")).unwrap();
    // pid 0 is never a live process.
    let tag = sdspool::sys::atomic::host_tag();
    let left = [
        control.join(format!(".sdspool-tmp-{tag}-0-27-timings.json")),
        control.join(format!("cancel/.sdspool-tmp-{tag}-0-3-job.yaml")),
    ];
    for p in &left {
        std::fs::write(p, "{").unwrap();
    }
    std::fs::write(control.join("timings.json"), "{}").unwrap();
    spool.recover().unwrap();
    for p in &left {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    assert!(control.join("timings.json").exists());
}

/// The owner recorded in a job's claim (`running/<stem>.attempts`): (host, pid).
fn owner(env: &Env, stem: &str) -> Owner {
    let r = sdspool::spool::Attempts::read(&env.spool("running").join(format!("{stem}.attempts")))
        .ok()?;
    Some((r.host, r.pid))
}

/// A claim's owner: (host, pid).
type Owner = Option<(String, u32)>;

/// Jobs in `running/` with their owners.
fn running_jobs(env: &Env) -> Vec<(String, Owner)> {
    harness::names(&env.spool("running"))
        .iter()
        .filter_map(|n| n.strip_suffix(".yaml"))
        .map(|stem| (stem.to_string(), owner(env, stem)))
        .collect()
}

/// The crash storm on two daemons sharing the spool, each its own machine where namespaces
/// allow: daemon B is killed and restarted `kills` times, daemon A is killed once, mid-storm, for
/// good, while it runs a job. B must take A's jobs over within about a rescan of their lease's
/// expiry (B's rescans see A's claims go unrenewed) and every job must end in done/ exactly once,
/// no image rendered twice, no temporary file left.
pub fn two_daemon_storm(jobs: usize, kills: usize, seed: u64) {
    const LEASE: u64 = 3;
    eprintln!(
        "two-daemon storm: {jobs} jobs, {kills} kills of B, seed {seed} (SDSPOOL_STORM_SEED)"
    );
    let started = Instant::now();
    let env = Env::new(Settings {
        max_crashes: (kills + 5) as u32,
        lease_seconds: Some(LEASE),
        ..Settings::default()
    });
    let isolated = super::shared::namespaces_available().is_ok();
    let mut rng = harness::Rng(seed);
    let shapes: Vec<(JobShape, String)> = (0..jobs).map(job).collect();
    let submit = |i: usize| {
        env.submit(
            &format!("{}.yaml", shapes[i].0.name),
            shapes[i].1.as_bytes(),
        );
    };
    // Half at once, a few held back for A to be busy with when it is killed, the rest between
    // kills.
    let held_back = 3.min(jobs / 4);
    let in_rounds = jobs - held_back;
    let mut next = 0;
    while next < jobs / 2 {
        submit(next);
        next += 1;
    }
    let machine = |name: &str| super::shared::machine_with(&env, name, isolated, &[]);
    let mut a = Some(machine("machine-a"));
    let a_pid = a.as_ref().map(|d| d.pid()).unwrap_or_default();
    // A's claims: by host name on its own machine, else by its process id.
    let is_a = |o: &Owner| match o {
        Some((host, pid)) if isolated => host == "machine-a" && *pid > 0,
        Some((_, pid)) => *pid == a_pid,
        None => false,
    };
    let per_round = (in_rounds - next).div_ceil(kills.max(1));
    let mut seen = harness::ImageIds::new();
    let mut takeover = None;
    for round in 0..kills {
        let mut b = machine("machine-b");
        if round == kills / 2 {
            (in_rounds..jobs).for_each(submit);
            takeover = Some(kill_a_for_good(&env, a.take().unwrap(), &is_a, LEASE));
        }
        let until = Instant::now() + Duration::from_millis(rng.range(300, 2500));
        while Instant::now() < until {
            if next < in_rounds && rng.range(0, 4) == 0 {
                for _ in 0..per_round.min(in_rounds - next) {
                    submit(next);
                    next += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(rng.range(10, 200)));
        }
        assert!(
            b.running(),
            "round {round}: B exited:\n{}",
            harness::tail(&b.log_text(), 40)
        );
        b.kill9();
        let (where_, _) = harness::filed(&env.root.join("spool"));
        for (stem, folders) in &where_ {
            assert_eq!(folders.len(), 1, "round {round}: {stem} is in {folders:?}");
        }
        harness::add_image_ids(&env.output, &mut seen);
    }
    (next..in_rounds).for_each(submit);
    let mut last = super::shared::machine_with(&env, "machine-b", isolated, &["--until-idle"]);
    let status = last.wait(Duration::from_secs(120 + 3 * jobs as u64));
    assert!(status.success(), "{}", harness::tail(&last.log_text(), 60));
    let (images, rerendered) = check_storm_result(&env, &shapes, &mut seen);
    let (orphans, took, after_expiry) = takeover.unwrap();
    harness::report(
        "two-daemon-storm",
        &[
            ("jobs", jobs.to_string()),
            ("kills_of_b", kills.to_string()),
            ("own_host_and_pid_namespaces", isolated.to_string()),
            ("jobs_of_a_when_killed", orphans.len().to_string()),
            ("lease_seconds", LEASE.to_string()),
            ("taken_over_ms_after_the_kill", took.as_millis().to_string()),
            (
                "taken_over_ms_after_the_lease_expired",
                after_expiry.as_millis().to_string(),
            ),
            ("images_decoded", images.to_string()),
            ("rendered_twice", rerendered.to_string()),
            ("seed", seed.to_string()),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
}

/// Kills daemon A once it runs a job and waits for the other daemon to take A's jobs over:
/// A's jobs, the time from the kill, and the time from their lease's expiry.
fn kill_a_for_good(
    env: &Env,
    mut a: harness::Daemon,
    is_a: &dyn Fn(&Owner) -> bool,
    lease: u64,
) -> (Vec<String>, Duration, Duration) {
    harness::wait_for("daemon A to run a job", Duration::from_secs(60), || {
        running_jobs(env).iter().any(|(_, o)| is_a(o))
    });
    a.kill9();
    let orphans: Vec<String> = running_jobs(env)
        .into_iter()
        .filter(|(_, o)| is_a(o))
        .map(|(s, _)| s)
        .collect();
    // A's last renewal of its claims, plus the lease: when they expired.
    let expired = orphans
        .iter()
        .filter_map(|s| {
            let p = env.spool("running").join(format!("{s}.attempts"));
            std::fs::metadata(p).and_then(|m| m.modified()).ok()
        })
        .max()
        .unwrap_or_else(std::time::SystemTime::now)
        + Duration::from_secs(lease);
    let killed = Instant::now();
    harness::wait_for("B to take over A's jobs", Duration::from_secs(60), || {
        running_jobs(env).iter().all(|(_, o)| !is_a(o))
    });
    let took = killed.elapsed();
    let after_expiry = std::time::SystemTime::now()
        .duration_since(expired)
        .unwrap_or_default();
    // B judges by its own rescans (every second, when its worker asks for work, so after the job
    // it is rendering): a claim seen unchanged for a lease, first seen up to a rescan after A's
    // last renewal, so within two rescans of the expiry, plus the rest of B's current job (and
    // slack for a loaded machine).
    assert!(
        after_expiry <= Duration::from_secs(8),
        "A's jobs {orphans:?} were taken over {after_expiry:?} after their lease ({lease} s) expired"
    );
    (orphans, took, after_expiry)
}

/// The end of a storm: every job in done/ exactly once, every output folder complete and
/// decoding, no image written twice, no temporary file. Images decoded and images rendered twice.
fn check_storm_result(
    env: &Env,
    shapes: &[(JobShape, String)],
    seen: &mut harness::ImageIds,
) -> (usize, usize) {
    let spool = env.root.join("spool");
    let (where_, problems) = harness::filed(&spool);
    assert!(problems.is_empty(), "{problems:#?}");
    let expected: Vec<String> = shapes.iter().map(|(s, _)| s.name.clone()).collect();
    assert_eq!(
        where_.keys().cloned().collect::<Vec<_>>(),
        expected,
        "filed twice?"
    );
    for (stem, folders) in &where_ {
        assert_eq!(folders, &["done".to_string()], "{stem}");
    }
    assert_eq!(
        harness::output_entries(&env.output),
        expected,
        "output folders"
    );
    let mut images = 0;
    for (s, _) in shapes {
        let (n, p) = harness::check_output(&env.output.join(&s.name), s.prompts, s.candidates);
        assert!(p.is_empty(), "{p:#?}");
        images += n;
    }
    harness::add_image_ids(&env.output, seen);
    let rerendered: Vec<_> = seen
        .iter()
        .filter(|(_, i)| i.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        rerendered.is_empty(),
        "images written again: {rerendered:?}"
    );
    let temps = [
        harness::temp_files(&spool),
        harness::temp_files(&env.output),
    ]
    .concat();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    (images, rerendered.len())
}

#[test]
fn crash_storm_two_daemons_one_killed_for_good_small() {
    let seed = harness::seed_from_env("SDSPOOL_STORM_SEED");
    two_daemon_storm(12, 6, seed);
}

/// The full two-daemon storm (README, Reliability).
#[test]
#[ignore = "long: about two minutes; run with --ignored"]
fn crash_storm_two_daemons_one_killed_for_good_full() {
    let seed = harness::seed_from_env("SDSPOOL_STORM_SEED");
    let jobs = harness::env_usize("SDSPOOL_STORM_JOBS", 60);
    let kills = harness::env_usize("SDSPOOL_STORM_KILLS", 30);
    two_daemon_storm(jobs, kills, seed);
}
