//! The model-family seam: the denoising loop feeds the UNet whatever named conditioning inputs a
//! family's prompt encoding supplies, so a family with more conditioning (SDXL's `text_embeds`
//! and `time_ids`) needs no change to the loop.

mod common;

use std::ops::ControlFlow;
use std::time::Duration;

use ndarray::{ArrayD, IxDyn};
use sdspool::engine::model::family::{CondInputSpec, UnetGraph, sd};
use sdspool::engine::model::{Component, Elem, Feeding, Part, Signature};
use sdspool::engine::pipeline::denoise::denoise;
use sdspool::engine::pipeline::{CondInput, Conditioning, PipelineError};
use sdspool::engine::scheduler::{self, SchedulerConfig, SchedulerKind};

/// SD's UNet inputs plus an SDXL-style pooled embedding.
const GRAPH: UnetGraph = UnetGraph {
    sample: "sample",
    timestep: "timestep",
    conditioning: &[
        sd::ENCODER_HIDDEN_STATES,
        CondInputSpec {
            name: "text_embeds",
            rank: 2,
        },
    ],
    out_sample: "out_sample",
};

/// tests/fixtures/signatures/unet_extra_input.onnx: a stand-in UNet that takes `text_embeds`
/// besides SD's inputs; its `out_sample` is `sample` times the mean of `text_embeds`.
fn unet() -> Part {
    let file = common::root().join("tests/fixtures/signatures/unet_extra_input.onnx");
    let loaded = common::runtime().session(&file, 0).unwrap();
    let signature = Signature::of(&loaded.session);
    Part {
        component: Component::Unet,
        loaded,
        signature,
        feeding: Feeding {
            float: Elem::F32,
            aux: Elem::F32,
            aux_rank: 0,
        },
    }
}

/// `text_embeds` is `Some(value)` of every element of the prompt's row (the negative row is 0),
/// or `None` to leave the input out.
fn conditioning(guidance: Option<f32>, text_embeds: Option<f32>) -> Conditioning {
    let row = |shape: &[usize], v: f32| ArrayD::from_elem(IxDyn(shape), v);
    let mut inputs = vec![CondInput {
        name: sd::ENCODER_HIDDEN_STATES.name,
        cond: row(&[1, 7, 32], 0.5),
        uncond: guidance.map(|_| row(&[1, 7, 32], -0.5)),
    }];
    if let Some(v) = text_embeds {
        inputs.push(CondInput {
            name: "text_embeds",
            cond: row(&[1, 1280], v),
            uncond: guidance.map(|_| row(&[1, 1280], 0.0)),
        });
    }
    Conditioning {
        inputs,
        guidance,
        truncated_prompt: None,
        tokenize: Duration::ZERO,
    }
}

fn run(cond: &Conditioning) -> Result<ArrayD<f32>, PipelineError> {
    let config = SchedulerConfig::from_file(
        common::model_dir("tiny-sd").join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    let mut sched = scheduler::build(SchedulerKind::Ddim, &config, 3).unwrap();
    let latents = ArrayD::from_elem(IxDyn(&[2, 4, 3, 5]), 0.25);
    let mut steps = 0;
    let out = denoise(
        &mut unet(),
        &GRAPH,
        sched.as_mut(),
        latents,
        cond,
        &mut |_| unreachable!("DDIM with eta 0 draws no noise"),
        &mut |_| {
            steps += 1;
            ControlFlow::Continue(())
        },
    );
    assert!(out.is_err() || steps == 3, "{steps} steps");
    out
}

#[test]
fn the_loop_feeds_every_conditioning_input_the_family_supplies() {
    for guidance in [None, Some(7.5)] {
        let render = |v: f32| {
            run(&conditioning(guidance, Some(v)))
                .unwrap_or_else(|e| panic!("guidance {guidance:?}: {e}"))
        };
        let (one, two) = (render(1.0), render(2.0));
        assert_eq!(one.shape(), [2, 4, 3, 5]);
        assert_ne!(
            one, two,
            "guidance {guidance:?}: text_embeds did not reach the UNet"
        );
    }
}

#[test]
fn a_conditioning_without_the_extra_input_fails_in_onnx_runtime() {
    // The UNet needs text_embeds: what the loop feeds is what the conditioning carries.
    let e = run(&conditioning(None, None)).unwrap_err();
    assert!(
        matches!(e, PipelineError::Ort(_)) && e.to_string().contains("unet_extra_input.onnx"),
        "{e}"
    );
}

#[test]
fn guidance_without_a_negative_value_is_an_error_naming_the_input() {
    let mut cond = conditioning(Some(7.5), Some(1.0));
    cond.inputs[1].uncond = None;
    let e = run(&cond).unwrap_err();
    assert!(e.to_string().contains("text_embeds"), "{e}");
}
