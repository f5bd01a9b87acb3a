//! `sdspool render JOB.yaml`: renders one job in the foreground with a progress bar and writes
//! its images (PNG with AUTOMATIC1111-style `parameters`) into `<output_dir>/<job output>/`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::job::Job;
use crate::model::SdModel;
use crate::output::{self, png::Parameters};
use crate::pipeline::{Pipeline, RenderRequest};
use crate::runtime::Runtime;

/// One written image.
#[derive(Debug, Clone)]
pub struct Written {
    pub prompt: usize,
    pub candidate: usize,
    pub seed: u64,
    pub path: PathBuf,
}

/// The pipeline request for prompt `index` of `job`.
pub fn request(job: &Job, index: usize) -> RenderRequest {
    let p = &job.prompts[index];
    let mut req = RenderRequest::new(p.text.clone(), p.seeds.clone());
    req.negative_prompt = p.negative.clone();
    req.steps = job.steps as usize;
    req.guidance_scale = job.guidance;
    req.scheduler = job.scheduler;
    req.width = job.width;
    req.height = job.height;
    req.rng = job.rng;
    req.max_batch = job.max_batch as usize;
    req
}

/// Renders every prompt of `job` and writes the images into `out_dir`.
pub fn render_job(
    pipeline: &mut Pipeline,
    job: &Job,
    out_dir: &Path,
    progress: &ProgressBar,
    overrides: Overrides,
) -> anyhow::Result<Vec<Written>> {
    let (mut latents, mut step_noise) = overrides;
    std::fs::create_dir_all(out_dir).map_err(|e| {
        anyhow::anyhow!("cannot create the output folder {}: {e}", out_dir.display())
    })?;
    let mut written = Vec::new();
    let mut done_calls = 0u64;
    for (pi, prompt) in job.prompts.iter().enumerate() {
        let mut req = request(job, pi);
        req.initial_latents = latents.take();
        req.step_noise = step_noise.take();
        let batches = prompt.seeds.len().div_ceil(req.max_batch) as u64;
        let span = tracing::info_span!("prompt", job = %job.id, prompt = pi);
        let _guard = span.enter();
        let rendered = pipeline.render(&req, &mut |p| {
            if p.step.index == 0 && p.first_candidate == 0 {
                progress.set_length(
                    done_calls + p.step.total as u64 * batches * (job.prompts.len() - pi) as u64,
                );
            }
            done_calls += 1;
            progress.set_position(done_calls);
            tracing::debug!(
                step = p.step.index + 1,
                of = p.step.total,
                first_candidate = p.first_candidate,
                "denoising"
            );
            ControlFlow::Continue(())
        })?;
        let scheduler = rendered.scheduler;
        for (ci, (image, seed)) in rendered.images.iter().zip(&prompt.seeds).enumerate() {
            let params = Parameters {
                prompt: &prompt.text,
                negative: &prompt.negative,
                steps: job.steps,
                scheduler,
                guidance: job.guidance,
                seed: *seed,
                width: job.width,
                height: job.height,
                model: &job.model,
            };
            let bytes = output::png::encode(image, &params.a1111_text())?;
            let path = out_dir.join(output::image_file_name(pi, ci, *seed));
            output::atomic::write(&path, &bytes)?;
            written.push(Written {
                prompt: pi,
                candidate: ci,
                seed: *seed,
                path,
            });
        }
        tracing::info!(
            images = prompt.seeds.len(),
            scheduler = %scheduler,
            text_ms = rendered.timings.text.as_millis() as u64,
            denoise_ms = rendered.timings.denoise.as_millis() as u64,
            decode_ms = rendered.timings.decode.as_millis() as u64,
            "prompt rendered"
        );
    }
    Ok(written)
}

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
                    "{}: step noise must be [draws, candidates, 4, h/8, w/8], got {:?}",
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

/// `sdspool render`: loads the job's model and renders the job; prints the files written.
pub fn run(
    config: &Config,
    job_file: &Path,
    output: Option<&Path>,
    noise: &NoiseFiles,
) -> anyhow::Result<Vec<Written>> {
    let job = crate::job::load(job_file, config)?;
    let overrides = read_overrides(&job, job_file, noise)?;
    let runtime = Runtime::init(
        config.onnxruntime.library.as_deref(),
        &config.base_dir(),
        &config.execution,
    )?;
    let model_dir = &config.models[&job.model].path;
    let device = config.execution.device_ids[0];
    let model = SdModel::load(&runtime, &job.model, model_dir, device)?;
    tracing::info!(
        job = %job.id,
        model = %job.model,
        provider = %model.unet.loaded.providers.serving(),
        images = job.image_count(),
        "rendering"
    );
    let mut pipeline = Pipeline::new(model)?;
    let out_dir = match output {
        Some(dir) => dir.to_path_buf(),
        None => config.output_dir.join(&job.output),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} UNet steps, {elapsed} elapsed, ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(job.id.clone());
    let written = render_job(&mut pipeline, &job, &out_dir, &bar, overrides);
    bar.finish_and_clear();
    written
}
