//! Two daemons on one spool, as two machines sharing it over a network file system would run:
//! each in its own UTS and PID namespace (its own host name, and no sight of the other's
//! processes) when this process may create them, both rescanning every second. 80 jobs: each
//! must be rendered and filed exactly once.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::{self, Env, Settings};

/// Whether `unshare` can give a child its own host name and process ids here.
fn namespaces_available() -> Result<(), String> {
    let out = Command::new("unshare")
        .args([
            "--uts",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            "hostname probe && test $$ = 1",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn machine(env: &Env, name: &str, isolated: bool) -> harness::Daemon {
    let args = env.run_args(&["--until-idle"]);
    if !isolated {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdspool"));
        cmd.args(args);
        return env.spawn(cmd);
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--uts",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
    ])
    .arg(format!("hostname {name} && exec \"$0\" \"$@\""))
    .arg(env!("CARGO_BIN_EXE_sdspool"))
    .args(args);
    env.spawn(cmd)
}

#[test]
fn two_daemons_on_one_spool_render_80_jobs_each_exactly_once() {
    let started = Instant::now();
    let env = Env::new(Settings::default());
    let isolated = match namespaces_available() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("shared spool: no namespaces here ({e}); both daemons run as this host");
            false
        }
    };
    let body = |i: usize| format!("prompts: [shared job {i}]\nseed: {i}\n");
    for i in 0..40 {
        env.submit(&format!("shared{i:02}.yaml"), body(i).as_bytes());
    }
    let mut a = machine(&env, "machine-a", isolated);
    let mut b = machine(&env, "machine-b", isolated);
    // The other half while both start and claim.
    for i in 40..80 {
        env.submit(&format!("shared{i:02}.yaml"), body(i).as_bytes());
        std::thread::sleep(Duration::from_millis(10));
    }
    let sa = a.wait(Duration::from_secs(300));
    let sb = b.wait(Duration::from_secs(300));
    let (la, lb) = (a.log_text(), b.log_text());
    assert!(sa.success(), "{}", harness::tail(&la, 30));
    assert!(sb.success(), "{}", harness::tail(&lb, 30));

    // Who rendered what, from each daemon's log.
    let mut by_job = BTreeMap::<String, Vec<&str>>::new();
    for (who, log) in [("a", &la), ("b", &lb)] {
        for line in log.lines().filter(|l| l.contains("job done")) {
            let job = line
                .split("job{job=")
                .nth(1)
                .and_then(|r| r.split('}').next())
                .unwrap()
                .to_string();
            by_job.entry(job).or_default().push(who);
        }
    }
    let twice: Vec<_> = by_job.iter().filter(|(_, w)| w.len() != 1).collect();
    assert!(twice.is_empty(), "rendered more than once: {twice:?}");
    assert_eq!(by_job.len(), 80, "jobs rendered");
    let count = |who: &str| by_job.values().filter(|w| w[0] == who).count();
    let (na, nb) = (count("a"), count("b"));
    assert!(
        na > 0 && nb > 0,
        "one daemon did all the work: a {na}, b {nb}"
    );

    let spool = env.root.join("spool");
    let (where_, problems) = harness::filed(&spool);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(where_.len(), 80, "{:?}", where_.keys().collect::<Vec<_>>());
    assert!(
        where_.values().all(|f| f == &["done".to_string()]),
        "{where_:?}"
    );
    for i in 0..80 {
        let dir = env.output.join(format!("shared{i:02}"));
        let (n, problems) = harness::check_output(&dir, 1, 1);
        assert!(problems.is_empty() && n == 1, "{problems:#?}");
        let m = sdspool::jobs::run::manifest::Manifest::read(&dir).unwrap();
        assert_eq!(m.runs, 1, "{}: worked on {} times", dir.display(), m.runs);
    }
    assert_eq!(harness::names(&env.output).len(), 80);
    harness::report(
        "shared-spool",
        &[
            ("jobs", "80".into()),
            ("daemons", "2".into()),
            ("own_host_and_pid_namespaces", isolated.to_string()),
            ("rendered_by_a", na.to_string()),
            ("rendered_by_b", nb.to_string()),
            ("rendered_twice", twice.len().to_string()),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
}
