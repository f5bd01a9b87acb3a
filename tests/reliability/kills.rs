//! Kills from outside (an operator, the OOM killer making room for another process, a node
//! drain) must not fail a good job: `spool.max_crashes` stops only a job that itself brings the
//! daemon down, judged from where each attempt died (issue 17).

use std::time::{Duration, Instant};

use super::harness::{self, Env, Settings};

/// Where the status file says the job is: (prompt, images done, step), if this daemon wrote it.
fn position(env: &Env, stem: &str, since: std::time::SystemTime) -> Option<(usize, usize, u32)> {
    let s = sdspool::spool::read_status(&env.spool("running").join(format!("{stem}.status.json")))
        .ok()?;
    // Written by this start of the daemon (times are stored to the second).
    (s.started_at + Duration::from_secs(1) >= since).then_some((
        s.prompt_index,
        s.images_done,
        s.step,
    ))
}

#[test]
fn kills_at_different_points_of_a_good_job_never_fail_it() {
    let started = Instant::now();
    // Two deaths at one point would fail it: the kills below always land somewhere new.
    let env = Env::new(Settings {
        max_crashes: 2,
        rerank: false,
        ..Settings::default()
    });
    let mut body = String::from("prompts:\n");
    for p in 0..12 {
        body.push_str(&format!("  - a long job, prompt {p}\n"));
    }
    body.push_str("candidates: 2\nsteps: 6\nseed: 5\n");
    env.submit("long.yaml", body.as_bytes());
    let mut points = Vec::new();
    let mut previous_images = None;
    for kill in 0..7 {
        let since = std::time::SystemTime::now();
        let mut d = env.start(&[]);
        if kill == 1 {
            // One while the daemon loads its models: the job waits, claimed, for a worker.
            std::thread::sleep(Duration::from_millis(150));
        } else {
            // Once the job got further than at the previous kill (a later status of this
            // attempt is further still, so no two kills share a point).
            let failed = env.spool("failed").join("long.yaml");
            harness::wait_for(
                "progress past the previous kill",
                Duration::from_secs(60),
                || {
                    failed.exists()
                        || position(&env, "long", since).is_some_and(|(_, images, _)| {
                            previous_images.is_none_or(|p| images > p)
                        })
                },
            );
            assert!(
                !failed.exists(),
                "failed after {kill} kills:\n{}",
                std::fs::read_to_string(env.spool("failed").join("long.error.yaml"))
                    .unwrap_or_default()
            );
            let at = position(&env, "long", since).unwrap();
            previous_images = Some(at.1);
            points.push(at);
        }
        assert!(d.running(), "{}", harness::tail(&d.log_text(), 30));
        d.kill9();
        assert!(
            !env.spool("failed").join("long.yaml").exists(),
            "failed after kill {kill}"
        );
    }
    let mut last = env.start(&["--until-idle"]);
    let status = last.wait(Duration::from_secs(240));
    assert!(status.success(), "{}", harness::tail(&last.log_text(), 40));
    let (where_, problems) = harness::filed(&env.root.join("spool"));
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(where_["long"], ["done"], "{where_:?}");
    let (images, problems) = harness::check_output(&env.output.join("long"), 12, 2);
    assert!(problems.is_empty(), "{problems:#?}");
    let m = sdspool::jobs::run::manifest::Manifest::read(&env.output.join("long")).unwrap();
    harness::report(
        "outside-kills",
        &[
            ("kills", "7".into()),
            ("kills_during_startup", "1".into()),
            ("points", format!("{points:?}").replace(' ', "")),
            ("max_crashes", "2".into()),
            ("images", images.to_string()),
            ("runs", m.runs.to_string()),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
}
