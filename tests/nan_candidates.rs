//! A candidate whose values go NaN fails alone: through the daemon, with a real NaN from a
//! model (tests/fixtures/nan-vae, built by onnx/build_nan_vae.py: tiny-sd's VAE decoder that
//! yields NaN when one value of the latent it decodes is negative, and tiny-sd's own image
//! otherwise), configured as the `vae:` of a model. The other candidates of the job are rendered,
//! ranked and written exactly as with tiny-sd's VAE; the manifest records each failed candidate
//! with its typed reason; the log names its candidate and seed; the job is done, and its web page
//! lists the failures. A job whose candidates all fail has nothing to show: it goes to failed/.

mod common;

use common::config_file::{Defaults, TestConfig};

use std::path::{Path, PathBuf};

use common::names;
use serde_json::Value;

use common::spool_env::SpoolEnv as Env;

impl Env {
    /// tiny-sd, and `nan-sd`: tiny-sd with the NaN VAE decoder as its `vae:`; CLIP rerank.
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root);
        c.defaults = Defaults::small(3, 4);
        c.models
            .push(("nan-sd".into(), common::model_dir("tiny-sd")));
        let nan_vae = common::root().join("tests/fixtures/nan-vae");
        let entry = format!(
            "  nan-sd:\n    path: {}\n",
            common::model_dir("tiny-sd").display()
        );
        let yaml = c.yaml();
        assert!(yaml.contains(&entry), "{yaml}");
        let yaml = yaml.replace(&entry, &format!("{entry}    vae: {}\n", nan_vae.display()));
        let config = root.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        Env {
            _tmp: tmp,
            root,
            config,
        }
    }

    fn output(&self, job: &str) -> PathBuf {
        self.root.join("output").join(job)
    }

    fn manifest(&self, job: &str) -> Value {
        let text = std::fs::read_to_string(self.output(job).join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn pixels(dir: &Path, file: &str) -> image::RgbImage {
    image::open(dir.join(file)).unwrap().to_rgb8()
}

/// Seeds 1-4, 3 steps, 64x64, with a sweep of two guidance values: the candidates of seeds 3
/// and 4 fail, 1 and 2 do not (their final latents' gate value is negative and positive; see
/// onnx/build_nan_vae.py).
const JOB: &str = "prompts: [a photo of a cat]\nguidance: [4, 7.5]\nseed: 1\nkeep_top: 2\n";

#[test]
fn a_nan_candidate_fails_alone_and_the_job_is_done() {
    let env = Env::new();
    env.submit("mixed.yaml", &format!("model: nan-sd\n{JOB}"));
    env.submit("reference.yaml", &format!("model: tiny-sd\n{JOB}"));
    let log = env.run_until_idle();
    let done = names(&env.spool("done"));
    for job in ["mixed", "reference"] {
        assert!(
            done.contains(&format!("{job}.yaml")),
            "{job}: {done:?}\n{log}"
        );
    }

    let m = env.manifest("mixed");
    let r = env.manifest("reference");
    assert_eq!(m["complete"], true);
    let mut failed = Vec::new();
    let mut written = 0;
    for (p, rp) in m["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["prompts"].as_array().unwrap())
    {
        let cands = p["candidates"].as_array().unwrap();
        assert_eq!(cands.len(), 4, "{p}");
        let mut ranks = Vec::new();
        for (c, rc) in cands.iter().zip(rp["candidates"].as_array().unwrap()) {
            assert_eq!(c["seed"], rc["seed"]);
            if c.get("failure").is_some() {
                assert_eq!(
                    c["failure"],
                    serde_json::json!({"reason": "non_finite", "stage": "decoded_image"}),
                    "{c}"
                );
                assert!(c["file"].is_null() && c["rank"].is_null(), "{c}");
                assert_eq!(c["kept"], false, "{c}");
                failed.push((p["index"].as_u64().unwrap(), c["seed"].as_u64().unwrap()));
                continue;
            }
            written += 1;
            assert!(c["clip_score"].is_number(), "scored: {c}");
            ranks.push(c["rank"].as_u64().unwrap());
            // The same image as with tiny-sd's own VAE (its file name in the reference:
            // keep_top may have moved one of them and not the other).
            let file = c["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            let rfile = rc["file"].as_str().unwrap();
            assert!(rfile.ends_with(name), "{rfile} {file}");
            assert!(
                pixels(&env.output("mixed"), file) == pixels(&env.output("reference"), rfile),
                "{file}"
            );
        }
        ranks.sort();
        assert_eq!(ranks, (1..=ranks.len() as u64).collect::<Vec<_>>(), "{p}");
        assert!(p["contact_sheet"].is_string(), "{p}");
    }
    assert_eq!(failed, [(0, 3), (0, 4), (1, 3), (1, 4)], "{m}");
    assert_eq!(written, 4);
    for (prompt, seed) in &failed {
        assert!(
            log.lines().any(|l| l.contains("candidate failed")
                && l.contains(&format!("seed={seed}"))
                && l.contains(&format!("prompt={prompt}"))
                && l.contains("decoded image has non-finite values")),
            "no log line for prompt {prompt}, seed {seed}:\n{log}"
        );
    }
    // The sweep's grid and the result summary.
    assert_eq!(m["grids"].as_array().unwrap().len(), 1, "{m}");
    let result = std::fs::read_to_string(env.spool("done").join("mixed.result.yaml")).unwrap();
    assert!(
        result.contains(&format!("failed: {}", failed.len())),
        "{result}"
    );
    assert!(result.contains(&format!("images: {written}")), "{result}");
    // The job's web page (the static index.html the daemon writes) lists the failures.
    let html = std::fs::read_to_string(env.output("mixed").join("index.html")).unwrap();
    assert!(
        html.contains(&format!("{} failed candidates (no image)", failed.len())),
        "{html}"
    );
    for (_, seed) in &failed {
        assert!(html.contains(&format!("seed {seed}: the decoded image has non-finite")));
    }
}

#[test]
fn a_job_whose_candidates_all_fail_goes_to_failed() {
    let env = Env::new();
    // A seed that fails in the test above, alone.
    env.submit(
        "none.yaml",
        &format!(
            "model: nan-sd\nprompts: [a photo of a cat]\ncandidates: 1\nseed: {ALL_FAIL_SEED}\n"
        ),
    );
    let log = env.run_until_idle();
    assert!(
        names(&env.spool("failed")).contains(&"none.yaml".to_string()),
        "{log}"
    );
    let error = std::fs::read_to_string(env.spool("failed").join("none.error.yaml")).unwrap();
    assert!(
        error.contains("every candidate failed (1 of them)")
            && error.contains(&format!("seed {ALL_FAIL_SEED}")),
        "{error}"
    );
    let m = env.manifest("none");
    assert_eq!(m["complete"], true);
    assert_eq!(
        m["prompts"][0]["candidates"][0]["failure"]["reason"],
        "non_finite"
    );
}

const ALL_FAIL_SEED: u64 = 3;
