//! Job files: defaults, seeds, and the errors that name the file and the field.

mod common;

use std::path::{Path, PathBuf};

use sdspool::app::config::Config;
use sdspool::jobs::job::{self, Job};

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

#[test]
fn prompts_and_negatives_are_within_limits_max_prompt_chars() {
    let max = config().limits.max_prompt_chars;
    assert_eq!(max, 4000, "the default");
    let long = "x".repeat(max + 1);
    let cases = [
        (
            format!("prompts: [\"{long}\"]\n"),
            "`prompts[0]` is 4001 characters long; the limit is 4000 (limits.max_prompt_chars)",
        ),
        (
            format!("prompts: [a cat]\nnegative: \"{long}\"\n"),
            "`negative` is 4001 characters long",
        ),
        (
            format!("prompts:\n  - prompt: a cat\n    negative: \"{long}\"\n"),
            "`prompts[0].negative` is 4001 characters long",
        ),
        (
            format!("prompts: [a cat]\nprompt_lines:\n  - a dog\n  - \"{long}\"\n"),
            "`prompt_lines` line 2: is 4001 characters long",
        ),
        (
            format!("prompts: [a cat]\nprompt_lines: [\"--prompt a --negative_prompt {long}\"]\n"),
            "`prompt_lines` line 1: is 4001 characters long",
        ),
        (
            // Counted as rendered: a sweep renders the text as it is.
            format!("prompts: [\"{long}\"]\nsteps: [2, 3]\n"),
            "`prompts[0]` is 4001 characters long",
        ),
    ];
    for (body, needle) in &cases {
        let e = err(body);
        assert!(
            e.contains("job.yaml") && e.contains(needle),
            "{needle}: {e}"
        );
        assert!(e.len() < 300, "the text is not repeated: {e}");
    }
    // Characters, not bytes; the limit itself is allowed.
    let j = load(&format!("prompts: [\"{}\"]\n", "é".repeat(max))).unwrap();
    assert_eq!(j.prompts[0].text.chars().count(), max);

    // A prompt matrix counts its longest prompt: all parts joined with ", ".
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.limits.max_prompt_chars = 12;
    let p = write(
        tmp.path(),
        "m.yaml",
        "prompts: [\"a|b|c|d|e|f\"]\nprompt_matrix: true\n",
    );
    let e = job::load(&p, &c).unwrap_err().to_string();
    assert!(
        e.contains(
            "`prompts[0]` makes a prompt of 16 characters once its prompt matrix is expanded"
        ),
        "{e}"
    );
    c.limits.max_prompt_chars = 16;
    assert_eq!(job::load(&p, &c).unwrap().prompts.len(), 32);
}

/// The model's size rule (VAE downsampling x UNet downsampling) holds for a job the daemon
/// loads from the spool too, not only for `check`, `submit` and `render`: a job the model
/// cannot take fails when it is claimed, naming the field.
#[test]
fn a_spooled_job_the_model_cannot_take_fails_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.default_model = Some("tiny-sd".into());
    for (body, field) in [
        ("prompts: [a cat]\nwidth: 72\nheight: 64\n", "width"),
        ("prompts: [a cat]\nsize: [64x64, 64x40]\n", "height"),
    ] {
        let p = write(tmp.path(), "odd.yaml", body);
        // Multiples of 8: within the job file's own rules.
        job::load(&p, &c).unwrap();
        let e = job::load_spooled(&p, &c).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.message
                .contains("multiple of 16 (VAE downsampling 8 x UNet downsampling 2)"),
            "{e}"
        );
    }
    let p = write(
        tmp.path(),
        "ok.yaml",
        "prompts: [a cat]\nwidth: 80\nheight: 48\n",
    );
    job::load_spooled(&p, &c).unwrap();
}

/// `sdspool check` shows the seed a job that names none gets; `sdspool submit` writes that seed
/// into the copy it spools (the copy is another file, which would get a seed of its own), so
/// the daemon renders with the seed `check` showed.
#[test]
fn check_submit_and_the_daemon_agree_on_the_default_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.spool.dir = tmp.path().join("spool");
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    for (name, body) in [
        ("plain.yaml", "prompts: [a cat]\ncandidates: 2\n"),
        // No newline at the end; a prompt file embedded too.
        ("lines.yaml", "prompt_file: p.txt\ncandidates: 2"),
        // `seed: ~` is no seed: the daemon derives its own (another `seed:` would be a
        // duplicate key), and submitting works.
        ("null.yaml", "prompts: [a cat]\ncandidates: 2\nseed: ~\n"),
    ] {
        std::fs::write(jobs.join("p.txt"), "a dog\n").unwrap();
        let file = write(&jobs, name, body);
        let shown = sdspool::app::commands::check::run(&c, &file).unwrap();
        let seed: u64 = shown
            .lines()
            .find_map(|l| l.trim().strip_prefix("rng"))
            .and_then(|l| l.rsplit("seed ").next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no seed in {shown}"));
        assert_eq!(job::load(&file, &c).unwrap().seed, seed);
        let submitted = sdspool::app::commands::submit::run(&c, &file, false).unwrap();
        let spooled = job::load_spooled(&submitted.path, &c).unwrap();
        if name == "null.yaml" {
            continue;
        }
        assert_eq!(spooled.seed, seed, "{name}");
        assert_eq!(spooled.prompts[0].seeds, [seed, seed + 1], "{name}");
    }
}
