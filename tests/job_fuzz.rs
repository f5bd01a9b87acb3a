//! Property tests (issue 6) over reading and checking job files as the daemon does
//! (`job::load_spooled`): any bytes, job-shaped YAML with hostile values, and mutations of a
//! good job must give a job or an error, never a panic, an abort or a long stall; and every job
//! that is accepted must be within the configuration's limits. `PROPTEST_CASES` raises the
//! number of cases (256 by default).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sdspool::app::config::Config;
use sdspool::jobs::job::{self, Job};

fn config() -> &'static Config {
    static C: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    C.get_or_init(|| Config::load(&common::root().join("config.yaml")).unwrap())
}

/// What every accepted job must satisfy.
fn check_job(j: &Job, c: &Config) -> Result<(), String> {
    let l = &c.limits;
    let fail = |what: String| Err(format!("{what}: {j:?}"));
    if !job::valid_name(&j.id) || !job::valid_name(&j.output) {
        return fail(format!(
            "id {:?} / output {:?} not plain names",
            j.id, j.output
        ));
    }
    if !c.models.contains_key(&j.model) {
        return fail(format!("model {:?} not configured", j.model));
    }
    if j.prompts.is_empty() || j.prompts.len() as u64 > u64::from(l.max_prompts) {
        return fail(format!("{} prompts", j.prompts.len()));
    }
    if j.image_count() as u64 > l.max_images {
        return fail(format!("{} images", j.image_count()));
    }
    for p in &j.prompts {
        if p.text.trim().is_empty() || p.text.contains('\0') || p.negative.contains('\0') {
            return fail(format!("prompt {:?}", p.text));
        }
        if p.steps == 0 || p.steps > l.max_steps {
            return fail(format!("steps {}", p.steps));
        }
        if !p.guidance.is_finite() || !(0.0..=100.0).contains(&p.guidance) {
            return fail(format!("guidance {}", p.guidance));
        }
        for v in [p.width, p.height] {
            if v == 0 || v % 8 != 0 || v > l.max_side {
                return fail(format!("size {}x{}", p.width, p.height));
            }
        }
        if u64::from(p.width) * u64::from(p.height) > l.max_pixels {
            return fail(format!("{}x{} pixels", p.width, p.height));
        }
        if p.seeds.is_empty() || p.seeds.len() as u64 > u64::from(l.max_candidates) {
            return fail(format!("{} candidates", p.seeds.len()));
        }
    }
    Ok(())
}

/// Writes `bytes` as a job file and loads it as the daemon does; checks the outcome.
fn load(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("fuzz.yaml");
    std::fs::write(&path, bytes).unwrap();
    let started = Instant::now();
    let result = job::load_spooled(&path, config());
    let took = started.elapsed();
    prop_assert!(
        took < Duration::from_secs(2),
        "took {took:?} for {:?}",
        String::from_utf8_lossy(bytes)
    );
    match result {
        Ok(j) => {
            if let Err(e) = check_job(&j, config()) {
                return Err(TestCaseError::fail(format!(
                    "accepted out of limits: {e}\nfrom {:?}",
                    String::from_utf8_lossy(bytes)
                )));
            }
        }
        Err(e) => {
            prop_assert!(!e.message.trim().is_empty(), "empty error for {bytes:?}");
            prop_assert!(e.file == path);
        }
    }
    Ok(())
}

/// Values for job fields: valid ones, edge cases and hostile ones, of every YAML type.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1".to_string()),
        Just("2".to_string()),
        Just("8".to_string()),
        Just("64".to_string()),
        Just("4000000000".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("18446744073709551615".to_string()),
        Just(".nan".to_string()),
        Just(".inf".to_string()),
        Just("-.inf".to_string()),
        Just("1e308".to_string()),
        Just("7.5".to_string()),
        Just("~".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[64, 72, 128]".to_string()),
        Just("[1, 2, 3]".to_string()),
        Just("{a: b}".to_string()),
        Just("\"../../etc\"".to_string()),
        Just("/tmp/x".to_string()),
        Just("\"a\\0b\"".to_string()),
        Just("tiny-sd".to_string()),
        Just("euler_a".to_string()),
        Just("delete".to_string()),
        Just("torch_cpu".to_string()),
        Just("&a x".to_string()),
        Just("*a".to_string()),
        "[a-z0-9 ./_-]{0,12}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
    ]
}

fn field() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("id"),
        Just("model"),
        Just("negative"),
        Just("candidates"),
        Just("steps"),
        Just("guidance"),
        Just("scheduler"),
        Just("seed"),
        Just("width"),
        Just("height"),
        Just("rng"),
        Just("priority"),
        Just("output"),
        Just("keep_top"),
        Just("rerank"),
        Just("rejected"),
        Just("seeds"),
        Just("seed_count"),
        Just("bogus"),
    ]
}

fn prompts() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("prompts: [a cat]\n".to_string()),
        Just("prompts: [a cat, a dog]\n".to_string()),
        Just("prompts: []\n".to_string()),
        Just("prompts:\n  - prompt: a cat\n    candidates: 3\n".to_string()),
        Just("prompts:\n  - prompt: a cat\n    seeds: [1, 2]\n".to_string()),
        Just("prompts:\n  - prompt: a cat\n    candidates: 4000000000\n".to_string()),
        (1usize..40).prop_map(|n| format!("prompts: [{}]\n", vec!["x"; n].join(", "))),
        "[ -~]{0,40}".prop_map(|s| format!("prompts: [{s:?}]\n")),
    ]
}

fn job_yaml() -> impl Strategy<Value = String> {
    (prompts(), prop::collection::vec((field(), value()), 0..8)).prop_map(|(p, fields)| {
        let mut s = p;
        for (f, v) in fields {
            s.push_str(&format!("{f}: {v}\n"));
        }
        s
    })
}

const GOOD: &str = "id: cats\nprompts:\n  - a photo of a cat\n  - prompt: a dog\n    candidates: 2\n    seeds: [5, 6]\ncandidates: 2\nsteps: 4\nguidance: 7.5\nscheduler: euler_a\nseed: 9\nwidth: 64\nheight: 64\n";

proptest! {
    #[test]
    fn any_bytes_give_a_job_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        load(dir.path(), &bytes)?;
    }

    #[test]
    fn job_shaped_yaml_with_hostile_values_is_checked(text in job_yaml()) {
        let dir = tempfile::tempdir().unwrap();
        load(dir.path(), text.as_bytes())?;
    }

    #[test]
    fn mutations_of_a_good_job_are_checked(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6)
    ) {
        let mut bytes = GOOD.as_bytes().to_vec();
        for (at, op, b) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, b),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = b,
                _ => bytes.push(b),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        load(dir.path(), &bytes)?;
    }
}

#[test]
fn the_good_job_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let j = job::load_spooled(&path, config()).unwrap();
    check_job(&j, config()).unwrap();
    assert_eq!(j.image_count(), 4);
}

#[test]
fn a_huge_candidate_count_is_an_error_not_an_abort() {
    // Made four billion seeds before the limit check (found by the hostile corpus).
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "prompts: [a cat]\ncandidates: 4000000000\n",
        "prompts:\n  - prompt: a cat\n    candidates: 4294967295\n",
    ] {
        let path = dir.path().join("huge.yaml");
        std::fs::write(&path, text).unwrap();
        let e = job::load_spooled(&path, config()).unwrap_err();
        assert!(
            e.message.contains("limits.max_candidates") || e.message.contains("limits.max_images"),
            "{e}"
        );
    }
}
