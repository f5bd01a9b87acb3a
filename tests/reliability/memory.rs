//! Memory over many jobs: the daemon's resident memory (VmRSS in /proc/<pid>/status) after the
//! first jobs and after the last must stay flat, not grow with the number of jobs.

use std::time::{Duration, Instant};

use super::harness::{self, Env, Settings};

/// Runs `jobs` small jobs through one daemon; returns (RSS samples in KiB by jobs done).
fn rss_over_jobs(jobs: usize) -> Vec<(usize, u64)> {
    let started = Instant::now();
    let env = Env::new(Settings::default());
    let mut d = env.start(&[]);
    let body = |i: usize| {
        // Alternate shapes and settings so every code path is used over and over.
        let extra = match i % 4 {
            0 => "candidates: 2\nkeep_top: 1\n",
            1 => "rerank: false\n",
            2 => "candidates: 2\nrejected: delete\nkeep_top: 1\n",
            _ => "",
        };
        format!("prompts: [memory job {i}, and its second prompt]\nseed: {i}\n{extra}")
    };
    // Fed in rounds so incoming/ stays small and the samples fall between jobs.
    let done = env.spool("done");
    let mut samples = Vec::new();
    let round = 20.min(jobs);
    let mut submitted = 0;
    let sample_every = (jobs / 10).max(round);
    while submitted < jobs {
        let n = round.min(jobs - submitted);
        for i in submitted..submitted + n {
            env.submit(&format!("mem{i:04}.yaml"), body(i).as_bytes());
        }
        submitted += n;
        harness::wait_for(
            "a round of jobs",
            Duration::from_secs(30 + 3 * n as u64),
            || {
                assert!(d.running(), "{}", harness::tail(&d.log_text(), 20));
                harness::names(&done)
                    .iter()
                    .filter(|n| n.ends_with(".result.yaml"))
                    .count()
                    == submitted
            },
        );
        if submitted % sample_every == 0 || submitted == round || submitted == jobs {
            samples.push((submitted, d.rss_kib().unwrap()));
        }
    }
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).success());
    assert!(harness::names(&env.spool("failed")).is_empty());
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    harness::report(
        "memory",
        &[
            ("jobs", jobs.to_string()),
            ("rss_kib_after_first", format!("{}@{}", first.1, first.0)),
            ("rss_kib_after_last", format!("{}@{}", last.1, last.0)),
            (
                "max_kib",
                samples.iter().map(|s| s.1).max().unwrap().to_string(),
            ),
            (
                "samples",
                samples
                    .iter()
                    .map(|(n, r)| format!("{n}:{r}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
    samples
}

/// Flat: the last sample within 10 % (and 16 MiB) of the first one, taken after the first
/// round, when every model and buffer is warm.
fn assert_flat(samples: &[(usize, u64)]) {
    let first = samples[0].1;
    let last = samples[samples.len() - 1].1;
    let allowed = first / 10 + 16 * 1024;
    assert!(
        last <= first + allowed,
        "resident memory grew from {first} KiB to {last} KiB: {samples:?}"
    );
}

#[test]
fn memory_stays_flat_over_100_jobs() {
    assert_flat(&rss_over_jobs(100));
}

/// The long run (README, Reliability); `SDSPOOL_MEMORY_JOBS` changes the count.
#[test]
#[ignore = "long: about 5 minutes; run with --ignored"]
fn memory_stays_flat_over_1000_jobs() {
    assert_flat(&rss_over_jobs(harness::env_usize(
        "SDSPOOL_MEMORY_JOBS",
        1000,
    )));
}
