//! The diffusers goldens of imported checkpoints (tests/golden/import, made by
//! onnx/golden_import.py) and rendering model folders with sdspool to compare with them; shared by
//! tests/import_parity.rs (the folders the Python conversion wrote) and tests/template_import.rs
//! (folders imported through templates).

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::ArrayD;
use ndarray_npy::read_npy;
use serde_json::Value;

use super::config_file::TestConfig;

pub fn golden_dir() -> PathBuf {
    super::root().join("tests/golden/import")
}

pub fn cases() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(golden_dir().join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let mut out: Vec<(String, Value)> = index["cases"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.get("pixels").is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A daemon configuration under `dir` with these model folders (the first the default).
pub fn config(dir: &Path, models: &[(String, PathBuf)]) -> PathBuf {
    let mut c = TestConfig::daemon(dir);
    c.rerank = None;
    c.default_model = Some(models[0].0.clone());
    c.models = models.to_vec();
    c.write(dir)
}

pub fn job_yaml(name: &str, case: &Value) -> String {
    format!(
        "model: {name}\nprompts:\n  - {}\ncandidates: {}\nseed: {}\nsteps: {}\nguidance: {}\nscheduler: {}\nwidth: {}\nheight: {}\nrerank: false\n",
        case["prompt"].as_str().unwrap(),
        case["seeds"].as_array().unwrap().len(),
        case["seeds"][0],
        case["steps"],
        case["guidance"],
        case["scheduler"].as_str().unwrap(),
        case["width"],
        case["height"],
    )
}

/// The largest difference between the PNGs of `dir` and the golden pixels, per candidate.
pub fn worst_differences(dir: &Path, case: &Value) -> Vec<i32> {
    let golden: ArrayD<u8> = read_npy(golden_dir().join(case["pixels"].as_str().unwrap())).unwrap();
    let seeds = case["seeds"].as_array().unwrap();
    seeds
        .iter()
        .enumerate()
        .map(|(i, seed)| {
            let file = dir.join(format!("p000-c{i:02}-s{seed}.png"));
            let image = image::open(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .to_rgb8();
            let mut worst = 0i32;
            for (x, y, px) in image.enumerate_pixels() {
                for c in 0..3 {
                    let want = golden[[i, y as usize, x as usize, c]];
                    worst = worst.max((i32::from(px[c]) - i32::from(want)).abs());
                }
            }
            worst
        })
        .collect()
}

/// Renders `job_yaml` with `sdspool render` over the model folders `models`; the output folder.
pub fn render(tmp: &Path, models: &[(String, PathBuf)], job_name: &str, job_yaml: &str) -> PathBuf {
    let config = config(tmp, models);
    let job = tmp.join(format!("{job_name}.yaml"));
    std::fs::write(&job, job_yaml).unwrap();
    let out = tmp.join(format!("out-{job_name}"));
    let run = super::sdspool_without_python(
        &super::root(),
        &config,
        &[
            "render".as_ref(),
            job.as_os_str(),
            "--output".as_ref(),
            out.as_os_str(),
        ],
    );
    assert!(
        run.status.success(),
        "{job_name}: {}",
        super::output_text(&run)
    );
    out
}

/// Submits `job_yaml` as `job_name` to a spool configured with `models` and runs the daemon until
/// it is idle: the job's output folder and the configuration file.
pub fn daemon_render(
    tmp: &Path,
    models: &[(String, PathBuf)],
    job_name: &str,
    job_yaml: &str,
) -> (PathBuf, PathBuf) {
    let (mut outs, config) =
        daemon_render_all(tmp, models, &[(job_name.to_string(), job_yaml.to_string())]);
    (outs.remove(0), config)
}

/// Submits each `(job_name, job_yaml)` to one spool configured with `models` and runs the daemon
/// until it is idle: the jobs' output folders (in order) and the configuration file.
pub fn daemon_render_all(
    tmp: &Path,
    models: &[(String, PathBuf)],
    jobs: &[(String, String)],
) -> (Vec<PathBuf>, PathBuf) {
    let config = config(tmp, models);
    let sdspool = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("SDSPOOL_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (job_name, job_yaml) in jobs {
        let job = tmp.join(format!("{job_name}.yaml"));
        std::fs::write(&job, job_yaml).unwrap();
        sdspool(&["submit", job.to_str().unwrap()]);
    }
    sdspool(&["run", "--until-idle"]);
    let outs = jobs
        .iter()
        .map(|(job_name, _)| tmp.join("output").join(job_name))
        .collect();
    (outs, config)
}

pub fn case(name: &str) -> Value {
    cases().into_iter().find(|(n, _)| n == name).unwrap().1
}

/// The `sdspool import` arguments that replay the recorded Python conversion of `case` (its
/// transcript and the folder it wrote) instead of running Python.
pub fn replay(case: &str) -> Vec<String> {
    let fixtures = super::root().join("tests/fixtures/import");
    vec![
        "--replay-transcript".into(),
        fixtures
            .join(format!("transcripts/{case}.jsonl"))
            .display()
            .to_string(),
        "--replay-folder".into(),
        fixtures
            .join(format!("models/{case}"))
            .display()
            .to_string(),
    ]
}

/// tests/golden/import/index.json "handoffs"[`key`].
pub fn handoff(key: &str) -> Value {
    let text = std::fs::read_to_string(golden_dir().join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    index["handoffs"][key].clone()
}

/// The job of a hand-off golden with `refiner` as its refiner.
pub fn handoff_job(handoff: &Value, refiner: &str) -> String {
    format!(
        "{}refiner: {refiner}\nrefiner_start: {}\n",
        job_yaml(handoff["model"].as_str().unwrap(), handoff),
        handoff["refiner_start"]
    )
}
