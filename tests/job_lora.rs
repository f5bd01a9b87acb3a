//! LoRAs applied per job: a checkpoint imported through its template (no LoRA fused), then jobs
//! whose prompts carry AUTOMATIC1111 `<lora:name:weight>` tags for LoRA files in `loras.dirs`.
//! The sessions are created with the LoRA-changed weights from memory; the images must match
//! diffusers rendering the single file with the same LoRAs fused (`load_lora_weights` +
//! `fuse_lora`, the goldens of tests/import_parity.rs) within 1/255, and a job without tags on the
//! same model still the plain golden. Then the refusals: an unknown LoRA, one of another family, a
//! model without a weights map, two prompts with different tags.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::config_file::TestConfig;
use common::import_golden::{self, case, worst_differences};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/import").join(name)
}

fn sdspool(config: &Path, args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| std::ffi::OsStr::new(*a)).collect();
    common::sdspool_without_python(&common::root(), config, &args)
}

fn text(out: &Output) -> String {
    common::output_text(out)
}

/// Imports `checkpoint` as `name` through the committed templates into `dir/models`.
fn import(dir: &Path, checkpoint: &str, name: &str) -> PathBuf {
    let mut c = TestConfig::daemon(dir);
    c.rerank = None;
    let config = c.write(dir);
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&format!(
        "import:\n  templates:\n    - {}\n",
        fixture("templates").display()
    ));
    std::fs::write(&config, yaml).unwrap();
    let models = dir.join("models");
    let out = sdspool(
        &config,
        &[
            "import",
            fixture(checkpoint).to_str().unwrap(),
            "--name",
            name,
            "--models-dir",
            models.to_str().unwrap(),
            "--route",
            "template",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    models.join(name)
}

/// A configuration with these model folders and the fixture folder as the LoRA folder.
fn config(dir: &Path, models: &[(String, PathBuf)]) -> PathBuf {
    let config = import_golden::config(dir, models);
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str(&format!(
        "loras:\n  dirs:\n    - {}\n",
        fixture("").display()
    ));
    std::fs::write(&config, yaml).unwrap();
    config
}

/// The golden case's job with `tags` before its prompt.
fn job(model: &str, case: &Value, tags: &str) -> String {
    let mut case = case.clone();
    let prompt = format!("{tags} {}", case["prompt"].as_str().unwrap());
    case["prompt"] = Value::String(format!("'{}'", prompt.trim()));
    import_golden::job_yaml(model, &case)
}

fn render(config: &Path, dir: &Path, name: &str, yaml: &str) -> Result<PathBuf, String> {
    let job = dir.join(format!("{name}.yaml"));
    std::fs::write(&job, yaml).unwrap();
    let out = dir.join(format!("out-{name}"));
    let run = sdspool(
        config,
        &[
            "render",
            job.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    if run.status.success() {
        Ok(out)
    } else {
        Err(text(&run))
    }
}

fn parameters(out: &Path, case: &Value) -> String {
    let seed = case["seeds"][0].as_u64().unwrap();
    sdspool::jobs::output::png::read_parameters(&out.join(format!("p000-c00-s{seed}.png")))
        .unwrap()
        .expect("a parameters chunk")
}

#[test]
fn an_sd15_job_applies_its_loras_as_diffusers_fuses_them_and_the_plain_model_stays_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = import(tmp.path(), "sd15.safetensors", "sd15");
    assert!(folder.join("sdspool-weights.json").is_file());
    let models = [("sd15".to_string(), folder)];
    let config = config(tmp.path(), &models);
    let lora = case("sd15-lora");
    let tags = "<lora:lora-sd15-kohya:0.8> <lora:lora-sd15-peft:0.5>";
    let out = render(&config, tmp.path(), "lora", &job("sd15", &lora, tags)).unwrap();
    let worst = worst_differences(&out, &lora);
    assert!(worst.iter().all(|d| *d <= 1), "with LoRAs: {worst:?}");
    let plain = case("sd15");
    let out_plain = render(&config, tmp.path(), "plain", &job("sd15", &plain, "")).unwrap();
    let worst = worst_differences(&out_plain, &plain);
    assert!(worst.iter().all(|d| *d <= 1), "without: {worst:?}");

    // recorded as AUTOMATIC1111 records LoRAs, with the hashes the import tool computes
    let text = parameters(&out, &lora);
    assert!(text.contains(tags), "{text}");
    let python: Value = serde_json::from_slice(
        &std::fs::read(fixture("models/sd15-lora/sdspool-source.json")).unwrap(),
    )
    .unwrap();
    for l in python["loras"].as_array().unwrap() {
        let short = &l["addnet_sha256"].as_str().unwrap()[..12];
        assert!(
            text.contains(&format!("{}: {short}", l["name"].as_str().unwrap())),
            "{text}"
        );
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let loras = &manifest["model_source"]["loras"];
    assert_eq!(loras[0]["name"], "lora-sd15-kohya", "{manifest}");
    assert_eq!(loras[1]["weight"], 0.5, "{manifest}");
    assert!(!parameters(&out_plain, &plain).contains("<lora:"));
}

#[test]
fn an_sd2_job_applies_loras_to_the_q_k_v_rows_of_the_open_clip_encoder_as_diffusers_does() {
    // SD 2.x's text encoder holds q, k and v as rows of one in_proj tensor in the single file;
    // the LoRAs change them one by one.
    let tmp = tempfile::tempdir().unwrap();
    let folder = import(tmp.path(), "sd2-v.safetensors", "sd2");
    let config = config(tmp.path(), &[("sd2".to_string(), folder)]);
    let lora = case("sd2-v-lora");
    let tags = "<lora:lora-sd2-kohya:0.8> <lora:lora-sd2-peft:0.5>";
    let out = render(&config, tmp.path(), "lora", &job("sd2", &lora, tags)).unwrap();
    let worst = worst_differences(&out, &lora);
    assert!(worst.iter().all(|d| *d <= 1), "with LoRAs: {worst:?}");
}

#[test]
fn the_daemon_renders_an_sdxl_job_with_its_loras_and_one_without_on_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = import(tmp.path(), "sdxl.safetensors", "sdxl");
    let models = [("sdxl".to_string(), folder)];
    let config = config(tmp.path(), &models);
    let lora = case("sdxl-lora");
    let plain = case("sdxl");
    let tags = "<lora:lora-sdxl-kohya:0.7> <lora:lora-sdxl-peft:0.4>";
    for (name, yaml) in [
        ("with-loras", job("sdxl", &lora, tags)),
        ("without", job("sdxl", &plain, "")),
    ] {
        std::fs::write(tmp.path().join(format!("{name}.yaml")), yaml).unwrap();
        let out = sdspool(
            &config,
            &[
                "submit",
                tmp.path().join(format!("{name}.yaml")).to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = sdspool(&config, &["run", "--until-idle"]);
    assert!(out.status.success(), "{}", text(&out));
    let output = tmp.path().join("output");
    let worst = worst_differences(&output.join("with-loras"), &lora);
    assert!(worst.iter().all(|d| *d <= 1), "with LoRAs: {worst:?}");
    let worst = worst_differences(&output.join("without"), &plain);
    assert!(worst.iter().all(|d| *d <= 1), "without: {worst:?}");
    let text = parameters(&output.join("with-loras"), &lora);
    assert!(
        text.contains(
            r#"Lora hashes: "lora-sdxl-kohya: ebdcdbe79de9, lora-sdxl-peft: 1fe91f45f0cb""#
        ),
        "{text}"
    );
}

#[test]
fn loras_that_cannot_be_applied_are_refused_naming_the_field_and_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = import(tmp.path(), "sd15.safetensors", "sd15");
    // a folder the Python route wrote: no weights map
    let python = fixture("models/sd15");
    let models = [("sd15".to_string(), folder), ("python".to_string(), python)];
    let config = config(tmp.path(), &models);
    let base = case("sd15");
    let refused = |name: &str, yaml: String| {
        let job = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&job, yaml).unwrap();
        let out = sdspool(&config, &["check", job.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}: {}", text(&out));
        text(&out)
    };
    let e = refused("unknown", job("sd15", &base, "<lora:no-such-lora:1>"));
    assert!(
        e.contains("`prompts[0]`") && e.contains("no no-such-lora.safetensors"),
        "{e}"
    );
    let e = refused("family", job("sd15", &base, "<lora:lora-sdxl-kohya:1>"));
    assert!(
        e.contains("lora-sdxl-kohya.safetensors") && e.contains("a LoRA for SDXL"),
        "{e}"
    );
    let e = refused("no-map", job("python", &base, "<lora:lora-sd15-kohya:1>"));
    assert!(e.contains("no sdspool-weights.json"), "{e}");
    let two = job("sd15", &base, "<lora:lora-sd15-kohya:0.8>").replace(
        "prompts:\n",
        "prompts:\n  - 'a bird'\n  - '<lora:lora-sd15-peft:0.5> a dog'\n",
    );
    let e = refused("two", two);
    assert!(
        e.contains("`prompts[1]`") && e.contains("one set of LoRAs"),
        "{e}"
    );
}

#[test]
fn an_infotext_with_lora_tags_applies_them_and_its_hashes_must_match_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = import(tmp.path(), "sd15.safetensors", "sd15");
    let config = config(tmp.path(), &[("sd15".to_string(), folder)]);
    let python: Value = serde_json::from_slice(
        &std::fs::read(fixture("models/sd15-lora/sdspool-source.json")).unwrap(),
    )
    .unwrap();
    let hashes: Vec<String> = python["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let short = &l["addnet_sha256"].as_str().unwrap()[..12];
            format!("{}: {short}", l["name"].as_str().unwrap())
        })
        .collect();
    let check = |name: &str, hashes: &str| {
        let info = format!(
            "<lora:lora-sd15-kohya:0.8> <lora:lora-sd15-peft:0.5> a photo of a cat\n\
             Steps: 4, Sampler: Euler, Seed: 42, Size: 64x64, Model: sd15, Lora hashes: \"{hashes}\""
        );
        let job = tmp.path().join(format!("{name}.yaml"));
        let body = format!("infotext: {}\n", serde_json::to_string(&info).unwrap());
        std::fs::write(&job, body).unwrap();
        sdspool(&config, &["check", job.to_str().unwrap()])
    };
    let out = check("good", &hashes.join(", "));
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("<lora:lora-sd15-kohya:0.8> (")
            && shown.contains("<lora:lora-sd15-peft:0.5> (")
            && shown.contains("applied per job"),
        "{shown}"
    );
    let wrong = hashes
        .join(", ")
        .replace(&hashes[1][hashes[1].len() - 12..], "0123456789ab");
    let out = check("wrong", &wrong);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("`infotext` `Lora hashes` gives lora-sd15-peft: 0123456789ab, but")
            && shown.contains("lora-sd15-peft.safetensors is "),
        "{shown}"
    );
}
