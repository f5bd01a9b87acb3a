//! Parity of imported checkpoints: the model folders a real `onnx/import_checkpoint.py` run wrote
//! from the tiny single-file fixtures (tests/fixtures/import/models, with and without LoRAs fused)
//! rendered by sdspool — the daemon for every case, `sdspool render` for some — against diffusers' PyTorch
//! pipeline loading the same single files with `from_single_file` and fusing the same LoRAs with
//! `load_lora_weights` + `fuse_lora` (tests/golden/import, made by onnx/golden_import.py): every
//! pixel within 1/255.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::import_golden::{self, case, cases, handoff, handoff_job, job_yaml, worst_differences};
use serde_json::Value;

#[test]
fn imported_folders_render_through_the_daemon_as_diffusers_renders_the_single_files() {
    let cases = cases();
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        [
            "sd15",
            "sd15-lora",
            "sd2-v",
            "sd2-v-lora",
            "sdxl",
            "sdxl-lora"
        ]
        .iter()
        .all(|n| names.contains(n)),
        "{names:?}"
    );
    // one spool, one job per case, the daemon renders them all
    let tmp = tempfile::tempdir().unwrap();
    let jobs: Vec<(String, String)> = cases
        .iter()
        .map(|(name, case)| (format!("job-{name}"), job_yaml(name, case)))
        .collect();
    let models = fixture_models(&names);
    let (outs, _) = import_golden::daemon_render_all(tmp.path(), &models, &jobs);
    let report: Vec<(String, Vec<i32>)> = cases
        .iter()
        .zip(&outs)
        .map(|((name, case), out)| (name.clone(), worst_differences(out, case)))
        .collect();
    assert!(
        report.iter().all(|(_, w)| w.iter().all(|d| *d <= 1)),
        "largest pixel difference per candidate: {report:?}"
    );
}

#[test]
fn the_daemon_renders_an_imported_sdxl_with_loras_as_diffusers_does() {
    let (name, case) = cases().into_iter().find(|(n, _)| n == "sdxl-lora").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, config) = daemon_render(tmp.path(), &[&name], "lora-job", &job_yaml(&name, &case));
    let worst = worst_differences(&out, &case);
    assert!(worst.iter().all(|d| *d <= 1), "{worst:?}");

    // The LoRAs the import fused travel from its sdspool-source.json into the outputs as
    // AUTOMATIC1111 records them. The hashes are those Python's hashlib computed at import
    // (kohya's addnet hash of each .safetensors LoRA, first 12 hex digits).
    let seed = case["seeds"][0].as_u64().unwrap();
    let png = out.join(format!("p000-c00-s{seed}.png"));
    let text = sdspool::jobs::output::png::read_parameters(&png)
        .unwrap()
        .expect("a parameters chunk");
    assert!(
        text.contains("<lora:lora-sdxl-kohya:0.7>") && text.contains("<lora:lora-sdxl-peft:0.4>"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"Lora hashes: "lora-sdxl-kohya: ebdcdbe79de9, lora-sdxl-peft: 1fe91f45f0cb""#
        ),
        "{text}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let loras = &manifest["model_source"]["loras"];
    assert_eq!(loras[0]["name"], "lora-sdxl-kohya", "{manifest}");
    assert_eq!(loras[1]["weight"], 0.4, "{manifest}");
    let models = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(&config)
        .arg("models")
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&models.stdout);
    assert!(
        listing.contains("lora-sdxl-kohya") && listing.contains("sdxl.safetensors"),
        "{listing}"
    );
}

#[test]
fn the_daemon_renders_an_imported_sd2_v_with_loras_as_diffusers_does() {
    // sd2-v.safetensors (v-prediction) with an SD 2.x LoRA of each layout fused at import
    let (name, case) = cases()
        .into_iter()
        .find(|(n, _)| n == "sd2-v-lora")
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = daemon_render(
        tmp.path(),
        &[&name],
        "sd2-lora-job",
        &job_yaml(&name, &case),
    );
    let worst = worst_differences(&out, &case);
    assert!(worst.iter().all(|d| *d <= 1), "{worst:?}");
    let seed = case["seeds"][0].as_u64().unwrap();
    let text =
        sdspool::jobs::output::png::read_parameters(&out.join(format!("p000-c00-s{seed}.png")))
            .unwrap()
            .expect("a parameters chunk");
    assert!(
        text.contains("<lora:lora-sd2-kohya:0.8>") && text.contains("<lora:lora-sd2-peft:0.5>"),
        "{text}"
    );
    // the LoRAs change the pictures: the plain sd2-v import is far from this golden
    let plain = render(tmp.path(), &["sd2-v"], "plain", &job_yaml("sd2-v", &case));
    let worst = worst_differences(&plain, &case);
    assert!(worst.iter().any(|d| *d > 8), "{worst:?}");
}

/// The folders the Python conversion wrote (tests/fixtures/import/models), by name.
fn fixture_models(names: &[&str]) -> Vec<(String, PathBuf)> {
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                common::root().join("tests/fixtures/import/models").join(n),
            )
        })
        .collect()
}

/// Renders `job_yaml` with `sdspool render` over the imported folders `names`; the output folder.
fn render(tmp: &Path, names: &[&str], job_name: &str, job_yaml: &str) -> PathBuf {
    import_golden::render(tmp, &fixture_models(names), job_name, job_yaml)
}

/// Submits `job_yaml` as `job_name` to a spool configured with `names` and runs the daemon until
/// it is idle: the job's output folder and the configuration file.
fn daemon_render(tmp: &Path, names: &[&str], job_name: &str, job_yaml: &str) -> (PathBuf, PathBuf) {
    import_golden::daemon_render(tmp, &fixture_models(names), job_name, job_yaml)
}

/// The hand-off golden `key` rendered by `sdspool render` and by the daemon: within 1/255.
fn check_handoff(key: &str) {
    let handoff = handoff(key);
    let (base, refiner) = (
        handoff["model"].as_str().unwrap(),
        handoff["refiner"].as_str().unwrap(),
    );
    let job = import_golden::handoff_job(&handoff, refiner);
    let tmp = tempfile::tempdir().unwrap();
    let out = render(tmp.path(), &[base, refiner], "handoff", &job);
    let worst = worst_differences(&out, &handoff);
    assert!(
        worst.iter().all(|d| *d <= 1),
        "{key}: sdspool render: {worst:?}"
    );
    // The same job through the daemon, which loads the refiner when the job first needs it.
    let spool = tempfile::tempdir().unwrap();
    let (out, _) = daemon_render(spool.path(), &[base, refiner], "handoff", &job);
    let worst = worst_differences(&out, &handoff);
    assert!(worst.iter().all(|d| *d <= 1), "{key}: daemon: {worst:?}");
}

#[test]
fn an_imported_sdxl_base_hands_off_to_an_imported_refiner_as_diffusers_does() {
    // tests/golden/import/index.json "handoffs": diffusers' base pipeline from sdxl.safetensors
    // with `denoising_end`, its latents into the img2img pipeline from sdxl-refiner.safetensors
    // with `denoising_start` (onnx/golden_import.py render_handoff)
    check_handoff("sdxl-refiner");
}

#[test]
fn an_imported_sdxl_base_hands_off_to_an_imported_refiner_with_loras_as_diffusers_does() {
    // The refiner imported with a refiner LoRA of each layout (UNet + its only text encoder,
    // text_encoder_2), diffusers' refiner from the single file with the same LoRAs fused; the base
    // without LoRAs.
    check_handoff("sdxl-refiner-lora");
    // The refiner's LoRAs show in the pictures: the plain refiner is off this golden.
    let handoff = handoff("sdxl-refiner-lora");
    let base = handoff["model"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let job = handoff_job(&handoff, "sdxl-refiner");
    let out = render(tmp.path(), &[base, "sdxl-refiner"], "plain-refiner", &job);
    let worst = worst_differences(&out, &handoff);
    assert!(worst.iter().any(|d| *d > 1), "{worst:?}");
}

#[test]
fn a_pickled_ckpt_import_renders_as_diffusers_renders_the_same_weights() {
    // tests/fixtures/import/models/sd15-ckpt: a real import of sd15.ckpt, sd15.safetensors' tensors
    // saved with torch.save as {"state_dict": ...}: the family found by the conversion, the
    // pictures those of the sd15 golden
    let golden = case("sd15");
    let source: Value = serde_json::from_str(
        &std::fs::read_to_string(
            common::root().join("tests/fixtures/import/models/sd15-ckpt/sdspool-source.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(source["checkpoint"]["file"], "sd15.ckpt", "{source}");
    assert_eq!(source["checkpoint"]["family"], "sd15", "{source}");
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = daemon_render(
        tmp.path(),
        &["sd15-ckpt"],
        "ckpt",
        &job_yaml("sd15-ckpt", &golden),
    );
    let worst = worst_differences(&out, &golden);
    assert!(worst.iter().all(|d| *d <= 1), "{worst:?}");
}

#[test]
fn an_import_optimized_for_the_cpu_renders_as_diffusers_renders_the_single_file() {
    // tests/fixtures/import/models/sd15-optimized: `import_checkpoint.py --optimize --target cpu`
    // of sd15.safetensors (transcript sd15-optimized.jsonl): ONNX Runtime's attention, LayerNorm
    // and Gelu fusions, checked against the plain import's golden
    let golden = case("sd15");
    let tmp = tempfile::tempdir().unwrap();
    let out = render(
        tmp.path(),
        &["sd15-optimized"],
        "optimized",
        &job_yaml("sd15-optimized", &golden),
    );
    let worst = worst_differences(&out, &golden);
    assert!(worst.iter().all(|d| *d <= 1), "{worst:?}");
}

#[test]
fn a_float16_import_renders_within_float16_precision_of_diffusers_in_float32() {
    // tests/fixtures/import/models/sd15-fp16: `import_checkpoint.py --fp16` of sd15.safetensors
    // (optimum `--dtype fp16`: every part float16, float16 inputs and outputs) against diffusers'
    // float32 golden. Measured: 1/255 at worst on both candidates. float16 keeps 11 significant
    // bits (relative rounding 2^-11 ≈ 4.9e-4, 0.12 of a pixel step at full scale), and the tiny
    // model has few layers to accumulate it; 2/255 leaves one rounding step for other CPUs' float16
    // kernels. The float32 import renders these candidates within 1/255 as well, so the test also
    // asks that the float16 pictures differ from sdspool's float32 ones: float16 arithmetic ran.
    const TOLERANCE: i32 = 2;
    let golden = case("sd15");
    let source = std::fs::read_to_string(
        common::root().join("tests/fixtures/import/models/sd15-fp16/sdspool-source.json"),
    )
    .unwrap();
    assert!(source.contains(r#""dtype": "float16""#), "{source}");
    let tmp = tempfile::tempdir().unwrap();
    let half = render(
        tmp.path(),
        &["sd15-fp16"],
        "fp16",
        &job_yaml("sd15-fp16", &golden),
    );
    let worst = worst_differences(&half, &golden);
    assert!(worst.iter().all(|d| *d <= TOLERANCE), "{worst:?}");
    let full = render(tmp.path(), &["sd15"], "fp32", &job_yaml("sd15", &golden));
    let differs = (0..worst.len()).any(|i| {
        let seed = &golden["seeds"][i];
        let name = format!("p000-c{i:02}-s{seed}.png");
        let a = image::open(half.join(&name)).unwrap().to_rgb8();
        let b = image::open(full.join(&name)).unwrap().to_rgb8();
        a.as_raw() != b.as_raw()
    });
    assert!(
        differs,
        "the float16 import rendered exactly the float32 pictures"
    );
}
