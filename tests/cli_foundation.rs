//! The `sdspool` binary: finding ONNX Runtime, configuration errors, and `sdspool models`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sdspool(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdspool"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("SDSPOOL_LOG", "warn");
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn missing_library_lists_every_place_tried_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let configured = tmp.path().join("nowhere/libonnxruntime.so.1.31.1");
    let from_env = tmp.path().join("also-missing/libonnxruntime.so");
    let config = write_config(
        tmp.path(),
        &format!(
            "onnxruntime:\n  library: {}\nmodels:\n  tiny:\n    path: {}\n",
            configured.display(),
            common::model_dir("tiny-sd").display()
        ),
    );
    let out = sdspool(&config, &["models"])
        .env("ORT_DYLIB_PATH", &from_env)
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        configured.display().to_string(),
        "onnxruntime.library in the config".to_string(),
        from_env.display().to_string(),
        "ORT_DYLIB_PATH".to_string(),
        tmp.path().join(".ort").display().to_string(),
        "make setup".to_string(),
        "does not exist".to_string(),
    ] {
        assert!(err.contains(&needle), "expected {needle:?} in:\n{err}");
    }
}

#[test]
fn a_file_that_is_not_a_library_is_reported_with_the_loader_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, "not an ELF file").unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            "onnxruntime:\n  library: {}\nmodels:\n  tiny:\n    path: x\n",
            fake.display()
        ),
    );
    let out = sdspool(&config, &["models"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("failed to load from `{}`", fake.display())),
        "{err}"
    );
}

#[test]
fn env_var_is_used_when_the_config_names_no_library() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort"))
        .expect("`make setup` installs ONNX Runtime into .ort/");
    let config = write_config(
        tmp.path(),
        &format!(
            "models:\n  tiny:\n    path: {}\n",
            common::model_dir("tiny-sd").display()
        ),
    );
    let out = sdspool(&config, &["models"])
        .env("ORT_DYLIB_PATH", &lib)
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{stdout}\n{err}");
    assert!(stdout.contains(&lib.display().to_string()), "{stdout}");
}

#[test]
fn models_shows_every_model_its_check_and_provider() {
    let out = sdspool(&common::root().join("config.yaml"), &["models"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{stdout}\n{err}");
    let config = sdspool::app::config::Config::load(&common::root().join("config.yaml")).unwrap();
    for name in config.models.keys() {
        let section: String = stdout
            .split("\n\n")
            .find(|s| s.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("no section for {name} in:\n{stdout}"))
            .to_string();
        assert!(section.contains("  ok: "), "{section}");
        for component in ["text_encoder", "unet", "vae_decoder", "vae_encoder"] {
            assert!(
                section.contains(component),
                "{component} missing in:\n{section}"
            );
        }
        assert_eq!(
            section
                .matches("serving: cpu (CPUExecutionProvider")
                .count(),
            4,
            "{section}"
        );
    }
    assert!(stdout.contains("ONNX Runtime 1.31"), "{stdout}");
}

#[test]
fn a_broken_model_fails_models_but_the_others_are_still_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            "onnxruntime:\n  library: {}\ndefault_model: good\nmodels:\n  good:\n    path: {}\n  broken:\n    path: {}\n",
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort"))
                .unwrap()
                .display(),
            common::model_dir("tiny-sd").display(),
            tmp.path().join("missing-model").display()
        ),
    );
    let out = sdspool(&config, &["models"]).output().unwrap();
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(
        stdout.contains("broken: ") && stdout.contains("FAILED: model `broken`: model folder"),
        "{stdout}"
    );
    assert!(
        stdout.contains("good (default): ") && stdout.contains("  ok: "),
        "{stdout}"
    );
}

#[test]
fn optimized_model_dir_makes_every_session_save_its_optimized_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("optimized");
    let config = write_config(
        tmp.path(),
        &format!(
            "onnxruntime:\n  library: {}\nexecution:\n  optimized_model_dir: optimized\nmodels:\n  tiny-sd:\n    path: {}\n",
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort"))
                .unwrap()
                .display(),
            common::model_dir("tiny-sd").display(),
        ),
    );
    let out = sdspool(&config, &["models"])
        .env("SDSPOOL_LOG", "info")
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{stdout}\n{err}");
    // Relative to the config file's folder; the model file's last two folders and its name.
    for part in ["text_encoder", "unet", "vae_decoder", "vae_encoder"] {
        let file = saved.join("tiny-sd").join(part).join("model.onnx");
        let len = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{err}", file.display()))
            .len();
        assert!(len > 0, "{} is empty", file.display());
        assert!(
            err.contains(&format!("optimized={}", file.display())),
            "no log line for {}:\n{err}",
            file.display()
        );
    }
    // Weights beside it (the layout that also takes models over 2 GB), and it loads again.
    let unet = saved.join("tiny-sd/unet/model.onnx");
    assert!(saved.join("tiny-sd/unet/model.onnx.data").is_file());
    common::runtime().session(&unet, 0).unwrap();
}

#[test]
fn config_errors_name_the_key_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        // unknown key
        (
            "models:\n  m:\n    path: x\nexecution:\n  providers: [cpu]\n  intra_thread: 2\n",
            &["`execution.intra_thread`", "line 6", "unknown field"][..],
        ),
        // wrong type
        (
            "models:\n  m:\n    path: x\nexecution:\n  intra_threads: lots\n",
            &["`execution.intra_threads`", "line 5"][..],
        ),
        // unknown provider
        (
            "models:\n  m:\n    path: x\nexecution:\n  providers: [cuda, gpu]\n",
            &[
                "`execution.providers[1]`",
                "line 5",
                "expected one of tensorrt",
            ][..],
        ),
        // default model that is not configured
        (
            "models:\n  m:\n    path: x\ndefault_model: other\n",
            &["line 4", "`default_model` names `other`"][..],
        ),
        // require_gpu without a GPU provider
        (
            "execution:\n  providers: [cpu]\n  require_gpu: true\nmodels:\n  m:\n    path: x\n",
            &["line 3", "`execution.require_gpu`"][..],
        ),
        // no models
        ("execution:\n  providers: [cpu]\n", &["models"][..]),
        // broken YAML
        ("models:\n  m: [\n", &["line 2"][..]),
    ];
    for (body, needles) in cases {
        let config = write_config(tmp.path(), body);
        let out = sdspool(&config, &["models"]).output().unwrap();
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{body}\n{err}");
        assert!(
            err.contains(&config.display().to_string()),
            "config path missing:\n{err}"
        );
        for n in needles {
            assert!(err.contains(n), "expected {n:?} for\n{body}\nin:\n{err}");
        }
    }
}

#[test]
fn require_gpu_on_a_cpu_build_is_a_startup_error_that_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
    let config = write_config(
        tmp.path(),
        &format!(
            "onnxruntime:\n  library: {}\nexecution:\n  providers: [tensorrt, cuda, cpu]\n  require_gpu: true\nmodels:\n  tiny:\n    path: {}\n",
            lib.display(),
            common::model_dir("tiny-sd").display()
        ),
    );
    let out = sdspool(&config, &["models"]).output().unwrap();
    let (stdout, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    for needle in [
        "text_encoder/model.onnx",
        "`execution.require_gpu` is true but no GPU provider serves this model",
        "it runs on cpu (CPUExecutionProvider",
        "cuda: not in this ONNX Runtime build",
        "make setup GPU=1",
    ] {
        assert!(stdout.contains(needle), "expected {needle:?} in:\n{stdout}");
    }
}
