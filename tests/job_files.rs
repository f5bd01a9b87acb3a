//! Job files: defaults, seeds, and the errors that name the file and the field.

mod common;

use std::path::{Path, PathBuf};

use sdspool::config::Config;
use sdspool::job::{self, Job};

fn config() -> Config {
    Config::load(&common::root().join("config.yaml")).unwrap()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn load(body: &str) -> Result<Job, job::JobError> {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "job.yaml", body);
    job::load(&p, &config())
}

fn err(body: &str) -> String {
    match load(body) {
        Ok(j) => panic!("accepted:\n{body}\n{j:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_example_job_resolves_with_defaults_and_seeds() {
    let c = config();
    let j = job::load(&common::root().join("examples/first.yaml"), &c).unwrap();
    assert_eq!(j.id, "first");
    assert_eq!(j.output, "first");
    assert_eq!(j.model, c.default_model_name());
    assert_eq!(j.prompts.len(), 2);
    assert_eq!(j.prompts[0].seeds, vec![1234, 1235, 1236, 1237]);
    assert_eq!(j.prompts[0].negative, "");
    assert_eq!(j.prompts[1].seeds, vec![1234, 1235]);
    assert_eq!(j.prompts[1].negative, "a white background");
    assert_eq!(j.image_count(), 6);
    assert_eq!(j.steps, 20);
}

#[test]
fn defaults_come_from_the_config() {
    let c = config();
    let j = load("prompts: [a cat]\nseed: 5\n").unwrap();
    assert_eq!(j.steps, c.defaults.steps);
    assert_eq!((j.width, j.height), (c.defaults.width, c.defaults.height));
    assert_eq!(j.prompts[0].seeds.len(), c.defaults.candidates as usize);
    assert_eq!(j.scheduler, None, "the model's own scheduler");
}

#[test]
fn explicit_seeds_and_a_missing_seed() {
    let j = load("prompts:\n  - prompt: a cat\n    seeds: [9, 3, 7]\n").unwrap();
    assert_eq!(j.prompts[0].seeds, vec![9, 3, 7]);
    let j = load("prompts: [a cat]\ncandidates: 2\n").unwrap();
    assert_eq!(
        j.prompts[0].seeds,
        vec![j.seed, j.seed + 1],
        "a chosen seed is recorded in the job"
    );
}

#[test]
fn errors_name_the_field() {
    let cases: &[(&str, &[&str])] = &[
        (
            "prompts: [a cat]\nstpes: 20\n",
            &["unknown field `stpes`", "did you mean `steps`?"],
        ),
        (
            "prompts:\n  - prompt: a cat\n    negativ: x\n",
            &["`prompts[0].negativ`", "did you mean `negative`?"],
        ),
        ("prompts: [a cat]\nsteps: 0\n", &["`steps` is 0"]),
        (
            "prompts: [a cat]\nsteps: 100000\n",
            &["`steps` is 100000", "limits.max_steps"],
        ),
        (
            "prompts: [a cat]\nwidth: 100\n",
            &["`width` is 100", "multiple of 8"],
        ),
        (
            "prompts: [a cat]\nwidth: 8192\nheight: 8192\n",
            &["limits.max_side"],
        ),
        (
            "prompts: [a cat]\nwidth: 2048\nheight: 1024\n",
            &["limits.max_pixels"],
        ),
        (
            "prompts: [a cat]\nwidth: 131072\nheight: 8\n",
            &["`width` is 131072", "limits.max_side"],
        ),
        ("prompts: [a cat]\nguidance: .nan\n", &["guidance"]),
        ("prompts: [a cat]\nguidance: -3\n", &["`guidance` is -3"]),
        (
            "prompts: [a cat]\nscheduler: euler_b\n",
            &["`scheduler`", "euler_b"],
        ),
        (
            "prompts: [a cat]\nmodel: sdxl\n",
            &["`model`", "\"sdxl\" is not configured"],
        ),
        ("prompts: [a cat]\nrng: philox9\n", &["`rng`"]),
        ("prompts: []\n", &["`prompts` is empty"]),
        (
            "prompts:\n  - prompt: a cat\n    candidates: 2\n    seeds: [1]\n",
            &["`prompts[0].seeds`", "1 seeds for 2 candidates"],
        ),
        (
            "prompts: [a cat]\ncandidates: 1000\n",
            &["`candidates` is 1000", "limits.max_candidates"],
        ),
        (
            "prompts: [a cat]\nid: ../../etc\n",
            &["`id`", "not usable as a folder name"],
        ),
        (
            "prompts: [a cat]\noutput: /tmp/x\n",
            &["`output`", "plain folder name"],
        ),
        ("prompts: [a cat]\nkeep_top: 0\n", &["`keep_top` is 0"]),
        ("prompts: [a cat]\nrejected: shred\n", &["`rejected`"]),
        ("prompts: [\"   \"]\n", &["`prompts[0]` is empty"]),
        ("prompts: a cat\n", &["`prompts`"]),
        ("prompts: [a cat]\nsteps: twenty\n", &["`steps`"]),
    ];
    for (body, needles) in cases {
        let e = err(body);
        assert!(e.contains("job.yaml"), "file missing in {e}");
        for n in *needles {
            assert!(e.contains(n), "expected {n:?} for\n{body}\nin: {e}");
        }
    }
}

#[test]
fn hostile_files_are_refused_before_parsing_gets_expensive() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config();
    // billion laughs
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        bomb.push_str(&format!(
            "{}: &{} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n",
            (b'a' + i) as char,
            (b'a' + i) as char,
            p = (b'a' + i - 1) as char
        ));
    }
    bomb.push_str("prompts: [*j]\n");
    let e = job::load(&write(tmp.path(), "bomb.yaml", &bomb), &c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bomb.yaml") && e.contains("unknown field `a`"),
        "{e}"
    );
    // many aliases where the schema would accept them: the alias budget stops it
    let many = format!("prompts:\n  - &a lol\n{}", "  - *a\n".repeat(2000));
    let e = job::load(&write(tmp.path(), "aliases.yaml", &many), &c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("aliases.yaml") && e.contains("budget breached"),
        "{e}"
    );
    // deep nesting
    let deep = format!("prompts: {}a{}\n", "[".repeat(200), "]".repeat(200));
    let e = job::load(&write(tmp.path(), "deep.yaml", &deep), &c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("deep.yaml") && e.contains("`prompts"), "{e}");
    // too large
    let big = format!("prompts: [\"{}\"]\n", "x".repeat(2 << 20));
    let e = job::load(&write(tmp.path(), "big.yaml", &big), &c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_job_bytes"), "{e}");
    // not UTF-8
    let p = tmp.path().join("latin1.yaml");
    std::fs::write(&p, b"prompts: [caf\xe9]\n").unwrap();
    let e = job::load(&p, &c).unwrap_err().to_string();
    assert!(e.contains("not UTF-8"), "{e}");
    // a folder named like a job
    let d = tmp.path().join("dir.yaml");
    std::fs::create_dir(&d).unwrap();
    let e = job::load(&d, &c).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}
