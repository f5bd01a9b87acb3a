//! The UNet fed through ONNX Runtime's I/O binding (`execution.io_binding`, the default) and
//! through plain runs gives the same bits on the CPU, for every family and precision, across
//! batch sizes and conditioning that changes between steps; the bound buffers are kept per
//! shape. And the graph inputs read from an ONNX file without ONNX Runtime (for TensorRT's
//! profiles) are those ONNX Runtime reports.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use sdspool::engine::model::SdModel;
use sdspool::engine::pipeline::{Pipeline, RenderRequest};
use sdspool::engine::prompt::PromptSyntax;
use sdspool::runtime::graphs::GraphChoice;
use sdspool::runtime::onnx_inputs;
use sdspool::runtime::signature::Signature;

fn pipeline(name: &str) -> Pipeline {
    let m = SdModel::load(common::runtime(), name, &common::model_dir(name), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    Pipeline::new(m).unwrap_or_else(|e| panic!("{e}"))
}

fn render(pipe: &mut Pipeline, req: &RenderRequest, bound: bool) -> (Vec<u8>, Vec<f32>) {
    pipe.model.unet.loaded.io_binding = bound;
    let out = pipe
        .render(req, &mut |_| ControlFlow::Continue(()))
        .unwrap_or_else(|e| panic!("{e}"));
    let pixels = out.images.iter().flat_map(|i| i.as_raw().clone()).collect();
    (pixels, out.latents.iter().copied().collect())
}

#[test]
fn bound_and_plain_runs_give_the_same_bits_for_every_family() {
    for (name, steps, guidance) in [
        ("tiny-sd", 4, 7.5),
        ("tiny-sd-fp16", 3, 7.5),
        ("tiny-sd-v", 3, 1.0),
        ("tiny-sdxl", 3, 5.0),
        ("tiny-lcm", 2, 8.0),
    ] {
        let mut pipe = pipeline(name);
        // Three candidates in batches of two and one; AUTOMATIC1111's prompt editing changes
        // the conditioning half-way.
        let mut req = RenderRequest::new("a [red:blue:0.5] (cat:1.2) on a chair", vec![1, 2, 3]);
        req.negative_prompt = "blurry".into();
        req.prompt_syntax = PromptSyntax::A1111;
        req.steps = steps;
        req.guidance_scale = guidance;
        req.width = 64;
        req.height = 64;
        req.max_batch = 2;
        let plain = render(&mut pipe, &req, false);
        let bound = render(&mut pipe, &req, true);
        assert!(
            plain
                .1
                .iter()
                .zip(&bound.1)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: latents differ"
        );
        assert_eq!(plain.0, bound.0, "{name}: pixels differ");
        let again = render(&mut pipe, &req, true);
        assert_eq!(bound, again, "{name}: reused buffers change nothing");
    }
}

#[test]
fn bound_buffers_are_kept_per_shape_and_the_cpu_captures_no_graph() {
    let mut pipe = pipeline("tiny-sd");
    let shapes = |pipe: &Pipeline| -> Vec<Vec<usize>> {
        pipe.model
            .unet
            .loaded
            .bound_shapes()
            .iter()
            .map(|(s, choice)| {
                assert_eq!(*choice, GraphChoice::Off);
                s.inputs[0].shape.clone()
            })
            .collect()
    };
    let mut req = RenderRequest::new("a cat", vec![1, 2, 3]);
    req.steps = 2;
    req.width = 64;
    req.height = 64;
    req.max_batch = 2;
    render(&mut pipe, &req, true);
    assert_eq!(shapes(&pipe), [vec![4, 4, 8, 8], vec![2, 4, 8, 8]]);
    req.width = 128;
    req.seeds = vec![1];
    render(&mut pipe, &req, true);
    assert_eq!(
        shapes(&pipe),
        [vec![2, 4, 8, 8], vec![2, 4, 8, 16]],
        "the least recently used shape without a graph goes"
    );
}

fn onnx_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            onnx_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "onnx") {
            out.push(p);
        }
    }
}

#[test]
fn graph_inputs_read_from_the_file_are_what_onnx_runtime_reports() {
    let mut files = Vec::new();
    onnx_files(&common::root().join("onnx/models"), &mut files);
    onnx_files(
        &common::root().join("tests/fixtures/signatures"),
        &mut files,
    );
    assert!(files.len() > 30, "{} files", files.len());
    for file in files {
        let read = onnx_inputs::read(&file).unwrap_or_else(|e| panic!("{e}"));
        let session = common::runtime().session(&file, 0).unwrap();
        let sig = Signature::of(&session.session);
        assert_eq!(read.inputs, sig.inputs, "{}", file.display());
        // ONNX Runtime's shape inference may fix an output's dimension the file leaves open.
        let named = |ports: &[sdspool::runtime::signature::Port]| -> Vec<_> {
            ports
                .iter()
                .map(|p| (p.name.clone(), p.elem, p.rank()))
                .collect()
        };
        assert_eq!(
            named(&read.outputs),
            named(&sig.outputs),
            "{}",
            file.display()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("model.onnx");
    std::fs::write(&junk, b"\x3a\xff\xff\xff\xff\x0f").unwrap();
    let err = onnx_inputs::read(&junk).unwrap_err().to_string();
    assert!(
        err.contains("model.onnx: cannot read the graph inputs"),
        "{err}"
    );
}
