//! Running one job: every prompt through the pipeline, then (on a second thread, overlapping the
//! next prompt's denoising) the PNGs, the manifest checkpoint, CLIP scores, ranks, keep_top and
//! the contact sheet. A job that stopped part-way (SIGTERM, a crash) continues from its
//! manifest: candidates already written are not rendered again.

pub mod finish;
pub mod manifest;

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::commands::render::request;
use crate::config::Config;
use crate::job::Job;
use crate::model::SdModel;
use crate::pipeline::{Pipeline, PipelineError};
use crate::rerank::Reranker;
use crate::runtime::Runtime;
use crate::runtime::clock::SessionClock;
use finish::{Batch, FinishClock, Finisher};
use manifest::{Manifest, PhaseTimings, PromptEntry};

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
        use std::io::ErrorKind as K;
        let kind = e.kind();
        if matches!(
            kind,
            K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::PermissionDenied
        ) {
            JobRunError::Storage {
                step,
                message: e.to_string(),
                kind,
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

/// Loaded models and reranker of one device; sessions are created once and reused across jobs.
pub struct Worker {
    pub device: i32,
    pipelines: BTreeMap<String, Pipeline>,
    reranker: Option<Reranker>,
    output_dir: PathBuf,
    /// The output folder of the latest job [`Worker::run`] started.
    last_dir: Option<PathBuf>,
}

impl Worker {
    /// Loads the configured models (all of them, or only `only`) and the rerank model when
    /// configured and enabled, on `device`.
    pub fn load(
        runtime: &Runtime,
        config: &Config,
        device: i32,
        only: Option<&str>,
    ) -> anyhow::Result<Worker> {
        let mut pipelines = BTreeMap::new();
        for (name, model) in config
            .models
            .iter()
            .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
        {
            let m = SdModel::load(runtime, name, &model.path, device)?;
            tracing::info!(model = %name, device, provider = %m.unet.loaded.providers.serving(), "model loaded");
            pipelines.insert(name.clone(), Pipeline::new(m)?);
        }
        let reranker = match &config.rerank {
            Some(cfg) if cfg.enabled => {
                let r = Reranker::load(runtime, cfg, device)?;
                tracing::info!(model = %cfg.model.display(), device, "rerank model loaded");
                Some(r)
            }
            _ => None,
        };
        Ok(Worker {
            device,
            pipelines,
            reranker,
            output_dir: config.output_dir.clone(),
            last_dir: None,
        })
    }

    /// The provider serving a model's UNet.
    pub fn provider(&self, model: &str) -> Option<String> {
        self.pipelines
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
        requested: Option<crate::scheduler::SchedulerKind>,
    ) -> Option<crate::scheduler::SchedulerKind> {
        self.pipelines
            .get(model)
            .map(|p| requested.unwrap_or(p.default_scheduler))
    }

    /// Runs and wall time so far of each session of `model` (`text_encoder`, `unet`,
    /// `vae_decoder`) and of the rerank model's sessions together (`rerank`), for
    /// `sdspool bench`.
    pub fn session_clocks(&self, model: &str) -> Vec<(&'static str, SessionClock)> {
        let mut out = Vec::new();
        if let Some(p) = self.pipelines.get(model) {
            out.push(("text_encoder", p.model.text_encoder.loaded.clock));
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
        let fingerprint = fingerprint(job, options);
        let dir = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| {
                    JobRunError::writing(format!("creating the output folder {}", d.display()), &e)
                })?;
                d.clone()
            }
            None => output_folder(&self.output_dir, &job.output, &fingerprint)?,
        };
        self.last_dir = Some(dir.clone());
        // A run killed while writing an image or the manifest left its temporary file behind.
        for folder in [dir.clone(), dir.join("rejected")] {
            match crate::output::atomic::remove_leftovers(&folder) {
                Ok(removed) => {
                    for path in removed {
                        tracing::info!(file = %path.display(), "removed a temporary file left by an earlier run");
                    }
                }
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), error = %e, "cannot clean up temporary files")
                }
            }
        }
        let rerank = job.rerank.unwrap_or(true) && self.reranker.is_some();
        let provider = self
            .provider(&job.model)
            .ok_or_else(|| JobRunError::UnknownModel {
                model: job.model.clone(),
            })?;
        let (mut manifest, continued) = match Manifest::read(&dir) {
            Some(m) if m.fingerprint == fingerprint => (m, true),
            _ => (
                new_manifest(
                    job,
                    &fingerprint,
                    &provider,
                    rerank.then(|| self.reranker_name()).flatten(),
                ),
                false,
            ),
        };
        if manifest.complete {
            tracing::info!(job = %job.id, dir = %dir.display(), "job already complete; nothing to render");
            return Ok(Outcome {
                dir,
                manifest,
                rendered: 0,
                phases: PhaseDurations::default(),
            });
        }
        manifest.runs += 1;
        manifest.execution_provider = provider;
        if continued {
            let adopted = adopt_unrecorded_images(job, &dir, &mut manifest);
            if adopted > 0 {
                tracing::info!(job = %job.id, images = adopted, "kept images written before the last checkpoint");
            }
        }

        // What is still to render, per prompt (candidate index, seed).
        let pending: Vec<Vec<(usize, u64)>> = job
            .prompts
            .iter()
            .enumerate()
            .map(|(pi, p)| {
                p.seeds
                    .iter()
                    .enumerate()
                    .filter(|(ci, _)| {
                        let entry = &manifest.prompts[pi];
                        // Once the prompt's scores and ranks are checkpointed (its contact
                        // sheet is recorded), a candidate outside keep_top is done: a kill
                        // while keep_top moved or deleted it may have left its file gone
                        // before the manifest said so, and finish_prompt tolerates that.
                        let scored = entry.contact_sheet.is_some();
                        !entry.finished
                            && !entry.candidates.iter().any(|c| {
                                c.candidate == *ci
                                    && ((scored && !c.kept)
                                        || c.file.as_ref().is_some_and(|f| dir.join(f).is_file()))
                            })
                    })
                    .map(|(ci, s)| (ci, *s))
                    .collect()
            })
            .collect();
        let images_total = job.image_count();
        let mut images_done = images_total - pending.iter().map(Vec::len).sum::<usize>();
        if images_done > 0 {
            tracing::info!(job = %job.id, already = images_done, of = images_total, "resuming from the manifest");
        }

        let Worker {
            pipelines,
            reranker,
            ..
        } = self;
        let pipeline = pipelines
            .get_mut(&job.model)
            .ok_or_else(|| JobRunError::UnknownModel {
                model: job.model.clone(),
            })?;
        let mut finisher = Finisher {
            job,
            dir: dir.clone(),
            manifest,
            reranker: if rerank { reranker.as_mut() } else { None },
            clock: FinishClock::default(),
        };
        finisher.save("writing the manifest")?;
        let mut rendered = 0;
        let mut timings = PhaseTimings::default();
        let mut phases = PhaseDurations::default();

        let result = std::thread::scope(|scope| {
            // At most one prompt waits for the finisher while the next one denoises: room for a
            // prompt's two messages (its batch, then its finish), so that handing them over
            // never waits for the finishing thread to wake up and take the first.
            let (tx, rx) = mpsc::sync_channel::<Work>(2);
            let finishing =
                scope.spawn(move || -> Result<(Finisher<'_>, Duration), JobRunError> {
                    let mut busy = Duration::ZERO;
                    for work in rx {
                        let started = Instant::now();
                        match work {
                            Work::Batch(b) => finisher.write_batch(b)?,
                            Work::Finish(i) => finisher.finish_prompt(i)?,
                        }
                        busy += started.elapsed();
                    }
                    Ok((finisher, busy))
                });
            let mut render_result = Ok(());
            'prompts: for (pi, todo) in pending.iter().enumerate() {
                if !todo.is_empty() {
                    let mut req = request(job, pi);
                    req.seeds = todo.iter().map(|(_, s)| *s).collect();
                    if pi == 0 {
                        req.initial_latents = options.initial_latents.clone();
                        req.step_noise = options.step_noise.clone();
                    }
                    let out = pipeline.render(&req, &mut |p| {
                        progress(&Progress {
                            prompt: pi,
                            prompts: job.prompts.len(),
                            step: p.step.index + 1,
                            steps: p.step.total,
                            batch: p.batch,
                            images_done: images_done + p.first_candidate,
                            images_total,
                        });
                        if stop.load(Ordering::Relaxed) {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                    let out = match out {
                        Ok(o) => o,
                        Err(PipelineError::Cancelled { .. }) => {
                            render_result = Err(JobRunError::Stopped);
                            break 'prompts;
                        }
                        Err(source) => {
                            render_result = Err(JobRunError::Pipeline { prompt: pi, source });
                            break 'prompts;
                        }
                    };
                    timings.text_ms += out.timings.text.as_millis() as u64;
                    timings.denoise_ms += out.timings.denoise.as_millis() as u64;
                    timings.decode_ms += out.timings.decode.as_millis() as u64;
                    phases.tokenize += out.timings.tokenize;
                    phases.text_encode += out.timings.text.saturating_sub(out.timings.tokenize);
                    phases.denoise += out.timings.denoise;
                    phases.decode += out.timings.decode;
                    rendered += todo.len();
                    images_done += todo.len();
                    let batch = Batch {
                        prompt: pi,
                        scheduler: out.scheduler,
                        truncated: out.truncated_prompt,
                        images: todo
                            .iter()
                            .zip(out.images)
                            .map(|((c, s), img)| (*c, *s, img))
                            .collect(),
                    };
                    let handoff = Instant::now();
                    let sent = tx.send(Work::Batch(batch));
                    phases.handoff_wait += handoff.elapsed();
                    if sent.is_err() {
                        break 'prompts; // the finisher failed; its error is reported below
                    }
                }
                let handoff = Instant::now();
                let sent = tx.send(Work::Finish(pi));
                phases.handoff_wait += handoff.elapsed();
                if sent.is_err() {
                    break 'prompts;
                }
            }
            drop(tx);
            let waiting = Instant::now();
            let finished = finishing.join().unwrap_or_else(|_| {
                Err(JobRunError::Output {
                    step: "finishing".into(),
                    message: "the finishing thread panicked".into(),
                })
            });
            phases.finish_wait = waiting.elapsed();
            (render_result, finished)
        });
        let (render_result, finished) = result;
        let (mut finisher, finish_busy) = finished?;
        render_result?;
        let clock = finisher.clock;
        phases.rerank = clock.rerank;
        phases.png_encode = clock.png_encode;
        phases.png_write = clock.png_write;
        phases.finish_other =
            finish_busy.saturating_sub(clock.rerank + clock.png_encode + clock.png_write);
        phases.first_image = clock
            .first_image
            .map(|t| t.saturating_duration_since(started));
        let m = &mut finisher.manifest;
        m.timings.text_ms += timings.text_ms;
        m.timings.denoise_ms += timings.denoise_ms;
        m.timings.decode_ms += timings.decode_ms;
        m.timings.total_ms += started.elapsed().as_millis() as u64;
        m.complete = true;
        finisher.save("writing the manifest")?;
        Ok(Outcome {
            dir,
            manifest: finisher.manifest,
            rendered,
            phases,
        })
    }

    fn reranker_name(&self) -> Option<String> {
        self.reranker
            .as_ref()
            .map(|r| r.folder().root.display().to_string())
    }
}

/// Adds to the manifest the images of unfinished prompts that are on disk but not in it: a run
/// killed after writing a batch's images and before its manifest checkpoint. Images are written
/// by rename, so a file under its final name is whole, and the name holds the prompt, the
/// candidate and the seed; the manifest's fingerprint says the settings are this job's. Without
/// this they would be rendered again. Returns how many were added.
fn adopt_unrecorded_images(job: &Job, dir: &Path, manifest: &mut Manifest) -> usize {
    let mut adopted = 0;
    for (pi, p) in job.prompts.iter().enumerate() {
        let Some(entry) = manifest.prompts.get_mut(pi) else {
            continue;
        };
        if entry.finished {
            continue;
        }
        for (ci, seed) in p.seeds.iter().enumerate() {
            if entry.candidates.iter().any(|c| c.candidate == ci) {
                continue;
            }
            let name = crate::output::image_file_name(pi, ci, *seed);
            let whole = std::fs::symlink_metadata(dir.join(&name))
                .is_ok_and(|m| m.file_type().is_file() && m.len() > 0);
            if whole {
                entry.candidates.push(manifest::CandidateEntry {
                    candidate: ci,
                    seed: *seed,
                    file: Some(name),
                    cosine: None,
                    clip_score: None,
                    rank: None,
                    kept: true,
                });
                adopted += 1;
            }
        }
        entry.candidates.sort_by_key(|c| c.candidate);
    }
    adopted
}

enum Work {
    Batch(Batch),
    Finish(usize),
}

fn new_manifest(
    job: &Job,
    fingerprint: &str,
    provider: &str,
    rerank_model: Option<String>,
) -> Manifest {
    Manifest {
        job: job.id.clone(),
        fingerprint: fingerprint.to_string(),
        model: job.model.clone(),
        scheduler: job.scheduler.map(|s| s.to_string()).unwrap_or_default(),
        execution_provider: provider.to_string(),
        steps: job.steps,
        guidance: job.guidance,
        width: job.width,
        height: job.height,
        rng: job.rng.to_string(),
        rerank_model,
        keep_top: job.keep_top,
        complete: false,
        runs: 0,
        timings: PhaseTimings::default(),
        grids: Vec::new(),
        prompts: job
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| PromptEntry {
                index: i,
                prompt: p.text.clone(),
                negative: p.negative.clone(),
                steps: p.steps,
                guidance: p.guidance,
                scheduler: p.scheduler.map(|s| s.to_string()).unwrap_or_default(),
                width: p.width,
                height: p.height,
                sweep: p.sweep.clone(),
                truncated: None,
                candidates: Vec::new(),
                finished: false,
                contact_sheet: None,
            })
            .collect(),
    }
}

/// A stable identity of the job's settings and of any supplied noise ([`crate::hash::fnv1a64`] over
/// a canonical text and the arrays' bytes).
pub fn fingerprint(job: &Job, options: &RunOptions) -> String {
    let mut text = format!(
        "{}|{}|{}|{}|{:?}|{}x{}|{}|{:?}|{:?}|{:?}",
        job.id,
        job.model,
        job.steps,
        job.guidance,
        job.scheduler,
        job.width,
        job.height,
        job.rng,
        job.keep_top,
        job.rejected,
        job.rerank
    );
    for p in &job.prompts {
        text.push_str(&format!("|{}|{}|{:?}", p.text, p.negative, p.seeds));
        // Only a prompt with settings of its own adds them: the fingerprints of jobs without
        // sweeps stay what they were.
        if !p.has_job_settings(job) {
            text.push_str(&format!(
                "|{}|{}|{:?}|{}x{}",
                p.steps, p.guidance, p.scheduler, p.width, p.height
            ));
        }
    }
    let arrays = options
        .initial_latents
        .iter()
        .chain(options.step_noise.iter().flatten());
    let noise_bytes = arrays.flat_map(|a| a.iter().flat_map(|v| v.to_le_bytes()));
    format!(
        "{:016x}",
        crate::hash::fnv1a64(text.bytes().chain(noise_bytes))
    )
}

/// The job's output folder: `<root>/<name>`, or `<name>-2`, `-3`, ... when that folder holds
/// another job's results (never mixed, never overwritten).
fn output_folder(root: &Path, name: &str, fingerprint: &str) -> Result<PathBuf, JobRunError> {
    for n in 1..10_000 {
        let dir = if n == 1 {
            root.join(name)
        } else {
            root.join(format!("{name}-{n}"))
        };
        let usable = match Manifest::read(&dir) {
            Some(m) => m.fingerprint == fingerprint,
            // Empty, or holding only what a run killed during its first write left behind.
            None => !dir.exists() || crate::output::atomic::only_leftovers(&dir).unwrap_or(false),
        };
        if usable {
            std::fs::create_dir_all(&dir).map_err(|e| {
                JobRunError::writing(format!("creating the output folder {}", dir.display()), &e)
            })?;
            return Ok(dir);
        }
    }
    Err(JobRunError::Output {
        step: format!("choosing an output folder under {}", root.display()),
        message: format!("{name} and 9,999 numbered variants are all taken"),
    })
}
