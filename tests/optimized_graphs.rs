//! The graph-optimisation step (onnx/optimize.py) on the CPU: onnx/models/tiny-sd-opt is
//! tiny-sd run through `onnx/optimize.py onnx/models/tiny-sd onnx/models/tiny-sd-opt --target cpu`
//! (fused MultiHeadAttention, LayerNorm and SkipLayerNorm, float32). It loads as it is and renders
//! the same jobs as the plain folder within the parity tests' tolerance (final latents 1e-4
//! relative L2 error, 8-bit pixels within 1).

mod common;

use std::ops::ControlFlow;

use ndarray::ArrayD;
use sdspool::engine::model::{Elem, SdModel};
use sdspool::engine::pipeline::{Pipeline, RenderRequest, Rendered};

const PLAIN: &str = "tiny-sd";
const OPTIMIZED: &str = "tiny-sd-opt";

fn pipeline(name: &str) -> Pipeline {
    let m = SdModel::load(common::runtime(), name, &common::model_dir(name), 0)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Pipeline::new(m).unwrap()
}

fn rel_l2(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

fn max_pixel_diff(a: &Rendered, b: &Rendered) -> i32 {
    assert_eq!(a.images.len(), b.images.len());
    let mut worst = 0;
    for (x, y) in a.images.iter().zip(&b.images) {
        assert_eq!(x.dimensions(), y.dimensions());
        for (p, q) in x.pixels().zip(y.pixels()) {
            for c in 0..3 {
                worst = worst.max((i32::from(p[c]) - i32::from(q[c])).abs());
            }
        }
    }
    worst
}

fn render(pipe: &mut Pipeline, req: &RenderRequest) -> Rendered {
    pipe.render(req, &mut |_| ControlFlow::Continue(()))
        .unwrap()
}

#[test]
fn optimized_cpu_graphs_render_like_the_plain_ones() {
    let mut plain = pipeline(PLAIN);
    let mut optimized = pipeline(OPTIMIZED);
    // (scheduler, steps, width, height): two schedulers, square and not, two latent sizes.
    for (scheduler, steps, width, height) in [("euler_a", 7, 64, 64), ("pndm", 5, 128, 96)] {
        let mut req = RenderRequest::new("a photo of a cat", vec![42, 43]);
        req.steps = steps;
        req.scheduler = Some(scheduler.parse().unwrap());
        req.width = width;
        req.height = height;
        let want = render(&mut plain, &req);
        let got = render(&mut optimized, &req);
        let err = rel_l2(&got.latents, &want.latents);
        let pixels = max_pixel_diff(&got, &want);
        println!("{scheduler} {width}x{height}: latents {err:.2e}, pixels {pixels}");
        // NaN fails too.
        assert!(
            err <= 1e-4,
            "{scheduler} {width}x{height}: latent rel L2 {err:e}"
        );
        assert!(
            pixels <= 1,
            "{scheduler} {width}x{height}: pixels differ by {pixels}/255"
        );
    }
}

#[test]
fn optimized_folder_is_float32_with_every_unet_attention_fused() {
    let m = SdModel::load(
        common::runtime(),
        OPTIMIZED,
        &common::model_dir(OPTIMIZED),
        0,
    )
    .unwrap();
    assert_eq!(m.precision(), Elem::F32);
    for part in m.parts() {
        assert_eq!(part.loaded.providers.serving(), "cpu", "{}", part.component);
    }
    // The operator types are plain strings in the protobuf: the plain UNet computes attention
    // with MatMul/Softmax, the optimized one has no Softmax left and fused attention instead.
    let unet = |name: &str| std::fs::read(common::model_dir(name).join("unet/model.onnx")).unwrap();
    let has = |bytes: &[u8], what: &str| bytes.windows(what.len()).any(|w| w == what.as_bytes());
    let (plain, optimized) = (unet(PLAIN), unet(OPTIMIZED));
    assert!(has(&plain, "Softmax") && !has(&plain, "MultiHeadAttention"));
    assert!(has(&optimized, "MultiHeadAttention") && has(&optimized, "com.microsoft"));
    assert!(
        !has(&optimized, "Softmax"),
        "an attention block of the optimized UNet was left unfused"
    );
}
