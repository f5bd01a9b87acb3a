//! `sdspool import` without Python: the header checks, family detection and LoRA checks on the
//! committed tiny single-file checkpoints (tests/fixtures/import, made by
//! onnx/build_checkpoint_fixtures.py), the refusals, the configuration update, and the stage driver
//! replaying the recorded transcripts of real conversions (onnx/golden_import.py) with the folders
//! those runs wrote. The replay stands in for the Python process only; everything around it (checks,
//! staging folder, rename into place, config edit) is the real command.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sdspool::engine::checkpoint::lora::{self, LoraLayout};
use sdspool::engine::checkpoint::{CheckpointError, Family, family, header};

fn fixture(name: &str) -> PathBuf {
    common::root().join("tests/fixtures/import").join(name)
}

fn read(name: &str) -> header::Header {
    header::read(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn each_fixture_is_detected_as_its_family() {
    for (file, want) in [
        ("sd15.safetensors", Family::Sd15),
        ("sd2-v.safetensors", Family::Sd2),
        ("sdxl.safetensors", Family::Sdxl),
        ("sdxl-refiner.safetensors", Family::SdxlRefiner),
    ] {
        assert_eq!(family::detect(&read(file)).unwrap(), want, "{file}");
    }
}

#[test]
fn a_lora_file_is_no_checkpoint() {
    let e = family::detect(&read("lora-sd15-kohya.safetensors")).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, CheckpointError::UnknownArchitecture { .. }),
        "{text}"
    );
    assert!(
        text.contains("lora-sd15-kohya.safetensors") && text.contains("lora_te_text_model"),
        "{text}"
    );
}

#[test]
fn loras_of_both_layouts_fit_their_family() {
    let sd15 = read("sd15.safetensors");
    let sdxl = read("sdxl.safetensors");
    let sd2 = read("sd2-v.safetensors");
    let refiner = read("sdxl-refiner.safetensors");
    for (file, ckpt, family, layout) in [
        (
            "lora-sd15-kohya.safetensors",
            &sd15,
            Family::Sd15,
            LoraLayout::Kohya,
        ),
        (
            "lora-sd15-peft.safetensors",
            &sd15,
            Family::Sd15,
            LoraLayout::Diffusers,
        ),
        (
            "lora-sdxl-kohya.safetensors",
            &sdxl,
            Family::Sdxl,
            LoraLayout::Kohya,
        ),
        (
            "lora-sdxl-peft.safetensors",
            &sdxl,
            Family::Sdxl,
            LoraLayout::Diffusers,
        ),
        (
            "lora-sd2-kohya.safetensors",
            &sd2,
            Family::Sd2,
            LoraLayout::Kohya,
        ),
        (
            "lora-sd2-peft.safetensors",
            &sd2,
            Family::Sd2,
            LoraLayout::Diffusers,
        ),
        // the refiner's only text encoder is text_encoder_2 (lora_te2_)
        (
            "lora-sdxl-refiner-kohya.safetensors",
            &refiner,
            Family::SdxlRefiner,
            LoraLayout::Kohya,
        ),
        (
            "lora-sdxl-refiner-peft.safetensors",
            &refiner,
            Family::SdxlRefiner,
            LoraLayout::Diffusers,
        ),
    ] {
        let fit = lora::check(&read(file), ckpt, family).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fit.layout, layout, "{file}");
        // attention q, k, v, out of every transformer block and text layer
        assert!(fit.layers >= 20, "{file}: {fit:?}");
    }
}

#[test]
fn a_lora_for_another_family_is_refused_with_its_keys() {
    let sd15 = read("sd15.safetensors");
    let sdxl = read("sdxl.safetensors");
    let e = lora::check(&read("lora-sd15-kohya.safetensors"), &sdxl, Family::Sdxl).unwrap_err();
    assert!(e.to_string().contains("a LoRA for SD 1.x/2.x"), "{e}");
    assert!(
        e.to_string()
            .contains("lora_te_text_model_encoder_layers_0"),
        "{e}"
    );
    let e = lora::check(&read("lora-sdxl-peft.safetensors"), &sd15, Family::Sd15).unwrap_err();
    assert!(e.to_string().contains("a LoRA for SDXL"), "{e}");
    // Same key names, other widths: an SD 1.x LoRA on an SD 2.x checkpoint.
    let sd2 = read("sd2-v.safetensors");
    let e = lora::check(&read("lora-sd15-peft.safetensors"), &sd2, Family::Sd2).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, CheckpointError::LoraMismatch { .. }), "{text}");
    assert!(
        text.contains("match no layer")
            && text.contains("cross-attention input is 32 wide, the checkpoint's 48"),
        "{text}"
    );
    assert!(
        text.contains("lora-sd15-peft.safetensors") && text.contains("unet."),
        "{text}"
    );
}

#[test]
fn a_lora_for_another_family_is_refused_on_the_refiner() {
    let refiner = read("sdxl-refiner.safetensors");
    // SD 1.x: one text encoder under lora_te_, which the refiner does not have
    let e = lora::check(
        &read("lora-sd15-kohya.safetensors"),
        &refiner,
        Family::SdxlRefiner,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, CheckpointError::LoraMismatch { .. }), "{text}");
    assert!(
        text.contains("lora-sd15-kohya.safetensors: LoRA does not fit the sdxl-refiner checkpoint")
            && text.contains("a LoRA for SD 1.x/2.x")
            && text.contains("lora_te_text_model_encoder_layers_0"),
        "{text}"
    );
    let e = lora::check(
        &read("lora-sd15-peft.safetensors"),
        &refiner,
        Family::SdxlRefiner,
    )
    .unwrap_err();
    assert!(e.to_string().contains("a LoRA for SD 1.x/2.x"), "{e}");
    // SDXL base: two text encoders, the first of which the refiner lacks
    for file in ["lora-sdxl-peft.safetensors", "lora-sdxl-kohya.safetensors"] {
        let e = lora::check(&read(file), &refiner, Family::SdxlRefiner).unwrap_err();
        assert!(
            e.to_string()
                .contains("a LoRA for the SDXL base (lora_te1_ / text_encoder. keys"),
            "{e}"
        );
    }
    // and the refiner's LoRA fits no SDXL base
    let e = lora::check(
        &read("lora-sdxl-refiner-peft.safetensors"),
        &read("sdxl.safetensors"),
        Family::Sdxl,
    )
    .unwrap_err();
    assert!(e.to_string().contains("match no layer"), "{e}");
}

/// A safetensors file with these (name, shape) F32 tensors of zeros.
fn write_safetensors(path: &Path, tensors: &[(&str, &[u64])]) {
    let mut json = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<u64>() * 4;
        json.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let text = serde_json::Value::Object(json).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.resize(out.len() + offset as usize, 0);
    std::fs::write(path, out).unwrap();
}

#[test]
fn keys_in_no_lora_layout_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("odd.safetensors");
    write_safetensors(
        &path,
        &[
            ("lora_unet_x.lora_down.weight", &[2, 4]),
            ("lora_unet_x.hada_w1_a", &[2, 4]),
        ],
    );
    let e = lora::check(
        &header::read(&path).unwrap(),
        &read("sd15.safetensors"),
        Family::Sd15,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("no LoRA layout") && e.to_string().contains("lora_unet_x.hada_w1_a"),
        "{e}"
    );
}

#[test]
fn an_inpainting_unet_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("inpaint.safetensors");
    write_safetensors(
        &path,
        &[(
            "model.diffusion_model.input_blocks.0.0.weight",
            &[4, 9, 3, 3],
        )],
    );
    let e = family::detect(&header::read(&path).unwrap()).unwrap_err();
    assert!(e.to_string().contains("inpainting"), "{e}");
}

// ------------------------------------------------------------------ the command

fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "# my setup\noutput_dir: out\nmodels:\n  # the test model\n  tiny-sd:\n    path: {}  # keep me\n\n# scoring off\n",
        common::model_dir("tiny-sd").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn import(config: &Path, args: &[&str]) -> Output {
    import_in(&common::root(), config, args)
}

fn import_in(cwd: &Path, config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&std::ffi::OsStr> = vec!["import".as_ref()];
    all.extend(args.iter().map(|a| std::ffi::OsStr::new(*a)));
    common::sdspool_without_python(cwd, config, &all)
}

fn text(out: &Output) -> String {
    common::output_text(out)
}

#[test]
fn a_recorded_import_lands_in_the_models_dir_and_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let ckpt = fixture("sd15.safetensors").display().to_string();
    let lora1 = format!("{}:0.8", fixture("lora-sd15-kohya.safetensors").display());
    let lora2 = format!("{}:0.5", fixture("lora-sd15-peft.safetensors").display());
    let mut args: Vec<String> = vec![
        ckpt.clone(),
        "--name".into(),
        "mine".into(),
        "--models-dir".into(),
        models.display().to_string(),
    ];
    args.extend(["--lora".into(), lora1, "--lora".into(), lora2]);
    args.extend(common::import_golden::replay("sd15-lora"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // `--config config.yaml`: a bare file name, as users type it
    let out = import_in(tmp.path(), Path::new("config.yaml"), &argv);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("imported mine (sd15, epsilon)"), "{shown}");
    assert!(shown.contains("added model mine to config.yaml"), "{shown}");
    assert!(
        shown.contains("fusing the LoRAs") && shown.contains("exporting to ONNX (optimum)"),
        "{shown}"
    );
    let folder = models.join("mine");
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("sdspool-source.json")).unwrap())
            .unwrap();
    assert_eq!(source["checkpoint"]["family"], "sd15");
    assert_eq!(source["loras"][0]["weight"], 0.8);
    assert!(folder.join("unet/model.onnx").is_file());
    assert_eq!(common::names(&models), ["mine"], "no staging folder left");
    let edited = std::fs::read_to_string(&config).unwrap();
    assert!(edited.starts_with("# my setup\n"), "{edited}");
    assert!(
        edited.contains("  # keep me\n  \"mine\":\n    path: \"models/mine\"\n\n# scoring off\n"),
        "{edited}"
    );
    assert!(
        edited.ends_with("default_model: \"tiny-sd\"\n"),
        "the one model stays the default: {edited}"
    );
    let parsed = sdspool::app::config::Config::load(&config).unwrap();
    assert_eq!(parsed.models["mine"].path, folder);

    // The name is taken now: refused before anything runs, then replaced with --replace.
    let again = import(&config, &argv);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("model folder exists; --replace"),
        "{}",
        text(&again)
    );
    let mut replace = argv.clone();
    replace.push("--replace");
    let out = import(&config, &replace);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already lists it"), "{}", text(&out));
    assert_eq!(common::names(&models), ["mine"]);
}

#[test]
fn a_pickled_ckpt_is_handed_to_the_conversion_which_finds_its_family() {
    // transcripts/sd15-ckpt.jsonl: a real run on sd15.ckpt (sd15.safetensors' tensors saved with
    // torch.save as {"state_dict": ...}). The header checks are for .safetensors; a .ckpt goes to
    // Python, and the family is the one the conversion detected.
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let mut args: Vec<String> = vec![
        fixture("sd15.ckpt").display().to_string(),
        "--name".into(),
        "pickled".into(),
        "--models-dir".into(),
        models.display().to_string(),
    ];
    args.extend(common::import_golden::replay("sd15-ckpt"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("sd15.ckpt: a pickled checkpoint cannot be checked without Python"),
        "{shown}"
    );
    assert!(
        shown.contains("imported pickled (sd15, epsilon)"),
        "{shown}"
    );
    let source: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join("pickled/sdspool-source.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(source["checkpoint"]["file"], "sd15.ckpt");
    assert_eq!(source["checkpoint"]["family"], "sd15");
    let parsed = sdspool::app::config::Config::load(&config).unwrap();
    assert_eq!(parsed.models["pickled"].path, models.join("pickled"));
}

#[test]
fn a_refiner_takes_its_own_loras_and_refuses_an_sd15_one_before_python() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let lora = |file: &str, weight: &str| format!("{}:{weight}", fixture(file).display());
    let base = |name: &str| -> Vec<String> {
        vec![
            fixture("sdxl-refiner.safetensors").display().to_string(),
            "--name".into(),
            name.into(),
            "--models-dir".into(),
            models.display().to_string(),
        ]
    };
    let mut args = base("styled-refiner");
    args.extend([
        "--lora".into(),
        lora("lora-sdxl-refiner-kohya.safetensors", "1.0"),
        "--lora".into(),
        lora("lora-sdxl-refiner-peft.safetensors", "0.8"),
    ]);
    args.extend(common::import_golden::replay("sdxl-refiner-lora"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("imported styled-refiner (sdxl-refiner, epsilon)")
            && shown.contains("fusing the LoRAs"),
        "{shown}"
    );
    let mut args = base("wrong");
    args.extend(["--lora".into(), lora("lora-sd15-kohya.safetensors", "0.5")]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(
            "lora-sd15-kohya.safetensors: LoRA does not fit the sdxl-refiner checkpoint: a LoRA for SD 1.x/2.x"
        ),
        "{shown}"
    );
    assert!(!shown.contains("python-must-not-run"), "{shown}");
    assert_eq!(common::names(&models), ["styled-refiner"]);
}

#[test]
fn a_refusal_of_the_conversion_is_shown_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let before = std::fs::read_to_string(&config).unwrap();
    let ckpt = fixture("sd15-truncated.ckpt").display().to_string();
    let mut args: Vec<String> = vec![
        ckpt,
        "--name".into(),
        "cut".into(),
        "--models-dir".into(),
        models.display().to_string(),
    ];
    args.extend(common::import_golden::replay("ckpt-truncated"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("cannot be checked without Python"),
        "{shown}"
    );
    assert!(shown.contains("sd15-truncated.ckpt: truncated"), "{shown}");
    assert!(
        common::names(&models).is_empty(),
        "{:?}",
        common::names(&models)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

#[test]
fn bad_inputs_are_refused_before_any_python_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models").display().to_string();
    let cut = tmp.path().join("cut.safetensors");
    let bytes = std::fs::read(fixture("sd15.safetensors")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let sd15 = fixture("sd15.safetensors").display().to_string();
    let sdxl_lora = fixture("lora-sdxl-kohya.safetensors").display().to_string();
    let lora_as_ckpt = fixture("lora-sd15-peft.safetensors").display().to_string();
    let cut = cut.display().to_string();
    // a tool folder with the import script but without onnx/optimize.py
    let tools_dir = tmp.path().join("tools");
    std::fs::create_dir(&tools_dir).unwrap();
    std::fs::write(tools_dir.join("import_checkpoint.py"), "").unwrap();
    let tools = tools_dir.display().to_string();
    let cases: [(Vec<&str>, &[&str]); 6] = [
        (
            vec![&cut, "--name", "a"],
            &["cut.safetensors: truncated", "holds"],
        ),
        (
            vec![&lora_as_ckpt, "--name", "a"],
            &["lora-sd15-peft.safetensors: unknown architecture"],
        ),
        (
            vec![&sd15, "--name", "a", "--lora", &sdxl_lora],
            &[
                "lora-sdxl-kohya.safetensors: LoRA does not fit the sd15 checkpoint",
                "a LoRA for SDXL",
            ],
        ),
        (
            vec![&sd15, "--name", "tiny-sd"],
            &["already has a model named tiny-sd"],
        ),
        (vec![&sd15, "--name", "../up"], &["--name \"../up\""]),
        (
            vec![&sd15, "--name", "a", "--optimize", "--tools", &tools],
            &["optimize.py: --optimize needs it"],
        ),
    ];
    for (args, wants) in cases {
        let mut argv = args.clone();
        argv.extend(["--models-dir", &models]);
        let out = import(&config, &argv);
        let shown = text(&out);
        assert!(!out.status.success(), "{args:?}: {shown}");
        for want in wants {
            assert!(shown.contains(want), "{args:?}: {want:?} not in {shown}");
        }
        assert!(!shown.contains("python-must-not-run"), "{shown}");
    }
}

#[test]
fn too_little_disk_for_the_estimate_is_refused_with_it() {
    // sd15's header with one more UNet tensor of 2.5 T weights (a sparse file: no disk used).
    let tmp = tempfile::tempdir().unwrap();
    let src = std::fs::read(fixture("sd15.safetensors")).unwrap();
    let n = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&src[8..8 + n]).unwrap();
    let data = (src.len() - 8 - n) as u64;
    let giant = 2_500_000_000_000u64;
    json.insert(
        "model.diffusion_model.giant.weight".into(),
        serde_json::json!({"dtype": "F32", "shape": [giant], "data_offsets": [data, data + giant * 4]}),
    );
    let text_json = serde_json::Value::Object(json).to_string();
    let path = tmp.path().join("huge.safetensors");
    let mut out = (text_json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text_json.as_bytes());
    out.extend_from_slice(&src[8 + n..]);
    std::fs::write(&path, &out).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    if f.set_len(out.len() as u64 + giant * 4).is_err() {
        eprintln!("this file system cannot hold a 10 TB sparse file; skipped");
        return;
    }
    let config = config_file(tmp.path());
    let models = tmp.path().join("models").display().to_string();
    let out = import(
        &config,
        &[
            path.to_str().unwrap(),
            "--name",
            "huge",
            "--models-dir",
            &models,
        ],
    );
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("not enough disk space: the import needs about 21.") && shown.contains("TB"),
        "{shown}"
    );
}

fn sd15_args(models: &Path, name: &str) -> Vec<String> {
    vec![
        fixture("sd15.safetensors").display().to_string(),
        "--name".into(),
        name.into(),
        "--models-dir".into(),
        models.display().to_string(),
    ]
}

#[test]
fn an_optimized_import_replayed_lands_with_its_fused_graphs() {
    // transcripts/sd15-optimized.jsonl: a real `import_checkpoint.py --optimize --target cpu` run
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let mut args = sd15_args(&models, "fast");
    args.extend([
        "--optimize".into(),
        "--optimize-target".into(),
        "cpu".into(),
    ]);
    args.extend(common::import_golden::replay("sd15-optimized"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    assert!(out.status.success(), "{}", text(&out));
    let folder = models.join("fast");
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("sdspool-source.json")).unwrap())
            .unwrap();
    assert_eq!(source["optimized"], true);
    let optimized: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("optimized.json")).unwrap())
            .unwrap();
    assert_eq!(optimized["target"], "cpu");
    assert_eq!(common::names(&models), ["fast"]);

    // a target that is neither, or one without --optimize, is refused before anything runs
    for bad in [
        vec!["--optimize", "--optimize-target", "gpu"],
        vec!["--optimize-target", "cpu"],
    ] {
        let mut args = sd15_args(&models, "other");
        args.extend(bad.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = import(&config, &argv);
        assert!(!out.status.success(), "{bad:?}");
        assert!(text(&out).contains("optimize"), "{}", text(&out));
    }
    assert_eq!(common::names(&models), ["fast"]);
}

/// Starts a replayed import slowed to `delay_ms` per event, and waits until its staging folder
/// holds the exported model (the export stage ended), i.e. until it is mid-import.
fn slow_import(config: &Path, models: &Path, delay_ms: u64) -> (std::process::Child, PathBuf) {
    let mut args = sd15_args(models, "slow");
    args.extend(common::import_golden::replay("sd15"));
    args.extend(["--replay-delay-ms".into(), delay_ms.to_string()]);
    let child = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(config)
        .arg("import")
        .args(&args)
        .env("SDSPOOL_LOG", "warn")
        .env("SDSPOOL_PYTHON", "/nonexistent/python-must-not-run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staging = models.join(format!(".slow.import-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !staging.join("slow/unet/model.onnx").is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never got to its export"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, staging)
}

fn send(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn sigterm_and_sigint_stop_an_import_and_remove_its_staging_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let before = std::fs::read_to_string(&config).unwrap();
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let (child, staging) = slow_import(&config, &models, 400);
        send(&child, signal);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("import stopped by SIG{signal}")),
            "{}",
            text(&out)
        );
        assert!(!staging.exists());
        assert!(
            common::names(&models).is_empty(),
            "{:?}",
            common::names(&models)
        );
    }
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

#[test]
fn the_next_import_removes_what_a_killed_import_left() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let (mut child, staging) = slow_import(&config, &models, 400);
    send(&child, "KILL");
    child.wait().unwrap();
    assert!(
        staging.is_dir(),
        "SIGKILL cannot be handled: the staging folder stays"
    );

    // an import elsewhere in the folder whose process is alive (this test's) is left alone
    let alive = models.join(format!(".busy.import-{}", std::process::id()));
    std::fs::create_dir_all(&alive).unwrap();
    let mut args = sd15_args(&models, "next");
    args.extend(common::import_golden::replay("sd15"));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = import(&config, &argv);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "removed {}, left by an import that was killed",
            staging.display()
        )),
        "{}",
        text(&out)
    );
    assert!(!staging.exists());
    let busy = format!(".busy.import-{}", std::process::id());
    assert_eq!(common::names(&models), [busy.as_str(), "next"]);
}

#[test]
fn sigterm_stops_the_whole_conversion_process_group() {
    // A stand-in for the Python tool (run by /bin/sh as $SDSPOOL_PYTHON): it starts a grandchild,
    // as import_checkpoint.py starts optimize.py, writes into its --out folder and waits. SIGTERM
    // to sdspool must end both processes and remove the staging folder they wrote into.
    let tmp = tempfile::tempdir().unwrap();
    let config = config_file(tmp.path());
    let models = tmp.path().join("models");
    let tools = tmp.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let pids = tmp.path().join("grandchild.pid");
    std::fs::write(
        tools.join("import_checkpoint.py"),
        "echo '{\"event\": \"stage\", \"stage\": \"detect\", \"state\": \"start\"}'\n\
         sleep 300 &\n\
         echo $! > \"$STANDIN_PIDS\"\n\
         mkdir -p \"$4\" && echo partial > \"$4/model_index.json\"\n\
         wait\n",
    )
    .unwrap();
    let mut args = sd15_args(&models, "slow");
    args.extend(["--tools".into(), tools.display().to_string()]);
    let child = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(&config)
        .arg("import")
        .args(&args)
        .env("SDSPOOL_LOG", "warn")
        .env("SDSPOOL_PYTHON", "/bin/sh")
        .env("STANDIN_PIDS", &pids)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staging = models.join(format!(".slow.import-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(staging.join("slow/model_index.json").is_file()
        && std::fs::read_to_string(&pids).is_ok_and(|p| p.ends_with('\n')))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let grandchild: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    send(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    assert!(!staging.exists());
    // killed; reparented and reaped by init (a zombie for a moment at most)
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone(grandchild) {
        assert!(
            std::time::Instant::now() < deadline,
            "the grandchild {grandchild} outlived the import"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
