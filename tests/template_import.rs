//! `sdspool import` through import templates, without Python: each tiny single-file fixture
//! (tests/fixtures/import) imported through its committed template (tests/fixtures/import/templates,
//! made by onnx/build_import_template.py) renders as diffusers renders the single file (the goldens
//! of tests/import_parity.rs, within 1/255), the SD 2.x import decides v-prediction by
//! AUTOMATIC1111's test, and the UNet of a template import computes what the UNet of the Python
//! conversion computes. Then the ways it does not go through a template: a checkpoint that does not
//! fit (`--route template` refuses naming the key, `auto` takes the Python route), a truncated
//! checkpoint, a corrupt template.json (named with its field), options the template route cannot do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::config_file::TestConfig;
use common::import_golden::{self, case, job_yaml, worst_differences};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/import").join(name)
}

fn templates() -> PathBuf {
    fixture("templates")
}

/// `dir/config.yaml`: the local ONNX Runtime on the CPU, tiny-sd, `import.templates: [templates]`.
fn config(dir: &Path, templates: &Path) -> PathBuf {
    let mut c = TestConfig::daemon(dir);
    c.rerank = None;
    let path = c.write(dir);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "import:\n  templates:\n    - {}\n",
        templates.display()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn import(config: &Path, checkpoint: &Path, name: &str, models: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "import".as_ref(),
        checkpoint.as_os_str(),
        "--name".as_ref(),
        name.as_ref(),
        "--models-dir".as_ref(),
        models.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    common::sdspool_without_python(&common::root(), config, &args)
}

fn text(out: &Output) -> String {
    common::output_text(out)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A fixture checkpoint of each family and its import case: `(checkpoint, name)`.
const FAMILIES: [(&str, &str); 4] = [
    ("sd15.safetensors", "sd15"),
    ("sd2-v.safetensors", "sd2-v"),
    ("sdxl.safetensors", "sdxl"),
    ("sdxl-refiner.safetensors", "sdxl-refiner"),
];

/// Imports the fixtures `(checkpoint, name)` through their templates into `dir/models`.
fn import_all(dir: &Path, cases: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
    let config = config(dir, &templates());
    let models = dir.join("models");
    cases
        .iter()
        .map(|(file, name)| {
            let out = import(
                &config,
                &fixture(file),
                name,
                &models,
                &["--route", "template"],
            );
            let shown = text(&out);
            assert!(out.status.success(), "{name}: {shown}");
            assert!(shown.contains("through the import template"), "{shown}");
            assert!(
                shown.contains("writing the checkpoint's tensors into the template"),
                "{shown}"
            );
            (name.to_string(), models.join(name))
        })
        .collect()
}

#[test]
fn each_family_imported_through_its_template_renders_as_diffusers_does() {
    let tmp = tempfile::tempdir().unwrap();
    // the refiner has no pictures of its own: its hand-off test renders it
    let models = import_all(tmp.path(), &FAMILIES[..3]);
    let mut report = Vec::new();
    for (name, folder) in &models {
        let golden = case(name);
        let dir = tmp.path().join(format!("render-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let one = [(name.clone(), folder.clone())];
        let out = import_golden::render(&dir, &one, name, &job_yaml(name, &golden));
        report.push((name.clone(), worst_differences(&out, &golden)));
        // provenance as the Python route writes it, plus the route and the template
        let ours = read_json(&folder.join("sdspool-source.json"));
        let python = read_json(&fixture(&format!("models/{name}/sdspool-source.json")));
        assert_eq!(ours["checkpoint"], python["checkpoint"], "{name}");
        for field in ["format", "loras", "vae", "dtype", "optimized"] {
            assert_eq!(ours[field], python[field], "{name} {field}");
        }
        assert_eq!(ours["route"], "template");
        assert!(
            ours["template"]
                .as_str()
                .unwrap()
                .starts_with(&python["checkpoint"]["family"].as_str().unwrap().to_string())
        );
        let scheduler = read_json(&folder.join("scheduler/scheduler_config.json"));
        assert_eq!(
            scheduler["prediction_type"], golden["prediction_type"],
            "{name}"
        );
    }
    assert!(
        report.iter().all(|(_, w)| w.iter().all(|d| *d <= 1)),
        "largest pixel difference per candidate: {report:?}"
    );
}

/// Imports the golden case `name` (its checkpoint with its LoRAs) through its template into
/// `models`, checks the LoRAs are recorded as the Python route records them (names, hashes,
/// weights as typed), and returns the folder.
fn import_with_loras(config: &Path, models: &Path, name: &str) -> PathBuf {
    // every import case, also those without pictures of their own (a refiner's)
    let golden = read_json(&import_golden::golden_dir().join("index.json"))["cases"][name].clone();
    let mut list = vec!["--route".to_string(), "template".into()];
    for lora in golden["loras"].as_array().unwrap() {
        let file = fixture(lora[0].as_str().unwrap());
        list.extend(["--lora".into(), format!("{}:{}", file.display(), lora[1])]);
    }
    let ckpt = fixture(golden["checkpoint"].as_str().unwrap());
    let out = import(config, &ckpt, name, models, &args(&list));
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("fusing the LoRAs") && shown.contains("through the import template"),
        "{shown}"
    );
    let folder = models.join(name);
    let ours = read_json(&folder.join("sdspool-source.json"));
    let python = read_json(&fixture(&format!("models/{name}/sdspool-source.json")));
    assert_eq!(ours["loras"], python["loras"], "{name}");
    folder
}

#[test]
fn loras_fused_through_a_template_render_as_diffusers_fuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), &templates());
    let models = tmp.path().join("models");
    let mut report = Vec::new();
    // SD 2.x LoRAs change q, k and v, which the single file holds as rows of one in_proj tensor.
    for name in ["sd15-lora", "sd2-v-lora", "sdxl-lora"] {
        let golden = case(name);
        let folder = import_with_loras(&config, &models, name);
        let dir = tmp.path().join(format!("render-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let one = [(name.to_string(), folder)];
        let out = import_golden::render(&dir, &one, name, &job_yaml(name, &golden));
        report.push((name, worst_differences(&out, &golden)));
    }
    assert!(
        report.iter().all(|(_, w)| w.iter().all(|d| *d <= 1)),
        "largest pixel difference per candidate: {report:?}"
    );
}

#[test]
fn the_sd2_import_decides_v_prediction_by_running_the_filled_unet() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let out = import(
        &config(tmp.path(), &templates()),
        &fixture("sd2-v.safetensors"),
        "v",
        &models,
        &["--route", "template"],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("imported v (sd2, v_prediction)"), "{shown}");
    assert!(
        shown.contains("deciding the prediction type (AUTOMATIC1111's test)"),
        "{shown}"
    );
    let unet = read_json(&models.join("v/unet/config.json"));
    assert_eq!(unet["upcast_attention"], true);
    assert_eq!(unet["sample_size"], 96);
    // the template (built for v-prediction) carries no answer: an epsilon template gives the same
    let eps = tmp.path().join("eps-templates");
    common::copy_dir(
        &templates().join(template_of("sd2")),
        &eps.join(template_of("sd2")),
    );
    let sched = eps
        .join(template_of("sd2"))
        .join("scheduler/scheduler_config.json");
    let mut s = read_json(&sched);
    s["prediction_type"] = "epsilon".into();
    std::fs::write(&sched, serde_json::to_vec(&s).unwrap()).unwrap();
    let dir = tmp.path().join("eps");
    std::fs::create_dir_all(&dir).unwrap();
    let out = import(
        &config(&dir, &eps),
        &fixture("sd2-v.safetensors"),
        "v2",
        &models,
        &["--route", "template"],
    );
    assert!(
        text(&out).contains("imported v2 (sd2, v_prediction)"),
        "{}",
        text(&out)
    );
    let s = read_json(&models.join("v2/scheduler/scheduler_config.json"));
    assert_eq!(s["prediction_type"], "v_prediction");
}

/// The committed template folder of `family`.
fn template_of(family: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(templates())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_prefix(family)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|sig| sig.len() == 12 && sig.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 1, "{names:?}");
    names.remove(0)
}

#[test]
fn an_imported_sdxl_base_hands_off_to_an_imported_refiner_as_diffusers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let models = import_all(
        tmp.path(),
        &[
            ("sdxl.safetensors", "sdxl"),
            ("sdxl-refiner.safetensors", "sdxl-refiner"),
        ],
    );
    check_handoff(tmp.path(), &models, "sdxl-refiner");
}

#[test]
fn a_refiner_with_loras_fused_through_a_template_takes_over_as_diffusers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), &templates());
    let mut models = import_all(tmp.path(), &[("sdxl.safetensors", "sdxl")]);
    let refiner = "sdxl-refiner-lora";
    let folder = import_with_loras(&config, &tmp.path().join("models"), refiner);
    models.push((refiner.to_string(), folder));
    check_handoff(tmp.path(), &models, refiner);
}

/// The hand-off golden of `refiner` rendered over `models` (its base and refiner): within 1/255.
fn check_handoff(tmp: &Path, models: &[(String, PathBuf)], refiner: &str) {
    let handoff = import_golden::handoff(refiner);
    let job = import_golden::handoff_job(&handoff, refiner);
    let dir = tmp.join("render");
    std::fs::create_dir_all(&dir).unwrap();
    let out = import_golden::render(&dir, models, "handoff", &job);
    let worst = worst_differences(&out, &handoff);
    assert!(worst.iter().all(|d| *d <= 1), "{refiner}: {worst:?}");
}

/// The UNet's output on fixed inputs (sample, timestep 500, text conditioning and SDXL's added
/// conditioning from a sine), through the project's ONNX Runtime on the CPU.
fn unet_output(folder: &Path) -> Vec<f32> {
    use sdspool::runtime::signature::Signature;
    use sdspool::runtime::tensors::{extract_float, float_tensor_from, timestep_tensor};
    let mut loaded = common::runtime()
        .session(&folder.join("unet/model.onnx"), 0)
        .unwrap();
    let signature = Signature::of(&loaded.session);
    let mut inputs: Vec<(String, ort::value::DynValue)> = Vec::new();
    for port in &signature.inputs {
        let value = if port.name == "timestep" {
            timestep_tensor(500.0, port.elem, port.rank(), 1).unwrap()
        } else {
            let shape: Vec<usize> = match port.name.as_str() {
                "sample" => vec![1, 4, 8, 8],
                "encoder_hidden_states" => vec![1, 77, port.dims[2] as usize],
                _ => port.dims.iter().map(|d| (*d).max(1) as usize).collect(),
            };
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            float_tensor_from(&shape, &data, port.elem).unwrap()
        };
        inputs.push((port.name.clone(), value));
    }
    let outputs = loaded.run(inputs).unwrap();
    extract_float(&outputs[0])
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn template_and_python_imports_give_the_same_unet_output() {
    let tmp = tempfile::tempdir().unwrap();
    let models = import_all(tmp.path(), &FAMILIES);
    for (name, folder) in &models {
        let ours = unet_output(folder);
        let python = unet_output(&fixture(&format!("models/{name}")));
        assert_eq!(ours.len(), python.len(), "{name}");
        let worst = ours
            .iter()
            .zip(&python)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = python.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: largest difference {worst:e}, outputs up to {scale}");
        assert!(
            scale > 0.0 && worst <= 1e-5 * scale.max(1.0),
            "{name}: {worst} (outputs up to {scale})"
        );
    }
}

// ------------------------------------------------------------------ when no template serves

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// sd15.safetensors with `key`'s shape written as `shape` (same bytes, another layout).
fn reshaped_sd15(dir: &Path, key: &str, shape: &[u64]) -> PathBuf {
    let bytes = std::fs::read(fixture("sd15.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.get_mut(key).expect("the key")["shape"] = serde_json::json!(shape);
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[8 + n..]);
    let path = dir.join("reshaped.safetensors");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn a_checkpoint_that_fits_no_template_is_refused_by_route_template_and_goes_to_python_by_auto() {
    const KEY: &str = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight";
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), &templates());
    let models = tmp.path().join("models");
    let ckpt = reshaped_sd15(tmp.path(), KEY, &[32, 37]);
    let out = import(&config, &ckpt, "odd", &models, &["--route", "template"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("reshaped.safetensors: --route template: no import template fits")
            && shown.contains(&format!("{KEY} is [32, 37], the template's [37, 32]")),
        "{shown}"
    );
    assert!(
        common::names(&models).is_empty(),
        "{:?}",
        common::names(&models)
    );

    // auto: the Python conversion (replayed), saying why
    let mut list = vec!["--route".to_string(), "auto".into()];
    list.extend(import_golden::replay("sd15"));
    let out = import(&config, &ckpt, "odd", &models, &args(&list));
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("through Python: no import template fits") && shown.contains(KEY),
        "{shown}"
    );
    assert!(shown.contains("exporting to ONNX (optimum)"), "{shown}");
    assert_eq!(common::names(&models), ["odd"]);
}

#[test]
fn auto_takes_the_python_route_without_templates_and_for_what_templates_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("no-templates");
    std::fs::create_dir_all(&empty).unwrap();
    let config = config(tmp.path(), &empty);
    let models = tmp.path().join("models");
    let out = import(
        &config,
        &fixture("sd15.safetensors"),
        "a",
        &models,
        &args(&import_golden::replay("sd15")),
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("through Python: no import template fits: no sd15 template in"),
        "{shown}"
    );
    let source = read_json(&models.join("a/sdspool-source.json"));
    assert!(source.get("route").is_none(), "{source}");

    // a fitting template, but --fp16 asked: Python with auto, a refusal with --route template
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    let config = self::config(&b, &templates());
    let mut list = vec!["--fp16".to_string()];
    list.extend(import_golden::replay("sd15-fp16"));
    let out = import(
        &config,
        &fixture("sd15.safetensors"),
        "b",
        &models,
        &args(&list),
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("the template route cannot do --fp16"),
        "{shown}"
    );
    let out = import(
        &config,
        &fixture("sd15.safetensors"),
        "c",
        &models,
        &["--fp16", "--route", "template"],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("--route template: the template route cannot do --fp16"),
        "{shown}"
    );
}

#[test]
fn a_truncated_checkpoint_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), &templates());
    let models = tmp.path().join("models");
    let bytes = std::fs::read(fixture("sd15.safetensors")).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = import(&config, &cut, "cut", &models, &["--route", "template"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("cut.safetensors: truncated: tensor"),
        "{shown}"
    );
    assert!(common::names(&models).is_empty());
}

#[test]
fn a_corrupt_template_json_is_named_with_its_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("templates");
    let name = template_of("sd15");
    common::copy_dir(&templates().join(&name), &mine.join(&name));
    let file = mine.join(&name).join("template.json");
    let mut json = read_json(&file);
    json["parts"]["unet"]["tensors"][3]["length"] = 12.into();
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let config = config(tmp.path(), &mine);
    let models = tmp.path().join("models");
    let ckpt = fixture("sd15.safetensors");
    let out = import(&config, &ckpt, "x", &models, &["--route", "template"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    let named = format!("{}: `parts.unet.tensors[3].length` is 12", file.display());
    assert!(shown.contains(&named), "{shown}");
    // auto goes through Python, saying why
    let out = import(
        &config,
        &ckpt,
        "x",
        &models,
        &args(&import_golden::replay("sd15")),
    );
    let shown = text(&out);
    assert!(out.status.success() && shown.contains(&named), "{shown}");
}

// ------------------------------------------------------------------ --build-template

/// A tool folder whose build_import_template.py (run by `sh`, standing in for Python as the
/// replayed transcripts do for the conversion) copies the committed sd15 template into its
/// output folder and reports it with the builder's events; `fail`: it reports an error instead.
fn fake_builder(dir: &Path, fail: bool) -> PathBuf {
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(tools.join("import_checkpoint.py"), "").unwrap();
    let name = template_of("sd15");
    let body = if fail {
        r#"echo '{"event": "error", "kind": "template_failed", "file": "'"$1"'", "message": "an initializer matches two tensors", "keys": []}'; exit 2"#.to_string()
    } else {
        format!(
            "mkdir -p \"$2\" && cp -r '{}' \"$2/{name}\"\n\
             echo '{{\"event\": \"stage\", \"stage\": \"map\", \"state\": \"done\", \"seconds\": 0.5}}'\n\
             echo '{{\"event\": \"done\", \"out\": \"'\"$2/{name}\"'\"}}'",
            templates().join(&name).display()
        )
    };
    std::fs::write(tools.join("build_import_template.py"), body).unwrap();
    tools
}

fn import_with_builder(config: &Path, tools: &Path, models: &Path, name: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(config)
        .arg("import")
        .arg(fixture("sd15.safetensors"))
        .args(["--name", name, "--build-template", "--tools"])
        .arg(tools)
        .arg("--models-dir")
        .arg(models)
        .env("SDSPOOL_LOG", "warn")
        .env("SDSPOOL_PYTHON", "/bin/sh")
        .output()
        .unwrap()
}

#[test]
fn build_template_builds_one_when_none_fits_then_imports_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("templates");
    let config = config(tmp.path(), &mine);
    let models = tmp.path().join("models");
    let tools = fake_builder(tmp.path(), false);
    let out = import_with_builder(&config, &tools, &models, "built");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("no import template fits; building one into")
            && shown.contains("building the import template: map")
            && shown.contains("built the import template")
            && shown.contains("imported built (sd15, epsilon)"),
        "{shown}"
    );
    let source = read_json(&models.join("built/sdspool-source.json"));
    assert_eq!(source["template"], template_of("sd15").as_str());
    // now one fits: the next import goes through it without building
    let out = import_with_builder(&config, &tools, &models, "again");
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        !shown.contains("building") && shown.contains("through the import template"),
        "{shown}"
    );
    // the builder's refusal is shown, and nothing is left
    let failing = fake_builder(&tmp.path().join("failing"), true);
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = import_with_builder(
        &self::config(&empty, &empty.join("t")),
        &failing,
        &models,
        "no",
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("template_failed: an initializer matches two tensors"),
        "{shown}"
    );
    assert_eq!(common::names(&models), ["again", "built"]);
}

// ------------------------------------------------------------------ --vae

/// Writes a safetensors file of sd15.safetensors' tensors chosen and renamed by `rename`, their
/// values negated where `negate` says so (a float32 sign flip).
fn sd15_variant(
    path: &Path,
    rename: impl Fn(&str) -> Option<String>,
    negate: impl Fn(&str) -> bool,
) {
    let bytes = std::fs::read(fixture("sd15.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (mut out_header, mut data) = (serde_json::Map::new(), Vec::new());
    for (key, t) in &header {
        let Some(name) = rename(key).filter(|_| key != "__metadata__") else {
            continue;
        };
        let [start, end] = [0, 1].map(|i| t["data_offsets"][i].as_u64().unwrap() as usize + 8 + n);
        let mut values = bytes[start..end].to_vec();
        if negate(key) {
            assert_eq!(t["dtype"], "F32");
            values.chunks_exact_mut(4).for_each(|v| v[3] ^= 0x80);
        }
        let at = data.len();
        data.extend(values);
        out_header.insert(
            name,
            serde_json::json!({"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [at, data.len()]}),
        );
    }
    let text = serde_json::to_vec(&out_header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

#[test]
fn a_replacement_vae_takes_the_place_of_the_checkpoints_own() {
    const VAE: &str = "first_stage_model.";
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path(), &templates());
    let models = tmp.path().join("models");
    // the VAE file people download (LDM keys), with other weights than the checkpoint's
    let vae = tmp.path().join("vae-ldm.safetensors");
    sd15_variant(&vae, |k| k.strip_prefix(VAE).map(str::to_string), |_| true);
    // the checkpoint with that VAE in it: what the import with --vae must equal
    let merged = tmp.path().join("merged.safetensors");
    sd15_variant(&merged, |k| Some(k.to_string()), |k| k.starts_with(VAE));
    let sd15 = fixture("sd15.safetensors");
    let vae_arg = vae.display().to_string();
    let template = ["--route", "template"];
    for (ckpt, name, extra) in [
        (&sd15, "with-vae", vec!["--vae", vae_arg.as_str()]),
        (&merged, "merged", vec![]),
        (&sd15, "plain", vec![]),
    ] {
        let mut list = template.to_vec();
        list.extend(extra);
        let out = import(&config, ckpt, name, &models, &list);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    for part in ["vae_decoder", "vae_encoder", "unet", "text_encoder"] {
        let data = |name: &str| {
            std::fs::read(models.join(name).join(part).join("model.onnx_data")).unwrap()
        };
        assert!(data("with-vae") == data("merged"), "{part}");
        assert_eq!(
            data("with-vae") == data("plain"),
            !part.starts_with("vae"),
            "{part}"
        );
    }
    let source = read_json(&models.join("with-vae/sdspool-source.json"));
    assert_eq!(source["vae"]["file"], "vae-ldm.safetensors", "{source}");
    assert_eq!(source["vae"]["sha256"].as_str().unwrap().len(), 64);

    // diffusers' layout is the Python conversion's
    let diffusers = tmp.path().join("vae-diffusers.safetensors");
    sd15_variant(
        &diffusers,
        |k| {
            k.strip_prefix("first_stage_model.encoder.down.")
                .map(|rest| format!("encoder.down_blocks.{rest}"))
        },
        |_| false,
    );
    let out = import(
        &config,
        &sd15,
        "d",
        &models,
        &["--route", "template", "--vae", diffusers.to_str().unwrap()],
    );
    let shown = text(&out);
    assert!(
        !out.status.success()
            && shown.contains("the template route cannot do --vae in diffusers' layout"),
        "{shown}"
    );
}

#[test]
fn templates_are_found_in_the_models_folder_by_default_and_relative_to_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let name = template_of("sd15");
    common::copy_dir(
        &templates().join(&name),
        &models.join(".templates").join(&name),
    );
    let mut c = TestConfig::daemon(tmp.path());
    c.rerank = None;
    let plain = c.write(tmp.path());
    let sd15 = fixture("sd15.safetensors");
    let out = import(&plain, &sd15, "a", &models, &["--route", "template"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        common::names(&models),
        [".templates", "a"],
        "no staging folder left"
    );
    // `import.templates` relative to the configuration file's folder
    let other = tmp.path().join("conf");
    std::fs::create_dir_all(other.join("tpl")).unwrap();
    common::copy_dir(&templates().join(&name), &other.join("tpl").join(&name));
    let path = c.write(&other);
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str("import:\n  templates: [tpl]\n");
    std::fs::write(&path, yaml).unwrap();
    let out = import(&path, &sd15, "b", &models, &["--route", "template"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(&format!("conf/tpl/{name}")), "{shown}");
}
