//! Replays the golden scheduler runs of `onnx/golden_schedulers.py` (diffusers 0.39 itself)
//! with the Rust schedulers and the same synthetic model, and compares: timesteps (exact for
//! integer ones, 1e-6 relative for fractional ones), init_noise_sigma (1e-6 relative), which
//! steps draw noise, the first scaled model input, the latents after the first step and the
//! final latents (relative L2 error at most `TOLERANCE`), and `add_noise`.
//!
//! Regenerate the goldens with `onnx/.venv/bin/python onnx/golden_schedulers.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array4, Array5, ArrayD, ArrayViewD, Axis, IxDyn};
use ndarray_npy::read_npy;
use serde_json::Value;

use sdspool::engine::scheduler::{self, SchedulerConfig, SchedulerKind};

/// Largest accepted relative L2 error of latents against diffusers (the worst case seen is
/// about 6e-7; float32 rounding noise, mostly from torch's CPU sqrt/log/exp not being
/// correctly rounded).
const TOLERANCE: f64 = 2e-6;
/// The pipeline's requirement: the most a golden case may loosen `TOLERANCE` to, with a
/// written reason (`tolerance` and `tolerance_why` in index.json).
const PIPELINE_TOLERANCE: f64 = 1e-4;
/// Relative tolerance for fractional timesteps and init_noise_sigma.
const SCALAR_TOLERANCE: f64 = 1e-6;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/schedulers")
}

fn index() -> Value {
    let path = golden_dir().join("index.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn npy<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(file: &str) -> ndarray::Array<T, D> {
    let path = golden_dir().join(file);
    read_npy(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The stand-in UNet of the golden script, element-wise in float32:
/// `x·a + (x / (1 + x·x))·b + p[i]` with `a = 0.3 cos(t/300)`, `b = 0.25 + 0.1 sin(t/170)`,
/// `p[i] = 0.2 sin(i/7 + t/100)` (i the flat index), each coefficient rounded to float32.
fn synthetic_model(x: &ArrayViewD<'_, f32>, t: f64) -> ArrayD<f32> {
    let a = (0.3 * (t / 300.0).cos()) as f32;
    let b = (0.25 + 0.1 * (t / 170.0).sin()) as f32;
    let values: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let p = (0.2 * (i as f64 / 7.0 + t / 100.0).sin()) as f32;
            x * a + (x / (1.0 + x * x)) * b + p
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(x.shape()), values).expect("same shape")
}

/// ‖got − want‖ / ‖want‖ in float64.
fn rel_l2(got: &ArrayViewD<'_, f32>, want: &ArrayViewD<'_, f32>) -> f64 {
    assert_eq!(got.shape(), want.shape(), "shape mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want.iter()) {
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn config_of(case: &Value, name: &str) -> SchedulerConfig {
    let mut config = SchedulerConfig::from_value(&case["config"], name)
        .unwrap_or_else(|e| panic!("{name}: golden config rejected: {e}"));
    if let Some(eta) = case.get("eta").and_then(Value::as_f64) {
        config.eta = Some(eta);
    }
    config
}

/// Worst errors seen, per scheduler kind.
#[derive(Default)]
struct Worst(BTreeMap<String, (f64, String)>);

impl Worst {
    fn note(&mut self, kind: &str, err: f64, what: String) {
        let entry = self
            .0
            .entry(kind.to_string())
            .or_insert((0.0, String::new()));
        if err > entry.0 || entry.1.is_empty() {
            *entry = (err, what);
        }
    }

    fn print(&self, title: &str) {
        eprintln!("{title}");
        for (kind, (err, what)) in &self.0 {
            eprintln!("  {kind:16} {err:.3e}  ({what})");
        }
    }
}

#[test]
fn denoising_loops_match_diffusers() {
    let index = index();
    let init: Array4<f32> = npy(index["init_latents"].as_str().expect("init_latents"));
    let bank: Array5<f32> = npy(index["noise_bank"].as_str().expect("noise_bank"));
    let cases = index["cases"].as_array().expect("cases");
    assert!(cases.len() >= 150, "only {} golden cases", cases.len());

    let mut failures: Vec<String> = Vec::new();
    let mut worst = Worst::default();
    let mut worst_scaled = Worst::default();
    let mut worst_loosened = Worst::default();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let kind: SchedulerKind = case["kind"]
            .as_str()
            .expect("kind")
            .parse()
            .expect("kind parses");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let config = config_of(case, name);
        let tolerance = match case.get("tolerance").and_then(Value::as_f64) {
            None => TOLERANCE,
            Some(t) => {
                let why = case
                    .get("tolerance_why")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                assert!(
                    t <= PIPELINE_TOLERANCE && why.len() > 20,
                    "{name}: a golden case may loosen the tolerance only up to {PIPELINE_TOLERANCE:e} \
                     and with a reason (tolerance_why)"
                );
                eprintln!("{name}: tolerance {t:e} because {why}");
                t
            }
        };
        let mut sched = match scheduler::build(kind, &config, steps) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: build failed: {e}"));
                continue;
            }
        };

        // Timesteps.
        let want_t: Vec<f64> = case["timesteps"]
            .as_array()
            .expect("timesteps")
            .iter()
            .map(|v| v.as_f64().expect("number"))
            .collect();
        let got_t = sched.timesteps().to_vec();
        if got_t.len() != want_t.len() {
            failures.push(format!(
                "{name}: {} timesteps, diffusers has {}: got {got_t:?}, want {want_t:?}",
                got_t.len(),
                want_t.len()
            ));
            continue;
        }
        for (i, (&g, &w)) in got_t.iter().zip(&want_t).enumerate() {
            let g = g as f64;
            let ok = if w.fract() == 0.0 {
                g == w
            } else {
                (g - w).abs() <= SCALAR_TOLERANCE * w.abs()
            };
            if !ok {
                failures.push(format!("{name}: timestep {i} is {g}, diffusers has {w}"));
            }
        }

        // init_noise_sigma.
        let want_sigma = case["init_noise_sigma"].as_f64().expect("init_noise_sigma");
        let got_sigma = sched.init_noise_sigma() as f64;
        if (got_sigma - want_sigma).abs() > SCALAR_TOLERANCE * want_sigma.abs() {
            failures.push(format!(
                "{name}: init_noise_sigma {got_sigma}, diffusers has {want_sigma}"
            ));
        }

        // Which steps draw noise.
        let noise_steps: Vec<usize> = case["noise_steps"]
            .as_array()
            .expect("noise_steps")
            .iter()
            .map(|v| v.as_u64().expect("index") as usize)
            .collect();
        let got_noise_steps: Vec<usize> =
            (0..got_t.len()).filter(|&i| sched.needs_noise(i)).collect();
        if got_noise_steps != noise_steps {
            failures.push(format!(
                "{name}: needs_noise at steps {got_noise_steps:?}, diffusers draws noise at {noise_steps:?}"
            ));
            continue;
        }

        // The loop.
        let golden: Array5<f32> = npy(case["file"].as_str().expect("file"));
        let sigma = sched.init_noise_sigma();
        let mut latents: ArrayD<f32> = init.mapv(|v| v * sigma).into_dyn();
        let mut draws = 0usize;
        let mut failed = false;
        for (i, &t) in got_t.iter().enumerate() {
            let input = sched.scale_model_input(latents.view(), i);
            if i == 0 {
                let err = rel_l2(&input.view(), &golden.index_axis(Axis(0), 0).into_dyn());
                worst_scaled.note(kind.name(), err, name.to_string());
                if err > tolerance {
                    failures.push(format!(
                        "{name}: first scaled model input off by {err:.3e} (relative L2)"
                    ));
                }
            }
            let out = synthetic_model(&input.view(), t as f64);
            let noise = sched.needs_noise(i).then(|| {
                draws += 1;
                bank.index_axis(Axis(0), draws - 1).to_owned().into_dyn()
            });
            latents = match sched.try_step(
                out.view(),
                i,
                latents.view(),
                noise.as_ref().map(|n| n.view()),
            ) {
                Ok(l) => l,
                Err(e) => {
                    failures.push(format!("{name}: step {i} failed: {e}"));
                    failed = true;
                    break;
                }
            };
            if latents.iter().any(|v| !v.is_finite()) {
                failures.push(format!("{name}: step {i} produced non-finite latents"));
                failed = true;
                break;
            }
            if i == 0 {
                let err = rel_l2(&latents.view(), &golden.index_axis(Axis(0), 1).into_dyn());
                let w = if tolerance > TOLERANCE {
                    &mut worst_loosened
                } else {
                    &mut worst
                };
                w.note(kind.name(), err, format!("{name}, after step 1"));
                if err > tolerance {
                    failures.push(format!(
                        "{name}: latents after step 1 off by {err:.3e} (relative L2)"
                    ));
                }
            }
        }
        if failed {
            continue;
        }
        let err = rel_l2(&latents.view(), &golden.index_axis(Axis(0), 2).into_dyn());
        let w = if tolerance > TOLERANCE {
            &mut worst_loosened
        } else {
            &mut worst
        };
        w.note(kind.name(), err, format!("{name}, final"));
        if err > tolerance {
            failures.push(format!(
                "{name}: final latents off by {err:.3e} (relative L2)"
            ));
        }
    }
    worst_scaled.print("worst relative L2 error of the first scaled model input, per scheduler:");
    worst.print(&format!(
        "worst relative L2 error of the latents, per scheduler (tolerance {TOLERANCE:e}):"
    ));
    worst_loosened
        .print("worst relative L2 error of the latents in cases with a loosened tolerance:");
    assert!(
        failures.is_empty(),
        "{} of {} golden cases disagree with diffusers:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn add_noise_matches_diffusers() {
    let index = index();
    let init: Array4<f32> = npy(index["init_latents"].as_str().expect("init_latents"));
    let bank: Array5<f32> = npy(index["noise_bank"].as_str().expect("noise_bank"));
    let noise = bank.index_axis(Axis(0), 1).to_owned().into_dyn();
    let cases = index["add_noise"].as_array().expect("add_noise");
    assert_eq!(cases.len(), 8, "one add_noise golden per scheduler class");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let kind: SchedulerKind = case["kind"]
            .as_str()
            .expect("kind")
            .parse()
            .expect("kind parses");
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let step_index = case["step_index"].as_u64().expect("step_index") as usize;
        let sched = scheduler::build(kind, &config_of(case, name), steps).expect("builds");
        let want_t = case["timestep"].as_f64().expect("timestep");
        assert_eq!(
            sched.timesteps()[step_index] as f64,
            want_t,
            "{name}: timestep"
        );
        let got = sched
            .try_add_noise(init.view().into_dyn(), noise.view(), step_index)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Array4<f32> = npy(case["file"].as_str().expect("file"));
        let err = rel_l2(&got.view(), &want.view().into_dyn());
        eprintln!("{name}: relative L2 error {err:.3e}");
        if err > TOLERANCE {
            failures.push(format!("{name}: off by {err:.3e} (relative L2)"));
        }
    }
    assert!(
        failures.is_empty(),
        "add_noise disagrees with diffusers:\n  {}",
        failures.join("\n  ")
    );
}
