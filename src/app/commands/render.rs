//! `sdspool render JOB.yaml`: renders one job in the foreground with a progress bar and writes
//! its images (PNG with AUTOMATIC1111-style `parameters`) into `<output_dir>/<job output>/`.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::config::Config;
use crate::jobs::job::Job;
use crate::jobs::run::{Outcome, RunOptions, Worker, job_key};
use std::sync::atomic::AtomicBool;

/// Arrays that replace the seeded noise of a one-prompt job (parity tests against other tools).
#[derive(Debug, Clone, Default)]
pub struct NoiseFiles {
    /// `[candidates, 4, h/8, w/8]` initial latents, before scaling by `init_noise_sigma`.
    pub latents: Option<PathBuf>,
    /// `[draws, candidates, 4, h/8, w/8]`: the per-step noise of stochastic schedulers.
    pub step_noise: Option<PathBuf>,
}

type Overrides = (
    Option<ndarray::ArrayD<f32>>,
    Option<Vec<ndarray::ArrayD<f32>>>,
);

fn read_npy(path: &Path, what: &str) -> anyhow::Result<ndarray::ArrayD<f32>> {
    ndarray_npy::read_npy(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot read {what} (a float32 .npy file): {e}",
            path.display()
        )
    })
}

fn read_overrides(job: &Job, job_file: &Path, noise: &NoiseFiles) -> anyhow::Result<Overrides> {
    if noise.latents.is_none() && noise.step_noise.is_none() {
        return Ok((None, None));
    }
    if job.prompts.len() != 1 {
        anyhow::bail!(
            "{}: --latents and --step-noise need a job with exactly one prompt (it has {})",
            job_file.display(),
            job.prompts.len()
        );
    }
    let latents = match &noise.latents {
        Some(p) => Some(read_npy(p, "initial latents")?),
        None => None,
    };
    let step_noise = match &noise.step_noise {
        Some(p) => {
            let all = read_npy(p, "step noise")?;
            if all.ndim() != 5 {
                anyhow::bail!(
                    "{}: step noise must be [draws, candidates, 4, h/f, w/f] (f: the VAE downsampling, 8 for SD), got {:?}",
                    p.display(),
                    all.shape()
                );
            }
            Some(
                all.axis_iter(ndarray::Axis(0))
                    .map(|a| a.to_owned())
                    .collect(),
            )
        }
        None => None,
    };
    Ok((latents, step_noise))
}

/// `sdspool render`: loads what the job needs (its model, its refiner's, and the rerank model
/// when it reranks) on `device` (default: the first of `execution.device_ids`), renders the job
/// into its output folder exactly as the daemon would (images, scores, contact sheets,
/// manifest) and returns the outcome.
pub fn run(
    config: &Config,
    job_file: &Path,
    output: Option<&Path>,
    noise: &NoiseFiles,
    device: Option<i32>,
) -> anyhow::Result<Outcome> {
    let job = crate::jobs::job::load(job_file, config)?;
    let (initial_latents, step_noise) = read_overrides(&job, job_file, noise)?;
    let runtime = config.runtime()?;
    let device = device.unwrap_or(config.execution.device_ids[0]);
    let mut worker = Worker::new(config, device, None);
    worker.prepare(&runtime, &job)?;
    tracing::info!(
        job = %job.id,
        model = %job.model,
        device,
        provider = %worker.provider(&job_key(&job)).unwrap_or_default(),
        images = job.image_count(),
        "rendering"
    );
    let bar = ProgressBar::new(job.image_count() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} images, {msg} {elapsed} elapsed",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(job.id.clone());
    let options = RunOptions {
        dir: output.map(Path::to_path_buf),
        initial_latents,
        step_noise,
    };
    let stop = AtomicBool::new(false);
    let outcome = worker.run(&job, &options, &stop, &mut |p| {
        bar.set_position(p.images_done as u64);
        bar.set_message(format!(
            "prompt {}/{} step {}/{},",
            p.prompt + 1,
            p.prompts,
            p.step,
            p.steps
        ));
        tracing::debug!(prompt = p.prompt, step = p.step, of = p.steps, "denoising");
    });
    bar.finish_and_clear();
    Ok(outcome?)
}
