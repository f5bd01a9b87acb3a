//! The committed models load and validate; broken model folders are rejected with a message
//! that names the file and the field.

mod common;

use std::path::Path;

use common::{model_copy, model_dir, runtime};
use sdspool::engine::model::{Elem, Family, ModelError, SdModel};

fn load(dir: &Path) -> Result<SdModel, ModelError> {
    SdModel::load(runtime(), "test-model", dir, 0)
}

fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("{} should have been rejected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "expected {p:?} in the message:\n{text}");
    }
}

#[test]
fn committed_models_load_and_validate() {
    for (name, precision) in [
        ("tiny-sd", Elem::F32),
        ("tiny-sd-v", Elem::F32),
        ("tiny-sd-fp16", Elem::F16),
    ] {
        let m = load(&model_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.precision(), precision, "{name}");
        assert!(m.vae_encoder.is_some(), "{name} has a vae_encoder");
        for part in m.parts() {
            assert_eq!(part.feeding.float, precision, "{name} {}", part.component);
            assert_eq!(
                part.loaded.providers.serving(),
                "cpu",
                "{name} {}",
                part.component
            );
            let a = part
                .loaded
                .providers
                .assignment
                .as_ref()
                .expect("assignment is readable");
            assert!(
                a.nodes_per_provider
                    .get("CPUExecutionProvider")
                    .copied()
                    .unwrap_or(0)
                    > 0
            );
        }
        assert!(
            (m.folder.vae_scaling_factor - 0.18215).abs() < 1e-7,
            "{name}"
        );
        assert!(
            m.folder.vae_scaling_source.is_some(),
            "{name}: scaling factor read from the VAE config"
        );
    }
}

#[test]
fn optimum_signature_is_what_the_pipeline_feeds() {
    let m = load(&model_dir("tiny-sd")).unwrap();
    assert_eq!(m.text_encoder.feeding.aux, Elem::I64);
    assert_eq!(
        (m.unet.feeding.aux, m.unet.feeding.aux_rank),
        (Elem::F32, 0)
    );
    assert!(m.unet.signature.output("out_sample").is_some());
    assert!(m.vae_decoder.signature.input("latent_sample").is_some());
}

#[test]
fn missing_unet_names_the_file() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::remove_file(dir.join("unet/model.onnx")).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["test-model", "unet/model.onnx", "missing"],
    );
}

#[test]
fn missing_tokenizer_and_scheduler_config_are_named() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::remove_file(dir.join("tokenizer/merges.txt")).unwrap();
    let _ = std::fs::remove_file(dir.join("tokenizer/tokenizer.json"));
    assert_mentions(&load_err(&dir), &["tokenizer/merges.txt"]);

    let (_tmp2, dir2) = model_copy("tiny-sd");
    std::fs::remove_file(dir2.join("scheduler/scheduler_config.json")).unwrap();
    assert_mentions(
        &load_err(&dir2),
        &["scheduler/scheduler_config.json", "missing"],
    );
}

#[test]
fn renamed_input_names_file_and_field() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/unet_renamed_input.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &["unet/model.onnx", "input 'sample'", "'latents'"],
    );
}

#[test]
fn wrong_rank_names_file_and_field() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/unet_wrong_rank.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "unet/model.onnx",
            "input 'sample'",
            "rank 3",
            "expected rank 4",
        ],
    );
}

#[test]
fn mixed_precision_and_float_ids_are_rejected() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/unet_mixed_precision.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &["unet/model.onnx", "output 'out_sample'", "float16"],
    );

    let (_tmp2, dir2) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/text_encoder_float_ids.onnx"),
        dir2.join("text_encoder/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir2),
        &[
            "text_encoder/model.onnx",
            "input 'input_ids'",
            "int64 or int32",
        ],
    );
}

#[test]
fn corrupt_model_file_names_the_file() {
    let (_tmp, dir) = model_copy("tiny-sd");
    let unet = dir.join("unet/model.onnx");
    let bytes = std::fs::read(&unet).unwrap();
    std::fs::write(&unet, &bytes[..bytes.len() / 3]).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["unet/model.onnx", "could not load this model"],
    );
}

#[test]
fn missing_external_weights_name_the_model_file() {
    let (_tmp, dir) = model_copy("tiny-sd-fp16");
    assert!(
        dir.join("unet/model.onnx_data").is_file(),
        "tiny-sd-fp16's UNet keeps its weights in model.onnx_data"
    );
    std::fs::remove_file(dir.join("unet/model.onnx_data")).unwrap();
    assert_mentions(&load_err(&dir), &["unet/model.onnx", "model.onnx_data"]);
}

#[test]
fn bad_vae_scaling_factor_is_named() {
    let (_tmp, dir) = model_copy("tiny-sd");
    let config = dir.join("vae_decoder/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["scaling_factor"] = serde_json::json!("big");
    std::fs::write(&config, json.to_string()).unwrap();
    assert_mentions(
        &load_err(&dir),
        &["vae_decoder/config.json", "scaling_factor"],
    );
}

#[test]
fn text_encoder_from_another_pipeline_is_rejected() {
    // tiny-sd-v's text encoder is 48 wide; tiny-sd's UNet cross-attends to 32.
    let (_tmp, dir) = model_copy("tiny-sd");
    let other = model_dir("tiny-sd-v").join("text_encoder/model.onnx");
    std::fs::copy(other, dir.join("text_encoder/model.onnx")).unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "unet/model.onnx",
            "input 'encoder_hidden_states'",
            "hidden size 32",
            "produces 48",
        ],
    );
}

fn set_pipeline_class(dir: &Path, class: Option<&str>) {
    let index = dir.join("model_index.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    match class {
        Some(c) => json["_class_name"] = serde_json::json!(c),
        None => {
            json.as_object_mut().unwrap().remove("_class_name");
        }
    }
    std::fs::write(&index, json.to_string()).unwrap();
}

#[test]
fn family_comes_from_model_index_and_latent_channels_from_the_model() {
    for name in ["tiny-sd", "tiny-sd-v", "tiny-sd-fp16"] {
        let m = load(&model_dir(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.family(), Family::Sd, "{name}");
        assert_eq!(
            m.folder.pipeline_class.as_deref(),
            Some("StableDiffusionPipeline"),
            "{name}"
        );
        assert_eq!(m.latent_channels, 4, "{name}");
    }
}

#[test]
fn a_pipeline_class_sdspool_does_not_render_is_refused_naming_it() {
    let (_tmp, dir) = model_copy("tiny-sd");
    set_pipeline_class(&dir, Some("StableDiffusionXLPipeline"));
    assert_mentions(
        &load_err(&dir),
        &[
            "model_index.json",
            "`_class_name`",
            "\"StableDiffusionXLPipeline\"",
            "StableDiffusionPipeline",
        ],
    );
}

#[test]
fn model_index_without_a_class_is_read_as_sd() {
    let (_tmp, dir) = model_copy("tiny-sd");
    set_pipeline_class(&dir, None);
    let m = load(&dir).unwrap();
    assert_eq!((m.family(), m.folder.pipeline_class), (Family::Sd, None));
}

#[test]
fn unet_input_the_family_does_not_supply_names_the_part_and_the_input() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/unet_extra_input.onnx"),
        dir.join("unet/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "unet/model.onnx",
            "input 'text_embeds'",
            "sd family",
            "'encoder_hidden_states'",
        ],
    );
}

#[test]
fn vae_decoder_for_other_latent_channels_is_refused() {
    let (_tmp, dir) = model_copy("tiny-sd");
    std::fs::copy(
        common::root().join("tests/fixtures/signatures/vae_decoder_16_channels.onnx"),
        dir.join("vae_decoder/model.onnx"),
    )
    .unwrap();
    assert_mentions(
        &load_err(&dir),
        &[
            "vae_decoder/model.onnx",
            "input 'latent_sample'",
            "has 16 channels",
            "expected 4",
            "unet/model.onnx output 'out_sample'",
        ],
    );
}

#[test]
fn models_command_shows_each_models_family() {
    let config = common::fixture_config();
    let mut out = String::new();
    assert!(
        sdspool::app::commands::models::run(&config, runtime(), &mut out),
        "{out}"
    );
    for name in config.models.keys() {
        let section = out
            .split("\n\n")
            .find(|s| s.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("no section for {name} in:\n{out}"));
        assert!(
            section
                .contains("  ok: family sd (Stable Diffusion 1.x/2.x, StableDiffusionPipeline), ")
                && section.contains(" 4 latent channels, "),
            "{section}"
        );
    }
}
