//! A hand-made template and checkpoint: a constant, gaps, a transposed linear weight with a LoRA
//! delta, q/k/v rows of one OpenCLIP tensor, a float16 bias.

use std::path::Path;

use serde_json::json;

use super::fill::{self, Deltas};
use super::{Template, TemplateError, fit};
use crate::engine::checkpoint::header;
use crate::engine::checkpoint::names::Component;
use crate::engine::checkpoint::tensors::TensorFile;

const W: &str = "model.diffusion_model.input_blocks.1.1.proj_in.weight";
const QKV: &str = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight";
const B: &str = "model.diffusion_model.out.2.bias";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A safetensors file of (name, dtype, shape, bytes).
fn safetensors(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// W [2, 3] = 0..6; QKV [6, 2] = 10..22 (q rows 0..2, k 2..4, v 4..6); B [2] in float16.
fn checkpoint(dir: &Path) -> TensorFile {
    let path = dir.join("ckpt.safetensors");
    let w: Vec<f32> = (0..6).map(|v| v as f32).collect();
    let qkv: Vec<f32> = (10..22).map(|v| v as f32).collect();
    let b: Vec<u8> = [0.5f32, -1.5]
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    safetensors(
        &path,
        &[
            (W, "F32", vec![2, 3], f32_bytes(&w)),
            (QKV, "F32", vec![6, 2], f32_bytes(&qkv)),
            (B, "F16", vec![2], b),
            (
                "cond_stage_model.model.transformer.position_ids",
                "I64",
                vec![1],
                vec![0; 8],
            ),
            ("model_ema.decay", "F32", vec![], f32_bytes(&[0.9])),
        ],
    );
    TensorFile::open(header::read(&path).unwrap()).unwrap()
}

fn source(
    key: &str,
    rows: Option<[u64; 2]>,
    transpose: bool,
    module: &str,
    param: &str,
) -> serde_json::Value {
    let component = if key.starts_with("cond_stage") {
        "text_encoder"
    } else {
        "unet"
    };
    json!({"key": key, "rows": rows, "transpose": transpose, "component": component, "module": module, "param": param})
}

/// The template.json: unet data = [constant 2 floats][gap 4 bytes][W^T 6][B 2][tail 4 bytes];
/// text_encoder data = [k rows 2x2][q rows transposed 2x2].
fn template_json() -> serde_json::Value {
    let t = |name: &str, offset: u64, shape: Vec<u64>, source: serde_json::Value| {
        let length = shape.iter().product::<u64>() * 4;
        json!({"name": name, "offset": offset, "length": length, "dtype": "float32", "shape": shape, "source": source})
    };
    json!({
        "format": 1,
        "family": "sd2",
        "dtype": "float32",
        "checkpoint": {
            "required": {W: [2, 3], QKV: [6, 2], B: [2]},
            "ignored": []
        },
        "scheduler_config": "scheduler/scheduler_config.json",
        "parts": {
            "unet": {"data": "unet/model.onnx_data", "tensors": [
                t("const", 0, vec![2], serde_json::Value::Null),
                t("onnx::MatMul_1", 12, vec![3, 2], source(W, None, true, "down_blocks.0.attentions.0.proj_in", "weight")),
                // OpenCLIP's text_projection-like entry: filled, no diffusers parameter
                t("bias", 36, vec![2], json!({"key": B, "rows": null, "transpose": false, "component": null, "module": null, "param": null})),
            ]},
            "text_encoder": {"data": "text_encoder/model.onnx_data", "tensors": [
                t("k", 0, vec![2, 2], source(QKV, Some([2, 4]), false, "text_model.encoder.layers.0.self_attn.k_proj", "weight")),
                t("q", 16, vec![2, 2], source(QKV, Some([0, 2]), true, "text_model.encoder.layers.0.self_attn.q_proj", "weight")),
            ]}
        }
    })
}

/// A template folder: template.json, data files (mapped bytes zero), a graph and a config.
fn template_dir(dir: &Path, json: &serde_json::Value) -> std::path::PathBuf {
    let t = dir.join("sd2-000000000000");
    for part in ["unet", "text_encoder", "scheduler"] {
        std::fs::create_dir_all(t.join(part)).unwrap();
    }
    let mut unet = f32_bytes(&[7.0, 8.0]);
    unet.extend([0xAA; 4]);
    unet.extend(vec![0; 32]);
    unet.extend([0xBB; 4]);
    std::fs::write(t.join("unet/model.onnx_data"), unet).unwrap();
    std::fs::write(t.join("text_encoder/model.onnx_data"), vec![0; 32]).unwrap();
    std::fs::write(t.join("unet/model.onnx"), b"graph").unwrap();
    std::fs::write(t.join("scheduler/scheduler_config.json"), b"{}").unwrap();
    std::fs::write(
        t.join("template.json"),
        serde_json::to_vec_pretty(json).unwrap(),
    )
    .unwrap();
    t
}

fn floats(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn a_checkpoint_fills_a_copy_of_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = checkpoint(dir.path());
    let template = Template::read(&template_dir(dir.path(), &template_json())).unwrap();
    assert_eq!(fit::check(&template, &ckpt.header, None), Ok(()));
    let out = dir.path().join("out");
    fill::copy_folder(&template, &out).unwrap();
    assert!(!out.join("template.json").exists() && !out.join("unet/model.onnx_data").exists());
    assert_eq!(
        std::fs::read(out.join("unet/model.onnx")).unwrap(),
        b"graph"
    );
    let mut deltas = Deltas::new();
    deltas.insert(
        (Component::Unet, "down_blocks.0.attentions.0.proj_in".into()),
        vec![0.5; 6],
    );
    let stats = fill::fill(&template, &out, &mut ckpt, None, &deltas).unwrap();
    assert_eq!(stats.mapped, 4);
    // constant, gap, W + 0.5 transposed to [3, 2], B widened, tail
    let mut want = f32_bytes(&[7.0, 8.0]);
    want.extend([0xAA; 4]);
    want.extend(f32_bytes(&[0.5, 3.5, 1.5, 4.5, 2.5, 5.5]));
    want.extend(f32_bytes(&[0.5, -1.5]));
    want.extend([0xBB; 4]);
    assert_eq!(floats(&out.join("unet/model.onnx_data")), want);
    // k = rows 2..4 of QKV as they are; q = rows 0..2 transposed
    let mut want = f32_bytes(&[14.0, 15.0, 16.0, 17.0]);
    want.extend(f32_bytes(&[10.0, 12.0, 11.0, 13.0]));
    assert_eq!(floats(&out.join("text_encoder/model.onnx_data")), want);
}

#[test]
fn a_delta_that_matches_no_initializer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = checkpoint(dir.path());
    let template = Template::read(&template_dir(dir.path(), &template_json())).unwrap();
    let out = dir.path().join("out");
    fill::copy_folder(&template, &out).unwrap();
    let mut deltas = Deltas::new();
    deltas.insert(
        (Component::TextEncoder2, "text_model.nothing".into()),
        vec![1.0],
    );
    let e = fill::fill(&template, &out, &mut ckpt, None, &deltas).unwrap_err();
    assert!(
        matches!(e, TemplateError::UnusedDeltas { count: 1, .. }),
        "{e}"
    );
    // a delta of the wrong size names the data file, the initializer and the key
    let mut deltas = Deltas::new();
    deltas.insert(
        (Component::Unet, "down_blocks.0.attentions.0.proj_in".into()),
        vec![1.0; 4],
    );
    let e = fill::fill(&template, &out, &mut ckpt, None, &deltas)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unet/model.onnx_data") && e.contains("onnx::MatMul_1") && e.contains(W),
        "{e}"
    );
}

#[test]
fn a_checkpoint_of_another_shape_does_not_fit_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(dir.path());
    let mut json = template_json();
    json["checkpoint"]["required"][W] = json!([3, 2]);
    json["checkpoint"]["required"]["model.diffusion_model.extra.weight"] = json!([1]);
    json["parts"]["unet"]["tensors"][1]["shape"] = json!([2, 3]);
    let template = Template::read(&template_dir(dir.path(), &json)).unwrap();
    let misfit = fit::check(&template, &ckpt.header, None).unwrap_err();
    assert_eq!(
        misfit.missing,
        vec!["model.diffusion_model.extra.weight".to_string()]
    );
    let text = misfit.to_string();
    assert!(
        text.contains(W) && text.contains("[2, 3]") && text.contains("[3, 2]"),
        "{text}"
    );

    // a key under the template's prefixes that it does not know; position_ids and model_ema pass
    let mut json = template_json();
    json["checkpoint"]["required"]
        .as_object_mut()
        .unwrap()
        .remove(B);
    json["parts"]["unet"]["tensors"]
        .as_array_mut()
        .unwrap()
        .remove(2);
    let template = Template::read(&template_dir(dir.path(), &json)).unwrap();
    let misfit = fit::check(&template, &ckpt.header, None).unwrap_err();
    assert_eq!(misfit.unknown, vec![B.to_string()], "{misfit}");
    json["checkpoint"]["ignored"] = json!([B]);
    let template = Template::read(&template_dir(dir.path(), &json)).unwrap();
    assert_eq!(fit::check(&template, &ckpt.header, None), Ok(()));
}

fn read_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut json = template_json();
    edit(&mut json);
    let e = Template::read(&template_dir(dir.path(), &json)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("sd2-000000000000/template.json"), "{text}");
    text
}

#[test]
fn a_corrupt_template_json_is_refused_naming_the_file_and_the_field() {
    let e = read_error(|j| j["parts"]["unet"]["tensors"][1]["length"] = json!(20));
    assert!(e.contains("`parts.unet.tensors[1].length`"), "{e}");
    let e = read_error(|j| j["parts"]["unet"]["tensors"][2]["offset"] = json!(30));
    assert!(
        e.contains("`parts.unet.tensors[2].offset`") && e.contains("overlaps"),
        "{e}"
    );
    let e = read_error(|j| j["parts"]["unet"]["tensors"][1]["source"]["key"] = json!("x"));
    assert!(e.contains("`parts.unet.tensors[1].source.key`"), "{e}");
    let e =
        read_error(|j| j["parts"]["text_encoder"]["tensors"][0]["source"]["rows"] = json!([4, 8]));
    assert!(
        e.contains("`parts.text_encoder.tensors[0].source.rows`"),
        "{e}"
    );
    let e = read_error(|j| j["parts"]["unet"]["data"] = json!("../../etc/x"));
    assert!(e.contains("`parts.unet.data`"), "{e}");
    let e = read_error(|j| j["parts"]["unet"]["tensors"][0]["dtype"] = json!("int8"));
    assert!(e.contains("parts.unet.tensors[0].dtype"), "{e}");
    let e = read_error(|j| j["family"] = json!("sd3"));
    assert!(e.contains("`family`"), "{e}");
    let e = read_error(|j| j["format"] = json!(2));
    assert!(e.contains("`format`"), "{e}");
    let e = read_error(|j| {
        j["parts"]["unet"]["tensors"][1]["source"]
            .as_object_mut()
            .unwrap()
            .remove("transpose");
    });
    assert!(
        e.contains("parts.unet.tensors[1].source") && e.contains("transpose"),
        "{e}"
    );
}

#[test]
fn a_template_data_file_shorter_than_its_initializers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut ckpt = checkpoint(dir.path());
    let t = template_dir(dir.path(), &template_json());
    std::fs::write(t.join("text_encoder/model.onnx_data"), vec![0; 20]).unwrap();
    let template = Template::read(&t).unwrap();
    let out = dir.path().join("out");
    fill::copy_folder(&template, &out).unwrap();
    let e = fill::fill(&template, &out, &mut ckpt, None, &Deltas::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("text_encoder/model.onnx_data") && e.contains("initializer q ends at byte 32"),
        "{e}"
    );
}
