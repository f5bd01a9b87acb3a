//! Running one job: every prompt through the pipeline, then (on a second thread, overlapping the
//! next prompt's denoising) the PNGs, the manifest checkpoint, CLIP scores, ranks, keep_top and
//! the contact sheet. A job that stopped part-way (SIGTERM, a crash) continues from its
//! manifest: candidates already written are not rendered again.
//!
//! The steps of a run: choose the output folder ([`outdir`]), read or start the manifest
//! ([`resume`]), plan what is left ([`plan`]), render and finish it ([`pass`]), check that every
//! file the manifest names is there (what went missing is planned and rendered again), then
//! mark the manifest complete.

pub mod fingerprint;
pub mod finish;
pub mod manifest;
pub mod outdir;
pub mod pass;
pub mod plan;
pub mod resident;
pub mod resume;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::engine::model::config::ModelConfig;
use crate::engine::pipeline::{CandidateFailure, PipelineError};
use crate::engine::rerank::{RerankConfig, Reranker};
use crate::jobs::job::Job;
use crate::jobs::settings::JobSettings;
use crate::runtime::Runtime;
use crate::runtime::clock::SessionClock;
use fingerprint::Fingerprint;
use finish::{FinishClock, Finisher};
use manifest::Manifest;
use pass::Totals;
use plan::Plan;
use resident::Resident;

/// How many times a run renders again what went missing from its output folder while it ran
/// before it gives up.
const MAX_REPAIRS: usize = 2;

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum JobRunError {
    #[error("model `{model}` is not loaded by this worker")]
    UnknownModel { model: String },
    #[error("prompt {prompt}: {source}")]
    Pipeline {
        prompt: usize,
        #[source]
        source: PipelineError,
    },
    #[error("reranking prompt {prompt}: {message}")]
    Rerank { prompt: usize, message: String },
    #[error("{step}: {message}")]
    Output { step: String, message: String },
    /// The output folder cannot take the files now: the disk is full, the quota used up, the
    /// file system read-only, or the folder not writable for this user. Not the job's fault: it
    /// can run again, from its manifest, once that is fixed ([`JobRunError::is_storage`]).
    #[error("{step}: {message}")]
    Storage {
        step: String,
        message: String,
        kind: std::io::ErrorKind,
    },
    #[error("stopped before the job finished; it continues from its manifest on the next start")]
    Stopped,
    /// Every candidate of the job failed: it has no image to show. Its manifest (complete)
    /// records each one and why; a job with at least one image is done.
    #[error(
        "every candidate failed ({count} of them), so there is no image; the first: prompt \
         {prompt}, candidate {candidate} (seed {seed}): {failure}; the manifest in {dir} lists them"
    )]
    AllCandidatesFailed {
        count: usize,
        prompt: usize,
        candidate: usize,
        seed: u64,
        failure: CandidateFailure,
        dir: String,
    },
}

impl JobRunError {
    /// The step that failed, for the error file next to a failed job.
    pub fn step(&self) -> String {
        match self {
            JobRunError::UnknownModel { .. } => "loading the model".into(),
            JobRunError::Pipeline { prompt, .. } => format!("rendering prompt {prompt}"),
            JobRunError::Rerank { prompt, .. } => format!("reranking prompt {prompt}"),
            JobRunError::Output { step, .. } | JobRunError::Storage { step, .. } => step.clone(),
            JobRunError::Stopped => "stopping".into(),
            JobRunError::AllCandidatesFailed { .. } => "rendering".into(),
        }
    }

    /// Whether writing the output failed for a reason outside the job (see
    /// [`JobRunError::Storage`]): retrying later can work.
    pub fn is_storage(&self) -> bool {
        matches!(self, JobRunError::Storage { .. })
    }

    /// A failed write of the output: [`JobRunError::Storage`] for a full, read-only or
    /// unwritable folder, else [`JobRunError::Output`].
    pub fn writing(step: String, e: &std::io::Error) -> JobRunError {
        if crate::sys::atomic::is_storage_unavailable(e) {
            JobRunError::Storage {
                step,
                message: e.to_string(),
                kind: e.kind(),
            }
        } else {
            JobRunError::Output {
                step,
                message: e.to_string(),
            }
        }
    }
}

/// Progress of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub prompt: usize,
    pub prompts: usize,
    /// UNet call within the running batch, and how many the batch makes.
    pub step: usize,
    pub steps: usize,
    /// Candidates in the running batch.
    pub batch: usize,
    pub images_done: usize,
    pub images_total: usize,
}

/// What a finished job produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Images rendered by this run (the rest were already there from an earlier run).
    pub rendered: usize,
    /// Where this run's time went.
    pub phases: PhaseDurations,
}

/// Wall time per phase of one [`Worker::run`] (`sdspool bench` reports them). The render
/// thread's phases are sequential; the finishing thread's run beside them (overlapping the next
/// prompt's denoising), one after another.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseDurations {
    /// Render thread: the CLIP tokenizer.
    pub tokenize: Duration,
    /// Render thread: the text encoder (and building its input).
    pub text_encode: Duration,
    /// Render thread: scheduler set-up, initial latents, the denoising loop.
    pub denoise: Duration,
    /// Render thread: the VAE decoder and conversion to 8-bit RGB.
    pub decode: Duration,
    /// Render thread: waiting to hand a prompt to the finishing thread while it was still busy
    /// with the previous one.
    pub handoff_wait: Duration,
    /// Render thread: after the last prompt, waiting for the finishing thread to be done.
    pub finish_wait: Duration,
    /// Finishing thread: CLIP scoring.
    pub rerank: Duration,
    /// Finishing thread: PNG encoding of the candidates.
    pub png_encode: Duration,
    /// Finishing thread: writing the candidates' files (temporary file, fsync, rename).
    pub png_write: Duration,
    /// Finishing thread, the rest: manifest checkpoints, reading images back, contact sheets,
    /// keep_top, grids.
    pub finish_other: Duration,
    /// From the start of the run until the first image file was in place.
    pub first_image: Option<Duration>,
}

/// Per-run choices besides the job itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The job's output folder; default `<output_dir>/<job output>` (numbered when taken).
    pub dir: Option<PathBuf>,
    /// Initial latents for prompt 0 (parity tests; see `sdspool render --latents`).
    pub initial_latents: Option<ndarray::ArrayD<f32>>,
    /// Per-step noise for prompt 0 (see `sdspool render --step-noise`).
    pub step_noise: Option<Vec<ndarray::ArrayD<f32>>>,
}

/// The models and the reranker of one device. Nothing is loaded until asked
/// ([`Worker::prepare`] loads what a job needs, [`Worker::load`] everything up front); sessions
/// are created once and reused across jobs, within the device's memory budget (see
/// [`resident`]).
pub struct Worker {
    pub device: i32,
    /// The configured models, by name.
    configs: BTreeMap<String, ModelConfig>,
    resident: Resident,
    /// The rerank model, when configured and enabled.
    rerank_config: Option<RerankConfig>,
    reranker: Option<Reranker>,
    /// The rerank model's estimated footprint, once loaded.
    reranker_bytes: u64,
    output_dir: PathBuf,
    /// The output folder of the latest job [`Worker::run`] started.
    last_dir: Option<PathBuf>,
}

/// Why a worker could not load a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] crate::engine::model::ModelError),
    #[error("model `{model}`: cannot set up its pipeline")]
    Pipeline {
        model: String,
        #[source]
        source: PipelineError,
    },
    #[error(transparent)]
    Rerank(#[from] crate::engine::rerank::RerankError),
    #[error("model `{model}` is not configured (`models:`)")]
    NotConfigured { model: String },
    #[error("model `{model}`: cannot apply the job's LoRAs")]
    Loras {
        model: String,
        #[source]
        source: crate::engine::model::lora_variant::LoraVariantError,
    },
}

impl LoadError {
    /// Whether the model was refused because `execution.require_gpu` is set and no GPU provider
    /// serves it: the machine's fault, not the job's.
    pub fn is_gpu_required(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(crate::runtime::RuntimeError::GpuRequired { .. }) = e.downcast_ref() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

impl Worker {
    /// A worker for `device` that has loaded nothing yet; `budget`: the most bytes its resident
    /// models may take (see [`resident`]), `None` for no limit.
    pub fn new(config: &dyn JobSettings, device: i32, budget: Option<u64>) -> Worker {
        Worker {
            device,
            configs: config.models().clone(),
            resident: Resident::new(device, budget),
            rerank_config: config.rerank().filter(|r| r.enabled).cloned(),
            reranker: None,
            reranker_bytes: 0,
            output_dir: config.output_dir().to_path_buf(),
            last_dir: None,
        }
    }

    /// Loads the configured models (all of them, or only `only`) and the rerank model when
    /// configured and enabled, on `device`, with no memory budget.
    pub fn load(
        runtime: &Runtime,
        config: &dyn JobSettings,
        device: i32,
        only: Option<&str>,
    ) -> Result<Worker, LoadError> {
        let mut worker = Worker::new(config, device, None);
        let names: Vec<String> = config
            .models()
            .keys()
            .filter(|n| only.is_none_or(|o| o == n.as_str()))
            .cloned()
            .collect();
        for name in &names {
            worker
                .resident
                .ensure(runtime, &worker.configs, &[resident::Need::plain(name)], 0)?;
        }
        worker.load_reranker(runtime)?;
        Ok(worker)
    }

    /// Makes what `job` needs resident: its model, its refiner's, and the rerank model when the
    /// job reranks. What is loaded already is reused; what is not is loaded now, unloading the
    /// least recently used models when the budget requires. Returns the models it unloaded.
    pub fn prepare(
        &mut self,
        runtime: &Runtime,
        job: &Job,
    ) -> Result<Vec<resident::Victim>, LoadError> {
        if job.rerank.unwrap_or(true) {
            self.load_reranker(runtime)?;
        }
        let needed = job_needs(job);
        self.resident
            .ensure(runtime, &self.configs, &needed, self.reranker_bytes)
    }

    /// Whether [`Worker::prepare`] has anything to load for `job`.
    pub fn needs_loading(&self, job: &Job) -> bool {
        let reranker =
            job.rerank.unwrap_or(true) && self.rerank_config.is_some() && self.reranker.is_none();
        reranker || job_needs(job).iter().any(|n| !self.is_loaded(&n.key()))
    }

    /// Loads the rerank model, when configured and not loaded yet.
    fn load_reranker(&mut self, runtime: &Runtime) -> Result<(), LoadError> {
        let Some(cfg) = self
            .rerank_config
            .as_ref()
            .filter(|_| self.reranker.is_none())
        else {
            return Ok(());
        };
        let started = Instant::now();
        let r = Reranker::load(runtime, cfg, self.device)?;
        self.reranker_bytes = resident::folder_bytes(&cfg.model);
        tracing::info!(model = %cfg.model.display(), device = self.device, seconds = started.elapsed().as_secs_f64(), "rerank model loaded");
        self.reranker = Some(r);
        Ok(())
    }

    /// The models resident now, in name order.
    pub fn loaded_models(&self) -> Vec<&str> {
        self.resident.names()
    }

    /// Whether `model` is resident.
    pub fn is_loaded(&self, model: &str) -> bool {
        self.resident.is_loaded(model)
    }

    /// The provider serving a model's UNet, when the model is loaded.
    pub fn provider(&self, model: &str) -> Option<String> {
        self.resident
            .get(model)
            .map(|p| p.model.unet.loaded.providers.serving())
    }

    /// The output folder of the latest job [`Worker::run`] started (also when it stopped or
    /// failed part-way).
    pub fn last_output_dir(&self) -> Option<&Path> {
        self.last_dir.as_deref()
    }

    /// Whether reranking is available.
    pub fn can_rerank(&self) -> bool {
        self.reranker.is_some()
    }

    /// The scheduler `model` uses when a job asks for `requested` (its own when `None`).
    pub fn scheduler_of(
        &self,
        model: &str,
        requested: Option<crate::engine::scheduler::SchedulerKind>,
    ) -> Option<crate::engine::scheduler::SchedulerKind> {
        self.resident
            .get(model)
            .map(|p| requested.unwrap_or(p.default_scheduler))
    }

    /// Runs and wall time so far of each session of `model` (`text_encoder`, SDXL's
    /// `text_encoder_2` when it has one, `unet`, `vae_decoder`) and of the rerank model's
    /// sessions together (`rerank`), for `sdspool bench`.
    pub fn session_clocks(&self, model: &str) -> Vec<(&'static str, SessionClock)> {
        let mut out = Vec::new();
        if let Some(p) = self.resident.get(model) {
            out.push(("text_encoder", p.model.text_encoder.loaded.clock));
            if let Some(t) = &p.model.text_encoder_2 {
                out.push(("text_encoder_2", t.loaded.clock));
            }
            out.push(("unet", p.model.unet.loaded.clock));
            out.push(("vae_decoder", p.model.vae_decoder.loaded.clock));
        }
        if let Some(r) = &self.reranker {
            let mut sum = SessionClock::default();
            for s in r.sessions() {
                sum.calls += s.clock.calls;
                sum.time += s.clock.time;
            }
            out.push(("rerank", sum));
        }
        out
    }

    /// Runs (or continues) `job`. `stop` ends it between steps with [`JobRunError::Stopped`],
    /// after the images already rendered are written.
    pub fn run(
        &mut self,
        job: &Job,
        options: &RunOptions,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<Outcome, JobRunError> {
        let started = Instant::now();
        let fingerprint = Fingerprint::of(job, options);
        let dir = outdir::open(&self.output_dir, job, options, &fingerprint)?;
        self.last_dir = Some(dir.path().to_path_buf());
        // A run killed while writing an image or the manifest left its temporary file behind.
        outdir::remove_leftovers(&dir);
        let provider = self
            .provider(&job_key(job))
            .ok_or_else(|| JobRunError::UnknownModel {
                model: job_key(job),
            })?;
        let rerank = job.rerank.unwrap_or(true) && self.reranker.is_some();
        let rerank_model = rerank.then(|| self.reranker_name()).flatten();
        let (mut manifest, continued) =
            resume::checkpoint(job, &dir, &fingerprint, &provider, rerank_model);
        if manifest.complete {
            tracing::info!(job = %job.id, dir = %dir.path().display(), "job already complete; nothing to render");
            return with_an_image(Outcome {
                dir: dir.path().to_path_buf(),
                manifest,
                rendered: 0,
                phases: PhaseDurations::default(),
            });
        }
        manifest.runs += 1;
        manifest.execution_provider = provider;
        let job_source = source::JobSource {
            model: self.identity_of(&job.model, &job_key(job)),
            refiner: job
                .refiner
                .as_ref()
                .map(|r| self.identity(&r.model))
                .unwrap_or_default(),
        };
        manifest.model_source = job_source.model.manifest_entry();
        if continued {
            let adopted = resume::adopt_unrecorded_images(job, &dir, &mut manifest);
            if adopted > 0 {
                tracing::info!(job = %job.id, images = adopted, "kept images written before the last checkpoint");
            }
        }
        let Worker {
            resident,
            reranker,
            output_dir,
            last_dir,
            ..
        } = self;
        let mut pipeline = job_pipelines(resident, job)?;
        let finisher = Finisher {
            job,
            dir,
            rejected: None,
            manifest,
            source: job_source,
            reranker: if rerank { reranker.as_mut() } else { None },
            clock: FinishClock::default(),
        };
        finisher.save("writing the manifest")?;
        let run = Run {
            job,
            options,
            output_root: output_dir,
            fingerprint: &fingerprint,
        };
        let mut totals = Totals::default();
        let mut finisher = run.passes(
            &mut pipeline,
            finisher,
            stop,
            progress,
            &mut totals,
            last_dir,
        )?;
        with_an_image(run.complete(&mut finisher, totals, started)?)
    }

    /// Where `model` came from (its checkpoint hashed on first use); nothing for a model this
    /// worker does not hold.
    pub fn identity(&self, model: &str) -> source::ModelIdentity {
        self.identity_of(model, model)
    }

    /// [`Worker::identity`] of the model resident under `key` (with the LoRAs applied to it:
    /// recorded after those fused into the folder).
    fn identity_of(&self, model: &str, key: &str) -> source::ModelIdentity {
        match (self.resident.get(key), self.configs.get(model)) {
            (Some(p), Some(config)) => {
                let mut provenance = p.model.folder.provenance.clone();
                if let Some(pr) = provenance.as_mut() {
                    pr.loras.extend(p.model.loras.iter().cloned());
                }
                source::ModelIdentity::of(model, config, provenance.as_ref())
            }
            _ => source::ModelIdentity::default(),
        }
    }

    fn reranker_name(&self) -> Option<String> {
        self.reranker
            .as_ref()
            .map(|r| r.folder().root.display().to_string())
    }
}

/// A complete job is done when it has at least one image; one whose candidates all failed is
/// [`JobRunError::AllCandidatesFailed`] (users find nothing to look at in its folder, so it
/// belongs in failed/, with why).
fn with_an_image(outcome: Outcome) -> Result<Outcome, JobRunError> {
    let m = &outcome.manifest;
    let count = m.failed().count();
    if count == 0 || count < m.candidates().count() {
        return Ok(outcome);
    }
    let (prompt, first) = m.failed().next().expect("count > 0");
    Err(JobRunError::AllCandidatesFailed {
        count,
        prompt: prompt.index,
        candidate: first.candidate,
        seed: first.seed,
        failure: first.failure.expect("a failed candidate"),
        dir: outcome.dir.display().to_string(),
    })
}

/// The models `job` runs as they must be resident: its own with the job's LoRAs, then its
/// refiner's as it is.
pub fn job_needs(job: &Job) -> Vec<resident::Need<'_>> {
    std::iter::once(resident::Need {
        model: &job.model,
        loras: &job.loras,
    })
    .chain(
        job.refiner
            .as_ref()
            .map(|r| resident::Need::plain(&r.model)),
    )
    .collect()
}

/// The key `job`'s own model is resident under (see [`resident::Need::key`]).
pub fn job_key(job: &Job) -> String {
    resident::key(&job.model, &job.loras)
}

/// The loaded pipelines of `job`'s model and of its refiner, if it names one.
fn job_pipelines<'p>(
    resident: &'p mut Resident,
    job: &Job,
) -> Result<pass::Pipelines<'p>, JobRunError> {
    let refiner_name = job.refiner.as_ref().map(|r| r.model.as_str());
    let key = job_key(job);
    let (mut base, mut refiner) = (None, None);
    for (name, p) in resident.pipelines_mut() {
        if *name == key {
            base = Some(p);
        } else if Some(name.as_str()) == refiner_name {
            refiner = Some(p);
        }
    }
    let unknown = |model: &str| JobRunError::UnknownModel {
        model: model.to_string(),
    };
    let base = base.ok_or_else(|| unknown(&key))?;
    let refiner = match &job.refiner {
        None => None,
        Some(r) => {
            let p = refiner.ok_or_else(|| unknown(&r.model))?;
            let handoff = crate::engine::pipeline::Handoff {
                start: r.start,
                refiner_noise: None,
            };
            Some((p, handoff))
        }
    };
    Ok(pass::Pipelines { base, refiner })
}

/// One run of a job after its manifest is read: the passes, and marking it complete.
struct Run<'r> {
    job: &'r Job,
    options: &'r RunOptions,
    output_root: &'r Path,
    fingerprint: &'r Fingerprint,
}

impl Run<'_> {
    /// Renders and finishes what the plan says, then checks that every file the manifest names
    /// is in the output folder; what went missing meanwhile (removed by hand) is planned and
    /// rendered again, in a new folder when the folder itself was removed, at most
    /// [`MAX_REPAIRS`] times.
    fn passes<'a>(
        &self,
        pipeline: &mut pass::Pipelines<'_>,
        mut finisher: Finisher<'a>,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
        totals: &mut Totals,
        last_dir: &mut Option<PathBuf>,
    ) -> Result<Finisher<'a>, JobRunError> {
        for repair in 0..=MAX_REPAIRS {
            let plan = Plan::new(self.job, &finisher.manifest, &finisher.dir, self.options);
            if repair > 0 || plan.images_done > 0 {
                tracing::info!(job = %self.job.id, already = plan.images_done, of = plan.images_total, "resuming from the manifest");
            }
            let pass::Passed {
                finisher: back,
                result,
            } = pass::run(self.job, pipeline, finisher, &plan, stop, progress, totals);
            let Some(back) = back else {
                return Err(result.err().unwrap_or(JobRunError::Output {
                    step: "finishing".into(),
                    message: "the finishing thread ended without its state".into(),
                }));
            };
            finisher = back;
            // No repair left: an error of the pass is the job's, whatever went missing.
            let result = match result {
                Err(e) if repair == MAX_REPAIRS => return Err(e),
                r => r,
            };
            let lost = self.lost_files(&mut finisher, result, last_dir)?;
            if lost.is_empty() {
                return Ok(finisher);
            }
            if repair == MAX_REPAIRS {
                return Err(JobRunError::Output {
                    step: "checking the output folder".into(),
                    message: format!(
                        "files named in the manifest keep disappearing from {} while the job runs ({}); rendered again {MAX_REPAIRS} times",
                        finisher.dir.path().display(),
                        lost.join(", ")
                    ),
                });
            }
        }
        unreachable!("the last repair returns")
    }

    /// After a pass: the files the manifest names that are not in the output folder, with the
    /// manifest changed to render them again (empty: the pass is complete). The folder itself
    /// gone: a new one is chosen and everything is to render again. The pass's error is
    /// returned when nothing went missing, or when it was not about the output.
    fn lost_files(
        &self,
        finisher: &mut Finisher<'_>,
        result: Result<(), JobRunError>,
        last_dir: &mut Option<PathBuf>,
    ) -> Result<Vec<String>, JobRunError> {
        let result = match result {
            Err(e) if !matches!(e, JobRunError::Output { .. }) => return Err(e),
            r => r,
        };
        let job = &self.job.id;
        if finisher.dir.is_gone() {
            let was = finisher.dir.path().display().to_string();
            let dir = outdir::open(self.output_root, self.job, self.options, self.fingerprint)?;
            tracing::warn!(job = %job, removed = %was, dir = %dir.path().display(), "the output folder was removed while the job ran; rendering it again");
            *last_dir = Some(dir.path().to_path_buf());
            finisher.dir = dir;
            finisher.rejected = None;
            resume::forget_all(&mut finisher.manifest);
            finisher.save("writing the manifest")?;
            return Ok(vec![was]);
        }
        let missing = resume::missing_files(&finisher.dir, &finisher.manifest);
        if missing.is_empty() {
            result?;
            return Ok(missing);
        }
        tracing::warn!(job = %job, files = %missing.join(", "), "files of the job were removed from its output folder while it ran; rendering them again");
        resume::forget_missing(&mut finisher.manifest, &missing);
        finisher.save("writing the manifest")?;
        Ok(missing)
    }

    /// Adds the run's timings to the manifest and marks it complete.
    fn complete(
        &self,
        finisher: &mut Finisher<'_>,
        totals: Totals,
        started: Instant,
    ) -> Result<Outcome, JobRunError> {
        let clock = finisher.clock;
        let mut phases = totals.phases;
        phases.rerank = clock.rerank;
        phases.png_encode = clock.png_encode;
        phases.png_write = clock.png_write;
        phases.finish_other = totals
            .finish_busy
            .saturating_sub(clock.rerank + clock.png_encode + clock.png_write);
        phases.first_image = clock
            .first_image
            .map(|t| t.saturating_duration_since(started));
        let m = &mut finisher.manifest;
        m.timings.text_ms += totals.timings.text_ms;
        m.timings.denoise_ms += totals.timings.denoise_ms;
        m.timings.decode_ms += totals.timings.decode_ms;
        m.timings.total_ms += started.elapsed().as_millis() as u64;
        m.complete = true;
        finisher.save("writing the manifest")?;
        Ok(Outcome {
            dir: finisher.dir.path().to_path_buf(),
            manifest: finisher.manifest.clone(),
            rendered: totals.rendered,
            phases,
        })
    }
}
