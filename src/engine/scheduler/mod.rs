//! Diffusion schedulers, numerically matching Hugging Face diffusers 0.39.
//!
//! Each scheduler is a port of one diffusers class, reproducing its float32/float64 choices
//! so that a denoising loop driven from Rust lands within about 1e-6 (relative L2) of the same
//! loop run with diffusers (`tests/scheduler_parity.rs` replays golden runs produced by
//! `onnx/golden_schedulers.py`):
//!
//! | name              | diffusers class                     | AUTOMATIC1111     | file |
//! |-------------------|-------------------------------------|-------------------|------|
//! | `ddim`            | `DDIMScheduler`                     | `DDIM`            | [`ddim`] |
//! | `pndm`            | `PNDMScheduler`                     | `PLMS`            | [`pndm`] |
//! | `lms`             | `LMSDiscreteScheduler`              | `LMS`             | [`lms`] |
//! | `euler`           | `EulerDiscreteScheduler`            | `Euler`           | [`euler`] |
//! | `euler_a`         | `EulerAncestralDiscreteScheduler`   | `Euler a`         | [`euler_ancestral`] |
//! | `dpmpp_2m`        | `DPMSolverMultistepScheduler`       | `DPM++ 2M`        | [`dpm_solver`] |
//! | `dpmpp_2m_karras` | the same with `use_karras_sigmas`   | `DPM++ 2M Karras` | [`dpm_solver`] |
//! | `ddpm`            | `DDPMScheduler`                     | `DDPM`            | [`ddpm`] |
//! | `unipc`           | `UniPCMultistepScheduler`           | `UniPC`           | [`unipc`] |
//! | `lcm`             | `LCMScheduler`                      | `LCM`             | [`lcm`] |
//!
//! The names themselves live in one table, [`REGISTRY`]: parsing, error messages, PNG
//! `parameters` and prompt files all read it.
//!
//! A scheduler is built like diffusers' `Class.from_config(scheduler_config)` followed by
//! `set_timesteps(n)`: [`build`] takes the model's `scheduler_config.json` ([`SchedulerConfig`]),
//! reads the keys the chosen class accepts, gives every missing key that class's default (the
//! defaults differ per class, e.g. `timestep_spacing`), and ignores the rest, as diffusers does.
//!
//! The loop, as a pipeline runs it:
//!
//! ```no_run
//! # use ndarray::ArrayD;
//! # use sdspool::engine::scheduler::{self, SchedulerConfig, SchedulerKind};
//! # fn unet(x: &ArrayD<f32>, t: f32) -> ArrayD<f32> { x.clone() }
//! # fn randn(shape: &[usize]) -> ArrayD<f32> { ArrayD::zeros(shape) }
//! # fn main() -> Result<(), scheduler::SchedulerError> {
//! let config = SchedulerConfig::from_file("model/scheduler/scheduler_config.json")?;
//! let mut sched = scheduler::build(SchedulerKind::EulerAncestral, &config, 30)?;
//! let mut latents = randn(&[1, 4, 64, 64]).mapv(|v| v * sched.init_noise_sigma());
//! for (i, &t) in sched.timesteps().to_vec().iter().enumerate() {
//!     let input = sched.scale_model_input(latents.view(), i);
//!     let eps = unet(&input, t);
//!     let noise = sched.needs_noise(i).then(|| randn(latents.shape()));
//!     latents = sched.try_step(eps.view(), i, latents.view(), noise.as_ref().map(|n| n.view()))?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ndarray::{ArrayD, ArrayViewD};

pub mod a1111;
mod common;
mod config;
pub mod ddim;
pub mod ddpm;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod lcm;
pub mod lms;
pub mod pndm;
mod quadrature;
pub mod unipc;

pub use config::SchedulerConfig;

/// Which scheduler a job asks for.
///
/// Parsed (case-insensitively, `-` accepted for `_`) from the short names `ddim`, `pndm`,
/// `lms`, `euler`, `euler_a`, `dpmpp_2m`, `dpmpp_2m_karras`, `ddpm`, `unipc`, `lcm`, or from the
/// diffusers class names found in `_class_name` of scheduler_config.json (`PNDMScheduler`,
/// `EulerDiscreteScheduler`, ...). `DPMSolverMultistepScheduler` parses as
/// [`SchedulerKind::DpmPp2m`], which honours the config's own `use_karras_sigmas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `DDIMScheduler` (deterministic unless the config's `eta` > 0).
    Ddim,
    /// `PNDMScheduler` (SD 1.x's own; n + 1 UNet calls for n steps with `skip_prk_steps`).
    Pndm,
    /// `LMSDiscreteScheduler` (linear multistep, order 4).
    Lms,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler` (stochastic: noise at every step).
    EulerAncestral,
    /// `DPMSolverMultistepScheduler` as configured (by default DPM-Solver++ 2M).
    DpmPp2m,
    /// `DPMSolverMultistepScheduler` with `use_karras_sigmas` forced on.
    DpmPp2mKarras,
    /// `DDPMScheduler` (stochastic: noise at every step with a timestep above 0).
    Ddpm,
    /// `UniPCMultistepScheduler` (bh2, order 2, predictor-corrector by default).
    UniPc,
    /// `LCMScheduler` (latent consistency models: few steps, fresh noise on every step but the
    /// last).
    Lcm,
}

/// The names of one scheduler: sdspool's, the diffusers class it ports, AUTOMATIC1111's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerNames {
    pub kind: SchedulerKind,
    /// sdspool's short name, as jobs and the command line write it (`euler_a`).
    pub name: &'static str,
    /// The diffusers class this kind ports (`EulerAncestralDiscreteScheduler`), as
    /// scheduler_config.json's `_class_name` names it.
    pub class_name: &'static str,
    /// AUTOMATIC1111's sampler name (`Euler a`), written into PNG `parameters` and read from
    /// prompt files.
    pub a1111: &'static str,
}

/// Every scheduler with its names: the one table of scheduler names, in the order of
/// [`SchedulerKind`]'s variants (checked when compiling).
pub const REGISTRY: [SchedulerNames; 10] = {
    const fn row(
        kind: SchedulerKind,
        name: &'static str,
        class_name: &'static str,
        a1111: &'static str,
    ) -> SchedulerNames {
        SchedulerNames {
            kind,
            name,
            class_name,
            a1111,
        }
    }
    use SchedulerKind::*;
    [
        row(Ddim, "ddim", "DDIMScheduler", "DDIM"),
        row(Pndm, "pndm", "PNDMScheduler", "PLMS"),
        row(Lms, "lms", "LMSDiscreteScheduler", "LMS"),
        row(Euler, "euler", "EulerDiscreteScheduler", "Euler"),
        row(
            EulerAncestral,
            "euler_a",
            "EulerAncestralDiscreteScheduler",
            "Euler a",
        ),
        row(
            DpmPp2m,
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M",
        ),
        row(
            DpmPp2mKarras,
            "dpmpp_2m_karras",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M Karras",
        ),
        row(Ddpm, "ddpm", "DDPMScheduler", "DDPM"),
        row(UniPc, "unipc", "UniPCMultistepScheduler", "UniPC"),
        row(Lcm, "lcm", "LCMScheduler", "LCM"),
    ]
};

// Row i of the registry is the variant with discriminant i, so a kind finds its row by index.
const _: () = {
    let mut i = 0;
    while i < REGISTRY.len() {
        assert!(REGISTRY[i].kind as usize == i);
        i += 1;
    }
};

impl SchedulerKind {
    /// Every kind, in the order of the names listed in errors.
    pub const ALL: [SchedulerKind; 10] = {
        let mut all = [SchedulerKind::Ddim; 10];
        let mut i = 0;
        while i < all.len() {
            all[i] = REGISTRY[i].kind;
            i += 1;
        }
        all
    };

    /// This kind's row of [`REGISTRY`].
    pub fn names(self) -> &'static SchedulerNames {
        &REGISTRY[self as usize]
    }

    /// The short name (`"euler_a"`, ...), as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        self.names().name
    }

    /// The diffusers class this kind ports.
    pub fn class_name(self) -> &'static str {
        self.names().class_name
    }

    /// AUTOMATIC1111's sampler name (`"Euler a"`, `"DPM++ 2M Karras"`, ...).
    pub fn a1111_name(self) -> &'static str {
        self.names().a1111
    }

    /// The kind AUTOMATIC1111 calls `name` (case-insensitive, surrounding blanks ignored).
    pub fn from_a1111_name(name: &str) -> Option<SchedulerKind> {
        let name = name.trim();
        REGISTRY
            .iter()
            .find(|r| r.a1111.eq_ignore_ascii_case(name))
            .map(|r| r.kind)
    }

    /// The short names, then each diffusers class name once.
    fn valid_names() -> String {
        let mut names: Vec<&str> = REGISTRY.iter().map(|r| r.name).collect();
        for r in &REGISTRY {
            if !names.contains(&r.class_name) {
                names.push(r.class_name);
            }
        }
        names.join(", ")
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        REGISTRY
            .iter()
            .find(|r| r.name == key || r.class_name.eq_ignore_ascii_case(&key))
            .map(|r| r.kind)
            .ok_or_else(|| SchedulerError::UnknownScheduler {
                name: s.to_string(),
                valid: Self::valid_names(),
            })
    }
}

/// Everything that can go wrong when reading a scheduler config, building a scheduler or
/// stepping it. Messages name the key, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown scheduler {name:?}; valid names are: {valid}")]
    UnknownScheduler { name: String, valid: String },
    #[error("cannot read scheduler config {}: {source}", path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scheduler config {origin} is not valid JSON: {source}")]
    ParseConfig {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("scheduler config {origin}: `{key}` {problem}")]
    ConfigValue {
        origin: String,
        key: String,
        problem: String,
    },
    #[error("{class}: `{key}` = {value} is not supported; allowed: {allowed}")]
    Unsupported {
        class: &'static str,
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{class}: {message}")]
    Invalid {
        class: &'static str,
        message: String,
    },
    #[error(
        "{class}: num_inference_steps = {steps} is out of range; it must be between 1 and \
         num_train_timesteps ({max})"
    )]
    Steps {
        class: &'static str,
        steps: usize,
        max: usize,
    },
    #[error(
        "{class}: step index {index} is out of range; this schedule has {len} UNet calls (0..{len})"
    )]
    StepIndex {
        class: &'static str,
        index: usize,
        len: usize,
    },
    #[error(
        "{class}: steps must be taken in order (multistep state); expected step index {expected}, \
         got {got}"
    )]
    OutOfOrder {
        class: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "{class}: step {index}: {what} has shape {got:?}, expected {expected:?} (the sample's)"
    )]
    Shape {
        class: &'static str,
        index: usize,
        what: &'static str,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{class}: step {index} draws random noise, but no noise array was passed")]
    MissingNoise { class: &'static str, index: usize },
}

/// One configured schedule for `n` inference steps, stepped by a denoising loop.
///
/// Call `scale_model_input(latents, i)`, run the UNet on it with `timesteps()[i]`, then
/// `step(model_output, i, latents, noise)` for `i = 0, 1, ...`. Multistep schedulers (PNDM,
/// LMS, DPM-Solver, UniPC) keep state between calls: the first step may start at any index
/// (img2img starts part-way, like diffusers' `set_begin_index`), later ones must follow in
/// order.
pub trait Scheduler: Send {
    /// The kind this scheduler was built as.
    fn kind(&self) -> SchedulerKind;

    /// The timesteps fed to the UNet, one per UNet call (PNDM with `skip_prk_steps` has n + 1
    /// calls for n steps). `f32` because Euler and LMS feed fractional timesteps.
    fn timesteps(&self) -> &[f32];

    /// The factor for the initial noise: `latents = randn * init_noise_sigma`.
    fn init_noise_sigma(&self) -> f32;

    /// Scales the latent model input for UNet call `step_index`: identity for DDIM, PNDM,
    /// DDPM, DPM-Solver and UniPC; `x / sqrt(σ² + 1)` for Euler, Euler ancestral and LMS.
    ///
    /// # Panics
    /// If `step_index >= timesteps().len()`.
    fn scale_model_input(&self, sample: ArrayViewD<'_, f32>, step_index: usize) -> ArrayD<f32>;

    /// One step: from the UNet's output at call `step_index` and the current `sample`, the
    /// previous (less noisy) sample. `noise` is this step's random noise for stochastic
    /// schedulers (see [`Scheduler::needs_noise`]), shaped like `sample` and drawn by the
    /// caller; it is ignored by steps that need none.
    fn try_step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        step_index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: Option<ArrayViewD<'_, f32>>,
    ) -> Result<ArrayD<f32>, SchedulerError>;

    /// [`Scheduler::try_step`] for callers that have already checked shapes and noise.
    ///
    /// # Panics
    /// With the [`SchedulerError`] message where `try_step` would return an error.
    fn step(
        &mut self,
        model_output: ArrayViewD<'_, f32>,
        step_index: usize,
        sample: ArrayViewD<'_, f32>,
        noise: Option<ArrayViewD<'_, f32>>,
    ) -> ArrayD<f32> {
        self.try_step(model_output, step_index, sample, noise)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether step `step_index` consumes noise. diffusers draws noise at every step of Euler
    /// ancestral (the last one included, where it is multiplied by 0), at every step of DDIM
    /// with `eta > 0`, and at every DDPM step whose timestep is above 0; draw it exactly then to
    /// keep a random stream aligned with diffusers'.
    fn needs_noise(&self, step_index: usize) -> bool;

    /// Forward diffusion to the noise level of step `step_index` (img2img's starting point),
    /// like diffusers' `add_noise` after `set_begin_index(step_index)`.
    fn try_add_noise(
        &self,
        original: ArrayViewD<'_, f32>,
        noise: ArrayViewD<'_, f32>,
        step_index: usize,
    ) -> Result<ArrayD<f32>, SchedulerError>;

    /// [`Scheduler::try_add_noise`], panicking on a bad index or mismatched shapes.
    fn add_noise(
        &self,
        original: ArrayViewD<'_, f32>,
        noise: ArrayViewD<'_, f32>,
        step_index: usize,
    ) -> ArrayD<f32> {
        self.try_add_noise(original, noise, step_index)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Builds scheduler `kind` from a model's scheduler config for `num_inference_steps` steps,
/// like `Class.from_config(config)` then `set_timesteps(num_inference_steps)` in diffusers.
///
/// Fails on 0 steps or more than `num_train_timesteps`, and on config values the class does
/// not accept or this port does not implement (thresholding, exponential/beta/flow sigmas, ...).
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, num_inference_steps)?),
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config, num_inference_steps)?),
        SchedulerKind::Lms => Box::new(lms::Lms::new(config, num_inference_steps)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, num_inference_steps)?),
        SchedulerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(
            config,
            num_inference_steps,
        )?),
        SchedulerKind::DpmPp2m => Box::new(dpm_solver::DpmSolver::new(
            config,
            num_inference_steps,
            false,
        )?),
        SchedulerKind::DpmPp2mKarras => Box::new(dpm_solver::DpmSolver::new(
            config,
            num_inference_steps,
            true,
        )?),
        SchedulerKind::Ddpm => Box::new(ddpm::Ddpm::new(config, num_inference_steps)?),
        SchedulerKind::UniPc => Box::new(unipc::UniPc::new(config, num_inference_steps)?),
        SchedulerKind::Lcm => Box::new(lcm::Lcm::new(config, num_inference_steps)?),
    })
}

#[cfg(test)]
mod tests;
