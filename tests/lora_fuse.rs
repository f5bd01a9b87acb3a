//! engine::checkpoint::lora_fuse against diffusers' own fusion of the same fixture LoRAs
//! (tests/golden/lora, written by onnx/golden_lora_deltas.py: fused minus unfused parameters).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sdspool::engine::checkpoint::lora_fuse::{self, Deltas};
use sdspool::engine::checkpoint::names::Component;
use sdspool::engine::checkpoint::{Family, header};

const TOLERANCE: f32 = 1e-6;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn component(name: &str) -> Component {
    match name {
        "unet" => Component::Unet,
        "text_encoder" => Component::TextEncoder,
        "text_encoder_2" => Component::TextEncoder2,
        other => panic!("golden component {other}"),
    }
}

fn case(name: &str) -> serde_json::Value {
    let path = root().join("tests/golden/lora/index.json");
    let text = std::fs::read_to_string(&path).expect("tests/golden/lora/index.json");
    let index: serde_json::Value = serde_json::from_str(&text).expect("index.json is JSON");
    index["cases"][name].clone()
}

/// (component, module) -> (shape, golden delta).
fn golden(case: &serde_json::Value) -> BTreeMap<(Component, String), (Vec<u64>, Vec<f32>)> {
    let file = root()
        .join("tests/golden/lora")
        .join(case["deltas"].as_str().unwrap());
    let all: ndarray::Array1<f32> = ndarray_npy::read_npy(&file).expect("golden deltas .npy");
    let all = all.as_slice().unwrap();
    let mut out = BTreeMap::new();
    for m in case["modules"].as_array().unwrap() {
        let shape: Vec<u64> = serde_json::from_value(m["shape"].clone()).unwrap();
        let offset = m["offset"].as_u64().unwrap() as usize;
        let len = shape.iter().product::<u64>() as usize;
        let key = (
            component(m["component"].as_str().unwrap()),
            m["module"].as_str().unwrap().to_string(),
        );
        out.insert(key, (shape, all[offset..offset + len].to_vec()));
    }
    out
}

fn fused(case: &serde_json::Value) -> Deltas {
    let checkpoint = header::read(&root().join(case["checkpoint"].as_str().unwrap())).unwrap();
    let family: Family = case["family"].as_str().unwrap().parse().unwrap();
    let loras: Vec<(PathBuf, f32)> = case["loras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                root().join(l[0].as_str().unwrap()),
                l[1].as_f64().unwrap() as f32,
            )
        })
        .collect();
    lora_fuse::deltas(&loras, &checkpoint, family).expect("the fixture LoRAs fuse")
}

fn compare(name: &str) {
    let case = case(name);
    let want = golden(&case);
    let got = fused(&case);
    let mut got_keys: Vec<_> = got.keys().cloned().collect();
    got_keys.sort();
    let want_keys: Vec<_> = want.keys().cloned().collect();
    assert_eq!(got_keys, want_keys, "{name}: the modules the LoRAs change");
    let mut worst = 0f32;
    for (key, (shape, values)) in &want {
        let delta = &got[key];
        assert_eq!(
            delta.len(),
            values.len(),
            "{name} {key:?} {shape:?}: length"
        );
        for (i, (g, w)) in delta.iter().zip(values).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= TOLERANCE,
                "{name} {key:?} [{i}]: {g} vs diffusers {w}"
            );
            worst = worst.max(err);
        }
    }
    // the goldens are not trivially small: a wrong scale would not slip under the tolerance
    let largest = want
        .values()
        .flat_map(|(_, v)| v.iter().map(|x| x.abs()))
        .fold(0f32, f32::max);
    assert!(
        largest > 1e-3,
        "{name}: golden deltas too small to test ({largest})"
    );
    eprintln!(
        "{name}: {} modules, worst |Rust - diffusers| {worst:e}",
        want.len()
    );
}

#[test]
fn sd15_kohya_and_peft_loras_fuse_as_diffusers_does() {
    compare("sd15");
}

#[test]
fn sdxl_kohya_and_peft_loras_fuse_as_diffusers_does() {
    compare("sdxl");
}

/// Convolutions (3x3 and 1x1; kohya LoCon-style and PEFT, float16, alpha 3 at rank 4, a negative
/// weight) besides linear layers of the UNet and the text encoder.
#[test]
fn convolution_loras_fuse_as_diffusers_does() {
    compare("sd15-conv");
}

/// Which lora_alpha diffusers gives a layer: kohya layers partly with alpha (the others get the
/// most common), text-encoder layers without alpha mixing ranks, a PEFT file mixing ranks.
#[test]
fn alphas_and_ranks_mixed_within_a_file_scale_as_diffusers_does() {
    compare("sd15-alpha");
}

#[test]
fn a_lora_for_another_family_is_refused_by_name() {
    let fixtures = root().join("tests/fixtures/import");
    let checkpoint = header::read(&fixtures.join("sd15.safetensors")).unwrap();
    let lora = fixtures.join("lora-sdxl-kohya.safetensors");
    let err = lora_fuse::deltas(&[(lora.clone(), 1.0)], &checkpoint, Family::Sd15).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&lora.display().to_string()), "{text}");
    assert!(text.contains("SDXL"), "{text}");
    assert!(Path::new(&lora).exists());
}
